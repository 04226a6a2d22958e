//! `seamless infer`: one image through one model, tiled or whole.

use std::path::PathBuf;
use std::time::Instant;

use seamless::backend::Backend as Compute;
use seamless::embed::Device;
use seamless::error::{Error, Result};
use seamless::normalize::{NormSpec, Normalize};
use seamless::output::{Existing, check_destination};
use seamless::pipeline::{self, PadMode, Progress, Tiling};
use seamless::planner::tile_plan::parse_bytes;
use seamless::planner::{Precision, TilePlanner};
use seamless::slide::select::Channels;
use seamless::slide::stream::{self, OutputKind, StreamOptions};
use seamless::slide::{self, Format};
use seamless::tile_grid::{TileGrid, round_up};

use super::plan::human;
use seamless::{Model, Tensor};

#[derive(clap::Args)]
pub struct InferArgs {
    /// Model file (.safetensors, see docs/model-format.md) or a preset name (random weights).
    #[arg(long)]
    pub model: String,
    /// Input image: TIFF/BigTIFF (.tif, tiled or striped), OME-Zarr (.zarr), .npy (H,W) or
    /// (H,W,C), .png, or synth:WxH[:seed] (a generated slide). Read a window at a time.
    #[arg(long)]
    pub input: String,
    /// Input format, when the extension does not say.
    #[arg(long, value_enum)]
    pub input_format: Option<Format>,
    /// Which input channels the model gets: 0-based numbers in the order the model wants them
    /// (`1`, `2,1,0`), `grey` for one channel from RGB (BT.601 luma: 0.299 R + 0.587 G + 0.114 B),
    /// or `all`.
    #[arg(long, default_value = "all", value_name = "LIST|grey|all")]
    pub channels: String,
    /// Pyramid level to read from a slide read through OpenSlide (0 = full resolution; each level
    /// is usually 2 or 4 times smaller).
    #[arg(long, default_value_t = 0)]
    pub level: usize,
    /// TIFF page to read (0-based, in file order). Without it, a TIFF of several full-size pages
    /// (a z-stack, a time series) is refused; an OME-TIFF's channel pages are read as channels.
    #[arg(long)]
    pub page: Option<usize>,
    /// Output: tiled BigTIFF (.tif), OME-Zarr (.zarr), .npy, or .png (labels only). Labels are
    /// uint8 (uint16 past 256 classes); probabilities float32 (or f16, --probs-f16), (H,W,classes).
    /// Written under OUTPUT.partial and renamed when complete.
    #[arg(long)]
    pub output: PathBuf,
    /// Output format, when the extension does not say.
    #[arg(long, value_enum)]
    pub output_format: Option<Format>,
    /// Write probabilities as float16.
    #[arg(long)]
    pub probs_f16: bool,
    /// Continue an interrupted run from OUTPUT.partial and its journal, skipping finished tiles.
    #[arg(long)]
    pub resume: bool,
    /// Replace OUTPUT (and --summary) if it already exists; without it, an existing output is an
    /// error. Only a file replaces a file and a Zarr store a Zarr store: another directory is
    /// never deleted. The old output stays until the new one is complete.
    #[arg(long)]
    pub overwrite: bool,
    /// Compute only tiles i, i+n, i+2n, ... (0-based), so n machines fill one OME-Zarr output
    /// together; the last shard to finish moves it into place.
    #[arg(long, value_name = "i/n")]
    pub shard: Option<String>,
    /// Write a JSON summary of the run (tiles, time, throughput, peak memory) to this file.
    #[arg(long)]
    pub summary: Option<PathBuf>,
    /// Output tile size: N (square), HxW, or auto. Must be a multiple of the model's
    /// down-sampling factor A (see `seamless info`).
    #[arg(long, default_value = "auto")]
    pub tile: String,
    /// Memory the run may use (e.g. 4GiB, 512MiB); `--tile auto` picks the largest tile that fits.
    /// Default: on the CPU half the memory available now, at most 4 GiB; on CUDA the device's free
    /// memory minus 10% (at least 256 MiB).
    #[arg(long)]
    pub memory_budget: Option<String>,
    /// Halo around each tile: `exact` (from the receptive field) or a number of pixels (a
    /// multiple of A; below the exact halo the output is no longer exact).
    #[arg(long, default_value = "exact")]
    pub halo: String,
    /// Run the network on the whole image at once (the reference tiled runs must equal).
    #[arg(long)]
    pub whole: bool,
    /// Compute backend. `auto` uses CUDA when a GPU and NVRTC are found, else the CPU (and says why).
    #[arg(long, value_enum, default_value_t = Backend::Auto)]
    pub backend: Backend,
    /// Arithmetic on the GPU: f32 (exact f32, no TF32) or f16 (f16 storage, f32 accumulation,
    /// tensor cores). The CPU backend computes in f32.
    #[arg(long, value_enum, default_value_t = Precision::F32)]
    pub precision: Precision,
    /// CUDA device number (see `seamless doctor`).
    #[arg(long, default_value_t = 0)]
    pub device: usize,
    /// Write class labels (argmax) or per-class probabilities.
    #[arg(long, value_enum, default_value_t = OutputKind::Labels)]
    pub output_kind: OutputKind,
    /// Global input normalisation, computed over the whole image in a streamed first pass.
    #[arg(long, value_enum, default_value_t = Normalize::Zscore)]
    pub normalize: Normalize,
    /// Percentiles mapped to 0 and 1 by `--normalize percentile`.
    #[arg(long, default_value = "1,99")]
    pub percentiles: String,
    /// Scale for `--normalize fixed`: value * scale + offset.
    #[arg(long, default_value_t = 1.0)]
    pub scale: f64,
    /// Offset for `--normalize fixed`.
    #[arg(long, default_value_t = 0.0)]
    pub offset: f64,
    /// How the image is padded to a multiple of A (the same for tiled and whole runs).
    #[arg(long, value_enum, default_value_t = PadMode::Zero)]
    pub pad: PadMode,
    /// No progress bar or summary.
    #[arg(long, short)]
    pub quiet: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Backend {
    Auto,
    Cpu,
    Cuda,
}

/// Tile size to use when the user says `auto`: the largest that fits the budget (the planner).
pub fn auto_tile(
    backend: &dyn Compute,
    model: &Model,
    (h, w): (usize, usize),
    budget: usize,
    multiple: usize,
    quiet: bool,
) -> Result<(usize, usize)> {
    let mut planner = TilePlanner::new(model, h, w, backend.memory())?.with_multiple(multiple);
    let choice = match planner.choose(budget) {
        Err(Error::OutOfMemory { .. }) if multiple > 16 => {
            planner.set_multiple(16);
            planner.choose(budget)?
        }
        other => other?,
    };
    if !quiet {
        eprintln!(
            "plan: tile {}x{} (window {}x{}), peak {} of a {} budget, {} tile(s), {:.2}x the pixels of one whole pass",
            choice.tile_w,
            choice.tile_h,
            choice.window_w,
            choice.window_h,
            human(choice.peak.total()),
            human(budget),
            choice.tiles,
            choice.relative_compute
        );
    }
    Ok((choice.tile_h, choice.tile_w))
}

/// A tile given on the command line must fit the budget: its window would otherwise be read whole
/// before the backend could refuse it, and a tile as large as the image is a window as large.
fn explicit_tile_fits(
    backend: &dyn Compute,
    model: &Model,
    (h, w): (usize, usize),
    tile: (usize, usize),
    halo: usize,
    budget: usize,
) -> Result<()> {
    let planner = TilePlanner::new(model, h, w, backend.memory())?;
    let a = model.align();
    let grid = TileGrid::new(round_up(h, a), round_up(w, a), tile.0, tile.1, halo, a)?;
    for (wh, ww) in grid.window_shapes() {
        let need = planner.window_peak(wh, ww)?.total();
        if need > budget {
            return Err(Error::Backend(format!(
                "--tile {}x{}: a {ww}x{wh} window needs {}, more than the memory budget of {}; give a smaller \
                 --tile, --tile auto (the largest that fits), or a larger --memory-budget",
                tile.1,
                tile.0,
                human(need),
                human(budget)
            )));
        }
    }
    Ok(())
}

pub fn parse_tile(
    s: &str,
    backend: &dyn Compute,
    model: &Model,
    (h, w): (usize, usize),
    budget: usize,
    multiple: usize,
    quiet: bool,
) -> Result<(usize, usize)> {
    if s == "auto" {
        return auto_tile(backend, model, (h, w), budget, multiple, quiet);
    }
    parse_size(s)
}

/// `N`, `HxW`, or `auto` = 512 px rounded to A and shrunk to the image (sweeps and ERF, which
/// compare tilings rather than fit a budget).
pub fn parse_tile_fixed(s: &str, model: &Model, h: usize, w: usize) -> Result<(usize, usize)> {
    if s == "auto" {
        let a = model.align();
        let t = round_up(512, a);
        return Ok((t.min(round_up(h.max(1), a)), t.min(round_up(w.max(1), a))));
    }
    parse_size(s)
}

/// `N` (square) or `HxW`.
fn parse_size(s: &str) -> Result<(usize, usize)> {
    let num =
        |v: &str| v.trim().parse::<usize>().map_err(|_| Error::Usage(format!("--tile '{s}': expected N, HxW or auto")));
    match s.split_once('x') {
        Some((th, tw)) => Ok((num(th)?, num(tw)?)),
        None => {
            let t = num(s)?;
            Ok((t, t))
        }
    }
}

pub fn parse_halo(s: &str, model: &Model) -> Result<usize> {
    if s == "exact" {
        return Ok(model.exact_halo());
    }
    let halo: usize =
        s.parse().map_err(|_| Error::Usage(format!("--halo '{s}': expected a number of pixels or 'exact'")))?;
    // Window sizes add the halo twice to a tile: bounded here, that sum cannot overflow.
    if halo > MAX_HALO {
        return Err(Error::Usage(format!(
            "--halo {halo}: at most {MAX_HALO} pixels (a halo past the image's edge adds nothing)"
        )));
    }
    Ok(halo)
}

/// The largest `--halo`: 2^31 pixels, beyond any image's side.
const MAX_HALO: usize = 1 << 31;

/// Resolve `--backend`: the CUDA backend on `device` (compiling or loading its kernels), or the
/// CPU. `auto` falls back to the CPU with one line saying why; an explicit `cuda` that cannot start
/// is an error (exit code 6).
///
/// Also resolves the memory budget: `--memory-budget`, else the device's free memory minus 10% (at
/// least 256 MiB) for CUDA, or [`memory_budget`]'s default for the CPU. The CPU backend then
/// refuses windows whose buffers exceed the budget less the weights, as a device would.
pub fn select_backend(
    b: Backend,
    precision: Precision,
    device: usize,
    budget_arg: Option<&str>,
    model: &Model,
    quiet: bool,
) -> Result<(Box<dyn Compute>, usize)> {
    let device = match b {
        Backend::Auto => Device::Auto,
        Backend::Cpu => Device::Cpu,
        Backend::Cuda => Device::Cuda(device),
    };
    let budget = budget_arg.map(parse_bytes).transpose()?;
    let (backend, budget, cuda_skipped) = seamless::embed::choose_backend(device, precision, budget, None, model)?;
    if !quiet {
        match cuda_skipped {
            Some(why) => eprintln!("backend: {} in f32 (CUDA not used: {why})", backend.name()),
            None if b != Backend::Cpu => eprintln!("backend: {}", backend.name()),
            None => {}
        }
    }
    Ok((backend, budget))
}

pub fn progress_bar(total: usize, quiet: bool) -> indicatif::ProgressBar {
    if quiet {
        return indicatif::ProgressBar::hidden();
    }
    let pb = indicatif::ProgressBar::new(total as u64);
    pb.set_style(
        indicatif::ProgressStyle::with_template("{elapsed_precise} [{bar:40}] {pos}/{len} tiles  {per_sec}  ETA {eta}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    pb
}

/// Rows read by a statistics pass over the whole image (which comes before the first tile).
fn statistics_bar(rows: usize, quiet: bool) -> indicatif::ProgressBar {
    if quiet {
        return indicatif::ProgressBar::hidden();
    }
    let pb = indicatif::ProgressBar::new(rows as u64);
    pb.set_style(
        indicatif::ProgressStyle::with_template(
            "{elapsed_precise} [{bar:40}] statistics, pass {msg}: {pos}/{len} rows  ETA {eta}",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    pb
}

/// The probabilities for `img` (already normalised), tiled or whole, with progress. Windows the
/// backend refuses for lack of memory are retried as smaller tiles, with a warning.
#[allow(clippy::too_many_arguments)]
pub fn compute(
    backend: &dyn Compute,
    model: &Model,
    img: &Tensor,
    whole: bool,
    tile: (usize, usize),
    halo: usize,
    pad: PadMode,
    quiet: bool,
) -> Result<Tensor> {
    let tiling = if whole { Tiling::Whole } else { Tiling::Tiles { tile, halo } };
    let mut pb: Option<indicatif::ProgressBar> = None;
    let out = pipeline::infer_on(
        backend,
        model,
        img,
        pad,
        tiling,
        &mut |p| match p {
            Progress::Tiles { done, total, .. } if !whole => {
                let bar = pb.get_or_insert_with(|| progress_bar(total, quiet));
                bar.set_length(total as u64);
                bar.set_position(done as u64);
            }
            Progress::Retry(note) if !quiet => match &pb {
                Some(bar) => bar.println(format!("warning: {note}")),
                None => eprintln!("warning: {note}"),
            },
            _ => {}
        },
        None,
    )?;
    if let Some(bar) = pb {
        bar.finish_and_clear();
    }
    Ok(out)
}

pub fn run(a: InferArgs) -> Result<()> {
    let format = a.output_format.or_else(|| slide::format_of(&a.output)).ok_or_else(|| Error::Output {
        path: a.output.clone(),
        msg: "unknown output format (use .tif/.tiff, .zarr, .npy or .png, or --output-format)".into(),
    })?;
    // Before anything is read or computed: the outputs are none of the inputs, and replace nothing
    // the user did not ask to replace.
    let existing = if a.overwrite { Existing::Replace } else { Existing::Refuse };
    let (model_path, input_path) = (PathBuf::from(&a.model), PathBuf::from(&a.input));
    let inputs = [("--input", input_path.as_path()), ("--model", model_path.as_path())];
    check_destination(&a.output, format == Format::Zarr, existing, &inputs)?;
    if let Some(summary) = &a.summary {
        let all = [inputs[0], inputs[1], ("--output", a.output.as_path())];
        check_destination(summary, false, existing, &all)?;
    }
    let model = Model::open(&a.model)?;
    let channels = Channels::parse(&a.channels)?;
    let src = slide::open_source_at(&a.input, a.input_format, slide::ImageIndex { level: a.level, page: a.page })?;
    let src = channels.apply(src).map_err(|msg| Error::Input { path: PathBuf::from(&a.input), msg })?;
    // After open_source, which refuses what cannot be read safely (a FIFO would block here).
    let input_id = slide::input_identity(&a.input)?;
    if !a.quiet {
        for w in src.warnings() {
            eprintln!("warning: {w}");
        }
    }
    let (ih, iw, ic) = src.shape();
    if ic != model.in_channels() {
        return Err(Error::Input { path: PathBuf::from(&a.input), msg: channel_mismatch(ic, model.in_channels()) });
    }
    let (backend, budget) =
        select_backend(a.backend, a.precision, a.device, a.memory_budget.as_deref(), &model, a.quiet)?;
    // TIFF tiles must be multiples of 16; compute tiles that are multiples of 256 let the output
    // use 256-px TIFF tiles (readers handle many tiny tiles poorly). Smaller budgets fall back to 16.
    let multiple = if format == Format::Tiff { 256 } else { 1 };
    let tile = if a.whole {
        (0, 0)
    } else {
        parse_tile(&a.tile, backend.as_ref(), &model, (ih, iw), budget, multiple, a.quiet)?
    };
    let halo = parse_halo(&a.halo, &model)?;
    if !a.whole && a.tile != "auto" {
        explicit_tile_fits(backend.as_ref(), &model, (ih, iw), tile, halo, budget)?;
    }
    if !a.whole && halo < model.exact_halo() && !a.quiet {
        eprintln!(
            "warning: halo {halo} is below the exact halo {}; the output will differ from the whole-image run",
            model.exact_halo()
        );
    }
    let shard = a.shard.as_deref().map(parse_shard).transpose()?;
    let mut norm = NormSpec::new(a.normalize);
    norm.scale = a.scale;
    norm.offset = a.offset;
    norm.percentiles = parse_percentiles(&a.percentiles)?;
    let opts = StreamOptions {
        tile,
        halo,
        whole: a.whole,
        pad: a.pad,
        norm,
        kind: a.output_kind,
        probs_f16: a.probs_f16,
        format,
        resume: a.resume,
        shard,
        abort_after: std::env::var("SEAMLESS_TEST_ABORT_AFTER_TILES").ok().and_then(|v| v.parse().ok()),
        existing,
        input_id,
        // A resumed run or another shard must select the same channels.
        selection: match (a.level, a.page, &channels) {
            (0, None, Channels::All) => String::new(),
            (level, page, channels) => format!("level {level} page {page:?} channels {channels}"),
        },
        recheck_input: Some(a.input.clone()),
    };
    let mut pb: Option<indicatif::ProgressBar> = None;
    let mut stats_bar: Option<indicatif::ProgressBar> = None;
    let t0 = Instant::now();
    let summary = stream::run(
        src,
        &model,
        backend.as_ref(),
        &a.output,
        &opts,
        &mut |p| match p {
            stream::Progress::Statistics { pass, rows_done, rows } => {
                let bar = stats_bar.get_or_insert_with(|| statistics_bar(rows, a.quiet));
                bar.set_message(pass.to_string());
                bar.set_position(rows_done as u64);
            }
            stream::Progress::Tiles { done, total, megapixels } => {
                if let Some(bar) = stats_bar.take() {
                    bar.finish_and_clear();
                }
                let bar = pb.get_or_insert_with(|| progress_bar(total, a.quiet));
                bar.set_length(total as u64);
                bar.set_position(done as u64);
                bar.set_message(format!("{:.2} Mpx/s", megapixels / t0.elapsed().as_secs_f64().max(1e-9)));
            }
            stream::Progress::Retry(note) if !a.quiet => match &pb {
                Some(bar) => bar.println(&note),
                None => eprintln!("{note}"),
            },
            stream::Progress::Retry(_) => {}
        },
        &mut |note| {
            if !a.quiet {
                eprintln!("{note}");
            }
        },
        None,
    )?;
    for bar in [pb, stats_bar].into_iter().flatten() {
        bar.finish_and_clear();
    }
    if let Some(path) = &a.summary {
        let mut f = seamless::output::AtomicFile::create(path)?;
        f.write_all(serde_json::to_string_pretty(&summary).expect("serialisable").as_bytes())?;
        f.commit()?;
    }
    if !a.quiet {
        let how = if a.whole { "whole image".to_string() } else { format!("tiles {}x{}, halo {halo}", tile.0, tile.1) };
        let state = if summary.complete { "" } else { " (this shard is done; the output completes with the others)" };
        eprintln!(
            "{iw}x{ih} px, {how}: {} tiles ({} resumed) in {:.2} s, {:.3} Mpx/s, peak memory {} -> {}{state}",
            summary.tiles_total,
            summary.tiles_resumed,
            summary.seconds,
            summary.megapixels_per_second,
            summary.peak_rss_bytes.map(human).unwrap_or_else(|| "?".into()),
            a.output.display()
        );
    }
    Ok(())
}

/// Why an image of `ic` channels (after `--channels`) does not fit a model of `mc`, and what to do.
fn channel_mismatch(ic: usize, mc: usize) -> String {
    let hint = match (ic, mc) {
        (3 | 4, 1) => " (--channels grey makes one grey channel from RGB; --channels N picks channel N)".to_string(),
        (i, m) if i > m => format!(
            " (pick {m} with --channels, e.g. --channels {})",
            (0..m).map(|c| c.to_string()).collect::<Vec<_>>().join(",")
        ),
        _ => " (--channels can repeat a channel, e.g. --channels 0,0,0 for a grey image and an RGB model)".to_string(),
    };
    format!("has {ic} channel(s), the model expects {mc}{hint}")
}

fn parse_shard(s: &str) -> Result<(usize, usize)> {
    let bad = || Error::Usage(format!("--shard '{s}': expected i/n with 0 <= i < n, e.g. 0/4"));
    let (i, n) = s.split_once('/').ok_or_else(bad)?;
    let (i, n): (usize, usize) = (i.trim().parse().map_err(|_| bad())?, n.trim().parse().map_err(|_| bad())?);
    if n == 0 || i >= n {
        return Err(bad());
    }
    Ok((i, n))
}

fn parse_percentiles(s: &str) -> Result<(f64, f64)> {
    let bad = || Error::Usage(format!("--percentiles '{s}': expected LOW,HIGH, e.g. 1,99"));
    let (lo, hi) = s.split_once(',').ok_or_else(bad)?;
    Ok((lo.trim().parse().map_err(|_| bad())?, hi.trim().parse().map_err(|_| bad())?))
}
