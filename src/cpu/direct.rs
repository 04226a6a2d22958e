//! The register-blocked direct convolution engine that `conv` and `conv_transpose` share.
//!
//! The input is a stack of `cin` zero-padded planes, each stored flat (row after row, `plane`
//! elements apart). An output position is a flat index `q` into the plane, and its value is
//!
//! ```text
//! out[co][q] = bias[co] + Σ_ci Σ_t  w[co][ci][t] · in[ci][q + offset[t]]
//! ```
//!
//! accumulated with one fused multiply-add per term, in exactly that order (ci ascending, then the
//! taps in the order given), starting from the bias. Nothing else: no split of the sum, no
//! reassociation, so an element's bits depend only on the layer and on its own inputs, never on
//! the map's extent, the element's position or how the work is split into blocks and threads.
//! A convolution with a k x k kernel has taps at offsets `ky·row + kx`; the flat indexing lets one
//! register block run across row ends (positions that land in padding columns are computed and
//! discarded), so narrow maps still fill whole blocks.
//!
//! Three implementations of the same arithmetic: AVX-512F (8 output channels x 48 positions in 24
//! zmm accumulators), AVX2+FMA (two passes of 4 channels x 16 positions), and a portable one using
//! `f32::mul_add` (correctly rounded, so it gives the same bits as the hardware FMA). Tests compare
//! all of them bit for bit with the element-by-element reference.

use std::ops::Range;

use rayon::prelude::*;

use super::{amx, bf16};
use crate::planner::Precision;

/// Output channels per register block (and per packed weight block).
pub const MR: usize = 8;
/// The most positions any implementation computes per block.
pub const NR_MAX: usize = 48;

/// One block of results: `MR` channels x up to `NR_MAX` positions.
pub type Block = [[f32; NR_MAX]; MR];

/// Which implementation runs the blocks, and so in which arithmetic: three of f32 (all give the
/// same bits), two of bf16 on vectors (see [`bf16`]: the same bits as each other, other bits than
/// f32) and two on AMX tiles (real or emulated: the same bits as each other; the vectors' per pair,
/// in another order over the taps, see [`amx`]). A model's precision picks the engine
/// ([`Isa::detect_for`]) once, for every layer and window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Isa {
    Portable,
    Avx2Fma,
    Avx512,
    /// bf16 pairs, one [`bf16::madd`] at a time.
    Bf16Portable,
    /// bf16 pairs on `VDPBF16PS`: 8 channels x 48 positions, as [`Isa::Avx512`].
    Avx512Bf16,
    /// bf16 on AMX tiles ([`amx`]): other bits than the two above on kernels with several taps
    /// (16 pairs per tile product), the same bits as [`Isa::AmxEmulated`].
    Amx,
    /// [`Isa::Amx`]'s kernel on tiles emulated in software: any CPU runs it, for the tests.
    AmxEmulated,
}

impl Isa {
    /// The fastest f32 implementation this CPU supports.
    pub fn detect() -> Isa {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f") {
                return Isa::Avx512;
            }
            if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
                return Isa::Avx2Fma;
            }
        }
        Isa::Portable
    }

    /// The fastest implementation of `precision`'s arithmetic on this CPU (f16 is not a CPU
    /// arithmetic: it plans like f32).
    pub fn detect_for(precision: Precision) -> Isa {
        match precision {
            Precision::Bf16 => *Isa::available_for(precision).last().expect("the portable path"),
            Precision::F32 | Precision::F16 => Isa::detect(),
        }
    }

    /// Every f32 implementation this CPU can run (for tests and benches).
    pub fn available() -> Vec<Isa> {
        Isa::available_for(Precision::F32)
    }

    /// Every implementation of `precision`'s arithmetic this CPU can run, slowest first.
    pub fn available_for(precision: Precision) -> Vec<Isa> {
        #[cfg(target_arch = "x86_64")]
        let has = |f: &str| match f {
            "avx2" => std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma"),
            "avx512f" => std::arch::is_x86_feature_detected!("avx512f"),
            "avx512bf16" => {
                std::arch::is_x86_feature_detected!("avx512f") && std::arch::is_x86_feature_detected!("avx512bf16")
            }
            "amx" => amx::usable(),
            _ => false,
        };
        #[cfg(not(target_arch = "x86_64"))]
        let has = |_: &str| false;
        let candidates: &[(Isa, &str)] = match precision {
            Precision::Bf16 => {
                &[(Isa::AmxEmulated, ""), (Isa::Bf16Portable, ""), (Isa::Avx512Bf16, "avx512bf16"), (Isa::Amx, "amx")]
            }
            Precision::F32 | Precision::F16 => &[(Isa::Portable, ""), (Isa::Avx2Fma, "avx2"), (Isa::Avx512, "avx512f")],
        };
        candidates.iter().filter(|(_, f)| f.is_empty() || has(f)).map(|&(isa, _)| isa).collect()
    }

    /// Every implementation, by its name on the command line.
    pub const NAMES: [(Isa, &'static str); 7] = [
        (Isa::Portable, "portable"),
        (Isa::Avx2Fma, "avx2"),
        (Isa::Avx512, "avx512"),
        (Isa::Bf16Portable, "bf16-portable"),
        (Isa::Avx512Bf16, "avx512-bf16"),
        (Isa::Amx, "amx"),
        (Isa::AmxEmulated, "amx-emulated"),
    ];

    /// The implementation called `name` ([`Isa::NAMES`]).
    pub fn from_name(name: &str) -> Option<Isa> {
        Isa::NAMES.iter().find(|(_, n)| *n == name).map(|&(isa, _)| isa)
    }

    /// This implementation's name in [`Isa::NAMES`].
    pub fn name(self) -> &'static str {
        Isa::NAMES.iter().find(|(isa, _)| *isa == self).map_or("?", |(_, n)| n)
    }

    /// Whether this CPU can run this implementation.
    pub fn is_available(self) -> bool {
        Isa::available_for(self.precision()).contains(&self)
    }

    /// The arithmetic this implementation computes in.
    pub fn precision(self) -> Precision {
        if self.is_bf16() { Precision::Bf16 } else { Precision::F32 }
    }

    /// Whether this implementation computes in bf16 (its inputs and weights are channel pairs).
    pub fn is_bf16(self) -> bool {
        matches!(self, Isa::Bf16Portable | Isa::Avx512Bf16 | Isa::Amx | Isa::AmxEmulated)
    }

    /// Whether this implementation runs on (real or emulated) AMX tiles: its own layouts ([`amx`]).
    pub fn is_amx(self) -> bool {
        matches!(self, Isa::Amx | Isa::AmxEmulated)
    }

    /// Input channel pairs one step of the sum takes before the next tap: 1, or a tile's 16.
    pub fn k_block(self) -> usize {
        if self.is_amx() { amx::K_BLOCK } else { 1 }
    }

    /// The vector engine of the same CPU that runs what tiles do not (Winograd layers): the same
    /// per-pair arithmetic in the other engines' layout.
    pub fn vector(self) -> Isa {
        match self {
            Isa::Amx => Isa::Avx512Bf16,
            Isa::AmxEmulated => Isa::Bf16Portable,
            other => other,
        }
    }

    /// Elements per position of a `cin`-channel input in this arithmetic's layout.
    pub fn depth(self, cin: usize) -> usize {
        if self.is_amx() {
            amx::depth(cin)
        } else if self.is_bf16() {
            bf16::depth(cin)
        } else {
            cin
        }
    }

    /// Positions per block (the most, for the tiles).
    pub fn nr(self) -> usize {
        match self {
            Isa::Portable | Isa::Avx2Fma | Isa::Bf16Portable => 16,
            Isa::Avx512 | Isa::Avx512Bf16 | Isa::Amx | Isa::AmxEmulated => 48,
        }
    }
}

/// What one call convolves.
pub struct Taps<'a> {
    /// `cin` planes of `plane` elements, then at least [`slack`] more readable elements.
    pub data: &'a [f32],
    pub plane: usize,
    pub cin: usize,
    /// Where each tap reads, relative to the output position.
    pub offsets: &'a [usize],
    /// Packed by [`pack_weights`]: `[cout / MR][cin][tap][MR]`.
    pub weights: &'a [f32],
    pub bias: &'a [f32],
    pub cout: usize,
    /// Output positions `0..n_q` are computed.
    pub n_q: usize,
}

/// Readable elements a caller leaves after its last plane: blocks load whole `NR_MAX` runs, which
/// may reach past the last output position by up to a block (plus a padding overhang below 16).
pub const fn slack() -> usize {
    NR_MAX + 16
}

pub fn packed_weight_elems(cout: usize, cin: usize, taps: usize) -> usize {
    cout.div_ceil(MR) * cin * taps * MR
}

/// Elements of the weights of `cout` channels of `depth` ([`Isa::depth`]) input elements and
/// `taps` taps, packed for `isa`'s engine.
pub fn packed_elems_for(isa: Isa, cout: usize, depth: usize, taps: usize) -> usize {
    if isa.is_amx() { amx::packed_elems(cout, depth, taps) } else { packed_weight_elems(cout, depth, taps) }
}

/// Regroup weights as `[cout / MR][cin][tap][MR]` (one tap's MR weights adjacent); channels
/// missing from the last block get zero weights and are never stored.
pub fn pack_weights(
    dst: &mut [f32],
    cout: usize,
    cin: usize,
    taps: usize,
    w: impl Fn(usize, usize, usize) -> f32 + Sync,
) {
    let per = cin * taps * MR;
    let dst = &mut dst[..packed_weight_elems(cout, cin, taps)];
    dst.par_chunks_mut(per).enumerate().for_each(|(cb, blk)| {
        for ci in 0..cin {
            for t in 0..taps {
                for j in 0..MR {
                    let co = cb * MR + j;
                    blk[(ci * taps + t) * MR + j] = if co < cout { w(co, ci, t) } else { 0.0 };
                }
            }
        }
    });
}

/// [`pack_weights_for`] `isa` of weights stored `[cout][cin][tap]`, as a convolution holds them:
/// each block interleaves MR rows (in bf16, pairs of their input channels), read in order,
/// without the per-element index arithmetic of a gather (part of what a process pays before its
/// first window).
pub fn pack_rows(dst: &mut [f32], cout: usize, cin: usize, taps: usize, weights: &[f32], isa: Isa) {
    let (len, depth) = (cin * taps, isa.depth(cin));
    assert_eq!(weights.len(), cout * len, "weights of {cout} rows of {len}");
    if isa.is_amx() {
        return amx::pack_rows(dst, cout, cin, taps, weights);
    }
    let dst = &mut dst[..packed_weight_elems(cout, depth, taps)];
    if len == 0 {
        return;
    }
    let blocks = dst.par_chunks_mut(depth * taps * MR).zip(weights.par_chunks(len * MR));
    if !isa.is_bf16() {
        blocks.for_each(|(blk, rows)| {
            let n = rows.len() / len;
            for (k, out) in blk.chunks_exact_mut(MR).enumerate() {
                for (j, o) in out.iter_mut().enumerate() {
                    *o = if j < n { rows[j * len + k] } else { 0.0 };
                }
            }
        });
        return;
    }
    // Row by row, pair by pair: each row is read in order, its pairs' halves `taps` apart (an
    // element-by-element gather across the rows took twice as long).
    blocks.for_each(|(blk, rows)| {
        blk.fill(0.0);
        for (j, row) in rows.chunks_exact(len).enumerate() {
            for (p, out) in blk.chunks_exact_mut(taps * MR).enumerate() {
                let lo = &row[2 * p * taps..][..taps];
                let hi = row.get((2 * p + 1) * taps..(2 * p + 2) * taps);
                for (t, o) in out.chunks_exact_mut(MR).enumerate() {
                    o[j] = bf16::pair(lo[t], hi.map_or(0.0, |h| h[t]));
                }
            }
        }
    });
}

/// [`pack_weights`] for a bf16 implementation: the `cin` input channels as [`bf16::depth`] pairs.
pub fn pack_weights_for(
    isa: Isa,
    dst: &mut [f32],
    cout: usize,
    cin: usize,
    taps: usize,
    w: impl Fn(usize, usize, usize) -> f32 + Sync,
) {
    if !isa.is_bf16() {
        return pack_weights(dst, cout, cin, taps, w);
    }
    if isa.is_amx() {
        return amx::pack(dst, cout, cin, taps, w);
    }
    let of = |co: usize, ci: usize, t: usize| if ci < cin { w(co, ci, t) } else { 0.0 };
    pack_weights(dst, cout, bf16::depth(cin), taps, |co, p, t| bf16::pair(of(co, 2 * p, t), of(co, 2 * p + 1, t)))
}

/// Compute every block and hand it to `store(co0, q0, n, block)`: channels `co0..co0 + MR` (those
/// below `cout`), positions `q0..q0 + n`. Calls run in parallel on disjoint (channel, position)
/// blocks.
pub fn run(t: &Taps, isa: Isa, store: impl Fn(usize, usize, usize, &Block) + Sync) {
    if isa.is_amx() {
        return amx::run(t, isa == Isa::AmxEmulated, store);
    }
    let ntaps = t.offsets.len();
    let nr = isa.nr();
    let (nqb, ncb) = (t.n_q.div_ceil(nr), t.cout.div_ceil(MR));
    if nqb == 0 || ncb == 0 {
        return;
    }
    check(t, nr);
    // Start of each cache-line run the taps read (taps within 16 elements share one run).
    let mut sorted = t.offsets.to_vec();
    sorted.sort_unstable();
    let mut runs: Vec<usize> = Vec::new();
    for &o in &sorted {
        if runs.last().is_none_or(|&r| o >= r + 16) {
            runs.push(o);
        }
    }
    let runs = &runs[..];
    schedule(nqb, ncb, t.cin * ntaps, |cb, qb, blk| {
        let q0 = qb * nr;
        block(t, isa, cb, q0, runs, blk);
        store(cb * MR, q0, nr.min(t.n_q - q0), blk);
    });
}

/// Assert that every load of every block of `t` stays inside its buffers (the kernels rely on
/// this).
pub(crate) fn check(t: &Taps, nr: usize) {
    check_blocks(t, nr, packed_weight_elems(t.cout, t.cin, t.offsets.len()));
}

/// [`check`] for blocks of `nr` positions on weights packed into `packed` elements (the tiles'
/// blocks and packing are their own).
pub(crate) fn check_blocks(t: &Taps, nr: usize, packed: usize) {
    let max_off = t.offsets.iter().copied().max().unwrap_or(0);
    assert!(t.cin >= 1 && !t.offsets.is_empty());
    let nqb = t.n_q.div_ceil(nr);
    assert!((t.cin - 1) * t.plane + nqb * nr + max_off <= t.data.len(), "direct conv: input buffer too short");
    assert!(t.weights.len() >= packed && t.bias.len() >= t.cout);
}

/// Run `f(channel block, position block, scratch)` for every block of `ncb x nqb`, in parallel. A
/// task takes a group of channel blocks whose weights (`k` per channel) stay cached (~256 KiB)
/// across a run of position blocks whose inputs stay cached across the group; enough tasks for
/// every thread.
pub(crate) fn schedule(nqb: usize, ncb: usize, k: usize, f: impl Fn(usize, usize, &mut Block) + Sync) {
    schedule_tasks(nqb, ncb, k, |cbs, qbs| {
        let mut blk = [[0.0f32; NR_MAX]; MR];
        for qb in qbs {
            for cb in cbs.clone() {
                f(cb, qb, &mut blk);
            }
        }
    });
}

/// [`schedule`]'s tasks: `task(channel blocks, position blocks)`, in parallel.
pub(crate) fn schedule_tasks(nqb: usize, ncb: usize, k: usize, task: impl Fn(Range<usize>, Range<usize>) + Sync) {
    if nqb == 0 || ncb == 0 {
        return;
    }
    let most = (65536 / (k * MR)).clamp(1, ncb);
    let ngroups = ncb.div_ceil(most);
    let group = ncb.div_ceil(ngroups);
    let want = 12 * rayon::current_num_threads();
    let qchunk = nqb.div_ceil(want.div_ceil(ngroups).clamp(1, nqb));
    let ntasks = ngroups * nqb.div_ceil(qchunk);
    (0..ntasks).into_par_iter().for_each(|t| {
        let (g, qc) = (t % ngroups, t / ngroups);
        task(g * group..((g + 1) * group).min(ncb), qc * qchunk..((qc + 1) * qchunk).min(nqb));
    });
}

/// The biases of channel block `cb` (zero past `cout`); for bf16 with subnormals flushed, as the
/// hardware reads its accumulators, so that every bf16 path starts from the same values.
pub(crate) fn bias_of(bias: &[f32], cout: usize, cb: usize, isa: Isa) -> [f32; MR] {
    let mut b = [0.0; MR];
    for (j, v) in b.iter_mut().enumerate() {
        if cb * MR + j < cout {
            *v = if isa.is_bf16() { bf16::flush(bias[cb * MR + j]) } else { bias[cb * MR + j] };
        }
    }
    b
}

/// Compute block (`cb`, `q0`) of `t` into `blk` (`runs`: where the taps' rows start, for the
/// prefetch). The caller must have run [`check`] on `t`.
#[inline(always)]
pub(crate) fn block(t: &Taps, isa: Isa, cb: usize, q0: usize, runs: &[usize], blk: &mut Block) {
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Isa::Avx512` is only chosen where the CPU has AVX-512F (detect/available);
        // `check` asserted that every load stays inside the buffers.
        Isa::Avx512 => unsafe { block_avx512(t, cb, q0, runs, blk) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above, with AVX2 and FMA.
        Isa::Avx2Fma => unsafe { block_avx2(t, cb, q0, blk) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above, with AVX512-BF16 (`available_for`).
        Isa::Avx512Bf16 => unsafe { block_avx512_bf16(t, cb, q0, runs, blk) },
        Isa::Bf16Portable => block_bf16_portable(t, cb, q0, blk),
        Isa::Amx | Isa::AmxEmulated => unreachable!("the tiles compute whole tile blocks (amx::run)"),
        _ => {
            let _ = runs;
            block_portable(t, cb, q0, blk)
        }
    }
}

/// The arithmetic every f32 implementation performs, written plainly.
fn block_portable(t: &Taps, cb: usize, q0: usize, blk: &mut Block) {
    block_plain(t, cb, q0, blk, Isa::Portable, |acc, x, w| w.mul_add(x, acc))
}

/// The bf16 arithmetic ([`bf16::madd`] per pair), written plainly: `t` holds channel pairs.
fn block_bf16_portable(t: &Taps, cb: usize, q0: usize, blk: &mut Block) {
    block_plain(t, cb, q0, blk, Isa::Bf16Portable, bf16::madd)
}

/// One block, one `step(acc, input, weight)` per term in the engine's order, 16 positions at a
/// time (`isa` says which arithmetic, for the bias).
#[inline(always)]
fn block_plain(t: &Taps, cb: usize, q0: usize, blk: &mut Block, isa: Isa, step: impl Fn(f32, f32, f32) -> f32) {
    const N: usize = 16;
    let ntaps = t.offsets.len();
    let bias = bias_of(t.bias, t.cout, cb, isa);
    let mut acc = [[0.0f32; N]; MR];
    for (a, b) in acc.iter_mut().zip(bias) {
        *a = [b; N];
    }
    let w = &t.weights[cb * t.cin * ntaps * MR..(cb + 1) * t.cin * ntaps * MR];
    for ci in 0..t.cin {
        for (ti, &off) in t.offsets.iter().enumerate() {
            let s = ci * t.plane + q0 + off;
            let src = &t.data[s..s + N];
            let wt = &w[(ci * ntaps + ti) * MR..][..MR];
            for (a, &wv) in acc.iter_mut().zip(wt) {
                for (o, &v) in a.iter_mut().zip(src) {
                    *o = step(*o, v, wv);
                }
            }
        }
    }
    for (o, a) in blk.iter_mut().zip(&acc) {
        o[..N].copy_from_slice(a);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn block_avx512(t: &Taps, cb: usize, q0: usize, runs: &[usize], blk: &mut Block) {
    use std::arch::x86_64::*;
    // SAFETY: AVX-512F is this function's own precondition, passed on (see `block`).
    unsafe { padded_avx512(t, cb, q0, runs, blk, Isa::Avx512, |w, x, acc| _mm512_fmadd_ps(w, x, acc)) }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn block_avx512_bf16(t: &Taps, cb: usize, q0: usize, runs: &[usize], blk: &mut Block) {
    use std::arch::x86_64::*;
    // One step: `acc` plus the pair products of `x` and the broadcast pair `w`, as `bf16::madd`
    // computes them; the casts only relabel 512 bits (pairs of bf16 held in f32 lanes).
    let madd = |w: __m512, x: __m512, acc: __m512| {
        // SAFETY: both are 512 bits of plain data; any bit pattern is a valid value of either.
        let (x, w) =
            unsafe { (std::mem::transmute::<__m512, __m512bh>(x), std::mem::transmute::<__m512, __m512bh>(w)) };
        _mm512_dpbf16_ps(acc, x, w)
    };
    // SAFETY: AVX-512F and AVX512-BF16 are this function's own precondition (see `block`).
    unsafe { padded_avx512(t, cb, q0, runs, blk, Isa::Avx512Bf16, madd) }
}

/// The padded engine's AVX-512 block, in f32 or bf16 by `madd` (`isa` says which, for the bias).
///
/// # Safety
/// The CPU has AVX-512F and whatever `madd` needs; `check` passed for `t`.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn padded_avx512(
    t: &Taps,
    cb: usize,
    q0: usize,
    runs: &[usize],
    blk: &mut Block,
    isa: Isa,
    madd: impl Fn(
        std::arch::x86_64::__m512,
        std::arch::x86_64::__m512,
        std::arch::x86_64::__m512,
    ) -> std::arch::x86_64::__m512,
) {
    use std::arch::x86_64::*;
    let ntaps = t.offsets.len();
    // SAFETY: the CPU features are the caller's promise; all pointer arithmetic below, and every
    // load `avx512_block` makes through `load`, is in bounds by `check`.
    unsafe {
        let base = t.data.as_ptr().add(q0);
        let channel = |ci: usize| {
            let p = base.add(ci * t.plane);
            // Fetch the next channel's rows while this one computes: the planes lie far apart,
            // beyond what the hardware prefetchers follow. (A hint: never faults, any address.)
            let next = p.wrapping_add(t.plane);
            for &r in runs {
                for l in 0..4 {
                    _mm_prefetch::<_MM_HINT_T0>(next.wrapping_add(r + 16 * l) as *const i8);
                }
            }
            p
        };
        let load = |p: *const f32, tap: usize| {
            let s = p.add(t.offsets[tap]);
            [_mm512_loadu_ps(s), _mm512_loadu_ps(s.add(16)), _mm512_loadu_ps(s.add(32))]
        };
        let w = t.weights.as_ptr().add(cb * t.cin * ntaps * MR);
        avx512_block(bias_of(t.bias, t.cout, cb, isa), w, t.cin, ntaps, channel, load, madd, blk)
    }
}

/// The AVX-512F block of both engines (this padded one and [`super::unpadded`]): 8 channels x 48
/// positions in 24 zmm accumulators, starting from the bias, one `madd` per term (a fused
/// multiply-add in f32; a bf16 pair step in bf16),
/// input channel by input channel and tap by tap (the packed weights' order). Only where a tap's
/// inputs come from differs: `channel(ci)` starts input channel `ci` (and prefetches) and returns
/// what `load(that, tap)` needs to give the tap's 48 inputs. Always inlined into its callers, so
/// that it compiles with their AVX-512F, exactly as when each had its own copy.
///
/// # Safety
/// The CPU has AVX-512F; `weights` points at `cin · taps · MR` readable packed weights; `channel`
/// and `load` are sound for every input channel and tap.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn avx512_block<C: Copy>(
    bias: [f32; MR],
    weights: *const f32,
    cin: usize,
    taps: usize,
    channel: impl Fn(usize) -> C,
    load: impl Fn(C, usize) -> [std::arch::x86_64::__m512; 3],
    madd: impl Fn(
        std::arch::x86_64::__m512,
        std::arch::x86_64::__m512,
        std::arch::x86_64::__m512,
    ) -> std::arch::x86_64::__m512,
    blk: &mut Block,
) {
    use std::arch::x86_64::*;
    const V: usize = 3;
    const _: () = assert!(V * 16 <= NR_MAX);
    // SAFETY: the caller promised AVX-512F, the weights' extent and sound `channel` and `load`;
    // every store lands inside `blk` (V · 16 <= NR_MAX lanes per row).
    unsafe {
        let mut acc = [[_mm512_setzero_ps(); V]; MR];
        for (a, b) in acc.iter_mut().zip(bias) {
            *a = [_mm512_set1_ps(b); V];
        }
        let mut w = weights;
        for ci in 0..cin {
            let c = channel(ci);
            for tap in 0..taps {
                let x = load(c, tap);
                for (j, a) in acc.iter_mut().enumerate() {
                    let wv = _mm512_set1_ps(*w.add(j));
                    for (av, &xv) in a.iter_mut().zip(&x) {
                        *av = madd(wv, xv, *av);
                    }
                }
                w = w.add(MR);
            }
        }
        for (o, a) in blk.iter_mut().zip(&acc) {
            for (v, &av) in a.iter().enumerate() {
                _mm512_storeu_ps(o.as_mut_ptr().add(16 * v), av);
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn block_avx2(t: &Taps, cb: usize, q0: usize, blk: &mut Block) {
    use std::arch::x86_64::*;
    const V: usize = 2;
    const H: usize = MR / 2;
    let ntaps = t.offsets.len();
    let bias = bias_of(t.bias, t.cout, cb, Isa::Avx2Fma);
    // Two passes over the taps, 4 channels x 16 positions each (8 accumulators, leaving registers
    // for the loads and the broadcast among the 16 ymm).
    for half in 0..2 {
        let mut acc = [[_mm256_setzero_ps(); V]; H];
        for (a, &b) in acc.iter_mut().zip(&bias[half * H..]) {
            *a = [_mm256_set1_ps(b); V];
        }
        // SAFETY (all pointer arithmetic below): in bounds by the assertions in `check`.
        unsafe {
            let mut w = t.weights.as_ptr().add(cb * t.cin * ntaps * MR + half * H);
            let base = t.data.as_ptr().add(q0);
            for ci in 0..t.cin {
                let p = base.add(ci * t.plane);
                for &off in t.offsets {
                    let s = p.add(off);
                    let x = [_mm256_loadu_ps(s), _mm256_loadu_ps(s.add(8))];
                    for (j, a) in acc.iter_mut().enumerate() {
                        let wv = _mm256_broadcast_ss(&*w.add(j));
                        for (av, &xv) in a.iter_mut().zip(&x) {
                            *av = _mm256_fmadd_ps(wv, xv, *av);
                        }
                    }
                    w = w.add(MR);
                }
            }
            for (o, a) in blk[half * H..].iter_mut().zip(&acc) {
                for (v, &av) in a.iter().enumerate() {
                    _mm256_storeu_ps(o.as_mut_ptr().add(8 * v), av);
                }
            }
        }
    }
}

/// Workspace [`run_unpadded`] needs for `cin` planes: a copy of the planes' last partial block.
pub const fn unpadded_tail_elems(cin: usize) -> usize {
    cin * NR_MAX + slack()
}

/// Elements of the block buffer each [`run_converted`] task keeps on its stack: its `depth` rows
/// of `nr` positions and the slack must fit (128 KiB, small enough to stay in the core's cache).
pub const CONVERTED_MAX: usize = 32 << 10;

/// Stack a [`run_converted`] task needs: its buffer and the frames below it.
const CONVERTED_STACK: usize = CONVERTED_MAX * 4 + (64 << 10);

/// `f` on a zeroed block buffer in a frame of its own (never inlined: the buffer must not be
/// reserved in a caller's frame, before [`stacker::maybe_grow`] has checked the stack).
#[inline(never)]
fn on_block_buffer<R>(f: impl FnOnce(&mut [f32]) -> R) -> R {
    let mut buf = [0.0f32; CONVERTED_MAX];
    f(&mut buf)
}

/// Whether [`run_converted`] takes `depth` input rows on `isa`'s engine (never on the tiles, which
/// read a padded copy).
pub fn converted_fits(depth: usize, isa: Isa) -> bool {
    !isa.is_amx() && depth.saturating_mul(isa.nr()).saturating_add(slack()) <= CONVERTED_MAX
}

/// A one-tap convolution over `n` positions whose input is made one position block at a time:
/// `convert(q0, len, rows)` writes positions `q0..q0 + len` of each of the `depth` input rows
/// (`rows` holds `depth` rows of equal length, zero past `len`), a few position blocks at a time
/// and once per channel group, into a buffer of the task's own that every channel block then
/// reads from cache. What a 1 x 1 convolution with a fused input transform, or in bf16, does
/// instead of a whole transformed copy of its input, which would go through memory twice more.
/// The same arithmetic per output as [`run`].
#[allow(clippy::too_many_arguments)]
pub fn run_converted(
    n: usize,
    depth: usize,
    weights: &[f32],
    bias: &[f32],
    cout: usize,
    isa: Isa,
    convert: impl Fn(usize, usize, &mut [f32]) + Sync,
    store: impl Fn(usize, usize, usize, &Block) + Sync,
) {
    let nr = isa.nr();
    assert!(converted_fits(depth, isa), "run_converted: {depth} input rows do not fit its buffer");
    // Up to 8 position blocks converted at once, as many as fit: short rows cost more per element.
    let span = ((CONVERTED_MAX - slack()) / depth / nr).clamp(1, 8) * nr;
    let len = depth * span + slack();
    let task = |buf: &mut [f32], cbs: Range<usize>, qbs: Range<usize>| {
        let mut blk = [[0.0f32; NR_MAX]; MR];
        for first in qbs.clone().step_by(span / nr) {
            let q0 = first * nr;
            let m = span.min(n - q0);
            convert(q0, m, &mut buf[..depth * span]);
            let t = Taps { data: buf, plane: span, cin: depth, offsets: &[0], weights, bias, cout, n_q: span };
            check(&t, nr);
            for qb in first..(first + span / nr).min(qbs.end) {
                let (local, m) = ((qb - first) * nr, nr.min(n - qb * nr));
                for cb in cbs.clone() {
                    block(&t, isa, cb, local, &[0], &mut blk);
                    store(cb * MR, qb * nr, m, &blk);
                }
            }
        }
    };
    schedule_tasks(n.div_ceil(nr), cout.div_ceil(MR), depth, |cbs, qbs| {
        // On the worker's stack: no allocation, so the planned memory is all there is. A program
        // embedding seamless may give rayon's workers less stack than this: the task then runs on
        // a larger stack of its own (mapped for it, outside the heap).
        stacker::maybe_grow(CONVERTED_STACK, 2 * CONVERTED_STACK, || {
            on_block_buffer(|buf| task(&mut buf[..len], cbs, qbs))
        })
    });
}

/// A one-tap convolution (offset 0) run straight on `cin` contiguous planes of `n` elements, with
/// no padded copy of them: whole blocks read the planes in place, and only the last partial block
/// reads a copy of each plane's tail in `ws` (at least [`unpadded_tail_elems`]), so no load goes
/// past the planes. The sums are the ones [`run`] computes on a padded copy, term for term.
#[allow(clippy::too_many_arguments)]
pub fn run_unpadded(
    data: &[f32],
    n: usize,
    cin: usize,
    weights: &[f32],
    bias: &[f32],
    cout: usize,
    isa: Isa,
    ws: &mut [f32],
    store: impl Fn(usize, usize, usize, &Block) + Sync,
) {
    assert!(data.len() >= cin * n, "direct conv: input buffer too short");
    let main = n / isa.nr() * isa.nr();
    let spec = |data, plane, n_q| Taps { data, plane, cin, offsets: &[0], weights, bias, cout, n_q };
    run(&spec(data, n, main), isa, &store);
    let tail = n - main;
    if tail > 0 {
        let ws = &mut ws[..cin * tail + slack()];
        for (ci, dst) in ws.chunks_mut(tail).take(cin).enumerate() {
            dst.copy_from_slice(&data[ci * n + main..(ci + 1) * n]);
        }
        ws[cin * tail..].fill(0.0);
        run(&spec(ws, tail, tail), isa, |co0, q0, len, blk| store(co0, main + q0, len, blk));
    }
}
