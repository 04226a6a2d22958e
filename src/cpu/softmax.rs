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
    (0..hw.div_ceil(chunk)).into_par_iter().for_each(|b| {
        for p in b * chunk..((b + 1) * chunk).min(hw) {
            let mut m = f32::NEG_INFINITY;
            for c in 0..x.c {
                m = m.max(x.data[c * hw + p]);
            }
            let mut sum = 0.0f32;
            for c in 0..x.c {
                let e = (x.data[c * hw + p] - m).exp();
                // SAFETY: pixel p (all its channels) is written by this task alone.
                unsafe { ptr.slice(c * hw + p, 1)[0] = e };
                sum += e;
            }
            for c in 0..x.c {
                // SAFETY: as above.
                unsafe { ptr.slice(c * hw + p, 1)[0] /= sum };
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
