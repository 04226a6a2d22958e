//! The one tile runner: windows flow reader -> compute -> writer on three threads joined by
//! bounded queues, so reading and decoding, compute and writing overlap and at most a few windows
//! are in memory at once. Every run goes through it: the streaming run to a file
//! ([`super::stream::run`]) and the in-memory one (`pipeline::infer_on`). It reads each
//! tile's window (padding where the window crosses the image's edge), runs the network on it,
//! retries a window that ran out of memory as smaller tiles cut from it, and writes the tile's
//! interior to a sink.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::sync::mpsc::sync_channel;
use std::time::Instant;

use super::{Sink, Source};
use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::model::Model;
use crate::normalize;
use crate::planner::QUEUE_DEPTH;
use crate::tensor::Tensor;
use crate::tile_grid::{Tile, round_up};

/// How the image is extended to a multiple of A (the same for tiled and whole runs).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
pub enum PadMode {
    /// Zeros below and right of the image (the reference run of docs/design.md).
    Zero,
    /// Mirror the image without repeating the edge (numpy's 'reflect'), as the NIST paper does.
    Reflect,
}

/// What a long run reports as it goes.
#[derive(Clone, Debug, PartialEq)]
pub enum Progress {
    /// A statistics pass (the first is 1) has read `rows_done` of the image's `rows`.
    Statistics { pass: usize, rows_done: usize, rows: usize },
    /// `done` of `total` tiles are written (resumed ones included); `megapixels` computed so far
    /// by this run, of `megapixels_total` it computes in all (resumed tiles in neither).
    Tiles { done: usize, total: usize, megapixels: f64, megapixels_total: f64 },
    /// A window ran out of memory and was retried as smaller tiles (the result is unchanged).
    Retry(String),
}

/// A flag another thread sets to stop a run: the runner stops reading at the next window (or
/// statistics block) and the run ends with [`Error::Cancelled`].
#[derive(Debug, Default)]
pub struct Cancel(std::sync::atomic::AtomicBool);

impl Cancel {
    pub const fn new() -> Cancel {
        Cancel(std::sync::atomic::AtomicBool::new(false))
    }
    /// The flag itself, for a signal handler to set (storing `true` into an atomic is
    /// async-signal-safe): `seamless infer` cancels its run on Ctrl-C this way.
    pub fn flag(&self) -> &std::sync::atomic::AtomicBool {
        &self.0
    }
    /// Ask the run to stop.
    pub fn cancel(&self) {
        self.0.store(true, std::sync::atomic::Ordering::Relaxed);
    }
    pub fn is_cancelled(&self) -> bool {
        self.0.load(std::sync::atomic::Ordering::Relaxed)
    }
    /// `Err(Error::Cancelled)` once cancelled.
    pub fn check(cancel: Option<&Cancel>) -> Result<()> {
        if cancel.is_some_and(Cancel::is_cancelled) { Err(Error::Cancelled) } else { Ok(()) }
    }
}

/// One run over a list of tiles.
pub(crate) struct TileRun<'a> {
    pub backend: &'a dyn Backend,
    pub model: &'a Model,
    /// The image (rows, columns): what the sink holds.
    pub image: (usize, usize),
    /// The image padded to a multiple of A: windows stop there (the whole-image run's own zero
    /// padding lies beyond).
    pub padded: (usize, usize),
    pub halo: usize,
    pub pad: PadMode,
    /// Per-channel `(scale, offset)` applied to every value read.
    pub stats: &'a [(f64, f64)],
    /// The reference run: a window that runs out of memory fails instead of being split.
    pub whole: bool,
    /// Labels (argmax) instead of probabilities.
    pub labels: bool,
    /// Test hook: abort the process after this many tiles are written.
    pub abort_after: Option<usize>,
    pub cancel: Option<&'a Cancel>,
}

/// What the writer thread ends with: the sink and the tiles it wrote, and its busy seconds.
type Written = (Result<(Box<dyn Sink>, usize)>, f64);

/// How a run over tiles ended.
pub(crate) struct TilesDone {
    pub sink: Result<Box<dyn Sink>>,
    /// Tiles computed and written by this run.
    pub computed: usize,
    pub megapixels: f64,
    pub retries: Vec<String>,
    /// Seconds each stage was busy, summed over the tiles: the reader reading and normalising
    /// windows, the compute thread running the network (and argmax, and out-of-memory retries)
    /// but not waiting for windows or for the writer, the writer writing and syncing tiles and
    /// the journal. The stages overlap, so these add up to more than the run's time.
    pub read_seconds: f64,
    pub compute_seconds: f64,
    pub write_seconds: f64,
}

impl TileRun<'_> {
    /// Run `todo` (tile index, tile) from `src` into `sink`. `written(i, sink_record)` is called on
    /// the writer thread after tile `i` is written (the journal); `progress` counts from `done`
    /// of `total`.
    pub fn run(
        &self,
        src: &mut dyn Source,
        todo: &[(usize, Tile)],
        sink: Box<dyn Sink>,
        written: &mut (dyn FnMut(usize, serde_json::Value) -> Result<()> + Send),
        (done, total): (usize, usize),
        progress: &mut dyn FnMut(Progress),
    ) -> TilesDone {
        let (ih, iw) = self.image;
        let visible_mpx = |t: &Tile| (t.h.min(ih.saturating_sub(t.y0)) * t.w.min(iw.saturating_sub(t.x0))) as f64 / 1e6;
        let mpx_total: f64 = todo.iter().map(|(_, t)| visible_mpx(t)).sum();
        let mut retries = Vec::new();
        let mut computed = 0usize;
        let mut mpx = 0f64;
        let abort_after = self.abort_after;
        let (mut read_seconds, mut compute_seconds, mut write_seconds) = (0f64, 0f64, 0f64);
        let sink = std::thread::scope(|scope| {
            let (win_tx, win_rx) = sync_channel::<Result<(usize, Tile, Tensor)>>(QUEUE_DEPTH);
            let (out_tx, out_rx) = sync_channel::<(usize, Tile, Tensor)>(QUEUE_DEPTH);
            let reader = scope.spawn(move || {
                let mut busy = 0f64;
                for &(i, t) in todo {
                    let t0 = Instant::now();
                    let w = Cancel::check(self.cancel).and_then(|_| self.read_window(src, &t)).map(|w| (i, t, w));
                    busy += t0.elapsed().as_secs_f64();
                    let failed = w.is_err();
                    if win_tx.send(w).is_err() || failed {
                        break;
                    }
                }
                busy
            });
            let writer = scope.spawn(move || -> Written {
                let mut busy = 0f64;
                let write = || {
                    let mut sink = sink;
                    let mut n = 0;
                    for (i, t, y) in out_rx {
                        let t0 = Instant::now();
                        let visible =
                            y.window(0, 0, t.h.min(ih.saturating_sub(t.y0)), t.w.min(iw.saturating_sub(t.x0)));
                        if visible.h > 0 && visible.w > 0 {
                            sink.write(t.y0, t.x0, &visible)?;
                        }
                        written(i, sink.sync()?)?;
                        busy += t0.elapsed().as_secs_f64();
                        n += 1;
                        if abort_after == Some(n) {
                            std::process::abort();
                        }
                    }
                    Ok((sink, n))
                };
                let result = write();
                (result, busy)
            });
            // The backend may keep one window in flight while it reads the next (CUDA overlaps
            // the transfers with compute); windows and results come back in order, so the tile of
            // each result is the front of `order`.
            let failure = RefCell::new(None);
            let order = RefCell::new(VecDeque::new());
            // Time the compute thread spends waiting for the reader or the writer.
            let waited = Cell::new(0f64);
            let mut windows = win_rx.into_iter();
            let mut next = || {
                // A cancelled run stops before the next window, not after the windows already read.
                if let Err(e) = Cancel::check(self.cancel) {
                    *failure.borrow_mut() = Some(e);
                    return None;
                }
                let t0 = Instant::now();
                let w = windows.next();
                waited.set(waited.get() + t0.elapsed().as_secs_f64());
                w
            };
            let mut next = || match next()? {
                Ok((i, t, win)) => {
                    order.borrow_mut().push_back((i, t));
                    Some(win)
                }
                Err(e) => {
                    *failure.borrow_mut() = Some(e);
                    None
                }
            };
            let mut finished = |win: Tensor, ran: Result<Tensor>| {
                let (i, t) = order.borrow_mut().pop_front().expect("one tile per window");
                let before = retries.len();
                let y = match self.finish_tile(&t, &win, ran, &mut retries) {
                    Ok(y) => y,
                    Err(e) => {
                        *failure.borrow_mut() = Some(e);
                        return false;
                    }
                };
                for r in &retries[before..] {
                    progress(Progress::Retry(r.clone()));
                }
                drop(win);
                let y = if self.labels { crate::cpu::softmax::argmax(&y) } else { y };
                let t0 = Instant::now();
                if out_tx.send((i, t, y)).is_err() {
                    return false; // the writer failed; its error is reported below
                }
                waited.set(waited.get() + t0.elapsed().as_secs_f64());
                computed += 1;
                mpx += visible_mpx(&t);
                progress(Progress::Tiles {
                    done: done + computed,
                    total,
                    megapixels: mpx,
                    megapixels_total: mpx_total,
                });
                true
            };
            let t0 = Instant::now();
            self.backend.run_pipelined(&self.model.graph, &mut next, &mut finished);
            compute_seconds = (t0.elapsed().as_secs_f64() - waited.get()).max(0.0);
            drop(windows); // unblocks the reader if compute stopped early
            let failure = failure.into_inner();
            drop(out_tx);
            read_seconds = reader.join().unwrap_or(0.0);
            let (written, busy) = writer.join().map_err(|_| Error::Backend("the writer thread panicked".into()))?;
            write_seconds = busy;
            if let Some(e) = failure {
                return Err(e);
            }
            let (sink, n) = written?;
            debug_assert_eq!(n, computed);
            Ok(sink)
        });
        TilesDone { sink, computed, megapixels: mpx, retries, read_seconds, compute_seconds, write_seconds }
    }

    /// `t`'s window, normalised, of a multiple of A (a window of a grid that breaks the contract
    /// is extended), padded past the image's edge as `pad` says and with zeros past the padded
    /// image (where the whole-image run's convolutions see their own zero padding).
    fn read_window(&self, src: &mut dyn Source, t: &Tile) -> Result<Tensor> {
        let a = self.model.align();
        let (ih, iw, c) = src.shape();
        let (ph, pw) = self.padded;
        let (y0, x0, h, w) = (t.win_y0, t.win_x0, round_up(t.win_h, a), round_up(t.win_w, a));
        let stats = self.stats;
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
        let (py1, px1) = ((y0 + h).min(ph), (x0 + w).min(pw));
        if self.pad == PadMode::Reflect && (py1 > ih || px1 > iw) && y0 < py1 && x0 < px1 {
            // Mirrored rows/columns between the image's edge and the padded edge, read from the
            // image (numpy's 'reflect').
            let reflect = |i: usize, n: usize| -> usize {
                if n == 1 {
                    return 0;
                }
                let p = 2 * (n - 1);
                let m = i % p;
                if m < n { m } else { p - m }
            };
            let ys: Vec<usize> = (y0..py1).map(|y| reflect(y, ih)).collect();
            let xs: Vec<usize> = (x0..px1).map(|x| reflect(x, iw)).collect();
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

    /// The network's output for `t`'s interior from its window, retrying as smaller tiles (cut
    /// from the same window) when the backend runs out of memory.
    fn compute_tile(&self, t: &Tile, win: &Tensor, retries: &mut Vec<String>) -> Result<Tensor> {
        let ran = self.backend.run(&self.model.graph, win);
        self.finish_tile(t, win, ran, retries)
    }

    /// [`Self::compute_tile`] given the result of running `t`'s whole window (`ran`).
    fn finish_tile(&self, t: &Tile, win: &Tensor, ran: Result<Tensor>, retries: &mut Vec<String>) -> Result<Tensor> {
        let a = self.model.align();
        match ran {
            Ok(y) => Ok(y.window(t.y0 - t.win_y0, t.x0 - t.win_x0, t.h, t.w)),
            // The whole-image run is the reference: split into tiles it would be another run (and
            // with its halo of 0, an inexact one) reported as whole.
            Err(Error::OutOfMemory { what, bytes }) if self.whole => Err(Error::Backend(format!(
                "--whole: the whole image does not fit ({what} needs {bytes} bytes), and the reference run is \
                 never split into tiles: drop --whole for an exact tiled run, or give a larger --memory-budget"
            ))),
            Err(Error::OutOfMemory { what, bytes }) if t.h > a || t.w > a => {
                let (sh, sw) = t.retry_size(a);
                retries.push(format!(
                    "out of memory for {what} ({bytes} bytes); tile at ({}, {}) retried as {sw}x{sh} tiles",
                    t.y0, t.x0
                ));
                let mut out = Tensor::zeros(self.model.classes(), t.h, t.w);
                for sub in t.split(sh, sw, self.halo, self.padded.0, self.padded.1) {
                    let sub_win = win.window(sub.win_y0 - t.win_y0, sub.win_x0 - t.win_x0, sub.win_h, sub.win_w);
                    let y = self.compute_tile(&sub, &sub_win, retries)?;
                    out.paste(&y, 0, 0, sub.y0 - t.y0, sub.x0 - t.x0, sub.h, sub.w);
                }
                Ok(out)
            }
            Err(e) => Err(e),
        }
    }
}
