//! ConvTranspose2d, stride 2, padding 0, k = 2 (U-Net) or 3 (FC-DenseNet, output cropped to
//! `[0, 2h) x [0, 2w)`). Twin of `kernels/conv_transpose.cu`.
//!
//! Output pixel (oy, ox) sums `bias + Σ_ci Σ_ky Σ_kx w[ci][co][ky][kx]·x[ci][iy][ix]` over the taps
//! with `oy = 2·iy + ky`, `ox = 2·ix + kx`, in ascending (ci, ky, kx) order. Which taps exist
//! depends only on the parity of (oy, ox), and windows start on even positions, so tiles and the
//! whole image sum identically. Even and odd output columns are accumulated in separate contiguous
//! chunks on the stack (so the loops vectorise) and interleaved when stored.

use rayon::prelude::*;

use crate::graph::ConvTranspose2d;
use crate::tensor::{Tensor, View};

const CHUNK: usize = 64;

pub fn conv_transpose2d(x: &Tensor, c: &ConvTranspose2d) -> Tensor {
    let mut out = Tensor::zeros(c.cout, 2 * x.h, 2 * x.w);
    conv_transpose2d_into(x.view(), c, &mut out.data);
    out
}

pub fn conv_transpose2d_into(x: View, c: &ConvTranspose2d, out: &mut [f32]) {
    assert_eq!(x.c, c.cin, "conv_transpose2d input channels");
    let (h, w, k) = (x.h, x.w, c.k);
    let (oh, ow) = (2 * h, 2 * w);
    assert_eq!(out.len(), c.cout * oh * ow, "conv_transpose2d output size");
    out.par_chunks_mut(ow).enumerate().for_each(|(t, row)| {
        let (co, oy) = (t / oh, t % oh);
        for j0 in (0..w).step_by(CHUNK) {
            let n = CHUNK.min(w - j0);
            let mut even = [c.bias[co]; CHUNK];
            let mut odd = [c.bias[co]; CHUNK];
            for ci in 0..c.cin {
                let plane = x.plane(ci);
                for ky in 0..k {
                    if ky > oy || (oy - ky) % 2 != 0 || (oy - ky) / 2 >= h {
                        continue;
                    }
                    let src = &plane[(oy - ky) / 2 * w..((oy - ky) / 2 + 1) * w];
                    let wt = |kx: usize| c.weight[((ci * c.cout + co) * k + ky) * k + kx];
                    // kx = 0: even column 2·ix; kx = 1: odd column 2·ix + 1.
                    let (w0, w1) = (wt(0), wt(1));
                    for ((e, o), &v) in even[..n].iter_mut().zip(&mut odd[..n]).zip(&src[j0..j0 + n]) {
                        *e += w0 * v;
                        *o += w1 * v;
                    }
                    if k == 3 {
                        // kx = 2: even column 2·ix + 2, i.e. even[j] reads ix = j - 1.
                        let w2 = wt(2);
                        let first = if j0 == 0 { 1 } else { 0 };
                        for j in first..n {
                            even[j] += w2 * src[j0 + j - 1];
                        }
                    }
                }
            }
            for j in 0..n {
                row[2 * (j0 + j)] = even[j];
                row[2 * (j0 + j) + 1] = odd[j];
            }
        }
    });
}
