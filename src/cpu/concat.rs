//! Concatenation over channels. Twin of `kernels/concat.cu`. The planned executor makes most
//! concatenations free (producers write into their slice of the concatenated buffer); this copies
//! the inputs that could not be placed there.

use crate::tensor::{Tensor, View};

pub fn concat(ins: &[&Tensor]) -> Tensor {
    let (h, w) = (ins[0].h, ins[0].w);
    let c: usize = ins.iter().map(|t| t.c).sum();
    let mut out = Tensor::zeros(c, h, w);
    let views: Vec<View> = ins.iter().map(|t| t.view()).collect();
    let all = vec![true; views.len()];
    concat_into(&views, &all, &mut out.data);
    out
}

/// Copy the inputs marked in `copy` into their channel slices of `out`.
pub fn concat_into(ins: &[View], copy: &[bool], out: &mut [f32]) {
    let mut offset = 0;
    for (v, &c) in ins.iter().zip(copy) {
        assert!(v.h == ins[0].h && v.w == ins[0].w, "concat of different spatial sizes");
        if c {
            out[offset..offset + v.data.len()].copy_from_slice(v.data);
        }
        offset += v.data.len();
    }
    assert_eq!(offset, out.len(), "concat output size");
}
