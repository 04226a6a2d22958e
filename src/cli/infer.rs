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
use seamless::planner::{AUTO_COMPUTE_SLACK, Precision, TilePlanner};
use seamless::slide::Cancel;
use seamless::slide::select::Channels;
use seamless::slide::stream::{self, OutputKind, StreamOptions};
use seamless::slide::{self, Format};
use seamless::tile_grid::{Size, TileGrid, parse_size, round_up};

use super::plan::human;
use super::progress::Meter;
use seamless::{Model, Tensor};

/// Every option of a run, as `--summary` records them (enums as spelled on the command line).
#[derive(clap::Args, serde::Serialize)]
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
    #[serde(serialize_with = "cli_name_opt")]
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
    #[serde(serialize_with = "cli_name_opt")]
    pub output_format: Option<Format>,
    /// Write probabilities as float16.
    #[arg(long)]
    pub probs_f16: bool,
    /// Continue an interrupted run (Ctrl-C, a crash, a full disk) from OUTPUT.partial and its
    /// journal, skipping finished tiles. Ctrl-C stops a run cleanly, keeping what is written (exit 130).
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
    /// Write a JSON summary of the run to this file: seamless's version and commit, the model
    /// file's BLAKE3 hash, backend, device and precision, the input and its size, every option,
    /// tiles, time (read, statistics, compute, write), throughput and peak memory.
    #[arg(long)]
    pub summary: Option<PathBuf>,
    /// Output tile size: N (square), WxH (width x height, like every size in seamless), or auto:
    /// among the tiles that fit --memory-budget, the smallest whose compute (pixels of all windows,
    /// halos included) is within 5% of the least; the line starting `plan:` says which and why.
    /// Must be a multiple of the model's down-sampling factor A (see `seamless info`).
    #[arg(long, default_value = "auto")]
    pub tile: String,
    /// Memory the run may use (e.g. 4GiB, 512MiB); `--tile auto` picks, among the tiles that fit,
    /// the smallest whose compute (pixels of all windows) is within 5% of the least.
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
    #[serde(serialize_with = "cli_name")]
    pub backend: Backend,
    /// Arithmetic: f32 (exact f32, no TF32; the default); on the GPU f16 (f16 storage, f32
    /// accumulation, tensor cores); on the CPU bf16 (convolutions on AMX tiles or AVX512-BF16
    /// where the CPU has them, f32 accumulation; 1.4-1.8x faster than f32 there, labels within 0.01% of f32 on the
    /// demo models: docs/perf.md). Tiles equal the whole image bit for bit in every precision.
    #[arg(long, value_enum, default_value_t = Precision::F32)]
    #[serde(serialize_with = "cli_name")]
    pub precision: Precision,
    /// CUDA device number (see `seamless doctor`).
    #[arg(long, default_value_t = 0)]
    pub device: usize,
    /// Write class labels (argmax) or per-class probabilities.
    #[arg(long, value_enum, default_value_t = OutputKind::Labels)]
    #[serde(serialize_with = "cli_name")]
    pub output_kind: OutputKind,
    /// Global input normalisation, computed over the whole image in a streamed first pass.
    #[arg(long, value_enum, default_value_t = Normalize::Zscore)]
    #[serde(serialize_with = "cli_name")]
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
    #[serde(serialize_with = "cli_name")]
    pub pad: PadMode,
    /// No progress, notes or warnings (errors, and what Ctrl-C kept, are still said).
    #[arg(long, short)]
    pub quiet: bool,
}

/// An option's value as written on the command line (`--pad zero`, not `Zero`).
fn cli_name<T: clap::ValueEnum, S: serde::Serializer>(v: &T, s: S) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_str(v.to_possible_value().expect("no value is skipped").get_name())
}

fn cli_name_opt<T: clap::ValueEnum, S: serde::Serializer>(v: &Option<T>, s: S) -> std::result::Result<S::Ok, S::Error> {
    match v {
        Some(v) => cli_name(v, s),
        None => s.serialize_none(),
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Backend {
    Auto,
    Cpu,
    Cuda,
}

/// Tile size to use when the user says `auto`: the smallest whose compute is within
/// [`AUTO_COMPUTE_SLACK`] of the least among the tiles that fit the budget (the planner).
pub fn auto_tile(
    backend: &dyn Compute,
    model: &Model,
    (h, w): (usize, usize),
    budget: usize,
    multiple: usize,
    quiet: bool,
) -> Result<(usize, usize)> {
    let mut planner = TilePlanner::new(model, h, w, backend.memory())?.with_multiple(multiple);
    let auto = match planner.choose_auto(budget) {
        Err(Error::OutOfMemory { .. }) if multiple > 16 => {
            planner.set_multiple(16);
            planner.choose_auto(budget)?
        }
        other => other?,
    };
    let (choice, largest) = (&auto.choice, &auto.largest);
    if !quiet {
        let versus = if (largest.tile_h, largest.tile_w) == (choice.tile_h, choice.tile_w) {
            "also the largest that fits".to_string()
        } else {
            format!(
                "the largest that fits, {}x{}, would do {:.2}x",
                largest.tile_w, largest.tile_h, largest.relative_compute
            )
        };
        eprintln!(
            "plan: tile {}x{} (auto: smallest within {:.0}% of the least compute, {:.2}x the pixels of one pass; \
             {versus}), window {}x{}, peak {} of a {} budget, {} tile(s)",
            choice.tile_w,
            choice.tile_h,
            AUTO_COMPUTE_SLACK * 100.0,
            choice.relative_compute,
            choice.window_w,
            choice.window_h,
            human(choice.peak.total()),
            human(budget),
            choice.tiles,
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
                 --tile, --tile auto (one that fits), or a larger --memory-budget",
                tile.1,
                tile.0,
                human(need),
                human(budget)
            )));
        }
    }
    Ok(())
}

/// `--tile`: `auto` ([`auto_tile`]), `N` or `WxH`. (rows, columns).
#[allow(clippy::too_many_arguments)]
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
    Ok(size_flag("--tile", s, true, quiet)?.hw())
}

/// A size given to `flag` (`N` or `WxH`), with the warning for a non-square one; `auto` is
/// named in the error where the flag takes it.
pub fn size_flag(flag: &str, s: &str, takes_auto: bool, quiet: bool) -> Result<Size> {
    let size = parse_size(flag, s).map_err(|e| match e {
        Error::Usage(_) if takes_auto => {
            Error::Usage(format!("{flag} '{s}': expected N, WxH (width x height, e.g. 1024x768) or auto"))
        }
        e => e,
    })?;
    super::warn_size_order(flag, s, size, quiet);
    Ok(size)
}

/// `N`, `WxH`, or `auto` = 512 px rounded to A and shrunk to the image (sweeps and ERF, which
/// compare tilings rather than fit a budget). (rows, columns).
pub fn parse_tile_fixed(flag: &str, s: &str, model: &Model, h: usize, w: usize, quiet: bool) -> Result<(usize, usize)> {
    if s == "auto" {
        let a = model.align();
        let t = round_up(512, a);
        return Ok((t.min(round_up(h.max(1), a)), t.min(round_up(w.max(1), a))));
    }
    Ok(size_flag(flag, s, true, quiet)?.hw())
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
            None if b != Backend::Cpu || precision == Precision::Bf16 => eprintln!("backend: {}", backend.name()),
            None => {}
        }
        if precision == Precision::Bf16
            && seamless::cpu::direct::Isa::detect_for(precision) == seamless::cpu::direct::Isa::Bf16Portable
        {
            eprintln!(
                "warning: this CPU has no AVX512-BF16: bf16 runs on the portable path, slower than f32 here \
                 (the bits AVX512-BF16 gives; AMX tiles sum in another order)"
            );
        }
    }
    Ok((backend, budget))
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
    let mut meter: Option<Meter> = None;
    let start = Instant::now();
    let out = pipeline::infer_on(
        backend,
        model,
        img,
        pad,
        tiling,
        &mut |p| match p {
            Progress::Tiles { done, total, megapixels, megapixels_total } => {
                let m = meter
                    .get_or_insert_with(|| Meter::new("tiles", "tiles", total, megapixels_total * 1e6, start, quiet));
                m.update(done, megapixels * 1e6);
            }
            Progress::Retry(note) if !quiet => match &meter {
                Some(m) => m.println(&format!("warning: {note}")),
                None => eprintln!("warning: {note}"),
            },
            _ => {}
        },
        None,
    )?;
    if let Some(m) = meter {
        m.finish();
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
    let t_load = Instant::now();
    let model = Model::open(&a.model)?;
    seamless::profile::step("loading the model", t_load);
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
    let sample_type = src.sample_type();
    // Ctrl-C stops the run at the next window and keeps what is written, for --resume.
    catch_interrupt();
    let quiet = a.quiet;
    let (mut stats_meter, mut tiles_meter): (Option<(usize, Meter)>, Option<Meter>) = (None, None);
    // When the current phase (a statistics pass, the tiles) began: rates count from there.
    let mut phase = Instant::now();
    let mut written: Option<(usize, usize)> = None;
    // The weights are packed (on the backend's workers) while the input's statistics and the
    // model's fingerprint are computed here; the first window waits for the packing if it must.
    // A failure there is left to the first window, which repeats the step and reports it.
    let result = std::thread::scope(|scope| {
        scope.spawn(|| backend.prepare(&model.graph));
        stream::run(
            src,
            &model,
            backend.as_ref(),
            &a.output,
            &opts,
            &mut |p| match p {
                stream::Progress::Statistics { pass, rows_done, rows } => {
                    if stats_meter.as_ref().is_none_or(|(p, _)| *p != pass) {
                        let label = format!("statistics, pass {pass}");
                        stats_meter = Some((pass, Meter::new(&label, "rows", rows, (rows * iw) as f64, phase, quiet)));
                    }
                    let (_, m) = stats_meter.as_mut().expect("set above");
                    m.update(rows_done, (rows_done * iw) as f64);
                    if rows_done == rows {
                        stats_meter.take().expect("set above").1.finish();
                        phase = Instant::now();
                    }
                }
                stream::Progress::Tiles { done, total, megapixels, megapixels_total } => {
                    if let Some((_, m)) = stats_meter.take() {
                        m.finish();
                        phase = Instant::now();
                    }
                    let m = tiles_meter.get_or_insert_with(|| {
                        Meter::new("tiles", "tiles", total, megapixels_total * 1e6, phase, quiet)
                    });
                    m.update(done, megapixels * 1e6);
                    written = Some((done, total));
                }
                stream::Progress::Retry(note) if !quiet => match &tiles_meter {
                    Some(m) => m.println(&note),
                    None => eprintln!("{note}"),
                },
                stream::Progress::Retry(_) => {}
            },
            &mut |note| {
                if !quiet {
                    eprintln!("{note}");
                }
            },
            Some(&INTERRUPT),
        )
    });
    let summary = match result {
        Ok(summary) => summary,
        Err(e) => {
            // The bars go: the error is the last word.
            if let Some(m) = tiles_meter.take() {
                m.clear();
            }
            if let Some((_, m)) = stats_meter.take() {
                m.clear();
            }
            if matches!(e, Error::Cancelled) {
                eprintln!("{}", interrupted(&a.output, format, written));
            }
            return Err(e);
        }
    };
    for m in tiles_meter.into_iter().chain(stats_meter.map(|(_, m)| m)) {
        m.finish();
    }
    if let Some(path) = &a.summary {
        let report = Report::new(&a, &model, backend.as_ref(), sample_type, &summary)?;
        let mut f = seamless::output::AtomicFile::create(path)?;
        f.write_all(serde_json::to_string_pretty(&report).expect("serialisable").as_bytes())?;
        f.commit()?;
    }
    if !a.quiet {
        let how = if a.whole { "whole image".to_string() } else { format!("tiles {}, halo {halo}", summary.tile) };
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

/// Set by the first Ctrl-C (SIGINT); `infer` passes it to the run as its cancel flag.
static INTERRUPT: Cancel = Cancel::new();

/// Ctrl-C asks the run to stop cleanly (the tiles written so far and the journal stay, for
/// `--resume`); a second Ctrl-C stops the process at once, as without this handler.
fn catch_interrupt() {
    use signal_hook::consts::SIGINT;
    // Registered first, so it sees the flag as the previous Ctrl-C left it.
    let _ = signal_hook::flag::register_conditional_default(SIGINT, INTERRUPT.flag());
    let _ = signal_hook::flag::register(SIGINT, INTERRUPT.flag());
}

/// What an interrupted run kept, and how to go on.
fn interrupted(output: &std::path::Path, format: Format, written: Option<(usize, usize)>) -> String {
    if !format.resumable() {
        return "interrupted: a PNG output is written whole at the end, so nothing of this run is kept".into();
    }
    let mut partial = output.as_os_str().to_owned();
    partial.push(".partial");
    let kept = std::path::Path::new(&partial).exists();
    match written {
        Some((done, total)) if kept => format!(
            "interrupted: {done} of {total} tiles are written (in {}); run the same command with --resume to continue",
            std::path::Path::new(&partial).display()
        ),
        _ if kept => format!(
            "interrupted: the unfinished output {} is kept; run the same command with --resume to continue",
            std::path::Path::new(&partial).display()
        ),
        _ => "interrupted before the first tile was written; nothing to resume".into(),
    }
}

/// `--summary`: what ran, on what, with which options, and where the time went.
#[derive(serde::Serialize)]
struct Report<'a> {
    seamless: Build,
    model: ModelReport<'a>,
    /// `cpu` or `cuda`.
    backend: &'static str,
    /// The backend's description: threads, or the GPU, its architecture and precision.
    device: String,
    /// The arithmetic actually used (the CPU backend computes in f32).
    precision: &'static str,
    input: InputReport<'a>,
    /// Every option of `seamless infer` as given or defaulted, and the global ones.
    options: Options<'a>,
    #[serde(flatten)]
    run: &'a stream::Summary,
}

#[derive(serde::Serialize)]
struct Build {
    version: &'static str,
    /// `git rev-parse --short HEAD` when this binary was built from a git checkout, else "unknown".
    commit: &'static str,
    /// `seamless::numerics::REVISION`: which bits this build computes.
    numerics: u32,
}

#[derive(serde::Serialize)]
struct ModelReport<'a> {
    path: &'a str,
    /// BLAKE3 of the model file (null for a preset with random weights).
    blake3: Option<String>,
    description: &'a str,
}

#[derive(serde::Serialize)]
struct InputReport<'a> {
    path: &'a str,
    width: usize,
    height: usize,
    channels: usize,
    sample_type: &'static str,
}

#[derive(serde::Serialize)]
struct Options<'a> {
    #[serde(flatten)]
    infer: &'a InferArgs,
    threads: usize,
    log_interval: f64,
}

impl<'a> Report<'a> {
    fn new(
        a: &'a InferArgs,
        model: &'a Model,
        backend: &dyn Compute,
        sample_type: &'static str,
        run: &'a stream::Summary,
    ) -> Result<Report<'a>> {
        let device = backend.name();
        let cuda = device.starts_with("cuda");
        let model_file = std::path::Path::new(&a.model);
        let blake3 = if model_file.is_file() {
            let io = |e| seamless::Error::io(seamless::error::Side::Model, model_file, "cannot read", e);
            let mut h = blake3::Hasher::new();
            h.update_reader(std::fs::File::open(model_file).map_err(io)?).map_err(io)?;
            Some(h.finalize().to_hex().to_string())
        } else {
            None
        };
        let image = run.image;
        Ok(Report {
            seamless: Build {
                version: env!("CARGO_PKG_VERSION"),
                commit: env!("SEAMLESS_GIT_COMMIT"),
                numerics: seamless::numerics::REVISION,
            },
            model: ModelReport { path: &a.model, blake3, description: &model.origin },
            backend: if cuda { "cuda" } else { "cpu" },
            device,
            precision: a.precision.name(),
            input: InputReport {
                path: &a.input,
                width: image.width,
                height: image.height,
                channels: image.channels,
                sample_type,
            },
            options: Options {
                infer: a,
                threads: rayon::current_num_threads(),
                log_interval: super::progress::log_interval().as_secs_f64(),
            },
            run,
        })
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_interrupted_png_run_says_nothing_is_kept_and_others_say_how_to_resume() {
        let dir = tempfile::tempdir().unwrap();
        // A PNG is encoded at the end: even after tiles were computed, nothing is there to resume.
        let png = dir.path().join("o.png");
        let m = interrupted(&png, Format::Png, Some((7, 20)));
        assert!(m.contains("nothing of this run is kept") && !m.contains("--resume"), "{m}");
        let npy = dir.path().join("o.npy");
        let m = interrupted(&npy, Format::Npy, Some((7, 20)));
        assert!(m.contains("nothing to resume"), "no partial output was made: {m}");
        std::fs::write(dir.path().join("o.npy.partial"), b"").unwrap();
        let m = interrupted(&npy, Format::Npy, Some((7, 20)));
        assert!(m.contains("7 of 20 tiles are written") && m.contains("--resume"), "{m}");
    }
}
