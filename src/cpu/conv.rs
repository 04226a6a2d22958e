//! Conv2d, odd k x k, stride 1, zero "same" padding, bias, optional fused ReLU. Twin of
//! `kernels/conv.cu`.
//!
//! Each output element is `bias + Σ_ci Σ_ky Σ_kx w·x` accumulated in exactly that order with
//! separate multiply and add (no FMA contraction, no reassociation); taps that fall on the zero
//! padding are skipped. Vectorisation runs across output columns, which never changes the order
//! of any one element's sum, so the result is independent of the map's extent and position.

use rayon::prelude::*;

use super::DisjointOut;
use crate::graph::Conv2d;
use crate::tensor::Tensor;

const CO_BLOCK: usize = 4;

pub fn conv2d(x: &Tensor, c: &Conv2d) -> Tensor {
    assert_eq!(x.c, c.cin, "conv2d input channels");
    let (h, w) = (x.h, x.w);
    let mut out = Tensor::zeros(c.cout, h, w);
    let ptr = DisjointOut(out.data.as_mut_ptr());
    let blocks = c.cout.div_ceil(CO_BLOCK);
    let tasks = blocks * h;
    (0..tasks).into_par_iter().with_min_len(4).for_each(|t| {
        let (b, y) = (t / h, t % h);
        let co0 = b * CO_BLOCK;
        let n = CO_BLOCK.min(c.cout - co0);
        // SAFETY: task (b, y) alone writes rows y of channels co0..co0+n.
        let mut rows: Vec<&mut [f32]> = (0..n).map(|j| unsafe { ptr.slice(((co0 + j) * h + y) * w, w) }).collect();
        conv_row(x, c, co0, y, &mut rows);
    });
    out
}

fn conv_row(x: &Tensor, c: &Conv2d, co0: usize, y: usize, rows: &mut [&mut [f32]]) {
    let (h, w, k) = (x.h, x.w, c.k);
    let r = k / 2;
    for (j, row) in rows.iter_mut().enumerate() {
        row.fill(c.bias[co0 + j]);
    }
    let wstride = c.cin * k * k;
    for ci in 0..c.cin {
        let plane = x.plane(ci);
        for ky in 0..k {
            let iy = y as isize + ky as isize - r as isize;
            if iy < 0 || iy >= h as isize {
                continue;
            }
            let in_row = &plane[iy as usize * w..(iy as usize + 1) * w];
            for kx in 0..k {
                // Output columns whose tap kx lands inside the row.
                let x0 = r.saturating_sub(kx);
                let x1 = (w + r).saturating_sub(kx).min(w);
                if x0 >= x1 {
                    continue;
                }
                let src = &in_row[x0 + kx - r..x1 + kx - r];
                let widx = (ci * k + ky) * k + kx;
                match rows.len() {
                    4 => {
                        let wv = [0, 1, 2, 3].map(|j| c.weight[(co0 + j) * wstride + widx]);
                        let [a, b, cc, d] = rows else { unreachable!() };
                        axpy4(&mut a[x0..x1], &mut b[x0..x1], &mut cc[x0..x1], &mut d[x0..x1], src, wv);
                    }
                    _ => {
                        for (j, row) in rows.iter_mut().enumerate() {
                            let wv = c.weight[(co0 + j) * wstride + widx];
                            for (o, &v) in row[x0..x1].iter_mut().zip(src) {
                                *o += wv * v;
                            }
                        }
                    }
                }
            }
        }
    }
    if c.relu {
        for row in rows.iter_mut() {
            for v in row.iter_mut() {
                *v = v.max(0.0);
            }
        }
    }
}

#[inline(always)]
fn axpy4(a: &mut [f32], b: &mut [f32], c: &mut [f32], d: &mut [f32], src: &[f32], wv: [f32; 4]) {
    let n = src.len();
    let (a, b, c, d) = (&mut a[..n], &mut b[..n], &mut c[..n], &mut d[..n]);
    for i in 0..n {
        let v = src[i];
        a[i] += wv[0] * v;
        b[i] += wv[1] * v;
        c[i] += wv[2] * v;
        d[i] += wv[3] * v;
    }
}

/// The plainest possible convolution, one element at a time, in the same summation order: the
/// reference the optimised path is tested against bit for bit.
pub fn conv2d_reference(x: &Tensor, c: &Conv2d) -> Tensor {
    let (h, w, k) = (x.h as isize, x.w as isize, c.k as isize);
    let r = k / 2;
    let mut out = Tensor::zeros(c.cout, x.h, x.w);
    for co in 0..c.cout {
        for y in 0..h {
            for xx in 0..w {
                let mut acc = c.bias[co];
                for ci in 0..c.cin {
                    for ky in 0..k {
                        for kx in 0..k {
                            let (iy, ix) = (y + ky - r, xx + kx - r);
                            if iy < 0 || iy >= h || ix < 0 || ix >= w {
                                continue;
                            }
                            let wv = c.weight[((co * c.cin + ci) * c.k + ky as usize) * c.k + kx as usize];
                            acc += wv * x.at(ci, iy as usize, ix as usize);
                        }
                    }
                }
                out.data[(co * x.h + y as usize) * x.w + xx as usize] = if c.relu { acc.max(0.0) } else { acc };
            }
        }
    }
    out
}
