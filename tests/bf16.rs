//! `--precision bf16` on the CPU: every bf16 engine this CPU has (and the AMX kernel on emulated
//! tiles) gives the bits of the plain element-by-element bf16 references in its order (direct,
//! transposed and Winograd convolutions, subnormals included); tiles equal the whole image bit for
//! bit at bf16 for both model families, on random geometries, on this CPU's engine and on the
//! emulated tiles; bf16 stays close to f32; the planned memory is what is allocated; and the CLI
//! refuses precisions a backend does not have.

mod common;

use common::*;
use seamless::Tensor;
use seamless::backend::Backend;
use seamless::cpu::{self, CpuBackend, bf16, direct::Isa};
use seamless::graph::{Conv2d, ConvAlgo, ConvTranspose2d, ScaleShift};
use seamless::model::weights::SplitMix64;
use seamless::planner::Precision;

fn randv(rng: &mut SplitMix64, n: usize, scale: f32) -> Vec<f32> {
    (0..n).map(|_| rng.normal() as f32 * scale).collect()
}

fn bf16_engines() -> Vec<Isa> {
    let v = Isa::available_for(Precision::Bf16);
    assert!(v.contains(&Isa::Bf16Portable) && v.iter().all(|i| i.is_bf16()), "{v:?}");
    v
}

fn conv_layer(rng: &mut SplitMix64, cin: usize, cout: usize, k: usize, case: usize, algo: ConvAlgo) -> Conv2d {
    Conv2d {
        cin,
        cout,
        k,
        weight: randv(rng, cout * cin * k * k, 1.0 / (k * k * cin) as f32),
        bias: randv(rng, cout, 0.5),
        relu: case.is_multiple_of(2),
        pre: case.is_multiple_of(3).then(|| ScaleShift {
            scale: randv(rng, cin, 1.0),
            shift: randv(rng, cin, 0.5),
            relu: case % 2 == 1,
        }),
        algo,
    }
}

/// Odd and even channel counts (an odd last channel is paired with zero), maps narrower and wider
/// than a block, every kernel size.
#[test]
fn direct_convolution_equals_the_bf16_reference_bit_for_bit() {
    let mut rng = SplitMix64(0xBF16);
    let mut tiles_order_shows = 0;
    for case in 0..40 {
        // Every fifth case has several of the tiles' 16-pair blocks.
        let cin = if case % 5 == 4 { pick(&mut rng, 33, 70) } else { pick(&mut rng, 1, 21) };
        let cout = pick(&mut rng, 1, 40);
        let k = [1, 3, 5][case % 3];
        let (h, w) = (pick(&mut rng, 1, 13), pick(&mut rng, 1, 130));
        let c = conv_layer(&mut rng, cin, cout, k, case, ConvAlgo::Direct);
        let x = random_image(&mut rng, cin, h, w);
        for isa in bf16_engines() {
            let want = cpu::conv::conv2d_reference_bf16_for(&x, &c, isa);
            let got = cpu::conv::conv2d_isa(&x, &c, isa);
            assert_eq!(first_difference(&got, &want), None, "{isa:?} case {case}: {cin}->{cout} k {k} {h}x{w}");
            if isa.is_amx() && k > 1 && first_difference(&want, &cpu::conv::conv2d_reference_bf16(&x, &c)).is_some() {
                tiles_order_shows += 1;
            }
        }
    }
    // The tiles' order of the sum (16 pairs per tap) is not the vector engines' (every tap of a
    // pair): the references tell them apart, so the comparison above checks the order too.
    assert!(tiles_order_shows > 0);
}

/// 1 x 1 convolutions, with and without a fused input transform, in f32 and bf16: those whose
/// input rows fit a task's buffer transform them a position block at a time, wider ones (up to
/// 1,370 channels and more here) a whole padded copy; both give the references' bits, on every engine.
#[test]
fn pointwise_convolutions_equal_their_references_on_both_paths() {
    let mut rng = SplitMix64(0x1B1);
    for case in 0..24 {
        let cin = if case % 8 == 7 { pick(&mut rng, 1370, 1400) } else { pick(&mut rng, 1, 60) };
        // The wide ones take the padded copy in both arithmetics, the others the row buffer.
        let wide = Isa::available()
            .into_iter()
            .chain(bf16_engines())
            .filter(|i| !i.is_amx())
            .any(|i| !cpu::direct::converted_fits(i.depth(cin), i));
        assert_eq!(wide, case % 8 == 7, "case {case}: {cin} channels");
        let (cout, h, w) = (pick(&mut rng, 1, 19), pick(&mut rng, 1, 9), pick(&mut rng, 1, 110));
        // conv_layer's `case`: odd cases 3 or 6 (a fused BN in front, with or without its ReLU),
        // even ones 1 or 2 (none); the conv's own ReLU on 2 and 6.
        let kind = if case % 2 == 1 { 3 * (1 + case / 2 % 2) } else { 1 + case / 2 % 2 };
        let c = conv_layer(&mut rng, cin, cout, 1, kind, ConvAlgo::Direct);
        let x = random_image(&mut rng, cin, h, w);
        let what = format!("case {case}: {cin}->{cout} {h}x{w} pre {}", c.pre.is_some());
        let want = cpu::conv::conv2d_reference(&x, &c);
        for isa in Isa::available() {
            assert_eq!(first_difference(&cpu::conv::conv2d_isa(&x, &c, isa), &want), None, "{isa:?} {what}");
        }
        for isa in bf16_engines() {
            let want = cpu::conv::conv2d_reference_bf16_for(&x, &c, isa);
            assert_eq!(first_difference(&cpu::conv::conv2d_isa(&x, &c, isa), &want), None, "{isa:?} {what}");
        }
    }
}

#[test]
fn winograd_equals_the_bf16_reference_bit_for_bit() {
    let mut rng = SplitMix64(0xB16);
    for case in 0..24 {
        let (cin, cout) = (pick(&mut rng, 1, 40), pick(&mut rng, 1, 40));
        let (h, w) = (pick(&mut rng, 1, 20), pick(&mut rng, 1, 140));
        let c = conv_layer(&mut rng, cin, cout, 3, case, ConvAlgo::Winograd2);
        let x = random_image(&mut rng, cin, h, w);
        let want = cpu::winograd::conv2d_reference_bf16(&x, &c);
        for isa in bf16_engines() {
            let got = cpu::conv::conv2d_isa(&x, &c, isa);
            assert_eq!(first_difference(&got, &want), None, "{isa:?} case {case}: {cin}->{cout} {h}x{w}");
        }
    }
}

/// The transposed convolution in bf16 as `isa` sums it, one element at a time: bias, then the
/// input channel pairs ascending (`isa.depth` of them, zero past the channels) in blocks of
/// `isa.k_block()`, each block's taps of the output pixel's parity in ascending (ky, kx), within a
/// tap the block's pairs, one [`bf16::madd`] each; a tap reaching row or column -1 (k = 3) adds
/// zero products.
fn conv_transpose_bf16_reference(x: &Tensor, c: &ConvTranspose2d, isa: Isa) -> Tensor {
    let (oh, ow) = (2 * x.h, 2 * x.w);
    let mut out = Tensor::zeros(c.cout, oh, ow);
    let input = |ci: usize, iy: isize, ix: isize| {
        if ci >= c.cin || iy < 0 || ix < 0 { 0.0 } else { x.at(ci, iy as usize, ix as usize) }
    };
    let weight = |ci: usize, co: usize, ky: usize, kx: usize| {
        if ci >= c.cin { 0.0 } else { c.weight[((ci * c.cout + co) * c.k + ky) * c.k + kx] }
    };
    for co in 0..c.cout {
        for oy in 0..oh {
            for ox in 0..ow {
                let mut acc = bf16::flush(c.bias[co]);
                let (depth, kb) = (isa.depth(c.cin), isa.k_block());
                for p0 in (0..depth).step_by(kb) {
                    for ky in (oy % 2..c.k).step_by(2) {
                        for kx in (ox % 2..c.k).step_by(2) {
                            for p in p0..(p0 + kb).min(depth) {
                                let (iy, ix) = ((oy as isize - ky as isize) / 2, (ox as isize - kx as isize) / 2);
                                let xv = bf16::pair(input(2 * p, iy, ix), input(2 * p + 1, iy, ix));
                                let wv = bf16::pair(weight(2 * p, co, ky, kx), weight(2 * p + 1, co, ky, kx));
                                acc = bf16::madd(acc, xv, wv);
                            }
                        }
                    }
                }
                out.data[(co * oh + oy) * ow + ox] = acc;
            }
        }
    }
    out
}

#[test]
fn transposed_convolution_equals_the_bf16_reference_bit_for_bit() {
    let mut rng = SplitMix64(0xB17);
    for k in [2, 3] {
        for case in 0..12 {
            let (cin, cout) = (pick(&mut rng, 1, 11), pick(&mut rng, 1, 13));
            let (h, w) = (pick(&mut rng, 1, 9), pick(&mut rng, 1, 70));
            let c = ConvTranspose2d {
                cin,
                cout,
                k,
                weight: randv(&mut rng, cin * cout * k * k, 1.0),
                bias: randv(&mut rng, cout, 1.0),
            };
            let x = random_image(&mut rng, cin, h, w);
            for isa in bf16_engines() {
                let want = conv_transpose_bf16_reference(&x, &c, isa);
                let got = cpu::conv_transpose::conv_transpose2d_isa(&x, &c, isa);
                assert_eq!(first_difference(&got, &want), None, "{isa:?} k {k} case {case}: {cin}->{cout} {h}x{w}");
            }
        }
    }
}

/// Inputs, weights and biases near and below the smallest normal f32: the hardware treats bf16
/// subnormals as zero and flushes subnormal sums, and the reference does the same.
#[test]
fn subnormals_are_flushed_alike_on_every_engine() {
    let mut rng = SplitMix64(0xB18);
    for case in 0..8 {
        let (cin, cout) = (pick(&mut rng, 2, 9), pick(&mut rng, 1, 9));
        let mut c = conv_layer(&mut rng, cin, cout, 3, case, ConvAlgo::Direct);
        c.pre = None;
        let tiny = f32::MIN_POSITIVE;
        for w in &mut c.weight {
            *w *= 64.0;
        }
        for b in &mut c.bias {
            *b *= tiny * 2.0;
        }
        let mut x = random_image(&mut rng, cin, 6, 37);
        for v in &mut x.data {
            *v *= tiny * 4.0;
        }
        assert!(x.data.iter().any(|v| v.is_subnormal()) && c.bias.iter().any(|b| b.is_subnormal()), "case {case}");
        for isa in bf16_engines() {
            let want = cpu::conv::conv2d_reference_bf16_for(&x, &c, isa);
            let got = cpu::conv::conv2d_isa(&x, &c, isa);
            assert_eq!(first_difference(&got, &want), None, "{isa:?} case {case}");
        }
    }
}

fn bf16_backend() -> CpuBackend {
    CpuBackend::default().with_precision(Precision::Bf16).unwrap()
}

/// A small model of the family, its architecture varied by the seed (as the f32 exactness tests).
fn family_model(family: &str, rng: &mut SplitMix64) -> seamless::Model {
    let seed = rng.next_u64();
    let cfg = match family {
        "unet" => {
            let up = ["transpose", "bilinear", "nearest"][pick(rng, 0, 2)];
            unet(pick(rng, 1, 3), pick(rng, 2, 3), 2 * pick(rng, 1, 3) + 1, pick(rng, 1, 3), rng.uniform() < 0.7, up)
        }
        _ => {
            let levels = pick(rng, 1, 3);
            let down: Vec<usize> = (0..levels).map(|_| pick(rng, 1, 2)).collect();
            densenet(pick(rng, 1, 3), pick(rng, 2, 3), 5, pick(rng, 2, 3), &down, pick(rng, 1, 2))
        }
    };
    random_model(cfg, seed)
}

/// The exactness contract at bf16: tiled == whole, bit for bit, for random models, images, tiles
/// and halos (odd channel counts included), with and without Winograd, on this CPU's bf16 engine
/// or on `engine`.
fn bf16_exact_over_random_geometries(family: &str, cases: usize, seed: u64, engine: Option<Isa>) {
    let backend = match engine {
        Some(isa) => CpuBackend::default().with_engine(isa).unwrap(),
        None => bf16_backend(),
    };
    let mut rng = SplitMix64(seed);
    for case in 0..cases {
        let model = family_model(family, &mut rng);
        let model = if case % 2 == 1 { winograd_everywhere(model) } else { model };
        let t = TilingCase::random(&mut rng, &model, 20);
        let img = random_image(&mut rng, model.in_channels(), t.h, t.w);
        let (whole, tiled) = t.run(&backend, &model, &img).unwrap();
        assert_eq!(first_difference(&whole, &tiled), None, "{family} case {case}: {}", t.describe(&model));
    }
}

#[test]
fn unet_bf16_tiled_equals_whole_over_random_geometries() {
    bf16_exact_over_random_geometries("unet", 40, 0xB1F, None);
}

#[test]
fn fcdensenet_bf16_tiled_equals_whole_over_random_geometries() {
    bf16_exact_over_random_geometries("fcdensenet", 40, 0xB20, None);
}

/// The same on the AMX kernel (emulated tiles: every CPU runs it; the CPU's own tiles, where it
/// has them, are checked against the emulation before use and by the tests above).
#[test]
fn unet_amx_tiled_equals_whole_over_random_geometries() {
    bf16_exact_over_random_geometries("unet", 16, 0xA31, Some(Isa::AmxEmulated));
}

#[test]
fn fcdensenet_amx_tiled_equals_whole_over_random_geometries() {
    bf16_exact_over_random_geometries("fcdensenet", 16, 0xA32, Some(Isa::AmxEmulated));
}

/// bf16 keeps 8 bits of mantissa: on random models the class probabilities move by little and
/// the labels hardly at all (the demo models are measured in docs/perf.md).
#[test]
fn bf16_stays_close_to_f32() {
    let mut rng = SplitMix64(0xB21);
    for family in ["unet", "fcdensenet"] {
        let model = family_model(family, &mut rng);
        let img = random_image(&mut rng, model.in_channels(), 96, 96);
        let f32_out = CpuBackend::default().run(&model.graph, &img).unwrap();
        let bf16_out = bf16_backend().run(&model.graph, &img).unwrap();
        let diff = max_abs_diff(&f32_out, &bf16_out);
        assert!(diff > 0.0, "{family}: bf16 gave the f32 bits: it did not run in bf16");
        assert!(diff < 0.05, "{family}: max probability difference {diff}");
        let (l32, l16) = (seamless::pipeline::labels(&f32_out), seamless::pipeline::labels(&bf16_out));
        let same = l32.data.iter().zip(&l16.data).filter(|(a, b)| a == b).count();
        assert!(same as f64 >= 0.99 * l32.data.len() as f64, "{family}: labels agree at {same} of {}", l32.data.len());
    }
}

/// What the planner counts for bf16 (packed pairs, pair-plane workspace) is what the executor
/// allocates.
#[test]
fn planned_bf16_bytes_are_the_bytes_allocated() {
    use seamless::planner::ArenaPlan;
    let mut rng = SplitMix64(0xB22);
    for (family, isa) in [("unet", Isa::detect_for(Precision::Bf16)), ("fcdensenet", Isa::detect_for(Precision::Bf16))]
        .into_iter()
        .chain([("unet", Isa::AmxEmulated), ("fcdensenet", Isa::AmxEmulated)])
    {
        let model = family_model(family, &mut rng);
        let n = model.align() * 3;
        let img = random_image(&mut rng, model.in_channels(), n, n + model.align());
        let plan = ArenaPlan::new(&model.graph, img.h, img.w).unwrap();
        let planned = (plan.arena_elems + cpu::workspace_elems(&model.graph, &plan, isa)) * 4
            + cpu::packed_weight_bytes(&model.graph, isa);
        let mut bufs = cpu::Buffers::new(isa);
        cpu::run_planned(&model.graph, &plan, &img, &mut bufs, true).unwrap();
        assert_eq!(bufs.allocated_bytes(), planned, "{family} {isa:?}");
        // bf16 packs half the weights' f32 elements (pairs), plus the odd channels' zero halves
        // (and on the tiles, zero pairs and channels up to whole tiles).
        assert!(
            isa.is_amx()
                || cpu::packed_weight_bytes(&model.graph, isa) < cpu::packed_weight_bytes(&model.graph, Isa::detect())
        );
    }
}

#[test]
fn precisions_a_backend_lacks_are_usage_errors() {
    let exe = env!("CARGO_BIN_EXE_seamless");
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("m.safetensors");
    let ok = std::process::Command::new(exe)
        .args(["random-model", "--preset", "unet-8-d2", "--out"])
        .arg(&model)
        .output()
        .unwrap();
    assert!(ok.status.success());
    for (backend, precision, says) in [("cuda", "bf16", "bf16 is a CPU arithmetic"), ("cpu", "f16", "f16 needs")] {
        let out = std::process::Command::new(exe)
            .args(["bench"])
            .arg(&model)
            .args(["--size", "64", "--runs", "1", "--backend", backend, "--precision", precision])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{backend} {precision}: {err}");
        assert!(err.contains(says), "{backend} {precision}: {err}");
    }
    // `bench --cpu-engine`: an engine by name, in its own precision, that this CPU has.
    let bench = |args: &[&str]| {
        std::process::Command::new(exe)
            .arg("bench")
            .arg(&model)
            .args(["--size", "64", "--runs", "1", "--no-peak"])
            .args(args)
            .output()
            .unwrap()
    };
    let mut refused = vec![
        (vec!["--cpu-engine", "fast"], "use one of portable"),
        (vec!["--cpu-engine", "amx-emulated"], "computes in bf16: give --precision bf16"),
        (vec!["--cpu-engine", "avx2", "--backend", "cuda"], "does not go with --backend cuda"),
    ];
    // A bf16 engine this CPU lacks (AMX on most), where there is one.
    if let Some((_, name)) = Isa::NAMES.iter().find(|(isa, _)| isa.is_bf16() && !isa.is_available()) {
        refused.push((vec!["--precision", "bf16", "--cpu-engine", name], "this CPU cannot run"));
    }
    for (args, says) in refused {
        let out = bench(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(says), "{args:?}: {err}");
    }
    let out = bench(&["--precision", "bf16", "--cpu-engine", "amx-emulated", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(report["backend"].as_str().unwrap().contains("AmxEmulated"), "{report}");
}

/// The demo models on a synthetic slide they were trained for, whole at f32 and at bf16: labels
/// agree on at least 99.9% of the pixels. Prints the agreement and the largest probability
/// difference (the figures in docs/perf.md: `cargo test --release --test bf16 demo -- --nocapture`).
#[test]
fn demo_models_keep_their_labels_at_bf16() {
    use seamless::normalize::{self, Normalize};
    let n = 1024;
    let (raw, _) = seamless::synth::generate(7, 0, 0, n, n);
    let mut img = Tensor::from_vec(1, n, n, raw.iter().map(|&v| v as f32).collect());
    let stats = normalize::statistics(&img, Normalize::Zscore);
    normalize::apply(&mut img, &stats);
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models");
    for name in ["unet-demo", "fcdensenet-demo"] {
        let model = seamless::model::file::load(&root.join(format!("{name}.safetensors"))).unwrap();
        let f32_out = CpuBackend::default().run(&model.graph, &img).unwrap();
        let bf16_out = bf16_backend().run(&model.graph, &img).unwrap();
        let diff = max_abs_diff(&f32_out, &bf16_out);
        let (l32, l16) = (seamless::pipeline::labels(&f32_out), seamless::pipeline::labels(&bf16_out));
        let same = l32.data.iter().zip(&l16.data).filter(|(a, b)| a == b).count();
        let agree = same as f64 / l32.data.len() as f64;
        println!(
            "{name}: {n}x{n} synthetic slide, bf16 on {:?}: labels agree at {:.4}% of pixels, max |p_bf16 - p_f32| = {diff:.2e}",
            Isa::detect_for(Precision::Bf16),
            100.0 * agree
        );
        assert!(agree >= 0.999, "{name}: labels agree at {:.4}%", 100.0 * agree);
    }
}
