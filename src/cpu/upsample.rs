//! x2 up-sampling: nearest, and bilinear with `align_corners=False` (PyTorch's half-pixel rule,
//! source clamped at the map's edge). Twin of `kernels/upsample.cu`.
//!
//! For a factor of 2 the weights are 0.25/0.75 or, at the clamped edge, 0/1, and which applies
//! depends only on the parity of the output position, so tiles reproduce the whole image away
//! from their own edges.

use rayon::prelude::*;

use crate::graph::UpsampleMode;
use crate::tensor::{Tensor, View};

/// (i0, i1, l0, l1): source indices and weights along one axis, PyTorch's formula.
fn source(o: usize, n: usize) -> (usize, usize, f32, f32) {
    let real = ((o as f32 + 0.5) * 0.5 - 0.5).max(0.0);
    let i0 = real as usize;
    let i1 = if i0 + 1 < n { i0 + 1 } else { i0 };
    let l1 = real - i0 as f32;
    (i0, i1, 1.0 - l1, l1)
}

pub fn upsample2(x: &Tensor, mode: UpsampleMode) -> Tensor {
    let mut out = Tensor::zeros(x.c, 2 * x.h, 2 * x.w);
    upsample2_into(x.view(), mode, &mut out.data);
    out
}

pub fn upsample2_into(x: View, mode: UpsampleMode, out: &mut [f32]) {
    let (oh, ow) = (2 * x.h, 2 * x.w);
    assert_eq!(out.len(), x.c * oh * ow, "upsample2 output size");
    out.par_chunks_mut(ow).enumerate().for_each(|(t, row)| {
        let (c, oy) = (t / oh, t % oh);
        let plane = x.plane(c);
        match mode {
            UpsampleMode::Nearest => {
                let src = &plane[oy / 2 * x.w..(oy / 2 + 1) * x.w];
                for (ox, o) in row.iter_mut().enumerate() {
                    *o = src[ox / 2];
                }
            }
            UpsampleMode::Bilinear => {
                let (y0, y1, ly0, ly1) = source(oy, x.h);
                let r0 = &plane[y0 * x.w..(y0 + 1) * x.w];
                let r1 = &plane[y1 * x.w..(y1 + 1) * x.w];
                for (ox, o) in row.iter_mut().enumerate() {
                    let (x0, x1, lx0, lx1) = source(ox, x.w);
                    *o = ly0 * (lx0 * r0[x0] + lx1 * r0[x1]) + ly1 * (lx0 * r1[x0] + lx1 * r1[x1]);
                }
            }
        }
    });
}
