//! Winograd F(2x2, 3x3) for stride-1 3 x 3 "same" convolutions: 16 multiplications per 2 x 2
//! output block and input channel instead of 36.
//!
//! The output is cut into 2 x 2 blocks ("tiles") anchored at the map's origin; tile (i, j) covers
//! output rows 2i..2i+2 and columns 2j..2j+2 and reads the 4 x 4 input patch starting at
//! (2i - 1, 2j - 1), zero outside the map (the conv's own padding; a fused input scale-shift is
//! applied to in-map values only, as the direct path does). Per tile:
//!
//! ```text
//! V[ci]  = Bᵀ d[ci] B                          (input transform: additions only)
//! M[t]   = Σ_ci U[t][co][ci] · V[t][ci]         (t = 0..16; one FMA per term, ci ascending, from 0)
//! y      = Aᵀ M A + bias, then the fused ReLU   (output transform: additions only)
//! ```
//!
//! with `U = G g Gᵀ` computed once per model (in f64, rounded once). Every operation and its
//! order is fixed per element, so an output element's bits depend only on the layer, its 3 x 3
//! input neighbourhood (Aᵀ's rows touch M rows 0-2 or 1-3, and those touch patch rows 0-2 or 1-3:
//! an output never depends on a value outside its own neighbourhood, not even through rounding)
//! and on its position inside its tile. That position is the same in a window of a map as in the
//! whole map exactly when the window starts at an even row and column, which is why the graph
//! uses this only where every window's map does (see `Graph::assign_conv_algos`).
//!
//! The work goes band by band (a few tile rows) so the transformed input and the products stay
//! in cache: transform a band's input (parallel over channels), run the 16 products with the
//! direct engine's 1-tap kernel ([`direct`], parallel over channel and position blocks), then the
//! output transform (parallel over output channels). Nothing an element computes depends on the
//! band, the thread count or the map's size. The transforms are plain Rust (additions and the
//! unfused scale-shift give the same bits vectorised or not); the products run on the chosen
//! [`Isa`], all of which give the same bits.

use rayon::prelude::*;

use super::direct::{self, Isa, MR, Taps};
use super::{DisjointOut, bf16};
use crate::graph::Conv2d;
use crate::tensor::{Tensor, View};

/// Where the model graph picks Winograd (the graph carries the choice: [`crate::graph::Graph::assign_conv_algos`]).
pub use crate::graph::WINOGRAD_MIN_CHANNELS as MIN_CHANNELS;

/// Transform-domain elements per tile.
const T: usize = 16;

/// Tiles per transform step along a tile row (stack buffers of this size).
const CHUNK: usize = 64;

/// Largest transformed band (input or products), in elements: a few MB, so the 16 products read
/// it from cache.
const BAND_ELEMS: usize = 1 << 21;

/// Tile rows per band for a map of `th x tw` tiles. A multiple of 3 where possible: with the
/// power-of-two widths of real maps, the band's tile count is then a multiple of the engine's
/// 48-position block (so no block is half empty).
fn band_rows(c: &Conv2d, th: usize, tw: usize) -> usize {
    let mut r = (BAND_ELEMS / (T * c.cin.max(c.cout) * tw)).max(1);
    if r >= 3 {
        r -= r % 3;
    }
    r.min(th.max(1))
}

/// Workspace: a band of transformed input (`16 x cin` planes plus the engine's slack), a band of
/// products (`16 x cout` planes) and `cout` zeros (the products' "bias").
pub fn workspace_elems(c: &Conv2d, h: usize, w: usize, isa: Isa) -> usize {
    let (th, tw) = (h.div_ceil(2), w.div_ceil(2));
    let nb = band_rows(c, th, tw) * tw;
    T * isa.depth(c.cin) * nb + direct::slack() + T * c.cout * nb + c.cout
}

/// Elements of the transformed, packed weights: 16 packs of `cout x cin` 1-tap weights (in bf16,
/// of `cout x` [`bf16::depth`] pairs).
pub fn packed_elems(c: &Conv2d, isa: Isa) -> usize {
    T * direct::packed_weight_elems(c.cout, isa.depth(c.cin), 1)
}

/// `U = G g Gᵀ` of one 3 x 3 kernel (row-major), computed in f64 and rounded once.
pub fn transform_kernel(g: &[f32]) -> [f32; T] {
    const G: [[f64; 3]; 4] = [[1.0, 0.0, 0.0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0.0, 0.0, 1.0]];
    let mut gg = [[0.0f64; 3]; 4];
    for (a, row) in gg.iter_mut().enumerate() {
        for (x, v) in row.iter_mut().enumerate() {
            *v = (0..3).map(|k| G[a][k] * g[k * 3 + x] as f64).sum();
        }
    }
    let mut u = [0.0f32; T];
    for a in 0..4 {
        for b in 0..4 {
            u[a * 4 + b] = (0..3).map(|k| gg[a][k] * G[b][k]).sum::<f64>() as f32;
        }
    }
    u
}

/// Transform the weights and pack them for the engine: transform element `t`'s pack is the
/// engine's `[cout / MR][cin][MR]` layout of `U[t]` (in bf16, `U` rounded once from its f32
/// value, input channels in pairs).
pub fn pack(c: &Conv2d, dst: &mut [f32], isa: Isa) {
    assert_eq!(c.k, 3, "Winograd F(2x2, 3x3) needs a 3 x 3 kernel");
    assert_eq!(c.weight.len(), c.cout * c.cin * 9, "conv2d weights");
    let depth = isa.depth(c.cin);
    let per = direct::packed_weight_elems(c.cout, depth, 1);
    let dst = &mut dst[..T * per];
    let out = DisjointOut::new(dst);
    #[cfg(target_arch = "x86_64")]
    let avx2 = std::arch::is_x86_feature_detected!("avx2");
    // In place, channel block by channel block: a transformed copy of a large model's weights
    // would briefly double its weight memory.
    (0..c.cout.div_ceil(MR)).into_par_iter().for_each(|cb| {
        #[cfg(target_arch = "x86_64")]
        if avx2 {
            // SAFETY: the CPU has AVX2 (detected above).
            return unsafe { pack_block_avx2(c, cb, depth, per, out, isa) };
        }
        pack_block(c, cb, depth, per, out, isa)
    });
}

/// [`pack_block`] compiled for AVX2: the transforms' f64 lanes are then two registers of four,
/// not four of two (the baseline's SSE2; `cargo bench --bench pack` measures it, docs/perf.md
/// has the numbers). Built for AVX-512 it was slower on Zen 4. The same operations in the same
/// order (Rust never fuses a multiply and an add), so the same bits.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn pack_block_avx2(c: &Conv2d, cb: usize, depth: usize, per: usize, out: DisjointOut, isa: Isa) {
    pack_block(c, cb, depth, per, out, isa)
}

/// Transform and pack output channel block `cb` (its MR kernels for every input channel).
#[inline(always)]
fn pack_block(c: &Conv2d, cb: usize, depth: usize, per: usize, out: DisjointOut, isa: Isa) {
    // The MR kernels of input channel ci for this block's output channels (zero past cout
    // and cin), transformed together.
    let u = |ci: usize| {
        let g: [[f32; 9]; MR] = std::array::from_fn(|j| {
            let co = cb * MR + j;
            if co < c.cout && ci < c.cin {
                c.weight[(co * c.cin + ci) * 9..][..9].try_into().unwrap()
            } else {
                [0.0; 9]
            }
        });
        transform_kernels(&g)
    };
    // Input channel outermost: each transform element's pack is then written in order, a
    // run of MR at a time.
    for d in 0..depth {
        let v = if isa.is_bf16() {
            let (lo, hi) = (u(2 * d), u(2 * d + 1));
            // Loops, not nested `array::from_fn`: its closures were left out of line here, and
            // took more of the bf16 packing than the transforms.
            let mut v = [[0.0f32; MR]; T];
            for (v, (lo, hi)) in v.iter_mut().zip(lo.iter().zip(&hi)) {
                for (v, (&lo, &hi)) in v.iter_mut().zip(lo.iter().zip(hi)) {
                    *v = bf16::pair(lo, hi);
                }
            }
            v
        } else {
            u(d)
        };
        for (t, v) in v.iter().enumerate() {
            // SAFETY: elements (t, cb * MR.., d) lie in channel block cb, written by this task alone.
            unsafe { out.slice(t * per + (cb * depth + d) * MR, MR) }.copy_from_slice(v);
        }
    }
}

/// [`transform_kernel`] of MR kernels at once, lane by lane the same operations (so the same
/// bits): `U[t][j]` of kernel `j`. Written over lanes so that it vectorises; packing U-Net-64's
/// 1.5 M Winograd kernels one at a time took most of the packing's time before its first window.
#[inline(always)]
pub fn transform_kernels(g: &[[f32; 9]; MR]) -> [[f32; MR]; T] {
    const G: [[f64; 3]; 4] = [[1.0, 0.0, 0.0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0.0, 0.0, 1.0]];
    // What `Iterator::sum` of f64 does: a fold from -0.0.
    let mut gg = [[[-0.0f64; MR]; 3]; 4];
    for (a, row) in gg.iter_mut().enumerate() {
        for (x, acc) in row.iter_mut().enumerate() {
            for (k, gk) in G[a].iter().enumerate() {
                for (l, v) in acc.iter_mut().enumerate() {
                    *v += gk * g[l][k * 3 + x] as f64;
                }
            }
        }
    }
    let mut u = [[0.0f32; MR]; T];
    for a in 0..4 {
        for b in 0..4 {
            let mut acc = [-0.0f64; MR];
            for k in 0..3 {
                for (l, v) in acc.iter_mut().enumerate() {
                    *v += gg[a][k][l] * G[b][k];
                }
            }
            u[a * 4 + b] = acc.map(|v| v as f32);
        }
    }
    u
}

/// Convolve `x` into `out` (`cout x h x w`) with the weights packed by [`pack`], using `ws`
/// ([`workspace_elems`]).
pub fn conv2d_into(x: View, c: &Conv2d, packed: &[f32], out: &mut [f32], ws: &mut [f32], isa: Isa) {
    assert_eq!(c.k, 3, "Winograd F(2x2, 3x3) needs a 3 x 3 kernel");
    assert_eq!(x.c, c.cin, "conv2d input channels");
    let (h, w) = (x.h, x.w);
    assert_eq!(out.len(), c.cout * h * w, "conv2d output size");
    assert_eq!(packed.len(), packed_elems(c, isa), "conv2d packed weights");
    if h == 0 || w == 0 {
        return;
    }
    let (th, tw) = (h.div_ceil(2), w.div_ceil(2));
    let rows = band_rows(c, th, tw);
    let nb_max = rows * tw;
    let ws = &mut ws[..workspace_elems(c, h, w, isa)];
    let (v, rest) = ws.split_at_mut(T * isa.depth(c.cin) * nb_max + direct::slack());
    let (m, zeros) = rest.split_at_mut(T * c.cout * nb_max);
    zeros.fill(0.0);
    let out = DisjointOut::new(out);
    let mut i0 = 0;
    while i0 < th {
        let i1 = (i0 + rows).min(th);
        let nb = (i1 - i0) * tw;
        input_transform(x, c, i0, i1, nb, v, isa);
        products(v, c, packed, zeros, nb, isa, m);
        output_transform(m, c, h, w, i0, i1, nb, out);
        i0 = i1;
    }
}

/// The patch row `y` (zero outside the map), columns `2·j0 - 1 ..`, fused scale-shift applied.
#[inline(always)]
fn load_row(x: View, c: &Conv2d, ci: usize, y: isize, j0: usize, n: usize, row: &mut [f32; 2 * CHUNK + 2]) {
    let row = &mut row[..2 * n + 2];
    row.fill(0.0);
    if y < 0 || y >= x.h as isize {
        return;
    }
    let src = &x.plane(ci)[y as usize * x.w..][..x.w];
    let x0 = 2 * j0 as isize - 1;
    let pre = c.pre.as_ref().map(|ss| ss.channel(ci));
    for (k, d) in row.iter_mut().enumerate() {
        let xx = x0 + k as isize;
        if xx >= 0 && xx < x.w as isize {
            let v = src[xx as usize];
            *d = pre.map_or(v, |f| f(v));
        }
    }
}

/// `V = Bᵀ d B` for every tile of tile rows `i0..i1` and every input channel, into `v` as
/// `[t][ci][tile]` planes of `nb` tiles (in bf16, `[t][pair][tile]` planes of rounded channel
/// pairs): columns first (`d B`), then rows (`Bᵀ ·`).
fn input_transform(x: View, c: &Conv2d, i0: usize, i1: usize, nb: usize, v: &mut [f32], isa: Isa) {
    let depth = isa.depth(c.cin);
    let dst = DisjointOut::new(v);
    #[cfg(target_arch = "x86_64")]
    let wide = std::arch::is_x86_feature_detected!("avx512f");
    (0..depth).into_par_iter().for_each(|d| {
        #[cfg(target_arch = "x86_64")]
        if wide {
            // SAFETY: AVX-512F was detected just above.
            return unsafe { input_task_avx512(x, c, i0, i1, nb, dst, isa, d) };
        }
        input_task(x, c, i0, i1, nb, dst, isa, d)
    });
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw")]
#[allow(clippy::too_many_arguments)]
unsafe fn input_task_avx512(
    x: View,
    c: &Conv2d,
    i0: usize,
    i1: usize,
    nb: usize,
    dst: DisjointOut,
    isa: Isa,
    d: usize,
) {
    input_task(x, c, i0, i1, nb, dst, isa, d)
}

/// [`input_transform`]'s planes of channel `d` (in bf16, of channel pair `d`). Always inlined, so
/// that it compiles with its caller's vector width (the transforms and the rounding vectorise).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn input_task(x: View, c: &Conv2d, i0: usize, i1: usize, nb: usize, dst: DisjointOut, isa: Isa, d: usize) {
    let tw = x.w.div_ceil(2);
    let depth = isa.depth(c.cin);
    let mut vt = [[[0.0f32; CHUNK]; T]; 2];
    for i in i0..i1 {
        for j0 in (0..tw).step_by(CHUNK) {
            let n = CHUNK.min(tw - j0);
            let base = (i - i0) * tw + j0;
            // SAFETY: plane (t, d) belongs to this task alone, and tiles base..base + n lie
            // inside its nb.
            let plane = |t: usize| unsafe { dst.slice((t * depth + d) * nb + base, n) };
            if !isa.is_bf16() {
                transform_chunk(x, c, d, i, j0, n, &mut vt[0]);
                for (t, vt) in vt[0].iter().enumerate() {
                    plane(t).copy_from_slice(&vt[..n]);
                }
                continue;
            }
            let [lo, hi] = &mut vt;
            transform_chunk(x, c, 2 * d, i, j0, n, lo);
            if 2 * d + 1 < c.cin {
                transform_chunk(x, c, 2 * d + 1, i, j0, n, hi);
            } else {
                *hi = [[0.0; CHUNK]; T];
            }
            for t in 0..T {
                for ((o, &a), &b) in plane(t).iter_mut().zip(&lo[t]).zip(&hi[t]) {
                    *o = bf16::pair(a, b);
                }
            }
        }
    }
}

/// `V` of channel `ci` for tiles `j0..j0 + n` of tile row `i`: `vt[t][j]`.
#[inline(always)]
#[allow(clippy::needless_range_loop)]
fn transform_chunk(x: View, c: &Conv2d, ci: usize, i: usize, j0: usize, n: usize, vt: &mut [[f32; CHUNK]; T]) {
    let mut row = [0.0f32; 2 * CHUNK + 2];
    // hz[r][b][j]: patch row r of tile j after the column transform.
    let mut hz = [[[0.0f32; CHUNK]; 4]; 4];
    for (r, hr) in hz.iter_mut().enumerate() {
        load_row(x, c, ci, 2 * i as isize - 1 + r as isize, j0, n, &mut row);
        for j in 0..n {
            let (d0, d1, d2, d3) = (row[2 * j], row[2 * j + 1], row[2 * j + 2], row[2 * j + 3]);
            hr[0][j] = d0 - d2;
            hr[1][j] = d1 + d2;
            hr[2][j] = d2 - d1;
            hr[3][j] = d1 - d3;
        }
    }
    for b in 0..4 {
        let (h0, h1, h2, h3) = (&hz[0][b], &hz[1][b], &hz[2][b], &hz[3][b]);
        for j in 0..n {
            vt[b][j] = h0[j] - h2[j];
            vt[4 + b][j] = h1[j] + h2[j];
            vt[8 + b][j] = h2[j] - h1[j];
            vt[12 + b][j] = h1[j] - h3[j];
        }
    }
}

/// `M[t] = U[t] · V[t]` for the 16 transform elements, as 1-tap convolutions over the band's
/// `nb` tiles on the direct engine (starting from the zero "bias"), in one parallel pass.
fn products(v: &[f32], c: &Conv2d, packed: &[f32], zeros: &[f32], nb: usize, isa: Isa, m: &mut [f32]) {
    let depth = isa.depth(c.cin);
    let per = direct::packed_weight_elems(c.cout, depth, 1);
    let taps: [Taps; T] = std::array::from_fn(|t| Taps {
        data: &v[t * depth * nb..],
        plane: nb,
        cin: depth,
        offsets: &[0],
        weights: &packed[t * per..(t + 1) * per],
        bias: zeros,
        cout: c.cout,
        n_q: nb,
    });
    let nr = isa.nr();
    let (nqb, ncb) = (nb.div_ceil(nr), c.cout.div_ceil(MR));
    for tp in &taps {
        direct::check(tp, nr);
    }
    let dst = DisjointOut::new(m);
    direct::schedule(nqb, T * ncb, depth, |x, qb, blk| {
        let (t, cb) = (x / ncb, x % ncb);
        let q0 = qb * nr;
        direct::block(&taps[t], isa, cb, q0, &[0], blk);
        let n = nr.min(nb - q0);
        for (j, a) in blk.iter().enumerate().take(c.cout.saturating_sub(cb * MR).min(MR)) {
            // SAFETY: each (t, channel block, position block) is handed to one call.
            let d = unsafe { dst.slice((t * c.cout + cb * MR + j) * nb + q0, n) };
            d.copy_from_slice(&a[..n]);
        }
    });
}

/// `y = Aᵀ M A + bias` (rows of M first, then columns), the fused ReLU, stored for tile rows
/// `i0..i1` (the parts inside the map).
#[allow(clippy::too_many_arguments)]
fn output_transform(m: &[f32], c: &Conv2d, h: usize, w: usize, i0: usize, i1: usize, nb: usize, out: DisjointOut<'_>) {
    let tw = w.div_ceil(2);
    (0..c.cout).into_par_iter().for_each(|co| {
        let bias = c.bias[co];
        let fin = |v: f32| {
            let v = v + bias;
            if c.relu { v.max(0.0) } else { v }
        };
        let mut y = [[[0.0f32; CHUNK]; 2]; 2];
        for i in i0..i1 {
            for j0 in (0..tw).step_by(CHUNK) {
                let n = CHUNK.min(tw - j0);
                let base = (i - i0) * tw + j0;
                let mt = |t: usize| &m[(t * c.cout + co) * nb + base..][..n];
                // s[a][x]: row a of M after the column transform (x = output column in the tile).
                let mut s = [[[0.0f32; CHUNK]; 2]; 4];
                for (a, sa) in s.iter_mut().enumerate() {
                    let (m0, m1, m2, m3) = (mt(a * 4), mt(a * 4 + 1), mt(a * 4 + 2), mt(a * 4 + 3));
                    for j in 0..n {
                        sa[0][j] = (m0[j] + m1[j]) + m2[j];
                        sa[1][j] = (m1[j] - m2[j]) - m3[j];
                    }
                }
                for xx in 0..2 {
                    for j in 0..n {
                        y[0][xx][j] = fin((s[0][xx][j] + s[1][xx][j]) + s[2][xx][j]);
                        y[1][xx][j] = fin((s[1][xx][j] - s[2][xx][j]) - s[3][xx][j]);
                    }
                }
                for (dy, yr) in y.iter().enumerate() {
                    let oy = 2 * i + dy;
                    if oy >= h {
                        break;
                    }
                    let x0 = 2 * j0;
                    let len = (2 * n).min(w - x0);
                    // SAFETY: output channel co belongs to this task alone; the row segment lies
                    // inside the map.
                    let d = unsafe { out.slice((co * h + oy) * w + x0, len) };
                    for (k, o) in d.iter_mut().enumerate() {
                        *o = yr[k % 2][k / 2];
                    }
                }
            }
        }
    });
}

/// The same arithmetic written as plainly as possible, one tile and one element at a time: the
/// reference the banded, vectorised path is tested against bit for bit.
pub fn conv2d_reference(x: &Tensor, c: &Conv2d) -> Tensor {
    reference(x, c, false)
}

/// [`conv2d_reference`] in bf16: `V` and `U` rounded to bf16, the products summed over channel
/// pairs with [`bf16::madd`], from zero.
pub fn conv2d_reference_bf16(x: &Tensor, c: &Conv2d) -> Tensor {
    reference(x, c, true)
}

#[allow(clippy::needless_range_loop)]
fn reference(x: &Tensor, c: &Conv2d, in_bf16: bool) -> Tensor {
    assert_eq!(c.k, 3);
    let (h, w) = (x.h, x.w);
    let u: Vec<[f32; T]> = c.weight.chunks_exact(9).map(transform_kernel).collect();
    let input = |ci: usize, y: isize, xx: isize| -> f32 {
        if y < 0 || xx < 0 || y >= h as isize || xx >= w as isize {
            return 0.0;
        }
        let v = x.at(ci, y as usize, xx as usize);
        match &c.pre {
            None => v,
            Some(ss) if ss.relu => (v * ss.scale[ci] + ss.shift[ci]).max(0.0),
            Some(ss) => v * ss.scale[ci] + ss.shift[ci],
        }
    };
    // 1-D transforms: Bᵀ on 4 values, Aᵀ on 4 values.
    let bt = |d: [f32; 4]| [d[0] - d[2], d[1] + d[2], d[2] - d[1], d[1] - d[3]];
    let at = |m: [f32; 4]| [(m[0] + m[1]) + m[2], (m[1] - m[2]) - m[3]];
    let mut out = Tensor::zeros(c.cout, h, w);
    for i in 0..h.div_ceil(2) {
        for j in 0..w.div_ceil(2) {
            // V[ci][a][b]
            let v: Vec<[[f32; 4]; 4]> = (0..c.cin)
                .map(|ci| {
                    let d = |r: usize, k: usize| input(ci, (2 * i + r) as isize - 1, (2 * j + k) as isize - 1);
                    let rows: Vec<[f32; 4]> = (0..4).map(|r| bt([d(r, 0), d(r, 1), d(r, 2), d(r, 3)])).collect();
                    let mut vv = [[0.0; 4]; 4];
                    for b in 0..4 {
                        let col = bt([rows[0][b], rows[1][b], rows[2][b], rows[3][b]]);
                        for a in 0..4 {
                            vv[a][b] = col[a];
                        }
                    }
                    vv
                })
                .collect();
            for co in 0..c.cout {
                let mut mm = [[0.0f32; 4]; 4];
                for a in 0..4 {
                    for b in 0..4 {
                        let mut acc = 0.0f32;
                        if in_bf16 {
                            let uu = |ci: usize| if ci < c.cin { u[co * c.cin + ci][a * 4 + b] } else { 0.0 };
                            let vv = |ci: usize| if ci < c.cin { v[ci][a][b] } else { 0.0 };
                            for p in 0..bf16::depth(c.cin) {
                                let (xv, wv) =
                                    (bf16::pair(vv(2 * p), vv(2 * p + 1)), bf16::pair(uu(2 * p), uu(2 * p + 1)));
                                acc = bf16::madd(acc, xv, wv);
                            }
                        } else {
                            for (ci, vv) in v.iter().enumerate() {
                                acc = u[co * c.cin + ci][a * 4 + b].mul_add(vv[a][b], acc);
                            }
                        }
                        mm[a][b] = acc;
                    }
                }
                let s: Vec<[f32; 2]> = (0..4).map(|a| at(mm[a])).collect();
                for xx in 0..2 {
                    let col = at([s[0][xx], s[1][xx], s[2][xx], s[3][xx]]);
                    for (dy, &val) in col.iter().enumerate() {
                        let (oy, ox) = (2 * i + dy, 2 * j + xx);
                        if oy < h && ox < w {
                            let val = val + c.bias[co];
                            out.data[(co * h + oy) * w + ox] = if c.relu { val.max(0.0) } else { val };
                        }
                    }
                }
            }
        }
    }
    out
}
