//! `seamless plan`: how a model tiles an image under several memory budgets: the tile `--tile
//! auto` takes, and the largest that fits.

use seamless::Model;
use seamless::error::{Error, Result};
use seamless::planner::arena::liveness_peak;
use seamless::planner::tile_plan::parse_bytes;
use seamless::planner::{AUTO_COMPUTE_SLACK, MemoryModel, Precision, TileChoice, TilePlanner};

/// Whose memory `seamless plan` counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Memory {
    /// The CPU executor inside the streaming pipeline: arena, convolution workspace (padded
    /// input), the weights plus their copy packed for the convolution engine, and the input
    /// windows and outputs in flight between the reader, compute and writer threads.
    Cpu,
    /// The CUDA executor: the arena of the graph it runs (fused conv pre-ops split into their own
    /// nodes), its parameters as laid out on the device, and one input and one output staging
    /// buffer. Computed from the model alone: no GPU needed.
    Device,
}

impl Memory {
    pub fn model(self, precision: Precision) -> Box<dyn MemoryModel> {
        match self {
            Memory::Cpu => Box::new(seamless::cpu::CpuMemory::of(precision)),
            Memory::Device => Box::new(seamless::cuda::DeviceMemory { precision }),
        }
    }
}

#[derive(clap::Args)]
pub struct PlanArgs {
    /// A model file (.safetensors) or a preset: unet-64, unet-F[-dD], fcdensenet-56/67/103.
    model: String,
    /// Comma-separated memory budgets, e.g. 1GiB,4GiB,16GiB,80GiB.
    #[arg(long, default_value = "1GiB,4GiB,16GiB,80GiB")]
    budget: String,
    /// Image size to tile: WxH (width x height) or N (default: a 1-gigapixel slide).
    #[arg(long, default_value = "32768x32768")]
    image: String,
    /// Element size of activations and weights.
    #[arg(long, value_enum, default_value_t = Precision::F32)]
    precision: Precision,
    /// Whose memory to count: the CPU pipeline (arena + convolution workspace + weights + the
    /// windows in flight between reader, compute and writer) or the CUDA executor (the arena of
    /// the graph it runs, its device parameters, one input and one output staging buffer).
    #[arg(long, value_enum, default_value_t = Memory::Cpu)]
    memory: Memory,
    /// Machine-readable output.
    #[arg(long)]
    json: bool,
}

#[derive(serde::Serialize)]
struct Row {
    budget_bytes: usize,
    /// The tile `--tile auto` takes.
    #[serde(flatten)]
    choice: Option<TileChoice>,
    /// The largest tile that fits.
    largest: Option<TileChoice>,
    error: Option<String>,
}

/// `--image WxH` (or N).
fn parse_image(s: &str) -> Result<(usize, usize)> {
    let size = seamless::tile_grid::parse_size("--image", s)?;
    seamless::slide::check_image_size(&format!("--image {s}"), size.height, size.width)?;
    Ok((size.width, size.height))
}

pub fn human(bytes: usize) -> String {
    let b = bytes as f64;
    match b {
        _ if b >= 1024f64.powi(3) => format!("{:.2} GiB", b / 1024f64.powi(3)),
        _ if b >= 1024f64.powi(2) => format!("{:.1} MiB", b / 1024f64.powi(2)),
        _ => format!("{:.1} KiB", b / 1024.0),
    }
}

pub fn run(a: PlanArgs) -> Result<()> {
    let model = Model::open(&a.model)?;
    let (w, h) = parse_image(&a.image)?;
    let budgets: Vec<usize> = a.budget.split(',').map(parse_bytes).collect::<Result<_>>()?;
    let mem = a.memory.model(a.precision);
    let planner = TilePlanner::new(&model, h, w, mem.as_ref())?;
    let rows: Vec<Row> = budgets
        .iter()
        .map(|&b| match planner.choose_auto(b) {
            Ok(c) => Row { budget_bytes: b, choice: Some(c.choice), largest: Some(c.largest), error: None },
            Err(Error::OutOfMemory { what, .. }) => {
                Row { budget_bytes: b, choice: None, largest: None, error: Some(what) }
            }
            Err(e) => Row { budget_bytes: b, choice: None, largest: None, error: Some(e.to_string()) },
        })
        .collect();
    if a.json {
        println!("{}", serde_json::to_string_pretty(&rows).expect("serialisable"));
        return Ok(());
    }
    println!(
        "{} ({} parameters), image {w}x{h}, {:?}, {:?} memory; exact halo {} px, A = {}",
        model.origin,
        model.params(),
        a.precision,
        a.memory,
        model.exact_halo(),
        model.align()
    );
    println!(
        "{:>10}  {:>13}  {:>5}  {:>13}  {:>11}  {:>8}  {:>8}  {:>9}  {:>5}  {:>24}",
        "budget", "tile", "halo", "window", "peak", "overhead", "tiles", "compute", "batch", "largest that fits"
    );
    for r in &rows {
        match (&r.choice, &r.largest) {
            (Some(c), Some(l)) => println!(
                "{:>10}  {:>13}  {:>5}  {:>13}  {:>11}  {:>7.2}x  {:>8}  {:>8.3}x  {:>5}  {:>24}",
                human(r.budget_bytes),
                format!("{}x{}", c.tile_w, c.tile_h),
                c.halo,
                format!("{}x{}", c.window_w, c.window_h),
                human(c.peak.total()),
                c.halo_overhead,
                c.tiles,
                c.relative_compute,
                c.batch,
                format!("{}x{}, {:.3}x, {}", l.tile_w, l.tile_h, l.relative_compute, human(l.peak.total()))
            ),
            _ => println!("{:>10}  does not fit: {}", human(r.budget_bytes), r.error.as_deref().unwrap_or("")),
        }
    }
    println!(
        "tile = what --tile auto takes: the smallest within {:.0}% of the least compute among the tiles that fit; \
         overhead = ((T+2H)/T)^2 for an interior tile; compute = input pixels processed / image pixels \
         (1.0 = whole image at once); batch = windows that fit at once",
        AUTO_COMPUTE_SLACK * 100.0
    );
    if let Some(c) = rows.iter().filter_map(|r| r.largest.as_ref()).next_back() {
        let plain = liveness_peak(planner.graph(), c.window_h, c.window_w)? * a.precision.bytes();
        println!(
            "for the {}x{} window: planned arena {}; one buffer per activation, freed after its last reader, \
             with copied concatenations: {} ({:.0}% more)",
            c.window_w,
            c.window_h,
            human(c.peak.arena_bytes),
            human(plain),
            100.0 * (plain as f64 / c.peak.arena_bytes as f64 - 1.0)
        );
    }
    Ok(())
}
