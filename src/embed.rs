//! Embedding seamless in another program: load a model once into an [`Engine`] (with its backend,
//! precision and memory budget), then segment images held in memory or run from a file to a file,
//! with progress and cancellation. This is the API of the C ABI too (`capi`).
//!
//! ```no_run
//! use seamless::embed::{Device, Engine, Options};
//!
//! let engine = Engine::open("models/unet-demo.safetensors", &Options { device: Device::Cpu, ..Options::default() })?;
//! let image = seamless::Tensor::zeros(engine.model().in_channels(), 300, 400);
//! let probs = engine.segment(&image, &mut |_| {}, None)?;
//! assert_eq!((probs.c, probs.h, probs.w), (engine.model().classes(), 300, 400));
//! # Ok::<(), seamless::Error>(())
//! ```
//!
//! Every call is exact: a tiled run equals the whole-image run bit for bit, whatever the budget.

#![deny(missing_docs)]

use std::path::Path;

use crate::backend::Backend;
use crate::cpu::{CpuBackend, CpuMemory};
use crate::cuda::CudaBackend;
pub use crate::error::{Error, Result};
use crate::model::Model;
pub use crate::normalize::Normalize;
use crate::normalize::{self, NormSpec};
use crate::pipeline::{PadMode, Tiling};
pub use crate::planner::Precision;
use crate::planner::TilePlanner;
use crate::planner::tile_plan::{address_space_headroom, available_host_memory};
use crate::slide::stream::{self, StreamOptions};
pub use crate::slide::stream::{OutputKind, Summary};
pub use crate::slide::{Cancel, Format, Progress};
pub use crate::tensor::Tensor;

/// Where to compute.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Device {
    /// CUDA device 0 when a GPU and NVRTC are found, else the CPU.
    #[default]
    Auto,
    /// The CPU backend (f32).
    Cpu,
    /// This CUDA device (an error if it cannot be used).
    Cuda(usize),
}

/// How an [`Engine`] computes.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Where to compute.
    pub device: Device,
    /// f16 needs CUDA; the CPU computes in f32 or bf16.
    pub precision: Precision,
    /// Bytes the runs may use (the planner picks a tile that fits, as `--tile auto`). Default: on the CPU
    /// half the memory available now, at most 4 GiB; on CUDA the device's free memory less 10%.
    pub memory_budget: Option<usize>,
    /// CPU worker threads (default: rayon's global pool, all cores). With a number, the engine's
    /// CPU backend has a pool of its own.
    pub threads: Option<usize>,
}

/// A model on a backend, ready to run.
pub struct Engine {
    model: Model,
    backend: Box<dyn Backend>,
    budget: usize,
    /// Why CUDA was not used under [`Device::Auto`], if it was not.
    cuda_skipped: Option<String>,
}

/// Default CPU budget cap: past a few thousand pixels a larger tile saves little halo work (the
/// overhead ((T+2H)/T)^2 is already within a few percent), and a shared machine keeps its memory.
const CPU_DEFAULT_CAP: usize = 4 << 30;

/// The CPU memory budget: `given`, or half the memory available now, at most 4 GiB. A budget past
/// what `ulimit -v` leaves the process is refused: the run would abort part-way.
pub fn cpu_memory_budget(given: Option<usize>) -> Result<usize> {
    if let Some(budget) = given {
        if let Some(room) = address_space_headroom()
            && budget > room
        {
            return Err(Error::Usage(format!(
                "a memory budget of {budget} bytes: the process's resource limit (ulimit -v or -d) leaves it only \
                 {room}; give at most that, or raise the limit"
            )));
        }
        return Ok(budget);
    }
    let avail = available_host_memory()
        .ok_or_else(|| Error::Usage("cannot read the available memory; give a memory budget".into()))?;
    Ok((avail / 2).min(CPU_DEFAULT_CAP))
}

/// The backend `device` and `precision` ask for, and the memory budget that goes with it; under
/// [`Device::Auto`] also why CUDA was not used, if it was not. The CPU backend refuses windows
/// whose buffers exceed the budget less the weights, as a device would.
pub fn choose_backend(
    device: Device,
    precision: Precision,
    budget: Option<usize>,
    threads: Option<usize>,
    model: &Model,
) -> Result<(Box<dyn Backend>, usize, Option<String>)> {
    let margin = |avail: usize| avail.saturating_sub((avail / 10).max(256 << 20));
    let cuda = |ordinal: usize| -> Result<(Box<dyn Backend>, usize)> {
        let backend = CudaBackend::new(ordinal, precision)?;
        let budget = budget.unwrap_or_else(|| margin(backend.info().free_bytes));
        Ok((Box::new(backend), budget))
    };
    let cpu = || -> Result<(Box<dyn Backend>, usize)> {
        if precision == Precision::F16 {
            return Err(Error::Usage("f16 needs the CUDA backend; the CPU computes in f32 or bf16".into()));
        }
        let budget = cpu_memory_budget(budget)?;
        let limit = budget.saturating_sub(CpuMemory::of(precision).weight_bytes(&model.graph));
        let backend = CpuBackend::with_limit(Some(limit)).with_precision(precision)?;
        let backend = match threads {
            Some(n) => backend.with_threads(n)?,
            None => backend,
        };
        Ok((Box::new(backend), budget))
    };
    match device {
        Device::Cuda(ordinal) => cuda(ordinal).map(|(b, m)| (b, m, None)),
        Device::Cpu => cpu().map(|(b, m)| (b, m, None)),
        // bf16 is a CPU arithmetic: no GPU to try first.
        Device::Auto if precision == Precision::Bf16 => cpu().map(|(b, m)| (b, m, None)),
        Device::Auto => match cuda(0) {
            Ok((b, m)) => Ok((b, m, None)),
            Err(e) => {
                let why = match e {
                    Error::Backend(msg) => msg,
                    other => other.to_string(),
                };
                cpu().map(|(b, m)| (b, m, Some(why)))
            }
        },
    }
}

impl Engine {
    /// Load a model file (or a preset name, with random weights) and start its backend.
    pub fn open(model: impl AsRef<Path>, options: &Options) -> Result<Engine> {
        Engine::new(Model::open(&model.as_ref().to_string_lossy())?, options)
    }

    /// Start a backend for `model`.
    pub fn new(model: Model, options: &Options) -> Result<Engine> {
        if let Some(n) = options.threads
            && !(1..=1024).contains(&n)
        {
            return Err(Error::Usage(format!("{n} threads: give 1 to 1024")));
        }
        let (backend, budget, cuda_skipped) =
            choose_backend(options.device, options.precision, options.memory_budget, options.threads, &model)?;
        Ok(Engine { model, backend, budget, cuda_skipped })
    }

    /// The model: its channels, classes, halo and configuration.
    pub fn model(&self) -> &Model {
        &self.model
    }

    /// The backend's name, e.g. "cpu (8 threads)".
    pub fn backend_name(&self) -> String {
        self.backend.name()
    }

    /// Why CUDA was not used under [`Device::Auto`], if it was not.
    pub fn cuda_skipped(&self) -> Option<&str> {
        self.cuda_skipped.as_deref()
    }

    /// Bytes the runs may use.
    pub fn memory_budget(&self) -> usize {
        self.budget
    }

    /// The tile (rows, columns) the planner picks for an image of `h x w` under the budget: the
    /// smallest within [`crate::planner::AUTO_COMPUTE_SLACK`] of the least compute among those
    /// that fit, as `seamless infer --tile auto`.
    pub fn tile_for(&self, h: usize, w: usize) -> Result<(usize, usize)> {
        let choice = TilePlanner::new(&self.model, h, w, self.backend.memory())?.choose_auto(self.budget)?.choice;
        Ok((choice.tile_h, choice.tile_w))
    }

    /// Softmax probabilities (classes x H x W) of an image held in memory (channels x H x W, raw
    /// values), z-scored over the whole image as `seamless infer` does by default, in the tiles
    /// `seamless infer --tile auto` picks for the budget, with the exact halo. `progress` hears of each tile; `cancel` stops
    /// the run with [`Error::Cancelled`].
    pub fn segment(
        &self,
        image: &Tensor,
        progress: &mut dyn FnMut(&Progress),
        cancel: Option<&Cancel>,
    ) -> Result<Tensor> {
        self.segment_with(image, &NormSpec::new(Normalize::Zscore), progress, cancel)
    }

    /// [`Engine::segment`] with another normalisation.
    pub fn segment_with(
        &self,
        image: &Tensor,
        norm: &NormSpec,
        progress: &mut dyn FnMut(&Progress),
        cancel: Option<&Cancel>,
    ) -> Result<Tensor> {
        // Normalised a window at a time by the runner: no normalised copy of the whole image.
        let stats = normalize::statistics_spec(image, norm)?;
        let tile = self.tile_for(image.h, image.w)?;
        let tiling = Tiling::Tiles { tile, halo: self.model.exact_halo() };
        crate::pipeline::infer_normalising(
            self.backend.as_ref(),
            &self.model,
            image,
            &stats,
            PadMode::Zero,
            tiling,
            &mut |p| progress(&p),
            cancel,
        )
    }

    /// Segment the image `input` (a TIFF, OME-Zarr, .npy or PNG file, or `synth:WxH`) into the
    /// file `output` (its format from its extension), streamed a tile at a time with the exact halo
    /// in the tiles `--tile auto` picks for the budget: what `seamless infer` does. `kind` says labels or
    /// probabilities; an existing output is replaced only with `overwrite`.
    pub fn run_file(
        &self,
        input: &str,
        output: &Path,
        kind: OutputKind,
        overwrite: bool,
        progress: &mut dyn FnMut(&Progress),
        cancel: Option<&Cancel>,
    ) -> Result<Summary> {
        let format = crate::slide::format_of(output).ok_or_else(|| Error::Output {
            path: output.to_path_buf(),
            msg: "unknown format (.tif, .zarr, .npy, .png)".into(),
        })?;
        let existing = if overwrite { crate::output::Existing::Replace } else { crate::output::Existing::Refuse };
        crate::output::check_destination(output, format == Format::Zarr, existing, &[("input", Path::new(input))])?;
        let src = crate::slide::open_source(input, None)?;
        let (h, w, _) = src.shape();
        let mut tile = self.tile_for(h, w)?;
        if format == Format::Tiff {
            // Output TIFF tiles are multiples of 16.
            let planner = TilePlanner::new(&self.model, h, w, self.backend.memory())?.with_multiple(16);
            let c = planner.choose_auto(self.budget)?.choice;
            tile = (c.tile_h, c.tile_w);
        }
        let mut opts = StreamOptions::new(format, tile, self.model.exact_halo());
        opts.kind = kind;
        opts.existing = existing;
        opts.input_id = crate::slide::input_identity(input)?;
        opts.recheck_input = Some(input.to_string());
        stream::run(src, &self.model, self.backend.as_ref(), output, &opts, &mut |p| progress(&p), &mut |_| {}, cancel)
    }
}
