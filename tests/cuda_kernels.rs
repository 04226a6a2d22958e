//! The CUDA backend: every kernel against its CPU twin on random inputs (f32 bit for bit, f16
//! within 1e-2), poisoned outputs proving every element is written, every f16 conv variant equal to
//! every other, and tiled == whole bit for bit for both model families at both precisions.
//!
//! On a machine without a GPU these run on the emulated device (`cuda_emulator/`, see
//! tests/common/emulator.rs), with its random stream delays on; on a GPU host, on the GPU. Where
//! neither can run (no NVRTC or no C++ compiler and no GPU) they are ignored, with the reason.

mod common;

use common::emulator;
use common::*;
use seamless::backend::Backend;
use seamless::cpu;
use seamless::cpu::CpuBackend;
use seamless::cuda::conv_variants;
use seamless::cuda::{CudaBackend, Precision, TuneMode};
use seamless::graph::{BatchNorm, Conv2d, ConvTranspose2d, Op, ScaleShift, UpsampleMode};
use seamless::model::weights::SplitMix64;
use seamless::pipeline::{Tiling, infer_on};
use seamless::{Model, Tensor};

fn device() -> usize {
    std::env::var("SEAMLESS_TEST_DEVICE").ok().and_then(|v| v.parse().ok()).unwrap_or(0)
}

/// How the f16 conv variants are chosen: as configured on a GPU; on the emulated device by the
/// heuristic, because measuring every variant of every layer signature costs more there than the
/// test itself (autotuned_models_equal_the_heuristic_bit_for_bit measures on both).
fn tuning() -> TuneMode {
    if emulator::emulated() { TuneMode::Heuristic } else { TuneMode::from_env() }
}

/// The backend on the real or the emulated device, its f16 conv variants chosen as `mode` says; a
/// device that cannot start fails the test.
fn gpu_tuned(precision: Precision, mode: TuneMode) -> CudaBackend {
    emulator::select_cuda_device();
    match CudaBackend::with_tuning(device(), precision, mode) {
        Ok(b) => b,
        Err(e) => panic!("the CUDA backend cannot start ({}): {e}", device_kind()),
    }
}

fn gpu(precision: Precision) -> CudaBackend {
    gpu_tuned(precision, tuning())
}

fn device_kind() -> &'static str {
    if emulator::emulated() { "emulated device" } else { "GPU" }
}

/// Normal values scaled by `scale`.
fn randv(rng: &mut SplitMix64, n: usize, scale: f32) -> Vec<f32> {
    (0..n).map(|_| rng.normal() as f32 * scale).collect()
}

fn round_f16(v: &[f32]) -> Vec<f32> {
    v.iter().map(|&x| half::f16::from_f32(x).to_f32()).collect()
}

/// The op and inputs as the f16 backend sees them: activations and conv weights rounded to f16
/// (biases, scales and shifts stay f32), so the CPU twin computes on the same numbers.
fn as_f16(op: &Op, ins: &[Tensor]) -> (Op, Vec<Tensor>) {
    let ins = ins.iter().map(|t| Tensor::from_vec(t.c, t.h, t.w, round_f16(&t.data))).collect();
    let op = match op {
        Op::Conv2d(c) => Op::Conv2d(Conv2d { weight: round_f16(&c.weight), ..c.clone() }),
        Op::ConvTranspose2d(c) => Op::ConvTranspose2d(ConvTranspose2d { weight: round_f16(&c.weight), ..c.clone() }),
        other => other.clone(),
    };
    (op, ins)
}

/// A random instance of every op the backend runs, with its inputs.
fn random_ops(rng: &mut SplitMix64) -> Vec<(String, Op, Vec<Tensor>)> {
    let mut cases = Vec::new();
    let img = random_image;
    // Conv: every kernel size, channel counts across the f16 kernel's 16-channel chunks and
    // 64-channel blocks, odd sizes smaller and larger than one thread block.
    for (i, &(cin, cout, k)) in
        [(1, 4, 3), (3, 8, 1), (17, 70, 3), (32, 64, 3), (5, 3, 5), (2, 17, 7), (40, 130, 3), (64, 2, 1)]
            .iter()
            .enumerate()
    {
        let (h, w) = (pick(rng, 1, 37), pick(rng, 1, 45));
        let fan = (cin * k * k) as f32;
        let op = Op::Conv2d(Conv2d {
            cin,
            cout,
            k,
            weight: randv(rng, cout * cin * k * k, 1.0 / fan.sqrt()),
            bias: randv(rng, cout, 0.5),
            relu: i % 2 == 0,
            pre: None,
            algo: Default::default(),
        });
        cases.push((format!("conv2d cin {cin} cout {cout} k {k} {h}x{w}"), op, vec![img(rng, cin, h, w)]));
    }
    for &(cin, cout, k) in &[(4, 3, 2), (9, 5, 3), (20, 18, 2), (1, 2, 3)] {
        let (h, w) = (pick(rng, 1, 19), pick(rng, 1, 23));
        let op = Op::ConvTranspose2d(ConvTranspose2d {
            cin,
            cout,
            k,
            weight: randv(rng, cin * cout * k * k, 1.0 / (cin as f32).sqrt()),
            bias: randv(rng, cout, 0.5),
        });
        cases.push((format!("conv_transpose2d cin {cin} cout {cout} k {k} {h}x{w}"), op, vec![img(rng, cin, h, w)]));
    }
    let (c, h, w) = (5, 14, 22);
    let bn = BatchNorm {
        gamma: randv(rng, c, 1.0),
        beta: randv(rng, c, 1.0),
        mean: randv(rng, c, 1.0),
        var: (0..c).map(|_| 0.5 + rng.uniform() as f32).collect(),
        eps: 1e-5,
    };
    cases.push(("batch_norm".into(), Op::BatchNorm(bn), vec![img(rng, c, h, w)]));
    for relu in [false, true] {
        let ss = ScaleShift { scale: randv(rng, c, 1.0), shift: randv(rng, c, 1.0), relu };
        cases.push((format!("scale_shift relu {relu}"), Op::ScaleShift(ss), vec![img(rng, c, h, w)]));
    }
    cases.push(("relu".into(), Op::Relu, vec![img(rng, 3, 7, 9)]));
    cases.push(("max_pool2".into(), Op::MaxPool2, vec![img(rng, 6, 18, 30)]));
    for (mode, name) in [(UpsampleMode::Nearest, "nearest"), (UpsampleMode::Bilinear, "bilinear")] {
        for (hh, ww) in [(1, 1), (5, 9), (16, 3)] {
            cases.push((format!("upsample2 {name} {hh}x{ww}"), Op::Upsample2(mode), vec![img(rng, 4, hh, ww)]));
        }
    }
    cases.push(("concat".into(), Op::Concat, vec![img(rng, 3, 9, 11), img(rng, 1, 9, 11), img(rng, 5, 9, 11)]));
    for c in [1, 2, 7] {
        cases.push((format!("softmax {c} classes"), Op::Softmax, vec![img(rng, c, 13, 17)]));
        cases.push((format!("argmax {c} classes"), Op::Argmax, vec![img(rng, c, 13, 17)]));
    }
    cases
}

/// Largest |gpu - cpu| relative to max(|cpu|, mean |cpu|), which keeps near-zero outputs of a
/// cancelling sum from dominating.
fn relative_error(gpu: &Tensor, cpu: &Tensor) -> f32 {
    assert_eq!((gpu.c, gpu.h, gpu.w), (cpu.c, cpu.h, cpu.w));
    let mean = cpu.data.iter().map(|v| v.abs()).sum::<f32>() / cpu.data.len().max(1) as f32;
    gpu.data
        .iter()
        .zip(&cpu.data)
        .map(|(g, c)| if g.is_nan() { f32::INFINITY } else { (g - c).abs() / c.abs().max(mean).max(1e-30) })
        .fold(0.0, f32::max)
}

fn kernels_match_twins(precision: Precision, tol: f32) {
    let gpu = gpu(precision);
    let mut rng = SplitMix64(0x5EED);
    for (name, op, ins) in random_ops(&mut rng) {
        let (op, ins) = if precision == Precision::F16 { as_f16(&op, &ins) } else { (op, ins) };
        let refs: Vec<&Tensor> = ins.iter().collect();
        let want = cpu::run_op(&op, &refs);
        let got = gpu.run_op(&op, &refs, true).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(!got.data.iter().any(|v| v.is_nan()), "{name}: an output element was never written (NaN poison left)");
        let err = relative_error(&got, &want);
        println!("{:<4} {name:<48} max relative error {err:.2e}", precision.name());
        assert!(err <= tol, "{name} ({}): relative error {err:e} > {tol:e}", precision.name());
        if matches!(op, Op::Argmax | Op::MaxPool2 | Op::Relu | Op::Concat | Op::Upsample2(UpsampleMode::Nearest))
            && precision == Precision::F32
        {
            assert_eq!(first_difference(&got, &want), None, "{name}: selection ops are exact");
        }
    }
}

#[test]
#[cfg_attr(no_cuda_device, ignore = "no GPU, and no emulated one: needs NVRTC and a C++ compiler (build.rs)")]
fn every_kernel_matches_its_cpu_twin_f32() {
    kernels_match_twins(Precision::F32, 1e-5);
}

#[test]
#[cfg_attr(no_cuda_device, ignore = "no GPU, and no emulated one: needs NVRTC and a C++ compiler (build.rs)")]
fn every_kernel_matches_its_cpu_twin_f16() {
    kernels_match_twins(Precision::F16, 1e-2);
}

/// f16 stores round to nearest even, as IEEE and the host's `half` crate do, in every range: normal,
/// subnormal, ties, overflow to infinity. scale_shift computes x * scale + shift in f32 (two
/// roundings) and stores it with `cvt.rn.f16.f32` (the emulator: its host conversion), so its bits
/// equal the CPU twin's f32 result rounded to f16.
#[test]
#[cfg_attr(no_cuda_device, ignore = "no GPU, and no emulated one: needs NVRTC and a C++ compiler (build.rs)")]
fn f16_stores_round_to_nearest_even() {
    let gpu = gpu(Precision::F16);
    let mut rng = SplitMix64(0xF16);
    // Channel scales that land products among normals, subnormals (below 6.1e-5) and past 65504.
    // x * 3 is exact in f32 with 13 significant bits, so a quarter of it lies halfway between two
    // f16 values: the ties.
    let scale = vec![3.0, 3.0e-5, 1.0e-7, 7.0e3, 1.0e5, -0.7];
    let shift = vec![0.0, 0.0, 1.0e-8, -0.5, 0.0, 1.0e-3];
    let (c, h, w) = (scale.len(), 64, 64);
    let x: Vec<f32> = (0..c * h * w).map(|_| half::f16::from_f32(rng.normal() as f32 * 8.0).to_f32()).collect();
    let x = Tensor::from_vec(c, h, w, x);
    let op = Op::ScaleShift(ScaleShift { scale, shift, relu: false });
    let got = gpu.run_op(&op, &[&x], true).unwrap();
    let want = cpu::run_op(&op, &[&x]);
    let (mut subnormal, mut infinite) = (0, 0);
    for (i, (&g, &f)) in got.data.iter().zip(&want.data).enumerate() {
        let r = half::f16::from_f32(f);
        subnormal += (r.to_bits() & 0x7c00 == 0 && r.to_bits() & 0x3ff != 0) as usize;
        infinite += r.is_infinite() as usize;
        assert_eq!(g.to_bits(), r.to_f32().to_bits(), "element {i}: {f:e} stored as {g:e}, not {}", r.to_f32());
    }
    println!("{} values, {subnormal} subnormal, {infinite} infinite: all rounded as IEEE", got.data.len());
    assert!(subnormal > 100 && infinite > 100, "the ranges were exercised");
}

/// Every f16 conv variant (kernels/conv.cu, variants 2 and 3) gives the same bits as every other
/// for the same layer, writes every output element (NaN poison), and matches the CPU twin within
/// the f16 tolerance: growth-rate widths (12, 16), widths that leave part of a 16/32/64-channel
/// tile empty (48, 100), cin not a multiple of 16 and several chunks (double buffering), odd maps
/// smaller and larger than a block, k 1, 3 and 5 (5: variant 2 only).
#[test]
#[cfg_attr(no_cuda_device, ignore = "no GPU, and no emulated one: needs NVRTC and a C++ compiler (build.rs)")]
fn f16_conv_variants_agree_bit_for_bit() {
    let gpu = gpu(Precision::F16);
    let mut rng = SplitMix64(0xC0DE);
    let shapes = [
        (16, 12, 3),
        (20, 16, 3),
        (33, 48, 3),
        (64, 64, 3),
        (40, 100, 3),
        (3, 12, 3),
        (70, 16, 1),
        (17, 100, 1),
        (48, 64, 1),
        (5, 48, 1),
        (24, 16, 5),
    ];
    for (case, &(cin, cout, k)) in shapes.iter().enumerate() {
        let (h, w) = match case % 3 {
            0 => (pick(&mut rng, 1, 9) | 1, pick(&mut rng, 1, 9) | 1),
            1 => (pick(&mut rng, 17, 41) | 1, pick(&mut rng, 17, 41) | 1),
            _ => (pick(&mut rng, 10, 33), pick(&mut rng, 40, 70) | 1),
        };
        let fan = (cin * k * k) as f32;
        let conv = Conv2d {
            cin,
            cout,
            k,
            weight: randv(&mut rng, cout * cin * k * k, 1.0 / fan.sqrt()),
            bias: randv(&mut rng, cout, 0.5),
            relu: case % 2 == 1,
            pre: None,
            algo: Default::default(),
        };
        let x = random_image(&mut rng, cin, h, w);
        let (op, ins) = as_f16(&Op::Conv2d(conv), &[x]);
        let Op::Conv2d(conv) = &op else { unreachable!() };
        let want = cpu::run_op(&op, &[&ins[0]]);
        let name = format!("conv2d f16 cin {cin} cout {cout} k {k} {h}x{w} relu {}", conv.relu);
        let mut first: Option<(&str, Tensor)> = None;
        for v in conv_variants::eligible(k) {
            let got = gpu
                .run_conv_f16_variant(conv, &ins[0], v.tag, true)
                .unwrap_or_else(|e| panic!("{name} {}: {e}", v.tag));
            assert!(!got.data.iter().any(|v| v.is_nan()), "{name} {}: an output element was never written", v.tag);
            let err = relative_error(&got, &want);
            println!("{name:<48} {:<16} max relative error {err:.2e}", v.tag);
            assert!(err <= 1e-2, "{name} {}: relative error {err:e} > 1e-2", v.tag);
            match &first {
                None => first = Some((v.tag, got)),
                Some((tag, t)) => {
                    assert_eq!(first_difference(t, &got), None, "{name}: {} differs from {tag}", v.tag)
                }
            }
        }
    }
}

/// Autotuning (measured, from the cache, or off) changes which kernel runs, never the output:
/// whole f16 forward passes of a small FC-DenseNet (growth 12 and 16) and U-Net equal each other
/// bit for bit with the heuristic, measured choices, and every variant forced on every layer.
#[test]
#[cfg_attr(no_cuda_device, ignore = "no GPU, and no emulated one: needs NVRTC and a C++ compiler (build.rs)")]
fn autotuned_models_equal_the_heuristic_bit_for_bit() {
    let models = [
        ("fcdensenet growth 12", random_model(densenet(3, 2, 16, 12, &[2, 3], 2), 21)),
        ("fcdensenet growth 16", random_model(densenet(1, 3, 24, 16, &[3, 2], 3), 22)),
        ("unet", random_model(unet(1, 2, 16, 2, true, "transpose"), 23)),
    ];
    let base = gpu_tuned(Precision::F16, TuneMode::Heuristic);
    let mut modes = vec![TuneMode::Measure { disk: false }];
    modes.extend(conv_variants::F16_VARIANTS.iter().map(|v| TuneMode::Fixed(v.tag)));
    let tuned: Vec<CudaBackend> = modes.iter().map(|&m| gpu_tuned(Precision::F16, m)).collect();
    for (name, model) in &models {
        let a = model.align();
        for (hu, wu) in [(2, 3), (4, 4)] {
            let (h, w) = (a * hu, a * wu);
            let img = random_image(&mut SplitMix64(h as u64 * 31 + w as u64), model.in_channels(), h, w);
            let want = base.run(&model.graph, &img).unwrap();
            for (mode, b) in modes.iter().zip(&tuned) {
                let got = b.run(&model.graph, &img).unwrap_or_else(|e| panic!("{name} {mode:?}: {e}"));
                assert_eq!(first_difference(&want, &got), None, "{name} {h}x{w}: {mode:?} vs heuristic");
            }
            println!("{name:<22} {h}x{w}: heuristic == measured == each forced variant");
        }
    }
}

/// f32 conv and transposed conv use the twins' summation order and FMA rounding, scale-shift and
/// upsampling the twins' unfused arithmetic, so they agree with the CPU bit for bit (softmax's exp
/// is the only approximate op).
#[test]
#[cfg_attr(no_cuda_device, ignore = "no GPU, and no emulated one: needs NVRTC and a C++ compiler (build.rs)")]
fn f32_arithmetic_kernels_equal_the_cpu_bit_for_bit() {
    let gpu = gpu(Precision::F32);
    let mut rng = SplitMix64(0xB17);
    for (name, op, ins) in random_ops(&mut rng) {
        if matches!(op, Op::Softmax) {
            continue;
        }
        let refs: Vec<&Tensor> = ins.iter().collect();
        let got = gpu.run_op(&op, &refs, false).unwrap();
        assert_eq!(first_difference(&got, &cpu::run_op(&op, &refs)), None, "{name}");
    }
}

/// A small model of the family, its architecture varied by the seed (as in tests/exactness.rs).
fn family_model(family: &str, rng: &mut SplitMix64) -> Model {
    let seed = rng.next_u64();
    let cfg = match family {
        "unet" => {
            let up = ["transpose", "bilinear", "nearest"][pick(rng, 0, 2)];
            unet(pick(rng, 1, 2), pick(rng, 2, 3), 4 * pick(rng, 1, 4), pick(rng, 1, 3), rng.uniform() < 0.7, up)
        }
        _ => {
            let levels = pick(rng, 1, 3);
            let down: Vec<usize> = (0..levels).map(|_| pick(rng, 1, 3)).collect();
            densenet(pick(rng, 1, 3), pick(rng, 2, 3), 8, pick(rng, 4, 12), &down, pick(rng, 1, 2))
        }
    };
    random_model(cfg, seed)
}

/// Random geometries per family and precision: `on_gpu` on a GPU, `emulated` on the emulated device,
/// which runs every thread of every block on the CPU (the first `emulated` cases are the same).
fn case_count(on_gpu: usize, emulated: usize) -> usize {
    if emulator::emulated() { emulated } else { on_gpu }
}

fn tiled_equals_whole_on_gpu(family: &str, precision: Precision, cases: usize, seed: u64) {
    let gpu = gpu(precision);
    let mut rng = SplitMix64(seed);
    for case in 0..cases {
        let model = family_model(family, &mut rng);
        let t = TilingCase::random(&mut rng, &model, 40);
        let img = random_image(&mut rng, model.in_channels(), t.h, t.w);
        let what = format!("{family} {} case {case}: {}", precision.name(), t.describe(&model));
        let (whole, tiled) = t.run(&gpu, &model, &img).unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(first_difference(&whole, &tiled), None, "{what}");
        // Across backends only a tolerance holds (and f32 is nearly exact: only exp differs).
        let cpu = infer_on(&CpuBackend::default(), &model, &img, t.pad, Tiling::Whole, &mut |_| {}, None).unwrap();
        let diff = max_abs_diff(&whole, &cpu);
        println!("{what}: tiled == whole; max |gpu - cpu| = {diff:.2e}");
        if precision == Precision::F32 {
            assert!(diff < 1e-4, "{what}: GPU f32 differs from the CPU by {diff}");
        }
    }
}

#[test]
#[cfg_attr(no_cuda_device, ignore = "no GPU, and no emulated one: needs NVRTC and a C++ compiler (build.rs)")]
fn unet_tiled_equals_whole_on_gpu_f32() {
    tiled_equals_whole_on_gpu("unet", Precision::F32, case_count(24, 8), 0xA1);
}

#[test]
#[cfg_attr(no_cuda_device, ignore = "no GPU, and no emulated one: needs NVRTC and a C++ compiler (build.rs)")]
fn unet_tiled_equals_whole_on_gpu_f16() {
    tiled_equals_whole_on_gpu("unet", Precision::F16, case_count(24, 8), 0xA2);
}

#[test]
#[cfg_attr(no_cuda_device, ignore = "no GPU, and no emulated one: needs NVRTC and a C++ compiler (build.rs)")]
fn fcdensenet_tiled_equals_whole_on_gpu_f32() {
    tiled_equals_whole_on_gpu("fcdensenet", Precision::F32, case_count(24, 6), 0xB1);
}

#[test]
#[cfg_attr(no_cuda_device, ignore = "no GPU, and no emulated one: needs NVRTC and a C++ compiler (build.rs)")]
fn fcdensenet_tiled_equals_whole_on_gpu_f16() {
    tiled_equals_whole_on_gpu("fcdensenet", Precision::F16, case_count(24, 6), 0xB2);
}

/// The backend reuses its uploaded weights and staging buffers across tiles and models: running
/// model A, then B, then A again gives A's first result.
#[test]
#[cfg_attr(no_cuda_device, ignore = "no GPU, and no emulated one: needs NVRTC and a C++ compiler (build.rs)")]
fn switching_models_reuploads_weights() {
    let gpu = gpu(Precision::F32);
    let a = random_model(unet(1, 2, 4, 2, true, "transpose"), 1);
    let b = random_model(unet(1, 2, 4, 2, true, "transpose"), 2);
    let img = random_image(&mut SplitMix64(3), 1, 40, 40);
    let first = gpu.run(&a.graph, &img).unwrap();
    let other = gpu.run(&b.graph, &img).unwrap();
    assert!(first_difference(&first, &other).is_some(), "different weights, different output");
    assert_eq!(first_difference(&first, &gpu.run(&a.graph, &img).unwrap()), None);
}

/// Small models of both families, plus the FC-DenseNet-56 and a 16-filter U-Net preset (random
/// weights): the FC-DenseNets carry fused conv pre-ops, which the backend runs split.
fn memory_models() -> Vec<(String, Model)> {
    let mut out: Vec<(String, Model)> = vec![
        ("unet small".into(), random_model(unet(1, 2, 4, 3, true, "transpose"), 1)),
        ("unet bilinear".into(), random_model(unet(3, 3, 8, 2, false, "bilinear"), 2)),
        ("fcdensenet small".into(), random_model(densenet(1, 3, 4, 3, &[2, 3], 2), 4)),
        ("fcdensenet 3 levels".into(), random_model(densenet(2, 2, 6, 4, &[1, 2, 2], 3), 5)),
    ];
    for preset in ["unet-16", "fcdensenet-56"] {
        let cfg = seamless::model::ModelConfig::preset(preset).expect("preset");
        out.push((preset.into(), random_model(cfg, 9)));
    }
    out
}

/// The planner's device memory model is what the backend really allocates: arena, parameters
/// and staging, byte for byte, for both families, several window sizes and both precisions.
/// Windows grow, so each run's plan is the largest so far; a smaller window afterwards reuses the
/// arena (nothing is reallocated, nothing shrinks).
fn device_allocation_equals_the_plan(precision: Precision) {
    use seamless::cuda::DeviceBytes;
    use seamless::planner::tile_plan;
    for (name, model) in memory_models() {
        // A fresh backend per model: its buffers hold nothing from another model.
        let gpu = gpu(precision);
        let a = model.align();
        let (free0, _) = gpu.mem_get_info().unwrap();
        let mut largest = DeviceBytes::default();
        for (hu, wu) in [(1, 1), (2, 1), (2, 3), (4, 4)] {
            let (h, w) = (a * hu, a * wu);
            let img = random_image(&mut SplitMix64(h as u64), model.in_channels(), h, w);
            let out = gpu.run(&model.graph, &img).unwrap_or_else(|e| panic!("{name} {h}x{w}: {e}"));
            assert!(out.data.iter().all(|v| v.is_finite()), "{name} {h}x{w}: non-finite output");
            let p = tile_plan::peak(&model.graph, h, w, &seamless::cuda::DeviceMemory { precision }).unwrap();
            let want = DeviceBytes { arena: p.arena_bytes, weights: p.weight_bytes, staging: p.staging_bytes };
            let got = gpu.allocated();
            let (free, _) = gpu.mem_get_info().unwrap();
            println!(
                "{:<4} {name:<20} {h:>4}x{w:<4} planned {:>11} B (arena {} + weights {} + staging {}), \
                 allocated {:>11} B, cuMemGetInfo used +{} B",
                precision.name(),
                p.total(),
                p.arena_bytes,
                p.weight_bytes,
                p.staging_bytes,
                got.total(),
                free0.saturating_sub(free)
            );
            assert_eq!(got, want, "{name} {} {h}x{w}: allocated vs planned", precision.name());
            assert_eq!(got.total(), p.total());
            largest = got;
        }
        let img = random_image(&mut SplitMix64(1), model.in_channels(), a, 2 * a);
        gpu.run(&model.graph, &img).unwrap();
        assert_eq!(gpu.allocated(), largest, "{name}: a smaller window reuses the buffers");
    }
}

#[test]
#[cfg_attr(no_cuda_device, ignore = "no GPU, and no emulated one: needs NVRTC and a C++ compiler (build.rs)")]
fn device_allocation_equals_the_plan_f32() {
    device_allocation_equals_the_plan(Precision::F32);
}

#[test]
#[cfg_attr(no_cuda_device, ignore = "no GPU, and no emulated one: needs NVRTC and a C++ compiler (build.rs)")]
fn device_allocation_equals_the_plan_f16() {
    device_allocation_equals_the_plan(Precision::F16);
}

/// The pipelined path (upload, compute and download on three streams, one window in flight)
/// gives each window exactly what a lone run gives, in order, across window sizes that grow the
/// arena mid-stream and shrink again.
fn pipelined_equals_one_by_one(precision: Precision) {
    let gpu = gpu(precision);
    for (name, model) in memory_models().into_iter().take(4) {
        let a = model.align();
        let sizes = [(1, 1), (2, 2), (1, 3), (3, 2), (1, 1), (2, 1)];
        let windows: Vec<Tensor> = sizes
            .iter()
            .enumerate()
            .map(|(k, &(hu, wu))| random_image(&mut SplitMix64(k as u64), model.in_channels(), a * hu, a * wu))
            .collect();
        let want: Vec<Tensor> = windows.iter().map(|x| gpu.run(&model.graph, x).unwrap()).collect();
        let mut queue = windows.clone().into_iter();
        let mut got: Vec<(Tensor, Tensor)> = Vec::new();
        gpu.run_pipelined(&model.graph, &mut || queue.next(), &mut |x, y| {
            got.push((x, y.unwrap()));
            true
        });
        assert_eq!(got.len(), windows.len(), "{name}");
        for (k, ((x, y), w)) in got.iter().zip(&want).enumerate() {
            assert_eq!(x, &windows[k], "{name}: window {k} handed back in order");
            assert_eq!(first_difference(y, w), None, "{name} {}: window {k}", precision.name());
        }
        println!("{:<4} {name:<20} pipelined == one by one over {} windows", precision.name(), windows.len());
    }
}

#[test]
#[cfg_attr(no_cuda_device, ignore = "no GPU, and no emulated one: needs NVRTC and a C++ compiler (build.rs)")]
fn pipelined_equals_one_by_one_f32() {
    pipelined_equals_one_by_one(Precision::F32);
}

#[test]
#[cfg_attr(no_cuda_device, ignore = "no GPU, and no emulated one: needs NVRTC and a C++ compiler (build.rs)")]
fn pipelined_equals_one_by_one_f16() {
    pipelined_equals_one_by_one(Precision::F16);
}
