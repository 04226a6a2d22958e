//! MaxPool 2x2 stride 2. Twin of `kernels/pool.cu`.

use rayon::prelude::*;

use crate::tensor::{Tensor, View};

pub fn max_pool2(x: &Tensor) -> Tensor {
    let mut out = Tensor::zeros(x.c, x.h / 2, x.w / 2);
    max_pool2_into(x.view(), &mut out.data);
    out
}

pub fn max_pool2_into(x: View, out: &mut [f32]) {
    assert!(x.h.is_multiple_of(2) && x.w.is_multiple_of(2), "max_pool2 needs even sizes");
    let (oh, ow) = (x.h / 2, x.w / 2);
    assert_eq!(out.len(), x.c * oh * ow, "max_pool2 output size");
    out.par_chunks_mut(ow).enumerate().for_each(|(t, row)| {
        let (c, oy) = (t / oh, t % oh);
        let r0 = &x.plane(c)[2 * oy * x.w..(2 * oy + 1) * x.w];
        let r1 = &x.plane(c)[(2 * oy + 1) * x.w..(2 * oy + 2) * x.w];
        for (ox, o) in row.iter_mut().enumerate() {
            *o = r0[2 * ox].max(r0[2 * ox + 1]).max(r1[2 * ox]).max(r1[2 * ox + 1]);
        }
    });
}
