//! The compiled kernel families loaded into a context, and one launch wrapper per op. Each
//! wrapper checks the sizes it is given against the buffers, so the `unsafe` launches below only
//! rely on the argument lists matching the `extern "C"` signatures in `kernels/<family>.cu`.

use std::collections::HashMap;
use std::sync::Arc;

use cudarc::driver::{
    CudaContext, CudaFunction, CudaSlice, CudaStream, CudaView, CudaViewMut, LaunchConfig, PushKernelArg,
};
use cudarc::nvrtc::Ptx;

use super::Precision;
use super::autotune::{Autotune, ConvSignature, TIMED_LAUNCHES, TuneMode};
use super::compile;
use super::conv_variants::{CONV_KERNEL_SIZES, F16Variant};
use super::sources::FAMILIES;
use super::storage::Storage;
use super::weights::packed_len;
use crate::error::{Error, Result};
use crate::graph::{Conv2d, UpsampleMode};

/// How one family was obtained, for `seamless doctor` and logs.
#[derive(Clone, Debug)]
pub struct FamilyReport {
    pub name: &'static str,
    pub cached: bool,
    pub seconds: f64,
    pub cubin_bytes: usize,
}

pub struct Kernels {
    functions: HashMap<&'static str, CudaFunction>,
    /// The f16 conv variant of each layer signature (one per signature per run).
    pub tune: Autotune,
}

fn launch_err(name: &str) -> impl Fn(cudarc::driver::DriverError) -> Error + '_ {
    move |source| Error::Cuda { context: format!("launching {name}"), source }
}

impl Kernels {
    /// Compile (or fetch from the cache) and load every family for `arch`; `device` names the GPU
    /// for the autotune cache.
    pub fn load(
        ctx: &Arc<CudaContext>,
        arch: &str,
        device: &str,
        mode: TuneMode,
    ) -> Result<(Kernels, Vec<FamilyReport>)> {
        let mut functions = HashMap::new();
        let mut reports = Vec::new();
        for family in FAMILIES {
            let t0 = std::time::Instant::now();
            let compiled = compile::load_or_compile(family, arch)?;
            let bytes = compiled.cubin.len();
            let module = ctx.load_module(Ptx::from_binary(compiled.cubin)).map_err(|source| Error::Cuda {
                context: format!("loading kernels/{}.cu for {arch}", family.name),
                source,
            })?;
            for &f in family.functions {
                let func = module.load_function(f).map_err(|source| Error::Cuda {
                    context: format!("kernels/{}.cu has no kernel {f}", family.name),
                    source,
                })?;
                functions.insert(f, func);
            }
            reports.push(FamilyReport {
                name: family.name,
                cached: compiled.cached,
                seconds: t0.elapsed().as_secs_f64(),
                cubin_bytes: bytes,
            });
        }
        Ok((Kernels { functions, tune: Autotune::new(mode, device, arch) }, reports))
    }

    fn get(&self, name: &str) -> Result<&CudaFunction> {
        self.functions.get(name).ok_or_else(|| Error::Backend(format!("no kernel named {name}")))
    }
}

/// Blocks of 256 threads for a grid-stride loop over `n` elements (capped; the loop covers the rest).
fn elementwise_config(n: usize) -> LaunchConfig {
    let blocks = n.div_ceil(256).clamp(1, 1 << 20) as u32;
    LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 }
}

fn dim(v: usize, what: &str) -> Result<u32> {
    u32::try_from(v).map_err(|_| Error::Backend(format!("{what} = {v} is too large for the CUDA kernels")))
}

fn check(cond: bool, what: &str) -> Result<()> {
    if cond { Ok(()) } else { Err(Error::Backend(format!("internal: buffer sizes do not match ({what})"))) }
}

/// Conv2d of `x` (cin x h x w) into `out` (cout x h x w); `weight` in `T::conv_weights` layout.
#[allow(clippy::too_many_arguments)]
pub fn conv2d<T: Storage>(
    k: &Kernels,
    s: &Arc<CudaStream>,
    c: &Conv2d,
    weight: &CudaSlice<T>,
    bias: &CudaSlice<f32>,
    x: &CudaView<'_, T>,
    out: &mut CudaViewMut<'_, T>,
    h: usize,
    w: usize,
) -> Result<()> {
    if !CONV_KERNEL_SIZES.contains(&c.k) {
        return Err(Error::Backend(format!("conv kernel size {} (the CUDA kernels have 1, 3, 5, 7)", c.k)));
    }
    let f16 = T::PRECISION == Precision::F16;
    let wlen = if f16 { packed_len(c) } else { c.weight.len() };
    check(x.len() == c.cin * h * w && out.len() == c.cout * h * w, "conv2d activations")?;
    check(weight.len() == wlen && bias.len() == c.cout, "conv2d weights")?;
    if h * w == 0 {
        return Ok(());
    }
    if f16 {
        let sig = ConvSignature::new(c, h, w, T::PRECISION);
        // Tuning launches on the layer's own buffers: `x` is only read, and `out` is written
        // again by the launch below with the chosen variant.
        let v = k.tune.choose(&sig, |v| time_conv_f16(k, s, v, c, weight, bias, x, out, h, w))?;
        return conv2d_f16_variant(k, s, v, c, weight, bias, x, out, h, w);
    }
    // 16 x 16 pixels per block, 16 output channels per thread (variant 1).
    let cfg = LaunchConfig {
        grid_dim: (dim(w.div_ceil(16), "width")?, dim(h.div_ceil(16), "height")?, dim(c.cout.div_ceil(16), "cout")?),
        block_dim: (16, 16, 1),
        shared_mem_bytes: 0,
    };
    launch_conv(k, s, &format!("conv2d_k{}_{}", c.k, T::PRECISION.name()), cfg, c, weight, bias, x, out, h, w)
}

/// Launch one conv kernel: every variant of every precision takes
/// `(out, x, weights, bias, cin, cout, h, w, relu)`.
#[allow(clippy::too_many_arguments)]
fn launch_conv<T: Storage>(
    k: &Kernels,
    s: &Arc<CudaStream>,
    name: &str,
    cfg: LaunchConfig,
    c: &Conv2d,
    weight: &CudaSlice<T>,
    bias: &CudaSlice<f32>,
    x: &CudaView<'_, T>,
    out: &mut CudaViewMut<'_, T>,
    h: usize,
    w: usize,
) -> Result<()> {
    let func = k.get(name)?;
    let (cin, cout, hh, ww) = (dim(c.cin, "cin")?, dim(c.cout, "cout")?, dim(h, "height")?, dim(w, "width")?);
    let relu = c.relu as i32;
    // SAFETY: the arguments match conv2d_k{K}_{f32,f16}[_{tag}](out, x, wt, bias, cin, cout, h, w,
    // relu) in type and order; callers checked the buffer lengths against the sizes passed and
    // give the grid and block the kernel was written for (for variants: conv_variants.rs).
    unsafe {
        s.launch_builder(func)
            .arg(out)
            .arg(x)
            .arg(weight)
            .arg(bias)
            .arg(&cin)
            .arg(&cout)
            .arg(&hh)
            .arg(&ww)
            .arg(&relu)
            .launch(cfg)
    }
    .map_err(launch_err(name))?;
    Ok(())
}

/// One f16 conv with the given variant (`kernels/conv.cu`, variant 2 or 3). The weights are the
/// one packed buffer every variant reads (`weights::pack_conv_f16`).
#[allow(clippy::too_many_arguments)]
pub fn conv2d_f16_variant<T: Storage>(
    k: &Kernels,
    s: &Arc<CudaStream>,
    v: &F16Variant,
    c: &Conv2d,
    weight: &CudaSlice<T>,
    bias: &CudaSlice<f32>,
    x: &CudaView<'_, T>,
    out: &mut CudaViewMut<'_, T>,
    h: usize,
    w: usize,
) -> Result<()> {
    check(T::PRECISION == Precision::F16 && v.exists_for(c.k), "f16 conv variant")?;
    check(x.len() == c.cin * h * w && out.len() == c.cout * h * w, "conv2d activations")?;
    check(weight.len() == packed_len(c) && bias.len() == c.cout, "conv2d weights")?;
    if h * w == 0 {
        return Ok(());
    }
    let ((gx, gy, gz), threads) = v.grid(c.cout, h, w);
    let cfg = LaunchConfig {
        grid_dim: (dim(gx, "width")?, dim(gy, "height")?, dim(gz, "cout")?),
        block_dim: (threads as u32, 1, 1),
        shared_mem_bytes: 0,
    };
    launch_conv(k, s, &v.kernel_name(c.k), cfg, c, weight, bias, x, out, h, w)
}

/// Milliseconds per launch of variant `v` on these buffers: one warm-up launch, then
/// [`TIMED_LAUNCHES`] between two CUDA events. Waits for the stream.
#[allow(clippy::too_many_arguments)]
fn time_conv_f16<T: Storage>(
    k: &Kernels,
    s: &Arc<CudaStream>,
    v: &F16Variant,
    c: &Conv2d,
    weight: &CudaSlice<T>,
    bias: &CudaSlice<f32>,
    x: &CudaView<'_, T>,
    out: &mut CudaViewMut<'_, T>,
    h: usize,
    w: usize,
) -> Result<f64> {
    use cudarc::driver::sys::CUevent_flags;
    let err = |source| Error::Cuda { context: format!("timing {}", v.kernel_name(c.k)), source };
    let event = || s.context().new_event(Some(CUevent_flags::CU_EVENT_DEFAULT)).map_err(err);
    let (start, end) = (event()?, event()?);
    conv2d_f16_variant(k, s, v, c, weight, bias, x, out, h, w)?;
    start.record(s).map_err(err)?;
    for _ in 0..TIMED_LAUNCHES {
        conv2d_f16_variant(k, s, v, c, weight, bias, x, out, h, w)?;
    }
    end.record(s).map_err(err)?;
    let ms = start.elapsed_ms(&end).map_err(err)?;
    Ok(ms as f64 / TIMED_LAUNCHES as f64)
}

/// ConvTranspose2d (stride 2, k 2 or 3) of `x` (cin x h x w) into `out` (cout x 2h x 2w).
#[allow(clippy::too_many_arguments)]
pub fn conv_transpose2d<T: Storage>(
    k: &Kernels,
    s: &Arc<CudaStream>,
    (cin, cout, ks): (usize, usize, usize),
    weight: &CudaSlice<T>,
    bias: &CudaSlice<f32>,
    x: &CudaView<'_, T>,
    out: &mut CudaViewMut<'_, T>,
    h: usize,
    w: usize,
) -> Result<()> {
    if ks != 2 && ks != 3 {
        return Err(Error::Backend(format!("transposed conv kernel size {ks} (the CUDA kernels have 2 and 3)")));
    }
    check(x.len() == cin * h * w && out.len() == cout * 4 * h * w, "conv_transpose2d activations")?;
    check(weight.len() == cin * cout * ks * ks && bias.len() == cout, "conv_transpose2d weights")?;
    let n = out.len() as u64;
    if n == 0 {
        return Ok(());
    }
    let name = format!("conv_transpose2d_k{ks}_{}", T::PRECISION.name());
    let func = k.get(&name)?;
    let (cin_, cout_, hh, ww) = (dim(cin, "cin")?, dim(cout, "cout")?, dim(h, "height")?, dim(w, "width")?);
    // SAFETY: matches conv_transpose2d_k{K}_{T}(out, x, wt, bias, cin, cout, h, w, n); lengths checked.
    unsafe {
        s.launch_builder(func)
            .arg(out)
            .arg(x)
            .arg(weight)
            .arg(bias)
            .arg(&cin_)
            .arg(&cout_)
            .arg(&hh)
            .arg(&ww)
            .arg(&n)
            .launch(elementwise_config(n as usize))
    }
    .map_err(launch_err(&name))?;
    Ok(())
}

/// `out = x * scale[c] + shift[c]` per channel, then ReLU when asked.
#[allow(clippy::too_many_arguments)]
pub fn scale_shift<T: Storage>(
    k: &Kernels,
    s: &Arc<CudaStream>,
    scale: &CudaSlice<f32>,
    shift: &CudaSlice<f32>,
    relu: bool,
    x: &CudaView<'_, T>,
    out: &mut CudaViewMut<'_, T>,
    hw: usize,
) -> Result<()> {
    check(x.len() == out.len() && x.len() == scale.len() * hw && shift.len() == scale.len(), "scale_shift")?;
    let (n, hw, relu) = (x.len() as u64, hw as u64, relu as i32);
    if n == 0 {
        return Ok(());
    }
    let name = format!("scale_shift_{}", T::PRECISION.name());
    let func = k.get(&name)?;
    // SAFETY: matches scale_shift_{T}(out, x, scale, shift, relu, hw, n); lengths checked.
    unsafe {
        s.launch_builder(func)
            .arg(out)
            .arg(x)
            .arg(scale)
            .arg(shift)
            .arg(&relu)
            .arg(&hw)
            .arg(&n)
            .launch(elementwise_config(n as usize))
    }
    .map_err(launch_err(&name))?;
    Ok(())
}

/// Launch a `(out, x, n)` kernel of the given base name.
fn unary<T: Storage>(
    k: &Kernels,
    s: &Arc<CudaStream>,
    base: &str,
    x: &CudaView<'_, T>,
    out: &mut CudaViewMut<'_, T>,
) -> Result<()> {
    check(x.len() == out.len(), base)?;
    let n = x.len() as u64;
    if n == 0 {
        return Ok(());
    }
    let name = format!("{base}_{}", T::PRECISION.name());
    let func = k.get(&name)?;
    // SAFETY: matches {base}_{T}(out, x, n); lengths checked.
    unsafe { s.launch_builder(func).arg(out).arg(x).arg(&n).launch(elementwise_config(n as usize)) }
        .map_err(launch_err(&name))?;
    Ok(())
}

pub fn relu<T: Storage>(
    k: &Kernels,
    s: &Arc<CudaStream>,
    x: &CudaView<'_, T>,
    out: &mut CudaViewMut<'_, T>,
) -> Result<()> {
    unary(k, s, "relu", x, out)
}

/// ReLU over `x`, overwriting it (an in-place step of the arena schedule).
pub fn relu_inplace<T: Storage>(k: &Kernels, s: &Arc<CudaStream>, x: &mut CudaViewMut<'_, T>) -> Result<()> {
    let n = x.len() as u64;
    if n == 0 {
        return Ok(());
    }
    let name = format!("relu_inplace_{}", T::PRECISION.name());
    let func = k.get(&name)?;
    // SAFETY: matches relu_inplace_{T}(x, n); n is x's length.
    unsafe { s.launch_builder(func).arg(x).arg(&n).launch(elementwise_config(n as usize)) }
        .map_err(launch_err(&name))?;
    Ok(())
}

/// `x = x * scale[c] + shift[c]` per channel (then ReLU when asked), overwriting `x`.
pub fn scale_shift_inplace<T: Storage>(
    k: &Kernels,
    s: &Arc<CudaStream>,
    scale: &CudaSlice<f32>,
    shift: &CudaSlice<f32>,
    relu: bool,
    x: &mut CudaViewMut<'_, T>,
    hw: usize,
) -> Result<()> {
    check(x.len() == scale.len() * hw && shift.len() == scale.len(), "scale_shift_inplace")?;
    let (n, hw, relu) = (x.len() as u64, hw as u64, relu as i32);
    if n == 0 {
        return Ok(());
    }
    let name = format!("scale_shift_inplace_{}", T::PRECISION.name());
    let func = k.get(&name)?;
    // SAFETY: matches scale_shift_inplace_{T}(x, scale, shift, relu, hw, n); lengths checked.
    unsafe {
        s.launch_builder(func)
            .arg(x)
            .arg(scale)
            .arg(shift)
            .arg(&relu)
            .arg(&hw)
            .arg(&n)
            .launch(elementwise_config(n as usize))
    }
    .map_err(launch_err(&name))?;
    Ok(())
}

/// 2x2 max pooling of `x` (c x h x w, h and w even) into `out` (c x h/2 x w/2).
pub fn max_pool2<T: Storage>(
    k: &Kernels,
    s: &Arc<CudaStream>,
    x: &CudaView<'_, T>,
    out: &mut CudaViewMut<'_, T>,
    (c, h, w): (usize, usize, usize),
) -> Result<()> {
    let even = h.is_multiple_of(2) && w.is_multiple_of(2);
    check(even && x.len() == c * h * w && out.len() * 4 == x.len(), "max_pool2")?;
    let n = out.len() as u64;
    if n == 0 {
        return Ok(());
    }
    let name = format!("max_pool2_{}", T::PRECISION.name());
    let func = k.get(&name)?;
    let (hh, ww) = (dim(h, "height")?, dim(w, "width")?);
    // SAFETY: matches max_pool2_{T}(out, x, h, w, n); lengths checked.
    unsafe { s.launch_builder(func).arg(out).arg(x).arg(&hh).arg(&ww).arg(&n).launch(elementwise_config(n as usize)) }
        .map_err(launch_err(&name))?;
    Ok(())
}

/// x2 up-sampling of `x` (c x h x w) into `out` (c x 2h x 2w).
pub fn upsample2<T: Storage>(
    k: &Kernels,
    s: &Arc<CudaStream>,
    mode: UpsampleMode,
    x: &CudaView<'_, T>,
    out: &mut CudaViewMut<'_, T>,
    (c, h, w): (usize, usize, usize),
) -> Result<()> {
    check(x.len() == c * h * w && out.len() == x.len() * 4, "upsample2")?;
    let n = out.len() as u64;
    if n == 0 {
        return Ok(());
    }
    let name = format!("upsample2_{}", T::PRECISION.name());
    let func = k.get(&name)?;
    let (hh, ww, bilinear) = (dim(h, "height")?, dim(w, "width")?, (mode == UpsampleMode::Bilinear) as i32);
    // SAFETY: matches upsample2_{T}(out, x, h, w, bilinear, n); lengths checked.
    unsafe {
        s.launch_builder(func)
            .arg(out)
            .arg(x)
            .arg(&hh)
            .arg(&ww)
            .arg(&bilinear)
            .arg(&n)
            .launch(elementwise_config(n as usize))
    }
    .map_err(launch_err(&name))?;
    Ok(())
}

/// Copy `x` into `out` starting at element `offset` (one input of a channel concatenation).
pub fn copy_into<T: Storage>(
    k: &Kernels,
    s: &Arc<CudaStream>,
    x: &CudaView<'_, T>,
    out: &mut CudaViewMut<'_, T>,
    offset: usize,
) -> Result<()> {
    check(offset + x.len() <= out.len(), "concat")?;
    let (n, off) = (x.len() as u64, offset as u64);
    if n == 0 {
        return Ok(());
    }
    let name = format!("copy_into_{}", T::PRECISION.name());
    let func = k.get(&name)?;
    // SAFETY: matches copy_into_{T}(out, offset, x, n); offset + n checked against out's length.
    unsafe { s.launch_builder(func).arg(out).arg(&off).arg(x).arg(&n).launch(elementwise_config(n as usize)) }
        .map_err(launch_err(&name))?;
    Ok(())
}

/// Softmax (or argmax, one output channel) over the `c` channels of `x` (c x hw).
pub fn softmax_or_argmax<T: Storage>(
    k: &Kernels,
    s: &Arc<CudaStream>,
    argmax: bool,
    x: &CudaView<'_, T>,
    out: &mut CudaViewMut<'_, T>,
    c: usize,
    hw: usize,
) -> Result<()> {
    let out_c = if argmax { 1 } else { c };
    check(x.len() == c * hw && out.len() == out_c * hw && c > 0, "softmax/argmax")?;
    if hw == 0 {
        return Ok(());
    }
    let name = format!("{}_{}", if argmax { "argmax" } else { "softmax" }, T::PRECISION.name());
    let func = k.get(&name)?;
    let (cc, hw) = (dim(c, "channels")?, hw as u64);
    // SAFETY: matches {softmax,argmax}_{T}(out, x, c, hw); lengths checked.
    unsafe { s.launch_builder(func).arg(out).arg(x).arg(&cc).arg(&hw).launch(elementwise_config(hw as usize)) }
        .map_err(launch_err(&name))?;
    Ok(())
}

/// Launch `mma_peak_f16` (kernels/peak.cu): `blocks` blocks of `warps` warps, each issuing
/// `iters` rounds of [`super::sources::PEAK_MMAS_PER_ROUND`] mmas. `out` gets one value per thread.
pub fn mma_peak(
    k: &Kernels,
    s: &Arc<CudaStream>,
    out: &mut CudaSlice<f32>,
    blocks: u32,
    warps: u32,
    iters: u64,
) -> Result<()> {
    check(out.len() == (blocks * warps * 32) as usize, "mma_peak")?;
    let func = k.get("mma_peak_f16")?;
    let cfg = LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (warps * 32, 1, 1), shared_mem_bytes: 0 };
    // SAFETY: matches mma_peak_f16(out, iters); out has one element per launched thread.
    unsafe { s.launch_builder(func).arg(out).arg(&iters).launch(cfg) }.map_err(launch_err("mma_peak_f16"))?;
    Ok(())
}
