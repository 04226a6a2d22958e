//! Per-channel scale and shift (batch norm in inference form) with optional ReLU, and plain ReLU.
//! Twin of `kernels/elementwise.cu`.

use rayon::prelude::*;

use crate::tensor::Tensor;

pub fn scale_shift(x: &Tensor, scale: &[f32], shift: &[f32], relu: bool) -> Tensor {
    let mut out = x.clone();
    let hw = x.h * x.w;
    out.data.par_chunks_mut(hw.max(1)).enumerate().for_each(|(c, plane)| {
        let (s, b) = (scale[c], shift[c]);
        for v in plane.iter_mut() {
            let y = *v * s + b;
            *v = if relu { y.max(0.0) } else { y };
        }
    });
    out
}

pub fn relu(x: &Tensor) -> Tensor {
    let mut out = x.clone();
    out.data.par_iter_mut().for_each(|v| *v = v.max(0.0));
    out
}
