//! ConvTranspose2d, stride 2, padding 0, k = 2 (U-Net) or 3 (FC-DenseNet, output cropped to
//! `[0, 2h) x [0, 2w)`). Twin of `kernels/conv_transpose.cu`.
//!
//! Output pixel (oy, ox) sums `bias + Σ_ci Σ_ky Σ_kx w[ci][co][ky][kx]·x[ci][iy][ix]` over the taps
//! with `oy = 2·iy + ky`, `ox = 2·ix + kx`, in ascending (ci, ky, kx) order, one fused multiply-add
//! per term. Which taps exist depends only on the parity of (oy, ox), and windows start on even
//! positions, so tiles and the whole image sum identically. Each parity class is a small direct
//! convolution over the input (1 tap for k = 2; 4, 2, 2 or 1 taps for k = 3), run by the shared
//! engine in [`super::direct`]; a k = 3 tap that would read row or column -1 reads a zero
//! padding row or column instead (`w·0`), for every tile alike.

use super::DisjointOut;
use super::direct::{self, Isa, Taps};
use crate::graph::ConvTranspose2d;
use crate::tensor::{Tensor, View};

/// Flat layout of the input copy: for k = 3 one zero row above and one zero column left of every
/// row (taps reach back by one); for k = 2 the planes as they are.
fn geometry(h: usize, w: usize, k: usize) -> (usize, usize) {
    if k == 3 { (w + 1, (h + 1) * (w + 1)) } else { (w, h * w) }
}

fn max_taps(k: usize) -> usize {
    if k == 3 { 4 } else { 1 }
}

/// Workspace elements for an input of `h x w`: the input copy and one parity class's packed weights.
pub fn workspace_elems(c: &ConvTranspose2d, h: usize, w: usize) -> usize {
    c.cin * geometry(h, w, c.k).1 + direct::slack() + direct::packed_weight_elems(c.cout, c.cin, max_taps(c.k))
}

pub fn conv_transpose2d(x: &Tensor, c: &ConvTranspose2d) -> Tensor {
    conv_transpose2d_isa(x, c, Isa::detect())
}

/// The transposed convolution computed by one implementation (it must be in [`Isa::available`]).
pub fn conv_transpose2d_isa(x: &Tensor, c: &ConvTranspose2d, isa: Isa) -> Tensor {
    assert!(Isa::available().contains(&isa), "{isa:?} is not supported by this CPU");
    let mut out = Tensor::zeros(c.cout, 2 * x.h, 2 * x.w);
    let mut ws = vec![0.0; workspace_elems(c, x.h, x.w)];
    conv_transpose2d_into_isa(x.view(), c, &mut out.data, &mut ws, isa);
    out
}

/// Into `out` (`cout x 2h x 2w`), using `ws` (see [`workspace_elems`]).
pub fn conv_transpose2d_into(x: View, c: &ConvTranspose2d, out: &mut [f32], ws: &mut [f32]) {
    conv_transpose2d_into_isa(x, c, out, ws, Isa::detect())
}

fn conv_transpose2d_into_isa(x: View, c: &ConvTranspose2d, out: &mut [f32], ws: &mut [f32], isa: Isa) {
    assert_eq!(x.c, c.cin, "conv_transpose2d input channels");
    assert!(c.k == 2 || c.k == 3, "conv_transpose2d: k must be 2 or 3");
    let (h, w, k) = (x.h, x.w, c.k);
    let (oh, ow) = (2 * h, 2 * w);
    assert_eq!(out.len(), c.cout * oh * ow, "conv_transpose2d output size");
    assert_eq!(c.weight.len(), c.cin * c.cout * k * k, "conv_transpose2d weights");
    let (row, plane) = geometry(h, w, k);
    let (ws_in, ws_w) = ws.split_at_mut(c.cin * plane + direct::slack());
    let p = usize::from(k == 3);
    {
        use rayon::prelude::*;
        let (planes, tail) = ws_in.split_at_mut(c.cin * plane);
        tail.fill(0.0);
        planes.par_chunks_mut(plane).enumerate().for_each(|(ci, dst)| {
            dst[..p * row].fill(0.0);
            for y in 0..h {
                let d = &mut dst[(y + p) * row..(y + p + 1) * row];
                d[..p].fill(0.0);
                d[p..].copy_from_slice(&x.plane(ci)[y * w..(y + 1) * w]);
            }
        });
    }
    let ptr = DisjointOut(out.as_mut_ptr());
    for (py, px) in [(0, 0), (0, 1), (1, 0), (1, 1)] {
        // Taps of this parity class in ascending (ky, kx): ky = py, and ky = py + 2 (reading the
        // row above) when that is inside the kernel; the same for columns.
        let ks = |par: usize| -> Vec<usize> { (par..k).step_by(2).collect() };
        let taps: Vec<(usize, usize)> =
            ks(py).into_iter().flat_map(|ky| ks(px).into_iter().map(move |kx| (ky, kx))).collect();
        // Tap (ky, kx) reads input (m - ky/2, n - kx/2) for class pixel (m, n): flat offset
        // (p - ky/2)·row + (p - kx/2) in the padded copy.
        let offsets: Vec<usize> = taps.iter().map(|&(ky, kx)| (p - ky / 2) * row + (p - kx / 2)).collect();
        direct::pack_weights(ws_w, c.cout, c.cin, taps.len(), |co, ci, t| {
            let (ky, kx) = taps[t];
            c.weight[((ci * c.cout + co) * k + ky) * k + kx]
        });
        let spec = Taps {
            data: ws_in,
            plane,
            cin: c.cin,
            offsets: &offsets,
            weights: ws_w,
            bias: &c.bias,
            cout: c.cout,
            n_q: h * row,
        };
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
