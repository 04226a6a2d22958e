//! `seamless bench`: forward-pass throughput of a model on one square window, per layer and for
//! the whole network (Mpx/s and achieved GFLOP/s), so kernels can be compared run against run.

use seamless::Model;
use seamless::cpu::{self, Buffers};
use seamless::error::{Error, Result};
use seamless::model::weights::SplitMix64;
use seamless::planner::{ArenaPlan, Precision};
use seamless::tensor::Tensor;

#[derive(clap::Args)]
pub struct BenchArgs {
    /// A model file (.safetensors) or a preset: unet-64, unet-F[-dD], fcdensenet-56/67/103.
    pub(crate) model: String,
    /// Side of the square input window in pixels (a multiple of the model's down-sampling factor).
    #[arg(long, default_value_t = 512)]
    pub(crate) size: usize,
    /// Timed forward passes (the report gives their median).
    #[arg(long, default_value_t = 5)]
    pub(crate) runs: usize,
    /// Untimed forward passes first (page faults, caches, thread start; on CUDA also the weight
    /// upload).
    #[arg(long, default_value_t = 1)]
    pub(crate) warmup: usize,
    /// Backend: cpu, or cuda (device times from CUDA events, device memory, tensor-core peak).
    #[arg(long, default_value = "cpu")]
    pub(crate) backend: String,
    /// Arithmetic on CUDA: f32, or f16 storage with tensor-core convolutions (the CPU is f32 only).
    #[arg(long, value_enum, default_value_t = Precision::F32)]
    pub(crate) precision: Precision,
    /// CUDA device ordinal.
    #[arg(long, default_value_t = 0)]
    pub(crate) device: usize,
    /// CUDA: skip measuring the device's tensor-core rate (kernels/peak.cu, about a second).
    #[arg(long)]
    pub(crate) no_peak: bool,
    /// Print machine-readable JSON (per-run times included) instead of the tables.
    #[arg(long)]
    pub(crate) json: bool,
    /// Also list every layer, not only the whole network.
    #[arg(long)]
    pub(crate) layers: bool,
}

#[derive(serde::Serialize)]
struct Report {
    model: String,
    backend: String,
    threads: usize,
    size: usize,
    flop_per_pixel: f64,
    run_seconds: Vec<f64>,
    median_seconds: f64,
    /// CPU time (user + system, all threads) per run: less sensitive than wall time to other
    /// processes sharing the cores, though not to their use of caches and memory bandwidth.
    run_cpu_seconds: Vec<f64>,
    median_cpu_seconds: f64,
    mpx_per_s: f64,
    gflop_per_s: f64,
    layers: Vec<LayerReport>,
}

#[derive(serde::Serialize)]
struct LayerReport {
    name: String,
    op: &'static str,
    shape: [usize; 3],
    median_seconds: f64,
    gflop: f64,
    gflop_per_s: f64,
}

/// User + system CPU time of this process so far, in seconds.
fn cpu_seconds() -> f64 {
    #[cfg(unix)]
    {
        // SAFETY: getrusage only writes the struct it is given.
        let mut u: libc::rusage = unsafe { std::mem::zeroed() };
        if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) } == 0 {
            let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 * 1e-6;
            return tv(u.ru_utime) + tv(u.ru_stime);
        }
    }
    f64::NAN
}

pub(crate) fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    if n % 2 == 1 { s[n / 2] } else { 0.5 * (s[n / 2 - 1] + s[n / 2]) }
}

pub fn run(a: BenchArgs) -> Result<()> {
    if a.backend != "cpu" && a.backend != "cuda" {
        return Err(Error::Usage(format!("--backend '{}': use cpu or cuda", a.backend)));
    }
    if a.backend == "cpu" && a.precision != Precision::F32 {
        return Err(Error::Usage("--precision f16 needs --backend cuda (the CPU backend is f32)".into()));
    }
    if a.runs == 0 {
        return Err(Error::Usage("--runs must be at least 1".into()));
    }
    let m = Model::open(&a.model)?;
    if a.size == 0 || !a.size.is_multiple_of(m.align()) {
        return Err(Error::Usage(format!(
            "--size {} must be a positive multiple of the model's down-sampling factor {}",
            a.size,
            m.align()
        )));
    }
    if a.backend == "cuda" {
        return super::bench_cuda::run(&a, &m);
    }
    let g = &m.graph;
    let (n, px) = (a.size, (a.size * a.size) as f64);
    let shapes = g.shapes(n, n)?;
    let flop_per_pixel = g.flops_per_pixel(n)?;
    let mut rng = SplitMix64(1);
    let input =
        Tensor::from_vec(m.in_channels(), n, n, (0..m.in_channels() * n * n).map(|_| rng.normal() as f32).collect());
    let plan = ArenaPlan::new(g, n, n)?;
    let mut bufs = Buffers::default();
    for _ in 0..a.warmup {
        cpu::run_planned(g, &plan, &input, &mut bufs, false)?;
    }
    let mut per_node = vec![vec![0.0; a.runs]; g.nodes.len()];
    let mut run_seconds = Vec::with_capacity(a.runs);
    let mut run_cpu_seconds = Vec::with_capacity(a.runs);
    let mut t = vec![0.0; g.nodes.len()];
    for r in 0..a.runs {
        let (t0, c0) = (std::time::Instant::now(), cpu_seconds());
        cpu::run_planned_timed(g, &plan, &input, &mut bufs, false, Some(&mut t))?;
        run_seconds.push(t0.elapsed().as_secs_f64());
        run_cpu_seconds.push(cpu_seconds() - c0);
        for (p, &v) in per_node.iter_mut().zip(&t) {
            p[r] = v;
        }
    }
    let med = median(&run_seconds);
    let layers: Vec<LayerReport> = g
        .nodes
        .iter()
        .zip(&shapes)
        .zip(&per_node)
        .zip(g.node_flops(&shapes))
        .map(|(((node, s), times), flop)| {
            let t = median(times);
            LayerReport {
                name: node.name.clone(),
                op: node.op.kind(),
                shape: [s.c, s.h, s.w],
                median_seconds: t,
                gflop: flop / 1e9,
                gflop_per_s: if t > 0.0 { flop / t / 1e9 } else { 0.0 },
            }
        })
        .collect();
    let report = Report {
        model: m.origin.clone(),
        backend: format!("cpu ({} threads)", rayon::current_num_threads()),
        threads: rayon::current_num_threads(),
        size: n,
        flop_per_pixel,
        median_seconds: med,
        mpx_per_s: px / med / 1e6,
        gflop_per_s: flop_per_pixel * px / med / 1e9,
        run_seconds,
        median_cpu_seconds: median(&run_cpu_seconds),
        run_cpu_seconds,
        layers,
    };
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report).expect("serialisable"));
        return Ok(());
    }
    if a.layers {
        println!("{:<44} {:<16} {:>16} {:>10} {:>8} {:>9}", "layer", "op", "out c x h x w", "ms", "GFLOP", "GFLOP/s");
        for l in &report.layers {
            println!(
                "{:<44} {:<16} {:>16} {:>10.3} {:>8.2} {:>9.1}",
                l.name,
                l.op,
                format!("{}x{}x{}", l.shape[0], l.shape[1], l.shape[2]),
                l.median_seconds * 1e3,
                l.gflop,
                l.gflop_per_s
            );
        }
        println!();
    }
    println!("model        {}", report.model);
    println!("backend      {}", report.backend);
    println!("window       {n}x{n}, {} timed run(s) after {} warm-up", a.runs, a.warmup);
    println!("median       {:.4} s per window", report.median_seconds);
    println!("cpu time     {:.4} s per window (all threads)", report.median_cpu_seconds);
    println!("throughput   {:.4} Mpx/s", report.mpx_per_s);
    println!("compute      {:.1} GFLOP/s ({:.3} MFLOP per pixel)", report.gflop_per_s, flop_per_pixel / 1e6);
    Ok(())
}
