//! The streaming run: statistics pass(es), then tiles flowing reader -> compute -> writer on three
//! threads joined by bounded queues, so reading/decoding, compute and writing overlap and at most
//! a few windows are in memory at once. Output goes to `<out>.partial` (a journal beside it lists
//! finished tiles) and is renamed into place when complete; `--resume` continues from the journal,
//! `--shard i/n` computes every n-th tile into a shared OME-Zarr.

use std::cell::RefCell;
use std::collections::{HashSet, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc::sync_channel;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::{Format, OutSpec, OutType, Sink, Source, npy::NpySink, output_err, tiff_io::TiffSink, zarr_io::ZarrSink};
use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::model::Model;
use crate::normalize::{self, NormSpec};
pub use crate::output::Existing;
use crate::output::{Lock, check_destination, move_into_place};
use crate::pipeline::PadMode;
use crate::tensor::Tensor;
use crate::tile_grid::{Tile, TileGrid, round_up};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum OutputKind {
    Labels,
    Probs,
}

/// What a long run reports as it goes.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Progress {
    /// A statistics pass (the first is 1) has read `rows_done` of the image's `rows`.
    Statistics { pass: usize, rows_done: usize, rows: usize },
    /// `done` of `total` tiles are written (resumed ones included); `megapixels` computed so far.
    Tiles { done: usize, total: usize, megapixels: f64 },
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
    /// The input's spec, when it is a file or store: its identity is taken again when the last
    /// tile is written, and a run whose input changed meanwhile (its tiles would come from two
    /// images) fails instead of moving its output into place.
    pub recheck_input: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    pub output: String,
    pub complete: bool,
    pub image: (usize, usize, usize),
    pub tile: (usize, usize),
    pub halo: usize,
    pub tiles_total: usize,
    pub tiles_computed: usize,
    pub tiles_resumed: usize,
    pub seconds: f64,
    pub megapixels_per_second: f64,
    pub normalization: Vec<(f64, f64)>,
    pub peak_rss_bytes: Option<usize>,
    pub retries: Vec<String>,
}

/// What must match for a partial output to be resumed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct JournalHeader {
    version: u32,
    /// Configuration and `Graph::fingerprint` (every parameter bit).
    model: String,
    /// `slide::input_identity`.
    input: String,
    /// The backend and its precision (`Backend::name`): a run never mixes tiles of two.
    compute: String,
    image: (usize, usize, usize),
    tile: (usize, usize),
    halo: usize,
    pad: String,
    stats: Vec<(u64, u64)>,
    spec: OutSpec,
    shard: Option<(usize, usize)>,
}

#[derive(Serialize, Deserialize)]
struct JournalEntry {
    tile: usize,
    sink: serde_json::Value,
    /// [`JournalEntry::check`]: a line damaged on disk or edited is not taken for a finished tile.
    check: String,
}

impl JournalEntry {
    fn new(header: &JournalHeader, tile: usize, sink: serde_json::Value) -> JournalEntry {
        let check = Self::check(header, tile, &sink);
        JournalEntry { tile, sink, check }
    }

    /// A BLAKE3 hash of the run's header, the tile and what the sink recorded for it.
    fn check(header: &JournalHeader, tile: usize, sink: &serde_json::Value) -> String {
        let text = format!("{}\n{tile}\n{sink}", serde_json::to_string(header).expect("serialisable"));
        blake3::hash(text.as_bytes()).to_hex()[..32].to_string()
    }
}

/// Depth of the queue reader -> compute, and of the queue compute -> writer. One is enough for
/// the three threads to overlap (each side has one item in hand and one waiting); every extra slot
/// is another window the memory budget has to hold.
const QUEUE_DEPTH: usize = 1;

/// Host bytes of the tiles in flight for windows of `h x w`, `in_c` input and `out_c` output
/// channels (f32): at most four input windows (the reader's window and, for a window that
/// crosses the image border, the part it pastes from; one queued; one being computed) and four
/// window-sized outputs (the network's output and its cropped tile in the compute thread, one
/// queued, one being written). Output tiles are counted at the window's size, an upper bound.
/// The tile planner counts these against a CPU memory budget with the arena.
pub fn in_flight_bytes(in_c: usize, out_c: usize, h: usize, w: usize) -> usize {
    let (inputs, outputs) = (3 + QUEUE_DEPTH, 3 + QUEUE_DEPTH);
    // Saturating: a window no machine could hold is then simply over every budget.
    (inputs * in_c + outputs * out_c).saturating_mul(h).saturating_mul(w).saturating_mul(std::mem::size_of::<f32>())
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
    let g = gcd(tile.0, tile.1);
    match format {
        // Prefer 256-512 px TIFF tiles; any multiple of 16 that divides the tile will do.
        Format::Tiff => divisor(g, 256, 512).or_else(|| divisor(g, 16, 1024)).ok_or_else(|| {
            Error::Tiling(format!(
                "TIFF output needs tiles that are multiples of 16 (TIFF tile sizes are); {}x{} is not — \
                 choose a multiple of 16 that is also a multiple of the model's A",
                tile.0, tile.1
            ))
        }),
        _ => Ok(divisor(g, 1, 1024).unwrap_or(g)),
    }
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 { a } else { gcd(b, a % b) }
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

/// Read the window `[y0, y0+h) x [x0, x0+w)` of the image padded to `(ph, pw)` (zeros or
/// mirrored), normalised.
fn read_window(src: &mut dyn Source, t: &Tile, pad: PadMode, stats: &[(f64, f64)]) -> Result<Tensor> {
    let (ih, iw, c) = src.shape();
    let (y0, x0, h, w) = (t.win_y0, t.win_x0, t.win_h, t.win_w);
    let inside = |v0: usize, n: usize, size: usize| (v0.min(size), (v0 + n).min(size));
    let (ry0, ry1) = inside(y0, h, ih);
    let (rx0, rx1) = inside(x0, w, iw);
    if (ry0, rx0, ry1, rx1) == (y0, x0, y0 + h, x0 + w) {
        // Wholly inside the image (every interior tile): the part read is the window, no copy.
        let mut win = src.read(y0, x0, h, w)?;
        normalize::apply(&mut win, stats);
        return Ok(win);
    }
    let mut win = Tensor::zeros(c, h, w);
    if ry1 > ry0 && rx1 > rx0 {
        let mut part = src.read(ry0, rx0, ry1 - ry0, rx1 - rx0)?;
        normalize::apply(&mut part, stats);
        win.paste(&part, 0, 0, ry0 - y0, rx0 - x0, ry1 - ry0, rx1 - rx0);
    }
    if pad == PadMode::Reflect && (y0 + h > ih || x0 + w > iw) {
        // Mirrored rows/columns past the edge, read from the image (numpy's 'reflect').
        let reflect = |i: usize, n: usize| -> usize {
            if n == 1 {
                return 0;
            }
            let p = 2 * (n - 1);
            let m = i % p;
            if m < n { m } else { p - m }
        };
        let ys: Vec<usize> = (y0..y0 + h).map(|y| reflect(y, ih)).collect();
        let xs: Vec<usize> = (x0..x0 + w).map(|x| reflect(x, iw)).collect();
        let (sy0, sy1) = (*ys.iter().min().unwrap(), *ys.iter().max().unwrap() + 1);
        let (sx0, sx1) = (*xs.iter().min().unwrap(), *xs.iter().max().unwrap() + 1);
        let mut block = src.read(sy0, sx0, sy1 - sy0, sx1 - sx0)?;
        normalize::apply(&mut block, stats);
        for ch in 0..c {
            for (wy, &sy) in ys.iter().enumerate() {
                for (wx, &sx) in xs.iter().enumerate() {
                    if y0 + wy >= ih || x0 + wx >= iw {
                        win.data[(ch * h + wy) * w + wx] = block.at(ch, sy - sy0, sx - sx0);
                    }
                }
            }
        }
    }
    Ok(win)
}

/// The network's output for `t`'s interior from its window, retrying as smaller tiles (cut from
/// the same window) when the backend runs out of memory.
fn compute_tile(
    backend: &dyn Backend,
    model: &Model,
    t: &Tile,
    win: &Tensor,
    halo: usize,
    dims: (usize, usize),
    retries: &mut Vec<String>,
) -> Result<Tensor> {
    let ran = backend.run(&model.graph, win);
    finish_tile(backend, model, t, win, ran, halo, dims, retries, false)
}

/// [`compute_tile`] given the result of running `t`'s whole window (`ran`): its interior, or the
/// retry as smaller tiles after running out of memory.
#[allow(clippy::too_many_arguments)]
fn finish_tile(
    backend: &dyn Backend,
    model: &Model,
    t: &Tile,
    win: &Tensor,
    ran: Result<Tensor>,
    halo: usize,
    dims: (usize, usize),
    retries: &mut Vec<String>,
    whole: bool,
) -> Result<Tensor> {
    let a = model.align();
    match ran {
        Ok(y) => Ok(y.window(t.y0 - t.win_y0, t.x0 - t.win_x0, t.h, t.w)),
        // The whole-image run is the reference: split into tiles it would be another run (and with
        // its halo of 0, an inexact one) reported as whole.
        Err(Error::OutOfMemory { what, bytes }) if whole => Err(Error::Backend(format!(
            "--whole: the whole image does not fit ({what} needs {bytes} bytes), and the reference run is \
             never split into tiles: drop --whole for an exact tiled run, or give a larger --memory-budget"
        ))),
        Err(Error::OutOfMemory { what, bytes }) if t.h > a || t.w > a => {
            let (sh, sw) = t.retry_size(a);
            retries.push(format!(
                "out of memory for {what} ({bytes} bytes); tile at ({}, {}) retried as {sh}x{sw} tiles",
                t.y0, t.x0
            ));
            let mut out = Tensor::zeros(model.classes(), t.h, t.w);
            for sub in t.split(sh, sw, halo, dims.0, dims.1) {
                let sub_win = win.window(sub.win_y0 - t.win_y0, sub.win_x0 - t.win_x0, sub.win_h, sub.win_w);
                let y = compute_tile(backend, model, &sub, &sub_win, halo, dims, retries)?;
                out.paste(&y, 0, 0, sub.y0 - t.y0, sub.x0 - t.x0, sub.h, sub.w);
            }
            Ok(out)
        }
        Err(e) => Err(e),
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
        let file = File::create(&self.path).map_err(|e| output_err(&self.path, format!("cannot create: {e}")))?;
        let mut enc = png::Encoder::new(std::io::BufWriter::new(file), self.img.w as u32, self.img.h as u32);
        enc.set_color(png::ColorType::Grayscale);
        let bytes: Vec<u8> = if self.classes_wide {
            enc.set_depth(png::BitDepth::Sixteen);
            self.img.data.iter().flat_map(|&v| (v as u16).to_be_bytes()).collect()
        } else {
            enc.set_depth(png::BitDepth::Eight);
            self.img.data.iter().map(|&v| v as u8).collect()
        };
        let err = |e: png::EncodingError| output_err(&self.path, format!("write failed: {e}"));
        let mut wr = enc.write_header().map_err(err)?;
        wr.write_image_data(&bytes).map_err(err)?;
        wr.finish().map_err(err)
    }
}

/// Run `model` over `src` into `out`, calling `progress` after each statistics band and each tile.
#[allow(clippy::too_many_arguments)]
pub fn run(
    mut src: Box<dyn Source>,
    model: &Model,
    backend: &dyn Backend,
    out: &Path,
    opts: &StreamOptions,
    progress: &mut dyn FnMut(Progress),
    note: &mut dyn FnMut(&str),
) -> Result<Summary> {
    let t0 = Instant::now();
    let (ih, iw, ic) = src.shape();
    // Before the statistics pass, which alone reads the whole image.
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
    if let Some((i, n)) = opts.shard
        && (n == 0 || i >= n)
    {
        return Err(Error::Usage(format!("--shard {i}/{n}: need 0 <= i < n")));
    }
    if let Some((i, n)) = opts.shard
        && n > grid.len()
    {
        // Shards past the last tile would compute nothing, and the output would never complete.
        return Err(Error::Usage(format!(
            "--shard {i}/{n}: this run has only {} tiles, so at most {} shards",
            grid.len(),
            grid.len()
        )));
    }
    let (channels, out_type) = match opts.kind {
        OutputKind::Labels => (1, if model.classes() > 256 { OutType::U16 } else { OutType::U8 }),
        OutputKind::Probs => (model.classes(), if opts.probs_f16 { OutType::F16 } else { OutType::F32 }),
    };
    let chunk = chunk_for(opts.format, tile, grid.len() == 1)?;
    let spec = OutSpec { height: ih, width: iw, channels, out: out_type, chunk };
    if opts.kind == OutputKind::Probs && opts.format == Format::Png {
        return Err(output_err(out, "PNG holds labels only; write probabilities to .npy, .tif or .zarr"));
    }

    // Statistics over the whole image, streamed in bands.
    if !matches!(opts.norm.mode, normalize::Normalize::None | normalize::Normalize::Fixed) {
        note(&format!("normalisation: {:?} statistics over the whole {iw}x{ih} image ...", opts.norm.mode));
    }
    let mut pass = 0;
    let stats = normalize::statistics_with(&opts.norm, ic, &mut |f| {
        pass += 1;
        for (y0, x0, rows, cols) in normalize::blocks(ih, iw) {
            f(&src.read(y0, x0, rows, cols)?);
            if x0 + cols == iw {
                progress(Progress::Statistics { pass, rows_done: y0 + rows, rows: ih });
            }
        }
        Ok(())
    })?;

    // The partial output and its journal.
    let partial = partial_path(out);
    let jpath = journal_path(out, opts.format, opts.shard);
    let header = JournalHeader {
        version: 3,
        model: format!("{} {}", model.config.config_json(), model.graph.fingerprint()),
        input: opts.input_id.clone(),
        compute: backend.name(),
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
    // A PNG is encoded whole at the end from memory: an interrupted run leaves no tiles to reuse.
    let png_resume = opts.resume && opts.format == Format::Png && jpath.exists();
    if png_resume {
        note(
            "--resume: a PNG output is written whole at the end, so no tile of the earlier run can be reused; computing every tile",
        );
    }
    let (done, sink_journal) = if opts.resume && jpath.exists() && !png_resume {
        read_journal(&jpath, &header, grid.len())?
    } else {
        if partial.exists() && opts.shard.is_none() {
            note(&format!("removing an earlier unfinished output {} (use --resume to continue it)", partial.display()));
            remove_any(&partial);
            remove_any(&jpath);
        }
        (HashSet::new(), Vec::new())
    };
    if let Some(parent) = partial.parent().filter(|p| !p.as_os_str().is_empty())
        && !parent.is_dir()
    {
        return Err(output_err(out, format!("directory {} does not exist", parent.display())));
    }
    if opts.shard.is_some() {
        same_run_as_other_shards(&partial, &header)?;
    }
    let resuming = !done.is_empty();
    let sink = open_sink(opts.format, &partial, spec, resuming.then_some(&sink_journal[..]))?;
    let mut journal = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&jpath)
        .map_err(|e| output_err(out, format!("cannot write the journal {}: {e}", jpath.display())))?;
    if !resuming {
        journal.set_len(0).ok();
        writeln!(journal, "{}", serde_json::to_string(&header).expect("serialisable"))
            .map_err(|e| output_err(out, format!("journal: {e}")))?;
    }

    let todo: Vec<(usize, Tile)> = grid
        .tiles()
        .enumerate()
        .filter(|(i, _)| opts.shard.is_none_or(|(s, n)| i % n == s))
        .filter(|(i, _)| !done.contains(i))
        .collect();
    let total = todo.len() + done.len();
    let resumed = done.len();
    if resumed > 0 {
        note(&format!("resuming: {resumed} of {total} tiles already done"));
    }
    let mut retries = Vec::new();
    let mut computed = 0usize;
    let mut mpx = 0f64;
    let abort_after = opts.abort_after;

    // Reader -> compute (this thread) -> writer, bounded queues of QUEUE_DEPTH tiles each.
    let result: Result<Box<dyn Sink>> = std::thread::scope(|scope| {
        let (win_tx, win_rx) = sync_channel::<Result<(usize, Tile, Tensor)>>(QUEUE_DEPTH);
        let (out_tx, out_rx) = sync_channel::<(usize, Tile, Tensor)>(QUEUE_DEPTH);
        let pad = opts.pad;
        let stats_r = &stats;
        let todo_r = &todo;
        let reader = scope.spawn(move || {
            for &(i, t) in todo_r {
                let w = read_window(src.as_mut(), &t, pad, stats_r).map(|w| (i, t, w));
                let failed = w.is_err();
                if win_tx.send(w).is_err() || failed {
                    return;
                }
            }
        });
        let jpath_w = &jpath;
        let header_w = &header;
        let writer = scope.spawn(move || -> Result<(Box<dyn Sink>, usize)> {
            let mut sink = sink;
            let mut n = 0;
            for (i, t, y) in out_rx {
                let visible = y.window(0, 0, t.h.min(ih.saturating_sub(t.y0)), t.w.min(iw.saturating_sub(t.x0)));
                if visible.h > 0 && visible.w > 0 {
                    sink.write(t.y0, t.x0, &visible)?;
                }
                let delta = sink.sync()?;
                let line = serde_json::to_string(&JournalEntry::new(header_w, i, delta)).expect("serialisable");
                writeln!(journal, "{line}")
                    .and_then(|_| journal.sync_data())
                    .map_err(|e| output_err(jpath_w, format!("journal: {e}")))?;
                n += 1;
                if abort_after == Some(n) {
                    std::process::abort();
                }
            }
            Ok((sink, n))
        });
        // The backend may keep one window in flight while it reads the next (CUDA overlaps the
        // transfers with compute); windows and results come back in order, so the tile of each
        // result is the front of `order`.
        let failure = RefCell::new(None);
        let order = RefCell::new(VecDeque::new());
        let mut windows = win_rx.into_iter();
        let mut next = || match windows.next()? {
            Ok((i, t, win)) => {
                order.borrow_mut().push_back((i, t));
                Some(win)
            }
            Err(e) => {
                *failure.borrow_mut() = Some(e);
                None
            }
        };
        let mut done = |win: Tensor, ran: Result<Tensor>| {
            let (i, t) = order.borrow_mut().pop_front().expect("one tile per window");
            let y = match finish_tile(backend, model, &t, &win, ran, halo, (ph, pw), &mut retries, opts.whole) {
                Ok(y) => y,
                Err(e) => {
                    *failure.borrow_mut() = Some(e);
                    return false;
                }
            };
            drop(win);
            let y = match opts.kind {
                OutputKind::Labels => crate::cpu::softmax::argmax(&y),
                OutputKind::Probs => y,
            };
            if out_tx.send((i, t, y)).is_err() {
                return false; // the writer failed; its error is reported below
            }
            computed += 1;
            mpx += (t.h.min(ih.saturating_sub(t.y0)) * t.w.min(iw.saturating_sub(t.x0))) as f64 / 1e6;
            progress(Progress::Tiles { done: resumed + computed, total, megapixels: mpx });
            true
        };
        backend.run_pipelined(&model.graph, &mut next, &mut done);
        drop(windows); // unblocks the reader if compute stopped early
        let failure = failure.into_inner();
        drop(out_tx);
        let _ = reader.join();
        let written = writer.join().map_err(|_| Error::Backend("the writer thread panicked".into()))?;
        if let Some(e) = failure {
            return Err(e);
        }
        let (sink, n) = written?;
        debug_assert_eq!(n, computed);
        Ok(sink)
    });
    let sink = match result {
        Ok(sink) => sink,
        Err(e) => {
            // Nothing of this output was ever written: an empty partial output helps no resume.
            if resumed == 0 && computed == 0 && opts.shard.is_none() {
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
    for r in &retries {
        note(r);
    }

    // Complete: finish the container, then move it into place (shards: the last one does).
    let complete = match opts.shard {
        None => {
            sink.finish()?;
            // Checked again: something may have appeared under the output's name meanwhile.
            check_destination(out, zarr, opts.existing, &[])?;
            if zarr {
                remove_any(&jpath); // inside the store: a finished store keeps no journal
            }
            move_into_place(&partial, out).map_err(|e| output_err(out, format!("cannot move into place: {e}")))?;
            remove_any(&jpath);
            true
        }
        Some((i, n)) => {
            sink.finish()?;
            std::fs::write(partial.join(format!("seamless-shard-{i}-of-{n}.done")), b"")
                .map_err(|e| output_err(out, format!("cannot mark shard done: {e}")))?;
            let all = (0..n).all(|k| partial.join(format!("seamless-shard-{k}-of-{n}.done")).exists());
            if all {
                for k in 0..n {
                    let _ = std::fs::remove_file(partial.join(format!("seamless-shard-{k}-of-{n}.done")));
                    let _ = std::fs::remove_file(partial.join(format!("seamless-shard-{k}-of-{n}.journal")));
                }
                check_destination(out, zarr, opts.existing, &[])?;
                let _ = std::fs::remove_file(partial.join("seamless-run.json"));
                match move_into_place(&partial, out) {
                    Ok(()) => true,
                    // Another shard finished at the same moment and moved it already.
                    Err(_) if out.exists() && !partial.exists() => true,
                    Err(e) => return Err(output_err(out, format!("cannot move into place: {e}"))),
                }
            } else {
                false
            }
        }
    };
    let secs = t0.elapsed().as_secs_f64();
    Ok(Summary {
        output: out.display().to_string(),
        complete,
        image: (ih, iw, ic),
        tile,
        halo,
        tiles_total: total,
        tiles_computed: computed,
        tiles_resumed: resumed,
        seconds: secs,
        megapixels_per_second: mpx / secs.max(1e-9),
        normalization: stats,
        peak_rss_bytes: peak_rss(),
        retries,
    })
}

/// A cheap fingerprint of the weights, so a resume with another model is refused.
/// Shards of one output must be one run: the first to start records the run's settings in the
/// store (`seamless-run.json`, everything of the journal header but the shard number), and every
/// other shard must match them before it writes anything, metadata included.
fn same_run_as_other_shards(partial: &Path, header: &JournalHeader) -> Result<()> {
    let bad = |m: String| Error::Output { path: partial.to_path_buf(), msg: m };
    std::fs::create_dir_all(partial).map_err(|e| bad(format!("cannot create: {e}")))?;
    let mut run = serde_json::to_value(header).expect("serialisable");
    run["shard"] = serde_json::Value::Null;
    let text = serde_json::to_string(&run).expect("serialisable");
    let path = partial.join("seamless-run.json");
    match OpenOptions::new().write(true).create_new(true).open(&path) {
        Ok(mut f) => f.write_all(text.as_bytes()).and_then(|_| f.sync_all()).map_err(|e| bad(format!("{e}"))),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            // Another shard is writing it at this moment: wait until it holds a whole line.
            let mut theirs = String::new();
            for _ in 0..50 {
                theirs = std::fs::read_to_string(&path).unwrap_or_default();
                if serde_json::from_str::<serde_json::Value>(&theirs).is_ok() {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            if serde_json::from_str::<serde_json::Value>(&theirs).ok() == Some(run) {
                Ok(())
            } else {
                Err(bad("the other shards of this output run with other settings (model, image, backend, tile, halo, \
                         normalisation or output type differ): every shard must be given the same ones"
                    .into()))
            }
        }
        Err(e) => Err(bad(format!("cannot write {}: {e}", path.display()))),
    }
}

fn read_journal(path: &Path, want: &JournalHeader, tiles: usize) -> Result<(HashSet<usize>, Vec<serde_json::Value>)> {
    let bad = |m: String| Error::Output { path: path.to_path_buf(), msg: m };
    let file = File::open(path).map_err(|e| bad(format!("cannot read the journal: {e}")))?;
    let mut lines = BufReader::new(file).lines();
    let head: JournalHeader = lines
        .next()
        .and_then(|l| l.ok())
        .and_then(|l| serde_json::from_str(&l).ok())
        .ok_or_else(|| bad("the journal is unreadable; rerun without --resume".into()))?;
    if &head != want {
        return Err(bad(
            "the unfinished output was made with other settings (model, image, tile, halo, normalisation or \
             output type differ); rerun without --resume to start over"
                .into(),
        ));
    }
    let (mut done, mut sink) = (HashSet::new(), Vec::new());
    for line in lines.map_while(|l| l.ok()) {
        // A torn last line (killed mid-write), or one damaged or edited, is ignored: that tile is
        // simply redone.
        if let Ok(e) = serde_json::from_str::<JournalEntry>(&line)
            && e.check == JournalEntry::check(want, e.tile, &e.sink)
        {
            if e.tile >= tiles {
                return Err(bad(format!(
                    "the journal lists tile {}, but this run has {tiles} tiles; rerun without --resume",
                    e.tile
                )));
            }
            done.insert(e.tile);
            sink.push(e.sink);
        }
    }
    Ok((done, sink))
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
    move_into_place(&partial, out).map_err(|e| output_err(out, format!("cannot move into place: {e}")))
}
