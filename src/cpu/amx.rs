//! The bf16 direct convolution on AMX tiles (`TDPBF16PS`), and an emulation of those tiles that
//! runs the same kernel on any CPU: what the tests exercise where the CPU has no AMX, and what a
//! CPU with AMX checks its own tiles against before it uses them.
//!
//! The layouts are those of [`super::direct`] with two changes. Input channel pairs are padded to
//! a multiple of 16 with zero pairs ([`depth`]), so that a tile of 16 pair rows never reads past
//! the planes. And each pair holds channel `2p + 1` in its low half and `2p` in its high half
//! ([`swapped`]): `TDPBF16PS` takes a pair's low product first (Intel SDM), so the swap makes each
//! pair the very [`bf16::madd`] of the other engines: channel `2p + 1`'s product, then `2p`'s.
//!
//! A tile product sums 16 pairs of one tap, so the order of one output element's sum is: the bias,
//! then for each block of 16 pairs, for each tap, the block's pairs ascending. The other engines
//! take every tap of a pair before the next pair: the bits differ from theirs on kernels with more
//! than one tap, and equal the element-by-element reference with 16-pair blocks
//! ([`super::conv::conv2d_reference_bf16_for`]). As for every engine, an element's sum depends on
//! nothing but the layer and its own inputs, so tiles equal the whole image.
//!
//! One task computes blocks of 32 output channels x 32 positions (four accumulator tiles, two of
//! weights, two of inputs), or of 16 channels x 48 positions for layers of at most 16 channels.
//! Inputs are loaded as tiles straight from the padded planes: 16 rows, one per pair, `plane`
//! elements apart.

use std::sync::OnceLock;

use rayon::prelude::*;

use super::bf16;
use super::direct::{Block, MR, NR_MAX, Taps};

/// Pairs one tile product sums (rows of an input tile, columns of a weight tile).
pub const K_BLOCK: usize = 16;
/// Rows of an accumulator tile: output channels.
const M: usize = 16;
/// Columns of an accumulator tile: positions.
const N: usize = 16;

/// Input depth of a `cin`-channel map: its channel pairs, padded to whole 16-pair blocks.
pub const fn depth(cin: usize) -> usize {
    bf16::depth(cin).div_ceil(K_BLOCK) * K_BLOCK
}

/// Channels `lo = 2p` and `hi = 2p + 1` as one pair element of these engines' layout: `hi` in the
/// low half, so that `TDPBF16PS` takes its product first (see the module's notes).
#[inline(always)]
pub fn swapped(lo: f32, hi: f32) -> f32 {
    bf16::pair(hi, lo)
}

/// How a layer's output is blocked: `m` weight tiles (16 channels each) by `n` input tiles (16
/// positions each), `m · n` accumulators.
#[derive(Clone, Copy)]
struct Shape {
    m: usize,
    n: usize,
}

impl Shape {
    fn of(cout: usize) -> Shape {
        if cout <= M { Shape { m: 1, n: 3 } } else { Shape { m: 2, n: 2 } }
    }

    fn rows(self) -> usize {
        self.m * M
    }

    fn positions(self) -> usize {
        self.n * N
    }

    // Tile registers: accumulators 0.., weights 4 and 5, inputs after the weights.
    fn c(self, i: usize, j: usize) -> u8 {
        (i * self.n + j) as u8
    }

    fn a(self, i: usize) -> u8 {
        (4 + i) as u8
    }

    fn b(self, j: usize) -> u8 {
        (4 + self.m + j) as u8
    }
}

/// Output channels the packed weights hold for `cout`: whole blocks of the layer's shape (zero
/// weights past `cout`, computed and never stored).
fn rows(cout: usize) -> usize {
    let s = Shape::of(cout);
    cout.div_ceil(s.rows()) * s.rows()
}

/// Elements of the weights packed by [`pack`]: `depth` is [`depth`] of the input channels.
pub fn packed_elems(cout: usize, depth: usize, taps: usize) -> usize {
    rows(cout) * depth * taps
}

/// Regroup weight `w(co, ci, tap)` as `[cout / 16][depth / 16][tap][16 channels][16 pairs]`: one
/// weight tile per (channel block, pair block, tap), its rows the output channels, each row 64
/// bytes of [`swapped`] pairs. Missing channels and pairs get zero weights.
pub fn pack(dst: &mut [f32], cout: usize, cin: usize, taps: usize, w: impl Fn(usize, usize, usize) -> f32 + Sync) {
    let depth = depth(cin);
    let dst = &mut dst[..packed_elems(cout, depth, taps)];
    let of = |co: usize, ci: usize, t: usize| if co < cout && ci < cin { w(co, ci, t) } else { 0.0 };
    dst.par_chunks_mut(M * K_BLOCK).enumerate().for_each(|(i, tile)| {
        let (c16, rest) = (i / (depth / K_BLOCK * taps), i % (depth / K_BLOCK * taps));
        let (kb, t) = (rest / taps, rest % taps);
        for (r, row) in tile.chunks_exact_mut(K_BLOCK).enumerate() {
            let co = c16 * M + r;
            for (c, v) in row.iter_mut().enumerate() {
                let p = kb * K_BLOCK + c;
                *v = swapped(of(co, 2 * p, t), of(co, 2 * p + 1, t));
            }
        }
    });
}

/// [`pack`] of weights stored as rows, `weights[co][ci][tap]` (a model's layout): each row read in
/// order, each tile's 16 channels packed by one task. The same elements as [`pack`], which gathers
/// them one by one across the rows: 18.7 ms for U-Net-64's direct layers against 10.2 ms this way
/// (`cargo bench --bench pack`), part of what a process pays before its first window.
pub fn pack_rows(dst: &mut [f32], cout: usize, cin: usize, taps: usize, weights: &[f32]) {
    let (depth, len) = (depth(cin), cin * taps);
    assert_eq!(weights.len(), cout * len, "weights of {cout} rows of {len}");
    let dst = &mut dst[..packed_elems(cout, depth, taps)];
    if len == 0 {
        return;
    }
    // Every block of 16 channels, those past `cout` too (all zeros): `dst` may hold another pack.
    dst.par_chunks_mut(M * depth * taps).enumerate().for_each(|(c16, blk)| {
        blk.fill(0.0);
        let rows = &weights[(c16 * M).min(cout) * len..((c16 + 1) * M).min(cout) * len];
        for (r, row) in rows.chunks_exact(len).enumerate() {
            for p in 0..cin.div_ceil(2) {
                let lo = &row[2 * p * taps..][..taps];
                let hi = row.get((2 * p + 1) * taps..(2 * p + 2) * taps);
                let (kb, c) = (p / K_BLOCK, p % K_BLOCK);
                for t in 0..taps {
                    blk[((kb * taps + t) * M + r) * K_BLOCK + c] = swapped(lo[t], hi.map_or(0.0, |h| h[t]));
                }
            }
        }
    });
}

/// The tile operations the kernel is written in (every tile 16 rows of 64 bytes).
trait Tiles {
    /// Tile `t` from rows `src + r·stride` bytes, `r` in `0..16`.
    ///
    /// # Safety
    /// The 16 rows of 64 bytes are readable.
    unsafe fn load(&mut self, t: u8, src: *const f32, stride: usize);
    /// Tile `t` to rows `dst + r·stride` bytes.
    ///
    /// # Safety
    /// The 16 rows of 64 bytes are writable and nothing else refers to them.
    unsafe fn store(&mut self, t: u8, dst: *mut f32, stride: usize);
    /// Tile `c` plus the products of tiles `a` (16 channels x 16 pairs) and `b` (16 pairs x 16
    /// positions): `TDPBF16PS`.
    fn dot(&mut self, c: u8, a: u8, b: u8);
}

/// The tiles in software, as the Intel SDM defines `TDPBF16PS`: for each output row and column,
/// the 16 pairs in order, each pair's low product added first, then its high one, each addition
/// rounded to nearest even, with subnormal inputs read as zero and subnormal sums flushed.
struct Emulated {
    tiles: [[[u32; 16]; 16]; 8],
}

impl Tiles for Emulated {
    unsafe fn load(&mut self, t: u8, src: *const f32, stride: usize) {
        for (r, row) in self.tiles[t as usize].iter_mut().enumerate() {
            // SAFETY: the caller promised 16 readable rows of 64 bytes, `stride` bytes apart.
            let s = unsafe { std::slice::from_raw_parts(src.byte_add(r * stride), 16) };
            for (d, v) in row.iter_mut().zip(s) {
                *d = v.to_bits();
            }
        }
    }

    unsafe fn store(&mut self, t: u8, dst: *mut f32, stride: usize) {
        for (r, row) in self.tiles[t as usize].iter().enumerate() {
            // SAFETY: the caller promised 16 writable rows of 64 bytes, `stride` bytes apart.
            let d = unsafe { std::slice::from_raw_parts_mut(dst.byte_add(r * stride), 16) };
            for (d, &v) in d.iter_mut().zip(row) {
                *d = f32::from_bits(v);
            }
        }
    }

    fn dot(&mut self, c: u8, a: u8, b: u8) {
        // Each element's halves widened once (not once per product), and on a CPU with FMA the
        // products fused by one instruction instead of a call to the C library's `fmaf`: the same
        // correctly rounded operations, about 4x faster. The tests and, where the CPU has AMX,
        // the check of its tiles at start run this.
        let halves = |t: &[[u32; 16]; 16]| -> [[[f32; 2]; 16]; 16] {
            let half = |v: u32| bf16::flush(bf16::widen(v as u16));
            t.map(|row| row.map(|v| [half(v), half(v >> 16)]))
        };
        let (ta, tb) = (halves(&self.tiles[a as usize]), halves(&self.tiles[b as usize]));
        let tc = &mut self.tiles[c as usize];
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("fma") {
            // SAFETY: the CPU has FMA, just checked.
            return unsafe { emulated_dot_fma(tc, &ta, &tb) };
        }
        emulated_dot(tc, &ta, &tb);
    }
}

/// `TDPBF16PS` on emulated tiles whose bf16 halves are widened (and flushed): for each output row
/// and column, the 16 pairs in order, the low product first, each fused multiply-add flushed.
#[inline(always)]
fn emulated_dot(c: &mut [[u32; 16]; 16], a: &[[[f32; 2]; 16]; 16], b: &[[[f32; 2]; 16]; 16]) {
    for (row, arow) in c.iter_mut().zip(a) {
        let mut acc = row.map(f32::from_bits);
        for (&[xl, xh], brow) in arow.iter().zip(b) {
            for (v, &[yl, yh]) in acc.iter_mut().zip(brow) {
                *v = bf16::flush(xl.mul_add(yl, *v));
                *v = bf16::flush(xh.mul_add(yh, *v));
            }
        }
        *row = acc.map(f32::to_bits);
    }
}

/// [`emulated_dot`] compiled with FMA (`mul_add` one instruction).
///
/// # Safety
/// The CPU has FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "fma")]
unsafe fn emulated_dot_fma(c: &mut [[u32; 16]; 16], a: &[[[f32; 2]; 16]; 16], b: &[[[f32; 2]; 16]; 16]) {
    emulated_dot(c, a, b)
}

/// The CPU's own tiles. Only made by [`Hardware::configure`], on a thread whose tiles are
/// configured (and released again when it is dropped).
#[cfg(target_arch = "x86_64")]
struct Hardware(());

#[cfg(target_arch = "x86_64")]
impl Hardware {
    /// Configure this thread's tiles: palette 1, tiles 0 to 7 of 16 rows of 64 bytes.
    ///
    /// # Safety
    /// The CPU has AMX-TILE and AMX-BF16 and the process may use them ([`usable`]).
    unsafe fn configure() -> Hardware {
        #[repr(C, align(64))]
        struct Config([u8; 64]);
        let mut cfg = Config([0; 64]);
        cfg.0[0] = 1;
        for t in 0..8 {
            cfg.0[16 + 2 * t..18 + 2 * t].copy_from_slice(&64u16.to_le_bytes());
            cfg.0[48 + t] = 16;
        }
        // SAFETY: a valid palette-1 configuration in 64 readable bytes; AMX is the caller's promise.
        unsafe { std::arch::asm!("ldtilecfg [{}]", in(reg) cfg.0.as_ptr(), options(nostack, readonly)) };
        Hardware(())
    }
}

#[cfg(target_arch = "x86_64")]
impl Drop for Hardware {
    fn drop(&mut self) {
        // SAFETY: the tiles were configured by `configure`; releasing returns them to their
        // initial state (no larger register state saved on every switch of this thread).
        unsafe { std::arch::asm!("tilerelease", options(nostack, nomem)) };
    }
}

#[cfg(target_arch = "x86_64")]
macro_rules! each_tile {
    ($t:expr, $op:literal, $tail:literal, $($args:tt)*) => {
        match $t {
            0 => std::arch::asm!(concat!($op, "tmm0", $tail), $($args)*),
            1 => std::arch::asm!(concat!($op, "tmm1", $tail), $($args)*),
            2 => std::arch::asm!(concat!($op, "tmm2", $tail), $($args)*),
            3 => std::arch::asm!(concat!($op, "tmm3", $tail), $($args)*),
            4 => std::arch::asm!(concat!($op, "tmm4", $tail), $($args)*),
            5 => std::arch::asm!(concat!($op, "tmm5", $tail), $($args)*),
            6 => std::arch::asm!(concat!($op, "tmm6", $tail), $($args)*),
            7 => std::arch::asm!(concat!($op, "tmm7", $tail), $($args)*),
            _ => unreachable!("tile {}", $t),
        }
    };
}

#[cfg(target_arch = "x86_64")]
impl Tiles for Hardware {
    #[inline(always)]
    unsafe fn load(&mut self, t: u8, src: *const f32, stride: usize) {
        // SAFETY: the rows are readable (the caller's promise); the tiles are configured.
        unsafe {
            each_tile!(t, "tileloadd ", ", [{p} + {s}*1]", p = in(reg) src, s = in(reg) stride, options(nostack, readonly))
        }
    }

    #[inline(always)]
    unsafe fn store(&mut self, t: u8, dst: *mut f32, stride: usize) {
        // SAFETY: the rows are writable and ours (the caller's promise); the tiles are configured.
        unsafe {
            each_tile!(t, "tilestored [{p} + {s}*1], ", "", p = in(reg) dst, s = in(reg) stride, options(nostack))
        }
    }

    #[inline(always)]
    fn dot(&mut self, c: u8, a: u8, b: u8) {
        use std::arch::asm;
        // SAFETY: register-only instructions on configured tiles (this value exists only then).
        unsafe {
            match (c, a, b) {
                (0, 4, 6) => asm!("tdpbf16ps tmm0, tmm4, tmm6", options(nostack, nomem)),
                (1, 4, 7) => asm!("tdpbf16ps tmm1, tmm4, tmm7", options(nostack, nomem)),
                (2, 5, 6) => asm!("tdpbf16ps tmm2, tmm5, tmm6", options(nostack, nomem)),
                (3, 5, 7) => asm!("tdpbf16ps tmm3, tmm5, tmm7", options(nostack, nomem)),
                (0, 4, 5) => asm!("tdpbf16ps tmm0, tmm4, tmm5", options(nostack, nomem)),
                (1, 4, 6) => asm!("tdpbf16ps tmm1, tmm4, tmm6", options(nostack, nomem)),
                (2, 4, 7) => asm!("tdpbf16ps tmm2, tmm4, tmm7", options(nostack, nomem)),
                _ => unreachable!("no tile product {c} += {a} x {b}"),
            }
        }
    }
}

/// The biases of one 16-channel block as an accumulator tile's starting rows (subnormals flushed,
/// as every bf16 engine starts; zero past `cout`).
fn bias_tile(bias: &[f32], cout: usize, c16: usize) -> [[f32; N]; M] {
    let mut tile = [[0.0; N]; M];
    for (r, row) in tile.iter_mut().enumerate() {
        if let Some(&b) = bias.get(c16 * M + r).filter(|_| c16 * M + r < cout) {
            *row = [bf16::flush(b); N];
        }
    }
    tile
}

/// One block of outputs: channels `cs · shape.rows()..`, positions `q0..q0 + shape.positions()`,
/// into `out` (its rows the block's channels, as four [`Block`]s one after the other).
///
/// # Safety
/// `check` passed for `t`; `tiles` are usable.
#[inline(always)]
unsafe fn block<T: Tiles>(tiles: &mut T, t: &Taps, shape: Shape, cs: usize, q0: usize, out: &mut [Block; 4]) {
    // Each shape compiled on its own: its loops unrolled, every tile register a constant.
    // SAFETY: passed on from the caller.
    unsafe {
        match (shape.m, shape.n) {
            (1, 3) => block_of::<T, 1, 3>(tiles, t, cs, q0, out),
            (2, 2) => block_of::<T, 2, 2>(tiles, t, cs, q0, out),
            (m, n) => unreachable!("no {m} x {n} tile shape"),
        }
    }
}

/// [`block`] for the shape of `MT` weight tiles by `NT` input tiles.
///
/// # Safety
/// As for [`block`].
#[inline(always)]
unsafe fn block_of<T: Tiles, const MT: usize, const NT: usize>(
    tiles: &mut T,
    t: &Taps,
    cs: usize,
    q0: usize,
    out: &mut [Block; 4],
) {
    let shape = Shape { m: MT, n: NT };
    let ntaps = t.offsets.len();
    let nkb = t.cin / K_BLOCK;
    let per_block = nkb * ntaps * M * K_BLOCK;
    let biases: [[[f32; N]; M]; 2] = std::array::from_fn(|i| bias_tile(t.bias, t.cout, cs * shape.m + i));
    // SAFETY: every load stays inside the weights and the planes by `check`; the stores land
    // inside `out` (32 rows of NR_MAX ≥ 48 elements, tile (i, j) at row 16 i, column 16 j).
    unsafe {
        for (i, bias) in biases.iter().enumerate().take(shape.m) {
            for j in 0..shape.n {
                tiles.load(shape.c(i, j), bias.as_ptr().cast(), N * 4);
            }
        }
        let weights = t.weights.as_ptr().add(cs * shape.m * per_block);
        for kb in 0..nkb {
            let rows = t.data.as_ptr().add(kb * K_BLOCK * t.plane + q0);
            for (tap, &off) in t.offsets.iter().enumerate() {
                for i in 0..shape.m {
                    tiles.load(shape.a(i), weights.add(i * per_block + (kb * ntaps + tap) * M * K_BLOCK), K_BLOCK * 4);
                }
                for j in 0..shape.n {
                    tiles.load(shape.b(j), rows.add(off + j * N), t.plane * 4);
                }
                for i in 0..shape.m {
                    for j in 0..shape.n {
                        tiles.dot(shape.c(i, j), shape.a(i), shape.b(j));
                    }
                }
            }
        }
        let base = out.as_mut_ptr().cast::<f32>();
        for i in 0..shape.m {
            for j in 0..shape.n {
                tiles.store(shape.c(i, j), base.add(i * M * NR_MAX + j * N), NR_MAX * 4);
            }
        }
    }
}

/// Assert that every load of every block of `t` stays inside its buffers: whole 16-pair blocks,
/// and the direct engine's bounds for these blocks and this packing.
fn check(t: &Taps, shape: Shape) {
    assert!(t.cin >= K_BLOCK && t.cin.is_multiple_of(K_BLOCK), "amx: depth {}", t.cin);
    super::direct::check_blocks(t, shape.positions(), packed_elems(t.cout, t.cin, t.offsets.len()));
}

/// [`super::direct::run`] on tiles: every block of `t` (weights packed by [`pack`], `t.cin` its
/// [`depth`]) handed to `store(co0, q0, n, block)` in [`MR`]-channel blocks, on the CPU's tiles or,
/// with `emulated`, on [`Emulated`] ones.
pub fn run(t: &Taps, emulated: bool, store: impl Fn(usize, usize, usize, &Block) + Sync) {
    let shape = Shape::of(t.cout);
    let (nqs, ncs) = (t.n_q.div_ceil(shape.positions()), rows(t.cout) / shape.rows());
    if nqs == 0 || ncs == 0 {
        return;
    }
    check(t, shape);
    // `schedule_tasks` counts weights per channel in units of MR-channel blocks.
    let k = t.cin * t.offsets.len() * shape.rows() / MR;
    let task = |tiles: &mut dyn FnMut(usize, usize, &mut [Block; 4]),
                cs: std::ops::Range<usize>,
                qs: std::ops::Range<usize>| {
        let mut out = [[[0.0f32; NR_MAX]; MR]; 4];
        for qsb in qs {
            let q0 = qsb * shape.positions();
            for c in cs.clone() {
                tiles(c, q0, &mut out);
                for (g, blk) in out.iter().enumerate().take(shape.rows() / MR) {
                    let co0 = c * shape.rows() + g * MR;
                    if co0 < t.cout {
                        store(co0, q0, shape.positions().min(t.n_q - q0), blk);
                    }
                }
            }
        }
    };
    super::direct::schedule_tasks(nqs, ncs, k, |cs, qs| {
        if emulated {
            let mut tiles = Emulated { tiles: [[[0; 16]; 16]; 8] };
            // SAFETY: `check` passed; emulated tiles are always usable.
            return task(&mut |c, q0, out| unsafe { block(&mut tiles, t, shape, c, q0, out) }, cs, qs);
        }
        #[cfg(target_arch = "x86_64")]
        {
            assert!(usable(), "amx: the CPU's tiles are not usable here");
            // SAFETY: `usable` checked the CPU and the process's permission.
            let mut tiles = unsafe { Hardware::configure() };
            // SAFETY: `check` passed; the tiles were configured just above, on this thread.
            task(&mut |c, q0, out| unsafe { block(&mut tiles, t, shape, c, q0, out) }, cs, qs)
        }
        #[cfg(not(target_arch = "x86_64"))]
        unreachable!("amx: no tiles on this architecture")
    });
}

/// Whether this CPU has AMX tiles with bf16 products, this process may use them, and they compute
/// what [`Emulated`] does on a layer with several pair blocks, taps and channel blocks. Checked once.
pub fn usable() -> bool {
    state() == State::Usable
}

/// What the bf16 engine makes of this CPU's tiles, in words (`seamless doctor`).
pub fn status() -> &'static str {
    match state() {
        State::Absent => "no AMX on this CPU",
        State::Refused => "AMX present, but Linux refused this process the tiles' state: not used",
        State::Disagrees => "AMX present, but its tiles disagree with their emulation on a test layer: not used",
        State::Usable => "AMX in use (checked against its emulation at start)",
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum State {
    Absent,
    Refused,
    Disagrees,
    Usable,
}

fn state() -> State {
    static STATE: OnceLock<State> = OnceLock::new();
    *STATE.get_or_init(|| {
        #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
        {
            if !present() {
                return State::Absent;
            }
            if !permitted() {
                return State::Refused;
            }
            // SAFETY: present and permitted, just checked.
            if unsafe { agrees_with_emulation() } { State::Usable } else { State::Disagrees }
        }
        #[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
        State::Absent
    })
}

/// FLOPs of `n` rounds of four independent tile products (16 x 16 x 32 multiply-adds each) on this
/// thread's tiles: what `seamless bench` measures the tiles' peak with. Only where [`usable`].
pub fn peak_loop(n: u64) -> f64 {
    #[cfg(target_arch = "x86_64")]
    {
        assert!(usable(), "amx: the CPU's tiles are not usable here");
        let ones = [bf16::pair(1.0, 1.0); M * K_BLOCK];
        // SAFETY: `usable` checked the CPU and the permission; every load reads `ones` (16 rows
        // of 64 bytes) and the products are register-only.
        unsafe {
            let mut tiles = Hardware::configure();
            for t in 0..8 {
                tiles.load(t, std::hint::black_box(ones.as_ptr()), K_BLOCK * 4);
            }
            let shape = Shape { m: 2, n: 2 };
            for _ in 0..n {
                for (i, j) in [(0, 0), (0, 1), (1, 0), (1, 1)] {
                    tiles.dot(shape.c(i, j), shape.a(i), shape.b(j));
                }
            }
        }
        (n * 4 * (M * N * 2 * K_BLOCK) as u64 * 2) as f64
    }
    #[cfg(not(target_arch = "x86_64"))]
    unreachable!("amx: no tiles on this architecture ({n})")
}

/// CPUID leaf 7: AMX-BF16 (EDX bit 22) and AMX-TILE (bit 24).
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
fn present() -> bool {
    #[allow(unused_unsafe)]
    // SAFETY: CPUID exists on every x86-64 CPU.
    let edx = unsafe { std::arch::x86_64::__cpuid_count(7, 0) }.edx;
    edx & (1 << 22) != 0 && edx & (1 << 24) != 0
}

/// Linux hands out the tiles' 8 KiB of register state only to a process that asks for it.
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
fn permitted() -> bool {
    const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
    const XFEATURE_XTILEDATA: libc::c_long = 18;
    // SAFETY: a plain system call with integer arguments; it fails cleanly on kernels without it.
    unsafe { libc::syscall(libc::SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0 }
}

/// Run one layer on the CPU's tiles and on emulated ones and compare the bits: a CPU whose tiles
/// round otherwise than the SDM says, or an error in this kernel that only the hardware shows,
/// leaves the tiles unused rather than computing something the tests never saw.
///
/// # Safety
/// The CPU has AMX and the process may use it.
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
unsafe fn agrees_with_emulation() -> bool {
    let mut rng = crate::model::weights::SplitMix64(0xA3C);
    let (cin, cout, taps, plane) = (40, 40, 3, 150);
    let d = depth(cin);
    let data: Vec<f32> = (0..d * plane + super::direct::slack())
        .map(|i| if i / plane * 2 < cin { swapped(rng.normal() as f32, rng.normal() as f32) } else { 0.0 })
        .collect();
    let wv: Vec<f32> = (0..cout * cin * taps).map(|_| rng.normal() as f32 * 0.1).collect();
    let mut weights = vec![0.0; packed_elems(cout, d, taps)];
    pack(&mut weights, cout, cin, taps, |co, ci, t| wv[(co * cin + ci) * taps + t]);
    let bias: Vec<f32> = (0..cout).map(|_| rng.normal() as f32).collect();
    let t = Taps { data: &data, plane, cin: d, offsets: &[0, 1, 17], weights: &weights, bias: &bias, cout, n_q: 100 };
    let shape = Shape::of(cout);
    let (mut hw, mut emu) = ([[[0.0f32; NR_MAX]; MR]; 4], [[[0.0f32; NR_MAX]; MR]; 4]);
    check(&t, shape);
    for cs in 0..rows(cout) / shape.rows() {
        for q0 in (0..t.n_q).step_by(shape.positions()) {
            // SAFETY: `check` passed; the tiles are configured on this thread for the call.
            unsafe { block(&mut Hardware::configure(), &t, shape, cs, q0, &mut hw) };
            // SAFETY: as above, in software.
            unsafe { block(&mut Emulated { tiles: [[[0; 16]; 16]; 8] }, &t, shape, cs, q0, &mut emu) };
            let same = hw
                .iter()
                .flatten()
                .flatten()
                .zip(emu.iter().flatten().flatten())
                .all(|(a, b)| a.to_bits() == b.to_bits());
            if !same {
                return false;
            }
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Packing rows in order gives the bits of the element-by-element gather, for channel counts
    /// odd and even, below, at and past a 16-pair block, one tap and nine, and output channels
    /// that fill the last tile block or not.
    #[test]
    fn packing_rows_equals_the_gather() {
        let mut rng = crate::model::weights::SplitMix64(0xAC4);
        for (cin, cout, taps) in
            [(1, 1, 1), (3, 64, 9), (31, 17, 9), (32, 32, 1), (33, 40, 9), (70, 5, 4), (128, 48, 9)]
        {
            let w: Vec<f32> = (0..cout * cin * taps).map(|_| rng.normal() as f32).collect();
            let n = packed_elems(cout, depth(cin), taps);
            let (mut want, mut got) = (vec![1.0; n], vec![2.0; n]);
            pack(&mut want, cout, cin, taps, |co, ci, t| w[(co * cin + ci) * taps + t]);
            pack_rows(&mut got, cout, cin, taps, &w);
            let first = got.iter().zip(&want).position(|(a, b)| a.to_bits() != b.to_bits());
            assert_eq!(first, None, "cin {cin} cout {cout} taps {taps}: first differing element");
        }
    }

    /// The emulation takes a pair's low product first, as the SDM's `TDPBF16PS` does (the other
    /// order, `VDPBF16PS`'s, gives other bits here), and sums a row's 16 pairs in order.
    #[test]
    fn emulated_products_take_the_low_half_first() {
        let mut tiles = Emulated { tiles: [[[0; 16]; 16]; 8] };
        let (one, x) = (bf16::pair(1.0, 1.0).to_bits(), bf16::pair(2f32.powi(-23), 2f32.powi(-24)).to_bits());
        tiles.tiles[0] = [[1.0f32.to_bits(); 16]; 16];
        tiles.tiles[4][0][0] = x;
        tiles.tiles[6][0] = [one; 16];
        tiles.dot(0, 4, 6);
        // 1 + 2^-23 exactly, then + 2^-24: a tie, to the even 1 + 2^-22. High first would give
        // 1 + 2^-23 (see `bf16::madd`).
        assert_eq!(f32::from_bits(tiles.tiles[0][0][0]), 1.0 + 2f32.powi(-22));
        assert_eq!(
            f32::from_bits(tiles.tiles[0][0][0]),
            bf16::madd(1.0, bf16::pair(2f32.powi(-24), 2f32.powi(-23)), f32::from_bits(one))
        );
        // Rows without products keep their accumulators.
        assert_eq!(f32::from_bits(tiles.tiles[0][1][0]), 1.0);
        // Pairs k of row m meet row k of the input tile: pair 3 of row 2 with input row 3.
        tiles.tiles[4][2][3] = bf16::pair(2.0, 0.0).to_bits();
        tiles.tiles[6][3] = [bf16::pair(0.5, 7.0).to_bits(); 16];
        tiles.dot(0, 4, 6);
        assert_eq!(f32::from_bits(tiles.tiles[0][2][5]), 2.0);
    }

    #[test]
    fn weights_are_packed_as_tiles_of_swapped_pairs() {
        let (cout, cin, taps) = (20, 35, 2);
        let w = |co: usize, ci: usize, t: usize| (co * 1000 + ci * 10 + t) as f32;
        let mut dst = vec![f32::NAN; packed_elems(cout, depth(cin), taps)];
        pack(&mut dst, cout, cin, taps, w);
        assert_eq!(depth(cin), 32);
        assert_eq!(dst.len(), 32 * 32 * 2);
        let at =
            |co: usize, p: usize, t: usize| dst[(((co / 16) * 2 + p / 16) * taps + t) * 256 + (co % 16) * 16 + p % 16];
        assert_eq!(at(3, 5, 1), swapped(w(3, 10, 1), w(3, 11, 1)));
        assert_eq!(at(19, 17, 0), swapped(w(19, 34, 0), 0.0));
        assert_eq!(at(19, 18, 0), 0.0);
        assert_eq!(at(25, 0, 0), 0.0);
    }
}
