//! ConvTranspose2d, stride 2, padding 0, k = 2 (U-Net) or 3 (FC-DenseNet, output cropped to
//! `[0, 2h) x [0, 2w)`). Twin of `kernels/conv_transpose.cu`.
//!
//! Output pixel (oy, ox) sums `bias + Σ_ci Σ_ky Σ_kx w[ci][co][ky][kx]·x[ci][iy][ix]` over the taps
//! with `oy = 2·iy + ky`, `ox = 2·ix + kx`, in ascending (ci, ky, kx) order. Which taps exist
//! depends only on the parity of (oy, ox), and windows start on even positions, so tiles and the
//! whole image sum identically.

use rayon::prelude::*;

use crate::graph::ConvTranspose2d;
use crate::tensor::Tensor;

pub fn conv_transpose2d(x: &Tensor, c: &ConvTranspose2d) -> Tensor {
    assert_eq!(x.c, c.cin, "conv_transpose2d input channels");
    let (h, w, k) = (x.h, x.w, c.k);
    let (oh, ow) = (2 * h, 2 * w);
    let mut out = Tensor::zeros(c.cout, oh, ow);
    out.data.par_chunks_mut(ow).enumerate().for_each(|(t, row)| {
        let (co, oy) = (t / oh, t % oh);
        row.fill(c.bias[co]);
        for ci in 0..c.cin {
            let plane = x.plane(ci);
            for ky in 0..k {
                if ky > oy || (oy - ky) % 2 != 0 || (oy - ky) / 2 >= h {
                    continue;
                }
                let in_row = &plane[(oy - ky) / 2 * w..((oy - ky) / 2 + 1) * w];
                for kx in 0..k {
                    let wv = c.weight[((ci * c.cout + co) * k + ky) * k + kx];
                    // ox = 2·ix + kx for every ix with ox < 2w.
                    let n = if kx < 2 { w } else { w - 1 };
                    for ix in 0..n {
                        row[2 * ix + kx] += wv * in_row[ix];
                    }
                }
            }
        }
    });
    out
}
