//! `seamless infer`: one image through one model, tiled or whole.

use std::path::PathBuf;
use std::time::Instant;

use seamless::backend::CpuBackend;
use seamless::error::{Error, Result};
use seamless::image_io::{Sink, read_image};
use seamless::normalize::{self, Normalize};
use seamless::pipeline::{self, PadMode};
use seamless::planner::tile_plan::{available_host_memory, parse_bytes};
use seamless::planner::{MemoryModel, Precision, TilePlanner};
use seamless::tile_grid::{TileGrid, round_up};

use super::plan::human;
use seamless::{Model, Tensor};

#[derive(clap::Args)]
pub struct InferArgs {
    /// Model file (.safetensors, see docs/model-format.md) or a preset name (random weights).
    #[arg(long)]
    pub model: String,
    /// Input image: .npy (H,W) or (H,W,C), or .png.
    #[arg(long)]
    pub input: PathBuf,
    /// Output: labels as .npy (uint8/uint16) or .png; probabilities as .npy float32 (H,W,classes).
    #[arg(long)]
    pub output: PathBuf,
    /// Output tile size: N (square), HxW, or auto. Must be a multiple of the model's
    /// down-sampling factor A (see `seamless info`).
    #[arg(long, default_value = "auto")]
    pub tile: String,
    /// Memory the run may use (e.g. 4GiB, 512MiB); `--tile auto` picks the largest tile that fits.
    /// Default: the memory available now minus 10% (at least 256 MiB).
    #[arg(long)]
    pub memory_budget: Option<String>,
    /// Halo around each tile: `exact` (from the receptive field) or a number of pixels (a
    /// multiple of A; below the exact halo the output is no longer exact).
    #[arg(long, default_value = "exact")]
    pub halo: String,
    /// Run the network on the whole image at once (the reference tiled runs must equal).
    #[arg(long)]
    pub whole: bool,
    /// Compute backend. `auto` uses CUDA when available, else the CPU.
    #[arg(long, value_enum, default_value_t = Backend::Auto)]
    pub backend: Backend,
    /// Write class labels (argmax) or per-class probabilities.
    #[arg(long, value_enum, default_value_t = OutputKind::Labels)]
    pub output_kind: OutputKind,
    /// Global input normalisation, computed over the whole image.
    #[arg(long, value_enum, default_value_t = Normalize::Zscore)]
    pub normalize: Normalize,
    /// How the image is padded to a multiple of A (the same for tiled and whole runs).
    #[arg(long, value_enum, default_value_t = PadMode::Zero)]
    pub pad: PadMode,
    /// No progress bar or summary.
    #[arg(long, short)]
    pub quiet: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Backend {
    Auto,
    Cpu,
    Cuda,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputKind {
    Labels,
    Probs,
}

/// The memory budget: `--memory-budget`, or the memory available now minus a margin of 10%
/// (at least 256 MiB) for the image, the output and everything else the process holds.
pub fn memory_budget(arg: Option<&str>) -> Result<usize> {
    if let Some(s) = arg {
        return parse_bytes(s);
    }
    let avail = available_host_memory()
        .ok_or_else(|| Error::Usage("cannot read the available memory; give --memory-budget".into()))?;
    Ok(avail.saturating_sub((avail / 10).max(256 << 20)))
}

/// Tile size to use when the user says `auto`: the largest that fits the budget (the planner).
pub fn auto_tile(model: &Model, h: usize, w: usize, budget: usize, quiet: bool) -> Result<(usize, usize)> {
    let choice = TilePlanner::new(model, h, w, Precision::F32, MemoryModel::Cpu)?.choose(budget)?;
    if !quiet {
        eprintln!(
            "plan: tile {}x{} (window {}x{}), peak {} of a {} budget, {} tile(s), halo overhead {:.2}x",
            choice.tile_w,
            choice.tile_h,
            choice.window_w,
            choice.window_h,
            human(choice.peak.total()),
            human(budget),
            choice.tiles,
            choice.relative_compute
        );
    }
    Ok((choice.tile_h, choice.tile_w))
}

pub fn parse_tile(s: &str, model: &Model, h: usize, w: usize, budget: usize, quiet: bool) -> Result<(usize, usize)> {
    if s == "auto" {
        return auto_tile(model, h, w, budget, quiet);
    }
    let num =
        |v: &str| v.trim().parse::<usize>().map_err(|_| Error::Usage(format!("--tile '{s}': expected N, HxW or auto")));
    match s.split_once('x') {
        Some((th, tw)) => Ok((num(th)?, num(tw)?)),
        None => {
            let t = num(s)?;
            Ok((t, t))
        }
    }
}

pub fn parse_halo(s: &str, model: &Model) -> Result<usize> {
    if s == "exact" {
        return Ok(model.exact_halo());
    }
    s.parse().map_err(|_| Error::Usage(format!("--halo '{s}': expected a number of pixels or 'exact'")))
}

/// Resolve `--backend`. The CUDA backend is not part of this build yet.
pub fn select_backend(b: Backend, quiet: bool) -> Result<()> {
    match b {
        Backend::Cpu => Ok(()),
        Backend::Cuda => Err(Error::Backend("this build has no CUDA backend yet; use --backend cpu (or auto)".into())),
        Backend::Auto => {
            if !quiet {
                eprintln!("backend: cpu (this build has no CUDA backend yet)");
            }
            Ok(())
        }
    }
}

pub fn progress_bar(total: usize, quiet: bool) -> indicatif::ProgressBar {
    if quiet {
        return indicatif::ProgressBar::hidden();
    }
    let pb = indicatif::ProgressBar::new(total as u64);
    pb.set_style(
        indicatif::ProgressStyle::with_template("{elapsed_precise} [{bar:40}] {pos}/{len} tiles  {per_sec}  ETA {eta}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    pb
}

/// The probabilities for `img` (already normalised), tiled or whole, with progress. Windows whose
/// buffers would exceed the budget (after the weights) are refused by the backend and retried as
/// smaller tiles.
#[allow(clippy::too_many_arguments)]
pub fn compute(
    model: &Model,
    img: &Tensor,
    whole: bool,
    tile: (usize, usize),
    halo: usize,
    pad: PadMode,
    budget: usize,
    quiet: bool,
) -> Result<Tensor> {
    if whole {
        return pipeline::infer_whole(model, img, pad);
    }
    let backend = CpuBackend::with_limit(Some(budget.saturating_sub(model.graph.params() * 4)));
    let al = model.align();
    let grid = TileGrid::new(round_up(img.h, al), round_up(img.w, al), tile.0, tile.1, halo, al)?;
    let mut pb: Option<indicatif::ProgressBar> = None;
    let mut notes = Vec::new();
    let out = pipeline::infer_grid_with(
        &backend,
        model,
        img,
        pad,
        &grid,
        &mut |done, total| {
            let bar = pb.get_or_insert_with(|| progress_bar(total, quiet));
            bar.set_length(total as u64);
            bar.set_position(done as u64);
        },
        &mut |note| notes.push(note.to_string()),
    )?;
    if !quiet {
        for n in &notes {
            eprintln!("warning: {n}");
        }
    }
    if let Some(bar) = pb {
        bar.finish_and_clear();
    }
    Ok(out)
}

pub fn run(a: InferArgs) -> Result<()> {
    select_backend(a.backend, a.quiet)?;
    let model = Model::open(&a.model)?;
    let probs_out = a.output_kind == OutputKind::Probs;
    // Opened first: an unwritable output fails before any work is done.
    let sink = Sink::create(&a.output, probs_out)?;
    let mut img = read_image(&a.input)?;
    if img.c != model.in_channels() {
        return Err(Error::Input {
            path: a.input.clone(),
            msg: format!("has {} channel(s), the model expects {}", img.c, model.in_channels()),
        });
    }
    let stats = normalize::statistics(&img, a.normalize);
    normalize::apply(&mut img, &stats);
    let budget = memory_budget(a.memory_budget.as_deref())?;
    let tile = if a.whole { (0, 0) } else { parse_tile(&a.tile, &model, img.h, img.w, budget, a.quiet)? };
    let halo = parse_halo(&a.halo, &model)?;
    let a_ = model.align();
    // Validate the grid before the long computation.
    if !a.whole {
        seamless::tile_grid::TileGrid::new(round_up(img.h, a_), round_up(img.w, a_), tile.0, tile.1, halo, a_)?;
        if halo < model.exact_halo() && !a.quiet {
            eprintln!(
                "warning: halo {halo} is below the exact halo {}; the output will differ from the whole-image run",
                model.exact_halo()
            );
        }
    }
    let t0 = Instant::now();
    let probs = compute(&model, &img, a.whole, tile, halo, a.pad, budget, a.quiet)?;
    let secs = t0.elapsed().as_secs_f64();
    if probs_out {
        sink.write_probs(&probs)?;
    } else {
        sink.write_labels(&pipeline::labels(&probs), model.classes())?;
    }
    if !a.quiet {
        let mpx = (img.h * img.w) as f64 / 1e6;
        let how = if a.whole { "whole image".to_string() } else { format!("tiles {}x{}, halo {halo}", tile.0, tile.1) };
        eprintln!(
            "{}x{} px, {how}: {secs:.2} s, {:.3} Mpx/s -> {}",
            img.w,
            img.h,
            mpx / secs.max(1e-9),
            a.output.display()
        );
    }
    Ok(())
}
