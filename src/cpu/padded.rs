//! The engine's input planes: a map copied into zero-padded flat planes (see [`super::direct`]),
//! after a fused input transform if the convolution has one, in f32 channel by channel or in bf16
//! as rounded channel pairs ([`bf16`]). One copy serves the padded convolutions, the transposed
//! ones and every bf16 convolution.

use rayon::prelude::*;

use super::direct::{self, Isa};
use super::{amx, bf16};
use crate::graph::ScaleShift;
use crate::tensor::View;

/// Where a map's pixels sit in a padded plane: pixel (y, x) at `(y + top)·row + left + x`, every
/// other element of the `plane` zero.
#[derive(Clone, Copy)]
pub struct Layout {
    pub top: usize,
    pub left: usize,
    pub row: usize,
    pub plane: usize,
}

/// Workspace elements of `cin` channels' planes in `plane`-element layouts on `isa`'s engine,
/// with the readable slack the engine's last block needs after them.
pub fn elems(cin: usize, plane: usize, isa: Isa) -> usize {
    isa.depth(cin) * plane + direct::slack()
}

/// Copy `x` into the first [`elems`] elements of `ws`: its channels (f32) or channel pairs (bf16)
/// as planes in `layout`, after `pre` (the padding stays zero: PyTorch pads the transformed map),
/// then zero slack. In parallel over the planes, vectorised where the CPU has AVX-512. Returns what it wrote, for the engine to read.
pub fn fill<'a>(ws: &'a mut [f32], x: View, layout: Layout, pre: Option<&ScaleShift>, isa: Isa) -> &'a [f32] {
    let Layout { top, left, row, plane } = layout;
    assert!(left + x.w <= row && (top + x.h) * row <= plane, "pixels outside the padded plane");
    let len = elems(x.c, plane, isa);
    let (planes, tail) = ws[..len].split_at_mut(len - direct::slack());
    tail.fill(0.0);
    #[cfg(target_arch = "x86_64")]
    let wide = std::arch::is_x86_feature_detected!("avx512f");
    planes.par_chunks_mut(plane).enumerate().for_each(|(p, out)| {
        #[cfg(target_arch = "x86_64")]
        if wide {
            // SAFETY: AVX-512F was detected just above.
            return unsafe { plane_avx512(out, x, layout, pre, isa, p) };
        }
        plane_of(out, x, layout, pre, isa, p)
    });
    &ws[..len]
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn plane_avx512(out: &mut [f32], x: View, layout: Layout, pre: Option<&ScaleShift>, isa: Isa, p: usize) {
    plane_of(out, x, layout, pre, isa, p)
}

/// Positions `q0..q0 + len` of `x`'s planes after `pre`, as [`fill`] writes a plane's pixels (f32
/// channels, or rounded bf16 channel pairs), as `isa.depth(x.c)` rows of `dst.len() / depth`
/// elements, zero past `len`: a 1 x 1 convolution's input, one position block at a time (see
/// [`direct::run_converted`]), where nothing needs padding.
pub fn rows(dst: &mut [f32], x: View, q0: usize, len: usize, pre: Option<&ScaleShift>, isa: Isa) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: AVX-512F was detected just above.
        return unsafe { rows_avx512(dst, x, q0, len, pre, isa) };
    }
    rows_of(dst, x, q0, len, pre, isa)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn rows_avx512(dst: &mut [f32], x: View, q0: usize, len: usize, pre: Option<&ScaleShift>, isa: Isa) {
    rows_of(dst, x, q0, len, pre, isa)
}

#[inline(always)]
fn rows_of(dst: &mut [f32], x: View, q0: usize, len: usize, pre: Option<&ScaleShift>, isa: Isa) {
    let nr = dst.len() / isa.depth(x.c);
    let src = |ci: usize| &x.plane(ci)[q0..q0 + len];
    for (p, row) in dst.chunks_exact_mut(nr).enumerate() {
        let (out, rest) = row.split_at_mut(len);
        if !isa.is_bf16() {
            match pre {
                None => out.copy_from_slice(src(p)),
                Some(ss) => transform_row(out, src(p), ss.channel(p)),
            }
        } else if 2 * p >= x.c {
            out.fill(0.0);
        } else {
            let (lo, hi, swap) = (2 * p, 2 * p + 1, isa.is_amx());
            let other = (hi < x.c).then(|| src(hi));
            match pre {
                None => pair_row(out, src(lo), other, |v| v, |v| v, swap),
                Some(ss) => pair_row(out, src(lo), other, ss.channel(lo), ss.channel(hi.min(x.c - 1)), swap),
            }
        }
        rest.fill(0.0);
    }
}

/// Plane `p` of [`fill`]: channel `p`, or in bf16 channels `2p` and `2p + 1`, each pixel row
/// written once and only the padding zeroed. Always inlined, so that it compiles with its caller's vector width (plain
/// loops here: behind closures the row loops measured 7% slower).
#[inline(always)]
fn plane_of(out: &mut [f32], x: View, layout: Layout, pre: Option<&ScaleShift>, isa: Isa, p: usize) {
    let Layout { top, left, row, .. } = layout;
    let mut next = 0;
    let src = |ci: usize, y: usize| &x.plane(ci)[y * x.w..][..x.w];
    let dst = |y: usize| (y + top) * row + left;
    if !isa.is_bf16() {
        for y in 0..x.h {
            let d = row_at(out, &mut next, dst(y), x.w);
            match pre {
                None => d.copy_from_slice(src(p, y)),
                Some(ss) => transform_row(d, src(p, y), ss.channel(p)),
            }
        }
        return out[next..].fill(0.0);
    }
    let (lo, hi, swap) = (2 * p, 2 * p + 1, isa.is_amx());
    if lo >= x.c {
        // The tiles' padding to whole blocks of 16 pairs.
        return out.fill(0.0);
    }
    let other = |y| (hi < x.c).then(|| src(hi, y));
    // One loop per case, each with its own straight-line body.
    match pre {
        None => {
            for y in 0..x.h {
                pair_row(row_at(out, &mut next, dst(y), x.w), src(lo, y), other(y), |v| v, |v| v, swap);
            }
        }
        Some(ss) => {
            let (fa, fb) = (ss.channel(lo), ss.channel(hi.min(x.c - 1)));
            for y in 0..x.h {
                pair_row(row_at(out, &mut next, dst(y), x.w), src(lo, y), other(y), fa, fb, swap);
            }
        }
    }
    out[next..].fill(0.0);
}

/// The `w` elements of the pixel row starting at `start`, after zeroing the padding from `*next`
/// up to it; `*next` moves past the row.
#[inline(always)]
fn row_at<'a>(out: &'a mut [f32], next: &mut usize, start: usize, w: usize) -> &'a mut [f32] {
    out[*next..start].fill(0.0);
    *next = start + w;
    &mut out[start..start + w]
}

#[inline(always)]
fn transform_row(out: &mut [f32], src: &[f32], f: impl Fn(f32) -> f32) {
    for (o, &v) in out.iter_mut().zip(src) {
        *o = f(v);
    }
}

/// Channels `a` and `b` (zero if none) after `fa` and `fb` as pairs, `a` in the low half or, with
/// `swap`, in the high half ([`amx::swapped`]).
#[inline(always)]
fn pair_row(
    out: &mut [f32],
    a: &[f32],
    b: Option<&[f32]>,
    fa: impl Fn(f32) -> f32,
    fb: impl Fn(f32) -> f32,
    swap: bool,
) {
    match (b, swap) {
        (Some(b), false) => {
            for ((o, &a), &b) in out.iter_mut().zip(a).zip(b) {
                *o = bf16::pair(fa(a), fb(b));
            }
        }
        (Some(b), true) => {
            for ((o, &a), &b) in out.iter_mut().zip(a).zip(b) {
                *o = amx::swapped(fa(a), fb(b));
            }
        }
        (None, false) => {
            for (o, &a) in out.iter_mut().zip(a) {
                *o = bf16::pair(fa(a), 0.0);
            }
        }
        (None, true) => {
            for (o, &a) in out.iter_mut().zip(a) {
                *o = amx::swapped(fa(a), 0.0);
            }
        }
    }
}
