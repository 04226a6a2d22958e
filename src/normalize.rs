//! Global input normalisation: statistics over the whole image, so every tile sees exactly what
//! the whole-image run sees.

use crate::tensor::Tensor;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
pub enum Normalize {
    /// Per channel: subtract the image mean, divide by the (population) standard deviation.
    Zscore,
    /// Per channel: map the image's minimum to 0 and maximum to 1.
    Minmax,
    /// Use the values as they are.
    None,
}

/// Per-channel (scale, offset) such that `normalized = value * scale + offset`, computed in f64.
pub fn statistics(img: &Tensor, mode: Normalize) -> Vec<(f64, f64)> {
    (0..img.c)
        .map(|c| {
            let p = img.plane(c);
            match mode {
                Normalize::None => (1.0, 0.0),
                Normalize::Zscore => {
                    let n = p.len().max(1) as f64;
                    let mean = p.iter().map(|&v| v as f64).sum::<f64>() / n;
                    let var = p.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n;
                    let sd = if var > 0.0 { var.sqrt() } else { 1.0 };
                    (1.0 / sd, -mean / sd)
                }
                Normalize::Minmax => {
                    let lo = p.iter().fold(f64::INFINITY, |a, &v| a.min(v as f64));
                    let hi = p.iter().fold(f64::NEG_INFINITY, |a, &v| a.max(v as f64));
                    let range = if hi > lo { hi - lo } else { 1.0 };
                    (1.0 / range, -lo / range)
                }
            }
        })
        .collect()
}

pub fn apply(img: &mut Tensor, stats: &[(f64, f64)]) {
    let hw = img.h * img.w;
    for (c, &(scale, offset)) in stats.iter().enumerate() {
        for v in &mut img.data[c * hw..(c + 1) * hw] {
            *v = (*v as f64 * scale + offset) as f32;
        }
    }
}
