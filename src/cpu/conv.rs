//! Conv2d, odd k x k, stride 1, zero "same" padding, bias, optional fused ReLU. Twin of
//! `kernels/conv.cu`.
//!
//! Each output element is `bias + Σ_ci Σ_ky Σ_kx w·x` accumulated in exactly that order, one fused
//! multiply-add per term (`f32::mul_add`, correctly rounded: the same bits with or without FMA
//! hardware); the padding contributes `w·0` like any other tap. Vectorisation runs across output
//! positions and output channels, which never changes the order of any one element's sum, so the
//! result is independent of the map's extent and of where a tile sits in the image.
//!
//! The input is copied once into zero-padded flat planes in the workspace ([`super::padded`],
//! applying a fused input transform on the way; a plain 1 x 1 convolution needs no padding and
//! reads its input in place);
//! the register-blocked engine in [`super::direct`] then runs over every (channel block, position
//! block) with the weights [`pack`]ed once per model.
//!
//! A layer the model graph marked [`ConvAlgo::Winograd2`] goes to [`winograd`] instead (its
//! workspace, packing and arithmetic); every entry point here dispatches on that mark, so all
//! executors compute the same thing for the layer.

use super::DisjointOut;
use super::direct::{self, Isa, Taps};
use super::{bf16, padded, unpadded, winograd};
use crate::graph::{Conv2d, ConvAlgo};
use crate::tensor::{Tensor, View};

/// Flat layout of one padded plane: `r` zero rows above and below, and rows of `w + r` elements
/// whose first `r` are zero (reading past a row's end lands in the next row's zeros, which are
/// this row's right padding). The plane has `r` more zeros at its end for the last row.
fn geometry(h: usize, w: usize, k: usize) -> padded::Layout {
    let r = k / 2;
    let row = w + r;
    padded::Layout { top: r, left: r, row, plane: (h + 2 * r) * row + r }
}

fn padded_elems(c: usize, h: usize, w: usize, k: usize, isa: Isa) -> usize {
    padded::elems(c, geometry(h, w, k).plane, isa)
}

/// How a convolution reads its input.
#[derive(PartialEq)]
enum Path {
    /// 1 x 1: whole blocks in place, a copy of the last partial one.
    Pointwise,
    /// 1 x 1 with a fused input transform, or in bf16: each position block's input transformed
    /// (and rounded to channel pairs) into a task's cache-sized buffer, read there by every
    /// channel block ([`direct::run_converted`]): no whole copy of the input goes through memory.
    Converted,
    /// AVX-512: in place, padding lanes masked to zero ([`unpadded`]).
    Masked,
    /// A zero-padded copy, with the fused input transform applied on the way (and in bf16 the
    /// rounding to channel pairs: every bf16 convolution reads such a copy).
    Padded,
}

/// The masked engine wins where its masked loads (dearer than plain ones) are rare: maps at least
/// this wide. Narrower maps and a few input channels (the first layer) do better on the padded
/// copy, which costs little there. Both give the same bits, so the choice is free.
const MASKED_MIN_WIDTH: usize = 128;
const MASKED_MIN_CIN: usize = 16;

fn path(c: &Conv2d, w: usize, isa: Isa) -> Path {
    match (c.k, &c.pre) {
        (1, pre) if (pre.is_some() || isa.is_bf16()) && direct::converted_fits(isa.depth(c.cin), isa) => {
            Path::Converted
        }
        _ if isa.is_bf16() => Path::Padded,
        (1, None) => Path::Pointwise,
        (k, None) if isa == Isa::Avx512 && k <= unpadded::MAX_K && w >= MASKED_MIN_WIDTH && c.cin >= MASKED_MIN_CIN => {
            Path::Masked
        }
        _ => Path::Padded,
    }
}

/// Workspace elements the convolution needs for an input of `h x w` (the weights are packed once
/// per model, see [`packed_elems`]).
pub fn workspace_elems(c: &Conv2d, h: usize, w: usize, isa: Isa) -> usize {
    if c.algo == ConvAlgo::Winograd2 {
        return winograd::workspace_elems(c, h, w, isa.vector());
    }
    match path(c, w, isa) {
        Path::Pointwise => direct::unpadded_tail_elems(c.cin),
        Path::Masked | Path::Converted => 0,
        Path::Padded => padded_elems(c.cin, h, w, c.k, isa),
    }
}

/// Elements of the weights as [`pack`] regroups them for `isa`'s engine.
pub fn packed_elems(c: &Conv2d, isa: Isa) -> usize {
    if c.algo == ConvAlgo::Winograd2 {
        return winograd::packed_elems(c, isa.vector());
    }
    direct::packed_elems_for(isa, c.cout, isa.depth(c.cin), c.k * c.k)
}

/// Regroup the weights for `isa`'s engine into `dst` ([`packed_elems`] long).
pub fn pack(c: &Conv2d, dst: &mut [f32], isa: Isa) {
    if c.algo == ConvAlgo::Winograd2 {
        return winograd::pack(c, dst, isa.vector());
    }
    let taps = c.k * c.k;
    assert_eq!(c.weight.len(), c.cout * c.cin * taps, "conv2d weights");
    direct::pack_rows(dst, c.cout, c.cin, taps, &c.weight, isa);
}

pub fn conv2d(x: &Tensor, c: &Conv2d) -> Tensor {
    conv2d_isa(x, c, Isa::detect())
}

/// The same convolution without explicit SIMD (the portable path every CPU can run), so tests can
/// check that both paths give identical bits.
pub fn conv2d_portable(x: &Tensor, c: &Conv2d) -> Tensor {
    conv2d_isa(x, c, Isa::Portable)
}

/// The convolution computed by one particular implementation (one this CPU has).
pub fn conv2d_isa(x: &Tensor, c: &Conv2d, isa: Isa) -> Tensor {
    assert!(isa.is_available(), "{isa:?} is not supported by this CPU");
    let mut out = Tensor::zeros(c.cout, x.h, x.w);
    let mut ws = vec![0.0; workspace_elems(c, x.h, x.w, isa)];
    let mut packed = vec![0.0; packed_elems(c, isa)];
    pack(c, &mut packed, isa);
    conv2d_into(x.view(), c, &packed, &mut out.data, &mut ws, isa);
    out
}

/// Convolve into `out` (`cout x h x w`) with the weights `packed` by [`pack`] for `isa`, using
/// `ws` (see [`workspace_elems`]) for the padded input.
pub fn conv2d_into(x: View, c: &Conv2d, packed: &[f32], out: &mut [f32], ws: &mut [f32], isa: Isa) {
    if c.algo == ConvAlgo::Winograd2 {
        return winograd::conv2d_into(x, c, packed, out, ws, isa.vector());
    }
    assert_eq!(x.c, c.cin, "conv2d input channels");
    let (h, w, k) = (x.h, x.w, c.k);
    assert_eq!(out.len(), c.cout * h * w, "conv2d output size");
    assert_eq!(packed.len(), packed_elems(c, isa), "conv2d packed weights");
    let ptr = DisjointOut::new(out);
    // Position q is pixel q: every position is stored.
    let store_flat = |co0: usize, q0: usize, n: usize, blk: &direct::Block| {
        for (j, a) in blk.iter().enumerate().take(c.cout.saturating_sub(co0).min(direct::MR)) {
            // SAFETY: the engine hands each (channel block, position block) to one call.
            let dst = unsafe { ptr.slice((co0 + j) * h * w + q0, n) };
            for (d, &v) in dst.iter_mut().zip(a) {
                *d = if c.relu { v.max(0.0) } else { v };
            }
        }
    };
    match path(c, w, isa) {
        Path::Pointwise => {
            return direct::run_unpadded(x.data, h * w, c.cin, packed, &c.bias, c.cout, isa, ws, store_flat);
        }
        Path::Converted => {
            let rows = |q0, len, rows: &mut [f32]| padded::rows(rows, x, q0, len, c.pre.as_ref(), isa);
            return direct::run_converted(h * w, isa.depth(c.cin), packed, &c.bias, c.cout, isa, rows, store_flat);
        }
        Path::Masked => {
            let p = unpadded::Plain { data: x.data, h, w, cin: c.cin, k, weights: packed, bias: &c.bias, cout: c.cout };
            return unpadded::run(&p, store_flat);
        }
        Path::Padded => {}
    }
    let g = geometry(h, w, k);
    let ws_pad = padded::fill(ws, x, g, c.pre.as_ref(), isa);
    let taps = k * k;
    let offsets: Vec<usize> = (0..taps).map(|t| (t / k) * g.row + t % k).collect();
    let spec = Taps {
        data: ws_pad,
        plane: g.plane,
        cin: isa.depth(c.cin),
        offsets: &offsets,
        weights: packed,
        bias: &c.bias,
        cout: c.cout,
        n_q: h * g.row,
    };
    direct::run(&spec, isa, |co0, q0, n, blk| {
        // Position q is pixel (q / row, q % row); columns w.. of a row are padding, not stored.
        let mut q = q0;
        while q < q0 + n {
            let (y, xx) = (q / g.row, q % g.row);
            let end = (q0 + n).min((y + 1) * g.row);
            if xx < w {
                let len = (end - q).min(w - xx);
                for (j, a) in blk.iter().enumerate().take(c.cout.saturating_sub(co0).min(direct::MR)) {
                    // SAFETY: the engine hands each (channel block, position block) to one call;
                    // pixel (y, xx..xx+len) of channel co0 + j belongs to this block alone.
                    let dst = unsafe { ptr.slice(((co0 + j) * h + y) * w + xx, len) };
                    for (d, &v) in dst.iter_mut().zip(&a[q - q0..]) {
                        *d = if c.relu { v.max(0.0) } else { v };
                    }
                }
            }
            q = end;
        }
    });
}

/// The bf16 arithmetic of [`bf16`] one element at a time: input (after the fused transform) and
/// weights rounded to bf16, channel pairs in ascending order, each pair tap by tap, one
/// [`bf16::madd`] each, from the bias (subnormals flushed). The reference the vector bf16 engines
/// are tested against bit for bit.
pub fn conv2d_reference_bf16(x: &Tensor, c: &Conv2d) -> Tensor {
    conv2d_reference_bf16_for(x, c, Isa::Bf16Portable)
}

/// [`conv2d_reference_bf16`] in `isa`'s order: over its [`Isa::depth`] pairs (zero pairs past the
/// channels), in blocks of [`Isa::k_block`] pairs, each block tap by tap and within a tap pair by
/// pair (blocks of one pair: the order above). What the AMX engines are tested against.
pub fn conv2d_reference_bf16_for(x: &Tensor, c: &Conv2d, isa: Isa) -> Tensor {
    let (h, w, k) = (x.h as isize, x.w as isize, c.k as isize);
    let r = k / 2;
    let input = |ci: usize, iy: isize, ix: isize| -> f32 {
        if ci >= c.cin || iy < 0 || iy >= h || ix < 0 || ix >= w {
            return 0.0;
        }
        let v = x.at(ci, iy as usize, ix as usize);
        match &c.pre {
            None => v,
            Some(ss) if ss.relu => (v * ss.scale[ci] + ss.shift[ci]).max(0.0),
            Some(ss) => v * ss.scale[ci] + ss.shift[ci],
        }
    };
    let weight =
        |co: usize, ci: usize, t: usize| if ci < c.cin { c.weight[(co * c.cin + ci) * c.k * c.k + t] } else { 0.0 };
    let (depth, kb) = (isa.depth(c.cin), isa.k_block());
    let mut out = Tensor::zeros(c.cout, x.h, x.w);
    for co in 0..c.cout {
        for y in 0..h {
            for xx in 0..w {
                let mut acc = bf16::flush(c.bias[co]);
                for p0 in (0..depth).step_by(kb) {
                    for t in 0..c.k * c.k {
                        for p in p0..(p0 + kb).min(depth) {
                            let (iy, ix) = (y + (t / c.k) as isize - r, xx + (t % c.k) as isize - r);
                            let xv = bf16::pair(input(2 * p, iy, ix), input(2 * p + 1, iy, ix));
                            let wv = bf16::pair(weight(co, 2 * p, t), weight(co, 2 * p + 1, t));
                            acc = bf16::madd(acc, xv, wv);
                        }
                    }
                }
                out.data[(co * x.h + y as usize) * x.w + xx as usize] = if c.relu { acc.max(0.0) } else { acc };
            }
        }
    }
    out
}

/// The plainest possible convolution, one element at a time, in the same summation order (zero
/// padding included as `w·0` taps, one fused multiply-add each): the reference the optimised path is tested against bit for bit.
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
                            acc = wv.mul_add(v, acc);
                        }
                    }
                }
                out.data[(co * x.h + y as usize) * x.w + xx as usize] = if c.relu { acc.max(0.0) } else { acc };
            }
        }
    }
    out
}
