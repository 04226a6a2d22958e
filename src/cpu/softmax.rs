//! Softmax and argmax over channels, per pixel. Twin of `kernels/softmax.cu`.

use rayon::prelude::*;

use crate::tensor::Tensor;

pub fn softmax(x: &Tensor) -> Tensor {
    let hw = x.h * x.w;
    let mut out = Tensor::zeros(x.c, x.h, x.w);
    let chunk = 1024;
    let parts: Vec<(usize, Vec<f32>)> = (0..hw.div_ceil(chunk))
        .into_par_iter()
        .map(|b| {
            let (p0, p1) = (b * chunk, ((b + 1) * chunk).min(hw));
            let mut buf = vec![0.0f32; (p1 - p0) * x.c];
            for p in p0..p1 {
                let mut m = f32::NEG_INFINITY;
                for c in 0..x.c {
                    m = m.max(x.data[c * hw + p]);
                }
                let mut sum = 0.0f32;
                for c in 0..x.c {
                    let e = (x.data[c * hw + p] - m).exp();
                    buf[(p - p0) * x.c + c] = e;
                    sum += e;
                }
                for c in 0..x.c {
                    buf[(p - p0) * x.c + c] /= sum;
                }
            }
            (p0, buf)
        })
        .collect();
    for (p0, buf) in parts {
        for (i, px) in buf.chunks_exact(x.c).enumerate() {
            for (c, &v) in px.iter().enumerate() {
                out.data[c * hw + p0 + i] = v;
            }
        }
    }
    out
}

/// Index of the largest channel per pixel (the first on ties), as f32 in a 1-channel map.
pub fn argmax(x: &Tensor) -> Tensor {
    let hw = x.h * x.w;
    let mut out = Tensor::zeros(1, x.h, x.w);
    out.data.par_iter_mut().enumerate().for_each(|(p, o)| {
        let mut best = 0;
        for c in 1..x.c {
            if x.data[c * hw + p] > x.data[best * hw + p] {
                best = c;
            }
        }
        *o = best as f32;
    });
    out
}
