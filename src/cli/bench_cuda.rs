//! `seamless bench --backend cuda`: the CUDA backend's numbers for one square window — the whole
//! network's median time (compute on the device, timed with CUDA events, and wall time per window
//! including the transfers), per-layer times, Mpx/s and GFLOP/s, device memory (planned, allocated
//! by the backend, and cuMemGetInfo before and after), and the tensor-core rate of the same device
//! (`kernels/peak.cu`), so a layer's share of it can be read off the table.

use seamless::Model;
use seamless::backend::Backend;
use seamless::cuda::{CudaBackend, DeviceBytes, NodeTimer};
use seamless::error::Result;
use seamless::graph::Op;
use seamless::model::weights::SplitMix64;
use seamless::planner::{MemoryModel, Peak, tile_plan};
use seamless::tensor::Tensor;

use super::bench::{BenchArgs, median};

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
struct Layer {
    name: String,
    op: &'static str,
    shape: [usize; 3],
    median_seconds: f64,
    gflop: f64,
    gflop_per_s: f64,
    /// Share of the measured mma.sync rate (f16 layers with FLOPs only).
    percent_of_mma_peak: Option<f64>,
    /// The conv kernel this layer ran (f16: the variant the autotuner kept, kernels/conv.cu).
    variant: Option<&'static str>,
}

#[derive(serde::Serialize)]
struct Report {
    model: String,
    backend: String,
    device: String,
    precision: &'static str,
    size: usize,
    flop_per_pixel: f64,
    /// Compute per window on the device: from the input's copy into the arena to the output's
    /// copy out of it (CUDA events on the compute stream).
    device_run_seconds: Vec<f64>,
    median_device_seconds: f64,
    /// Wall time per window through `run`: host conversion, upload, compute, download, one window
    /// at a time (the streaming runner overlaps the transfers of consecutive windows).
    run_seconds: Vec<f64>,
    median_seconds: f64,
    mpx_per_s: f64,
    gflop_per_s: f64,
    wall_mpx_per_s: f64,
    seconds_per_gigapixel: f64,
    /// mma.sync.m16n8k16 f16->f32 rate of this device (kernels/peak.cu), TFLOP/s.
    mma_peak_tflops: Option<f64>,
    memory: Memory,
    layers: Vec<Layer>,
}

pub fn run(a: &BenchArgs, m: &Model) -> Result<()> {
    let backend = CudaBackend::new(a.device, a.precision)?;
    let (free0, total) = backend.mem_get_info()?;
    let g = &m.graph;
    let n = a.size;
    let px = (n * n) as f64;
    let flop_per_pixel = g.flops_per_pixel(n)?;
    let mut rng = SplitMix64(1);
    let input =
        Tensor::from_vec(m.in_channels(), n, n, (0..m.in_channels() * n * n).map(|_| rng.normal() as f32).collect());
    for _ in 0..a.warmup.max(1) {
        backend.run(g, &input)?; // also uploads the weights, compiles nothing (kernels are loaded)
    }
    let ctx = backend.context();
    let mut whole = NodeTimer::new(ctx, 0)?;
    let (mut device_run_seconds, mut run_seconds) = (Vec::new(), Vec::new());
    for _ in 0..a.runs {
        let t0 = std::time::Instant::now();
        backend.run_timed(g, &input, Some(&mut whole))?;
        run_seconds.push(t0.elapsed().as_secs_f64());
        device_run_seconds.push(whole.whole_ms()? * 1e-3);
    }
    let run = backend.executed_graph(g)?;
    let mut layers = Vec::new();
    if a.layers || a.json {
        let mut timer = NodeTimer::new(ctx, run.nodes.len())?;
        let mut per_node = vec![Vec::new(); run.nodes.len()];
        for _ in 0..a.runs {
            backend.run_timed(g, &input, Some(&mut timer))?;
            for (p, t) in per_node.iter_mut().zip(timer.node_ms()?) {
                p.push(t * 1e-3);
            }
        }
        let peak = if a.no_peak { None } else { Some(backend.mma_peak_flops()?) };
        let shapes = run.shapes(n, n)?;
        for (((node, s), times), flop) in run.nodes.iter().zip(&shapes).zip(&per_node).zip(run.node_flops(&shapes)) {
            let t = median(times);
            let rate = if t > 0.0 { flop / t } else { 0.0 };
            let f16 = a.precision == seamless::planner::Precision::F16;
            layers.push(Layer {
                name: node.name.clone(),
                op: node.op.kind(),
                shape: [s.c, s.h, s.w],
                median_seconds: t,
                gflop: flop / 1e9,
                gflop_per_s: rate / 1e9,
                percent_of_mma_peak: peak.filter(|_| f16 && flop > 0.0).map(|p| 100.0 * rate / p),
                variant: match &node.op {
                    Op::Conv2d(c) => backend.conv_variant(c, s.h, s.w),
                    _ => None,
                },
            });
        }
        print_layers(a, &layers, peak);
        report(a, m, &backend, flop_per_pixel, px, (free0, total), device_run_seconds, run_seconds, layers, peak)
    } else {
        let peak = if a.no_peak { None } else { Some(backend.mma_peak_flops()?) };
        report(a, m, &backend, flop_per_pixel, px, (free0, total), device_run_seconds, run_seconds, layers, peak)
    }
}

fn print_layers(a: &BenchArgs, layers: &[Layer], peak: Option<f64>) {
    if a.json || !a.layers {
        return;
    }
    println!(
        "{:<44} {:<16} {:>16} {:>10} {:>8} {:>9} {:>7}  variant",
        "layer", "op", "out c x h x w", "ms", "GFLOP", "GFLOP/s", "% mma"
    );
    for l in layers {
        println!(
            "{:<44} {:<16} {:>16} {:>10.3} {:>8.2} {:>9.1} {:>7}  {}",
            l.name,
            l.op,
            format!("{}x{}x{}", l.shape[0], l.shape[1], l.shape[2]),
            l.median_seconds * 1e3,
            l.gflop,
            l.gflop_per_s,
            l.percent_of_mma_peak.map_or(String::new(), |p| format!("{p:.1}")),
            l.variant.unwrap_or("")
        );
    }
    if let Some(p) = peak {
        println!("% mma = share of this device's mma.sync f16->f32 rate, {:.1} TFLOP/s (kernels/peak.cu)", p / 1e12);
    }
    if a.precision == seamless::planner::Precision::F16 {
        println!(
            "variant = the f16 conv kernel kept for the layer (autotuned during warm-up unless SEAMLESS_AUTOTUNE=off; \
             all variants give identical bits)"
        );
    }
    println!();
}

#[allow(clippy::too_many_arguments)]
fn report(
    a: &BenchArgs,
    m: &Model,
    backend: &CudaBackend,
    flop_per_pixel: f64,
    px: f64,
    (free0, total): (usize, usize),
    device_run_seconds: Vec<f64>,
    run_seconds: Vec<f64>,
    layers: Vec<Layer>,
    peak: Option<f64>,
) -> Result<()> {
    let n = a.size;
    let planned = tile_plan::peak(&m.graph, n, n, a.precision, MemoryModel::Device)?;
    let allocated = backend.allocated();
    let (free1, _) = backend.mem_get_info()?;
    let med_dev = median(&device_run_seconds);
    let med = median(&run_seconds);
    let r = Report {
        model: m.origin.clone(),
        backend: backend.name(),
        device: backend.info().name.clone(),
        precision: a.precision.name(),
        size: n,
        flop_per_pixel,
        median_device_seconds: med_dev,
        device_run_seconds,
        median_seconds: med,
        run_seconds,
        mpx_per_s: px / med_dev / 1e6,
        gflop_per_s: flop_per_pixel * px / med_dev / 1e9,
        wall_mpx_per_s: px / med / 1e6,
        seconds_per_gigapixel: med_dev * 1e9 / px,
        mma_peak_tflops: peak.map(|p| p / 1e12),
        memory: Memory {
            planned_total_bytes: planned.total(),
            planned,
            allocated_total_bytes: allocated.total(),
            allocated,
            used_before_bytes: total - free0,
            used_after_bytes: total - free1,
            device_total_bytes: total,
        },
        layers,
    };
    if a.json {
        println!("{}", serde_json::to_string_pretty(&r).expect("serialisable"));
        return Ok(());
    }
    let mib = |b: usize| b as f64 / (1 << 20) as f64;
    println!("model        {}", r.model);
    println!("backend      {}", r.backend);
    println!("window       {n}x{n}, {} timed run(s) after {} warm-up", a.runs, a.warmup.max(1));
    println!("device       {:.4} s per window (compute, CUDA events)", r.median_device_seconds);
    println!("wall         {:.4} s per window (with transfers, one window at a time)", r.median_seconds);
    println!("throughput   {:.3} Mpx/s ({:.2} s per gigapixel)", r.mpx_per_s, r.seconds_per_gigapixel);
    println!("compute      {:.1} GFLOP/s ({:.3} MFLOP per pixel)", r.gflop_per_s, flop_per_pixel / 1e6);
    if let Some(p) = r.mma_peak_tflops {
        println!("mma peak     {p:.1} TFLOP/s (mma.sync m16n8k16 f16->f32 on this device)");
    }
    let mem = &r.memory;
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
    Ok(())
}
