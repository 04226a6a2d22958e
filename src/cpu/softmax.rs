//! Softmax and argmax over channels, per pixel. Twin of `kernels/softmax.cu`.

use rayon::prelude::*;

use super::DisjointOut;
use crate::tensor::{Tensor, View};

pub fn softmax(x: &Tensor) -> Tensor {
    let mut out = Tensor::zeros(x.c, x.h, x.w);
    softmax_into(x.view(), &mut out.data);
    out
}

pub fn softmax_into(x: View, out: &mut [f32]) {
    let hw = x.h * x.w;
    assert_eq!(out.len(), x.c * hw, "softmax output size");
    let ptr = DisjointOut::new(out);
    let chunk = 1024;
    // A band of pixels at a time, each step over whole channel rows so that it vectorises (the
    // exponential aside); per pixel the same operations in the same order as one pixel at a time:
    // the maximum, the sum of exp(x - max) in channel order, each exp divided by the sum.
    (0..hw.div_ceil(chunk)).into_par_iter().for_each(|b| {
        let (p0, n) = (b * chunk, chunk.min(hw - b * chunk));
        let row = |c: usize| &x.data[c * hw + p0..][..n];
        let mut m = [f32::NEG_INFINITY; 1024];
        let mut sum = [0.0f32; 1024];
        let (m, sum) = (&mut m[..n], &mut sum[..n]);
        for c in 0..x.c {
            for (m, &v) in m.iter_mut().zip(row(c)) {
                *m = m.max(v);
            }
        }
        for c in 0..x.c {
            // SAFETY: pixels p0..p0 + n (all their channels) are written by this task alone.
            let o = unsafe { ptr.slice(c * hw + p0, n) };
            for ((o, &v), (&m, s)) in o.iter_mut().zip(row(c)).zip(m.iter().zip(sum.iter_mut())) {
                *o = (v - m).exp();
                *s += *o;
            }
        }
        for c in 0..x.c {
            // SAFETY: as above.
            let o = unsafe { ptr.slice(c * hw + p0, n) };
            for (o, &s) in o.iter_mut().zip(sum.iter()) {
                *o /= s;
            }
        }
    });
}

/// Index of the largest channel per pixel (the first on ties), as f32 in a 1-channel map.
pub fn argmax(x: &Tensor) -> Tensor {
    let mut out = Tensor::zeros(1, x.h, x.w);
    argmax_into(x.view(), &mut out.data);
    out
}

pub fn argmax_into(x: View, out: &mut [f32]) {
    let hw = x.h * x.w;
    assert_eq!(out.len(), hw, "argmax output size");
    out.par_iter_mut().enumerate().for_each(|(p, o)| {
        let mut best = 0;
        for c in 1..x.c {
            if x.data[c * hw + p] > x.data[best * hw + p] {
                best = c;
            }
        }
        *o = best as f32;
    });
}
