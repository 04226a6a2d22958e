//! One launch per op: a struct of the op's buffers and sizes whose `launch` checks the sizes
//! against the buffers and hands [`Kernels::launch`] its kernel's arguments in the order of the
//! `extern "C"` signature quoted beside it (`kernels/<family>.cu`).

use std::sync::Arc;

use cudarc::driver::{CudaSlice, CudaStream, CudaView, CudaViewMut, LaunchArgs, LaunchConfig, PushKernelArg};

use super::Precision;
use super::autotune::{ConvSignature, TIMED_LAUNCHES};
use super::conv_variants::{CONV_KERNEL_SIZES, F16Variant};
use super::kernels::{Kernels, check, dim};
use super::storage::Storage;
use super::weights::packed_len;
use crate::error::{Error, Result};
use crate::graph::{Conv2d, ConvTranspose2d, Shape, UpsampleMode};

/// A convolution layer `c` of `x` (shape `xs`: cin x h x w) into `out`, with its weights and
/// bias on the device.
pub struct ConvLaunch<'a, 'v, T, C> {
    pub c: &'a C,
    pub weight: &'a CudaSlice<T>,
    pub bias: &'a CudaSlice<f32>,
    pub x: &'a CudaView<'v, T>,
    pub out: &'a mut CudaViewMut<'v, T>,
    pub xs: Shape,
}

/// Conv2d into `out` (cout x h x w); `weight` in `T::conv_weights` layout.
pub type Conv<'a, 'v, T> = ConvLaunch<'a, 'v, T, Conv2d>;

/// ConvTranspose2d (stride 2, k 2 or 3) into `out` (cout x 2h x 2w); `weight` as the model
/// stores it, in storage type `T`.
pub type ConvTranspose<'a, 'v, T> = ConvLaunch<'a, 'v, T, ConvTranspose2d>;

impl<T: Storage> Conv<'_, '_, T> {
    /// Variant 1 at f32; at f16 the variant chosen for the layer's signature, timed on these
    /// buffers when the signature first comes up.
    pub fn launch(mut self, k: &Kernels, s: &Arc<CudaStream>) -> Result<()> {
        let c = self.c;
        if !CONV_KERNEL_SIZES.contains(&c.k) {
            return Err(Error::Backend(format!("conv kernel size {} (the CUDA kernels have 1, 3, 5, 7)", c.k)));
        }
        let variant = match T::PRECISION {
            Precision::F32 => None,
            Precision::F16 | Precision::Bf16 => {
                // Before tuning, which launches on these buffers; an empty output is not tuned.
                self.check_sizes()?;
                let Shape { h, w, .. } = self.xs;
                if h * w == 0 {
                    return Ok(());
                }
                // `x` is only read, and `out` is written again by the launch below.
                let sig = ConvSignature::new(c, h, w, T::PRECISION);
                Some(k.tune.choose(&sig, |v| self.time(k, s, v))?)
            }
        };
        self.launch_variant(k, s, variant)
    }

    /// One launch of f16 variant `v` (`kernels/conv.cu`, variant 2 or 3; the weights are the one
    /// packed buffer every variant reads, `weights::pack_conv_f16`), or of variant 1 at f32 (None).
    pub fn launch_variant(&mut self, k: &Kernels, s: &Arc<CudaStream>, v: Option<&F16Variant>) -> Result<()> {
        let (c, Shape { h, w, .. }) = (self.c, self.xs);
        let f16 = T::PRECISION == Precision::F16;
        check(v.map_or(!f16, |v| f16 && v.exists_for(c.k)), "conv variant for the precision")?;
        self.check_sizes()?;
        let ((gx, gy, gz), block_dim, name) = match v {
            // 16 x 16 pixels per block, 16 output channels per thread.
            None => {
                ((w.div_ceil(16), h.div_ceil(16), c.cout.div_ceil(16)), (16, 16, 1), format!("conv2d_k{}_f32", c.k))
            }
            Some(v) => {
                let (grid, threads) = v.grid(c.cout, h, w);
                (grid, (threads as u32, 1, 1), v.kernel_name(c.k))
            }
        };
        let grid_dim = (dim(gx, "width")?, dim(gy, "height")?, dim(gz, "cout")?);
        let (cin, cout, hh, ww) = (dim(c.cin, "cin")?, dim(c.cout, "cout")?, dim(h, "height")?, dim(w, "width")?);
        let (x, out, weight, bias, relu) = (self.x, &mut *self.out, self.weight, self.bias, c.relu as i32);
        let cfg = LaunchConfig { grid_dim, block_dim, shared_mem_bytes: 0 };
        // conv2d_k{K}_{f32,f16}[_{tag}](out, x, wt, bias, cin, cout, h, w, relu)
        k.launch(s, &name, h * w, cfg, |a| {
            a.arg(out).arg(x).arg(weight).arg(bias).arg(&cin).arg(&cout).arg(&hh).arg(&ww).arg(&relu)
        })
    }

    fn check_sizes(&self) -> Result<()> {
        let (c, hw) = (self.c, self.xs.h * self.xs.w);
        let weights = match T::PRECISION {
            Precision::F32 => c.weight.len(),
            Precision::F16 | Precision::Bf16 => packed_len(c),
        };
        check(self.x.len() == c.cin * hw && self.out.len() == c.cout * hw, "conv2d activations")?;
        check(self.weight.len() == weights && self.bias.len() == c.cout, "conv2d weights")
    }

    /// Milliseconds per launch of variant `v` on these buffers: one warm-up launch, then
    /// [`TIMED_LAUNCHES`] between two CUDA events. Waits for the stream.
    fn time(&mut self, k: &Kernels, s: &Arc<CudaStream>, v: &F16Variant) -> Result<f64> {
        use cudarc::driver::sys::CUevent_flags;
        let name = v.kernel_name(self.c.k);
        let err = |source| Error::Cuda { context: format!("timing {name}"), source };
        let event = || s.context().new_event(Some(CUevent_flags::CU_EVENT_DEFAULT)).map_err(err);
        let (start, end) = (event()?, event()?);
        self.launch_variant(k, s, Some(v))?;
        start.record(s).map_err(err)?;
        for _ in 0..TIMED_LAUNCHES {
            self.launch_variant(k, s, Some(v))?;
        }
        end.record(s).map_err(err)?;
        let ms = start.elapsed_ms(&end).map_err(err)?;
        Ok(ms as f64 / TIMED_LAUNCHES as f64)
    }
}

impl<T: Storage> ConvTranspose<'_, '_, T> {
    pub fn launch(self, k: &Kernels, s: &Arc<CudaStream>) -> Result<()> {
        let ConvTranspose { c, weight, bias, x, out, xs: Shape { h, w, .. } } = self;
        if c.k != 2 && c.k != 3 {
            return Err(Error::Backend(format!("transposed conv kernel size {} (the CUDA kernels have 2 and 3)", c.k)));
        }
        check(x.len() == c.cin * h * w && out.len() == c.cout * 4 * h * w, "conv_transpose2d activations")?;
        check(weight.len() == c.cin * c.cout * c.k * c.k && bias.len() == c.cout, "conv_transpose2d weights")?;
        let (cin, cout, hh, ww) = (dim(c.cin, "cin")?, dim(c.cout, "cout")?, dim(h, "height")?, dim(w, "width")?);
        let n = out.len() as u64;
        // conv_transpose2d_k{K}_{T}(out, x, wt, bias, cin, cout, h, w, n)
        k.elementwise::<T>(s, &format!("conv_transpose2d_k{}", c.k), n, |a| {
            a.arg(out).arg(x).arg(weight).arg(bias).arg(&cin).arg(&cout).arg(&hh).arg(&ww).arg(&n)
        })
    }
}

/// `out = x * scale[c] + shift[c]` per channel of `x` (shape `xs`), then ReLU when asked. Without
/// `x`, in place on `out` (a step of the arena schedule).
pub struct ScaleShift<'a, 'v, T> {
    pub scale: &'a CudaSlice<f32>,
    pub shift: &'a CudaSlice<f32>,
    pub relu: bool,
    pub x: Option<&'a CudaView<'v, T>>,
    pub out: &'a mut CudaViewMut<'v, T>,
    pub xs: Shape,
}

impl<T: Storage> ScaleShift<'_, '_, T> {
    pub fn launch(self, k: &Kernels, s: &Arc<CudaStream>) -> Result<()> {
        let ScaleShift { scale, shift, relu, x, out, xs } = self;
        let hw = xs.h * xs.w;
        let base = if x.is_some() { "scale_shift" } else { "scale_shift_inplace" };
        let n = out.len();
        check(x.is_none_or(|x| x.len() == n) && n == scale.len() * hw && shift.len() == scale.len(), base)?;
        let (relu, hw, n) = (relu as i32, hw as u64, n as u64);
        // scale_shift_{T}(out, x, scale, shift, relu, hw, n); scale_shift_inplace_{T} has no `x`.
        k.elementwise::<T>(s, base, n, |a| with_input(a.arg(out), x).arg(scale).arg(shift).arg(&relu).arg(&hw).arg(&n))
    }
}

/// `out = max(x, 0)`; without `x`, in place on `out` (a step of the arena schedule).
pub struct Relu<'a, 'v, T> {
    pub x: Option<&'a CudaView<'v, T>>,
    pub out: &'a mut CudaViewMut<'v, T>,
}

impl<T: Storage> Relu<'_, '_, T> {
    pub fn launch(self, k: &Kernels, s: &Arc<CudaStream>) -> Result<()> {
        let Relu { x, out } = self;
        let base = if x.is_some() { "relu" } else { "relu_inplace" };
        check(x.is_none_or(|x| x.len() == out.len()), base)?;
        let n = out.len() as u64;
        // relu_{T}(out, x, n); relu_inplace_{T} has no `x`.
        k.elementwise::<T>(s, base, n, |a| with_input(a.arg(out), x).arg(&n))
    }
}

/// Pushes `x` when there is one: the in-place kernels are their twins without it.
fn with_input<'l, 'a, T>(a: &'l mut LaunchArgs<'a>, x: Option<&'a CudaView<'_, T>>) -> &'l mut LaunchArgs<'a> {
    match x {
        Some(x) => a.arg(x),
        None => a,
    }
}

/// 2x2 max pooling of `x` (shape `xs`: c x h x w, h and w even) into `out` (c x h/2 x w/2).
pub struct MaxPool2<'a, 'v, T> {
    pub x: &'a CudaView<'v, T>,
    pub out: &'a mut CudaViewMut<'v, T>,
    pub xs: Shape,
}

impl<T: Storage> MaxPool2<'_, '_, T> {
    pub fn launch(self, k: &Kernels, s: &Arc<CudaStream>) -> Result<()> {
        let MaxPool2 { x, out, xs: Shape { c, h, w } } = self;
        let even = h.is_multiple_of(2) && w.is_multiple_of(2);
        check(even && x.len() == c * h * w && out.len() * 4 == x.len(), "max_pool2")?;
        let (h, w, n) = (dim(h, "height")?, dim(w, "width")?, out.len() as u64);
        // max_pool2_{T}(out, x, h, w, n)
        k.elementwise::<T>(s, "max_pool2", n, |a| a.arg(out).arg(x).arg(&h).arg(&w).arg(&n))
    }
}

/// x2 up-sampling of `x` (shape `xs`: c x h x w) into `out` (c x 2h x 2w).
pub struct Upsample2<'a, 'v, T> {
    pub mode: UpsampleMode,
    pub x: &'a CudaView<'v, T>,
    pub out: &'a mut CudaViewMut<'v, T>,
    pub xs: Shape,
}

impl<T: Storage> Upsample2<'_, '_, T> {
    pub fn launch(self, k: &Kernels, s: &Arc<CudaStream>) -> Result<()> {
        let Upsample2 { mode, x, out, xs: Shape { c, h, w } } = self;
        check(x.len() == c * h * w && out.len() == x.len() * 4, "upsample2")?;
        let (h, w, n) = (dim(h, "height")?, dim(w, "width")?, out.len() as u64);
        let bilinear = (mode == UpsampleMode::Bilinear) as i32;
        // upsample2_{T}(out, x, h, w, bilinear, n)
        k.elementwise::<T>(s, "upsample2", n, |a| a.arg(out).arg(x).arg(&h).arg(&w).arg(&bilinear).arg(&n))
    }
}

/// Copy `x` into `out` starting at element `offset` (one input of a channel concatenation).
pub struct CopyInto<'a, 'v, T> {
    pub x: &'a CudaView<'v, T>,
    pub out: &'a mut CudaViewMut<'v, T>,
    pub offset: usize,
}

impl<T: Storage> CopyInto<'_, '_, T> {
    pub fn launch(self, k: &Kernels, s: &Arc<CudaStream>) -> Result<()> {
        let CopyInto { x, out, offset } = self;
        check(offset + x.len() <= out.len(), "concat")?;
        let (offset, n) = (offset as u64, x.len() as u64);
        // copy_into_{T}(out, offset, x, n)
        k.elementwise::<T>(s, "copy_into", n, |a| a.arg(out).arg(&offset).arg(x).arg(&n))
    }
}

/// Softmax (or argmax, one output channel) over the channels of `x` (shape `xs`).
pub struct Softmax<'a, 'v, T> {
    pub argmax: bool,
    pub x: &'a CudaView<'v, T>,
    pub out: &'a mut CudaViewMut<'v, T>,
    pub xs: Shape,
}

impl<T: Storage> Softmax<'_, '_, T> {
    pub fn launch(self, k: &Kernels, s: &Arc<CudaStream>) -> Result<()> {
        let Softmax { argmax, x, out, xs: Shape { c, h, w } } = self;
        let hw = h * w;
        let out_c = if argmax { 1 } else { c };
        check(x.len() == c * hw && out.len() == out_c * hw && c > 0, "softmax/argmax")?;
        let (c, hw) = (dim(c, "channels")?, hw as u64);
        // {softmax,argmax}_{T}(out, x, c, hw), a loop over the pixels.
        k.elementwise::<T>(s, if argmax { "argmax" } else { "softmax" }, hw, |a| a.arg(out).arg(x).arg(&c).arg(&hw))
    }
}

/// `mma_peak_f16` (kernels/peak.cu): `blocks` blocks of `warps` warps, each issuing `iters` rounds
/// of [`super::sources::PEAK_MMAS_PER_ROUND`] mmas. `out` gets one value per thread.
pub struct MmaPeak<'a> {
    pub out: &'a mut CudaSlice<f32>,
    pub blocks: u32,
    pub warps: u32,
    pub iters: u64,
}

impl MmaPeak<'_> {
    pub fn launch(self, k: &Kernels, s: &Arc<CudaStream>) -> Result<()> {
        let MmaPeak { out, blocks, warps, iters } = self;
        check(out.len() == (blocks * warps * 32) as usize, "mma_peak")?;
        let cfg = LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (warps * 32, 1, 1), shared_mem_bytes: 0 };
        // mma_peak_f16(out, iters)
        k.launch(s, "mma_peak_f16", out.len(), cfg, |a| a.arg(out).arg(&iters))
    }
}
