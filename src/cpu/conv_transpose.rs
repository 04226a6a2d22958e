//! ConvTranspose2d, stride 2, padding 0, k = 2 (U-Net) or 3 (FC-DenseNet, output cropped to
//! `[0, 2h) x [0, 2w)`). Twin of `kernels/conv_transpose.cu`.
//!
//! Output pixel (oy, ox) sums `bias + Σ_ci Σ_ky Σ_kx w[ci][co][ky][kx]·x[ci][iy][ix]` over the taps
//! with `oy = 2·iy + ky`, `ox = 2·ix + kx`, in ascending (ci, ky, kx) order. Which taps exist
//! depends only on the parity of (oy, ox), and windows start on even positions, so tiles and the
//! whole image sum identically. Even and odd output columns are accumulated in separate contiguous
//! rows (so the loops vectorise) and interleaved at the end.

use rayon::prelude::*;

use crate::graph::ConvTranspose2d;
use crate::tensor::Tensor;

pub fn conv_transpose2d(x: &Tensor, c: &ConvTranspose2d) -> Tensor {
    assert_eq!(x.c, c.cin, "conv_transpose2d input channels");
    let (h, w, k) = (x.h, x.w, c.k);
    let (oh, ow) = (2 * h, 2 * w);
    let mut out = Tensor::zeros(c.cout, oh, ow);
    out.data.par_chunks_mut(ow).enumerate().for_each_init(
        || (vec![0.0f32; w], vec![0.0f32; w]),
        |(even, odd), (t, row)| {
            let (co, oy) = (t / oh, t % oh);
            even.fill(c.bias[co]);
            odd.fill(c.bias[co]);
            for ci in 0..c.cin {
                let plane = x.plane(ci);
                for ky in 0..k {
                    if ky > oy || (oy - ky) % 2 != 0 || (oy - ky) / 2 >= h {
                        continue;
                    }
                    let iy = (oy - ky) / 2;
                    let src = &plane[iy * w..(iy + 1) * w];
                    let wt = |kx: usize| c.weight[((ci * c.cout + co) * k + ky) * k + kx];
                    // kx = 0: even column 2·ix; kx = 1: odd column 2·ix + 1.
                    let (w0, w1) = (wt(0), wt(1));
                    for ((e, o), &v) in even.iter_mut().zip(odd.iter_mut()).zip(src) {
                        *e += w0 * v;
                        *o += w1 * v;
                    }
                    if k == 3 {
                        // kx = 2: even column 2·ix + 2, i.e. even[j] reads ix = j - 1.
                        let w2 = wt(2);
                        for (e, &v) in even[1..].iter_mut().zip(&src[..w - 1]) {
                            *e += w2 * v;
                        }
                    }
                }
            }
            for (j, pair) in row.chunks_exact_mut(2).enumerate() {
                pair[0] = even[j];
                pair[1] = odd[j];
            }
        },
    );
    out
}
