//! Global input normalisation: statistics over the whole image, so every tile sees exactly what
//! the whole-image run sees. Computed in passes over the image in bands of rows (whatever reads
//! it: an in-memory image or a streamed slide), summing each channel in row-major order in f64,
//! so the same image always gives the same bits.

use serde::Serialize;

use crate::error::{Error, Result};
use crate::tensor::Tensor;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
pub enum Normalize {
    /// Per channel: subtract the image mean, divide by the (population) standard deviation.
    Zscore,
    /// Per channel: map the image's minimum to 0 and maximum to 1.
    Minmax,
    /// Per channel: map the low and high percentiles (--percentiles) to 0 and 1.
    Percentile,
    /// `value * scale + offset` with --scale and --offset.
    Fixed,
    /// Use the values as they are.
    None,
}

/// A normalisation and its parameters.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct NormSpec {
    pub mode: Normalize,
    /// Percentiles for `Percentile`, in [0, 100].
    pub percentiles: (f64, f64),
    /// Scale and offset for `Fixed`.
    pub scale: f64,
    pub offset: f64,
}

impl NormSpec {
    pub fn new(mode: Normalize) -> NormSpec {
        NormSpec { mode, percentiles: (1.0, 99.0), scale: 1.0, offset: 0.0 }
    }
}

/// Bins of the percentile histogram between the channel's minimum and maximum: exact for 8- and
/// 16-bit images, a resolution of (max - min) / 65536 for float images.
const BINS: usize = 65536;

/// One sweep over the image: calls its argument on every band, top to bottom.
pub type Sweep<'a> = dyn FnMut(&mut dyn FnMut(&Tensor)) -> Result<()> + 'a;

/// Per-channel `(scale, offset)` such that `normalized = value * scale + offset`. `sweep(f)` must
/// call `f` on every band of the image, top to bottom, and may be called several times (one pass
/// per statistic).
pub fn statistics_with(spec: &NormSpec, channels: usize, sweep: &mut Sweep) -> Result<Vec<(f64, f64)>> {
    let c = channels;
    let per_channel = |f: &mut dyn FnMut(usize, f64), t: &Tensor| {
        for ch in 0..c {
            for &v in t.plane(ch) {
                f(ch, v as f64);
            }
        }
    };
    match spec.mode {
        Normalize::None => Ok(vec![(1.0, 0.0); c]),
        Normalize::Fixed => {
            if !(spec.scale.is_finite() && spec.offset.is_finite()) {
                return Err(Error::Usage("--scale and --offset must be finite".into()));
            }
            Ok(vec![(spec.scale, spec.offset); c])
        }
        Normalize::Zscore => {
            let (mut sum, mut n) = (vec![0f64; c], 0usize);
            sweep(&mut |t| {
                n += t.h * t.w;
                per_channel(&mut |ch, v| sum[ch] += v, t);
            })?;
            let mean: Vec<f64> = sum.iter().map(|s| s / n.max(1) as f64).collect();
            let mut sq = vec![0f64; c];
            sweep(&mut |t| per_channel(&mut |ch, v| sq[ch] += (v - mean[ch]).powi(2), t))?;
            Ok((0..c)
                .map(|ch| {
                    let var = sq[ch] / n.max(1) as f64;
                    let sd = if var > 0.0 { var.sqrt() } else { 1.0 };
                    (1.0 / sd, -mean[ch] / sd)
                })
                .collect())
        }
        Normalize::Minmax | Normalize::Percentile => {
            let (mut lo, mut hi) = (vec![f64::INFINITY; c], vec![f64::NEG_INFINITY; c]);
            sweep(&mut |t| {
                per_channel(
                    &mut |ch, v| {
                        lo[ch] = lo[ch].min(v);
                        hi[ch] = hi[ch].max(v);
                    },
                    t,
                )
            })?;
            let (a, b) = if spec.mode == Normalize::Percentile {
                let (p, q) = spec.percentiles;
                if !(0.0..=100.0).contains(&p) || !(0.0..=100.0).contains(&q) || p >= q {
                    return Err(Error::Usage(format!("--percentiles {p},{q}: need 0 <= low < high <= 100")));
                }
                let mut hist = vec![vec![0u64; BINS]; c];
                let bin = |ch: usize, v: f64, lo: &[f64], hi: &[f64]| {
                    let r = hi[ch] - lo[ch];
                    if r > 0.0 { (((v - lo[ch]) / r) * (BINS - 1) as f64).round() as usize } else { 0 }
                };
                sweep(&mut |t| per_channel(&mut |ch, v| hist[ch][bin(ch, v, &lo, &hi)] += 1, t))?;
                let at = |ch: usize, pct: f64| {
                    let total: u64 = hist[ch].iter().sum();
                    let target = (pct / 100.0 * (total.saturating_sub(1)) as f64).round() as u64;
                    let mut acc = 0;
                    let k = hist[ch].iter().position(|&n| {
                        acc += n;
                        acc > target
                    });
                    lo[ch] + (hi[ch] - lo[ch]) * k.unwrap_or(BINS - 1) as f64 / (BINS - 1) as f64
                };
                ((0..c).map(|ch| at(ch, p)).collect::<Vec<_>>(), (0..c).map(|ch| at(ch, q)).collect::<Vec<_>>())
            } else {
                (lo, hi)
            };
            Ok((0..c)
                .map(|ch| {
                    let range = if b[ch] > a[ch] { b[ch] - a[ch] } else { 1.0 };
                    (1.0 / range, -a[ch] / range)
                })
                .collect())
        }
    }
}

/// Statistics of an image held in memory (the blocks of [`blocks`], as the streamed path reads).
pub fn statistics(img: &Tensor, mode: Normalize) -> Vec<(f64, f64)> {
    statistics_spec(img, &NormSpec::new(mode)).expect("in-memory statistics cannot fail")
}

pub fn statistics_spec(img: &Tensor, spec: &NormSpec) -> Result<Vec<(f64, f64)>> {
    statistics_with(spec, img.c, &mut |f| {
        for (y0, x0, rows, cols) in blocks(img.h, img.w) {
            f(&img.window(y0, x0, rows, cols));
        }
        Ok(())
    })
}

/// Rows per band when sweeping an image for statistics.
pub const BAND: usize = 256;
/// Columns per block of a band: a statistics pass holds one block, whatever the image's width
/// (a band across a 150000-pixel RGB slide would be 460 MB).
pub const BLOCK_COLUMNS: usize = 4096;

/// The blocks `(y0, x0, rows, cols)` a statistics pass reads, in order: bands of [`BAND`] rows top
/// to bottom, each in blocks of [`BLOCK_COLUMNS`] left to right. The order fixes how the sums
/// round, so every path over one image (streamed or in memory) must sweep it in this order.
pub fn blocks(h: usize, w: usize) -> impl Iterator<Item = (usize, usize, usize, usize)> {
    (0..h).step_by(BAND).flat_map(move |y0| {
        (0..w).step_by(BLOCK_COLUMNS).map(move |x0| (y0, x0, BAND.min(h - y0), BLOCK_COLUMNS.min(w - x0)))
    })
}

pub fn apply(img: &mut Tensor, stats: &[(f64, f64)]) {
    let hw = img.h * img.w;
    for (c, &(scale, offset)) in stats.iter().enumerate() {
        for v in &mut img.data[c * hw..(c + 1) * hw] {
            *v = (*v as f64 * scale + offset) as f32;
        }
    }
}
