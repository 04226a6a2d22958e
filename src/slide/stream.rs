//! The streaming run: statistics pass(es), then tiles flowing reader -> compute -> writer on three
//! threads joined by bounded queues, so reading/decoding, compute and writing overlap and at most
//! a few windows are in memory at once. Output goes to `<out>.partial` (a journal beside it lists
//! finished tiles; a PNG, encoded whole at the end, keeps none) and is renamed into place when
//! complete; `--resume` continues from the journal,
//! `--shard i/n` computes every n-th tile into a shared OME-Zarr.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::journal::{self, Journal, JournalHeader, same_run_as_other_shards};
use super::tiles::TileRun;
pub use super::tiles::{Cancel, PadMode, Progress};
use super::{Format, OutSpec, OutType, Sink, Source, npy::NpySink, output_err, tiff_io::TiffSink, zarr_io::ZarrSink};
use crate::backend::Backend;
use crate::error::{Error, Result, Side};
use crate::model::Model;
use crate::normalize::{self, NormSpec};
pub use crate::output::Existing;
use crate::output::{Lock, check_destination, move_into_place};
use crate::tensor::Tensor;
use crate::tile_grid::{Size, Tile, TileGrid, round_up};

/// What a run writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
pub enum OutputKind {
    /// Class labels (argmax).
    Labels,
    /// Per-class probabilities.
    Probs,
}

#[derive(Clone, Debug)]
pub struct StreamOptions {
    pub tile: (usize, usize),
    pub halo: usize,
    /// One window over the whole padded image, no halo: the reference run.
    pub whole: bool,
    pub pad: PadMode,
    pub norm: NormSpec,
    pub kind: OutputKind,
    /// Probabilities as f16 instead of f32.
    pub probs_f16: bool,
    pub format: Format,
    pub resume: bool,
    /// (i, n): compute tiles with index % n == i.
    pub shard: Option<(usize, usize)>,
    /// Test hook: abort the process (no clean-up) after this many tiles are journaled.
    pub abort_after: Option<usize>,
    /// Whether an existing output may be replaced (`--overwrite`; only by one of the same kind).
    pub existing: Existing,
    /// What identifies the input (`slide::input_identity`): a resumed run or another shard must
    /// read the same image.
    pub input_id: String,
    /// What of the input is read, beyond its identity (`--channels`): part of what a resumed run
    /// or another shard must match. Empty when the whole input is read as stored.
    pub selection: String,
    /// The input's spec, when it is a file or store: its identity is taken again when the last
    /// tile is written, and a run whose input changed meanwhile (its tiles would come from two
    /// images) fails instead of moving its output into place.
    pub recheck_input: Option<String>,
}

impl StreamOptions {
    /// The defaults of `seamless infer` for `format`: the exact halo and the tile `--tile auto` picks
    /// are the caller's to fill in (`tile`, `halo`).
    pub fn new(format: Format, tile: (usize, usize), halo: usize) -> StreamOptions {
        StreamOptions {
            tile,
            halo,
            whole: false,
            pad: PadMode::Zero,
            norm: NormSpec::new(normalize::Normalize::Zscore),
            kind: OutputKind::Labels,
            probs_f16: false,
            format,
            resume: false,
            shard: None,
            abort_after: None,
            existing: Existing::Refuse,
            input_id: String::new(),
            selection: String::new(),
            recheck_input: None,
        }
    }
}

/// An image's size and channels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct ImageShape {
    pub width: usize,
    pub height: usize,
    pub channels: usize,
}

/// Where a run's time went, in seconds. `read`, `compute` and `write` are sums over the tiles of
/// the time each stage's thread was busy with them (reading and normalising windows; running the
/// network, argmax and retries, not waiting for windows or for the writer; writing tiles and
/// syncing the output and the journal). The three threads overlap, so these add up to more than
/// the run's time, and the slowest of them bounds it. `statistics` is the normalisation pass,
/// before the first tile.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct StageSeconds {
    pub read: f64,
    pub statistics: f64,
    pub compute: f64,
    pub write: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    pub output: String,
    pub complete: bool,
    pub image: ImageShape,
    pub tile: Size,
    pub halo: usize,
    pub tiles_total: usize,
    pub tiles_computed: usize,
    pub tiles_resumed: usize,
    pub seconds: f64,
    pub megapixels_per_second: f64,
    pub times: StageSeconds,
    pub normalization: Vec<(f64, f64)>,
    pub peak_rss_bytes: Option<usize>,
    pub retries: Vec<String>,
}

/// Peak resident memory of this process so far (Linux), in bytes.
pub fn peak_rss() -> Option<usize> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb: usize = status.lines().find(|l| l.starts_with("VmHWM:"))?.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Largest divisor of `n` that is a multiple of `m` and at most `cap`, if any.
fn divisor(n: usize, m: usize, cap: usize) -> Option<usize> {
    (1..=cap / m).rev().map(|k| k * m).find(|&d| n.is_multiple_of(d))
}

/// Chunk edge for the output: divides every tile stride so each tile writes whole chunks.
pub fn chunk_for(format: Format, tile: (usize, usize), single_tile: bool) -> Result<usize> {
    if single_tile {
        return Ok(256);
    }
    let g = crate::tile_grid::gcd(tile.0, tile.1);
    match format {
        // Prefer 256-512 px TIFF tiles; any multiple of 16 that divides the tile will do.
        Format::Tiff => divisor(g, 256, 512).or_else(|| divisor(g, 16, 1024)).ok_or_else(|| {
            Error::Tiling(format!(
                "TIFF output needs tiles that are multiples of 16 (TIFF tile sizes are); {}x{} is not — \
                 choose a multiple of 16 that is also a multiple of the model's A",
                tile.1, tile.0
            ))
        }),
        _ => Ok(divisor(g, 1, 1024).unwrap_or(g)),
    }
}

fn partial_path(out: &Path) -> PathBuf {
    let mut s = out.as_os_str().to_owned();
    s.push(".partial");
    PathBuf::from(s)
}

/// The lock every run writing `out` (or this shard of it) holds: beside the output, in seamless's
/// own `.partial` namespace.
fn lock_path(out: &Path, shard: Option<(usize, usize)>) -> PathBuf {
    let mut s = partial_path(out).into_os_string();
    match shard {
        Some((i, n)) => s.push(format!(".shard-{i}-of-{n}.lock")),
        None => s.push(".lock"),
    }
    PathBuf::from(s)
}

fn journal_path(out: &Path, format: Format, shard: Option<(usize, usize)>) -> PathBuf {
    match (format, shard) {
        (Format::Zarr, Some((i, n))) => partial_path(out).join(format!("seamless-shard-{i}-of-{n}.journal")),
        (Format::Zarr, None) => partial_path(out).join("seamless.journal"),
        _ => {
            let mut s = partial_path(out).into_os_string();
            s.push(".journal");
            PathBuf::from(s)
        }
    }
}

fn remove_any(p: &Path) {
    if p.is_dir() {
        let _ = std::fs::remove_dir_all(p);
    } else {
        let _ = std::fs::remove_file(p);
    }
}

pub fn open_sink(
    format: Format,
    path: &Path,
    spec: OutSpec,
    journal: Option<&[serde_json::Value]>,
) -> Result<Box<dyn Sink>> {
    Ok(match format {
        Format::Npy => Box::new(NpySink::create(path, spec, journal.is_some())?),
        Format::Tiff => Box::new(TiffSink::create(path, spec, journal)?),
        Format::Zarr => Box::new(ZarrSink::create(path, spec)?),
        Format::Png => Box::new(PngSink::new(path, spec)?),
        Format::Openslide => {
            return Err(output_err(path, "OpenSlide formats are read-only: write .tif, .zarr, .npy or .png"));
        }
    })
}

/// The largest PNG output, in pixels (1 GiB of f32 labels in memory).
const MAX_PNG_PIXELS: usize = 1 << 28;

/// A PNG output is held whole until it is encoded: refuse one too large, before any work.
fn png_fits(path: &Path, h: usize, w: usize) -> Result<()> {
    if h.saturating_mul(w) > MAX_PNG_PIXELS {
        return Err(output_err(
            path,
            format!(
                "a {w}x{h} PNG would be held whole in memory; PNG output is for images up to {MAX_PNG_PIXELS} \
                 pixels: write .tif or .zarr"
            ),
        ));
    }
    Ok(())
}

/// PNG holds small label images: the whole image is kept and encoded at the end.
struct PngSink {
    path: PathBuf,
    img: Tensor,
    classes_wide: bool,
}

impl PngSink {
    fn new(path: &Path, spec: OutSpec) -> Result<PngSink> {
        if spec.channels != 1 {
            return Err(output_err(path, "PNG holds labels only; write probabilities to .npy, .tif or .zarr"));
        }
        png_fits(path, spec.height, spec.width)?;
        Ok(PngSink {
            path: path.to_path_buf(),
            img: Tensor::zeros(1, spec.height, spec.width),
            classes_wide: spec.out == OutType::U16,
        })
    }
}

impl Sink for PngSink {
    fn write(&mut self, y0: usize, x0: usize, t: &Tensor) -> Result<()> {
        self.img.paste(t, 0, 0, y0, x0, t.h, t.w);
        Ok(())
    }
    fn sync(&mut self) -> Result<serde_json::Value> {
        Ok(serde_json::Value::Null)
    }
    fn finish(self: Box<Self>) -> Result<()> {
        let file = File::create(&self.path).map_err(|e| Error::io(Side::Output, &self.path, "cannot create", e))?;
        crate::image_io::write_png_labels(std::io::BufWriter::new(file), &self.img, self.classes_wide)
            .map_err(|e| Error::codec(Side::Output, &self.path, "write failed", e))
    }
}

/// The shape of one run, settled before anything is read.
struct Layout {
    image: (usize, usize, usize),
    tile: (usize, usize),
    halo: usize,
    grid: TileGrid,
    spec: OutSpec,
}

/// Check the options against the image and the model, and lay out the run, before anything is
/// read (the statistics pass alone reads the whole image).
fn layout(src: &dyn Source, model: &Model, out: &Path, opts: &StreamOptions) -> Result<Layout> {
    let (ih, iw, ic) = src.shape();
    if opts.format == Format::Png {
        png_fits(out, ih, iw)?;
    }
    if ic != model.in_channels() {
        return Err(Error::Shape(format!("the image has {ic} channel(s), the model expects {}", model.in_channels())));
    }
    let a = model.align();
    let (ph, pw) = (round_up(ih, a), round_up(iw, a));
    let (tile, halo) = if opts.whole { ((ph, pw), 0) } else { (opts.tile, opts.halo) };
    let grid = TileGrid::new(ph, pw, tile.0, tile.1, halo, a)?;
    if opts.shard.is_some() && opts.format != Format::Zarr {
        return Err(Error::Usage("--shard needs an OME-Zarr output (.zarr): the shards fill it together".into()));
    }
    if let Some((i, n)) = opts.shard {
        if n == 0 || i >= n {
            return Err(Error::Usage(format!("--shard {i}/{n}: need 0 <= i < n")));
        }
        if n > grid.len() {
            // Shards past the last tile would compute nothing, and the output would never complete.
            return Err(Error::Usage(format!(
                "--shard {i}/{n}: this run has only {} tiles, so at most {} shards",
                grid.len(),
                grid.len()
            )));
        }
    }
    if opts.kind == OutputKind::Probs && opts.format == Format::Png {
        return Err(output_err(out, "PNG holds labels only; write probabilities to .npy, .tif or .zarr"));
    }
    let (channels, out_type) = match opts.kind {
        OutputKind::Labels => (1, if model.classes() > 256 { OutType::U16 } else { OutType::U8 }),
        OutputKind::Probs => (model.classes(), if opts.probs_f16 { OutType::F16 } else { OutType::F32 }),
    };
    let chunk = chunk_for(opts.format, tile, grid.len() == 1)?;
    let spec = OutSpec { height: ih, width: iw, channels, out: out_type, chunk, pixel_size: src.pixel_size() };
    Ok(Layout { image: (ih, iw, ic), tile, halo, grid, spec })
}

/// The normalisation statistics over the whole image, streamed in blocks.
fn statistics(
    src: &mut dyn Source,
    norm: &NormSpec,
    progress: &mut dyn FnMut(Progress),
    note: &mut dyn FnMut(&str),
    cancel: Option<&Cancel>,
) -> Result<Vec<(f64, f64)>> {
    let (ih, iw, ic) = src.shape();
    if !matches!(norm.mode, normalize::Normalize::None | normalize::Normalize::Fixed) {
        note(&format!("normalisation: {:?} statistics over the whole {iw}x{ih} image ...", norm.mode));
    }
    let mut pass = 0;
    normalize::statistics_with(norm, ic, &mut |f| {
        pass += 1;
        for (y0, x0, rows, cols) in normalize::blocks(ih, iw) {
            Cancel::check(cancel)?;
            f(&src.read(y0, x0, rows, cols)?);
            if x0 + cols == iw {
                progress(Progress::Statistics { pass, rows_done: y0 + rows, rows: ih });
            }
        }
        Ok(())
    })
}

/// Run `model` over `src` into `out`, calling `progress` after each statistics band and each tile,
/// and `note` with what the user should know (a resumed run, an earlier output removed). When
/// `cancel` is set the run stops with [`Error::Cancelled`] (the partial output stays for
/// `--resume`).
#[allow(clippy::too_many_arguments)]
pub fn run(
    mut src: Box<dyn Source>,
    model: &Model,
    backend: &dyn Backend,
    out: &Path,
    opts: &StreamOptions,
    progress: &mut dyn FnMut(Progress),
    note: &mut dyn FnMut(&str),
    cancel: Option<&Cancel>,
) -> Result<Summary> {
    let t0 = Instant::now();
    let Layout { image: (ih, iw, ic), tile, halo, grid, spec } = layout(src.as_ref(), model, out, opts)?;
    let t_stats = Instant::now();
    let stats = statistics(src.as_mut(), &opts.norm, progress, note, cancel)?;
    let statistics_seconds = t_stats.elapsed().as_secs_f64();
    // An output that cannot be resumed (a PNG) keeps no journal, and needs no fingerprint (every
    // bit of the weights hashed before the first window).
    let journaled = opts.format.resumable();
    let fingerprint = if journaled {
        let t_fingerprint = Instant::now();
        let fingerprint = model.graph.fingerprint();
        crate::profile::step("the model's fingerprint", t_fingerprint);
        fingerprint
    } else {
        String::new()
    };
    let header = JournalHeader {
        version: 4,
        model: format!("{} {fingerprint}", model.config.config_json()),
        input: if opts.selection.is_empty() {
            opts.input_id.clone()
        } else {
            format!("{}; {}", opts.input_id, opts.selection)
        },
        compute: backend.name(),
        numerics: crate::numerics::REVISION,
        image: (ih, iw, ic),
        tile,
        halo,
        pad: format!("{:?}", opts.pad),
        stats: stats.iter().map(|&(s, o)| (s.to_bits(), o.to_bits())).collect(),
        spec,
        shard: opts.shard,
    };

    // Nothing of an earlier run is touched before this run holds the output's lock: a second run
    // on the same output stops here instead of deleting the first one's partial output.
    let zarr = opts.format == Format::Zarr;
    check_destination(out, zarr, opts.existing, &[])?;
    let _lock = Lock::acquire(&lock_path(out, opts.shard), out)?;
    let (partial, jpath) = (partial_path(out), journal_path(out, opts.format, opts.shard));
    if opts.resume && !journaled {
        note(
            "--resume: a PNG output is written whole at the end, so nothing of an earlier run can be reused; computing every tile",
        );
    }
    let resume = opts.resume && journaled && jpath.exists();
    if !resume && partial.exists() && opts.shard.is_none() {
        note(&format!("removing an earlier unfinished output {} (use --resume to continue it)", partial.display()));
        remove_any(&partial);
        remove_any(&jpath);
    }
    if let Some(parent) = partial.parent().filter(|p| !p.as_os_str().is_empty())
        && !parent.is_dir()
    {
        return Err(output_err(out, format!("directory {} does not exist", parent.display())));
    }
    if opts.shard.is_some() {
        same_run_as_other_shards(&partial, &header)?;
    }
    let (done, records) = if resume { journal::read(&jpath, &header, grid.len())? } else { Default::default() };
    let sink = open_sink(opts.format, &partial, spec, (!done.is_empty()).then_some(&records[..]))?;
    let mut journal = if journaled { Some(Journal::open(&jpath, header, !done.is_empty())?) } else { None };

    let todo: Vec<(usize, Tile)> = grid
        .tiles()
        .enumerate()
        .filter(|(i, _)| opts.shard.is_none_or(|(s, n)| i % n == s))
        .filter(|(i, _)| !done.contains(i))
        .collect();
    let (resumed, total) = (done.len(), todo.len() + done.len());
    if resumed > 0 {
        note(&format!("resuming: {resumed} of {total} tiles already done"));
    }
    let tiles = TileRun {
        backend,
        model,
        image: (ih, iw),
        padded: (grid.padded_h, grid.padded_w),
        halo,
        pad: opts.pad,
        stats: &stats,
        whole: opts.whole,
        labels: opts.kind == OutputKind::Labels,
        abort_after: opts.abort_after,
        cancel,
    }
    .run(
        src.as_mut(),
        &todo,
        sink,
        &mut |i, record| journal.as_mut().map_or(Ok(()), |j| j.append(i, record)),
        (resumed, total),
        progress,
    );
    let sink = match tiles.sink {
        Ok(sink) => sink,
        Err(e) => {
            // Nothing of this output was ever written: an empty partial output helps no resume.
            if resumed == 0 && tiles.computed == 0 && opts.shard.is_none() {
                remove_any(&partial);
                remove_any(&jpath);
            }
            return Err(e);
        }
    };
    if let Some(spec) = &opts.recheck_input
        && super::input_identity(spec)? != opts.input_id
    {
        return Err(Error::Input {
            path: PathBuf::from(spec),
            msg: format!(
                "changed while it was being read; the output is left unfinished in {} (rerun without --resume)",
                partial.display()
            ),
        });
    }
    let complete = commit(sink, out, opts, (&spec, model.classes()), &partial, &jpath)?;
    let secs = t0.elapsed().as_secs_f64();
    Ok(Summary {
        output: out.display().to_string(),
        complete,
        image: ImageShape { width: iw, height: ih, channels: ic },
        tile: Size::from_hw(tile),
        halo,
        tiles_total: total,
        tiles_computed: tiles.computed,
        tiles_resumed: resumed,
        seconds: secs,
        megapixels_per_second: tiles.megapixels / secs.max(1e-9),
        times: StageSeconds {
            read: tiles.read_seconds,
            statistics: statistics_seconds,
            compute: tiles.compute_seconds,
            write: tiles.write_seconds,
        },
        normalization: stats,
        peak_rss_bytes: peak_rss(),
        retries: tiles.retries,
    })
}

/// Finish the container and move it into place (shards: the last one to finish does). Whether the
/// output is complete.
fn commit(
    sink: Box<dyn Sink>,
    out: &Path,
    opts: &StreamOptions,
    (spec, classes): (&OutSpec, usize),
    partial: &Path,
    jpath: &Path,
) -> Result<bool> {
    let zarr = opts.format == Format::Zarr;
    sink.finish()?;
    // An OME-Zarr gets its pyramid once level 0 is whole: here, or in the last shard.
    let pyramid = || -> Result<()> {
        if zarr {
            let sizes = super::pyramid::build(partial, spec)?;
            super::zarr_io::write_group_metadata(partial, spec, sizes.len(), Some(classes))?;
        }
        Ok(())
    };
    let Some((i, n)) = opts.shard else {
        pyramid()?;
        // Checked again: something may have appeared under the output's name meanwhile.
        check_destination(out, zarr, opts.existing, &[])?;
        if zarr {
            remove_any(jpath); // inside the store: a finished store keeps no journal
        }
        move_into_place(partial, out).map_err(|e| Error::io(Side::Output, out, "cannot move into place", e))?;
        remove_any(jpath);
        return Ok(true);
    };
    let mark = |k: usize| partial.join(format!("seamless-shard-{k}-of-{n}.done"));
    std::fs::write(mark(i), b"").map_err(|e| Error::io(Side::Output, out, "cannot mark shard done", e))?;
    if !(0..n).all(|k| mark(k).exists()) {
        return Ok(false);
    }
    // Shards finishing at the same moment may each see every mark: exactly one of them, the one
    // that takes the commit lock, builds the pyramid and moves the store; the others leave it to
    // that one (which may take a while: the pyramid reads the whole of level 0).
    let moved = || out.exists() && !partial.exists();
    let mut commit_lock = partial.as_os_str().to_owned();
    commit_lock.push(".commit.lock");
    let Ok(_lock) = Lock::acquire(Path::new(&commit_lock), out) else {
        return Ok(moved());
    };
    if moved() {
        return Ok(true); // by the shard that held the lock before this one
    }
    // Checked before the marks are removed: when something took the output's name meanwhile, a
    // shard rerun with --resume (and --overwrite) can still complete the store.
    check_destination(out, zarr, opts.existing, &[])?;
    pyramid()?;
    for k in 0..n {
        let _ = std::fs::remove_file(mark(k));
        let _ = std::fs::remove_file(partial.join(format!("seamless-shard-{k}-of-{n}.journal")));
    }
    let _ = std::fs::remove_file(partial.join("seamless-run.json"));
    move_into_place(partial, out).map_err(|e| Error::io(Side::Output, out, "cannot move into place", e))?;
    Ok(true)
}

/// Write an image produced band by band (`band(y0, rows)` gives rows `y0..y0+rows`, all columns)
/// to `out` in `format`, under a temporary name renamed when complete. Memory: one band. The caller
/// has checked `out` with [`check_destination`].
pub fn write_bands(
    out: &Path,
    format: Format,
    spec: OutSpec,
    band: &mut dyn FnMut(usize, usize) -> Result<Tensor>,
) -> Result<()> {
    let partial = partial_path(out);
    remove_any(&partial);
    let mut sink = open_sink(format, &partial, spec, None)?;
    let rows = spec.chunk.max(1);
    let result = (|| {
        for y0 in (0..spec.height).step_by(rows) {
            let t = band(y0, rows.min(spec.height - y0))?;
            sink.write(y0, 0, &t)?;
        }
        sink.finish()
    })();
    if let Err(e) = result {
        remove_any(&partial);
        return Err(e);
    }
    move_into_place(&partial, out).map_err(|e| Error::io(Side::Output, out, "cannot move into place", e))
}
