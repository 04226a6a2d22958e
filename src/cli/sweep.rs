//! `seamless sweep`: how far tiled inference is from the whole-image run when the halo is too
//! small or the tile origins are off the A grid (the NIST paper's experiment, on your model).

use std::path::{Path, PathBuf};

use seamless::cpu::CpuBackend;
use seamless::error::{Error, Result};
use seamless::normalize::{self, Normalize};
use seamless::output::AtomicFile;
use seamless::pipeline::PadMode;
use seamless::sweep::{self, Sweep, SweepSpec};
use seamless::{Model, Tensor};

use super::infer::parse_tile_fixed as parse_tile;
use super::progress::Meter;

#[derive(clap::Args)]
#[command(after_help = "Examples:
  seamless sweep --model unet-64 --synth 256x1024 --tile 128 --halos 0:exact:16
  seamless sweep --model models/unet-demo.safetensors --input cells.png --halos exact --offsets 0,1,4,8,16 \\
      --csv offsets.csv --plot offsets.png")]
pub struct SweepArgs {
    /// Model file (.safetensors) or a preset name (random weights).
    #[arg(long)]
    pub model: String,
    #[command(flatten)]
    pub image: ImageArgs,
    /// Output tile size: N (square) or WxH (width x height). Any size; multiples of A keep the
    /// origins aligned. Default: 4·A, shrunk to the image.
    #[arg(long)]
    pub tile: Option<String>,
    /// Halos to try: comma-separated numbers, `exact`, or ranges lo:hi[:step] (hi may be `exact`,
    /// step defaults to A). Halos that are not multiples of A shift the windows off the A grid.
    #[arg(long, default_value = "0:exact")]
    pub halos: String,
    /// Offsets of the tile origins in pixels (both axes), as a list or ranges lo:hi[:step].
    /// Offsets that are not multiples of A break the alignment rule.
    #[arg(long, default_value = "0")]
    pub offsets: String,
    /// How the image is padded to a multiple of A (the same for tiled and whole runs).
    #[arg(long, value_enum, default_value_t = PadMode::Zero)]
    pub pad: PadMode,
    /// Write the table as CSV.
    #[arg(long)]
    pub csv: Option<PathBuf>,
    /// Write a PNG plot of the error against the halo (or the offset).
    #[arg(long)]
    pub plot: Option<PathBuf>,
    /// Print the result as JSON instead of the table.
    #[arg(long)]
    pub json: bool,
    /// No progress bar or notes.
    #[arg(long, short)]
    pub quiet: bool,
}

/// Where the image comes from, and how it is normalised (shared by `sweep` and `erf`).
#[derive(clap::Args)]
pub struct ImageArgs {
    /// Input image: .npy (H,W) or (H,W,C), or .png.
    #[arg(long, conflicts_with = "synth")]
    pub input: Option<PathBuf>,
    /// Generate a synthetic cell image of WxH pixels (width x height; the channel is repeated to
    /// the model's input channels) when no --input is given.
    #[arg(long, value_name = "WxH")]
    pub synth: Option<String>,
    /// Fill the synthetic image with standard-normal noise (every channel) instead of cells: what
    /// a z-scored image looks like to a model with random weights.
    #[arg(long, conflicts_with = "input")]
    pub noise: bool,
    /// Seed of the synthetic image.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Global input normalisation, computed over the whole image.
    #[arg(long, value_enum, default_value_t = Normalize::Zscore)]
    pub normalize: Normalize,
}

/// `--synth WxH` (or N): at most 2^28 pixels, as the image is held whole.
fn parse_synth(s: &str) -> Result<(usize, usize)> {
    let size = seamless::tile_grid::parse_size("--synth", s)?;
    if size.width.saturating_mul(size.height) > 1 << 28 {
        return Err(Error::Usage(format!("--synth {s}: at most 2^28 pixels (the image is held in memory)")));
    }
    Ok((size.width, size.height))
}

/// The normalised image the command runs on, and a description of it.
pub fn load_image(a: &ImageArgs, model: &Model, default_synth: &str) -> Result<(Tensor, String)> {
    let (mut img, what) = match &a.input {
        Some(p) => {
            let img = seamless::slide::read_image(&p.to_string_lossy())?;
            if img.c != model.in_channels() {
                return Err(Error::Input {
                    path: p.clone(),
                    msg: format!("has {} channel(s), the model expects {}", img.c, model.in_channels()),
                });
            }
            (img, p.display().to_string())
        }
        None => {
            let spec = a.synth.as_deref().unwrap_or(default_synth);
            let (w, h) = parse_synth(spec)?;
            let c = model.in_channels();
            if a.noise {
                let mut rng = seamless::model::weights::SplitMix64(a.seed);
                let data = (0..c * h * w).map(|_| rng.normal() as f32).collect();
                (Tensor::from_vec(c, h, w, data), format!("standard-normal noise {w}x{h} (seed {})", a.seed))
            } else {
                let (raw, _) = seamless::synth::generate(a.seed, 0, 0, w, h);
                let data = (0..c).flat_map(|_| raw.iter().map(|&v| v as f32)).collect();
                (Tensor::from_vec(c, h, w, data), format!("synthetic cells {w}x{h} (seed {})", a.seed))
            }
        }
    };
    let stats = normalize::statistics(&img, a.normalize);
    normalize::apply(&mut img, &stats);
    Ok((img, what))
}

/// Write text atomically (no half-written file under the final name).
pub fn write_text(path: &Path, text: &str) -> Result<()> {
    let mut f = AtomicFile::create(path)?;
    f.write_all(text.as_bytes())?;
    f.commit()
}

/// Run `f` with progress counting `unit` (a bar on a terminal, log lines elsewhere, nothing with
/// --quiet).
pub fn with_progress<T>(
    unit: &'static str,
    quiet: bool,
    f: impl FnOnce(&mut dyn FnMut(usize, usize)) -> Result<T>,
) -> Result<T> {
    let mut meter: Option<Meter> = None;
    let start = std::time::Instant::now();
    let out = f(&mut |done, total| {
        meter.get_or_insert_with(|| Meter::new(unit, unit, total, 0.0, start, quiet)).update(done, 0.0);
    });
    if let Some(m) = meter {
        if out.is_ok() { m.finish() } else { m.clear() }
    }
    out
}

pub fn default_tile(model: &Model, h: usize, w: usize) -> (usize, usize) {
    let a = model.align();
    let t = 4 * a;
    (t.min(seamless::tile_grid::round_up(h, a)), t.min(seamless::tile_grid::round_up(w, a)))
}

pub fn print_table(s: &Sweep) {
    println!(
        "{:>6} {:>6} {:>8} {:>9} {:>6} {:>10} {:>11} {:>11} {:>11} {:>10} {:>8}",
        "halo",
        "offset",
        "aligned",
        "win_grid",
        "tiles",
        "overhead",
        "max_abs",
        "rmse",
        "labels_chg",
        "labels_%",
        "time_x"
    );
    for p in &s.points {
        let e = &p.error;
        println!(
            "{:>6} {:>6} {:>8} {:>9} {:>6} {:>9.2}x {:>11.3e} {:>11.3e} {:>11} {:>10.4} {:>7.2}x{}",
            p.halo,
            p.offset,
            if p.aligned { "yes" } else { "no" },
            if p.windows_on_grid { "yes" } else { "no" },
            p.tiles,
            p.overhead,
            e.max_abs,
            e.rmse,
            e.changed_labels,
            100.0 * e.label_fraction,
            p.seconds / s.whole_seconds.max(1e-9),
            if e.is_exact() { "  bit-exact" } else { "" }
        );
    }
}

pub fn run(a: SweepArgs) -> Result<()> {
    let model = Model::open(&a.model)?;
    let halos = sweep::parse_halos(&a.halos, &model)?;
    let offsets = sweep::parse_offsets(&a.offsets)?;
    if let Some(p) = &a.plot {
        seamless::plot::check_png_path(p)?;
    }
    if let Some(p) = &a.csv {
        seamless::plot::check_parent(p)?;
    }
    let (img, what) = load_image(&a.image, &model, "256x256")?;
    let tile = match &a.tile {
        Some(t) => parse_tile("--tile", t, &model, img.h, img.w, a.quiet)?,
        None => default_tile(&model, img.h, img.w),
    };
    let spec = SweepSpec { tile_h: tile.0, tile_w: tile.1, halos, offsets, pad: a.pad };
    if !a.quiet {
        eprintln!(
            "model: {} (A = {}, exact halo {}); image: {what}; tiles {}x{}; {} configuration(s)",
            model.origin,
            model.align(),
            model.exact_halo(),
            tile.1,
            tile.0,
            spec.halos.len() * spec.offsets.len()
        );
    }
    let s =
        with_progress("tiles", a.quiet, |progress| sweep::run(&CpuBackend::default(), &model, &img, &spec, progress))?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&s).expect("serialisable"));
    } else {
        print_table(&s);
        if !a.quiet {
            eprintln!("whole-image reference: {:.2} s; time_x = tiled time / whole time", s.whole_seconds);
        }
    }
    if let Some(p) = &a.csv {
        write_text(p, &s.to_csv())?;
    }
    if let Some(p) = &a.plot {
        let title = format!("tiled vs whole-image error: {}", model.origin);
        seamless::plot::plot_sweep(&s, p, &title)?;
    }
    Ok(())
}
