//! Conv2d, odd k x k, stride 1, zero "same" padding, bias, optional fused ReLU. Twin of
//! `kernels/conv.cu`.
//!
//! Each output element is `bias + Σ_ci Σ_ky Σ_kx w·x` accumulated in exactly that order with
//! separate multiply and add (no FMA contraction, no reassociation); the padding contributes
//! `w·0` like any other tap. Vectorisation runs across output columns and output channels, which
//! never changes the order of any one element's sum, so the result is independent of the map's
//! extent and of where a tile sits in the image.
//!
//! The input is copied once into a zero-padded buffer; a register block of CO_BLOCK output
//! channels x X_BLOCK columns then accumulates over every tap before it is stored.

use rayon::prelude::*;

use super::DisjointOut;
use crate::graph::{Conv2d, ScaleShift};
use crate::tensor::{Tensor, View};

const CO_BLOCK: usize = 4;
const X_BLOCK: usize = 16;

/// The input with `r` zero rows/columns around it, and each row long enough that whole X_BLOCKs
/// can always be read. Lives in the executor's workspace.
struct Padded<'a> {
    data: &'a [f32],
    row: usize,
    rows: usize,
}

fn padded_elems(c: usize, h: usize, w: usize, k: usize) -> usize {
    let r = k / 2;
    c * (h + 2 * r) * ((w + 2 * r).div_ceil(X_BLOCK) * X_BLOCK + X_BLOCK)
}

fn packed_weight_elems(c: &Conv2d) -> usize {
    c.cout.div_ceil(CO_BLOCK) * c.cin * c.k * c.k * CO_BLOCK
}

/// Workspace elements the convolution needs for an input of `h x w`: the padded input and the
/// weights regrouped by output-channel block.
pub fn workspace_elems(c: &Conv2d, h: usize, w: usize) -> usize {
    padded_elems(c.cin, h, w, c.k) + packed_weight_elems(c)
}

/// Copy `x` into the padded layout, applying the fused input transform if there is one (the
/// padding stays zero: PyTorch pads the transformed map).
fn pad<'a>(x: View, r: usize, pre: Option<&ScaleShift>, ws: &'a mut [f32]) -> Padded<'a> {
    let row = (x.w + 2 * r).div_ceil(X_BLOCK) * X_BLOCK + X_BLOCK;
    let rows = x.h + 2 * r;
    let data = &mut ws[..x.c * rows * row];
    data.fill(0.0);
    for c in 0..x.c {
        for y in 0..x.h {
            let d = (c * rows + y + r) * row + r;
            let (dst, src) = (&mut data[d..d + x.w], &x.plane(c)[y * x.w..(y + 1) * x.w]);
            match pre {
                None => dst.copy_from_slice(src),
                Some(ss) => {
                    let (s, b) = (ss.scale[c], ss.shift[c]);
                    for (o, &v) in dst.iter_mut().zip(src) {
                        let t = v * s + b;
                        *o = if ss.relu { t.max(0.0) } else { t };
                    }
                }
            }
        }
    }
    Padded { data, row, rows }
}

pub fn conv2d(x: &Tensor, c: &Conv2d) -> Tensor {
    conv2d_with(x, c, true)
}

/// The same convolution without explicit SIMD (the portable path every CPU can run), so tests can
/// check that both paths give identical bits.
pub fn conv2d_portable(x: &Tensor, c: &Conv2d) -> Tensor {
    conv2d_with(x, c, false)
}

fn conv2d_with(x: &Tensor, c: &Conv2d, simd: bool) -> Tensor {
    let mut out = Tensor::zeros(c.cout, x.h, x.w);
    let mut ws = vec![0.0; workspace_elems(c, x.h, x.w)];
    conv2d_into(x.view(), c, &mut out.data, &mut ws, simd);
    out
}

/// Convolve into `out` (`cout x h x w`), using `ws` (see [`workspace_elems`]) for the padded input.
pub fn conv2d_into(x: View, c: &Conv2d, out: &mut [f32], ws: &mut [f32], simd: bool) {
    assert_eq!(x.c, c.cin, "conv2d input channels");
    let (h, w, k) = (x.h, x.w, c.k);
    assert_eq!(out.len(), c.cout * h * w, "conv2d output size");
    let (ws_pad, ws_w) = ws.split_at_mut(padded_elems(x.c, h, w, k));
    let p = pad(x, k / 2, c.pre.as_ref(), ws_pad);
    // Weights regrouped as [block][ci][ky][kx][CO_BLOCK] so one tap's weights are adjacent;
    // missing channels of the last block get zero weights and are never stored.
    let blocks = c.cout.div_ceil(CO_BLOCK);
    let taps = c.cin * k * k;
    let wb = &mut ws_w[..packed_weight_elems(c)];
    wb.fill(0.0);
    for co in 0..c.cout {
        for t in 0..taps {
            wb[((co / CO_BLOCK) * taps + t) * CO_BLOCK + co % CO_BLOCK] = c.weight[co * taps + t];
        }
    }
    let wb = &*wb;
    let ptr = DisjointOut(out.as_mut_ptr());
    (0..blocks * h).into_par_iter().for_each(|t| {
        let (b, y) = (t / h, t % h);
        let co0 = b * CO_BLOCK;
        let n = CO_BLOCK.min(c.cout - co0);
        let wblock = &wb[b * taps * CO_BLOCK..(b + 1) * taps * CO_BLOCK];
        let mut bias = [0.0f32; CO_BLOCK];
        bias[..n].copy_from_slice(&c.bias[co0..co0 + n]);
        for x0 in (0..w).step_by(X_BLOCK) {
            let acc = block_dispatch(&p, wblock, c.cin, k, y, x0, bias, simd);
            let cols = X_BLOCK.min(w - x0);
            for (j, a) in acc.iter().enumerate().take(n) {
                // SAFETY: task (b, y) alone writes row y of channels co0..co0+n.
                let dst = unsafe { ptr.slice(((co0 + j) * h + y) * w + x0, cols) };
                for (d, &v) in dst.iter_mut().zip(a) {
                    *d = if c.relu { v.max(0.0) } else { v };
                }
            }
        }
    });
}

type Acc = [[f32; X_BLOCK]; CO_BLOCK];

/// The register block, with explicit AVX where the CPU has it. Both paths do the same IEEE
/// multiplies and adds in the same order (no FMA), so the bits do not depend on the CPU.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn block_dispatch(
    p: &Padded,
    wblock: &[f32],
    cin: usize,
    k: usize,
    y: usize,
    x0: usize,
    bias: [f32; CO_BLOCK],
    simd: bool,
) -> Acc {
    // Every load below stays inside the padded buffer: rows hold whole X_BLOCKs past the last tap.
    assert!(x0 + k - 1 + X_BLOCK <= p.row && (cin - 1) * p.rows + y + k <= p.rows * cin);
    assert_eq!(wblock.len(), cin * k * k * CO_BLOCK);
    #[cfg(not(target_arch = "x86_64"))]
    let _ = simd;
    #[cfg(target_arch = "x86_64")]
    {
        if simd && std::arch::is_x86_feature_detected!("avx") {
            // SAFETY: the CPU supports AVX (checked just above); bounds asserted above.
            return unsafe { block_avx(p, wblock, cin, k, y, x0, bias) };
        }
    }
    block(p, wblock, cin, k, y, x0, bias)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx")]
unsafe fn block_avx(
    p: &Padded,
    wblock: &[f32],
    cin: usize,
    k: usize,
    y: usize,
    x0: usize,
    bias: [f32; CO_BLOCK],
) -> Acc {
    use std::arch::x86_64::*;
    const _: () = assert!(X_BLOCK == 16 && CO_BLOCK == 4);
    let mut acc = [[_mm256_setzero_ps(); 2]; CO_BLOCK];
    for (a, b) in acc.iter_mut().zip(bias) {
        *a = [_mm256_set1_ps(b); 2];
    }
    let mut w = wblock.as_ptr();
    for ci in 0..cin {
        for ky in 0..k {
            // SAFETY (all pointer arithmetic here): in bounds by the caller's assertions.
            let row = unsafe { p.data.as_ptr().add((ci * p.rows + y + ky) * p.row + x0) };
            for kx in 0..k {
                let (s0, s1) = unsafe { (_mm256_loadu_ps(row.add(kx)), _mm256_loadu_ps(row.add(kx + 8))) };
                for (j, a) in acc.iter_mut().enumerate() {
                    let wv = unsafe { _mm256_broadcast_ss(&*w.add(j)) };
                    a[0] = _mm256_add_ps(a[0], _mm256_mul_ps(wv, s0));
                    a[1] = _mm256_add_ps(a[1], _mm256_mul_ps(wv, s1));
                }
                w = unsafe { w.add(CO_BLOCK) };
            }
        }
    }
    let mut out = [[0.0f32; X_BLOCK]; CO_BLOCK];
    for (o, a) in out.iter_mut().zip(&acc) {
        unsafe {
            _mm256_storeu_ps(o.as_mut_ptr(), a[0]);
            _mm256_storeu_ps(o.as_mut_ptr().add(8), a[1]);
        }
    }
    out
}

/// CO_BLOCK x X_BLOCK outputs at row y, columns x0.., summed over every tap in (ci, ky, kx) order.
fn block(p: &Padded, wblock: &[f32], cin: usize, k: usize, y: usize, x0: usize, bias: [f32; CO_BLOCK]) -> Acc {
    let mut acc = [[0.0f32; X_BLOCK]; CO_BLOCK];
    for (a, b) in acc.iter_mut().zip(bias) {
        *a = [b; X_BLOCK];
    }
    let mut wi = 0;
    for ci in 0..cin {
        for ky in 0..k {
            let row = &p.data[(ci * p.rows + y + ky) * p.row..][..p.row];
            for kx in 0..k {
                let src = &row[x0 + kx..x0 + kx + X_BLOCK];
                for (j, a) in acc.iter_mut().enumerate() {
                    let wv = wblock[wi + j];
                    for (o, &v) in a.iter_mut().zip(src) {
                        *o += wv * v;
                    }
                }
                wi += CO_BLOCK;
            }
        }
    }
    acc
}

/// The plainest possible convolution, one element at a time, in the same summation order (zero
/// padding included as `w·0` taps): the reference the optimised path is tested against bit for bit.
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
                            let v = if iy < 0 || iy >= h || ix < 0 || ix >= w {
                                0.0
                            } else {
                                let v = x.at(ci, iy as usize, ix as usize);
                                match &c.pre {
                                    None => v,
                                    Some(ss) if ss.relu => (v * ss.scale[ci] + ss.shift[ci]).max(0.0),
                                    Some(ss) => v * ss.scale[ci] + ss.shift[ci],
                                }
                            };
                            let wv = c.weight[((co * c.cin + ci) * c.k + ky as usize) * c.k + kx as usize];
                            acc += wv * v;
                        }
                    }
                }
                out.data[(co * x.h + y as usize) * x.w + xx as usize] = if c.relu { acc.max(0.0) } else { acc };
            }
        }
    }
    out
}
