//! `seamless demo`: a generated slide through the shipped U-Net, exact tiled inference, outputs
//! and a preview with the mask overlaid.

use std::path::{Path, PathBuf};
use std::time::Instant;

use seamless::Tensor;
use seamless::error::{Error, Result, Side};
use seamless::image_io::save_rgb_png;
use seamless::normalize::{self, Normalize};
use seamless::pipeline::{self, PadMode};
use seamless::tile_grid::{TileGrid, round_up};

use seamless::cuda::Precision;

use super::infer::{Backend, compute, parse_tile, select_backend};

/// The demo U-Net, trained by tools/train_demo.py (see models/README.md).
pub const DEMO_UNET: &[u8] = include_bytes!("../../models/unet-demo.safetensors");

#[derive(clap::Args)]
pub struct DemoArgs {
    /// Side of the generated square slide, in pixels.
    #[arg(long, default_value_t = 4096)]
    size: usize,
    /// Seed of the generated slide.
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// Folder for slide.png, labels.png and preview.png (created if missing).
    #[arg(long, default_value = "seamless-demo")]
    out_dir: PathBuf,
    /// A model file to use instead of the built-in demo U-Net (one input channel).
    #[arg(long)]
    model: Option<PathBuf>,
    /// Tile size: N, WxH (width x height) or auto.
    #[arg(long, default_value = "auto")]
    tile: String,
    /// Memory the run may use; `--tile auto` picks among the tiles that fit it (see `seamless infer
    /// --help`). The small default makes the demo tile even on a large machine.
    #[arg(long, default_value = "256MiB")]
    memory_budget: String,
    /// Compute backend. `auto` uses CUDA when a GPU and NVRTC are found, else the CPU (and says why).
    #[arg(long, value_enum, default_value_t = Backend::Auto)]
    backend: Backend,
    /// Arithmetic: f32; f16 on the GPU (tensor cores); bf16 on the CPU.
    #[arg(long, value_enum, default_value_t = Precision::F32)]
    precision: Precision,
    /// CUDA device number (see `seamless doctor`).
    #[arg(long, default_value_t = 0)]
    device: usize,
    /// No progress bar.
    #[arg(long, short)]
    quiet: bool,
}

pub fn run(a: DemoArgs) -> Result<()> {
    if a.size == 0 {
        return Err(Error::Usage("--size must be at least 1".into()));
    }
    let model = match &a.model {
        Some(p) => seamless::model::file::load(p)?,
        None => seamless::model::file::load_bytes(DEMO_UNET, "built-in demo U-Net")?,
    };
    let (backend, budget) = select_backend(a.backend, a.precision, a.device, Some(&a.memory_budget), &model, a.quiet)?;
    if model.in_channels() != 1 {
        return Err(Error::Usage(format!("the demo slide has 1 channel; the model expects {}", model.in_channels())));
    }
    std::fs::create_dir_all(&a.out_dir).map_err(|e| Error::io(Side::Output, &a.out_dir, "cannot create folder", e))?;

    let n = a.size;
    eprintln!("generating a {n}x{n} synthetic slide (seed {}) ...", a.seed);
    let (raw, truth) = seamless::synth::generate(a.seed, 0, 0, n, n);
    let mut img = Tensor::from_vec(1, n, n, raw.iter().map(|&v| v as f32).collect());
    let stats = normalize::statistics(&img, Normalize::Zscore);
    normalize::apply(&mut img, &stats);

    let tile = parse_tile(&a.tile, backend.as_ref(), &model, (n, n), budget, 1, a.quiet)?;
    let halo = model.exact_halo();
    let al = model.align();
    let grid = TileGrid::new(round_up(n, al), round_up(n, al), tile.0, tile.1, halo, al)?;
    eprintln!(
        "model: {} ({} parameters), receptive field {} px, A = {al}, exact halo {halo} px",
        model.origin,
        model.params(),
        model.rf.receptive_field
    );
    eprintln!(
        "tiles: {} ({}x{} grid of {}x{}), halo overhead {:.2}x",
        grid.len(),
        grid.cols,
        grid.rows,
        tile.1,
        tile.0,
        grid.overhead()
    );
    let t0 = Instant::now();
    let probs = compute(backend.as_ref(), &model, &img, false, tile, halo, PadMode::Zero, a.quiet)?;
    let secs = t0.elapsed().as_secs_f64();
    let labels = pipeline::labels(&probs);
    let correct = labels.data.iter().zip(&truth).filter(|&(&l, &t)| l as u8 == t).count();

    let out = |name: &str| a.out_dir.join(name);
    super::write_u8_image(&out("slide.png"), n, n, &raw)?;
    let lab_u8: Vec<u8> = labels.data.iter().map(|&v| v as u8).collect();
    super::write_u8_image(&out("labels.png"), n, n, &lab_u8)?;
    write_preview(&out("preview.png"), n, &raw, &lab_u8)?;

    println!("slide            {n}x{n} px ({:.1} Mpx), seed {}", (n * n) as f64 / 1e6, a.seed);
    println!("tiles            {} of {}x{}, halo {halo} px (exact)", grid.len(), tile.1, tile.0);
    println!("time             {secs:.2} s on {}, {:.3} Mpx/s", backend.name(), (n * n) as f64 / 1e6 / secs.max(1e-9));
    println!("pixel accuracy   {:.2}% against the generator's ground truth", 100.0 * correct as f64 / (n * n) as f64);
    println!(
        "wrote            {}, {}, {}",
        out("slide.png").display(),
        out("labels.png").display(),
        out("preview.png").display()
    );
    Ok(())
}

/// The slide in grey with cells tinted, at most 2048 px on a side.
fn write_preview(path: &Path, n: usize, raw: &[u8], labels: &[u8]) -> Result<()> {
    let step = n.div_ceil(2048).max(1);
    let m = n.div_ceil(step);
    let mut rgb = Vec::with_capacity(m * m * 3);
    for y in (0..n).step_by(step) {
        for x in (0..n).step_by(step) {
            let v = raw[y * n + x] as f32;
            let px = if labels[y * n + x] > 0 { [0.6 * v + 102.0, 0.6 * v + 20.0, 0.6 * v] } else { [v, v, v] };
            rgb.extend(px.map(|c| c.clamp(0.0, 255.0) as u8));
        }
    }
    save_rgb_png(path, m, m, &rgb)
}
