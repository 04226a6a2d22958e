//! Per-channel scale and shift (batch norm in inference form) with optional ReLU, and plain ReLU.
//! Twin of `kernels/elementwise.cu`. Written to work in place: the planner lets an elementwise op
//! overwrite its input when nothing reads that input afterwards.

use rayon::prelude::*;

use crate::tensor::Tensor;

pub fn scale_shift(x: &Tensor, scale: &[f32], shift: &[f32], relu: bool) -> Tensor {
    let mut out = x.clone();
    scale_shift_inplace(&mut out.data, x.h * x.w, scale, shift, relu);
    out
}

/// `data` holds `scale.len()` planes of `hw` values each.
pub fn scale_shift_inplace(data: &mut [f32], hw: usize, scale: &[f32], shift: &[f32], relu: bool) {
    assert_eq!(data.len(), scale.len() * hw, "scale_shift size");
    data.par_chunks_mut(hw.max(1)).enumerate().for_each(|(c, plane)| {
        let (s, b) = (scale[c], shift[c]);
        for v in plane.iter_mut() {
            let y = *v * s + b;
            *v = if relu { y.max(0.0) } else { y };
        }
    });
}

pub fn relu(x: &Tensor) -> Tensor {
    let mut out = x.clone();
    relu_inplace(&mut out.data);
    out
}

pub fn relu_inplace(data: &mut [f32]) {
    data.par_iter_mut().for_each(|v| *v = v.max(0.0));
}
