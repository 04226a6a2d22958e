//! Argument parsing (clap) and the subcommands.

mod bench;
mod demo;
mod doctor;
mod erf;
mod infer;
mod info;
mod plan;
mod progress;
mod sweep;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use seamless::error::{Error, Result};
use seamless::model::ModelConfig;
use seamless::model::file::save_random;

const EXIT_CODES: &str = "\
Exit codes: 0 success; 2 bad arguments or tiling parameters;
3 bad or untileable model; 4 bad input image; 5 output could not be written; 6 backend unavailable;
101 internal error (a bug in seamless: please report it).";

/// `seamless --version`: the release, the commit it was built from, and the numerics revision
/// (which bits its kernels compute: runs of one output must share it, see `seamless::numerics`).
static VERSION: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "{} (commit {}, numerics revision {})",
        env!("CARGO_PKG_VERSION"),
        env!("SEAMLESS_GIT_COMMIT"),
        seamless::numerics::REVISION
    )
});

#[derive(Parser)]
#[command(
    name = "seamless",
    version = VERSION.as_str(),
    about = "Exact tile-based segmentation inference for images larger than device memory",
    long_about = "Runs fully convolutional segmentation networks (U-Net, FC-DenseNet) on images of any \
size by tiling, with a halo derived from the network's receptive field, so that the stitched output \
is bit-identical to running the network on the whole image at once.",
    after_help = EXIT_CODES
)]
struct Cli {
    /// Worker threads for the CPU backend, 1 to 1024 (default: all cores).
    #[arg(long, global = true, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=1024))]
    threads: Option<usize>,
    /// Where stderr is not a terminal (a batch job, a Slurm log), print a progress line every
    /// SECONDS instead of a progress bar, and a last line when a phase ends (0: at every step).
    /// Default 30, or SEAMLESS_LOG_INTERVAL.
    #[arg(long, global = true, value_name = "SECONDS", value_parser = |s: &str| progress::parse_interval("--log-interval", s))]
    log_interval: Option<f64>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Segment the shipped synthetic slide with the shipped U-Net: the quickest way to see it work.
    Demo(demo::DemoArgs),
    /// Segment an image (exact tiled inference, or --whole for the reference run).
    Infer(infer::InferArgs),
    /// Describe a model: layers, parameters, FLOP per pixel, receptive field, alignment, exact halo.
    Info(info::InfoArgs),
    /// Tile size, halo, peak memory and overhead for several memory budgets.
    Plan(plan::PlanArgs),
    /// Time forward passes on one window: Mpx/s and GFLOP/s per layer and for the whole network.
    Bench(bench::BenchArgs),
    /// Generate a synthetic cell image and its ground-truth mask (.npy or .png).
    Synth(SynthArgs),
    /// Write a model file with seeded random weights for an architecture (testing, benchmarking).
    RandomModel(RandomModelArgs),
    /// Check the GPU setup: driver, NVRTC, device and memory; compile every kernel; a smoke test.
    Doctor(doctor::DoctorArgs),
    /// Error of tiled vs whole-image inference as the halo shrinks or tile origins leave the A grid.
    Sweep(sweep::SweepArgs),
    /// Empirical effective receptive field (by perturbation) next to the theoretical one.
    Erf(erf::ErfArgs),
}

#[derive(clap::Args)]
struct SynthArgs {
    /// Width in pixels.
    #[arg(long, default_value_t = 1024)]
    width: usize,
    /// Height in pixels.
    #[arg(long, default_value_t = 1024)]
    height: usize,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Where to write the image (uint8): .tif (tiled BigTIFF), .zarr, .npy or .png. Generated in
    /// bands, so any size fits in memory (except PNG).
    #[arg(long)]
    image: PathBuf,
    /// Where to write the mask (uint8, 0 background / 1 cell).
    #[arg(long)]
    labels: Option<PathBuf>,
    /// Replace --image and --labels if they exist (a Zarr store only by a Zarr store).
    #[arg(long)]
    overwrite: bool,
    /// No progress.
    #[arg(long, short)]
    quiet: bool,
}

#[derive(clap::Args)]
struct RandomModelArgs {
    /// A preset: unet-64, unet-F[-dD], fcdensenet-56, fcdensenet-67, fcdensenet-103.
    #[arg(long, conflicts_with_all = ["arch", "config"])]
    preset: Option<String>,
    /// Architecture (with --config): unet or fcdensenet.
    #[arg(long, requires = "config")]
    arch: Option<String>,
    /// Configuration as JSON (see docs/model-format.md).
    #[arg(long, requires = "arch")]
    config: Option<String>,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Store weights as float16.
    #[arg(long)]
    f16: bool,
    /// Output .safetensors file.
    #[arg(long)]
    out: PathBuf,
    /// Replace --out if it exists.
    #[arg(long)]
    overwrite: bool,
}

pub fn main() -> i32 {
    ignore_file_size_signal();
    // Negative numbers reach the value parsers, which say what is expected ("--halo -8" was
    // "unexpected argument '-8'").
    let command = <Cli as clap::CommandFactory>::command().mut_subcommands(|s| s.allow_negative_numbers(true));
    let parsed = command.try_get_matches().and_then(|m| <Cli as clap::FromArgMatches>::from_arg_matches(&m));
    let cli = match parsed {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { 2 } else { 0 };
            let _ = e.print();
            return code;
        }
    };
    let interval = match (cli.log_interval, std::env::var("SEAMLESS_LOG_INTERVAL")) {
        (Some(v), _) => v,
        (None, Ok(v)) => match progress::parse_interval("SEAMLESS_LOG_INTERVAL", &v) {
            Ok(v) => v,
            Err(e) => {
                eprintln!("error: {e}");
                return 2;
            }
        },
        (None, Err(_)) => progress::DEFAULT_LOG_INTERVAL,
    };
    progress::set_log_interval(interval);
    if let Some(n) = cli.threads {
        let _ = rayon::ThreadPoolBuilder::new().num_threads(n.max(1)).build_global();
    }
    let result = match cli.command {
        Command::Demo(a) => demo::run(a),
        Command::Infer(a) => infer::run(a),
        Command::Info(a) => info::run(a),
        Command::Plan(a) => plan::run(a),
        Command::Bench(a) => bench::run(a),
        Command::Synth(a) => synth(a),
        Command::RandomModel(a) => random_model(a),
        Command::Doctor(a) => doctor::run(a),
        Command::Sweep(a) => sweep::run(a),
        Command::Erf(a) => erf::run(a),
    };
    match result {
        Ok(()) => 0,
        // Only `infer` is cancelled (by Ctrl-C), and it has said what was kept and how to resume.
        Err(e @ Error::Cancelled) => e.exit_code(),
        Err(e) => {
            eprintln!("error: {e}");
            e.exit_code()
        }
    }
}

/// Generated band by band, so a slide of any size streams to TIFF, OME-Zarr or .npy.
fn synth(a: SynthArgs) -> Result<()> {
    use seamless::output::{Existing, check_destination};
    use seamless::slide::{Format, OutSpec, OutType, format_of, stream::write_bands};
    if a.width == 0 || a.height == 0 {
        return Err(Error::Usage("--width and --height must be at least 1".into()));
    }
    let spec =
        OutSpec { height: a.height, width: a.width, channels: 1, out: OutType::U8, chunk: 256, pixel_size: None };
    let existing = if a.overwrite { Existing::Replace } else { Existing::Refuse };
    let outputs: Vec<(&PathBuf, bool)> =
        std::iter::once((&a.image, false)).chain(a.labels.iter().map(|l| (l, true))).collect();
    let mut formats = Vec::new();
    for &(path, _) in &outputs {
        let format = format_of(path).ok_or_else(|| Error::Output {
            path: path.clone(),
            msg: "unknown format (use .tif, .zarr, .npy or .png)".into(),
        })?;
        if let Some(l) = &a.labels
            && seamless::output::same_file(&a.image, l)
        {
            return Err(Error::Usage("--image and --labels name the same file".into()));
        }
        check_destination(path, format == Format::Zarr, existing, &[])?;
        formats.push(format);
    }
    for (&(path, want_labels), format) in outputs.iter().zip(formats) {
        let (w, h, seed) = (a.width, a.height, a.seed);
        let label = format!("synth {}", path.display());
        let mut meter = progress::Meter::new(&label, "rows", h, (w * h) as f64, std::time::Instant::now(), a.quiet);
        let mut band = |y0: usize, rows: usize| -> Result<seamless::Tensor> {
            meter.update(y0, (y0 * w) as f64);
            let (img, lab) = seamless::synth::generate(seed, 0, y0 as i64, w, rows);
            let v = if want_labels { lab } else { img };
            Ok(seamless::Tensor::from_vec(1, rows, w, v.into_iter().map(f32::from).collect()))
        };
        match format {
            Format::Png => {
                let t = band(0, h)?;
                let bytes: Vec<u8> = t.data.iter().map(|&v| v as u8).collect();
                write_u8_image(path, w, h, &bytes)?;
            }
            _ => write_bands(path, format, spec, &mut band)?,
        }
        meter.update(h, (w * h) as f64);
        meter.finish();
    }
    Ok(())
}

/// `flag` (`--tile`, `--window`) read HxW before sizes were WxH everywhere: say how a non-square
/// size is read now, as it would otherwise be transposed silently.
pub(crate) fn warn_size_order(flag: &str, given: &str, size: seamless::tile_grid::Size, quiet: bool) {
    if !size.is_square() && !quiet {
        eprintln!(
            "warning: {flag} {given} is read as width {} x height {} (WxH, as every size in seamless; \
             earlier versions read {flag} as height x width)",
            size.width, size.height
        );
    }
}

/// A single-channel u8 image as .npy (H, W) or greyscale .png.
pub(crate) fn write_u8_image(path: &std::path::Path, w: usize, h: usize, data: &[u8]) -> Result<()> {
    use seamless::image_io::{save_npy, save_png_labels};
    use seamless::slide::{Format, format_of};
    match format_of(path) {
        Some(Format::Npy) => save_npy(path, &[h as u64, w as u64], data.iter().copied()),
        Some(Format::Png) => {
            let t = seamless::Tensor::from_vec(1, h, w, data.iter().map(|&v| v as f32).collect());
            save_png_labels(path, &t, false)
        }
        _ => Err(Error::Output { path: path.to_path_buf(), msg: "unknown format (use .npy or .png)".into() }),
    }
}

fn random_model(a: RandomModelArgs) -> Result<()> {
    use seamless::output::{Existing, check_destination};
    let config = match (&a.preset, &a.arch, &a.config) {
        (Some(p), _, _) => ModelConfig::preset(p).ok_or_else(|| {
            Error::Usage(format!("unknown preset '{p}' (unet-64, unet-F[-dD], fcdensenet-56/67/103)"))
        })?,
        (None, Some(arch), Some(cfg)) => ModelConfig::parse(arch, cfg)?,
        _ => return Err(Error::Usage("give --preset, or --arch with --config".into())),
    };
    let existing = if a.overwrite { Existing::Replace } else { Existing::Refuse };
    check_destination(&a.out, false, existing, &[])?;
    save_random(&config, a.seed, a.f16, &a.out, &format!("random weights, seed {}", a.seed))?;
    eprintln!("wrote {} ({} {})", a.out.display(), config.architecture(), config.config_json());
    Ok(())
}

/// A write past a file-size limit (`ulimit -f`) should fail like a full disk — an error the run
/// reports, leaving a resumable partial output — instead of killing the process with SIGXFSZ.
fn ignore_file_size_signal() {
    // SAFETY: setting a signal's disposition to SIG_IGN at start-up, before any threads exist.
    unsafe {
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
    }
}
