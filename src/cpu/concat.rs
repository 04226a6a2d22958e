//! Concatenation over channels. Twin of `kernels/concat.cu`.

use crate::tensor::Tensor;

pub fn concat(ins: &[&Tensor]) -> Tensor {
    let (h, w) = (ins[0].h, ins[0].w);
    let c: usize = ins.iter().map(|t| t.c).sum();
    let mut data = Vec::with_capacity(c * h * w);
    for t in ins {
        assert!(t.h == h && t.w == w, "concat of different spatial sizes");
        data.extend_from_slice(&t.data);
    }
    Tensor::from_vec(c, h, w, data)
}
