//! The AVX-512 engine run straight on unpadded planes: a "same" k x k convolution whose input is
//! read where it lies, with no zero-padded copy (copying every layer's input cost ~2 % of a U-Net
//! pass, and the copy's padding columns were computed and thrown away: 3 % at 32 px wide).
//!
//! Positions are flat pixel indices `q = y·w + x`, so a block of 48 still runs across row ends. A
//! tap whose pixel would fall outside the map (or past the last position) loads that lane
//! masked to zero, which is what the padded copy held there: the sum is the same
//! `bias + Σ_ci Σ_t w·x`, one fused multiply-add per term in the same order, `w·0` for padding,
//! so the bits equal the padded engine's (and the portable and AVX2 ones'). Masked-off lanes are
//! never read, so blocks at the first and last rows may point before or past the planes.

use super::direct::{self, Block, MR, NR_MAX};

/// How many channels ahead a block prefetches its input rows.
const PREFETCH_CHANNELS: usize = 3;

/// Largest kernel side with masks here (U-Net and FC-DenseNet use 3).
pub const MAX_K: usize = 7;

/// What one call convolves: `cin` planes of `h x w` stored one after the other.
pub struct Plain<'a> {
    pub data: &'a [f32],
    pub h: usize,
    pub w: usize,
    pub cin: usize,
    pub k: usize,
    /// Packed by [`direct::pack_weights`]: `[cout / MR][cin][tap][MR]`, taps row by row.
    pub weights: &'a [f32],
    pub bias: &'a [f32],
    pub cout: usize,
}

/// Whether this CPU runs the unpadded engine.
pub fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// Set bits `lo..hi` of a 48-lane mask.
fn span(lo: isize, hi: isize) -> u64 {
    let (lo, hi) = (lo.clamp(0, 48) as u32, hi.clamp(0, 48) as u32);
    if hi <= lo { 0 } else { ((1u64 << (hi - lo)) - 1) << lo }
}

/// For the block at `q0`: per tap, the lanes whose input pixel lies inside the map (and whose
/// position is below `n`), as three 16-lane masks.
fn masks(p: &Plain, q0: usize, out: &mut [[u16; 3]; MAX_K * MAX_K]) {
    let (h, w, k) = (p.h as isize, p.w as isize, p.k);
    let r = (k / 2) as isize;
    let lanes = (p.h * p.w - q0).min(NR_MAX) as isize;
    let all = span(0, lanes);
    let (mut rows, mut cols) = ([all; MAX_K], [all; MAX_K]);
    let mut y = (q0 / p.w) as isize;
    // Lane of the start of row y (negative when the block starts inside the row).
    let mut start = -((q0 % p.w) as isize);
    while start < lanes {
        let row = span(start, start + w);
        for (ky, m) in rows.iter_mut().enumerate().take(k) {
            let yy = y + ky as isize - r;
            if yy < 0 || yy >= h {
                *m &= !row;
            }
        }
        for (kx, m) in cols.iter_mut().enumerate().take(k) {
            let dx = kx as isize - r;
            // Lanes of this row whose x + dx leaves [0, w).
            let out = if dx < 0 { span(start, start - dx) } else { span(start + w - dx, start + w) };
            *m &= !(out & row);
        }
        y += 1;
        start += w;
    }
    for t in 0..k * k {
        let m = rows[t / k] & cols[t % k];
        out[t] = [m as u16, (m >> 16) as u16, (m >> 32) as u16];
    }
}

/// Compute every block and hand it to `store(co0, q0, n, block)` as [`direct::run`] does; position
/// `q` is pixel `q` of the output plane.
pub fn run(p: &Plain, store: impl Fn(usize, usize, usize, &Block) + Sync) {
    assert!(available(), "the unpadded engine needs AVX-512F");
    assert!(p.k % 2 == 1 && p.k <= MAX_K && p.cin >= 1);
    let (n, taps) = (p.h * p.w, p.k * p.k);
    assert!(p.data.len() >= p.cin * n, "unpadded conv: input buffer too short");
    assert!(p.weights.len() >= direct::packed_weight_elems(p.cout, p.cin, taps) && p.bias.len() >= p.cout);
    let r = (p.k / 2) as isize;
    let offsets: Vec<isize> =
        (0..taps).map(|t| (t / p.k) as isize * p.w as isize - r * p.w as isize + (t % p.k) as isize - r).collect();
    direct::schedule(n.div_ceil(NR_MAX), p.cout.div_ceil(MR), p.cin * taps, |cb, qb, blk| {
        let q0 = qb * NR_MAX;
        let mut m = [[0u16; 3]; MAX_K * MAX_K];
        masks(p, q0, &mut m);
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `available` checked AVX-512F; every lane a mask lets through lies inside
        // `data` (asserted length), and masked-off lanes are not accessed.
        unsafe {
            block(p, cb, q0, &offsets, &m[..taps], blk)
        };
        store(cb * MR, q0, NR_MAX.min(n - q0), blk);
    });
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn block(p: &Plain, cb: usize, q0: usize, offsets: &[isize], masks: &[[u16; 3]], blk: &mut Block) {
    use std::arch::x86_64::*;
    let taps = offsets.len();
    // One mask per tap (which also spares the tap loop its bounds checks).
    assert_eq!(masks.len(), taps);
    let plane = p.h * p.w;
    // SAFETY: `run` calls this only where AVX-512F is; the weights are in bounds by the assertion
    // in `run`; input addresses are formed with wrapping arithmetic and only read through the
    // masks (see `run`).
    unsafe {
        let base = p.data.as_ptr().wrapping_add(q0);
        let channel = |ci: usize| {
            let src = base.wrapping_add(ci * plane);
            // Fetch rows a few channels ahead while this one computes: on the widest maps the
            // first channel block of a position block reads them from memory (a hint: never
            // faults).
            let next = src.wrapping_add(PREFETCH_CHANNELS * plane);
            for ky in 0..p.k {
                let row = next.wrapping_offset(offsets[ky * p.k]);
                for l in 0..4 {
                    _mm_prefetch::<_MM_HINT_T0>(row.wrapping_add(16 * l) as *const i8);
                }
            }
            src
        };
        let load = |src: *const f32, tap: usize| {
            let (s, m) = (src.wrapping_offset(offsets[tap]), masks[tap]);
            // Masked loads cost more than plain ones here (Zen 4): mask only the vectors that
            // reach outside the map.
            let load = |v: usize| {
                if m[v] == u16::MAX {
                    _mm512_loadu_ps(s.wrapping_add(16 * v))
                } else {
                    _mm512_maskz_loadu_ps(m[v], s.wrapping_add(16 * v))
                }
            };
            [load(0), load(1), load(2)]
        };
        let w = p.weights.as_ptr().add(cb * p.cin * taps * MR);
        direct::avx512_block(
            direct::bias_of(p.bias, p.cout, cb, direct::Isa::Avx512),
            w,
            p.cin,
            taps,
            channel,
            load,
            |w, x, a| _mm512_fmadd_ps(w, x, a),
            blk,
        )
    }
}
