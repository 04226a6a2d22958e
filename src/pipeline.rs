//! In-memory inference: an image held whole goes in, its probabilities come out. It runs through
//! the one tile runner of the streaming path (`slide`), with the image as the source and a tensor
//! as the sink, so a tiled run here, a whole-image run here and a run to a file read the same
//! windows, pad them the same way and retry the same way.

use std::sync::{Arc, Mutex};

use crate::backend::Backend;
use crate::cpu::CpuBackend;
use crate::error::{Error, Result};
use crate::model::Model;
use crate::slide::tiles::TileRun;
pub use crate::slide::{Cancel, PadMode, Progress};
use crate::slide::{Sink, Source};
use crate::tensor::Tensor;
use crate::tile_grid::{TileGrid, round_up};

/// How an image is cut into windows.
#[derive(Clone, Copy, Debug)]
pub enum Tiling<'a> {
    /// One window over the whole image padded to a multiple of A, no halo: the reference run.
    Whole,
    /// Tiles of `tile` (rows, columns) with `halo` pixels of context on every side.
    Tiles { tile: (usize, usize), halo: usize },
    /// Any grid over the image padded to a multiple of A, including ones that break the
    /// exactness contract (experiments: `sweep`); windows off the A grid are extended to it.
    Grid(&'a TileGrid),
}

/// [`infer_on`] on the CPU, without progress.
pub fn infer(model: &Model, img: &Tensor, pad: PadMode, tiling: Tiling) -> Result<Tensor> {
    infer_on(&CpuBackend::default(), model, img, pad, tiling, &mut |_| {}, None)
}

/// Softmax probabilities of `model` over `img` (already normalised), cut as `tiling` says and
/// stitched. `progress` hears of each tile, and of a window that ran out of memory and was retried
/// as smaller tiles (the result is unchanged; a whole-image run fails instead). `cancel` stops the
/// run with [`Error::Cancelled`].
pub fn infer_on(
    backend: &dyn Backend,
    model: &Model,
    img: &Tensor,
    pad: PadMode,
    tiling: Tiling,
    progress: &mut dyn FnMut(Progress),
    cancel: Option<&Cancel>,
) -> Result<Tensor> {
    infer_normalising(backend, model, img, &[], pad, tiling, progress, cancel)
}

/// [`infer_on`] of a raw image, normalised a window at a time with `stats` (per channel `(scale,
/// offset)`) as the runner reads it: the same values as normalising the whole image first, without
/// a normalised copy of it.
#[allow(clippy::too_many_arguments)]
pub(crate) fn infer_normalising(
    backend: &dyn Backend,
    model: &Model,
    img: &Tensor,
    stats: &[(f64, f64)],
    pad: PadMode,
    tiling: Tiling,
    progress: &mut dyn FnMut(Progress),
    cancel: Option<&Cancel>,
) -> Result<Tensor> {
    if img.c != model.in_channels() {
        return Err(Error::Shape(format!(
            "the image has {} channel(s), the model expects {}",
            img.c,
            model.in_channels()
        )));
    }
    let a = model.align();
    let (ph, pw) = (round_up(img.h, a), round_up(img.w, a));
    let owned;
    let grid = match tiling {
        Tiling::Whole => {
            owned = TileGrid::new(ph, pw, ph, pw, 0, a)?;
            &owned
        }
        Tiling::Tiles { tile, halo } => {
            owned = TileGrid::new(ph, pw, tile.0, tile.1, halo, a)?;
            &owned
        }
        Tiling::Grid(g) => g,
    };
    let todo: Vec<_> = grid.tiles().enumerate().collect();
    let result = Arc::new(Mutex::new(None));
    let sink = Box::new(TensorSink { probs: Tensor::zeros(model.classes(), img.h, img.w), done: result.clone() });
    let run = TileRun {
        backend,
        model,
        image: (img.h, img.w),
        padded: (grid.padded_h, grid.padded_w),
        halo: grid.halo,
        pad,
        stats,
        whole: matches!(tiling, Tiling::Whole),
        labels: false,
        abort_after: None,
        cancel,
    };
    let tiles = run.run(&mut Borrowed(img), &todo, sink, &mut |_, _| Ok(()), (0, todo.len()), progress);
    tiles.sink?.finish()?;
    let probs = result.lock().unwrap_or_else(|e| e.into_inner()).take();
    Ok(probs.expect("the sink's finish leaves the result"))
}

/// Class index per pixel (first maximum on ties).
pub fn labels(probs: &Tensor) -> Tensor {
    crate::cpu::softmax::argmax(probs)
}

/// An image in memory, read in windows without a copy of the whole.
struct Borrowed<'a>(&'a Tensor);

impl Source for Borrowed<'_> {
    fn shape(&self) -> (usize, usize, usize) {
        (self.0.h, self.0.w, self.0.c)
    }
    fn read(&mut self, y0: usize, x0: usize, h: usize, w: usize) -> Result<Tensor> {
        Ok(self.0.window(y0, x0, h, w))
    }
    fn sample_type(&self) -> &'static str {
        "f32"
    }
}

/// The stitched result, handed over when the run finishes.
struct TensorSink {
    probs: Tensor,
    done: Arc<Mutex<Option<Tensor>>>,
}

impl Sink for TensorSink {
    fn write(&mut self, y0: usize, x0: usize, t: &Tensor) -> Result<()> {
        self.probs.paste(t, 0, 0, y0, x0, t.h, t.w);
        Ok(())
    }
    fn sync(&mut self) -> Result<serde_json::Value> {
        Ok(serde_json::Value::Null)
    }
    fn finish(self: Box<Self>) -> Result<()> {
        *self.done.lock().unwrap_or_else(|e| e.into_inner()) = Some(self.probs);
        Ok(())
    }
}
