//! The data path: padded image -> tiles -> backend -> stitched output. The whole-image reference
//! and the tiled run share everything but the grid.

use crate::backend::{Backend, CpuBackend};
use crate::cpu;
use crate::error::{Error, Result};
use crate::model::Model;
use crate::tensor::Tensor;
use std::collections::VecDeque;

use crate::tile_grid::{Tile, TileGrid, round_up};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
pub enum PadMode {
    /// Zeros below and right of the image (the reference run of docs/design.md).
    Zero,
    /// Mirror the image without repeating the edge (numpy's 'reflect'), as the NIST paper does.
    Reflect,
}

/// Pad bottom/right to a multiple of `align`.
pub fn pad_image(img: &Tensor, align: usize, mode: PadMode) -> Tensor {
    let (ph, pw) = (round_up(img.h, align), round_up(img.w, align));
    if (ph, pw) == (img.h, img.w) {
        return img.clone();
    }
    let mut out = Tensor::zeros(img.c, ph, pw);
    let reflect = |i: usize, n: usize| -> usize {
        if n == 1 {
            return 0;
        }
        let period = 2 * (n - 1);
        let m = i % period;
        if m < n { m } else { period - m }
    };
    for c in 0..img.c {
        for y in 0..ph {
            for x in 0..pw {
                let v = match mode {
                    PadMode::Zero if y >= img.h || x >= img.w => 0.0,
                    PadMode::Zero => img.at(c, y, x),
                    PadMode::Reflect => img.at(c, reflect(y, img.h), reflect(x, img.w)),
                };
                out.data[(c * ph + y) * pw + x] = v;
            }
        }
    }
    out
}

/// Network output (softmax probabilities) for the whole image at once: the reference.
pub fn infer_whole(model: &Model, img: &Tensor, pad: PadMode) -> Result<Tensor> {
    infer_whole_on(&CpuBackend::default(), model, img, pad)
}

pub fn infer_whole_on(backend: &dyn Backend, model: &Model, img: &Tensor, pad: PadMode) -> Result<Tensor> {
    check_channels(model, img)?;
    let padded = pad_image(img, model.align(), pad);
    let out = backend.run(&model.graph, &padded)?;
    Ok(out.window(0, 0, img.h, img.w))
}

fn check_channels(model: &Model, img: &Tensor) -> Result<()> {
    if img.c != model.in_channels() {
        return Err(Error::Shape(format!(
            "the image has {} channel(s), the model expects {}",
            img.c,
            model.in_channels()
        )));
    }
    Ok(())
}

/// Network output over a tile grid, stitched. `progress(done, total)` is called after each tile.
pub fn infer_grid(
    model: &Model,
    img: &Tensor,
    pad: PadMode,
    grid: &TileGrid,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Tensor> {
    infer_grid_on(&CpuBackend::default(), model, img, pad, grid, progress)
}

pub fn infer_grid_on(
    backend: &dyn Backend,
    model: &Model,
    img: &Tensor,
    pad: PadMode,
    grid: &TileGrid,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Tensor> {
    infer_grid_with(backend, model, img, pad, grid, progress, &mut |_| {})
}

/// [`infer_grid_on`], telling `notify` when a tile runs out of memory and is retried as smaller
/// tiles (another process took memory the plan counted on). Every output pixel is still
/// computed exactly once; the smaller tiles stay on the A grid, so the result is unchanged.
pub fn infer_grid_with(
    backend: &dyn Backend,
    model: &Model,
    img: &Tensor,
    pad: PadMode,
    grid: &TileGrid,
    progress: &mut dyn FnMut(usize, usize),
    notify: &mut dyn FnMut(&str),
) -> Result<Tensor> {
    check_channels(model, img)?;
    let a = model.align();
    let padded = pad_image(img, a, pad);
    let mut out = Tensor::zeros(model.classes(), padded.h, padded.w);
    let mut queue: VecDeque<Tile> = grid.tiles().collect();
    let (mut done, mut total) = (0, queue.len());
    let halo = grid.halo;
    while let Some(t) = queue.pop_front() {
        // Contract-conforming windows are already multiples of A; others (experiments) are
        // zero-extended so the network accepts them.
        let window = padded.window(t.win_y0, t.win_x0, round_up(t.win_h, a), round_up(t.win_w, a));
        match backend.run(&model.graph, &window) {
            Ok(y) => {
                out.paste(&y, t.y0 - t.win_y0, t.x0 - t.win_x0, t.y0, t.x0, t.h, t.w);
                done += 1;
                progress(done, total);
            }
            Err(Error::OutOfMemory { what, bytes }) if t.h > a || t.w > a => {
                let (sh, sw) = t.retry_size(a);
                let parts = t.split(sh, sw, halo, padded.h, padded.w);
                notify(&format!(
                    "out of memory for {what} ({bytes} bytes); retrying its {}x{} tile as {} tiles of {sh}x{sw}",
                    t.h,
                    t.w,
                    parts.len()
                ));
                total += parts.len() - 1;
                for p in parts.into_iter().rev() {
                    queue.push_front(p);
                }
            }
            Err(e) => return Err(e),
        }
    }
    Ok(out.window(0, 0, img.h, img.w))
}

/// Tiled inference under the exactness contract: tiles of `tile_h x tile_w`, halo `halo`.
pub fn infer_tiled(
    model: &Model,
    img: &Tensor,
    pad: PadMode,
    tile_h: usize,
    tile_w: usize,
    halo: usize,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Tensor> {
    infer_tiled_on(&CpuBackend::default(), model, img, pad, tile_h, tile_w, halo, progress)
}

#[allow(clippy::too_many_arguments)]
pub fn infer_tiled_on(
    backend: &dyn Backend,
    model: &Model,
    img: &Tensor,
    pad: PadMode,
    tile_h: usize,
    tile_w: usize,
    halo: usize,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Tensor> {
    let a = model.align();
    let grid = TileGrid::new(round_up(img.h, a), round_up(img.w, a), tile_h, tile_w, halo, a)?;
    infer_grid_on(backend, model, img, pad, &grid, progress)
}

/// Class index per pixel (first maximum on ties).
pub fn labels(probs: &Tensor) -> Tensor {
    cpu::softmax::argmax(probs)
}
