//! ConvTranspose2d, stride 2, padding 0, k = 2 (U-Net) or 3 (FC-DenseNet, output cropped to
//! `[0, 2h) x [0, 2w)`). Twin of `kernels/conv_transpose.cu`.
//!
//! Output pixel (oy, ox) sums `bias + Σ_ci Σ_ky Σ_kx w[ci][co][ky][kx]·x[ci][iy][ix]` over the taps
//! with `oy = 2·iy + ky`, `ox = 2·ix + kx`, in ascending (ci, ky, kx) order, one fused multiply-add
//! per term. Which taps exist depends only on the parity of (oy, ox), and windows start on even
//! positions, so tiles and the whole image sum identically. Both run on the shared engine in
//! [`super::direct`]: k = 2 as one 1-tap convolution with `4·cout` channels (one per output
//! channel and parity), read straight from the input; k = 3 as four parity classes, each a small
//! direct convolution (4, 2, 2 or 1 taps), where a tap that would read row or column -1 reads a
//! zero padding row or column instead (`w·0`), for every tile alike.

use super::direct::{self, Isa, Taps};
use super::{DisjointOut, padded};
use crate::graph::ConvTranspose2d;
use crate::tensor::{Tensor, View};

/// Taps of parity class (py, px) in ascending (ky, kx): ky = py, and ky = py + 2 (reading the row
/// above) when that is inside the kernel; the same for columns.
fn class_taps(k: usize, py: usize, px: usize) -> Vec<(usize, usize)> {
    let ks = |par: usize| -> Vec<usize> { (par..k).step_by(2).collect() };
    ks(py).into_iter().flat_map(|ky| ks(px).into_iter().map(move |kx| (ky, kx))).collect()
}

const CLASSES: [(usize, usize); 4] = [(0, 0), (0, 1), (1, 0), (1, 1)];

/// Elements of the weights as [`pack`] regroups them for the engine.
pub fn packed_elems(c: &ConvTranspose2d, isa: Isa) -> usize {
    let depth = isa.depth(c.cin);
    if c.k == 2 {
        direct::packed_elems_for(isa, 4 * c.cout, depth, 1)
    } else {
        CLASSES
            .iter()
            .map(|&(py, px)| direct::packed_elems_for(isa, c.cout, depth, class_taps(c.k, py, px).len()))
            .sum()
    }
}

/// Regroup the weights for the engine into `dst` ([`packed_elems`] long). k = 2: one 1-tap
/// convolution with `4·cout` channels, channel `4·co + 2·ky + kx` being output pixel (2m + ky,
/// 2n + kx) of channel co (each output element still sums only its own single tap per input
/// channel). k = 3: the four parity classes one after the other.
pub fn pack(c: &ConvTranspose2d, dst: &mut [f32], isa: Isa) {
    let k = c.k;
    assert!(k == 2 || k == 3, "conv_transpose2d: k must be 2 or 3");
    assert_eq!(c.weight.len(), c.cin * c.cout * k * k, "conv_transpose2d weights");
    assert_eq!(dst.len(), packed_elems(c, isa), "conv_transpose2d packed weights");
    if k == 2 {
        return direct::pack_weights_for(isa, dst, 4 * c.cout, c.cin, 1, |co4, ci, _| c.weight[ci * c.cout * 4 + co4]);
    }
    let mut off = 0;
    for (py, px) in CLASSES {
        let taps = class_taps(k, py, px);
        let len = direct::packed_elems_for(isa, c.cout, isa.depth(c.cin), taps.len());
        direct::pack_weights_for(isa, &mut dst[off..off + len], c.cout, c.cin, taps.len(), |co, ci, t| {
            let (ky, kx) = taps[t];
            c.weight[((ci * c.cout + co) * k + ky) * k + kx]
        });
        off += len;
    }
}

/// Workspace elements for an input of `h x w`. k = 3: the input copy with one zero row above and
/// one zero column left of every row (taps reach back by one); k = 2 reads its input in place in
/// f32, and a copy rounded to channel pairs in bf16.
pub fn workspace_elems(c: &ConvTranspose2d, h: usize, w: usize, isa: Isa) -> usize {
    match (c.k, isa.is_bf16()) {
        (2, false) => direct::unpadded_tail_elems(c.cin),
        (2, true) => padded::elems(c.cin, h * w, isa),
        _ => padded::elems(c.cin, (h + 1) * (w + 1), isa),
    }
}

pub fn conv_transpose2d(x: &Tensor, c: &ConvTranspose2d) -> Tensor {
    conv_transpose2d_isa(x, c, Isa::detect())
}

/// The transposed convolution computed by one implementation (one this CPU has).
pub fn conv_transpose2d_isa(x: &Tensor, c: &ConvTranspose2d, isa: Isa) -> Tensor {
    assert!(isa.is_available(), "{isa:?} is not supported by this CPU");
    let mut out = Tensor::zeros(c.cout, 2 * x.h, 2 * x.w);
    let mut ws = vec![0.0; workspace_elems(c, x.h, x.w, isa)];
    let mut packed = vec![0.0; packed_elems(c, isa)];
    pack(c, &mut packed, isa);
    conv_transpose2d_into(x.view(), c, &packed, &mut out.data, &mut ws, isa);
    out
}

/// Into `out` (`cout x 2h x 2w`) with the weights `packed` by [`pack`] for `isa`, using `ws` (see
/// [`workspace_elems`]).
pub fn conv_transpose2d_into(x: View, c: &ConvTranspose2d, packed: &[f32], out: &mut [f32], ws: &mut [f32], isa: Isa) {
    assert_eq!(x.c, c.cin, "conv_transpose2d input channels");
    assert!(c.k == 2 || c.k == 3, "conv_transpose2d: k must be 2 or 3");
    assert_eq!(out.len(), c.cout * 4 * x.h * x.w, "conv_transpose2d output size");
    assert_eq!(packed.len(), packed_elems(c, isa), "conv_transpose2d packed weights");
    if c.k == 2 { k2(x, c, packed, out, ws, isa) } else { k3(x, c, packed, out, ws, isa) }
}

/// k = 2: every input pixel makes a 2 x 2 output patch, one tap each. One pass computes all four
/// (as `4·cout` channels) and writes each output row pair of positions (kx = 0, 1) side by side.
fn k2(x: View, c: &ConvTranspose2d, packed: &[f32], out: &mut [f32], ws: &mut [f32], isa: Isa) {
    let (h, w) = (x.h, x.w);
    let ow = 2 * w;
    let ptr = DisjointOut::new(out);
    let bias4: Vec<f32> = c.bias.iter().flat_map(|&b| [b; 4]).collect();
    let store = |co0: usize, q0: usize, n: usize, blk: &direct::Block| {
        // A block holds whole channels: 8 engine channels = 2 output channels x (ky, kx).
        debug_assert!(co0.is_multiple_of(4));
        let mut q = q0;
        while q < q0 + n {
            let (m, nn) = (q / w, q % w);
            let end = (q0 + n).min((m + 1) * w);
            let len = end - q;
            for (pair, rows) in blk.chunks(2).enumerate().take((4 * c.cout - co0).min(direct::MR) / 2) {
                let (co, ky) = (co0 / 4 + pair / 2, pair % 2);
                // SAFETY: output pixels (2m + ky, 2nn .. 2(nn + len)) of channel co come from
                // positions q .. q + len of this block, which the engine hands to this call alone.
                let dst = unsafe { ptr.slice((co * 2 * h + 2 * m + ky) * ow + 2 * nn, 2 * len) };
                let (a0, a1) = (&rows[0][q - q0..q - q0 + len], &rows[1][q - q0..q - q0 + len]);
                for ((d, &v0), &v1) in dst.chunks_exact_mut(2).zip(a0).zip(a1) {
                    d[0] = v0;
                    d[1] = v1;
                }
            }
            q = end;
        }
    };
    if !isa.is_bf16() {
        return direct::run_unpadded(x.data, h * w, c.cin, packed, &bias4, 4 * c.cout, isa, ws, store);
    }
    // bf16: the planes rounded to pairs.
    let n = h * w;
    let spec = Taps {
        data: padded::fill(ws, x, padded::Layout { top: 0, left: 0, row: w, plane: n }, None, isa),
        plane: n,
        cin: isa.depth(c.cin),
        offsets: &[0],
        weights: packed,
        bias: &bias4,
        cout: 4 * c.cout,
        n_q: n,
    };
    direct::run(&spec, isa, store);
}

/// k = 3: the output crop's four parity classes, each a small direct convolution (4, 2, 2, 1 taps)
/// over a copy of the input with a zero row above and a zero column left.
fn k3(x: View, c: &ConvTranspose2d, packed: &[f32], out: &mut [f32], ws: &mut [f32], isa: Isa) {
    let (h, w, k) = (x.h, x.w, c.k);
    let (oh, ow) = (2 * h, 2 * w);
    let (row, plane) = (w + 1, (h + 1) * (w + 1));
    let depth = isa.depth(c.cin);
    let ws_in = padded::fill(ws, x, padded::Layout { top: 1, left: 1, row, plane }, None, isa);
    let ptr = DisjointOut::new(out);
    let mut woff = 0;
    for (py, px) in CLASSES {
        let taps = class_taps(k, py, px);
        // Tap (ky, kx) reads input (m - ky/2, n - kx/2) for class pixel (m, n): flat offset
        // (1 - ky/2)·row + (1 - kx/2) in the padded copy.
        let offsets: Vec<usize> = taps.iter().map(|&(ky, kx)| (1 - ky / 2) * row + (1 - kx / 2)).collect();
        let wlen = direct::packed_elems_for(isa, c.cout, depth, taps.len());
        let spec = Taps {
            data: ws_in,
            plane,
            cin: depth,
            offsets: &offsets,
            weights: &packed[woff..woff + wlen],
            bias: &c.bias,
            cout: c.cout,
            n_q: h * row,
        };
        woff += wlen;
        direct::run(&spec, isa, |co0, q0, n, blk| {
            // Position q is class pixel (q / row, q % row): output (2m + py, 2nn + px); columns w..
            // of a row are padding, not stored.
            let mut q = q0;
            while q < q0 + n {
                let (m, nn) = (q / row, q % row);
                let end = (q0 + n).min((m + 1) * row);
                if nn < w {
                    let len = (end - q).min(w - nn);
                    for (j, a) in blk.iter().enumerate().take(c.cout.saturating_sub(co0).min(direct::MR)) {
                        let co = co0 + j;
                        let first = (co * oh + 2 * m + py) * ow + 2 * nn + px;
                        for (i, &v) in a[q - q0..q - q0 + len].iter().enumerate() {
                            // SAFETY: output pixel (2m + py, 2(nn + i) + px) of channel co lies in
                            // `out` and belongs to class (py, px), position q + i, which the engine
                            // hands to this call alone. Written through the raw pointer: the
                            // pixels in between belong to other classes and calls.
                            unsafe { ptr.write(first + 2 * i, v) };
                        }
                    }
                }
                q = end;
            }
        });
    }
}
