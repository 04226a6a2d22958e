//! `seamless bench`: forward-pass throughput of a model on one square window, per layer and for
//! the whole network (Mpx/s and achieved GFLOP/s), so kernels can be compared run against run. One
//! program for every backend, through the `Backend` trait; on CUDA it adds what only a device has:
//! device memory (planned, allocated, cuMemGetInfo), the tensor-core rate of the same device
//! (`kernels/peak.cu`) with each layer's share of it, and the f16 conv variant of each layer.

use seamless::Model;
use seamless::backend::Backend;
use seamless::cpu::CpuBackend;
use seamless::cpu::direct::Isa;
use seamless::cuda::{CudaBackend, DeviceBytes};
use seamless::error::{Error, Result};
use seamless::graph::Op;
use seamless::model::weights::SplitMix64;
use seamless::planner::{Peak, Precision, tile_plan};
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
    /// Arithmetic: f32; on CUDA f16 storage with tensor-core convolutions; on the CPU bf16
    /// convolutions (AMX tiles or AVX512-BF16 where the CPU has them) with f32 accumulation.
    #[arg(long, value_enum, default_value_t = Precision::F32)]
    pub(crate) precision: Precision,
    /// CPU: run every convolution on this engine instead of the fastest one for the precision
    /// (which it then sets): portable, avx2, avx512 (f32); bf16-portable, avx512-bf16, amx, or
    /// amx-emulated (the AMX kernel on tiles emulated in software: slow, for checking) in bf16.
    /// `seamless doctor` lists what this CPU has.
    #[arg(long, value_name = "ENGINE")]
    pub(crate) cpu_engine: Option<String>,
    /// CUDA device ordinal.
    #[arg(long, default_value_t = 0)]
    pub(crate) device: usize,
    /// Skip measuring the peak arithmetic rate: on CUDA the tensor cores' (kernels/peak.cu, about
    /// a second), on the CPU its f32 FMA and bf16 rates (cpu/peak.rs, about half a second).
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
    precision: &'static str,
    size: usize,
    flop_per_pixel: f64,
    /// Opening the model file (parse, decode, checks), seconds.
    load_seconds: f64,
    /// CPU: packing the weights for the engine, seconds (once per process and model, before the
    /// first window). None on CUDA, whose first pass uploads them.
    pack_seconds: Option<f64>,
    /// The first (warm-up) pass, seconds: with what a process pays once (on the CPU first touching
    /// its buffers; on CUDA uploading the weights). None without warm-up.
    first_run_seconds: Option<f64>,
    /// Wall time per window through `run`, one window at a time (on CUDA with the host conversion
    /// and the transfers, which the streaming runner overlaps between windows).
    run_seconds: Vec<f64>,
    median_seconds: f64,
    /// Compute per window by the backend's own clock: CUDA events around the compute on the
    /// device; on the CPU the wall time.
    compute_run_seconds: Vec<f64>,
    median_compute_seconds: f64,
    /// CPU time (user + system, all threads) per run: less sensitive than wall time to other
    /// processes sharing the cores, though not to their use of caches and memory bandwidth.
    run_cpu_seconds: Vec<f64>,
    median_cpu_seconds: f64,
    /// From the compute time.
    mpx_per_s: f64,
    gflop_per_s: f64,
    seconds_per_gigapixel: f64,
    /// From the wall time.
    wall_mpx_per_s: f64,
    /// CUDA: the device's name.
    #[serde(skip_serializing_if = "Option::is_none")]
    device: Option<String>,
    /// CUDA: mma.sync.m16n8k16 f16->f32 rate of this device (kernels/peak.cu), TFLOP/s.
    #[serde(skip_serializing_if = "Option::is_none")]
    mma_peak_tflops: Option<f64>,
    /// CPU: the measured f32 FMA rate over all threads (GFLOP/s).
    #[serde(skip_serializing_if = "Option::is_none")]
    cpu_peak_f32_gflop_per_s: Option<f64>,
    /// CPU: the measured bf16 pair rate (VDPBF16PS) over all threads, where the CPU has it.
    #[serde(skip_serializing_if = "Option::is_none")]
    cpu_peak_bf16_gflop_per_s: Option<f64>,
    /// CPU: the measured bf16 tile rate (AMX TDPBF16PS) over all threads, where the tiles are in use.
    #[serde(skip_serializing_if = "Option::is_none")]
    cpu_peak_amx_gflop_per_s: Option<f64>,
    /// CUDA: device memory.
    #[serde(skip_serializing_if = "Option::is_none")]
    memory: Option<Memory>,
    layers: Vec<LayerReport>,
}

#[derive(serde::Serialize)]
struct Memory {
    /// `seamless plan --memory device` for this window.
    planned: Peak,
    planned_total_bytes: usize,
    /// What the backend holds after the runs.
    allocated: DeviceBytes,
    allocated_total_bytes: usize,
    /// Device memory in use (total - free, cuMemGetInfo) with the context and kernels loaded,
    /// before the model was uploaded, and after the timed runs.
    used_before_bytes: usize,
    used_after_bytes: usize,
    device_total_bytes: usize,
}

#[derive(serde::Serialize)]
struct LayerReport {
    name: String,
    op: &'static str,
    shape: [usize; 3],
    median_seconds: f64,
    gflop: f64,
    gflop_per_s: f64,
    /// CUDA f16: share of the measured mma.sync rate (layers with FLOPs only).
    #[serde(skip_serializing_if = "Option::is_none")]
    percent_of_mma_peak: Option<f64>,
    /// CPU: share of the measured peak of the precision (f32 FMA, or bf16 pairs), counting a
    /// convolution's direct FLOPs (Winograd layers do fewer, so they can pass 100%).
    #[serde(skip_serializing_if = "Option::is_none")]
    percent_of_cpu_peak: Option<f64>,
    /// CUDA: the conv kernel this layer ran (f16: the variant the autotuner kept).
    #[serde(skip_serializing_if = "Option::is_none")]
    variant: Option<&'static str>,
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

/// The CPU backend on the engine called `name`, which must compute in `precision`.
fn cpu_engine(name: &str, precision: Precision) -> Result<CpuBackend> {
    let names = || Isa::NAMES.iter().map(|(_, n)| *n).collect::<Vec<_>>().join(", ");
    let isa =
        Isa::from_name(name).ok_or_else(|| Error::Usage(format!("--cpu-engine '{name}': use one of {}", names())))?;
    let computes = isa.precision();
    if computes != precision {
        return Err(Error::Usage(format!(
            "--cpu-engine {name} computes in {}: give --precision {} with it",
            computes.name(),
            computes.name()
        )));
    }
    CpuBackend::default().with_engine(isa)
}

pub fn run(a: BenchArgs) -> Result<()> {
    if a.backend != "cpu" && a.backend != "cuda" {
        return Err(Error::Usage(format!("--backend '{}': use cpu or cuda", a.backend)));
    }
    if a.backend == "cuda" && a.cpu_engine.is_some() {
        return Err(Error::Usage("--cpu-engine picks a CPU engine: it does not go with --backend cuda".into()));
    }
    if a.backend == "cpu" && a.precision == Precision::F16 {
        return Err(Error::Usage("--precision f16 needs --backend cuda (the CPU computes in f32 or bf16)".into()));
    }
    if a.runs == 0 {
        return Err(Error::Usage("--runs must be at least 1".into()));
    }
    let t_load = std::time::Instant::now();
    let m = Model::open(&a.model)?;
    let load_seconds = t_load.elapsed().as_secs_f64();
    let n = a.size;
    if n == 0 || !n.is_multiple_of(m.align()) {
        return Err(Error::Usage(format!(
            "--size {n} must be a positive multiple of the model's down-sampling factor {}",
            m.align()
        )));
    }
    let cuda = if a.backend == "cuda" { Some(CudaBackend::new(a.device, a.precision)?) } else { None };
    let cpu = match &a.cpu_engine {
        _ if cuda.is_some() => CpuBackend::default(),
        None => CpuBackend::default().with_precision(a.precision)?,
        Some(name) => cpu_engine(name, a.precision)?,
    };
    let backend: &dyn Backend = match &cuda {
        Some(c) => c,
        None => &cpu,
    };
    let used_before = cuda.as_ref().map(|c| c.mem_get_info()).transpose()?;
    let g = &m.graph;
    let pack_seconds = if cuda.is_none() {
        let t = std::time::Instant::now();
        cpu.prepare(g)?;
        Some(t.elapsed().as_secs_f64())
    } else {
        None
    };
    let px = (n * n) as f64;
    let flop_per_pixel = g.flops_per_pixel(n)?;
    let mut rng = SplitMix64(1);
    let input =
        Tensor::from_vec(m.in_channels(), n, n, (0..m.in_channels() * n * n).map(|_| rng.normal() as f32).collect());
    // CUDA: at least one, which also uploads the weights (the kernels are loaded already).
    let mut first_run_seconds = None;
    for _ in 0..a.warmup.max(cuda.is_some() as usize) {
        let t0 = std::time::Instant::now();
        backend.run(g, &input)?;
        first_run_seconds.get_or_insert(t0.elapsed().as_secs_f64());
    }
    let (mut run_seconds, mut compute_run_seconds, mut run_cpu_seconds) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..a.runs {
        let (t0, c0) = (std::time::Instant::now(), cpu_seconds());
        let (_, t) = backend.run_timed(g, &input, false)?;
        run_seconds.push(t0.elapsed().as_secs_f64());
        run_cpu_seconds.push(cpu_seconds() - c0);
        compute_run_seconds.push(t.compute_seconds);
    }
    // Per node in runs of their own: marking every node can slow a device's run as a whole.
    let lowered = backend.lowered(g);
    let peak = match &cuda {
        Some(c) if !a.no_peak => Some(c.mma_peak_flops()?),
        _ => None,
    };
    let cpu_peak = (cuda.is_none() && !a.no_peak).then(seamless::cpu::peak::measure);
    let cpu_peak_of_precision = cpu_peak.and_then(|p| match a.precision {
        // The tiles' layers against the tiles' peak; AMX-emulated against the vectors' (its own
        // speed is not the point).
        Precision::Bf16 if cpu.isa() == Isa::Amx => p.amx_flops,
        Precision::Bf16 => p.bf16_flops,
        _ => Some(p.f32_flops),
    });
    let mut layers = Vec::new();
    if a.layers || a.json {
        let mut per_node = vec![Vec::new(); lowered.nodes.len()];
        for _ in 0..a.runs {
            let (_, t) = backend.run_timed(g, &input, true)?;
            for (p, s) in per_node.iter_mut().zip(t.nodes) {
                p.push(s);
            }
        }
        let shapes = lowered.shapes(n, n)?;
        let flops = lowered.node_flops(&shapes);
        for (((node, s), times), flop) in lowered.nodes.iter().zip(&shapes).zip(&per_node).zip(flops) {
            let t = median(times);
            let rate = if t > 0.0 { flop / t } else { 0.0 };
            let f16 = a.precision == Precision::F16;
            layers.push(LayerReport {
                name: node.name.clone(),
                op: node.op.kind(),
                shape: [s.c, s.h, s.w],
                median_seconds: t,
                gflop: flop / 1e9,
                gflop_per_s: rate / 1e9,
                percent_of_mma_peak: peak.filter(|_| f16 && flop > 0.0).map(|p| 100.0 * rate / p),
                percent_of_cpu_peak: cpu_peak_of_precision.filter(|_| flop > 0.0).map(|p| 100.0 * rate / p),
                variant: match (&cuda, &node.op) {
                    (Some(c), Op::Conv2d(conv)) => c.conv_variant(conv, s.h, s.w),
                    _ => None,
                },
            });
        }
    }
    let memory = match (&cuda, used_before) {
        (Some(c), Some((free0, total))) => {
            let planned = tile_plan::peak(g, n, n, c.memory())?;
            let allocated = c.allocated();
            let (free1, _) = c.mem_get_info()?;
            Some(Memory {
                planned_total_bytes: planned.total(),
                planned,
                allocated_total_bytes: allocated.total(),
                allocated,
                used_before_bytes: total - free0,
                used_after_bytes: total - free1,
                device_total_bytes: total,
            })
        }
        _ => None,
    };
    let (med, med_compute) = (median(&run_seconds), median(&compute_run_seconds));
    let report = Report {
        model: m.origin.clone(),
        backend: backend.name(),
        threads: rayon::current_num_threads(),
        precision: a.precision.name(),
        size: n,
        flop_per_pixel,
        load_seconds,
        pack_seconds,
        first_run_seconds,
        median_seconds: med,
        run_seconds,
        median_compute_seconds: med_compute,
        compute_run_seconds,
        median_cpu_seconds: median(&run_cpu_seconds),
        run_cpu_seconds,
        mpx_per_s: px / med_compute / 1e6,
        gflop_per_s: flop_per_pixel * px / med_compute / 1e9,
        seconds_per_gigapixel: med_compute * 1e9 / px,
        wall_mpx_per_s: px / med / 1e6,
        device: cuda.as_ref().map(|c| c.info().name.clone()),
        mma_peak_tflops: peak.map(|p| p / 1e12),
        cpu_peak_f32_gflop_per_s: cpu_peak.map(|p| p.f32_flops / 1e9),
        cpu_peak_bf16_gflop_per_s: cpu_peak.and_then(|p| p.bf16_flops).map(|p| p / 1e9),
        cpu_peak_amx_gflop_per_s: cpu_peak.and_then(|p| p.amx_flops).map(|p| p / 1e9),
        memory,
        layers,
    };
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report).expect("serialisable"));
    } else {
        print_text(&a, &report);
    }
    Ok(())
}

fn print_text(a: &BenchArgs, r: &Report) {
    let cuda = r.device.is_some();
    if a.layers {
        println!(
            "{:<44} {:<16} {:>16} {:>10} {:>8} {:>9}{}",
            "layer",
            "op",
            "out c x h x w",
            "ms",
            "GFLOP",
            "GFLOP/s",
            if cuda { format!(" {:>7}  variant", "% mma") } else { format!(" {:>7}", "% peak") }
        );
        for l in &r.layers {
            let extra = if cuda {
                format!(
                    " {:>7}  {}",
                    l.percent_of_mma_peak.map_or(String::new(), |p| format!("{p:.1}")),
                    l.variant.unwrap_or("")
                )
            } else {
                format!(" {:>7}", l.percent_of_cpu_peak.map_or(String::new(), |p| format!("{p:.1}")))
            };
            println!(
                "{:<44} {:<16} {:>16} {:>10.3} {:>8.2} {:>9.1}{extra}",
                l.name,
                l.op,
                format!("{}x{}x{}", l.shape[0], l.shape[1], l.shape[2]),
                l.median_seconds * 1e3,
                l.gflop,
                l.gflop_per_s,
            );
        }
        if let Some(p) = r.cpu_peak_f32_gflop_per_s {
            let bf16 = r.cpu_peak_bf16_gflop_per_s.map_or("none".into(), |b| format!("{b:.1} GFLOP/s"));
            let amx = r.cpu_peak_amx_gflop_per_s.map_or(String::new(), |b| format!(", AMX tiles {b:.1} GFLOP/s"));
            println!(
                "% peak = share of this CPU's measured rate for the engine: f32 FMA {p:.1} GFLOP/s, bf16 {bf16}{amx} \
                 (direct-convolution FLOPs: Winograd layers can pass 100%)"
            );
        }
        if let Some(p) = r.mma_peak_tflops {
            println!("% mma = share of this device's mma.sync f16->f32 rate, {p:.1} TFLOP/s (kernels/peak.cu)");
        }
        if cuda && a.precision == Precision::F16 {
            println!(
                "variant = the f16 conv kernel kept for the layer (autotuned during warm-up unless \
                 SEAMLESS_AUTOTUNE=off; all variants give identical bits)"
            );
        }
        println!();
    }
    let n = r.size;
    println!("model        {}", r.model);
    println!("backend      {}", r.backend);
    println!("window       {n}x{n}, {} timed run(s) after {} warm-up", a.runs, a.warmup.max(cuda as usize));
    if cuda {
        println!("device       {:.4} s per window (compute, CUDA events)", r.median_compute_seconds);
        println!("wall         {:.4} s per window (with transfers, one window at a time)", r.median_seconds);
    } else {
        println!("median       {:.4} s per window", r.median_seconds);
        println!("cpu time     {:.4} s per window (all threads)", r.median_cpu_seconds);
    }
    if let Some(first) = r.first_run_seconds {
        let pack = r.pack_seconds.map(|p| format!("{p:.3} s to pack its weights, ")).unwrap_or_default();
        println!(
            "start        {:.3} s to load the model, {pack}{first:.3} s for the first (warm-up) pass",
            r.load_seconds
        );
    }
    println!("throughput   {:.4} Mpx/s ({:.2} s per gigapixel)", r.mpx_per_s, r.seconds_per_gigapixel);
    println!("compute      {:.1} GFLOP/s ({:.3} MFLOP per pixel)", r.gflop_per_s, r.flop_per_pixel / 1e6);
    if let Some(p) = r.cpu_peak_f32_gflop_per_s {
        let bf16 = r.cpu_peak_bf16_gflop_per_s.map_or("no AVX512-BF16".into(), |b| format!("bf16 {b:.1} GFLOP/s"));
        let amx = r.cpu_peak_amx_gflop_per_s.map_or(String::new(), |b| format!(", AMX tiles {b:.1} GFLOP/s"));
        println!("cpu peak     f32 {p:.1} GFLOP/s, {bf16}{amx} (measured, all threads)");
    }
    if let Some(p) = r.mma_peak_tflops {
        println!("mma peak     {p:.1} TFLOP/s (mma.sync m16n8k16 f16->f32 on this device)");
    }
    if let Some(mem) = &r.memory {
        let mib = |b: usize| b as f64 / (1 << 20) as f64;
        println!(
            "memory       planned {:.1} MiB (arena {:.1} + weights {:.1} + staging {:.1}); allocated {:.1} MiB; \
             cuMemGetInfo used {:.1} -> {:.1} MiB",
            mib(mem.planned_total_bytes),
            mib(mem.planned.arena_bytes),
            mib(mem.planned.weight_bytes),
            mib(mem.planned.staging_bytes),
            mib(mem.allocated_total_bytes),
            mib(mem.used_before_bytes),
            mib(mem.used_after_bytes)
        );
    }
}
