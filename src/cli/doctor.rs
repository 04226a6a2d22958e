//! `seamless doctor`: what CUDA this machine offers and whether every kernel compiles for it (and
//! which CPU engines run f32 and bf16).

use seamless::Tensor;
use seamless::backend::Backend as _;
use seamless::cpu::CpuBackend;
use seamless::cuda::{CudaBackend, Precision, compile, device, libs, sources::FAMILIES};
use seamless::error::{Error, Result};
use seamless::model::weights::SplitMix64;

#[derive(clap::Args)]
pub struct DoctorArgs {
    /// CUDA device to check.
    #[arg(long, default_value_t = 0)]
    device: usize,
}

fn gib(bytes: usize) -> f64 {
    bytes as f64 / (1u64 << 30) as f64
}

/// Compile every family for `arch` (bypassing the cache) and print one line each.
fn compile_all(arch: &str) -> Result<()> {
    println!("kernels for {arch}:");
    for family in FAMILIES {
        let t0 = std::time::Instant::now();
        let cubin = compile::compile_cubin(family, arch)?;
        println!(
            "  {:<16} ok: {} kernels, {} bytes of cubin, {:.2} s",
            family.name,
            family.functions.len(),
            cubin.len(),
            t0.elapsed().as_secs_f64()
        );
    }
    Ok(())
}

pub fn run(a: DoctorArgs) -> Result<()> {
    let libs = libs::probe();
    let driver_name = match libs::driver_library() {
        Some(p) => format!("{} (SEAMLESS_CUDA_DRIVER)", p.display()),
        None => "libcuda.so.1".into(),
    };
    match device::driver_version() {
        Ok((ma, mi)) => println!("driver          {driver_name}, CUDA {ma}.{mi}"),
        Err(e) => println!("driver          missing: {}", message(e)),
    }
    match compile::nvrtc_version() {
        Ok((ma, mi)) => println!("nvrtc           {ma}.{mi}"),
        Err(e) => println!("nvrtc           missing: {}", message(e)),
    }
    // Not needed for CUDA; reported here because it is loaded at run time too (vendor slides).
    match seamless::slide::openslide::version() {
        Ok(v) => println!("openslide       {v} (vendor slides: .svs, .ndpi, .mrxs, ...)"),
        Err(e) => println!("openslide       missing: {e}"),
    }
    // The CPU engines: what --precision bf16 runs on here.
    let bf16 = seamless::cpu::direct::Isa::detect_for(Precision::Bf16);
    println!("cpu             f32 on {:?}, bf16 on {bf16:?}", seamless::cpu::direct::Isa::detect());
    println!("cpu tiles       {}", seamless::cpu::amx::status());
    match compile::cache_dir() {
        Some(d) => println!("kernel cache    {}", d.display()),
        None => println!("kernel cache    off"),
    }
    if libs.driver.is_err() {
        if libs.nvrtc.is_ok() {
            // NVRTC alone still shows whether the kernels compile for the GPUs we target.
            compile_all("sm_80")?;
            compile_all("sm_90")?;
        }
        return Err(Error::Backend("no usable GPU: the CUDA driver is missing (the CPU backend still works)".into()));
    }
    let count = device::device_count()?;
    println!("devices         {count}");
    let (_, info) = device::open(a.device)?;
    println!(
        "device {}        {}, compute capability {}.{} ({}), {:.1} GiB free of {:.1} GiB",
        info.ordinal,
        info.name,
        info.compute_capability.0,
        info.compute_capability.1,
        info.arch(),
        gib(info.free_bytes),
        gib(info.total_bytes)
    );
    compile_all(&info.arch())?;
    smoke_test(a.device)?;
    println!("ok: --backend cuda can run on device {}", a.device);
    Ok(())
}

/// Largest |gpu - cpu| the smoke test accepts on the random U-Net's class probabilities: f32 kernels
/// compute what the CPU computes (only softmax's exp differs, by an ulp or two); f16 stores every
/// activation in f16 (relative precision 2^-11) through nine conv layers: 9.6e-3 measured on the
/// emulated device (2026-11-27), so 5e-2 leaves room for tensor-core rounding and still fails a
/// device that computes wrong results.
const SMOKE_TOLERANCE_F32: f32 = 1e-4;
const SMOKE_TOLERANCE_F16: f32 = 5e-2;

/// A small random U-Net on the GPU in both precisions against the CPU; an error when either is
/// off by more than its tolerance.
fn smoke_test(device: usize) -> Result<()> {
    let cfg = seamless::model::ModelConfig::preset("unet-8-d2")
        .ok_or_else(|| Error::Config("preset unet-8-d2 is missing".into()))?;
    let model = seamless::Model::random(cfg, 1)?;
    let mut rng = SplitMix64(2);
    let c = model.in_channels();
    let img = Tensor::from_vec(c, 64, 64, (0..c * 64 * 64).map(|_| rng.normal() as f32).collect());
    let reference = CpuBackend::default().run(&model.graph, &img)?;
    for precision in [Precision::F32, Precision::F16] {
        let backend = CudaBackend::new(device, precision)?;
        let t0 = std::time::Instant::now();
        let out = backend.run(&model.graph, &img)?;
        // NaN compares as the largest difference, so a NaN anywhere fails.
        let diff = out
            .data
            .iter()
            .zip(&reference.data)
            .map(|(a, b)| if (a - b).is_nan() { f32::INFINITY } else { (a - b).abs() })
            .fold(0.0f32, f32::max);
        let tolerance = match precision {
            Precision::F32 => SMOKE_TOLERANCE_F32,
            Precision::F16 | Precision::Bf16 => SMOKE_TOLERANCE_F16,
        };
        println!(
            "smoke test      random U-Net on 64x64, {}: max |gpu - cpu| = {diff:.2e} (tolerance {tolerance:.0e}, {:.1} ms)",
            precision.name(),
            t0.elapsed().as_secs_f64() * 1e3
        );
        if diff > tolerance || out.data.len() != reference.data.len() {
            return Err(Error::Backend(format!(
                "the GPU's {} result differs from the CPU's by {diff:.2e}, more than the tolerance {tolerance:.0e}: \
                 --backend cuda would give wrong output on this device",
                precision.name()
            )));
        }
    }
    Ok(())
}

fn message(e: Error) -> String {
    match e {
        Error::Backend(m) => m,
        other => other.to_string(),
    }
}
