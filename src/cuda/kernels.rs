//! The compiled kernel families loaded into a context, and the one checked launch every op goes
//! through. The ops themselves (`super::ops`) check their sizes against their buffers and hand
//! [`Kernels::launch`] their kernel's arguments, so the one `unsafe` launch here relies only on
//! those argument lists matching the `extern "C"` signatures in `kernels/<family>.cu`.

use std::collections::HashMap;
use std::sync::Arc;

use cudarc::driver::{CudaContext, CudaFunction, CudaStream, LaunchArgs, LaunchConfig};
use cudarc::nvrtc::Ptx;

use super::autotune::{Autotune, TuneMode};
use super::compile;
use super::driver_err;
use super::sources::FAMILIES;
use super::storage::Storage;
use crate::error::{Error, Result};

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
            let file = format!("kernels/{}.cu", family.name);
            let module = ctx
                .load_module(Ptx::from_binary(compiled.cubin))
                .map_err(driver_err(format!("loading {file} for {arch}")))?;
            for &f in family.functions {
                let func = module.load_function(f).map_err(driver_err(format!("{file} has no kernel {f}")))?;
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

    /// Launch kernel `name` with the arguments `push` gives, unless `work` (the elements or pixels
    /// it covers) is 0. Only the ops of `super::ops` call it, after checking their sizes.
    pub(super) fn launch<'a>(
        &'a self,
        s: &'a Arc<CudaStream>,
        name: &str,
        work: usize,
        cfg: LaunchConfig,
        push: impl for<'r> FnOnce(&'r mut LaunchArgs<'a>) -> &'r mut LaunchArgs<'a>,
    ) -> Result<()> {
        if work == 0 {
            return Ok(());
        }
        let func = self.functions.get(name).ok_or_else(|| Error::Backend(format!("no kernel named {name}")))?;
        let mut args = s.launch_builder(func);
        push(&mut args);
        // SAFETY: each caller in `super::ops` pushes exactly the parameters of `name`'s `extern "C"`
        // signature, in order and type (each quotes it); has checked the sizes it passes against
        // the lengths of the buffers it passes, so the kernel indexes only inside them; and gives
        // the grid and block the kernel was written for (grid-stride loops take any grid; the
        // conv variants' shapes are in conv_variants.rs).
        unsafe { args.launch(cfg) }.map_err(|source| Error::Cuda { context: format!("launching {name}"), source })?;
        Ok(())
    }

    /// [`Self::launch`] of `{base}_{f32,f16}` (as `T`), a grid-stride loop over `n` elements in
    /// blocks of 256 threads (the grid is capped; the loop covers the rest).
    pub(super) fn elementwise<'a, T: Storage>(
        &'a self,
        s: &'a Arc<CudaStream>,
        base: &str,
        n: u64,
        push: impl for<'r> FnOnce(&'r mut LaunchArgs<'a>) -> &'r mut LaunchArgs<'a>,
    ) -> Result<()> {
        let blocks = n.div_ceil(256).clamp(1, 1 << 20) as u32;
        let cfg = LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
        self.launch(s, &format!("{base}_{}", T::PRECISION.name()), n as usize, cfg, push)
    }
}

/// `v` as a kernel's `unsigned` argument.
pub(super) fn dim(v: usize, what: &str) -> Result<u32> {
    u32::try_from(v).map_err(|_| Error::Backend(format!("{what} = {v} is too large for the CUDA kernels")))
}

/// An op's sizes against its buffers: the condition the one `unsafe` launch relies on.
pub(super) fn check(cond: bool, what: &str) -> Result<()> {
    if cond { Ok(()) } else { Err(Error::Backend(format!("internal: buffer sizes do not match ({what})"))) }
}
