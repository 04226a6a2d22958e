//! Receptive-field analysis computed from the graph itself.
//!
//! For every node we track, per phase of its grid, which input pixels an output pixel depends on:
//! a node at scale `s` (one of its pixels spans `s` input pixels) with `m = A / s` phases stores
//! `lo[φ]`, `hi[φ]` such that pixel `p` (with `p mod m = φ`) depends on input pixels
//! `p·s + lo[φ] ..= p·s + hi[φ]`. The network is periodic with period A, so these tables are
//! exact for the unbounded image. Convolutions widen them by `k/2` neighbours, pooling merges pairs
//! of phases, up-sampling splits phases (a transposed conv's output depends on its input pixel
//! asymmetrically, which the simple Σ 2^level·⌊k/2⌋ formula ignores).
//!
//! An output pixel is exact in a tile when all it depends on lies inside the tile's input window:
//! then no zero padding at the window's edge can reach it. Tiles start on the A grid, so the
//! output pixel of phase φ is at least φ pixels inside the tile's first edge and A-1-φ inside its
//! last: the halo must cover `max_φ (reach_before(φ) - φ)` and `max_φ (reach_after(φ) - (A-1-φ))`,
//! rounded up to a multiple of A (windows must start on the pooling grid). For U-Net-64 that is
//! 96, the paper's value, although single pixels reach 107 px.

use crate::error::{Error, Result};
use crate::graph::{Graph, Op, UpsampleMode};

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ReceptiveField {
    /// Total down-sampling factor A.
    pub align: usize,
    /// Largest number of input pixels left of (above) an output pixel that it depends on.
    pub reach_before: usize,
    /// Largest number right of (below) it.
    pub reach_after: usize,
    /// Widest dependency extent of one output pixel, in input pixels.
    pub receptive_field: usize,
    /// Halo the tile's first edge needs (reach minus the pixel's depth inside the tile).
    pub need_before: usize,
    /// Halo the tile's last edge needs.
    pub need_after: usize,
    /// Smallest multiple of A that covers both needs.
    pub exact_halo: usize,
}

#[derive(Clone)]
struct Table {
    scale_num: usize, // scale = scale_num / scale_den (up-sampling goes below 1 only transiently)
    lo: Vec<i64>,
    hi: Vec<i64>,
}

impl ReceptiveField {
    pub fn analyze(graph: &Graph, align: usize) -> Result<ReceptiveField> {
        let a = align as i64;
        let mut tables: Vec<Table> = Vec::with_capacity(graph.nodes.len());
        for node in &graph.nodes {
            let ins: Vec<&Table> = node.inputs.iter().map(|&i| &tables[i]).collect();
            let t = match &node.op {
                Op::Input { .. } => Table { scale_num: 1, lo: vec![0; align], hi: vec![0; align] },
                Op::Conv2d(c) => {
                    let t = ins[0];
                    let (s, m) = (t.scale_num as i64, t.lo.len() as i64);
                    let h = (c.k / 2) as i64;
                    let mut out = t.clone();
                    for phi in 0..m {
                        let mut lo = i64::MAX;
                        let mut hi = i64::MIN;
                        for d in -h..=h {
                            let q = (phi + d).rem_euclid(m) as usize;
                            lo = lo.min(d * s + t.lo[q]);
                            hi = hi.max(d * s + t.hi[q]);
                        }
                        out.lo[phi as usize] = lo;
                        out.hi[phi as usize] = hi;
                    }
                    out
                }
                Op::MaxPool2 => {
                    let t = ins[0];
                    let (s, m) = (t.scale_num as i64, t.lo.len());
                    if m < 2 {
                        return Err(Error::Config(format!(
                            "node '{}' pools below the declared alignment {align}",
                            node.name
                        )));
                    }
                    let n = m / 2;
                    let mut out = Table { scale_num: t.scale_num * 2, lo: vec![0; n], hi: vec![0; n] };
                    for phi in 0..n {
                        let (e, o) = ((2 * phi) % m, (2 * phi + 1) % m);
                        out.lo[phi] = t.lo[e].min(s + t.lo[o]);
                        out.hi[phi] = t.hi[e].max(s + t.hi[o]);
                    }
                    out
                }
                Op::ConvTranspose2d(_) | Op::Upsample2(_) => {
                    let t = ins[0];
                    if t.scale_num < 2 {
                        return Err(Error::Config(format!(
                            "node '{}' up-samples above the input resolution",
                            node.name
                        )));
                    }
                    let (s, m) = (t.scale_num as i64, t.lo.len() as i64);
                    // Input pixels (relative to p = q div 2) that output pixel q = 2p + r reads.
                    let taps = |r: i64| -> &'static [i64] {
                        match (&node.op, r) {
                            (Op::ConvTranspose2d(c), 0) if c.k == 3 => &[-1, 0],
                            (Op::Upsample2(UpsampleMode::Bilinear), 0) => &[-1, 0],
                            (Op::Upsample2(UpsampleMode::Bilinear), _) => &[0, 1],
                            _ => &[0],
                        }
                    };
                    let n = (2 * m) as usize;
                    let mut out = Table { scale_num: t.scale_num / 2, lo: vec![0; n], hi: vec![0; n] };
                    for phi in 0..2 * m {
                        let (pp, r) = (phi / 2, phi % 2);
                        let base = r * s / 2; // q·s/2 - p·s
                        let mut lo = i64::MAX;
                        let mut hi = i64::MIN;
                        for &d in taps(r) {
                            let q = (pp + d).rem_euclid(m) as usize;
                            lo = lo.min(d * s + t.lo[q] - base);
                            hi = hi.max(d * s + t.hi[q] - base);
                        }
                        out.lo[phi as usize] = lo;
                        out.hi[phi as usize] = hi;
                    }
                    out
                }
                Op::Concat => {
                    let mut out = ins[0].clone();
                    for t in &ins[1..] {
                        if t.scale_num != out.scale_num {
                            return Err(Error::Config(format!(
                                "node '{}' concatenates maps of different scales",
                                node.name
                            )));
                        }
                        for i in 0..out.lo.len() {
                            out.lo[i] = out.lo[i].min(t.lo[i]);
                            out.hi[i] = out.hi[i].max(t.hi[i]);
                        }
                    }
                    out
                }
                _ => ins[0].clone(),
            };
            tables.push(t);
        }
        let out = &tables[graph.output];
        if out.scale_num != 1 {
            return Err(Error::Config(format!("the output is at scale 1/{} of the input", out.scale_num)));
        }
        let before = out.lo.iter().map(|&l| -l).max().unwrap_or(0).max(0) as usize;
        let after = out.hi.iter().copied().max().unwrap_or(0).max(0) as usize;
        let rf = out.lo.iter().zip(&out.hi).map(|(l, h)| h - l + 1).max().unwrap_or(1) as usize;
        let need_before = (0..a).map(|phi| -out.lo[phi as usize] - phi).max().unwrap_or(0).max(0) as usize;
        let need_after = (0..a).map(|phi| out.hi[phi as usize] - (a - 1 - phi)).max().unwrap_or(0).max(0) as usize;
        let need = need_before.max(need_after) as i64;
        let exact_halo = (((need + a - 1) / a) * a) as usize;
        Ok(ReceptiveField {
            align,
            reach_before: before,
            reach_after: after,
            receptive_field: rf,
            need_before,
            need_after,
            exact_halo,
        })
    }
}
