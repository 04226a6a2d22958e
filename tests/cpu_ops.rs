//! CPU ops against plain definitions written straight from PyTorch's documentation.

mod common;

use common::*;
use seamless::Tensor;
use seamless::cpu;
use seamless::graph::{Conv2d, ConvTranspose2d, UpsampleMode};
use seamless::model::weights::SplitMix64;

fn randv(rng: &mut SplitMix64, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.normal() as f32).collect()
}

#[test]
fn conv_matches_the_elementwise_reference_bit_for_bit() {
    let mut rng = SplitMix64(1);
    for case in 0..40 {
        let (cin, cout) = (1 + rng.next_u64() as usize % 5, 1 + rng.next_u64() as usize % 19);
        let k = [1, 3, 5][rng.next_u64() as usize % 3];
        let (h, w) = (1 + rng.next_u64() as usize % 13, 1 + rng.next_u64() as usize % 70);
        let c = Conv2d {
            cin,
            cout,
            k,
            weight: randv(&mut rng, cout * cin * k * k),
            bias: randv(&mut rng, cout),
            relu: case % 2 == 0,
            // Every third case with a fused BN -> ReLU in front, as FC-DenseNet has.
            pre: (case % 3 == 0).then(|| seamless::graph::ScaleShift {
                scale: randv(&mut rng, cin),
                shift: randv(&mut rng, cin),
                relu: case % 2 == 1,
            }),
            algo: Default::default(),
        };
        let x = random_image(&mut rng, cin, h, w);
        let slow = cpu::conv::conv2d_reference(&x, &c);
        let fast = cpu::conv::conv2d(&x, &c);
        assert_eq!(first_difference(&fast, &slow), None, "case {case}: cin {cin} cout {cout} k {k} {h}x{w}");
        let portable = cpu::conv::conv2d_portable(&x, &c);
        assert_eq!(first_difference(&portable, &slow), None, "portable, case {case}");
        // Every implementation this CPU has (AVX-512, AVX2+FMA, portable): the same bits.
        for isa in cpu::direct::Isa::available() {
            let y = cpu::conv::conv2d_isa(&x, &c, isa);
            assert_eq!(first_difference(&y, &slow), None, "{isa:?}, case {case}");
        }
    }
}

/// PyTorch's definition of a transposed convolution: scatter every input pixel.
fn conv_transpose_scatter(x: &Tensor, c: &ConvTranspose2d) -> Tensor {
    let (oh, ow) = (2 * x.h, 2 * x.w);
    let mut full = Tensor::zeros(c.cout, 2 * x.h + c.k, 2 * x.w + c.k);
    for co in 0..c.cout {
        for ci in 0..c.cin {
            for iy in 0..x.h {
                for ix in 0..x.w {
                    for ky in 0..c.k {
                        for kx in 0..c.k {
                            let wv = c.weight[((ci * c.cout + co) * c.k + ky) * c.k + kx];
                            let i = (co * full.h + 2 * iy + ky) * full.w + 2 * ix + kx;
                            full.data[i] += wv * x.at(ci, iy, ix);
                        }
                    }
                }
            }
        }
    }
    let mut out = full.window(0, 0, oh, ow);
    for co in 0..c.cout {
        for v in &mut out.data[co * oh * ow..(co + 1) * oh * ow] {
            *v += c.bias[co];
        }
    }
    out
}

/// The transposed convolution in the engine's order, one element at a time: `bias`, then for each
/// input channel ascending its taps of the output pixel's parity in ascending (ky, kx), one fused
/// multiply-add each; a tap reaching row or column -1 (k = 3) adds `w·0`.
fn conv_transpose_ordered(x: &Tensor, c: &ConvTranspose2d) -> Tensor {
    let (oh, ow) = (2 * x.h, 2 * x.w);
    let mut out = Tensor::zeros(c.cout, oh, ow);
    for co in 0..c.cout {
        for oy in 0..oh {
            for ox in 0..ow {
                let mut acc = c.bias[co];
                for ci in 0..c.cin {
                    for ky in (oy % 2..c.k).step_by(2) {
                        for kx in (ox % 2..c.k).step_by(2) {
                            let (iy, ix) = ((oy as isize - ky as isize) / 2, (ox as isize - kx as isize) / 2);
                            let v = if iy < 0 || ix < 0 { 0.0 } else { x.at(ci, iy as usize, ix as usize) };
                            acc = c.weight[((ci * c.cout + co) * c.k + ky) * c.k + kx].mul_add(v, acc);
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
fn conv_transpose_matches_the_ordered_reference_bit_for_bit() {
    let mut rng = SplitMix64(12);
    for k in [2, 3] {
        for case in 0..12 {
            let (cin, cout) = (1 + rng.next_u64() as usize % 9, 1 + rng.next_u64() as usize % 13);
            // Maps smaller than, equal to and past a whole number of register blocks (48 positions).
            let (h, w) = match case {
                0 => (1, 48),
                1 => (2, 48),
                2 => (3, 17),
                _ => (1 + rng.next_u64() as usize % 9, 1 + rng.next_u64() as usize % 70),
            };
            let c = ConvTranspose2d {
                cin,
                cout,
                k,
                weight: randv(&mut rng, cin * cout * k * k),
                bias: randv(&mut rng, cout),
            };
            let x = random_image(&mut rng, cin, h, w);
            let want = conv_transpose_ordered(&x, &c);
            for isa in cpu::direct::Isa::available() {
                let y = cpu::conv_transpose::conv_transpose2d_isa(&x, &c, isa);
                assert_eq!(first_difference(&y, &want), None, "{isa:?} k {k} {cin}->{cout} {h}x{w}");
            }
        }
    }
}

/// 1 x 1 convolutions read their input in place (whole blocks) and a copy of its tail: the same
/// bits as the reference, for the classifier's shapes and maps around whole blocks.
#[test]
fn pointwise_conv_in_place_matches_the_reference_bit_for_bit() {
    let mut rng = SplitMix64(13);
    for (case, (h, w)) in
        [(1, 1), (1, 47), (1, 48), (2, 48), (3, 33), (7, 61), (16, 16), (5, 97)].into_iter().enumerate()
    {
        let cin = [1, 3, 64, 17][case % 4];
        let cout = [2, 1, 8, 13, 3][case % 5];
        let c = Conv2d {
            cin,
            cout,
            k: 1,
            weight: randv(&mut rng, cout * cin),
            bias: randv(&mut rng, cout),
            relu: case % 2 == 1,
            pre: None,
            algo: Default::default(),
        };
        let x = random_image(&mut rng, cin, h, w);
        let want = cpu::conv::conv2d_reference(&x, &c);
        for isa in cpu::direct::Isa::available() {
            let y = cpu::conv::conv2d_isa(&x, &c, isa);
            assert_eq!(first_difference(&y, &want), None, "{isa:?} {cin}->{cout} {h}x{w}");
        }
    }
}

#[test]
fn conv_transpose_matches_the_scatter_definition() {
    let mut rng = SplitMix64(2);
    for k in [2, 3] {
        for _ in 0..10 {
            let (cin, cout) = (1 + rng.next_u64() as usize % 4, 1 + rng.next_u64() as usize % 12);
            let (h, w) = (1 + rng.next_u64() as usize % 7, 1 + rng.next_u64() as usize % 40);
            let c = ConvTranspose2d {
                cin,
                cout,
                k,
                weight: randv(&mut rng, cin * cout * k * k),
                bias: randv(&mut rng, cout),
            };
            let x = random_image(&mut rng, cin, h, w);
            let d = max_abs_diff(&cpu::conv_transpose::conv_transpose2d(&x, &c), &conv_transpose_scatter(&x, &c));
            assert!(d < 1e-5, "k {k}: {d}");
            // Every implementation this CPU has gives the portable one's bits.
            let portable = cpu::conv_transpose::conv_transpose2d_isa(&x, &c, cpu::direct::Isa::Portable);
            for isa in cpu::direct::Isa::available() {
                let y = cpu::conv_transpose::conv_transpose2d_isa(&x, &c, isa);
                assert_eq!(first_difference(&y, &portable), None, "{isa:?} k {k} {cin}->{cout} {h}x{w}");
            }
        }
    }
}

#[test]
fn bilinear_and_nearest_upsampling_match_pytorch_semantics() {
    // 1x2 -> 2x4 by hand: half-pixel centres, clamped at the edges.
    let x = Tensor::from_vec(1, 1, 2, vec![0.0, 4.0]);
    let b = cpu::upsample::upsample2(&x, UpsampleMode::Bilinear);
    assert_eq!(b.data, vec![0.0, 1.0, 3.0, 4.0, 0.0, 1.0, 3.0, 4.0]);
    let n = cpu::upsample::upsample2(&x, UpsampleMode::Nearest);
    assert_eq!(n.data, vec![0.0, 0.0, 4.0, 4.0, 0.0, 0.0, 4.0, 4.0]);
}

#[test]
fn pooling_softmax_argmax() {
    let x = Tensor::from_vec(1, 2, 4, vec![1.0, 5.0, -1.0, -2.0, 3.0, 2.0, -3.0, -0.5]);
    assert_eq!(cpu::pool::max_pool2(&x).data, vec![5.0, -0.5]);
    let logits = Tensor::from_vec(3, 1, 2, vec![0.0, 1.0, 1.0, 1.0, 2.0, 0.5]);
    let p = cpu::softmax::softmax(&logits);
    for px in 0..2 {
        let s: f32 = (0..3).map(|c| p.data[c * 2 + px]).sum();
        assert!((s - 1.0).abs() < 1e-6);
    }
    // Pixel 1 ties channels 0 and 1: the first wins.
    assert_eq!(cpu::softmax::argmax(&p).data, vec![2.0, 0.0]);
}

/// The engine's blocks run across row ends and start wherever the map's extent puts them: an
/// output pixel must still get the same bits in a window of the map as in the whole map.
#[test]
fn conv_bits_do_not_depend_on_the_map_extent_or_the_pixel_position() {
    let mut rng = SplitMix64(9);
    for (cin, cout, k) in [(40, 20, 3), (24, 16, 1), (7, 9, 5)] {
        let c = Conv2d {
            cin,
            cout,
            k,
            weight: randv(&mut rng, cout * cin * k * k),
            bias: randv(&mut rng, cout),
            relu: false,
            pre: Some(seamless::graph::ScaleShift {
                scale: randv(&mut rng, cin),
                shift: randv(&mut rng, cin),
                relu: true,
            }),
            algo: Default::default(),
        };
        let x = random_image(&mut rng, cin, 37, 61);
        let r = k / 2;
        for isa in cpu::direct::Isa::available() {
            let whole = cpu::conv::conv2d_isa(&x, &c, isa);
            for (y0, x0, h, w) in [(5, 7, 25, 43), (0, 0, 13, 61), (3, 11, 34, 50), (1, 2, 9, 17)] {
                let part = cpu::conv::conv2d_isa(&x.window(y0, x0, h, w), &c, isa);
                for co in 0..cout {
                    for y in r..h - r {
                        for xx in r..w - r {
                            assert_eq!(
                                part.at(co, y, xx).to_bits(),
                                whole.at(co, y0 + y, x0 + xx).to_bits(),
                                "{isa:?} k {k} window {y0},{x0} {h}x{w} at {co},{y},{xx}"
                            );
                        }
                    }
                }
            }
        }
    }
}

/// The AVX-512 engine on unpadded planes (padding lanes masked to zero) against the reference, bit
/// for bit: through `conv2d` (it takes maps at least 128 wide with 16+ input channels) and called
/// directly on narrow and odd maps, where blocks cross several rows and both borders.
#[test]
fn masked_unpadded_conv_matches_the_reference_bit_for_bit() {
    if !cpu::unpadded::available() {
        return;
    }
    let mut rng = SplitMix64(14);
    for case in 0..14 {
        let k = [3, 5, 3, 7][case % 4];
        let (cin, cout) = (1 + rng.next_u64() as usize % 20, 1 + rng.next_u64() as usize % 13);
        let (h, w) = if case < 4 {
            (1 + rng.next_u64() as usize % 4, 128 + rng.next_u64() as usize % 60)
        } else {
            (1 + rng.next_u64() as usize % 9, 1 + rng.next_u64() as usize % 40)
        };
        let c = Conv2d {
            cin: if case < 4 { cin + 16 } else { cin },
            cout,
            k,
            weight: vec![],
            bias: randv(&mut rng, cout),
            relu: case % 2 == 0,
            pre: None,
            algo: Default::default(),
        };
        let c = Conv2d { weight: randv(&mut rng, cout * c.cin * k * k), ..c };
        let x = random_image(&mut rng, c.cin, h, w);
        let want = cpu::conv::conv2d_reference(&x, &c);
        for isa in cpu::direct::Isa::available() {
            let y = cpu::conv::conv2d_isa(&x, &c, isa);
            assert_eq!(first_difference(&y, &want), None, "{isa:?} k {k} {}->{cout} {h}x{w}", c.cin);
        }
        let mut packed = vec![0.0; cpu::conv::packed_elems(&c, cpu::direct::Isa::Avx512)];
        cpu::conv::pack(&c, &mut packed, cpu::direct::Isa::Avx512);
        let p = cpu::unpadded::Plain { data: &x.data, h, w, cin: c.cin, k, weights: &packed, bias: &c.bias, cout };
        let got = std::sync::Mutex::new(Tensor::zeros(cout, h, w));
        cpu::unpadded::run(&p, |co0, q0, n, blk| {
            let mut g = got.lock().unwrap();
            for (j, a) in blk.iter().enumerate().take(cout.saturating_sub(co0).min(8)) {
                for (i, &v) in a[..n].iter().enumerate() {
                    g.data[(co0 + j) * h * w + q0 + i] = if c.relu { v.max(0.0) } else { v };
                }
            }
        });
        let got = got.into_inner().unwrap();
        assert_eq!(first_difference(&got, &want), None, "unpadded engine, k {k} {}->{cout} {h}x{w}", c.cin);
    }
}

#[test]
fn row_packing_places_every_weight_as_the_element_gather_does() {
    // `pack_rows` (what convolutions use) against the element-by-element definition, for channel
    // counts around the block size (odd ones too: bf16 pairs the last with zero) and every kernel
    // size, in f32 and bf16: the same packed bits, zeros included.
    let mut rng = SplitMix64(41);
    for case in 0..80 {
        let (cout, cin, k) = (pick(&mut rng, 1, 40), pick(&mut rng, 1, 20), [1, 3, 5][pick(&mut rng, 0, 2)]);
        let isa = if case % 2 == 0 { cpu::direct::Isa::Portable } else { cpu::direct::Isa::Bf16Portable };
        let taps = k * k;
        let w = randv(&mut rng, cout * cin * taps);
        let n = cpu::direct::packed_weight_elems(cout, isa.depth(cin), taps);
        let (mut rows, mut gathered) = (vec![f32::NAN; n], vec![f32::NAN; n]);
        cpu::direct::pack_rows(&mut rows, cout, cin, taps, &w, isa);
        cpu::direct::pack_weights_for(isa, &mut gathered, cout, cin, taps, |co, ci, t| w[(co * cin + ci) * taps + t]);
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&rows), bits(&gathered), "{isa:?} cout {cout} cin {cin} k {k}");
    }
}

#[test]
fn softmax_matches_the_per_pixel_definition_bit_for_bit() {
    // Per pixel: the maximum, exp(x - max) summed in channel order, each exp divided by the sum.
    let mut rng = SplitMix64(43);
    for _ in 0..20 {
        let (c, h, w) = (pick(&mut rng, 1, 13), pick(&mut rng, 1, 40), pick(&mut rng, 1, 70));
        let mut x = random_image(&mut rng, c, h, w);
        x.data.iter_mut().for_each(|v| *v *= 30.0);
        let got = cpu::softmax::softmax(&x);
        let hw = h * w;
        for p in 0..hw {
            let m = (0..c).map(|k| x.data[k * hw + p]).fold(f32::NEG_INFINITY, f32::max);
            let mut sum = 0.0f32;
            for k in 0..c {
                sum += (x.data[k * hw + p] - m).exp();
            }
            for k in 0..c {
                let want = (x.data[k * hw + p] - m).exp() / sum;
                assert_eq!(got.data[k * hw + p].to_bits(), want.to_bits(), "{c}x{h}x{w} pixel {p} channel {k}");
            }
        }
    }
}

/// An embedding program may give rayon's workers small stacks: every engine's convolutions (the
/// 1 x 1 ones that transform their input a few blocks at a time, Winograd, the emulated tiles
/// included), and whole networks, run on workers with 64 KiB of stack, with the same bits.
#[test]
fn convolutions_run_on_workers_with_small_stacks() {
    use seamless::cpu::direct::Isa;
    use seamless::graph::{ConvAlgo, ScaleShift};
    use seamless::planner::Precision;
    let pool = rayon::ThreadPoolBuilder::new().num_threads(2).stack_size(64 << 10).build().unwrap();
    let mut rng = SplitMix64(0x57AC);
    for (k, cin, algo) in
        [(1, 40, ConvAlgo::Direct), (1, 7, ConvAlgo::Direct), (3, 20, ConvAlgo::Direct), (3, 20, ConvAlgo::Winograd2)]
    {
        let (cout, h, w) = (9, 5, 70);
        let c = Conv2d {
            cin,
            cout,
            k,
            weight: randv(&mut rng, cout * cin * k * k),
            bias: randv(&mut rng, cout),
            relu: true,
            pre: Some(ScaleShift { scale: randv(&mut rng, cin), shift: randv(&mut rng, cin), relu: true }),
            algo,
        };
        let x = random_image(&mut rng, cin, h, w);
        let engines = Isa::available().into_iter().chain(Isa::available_for(Precision::Bf16));
        for isa in engines {
            let want = match (algo, isa.is_bf16()) {
                (ConvAlgo::Winograd2, false) => cpu::winograd::conv2d_reference(&x, &c),
                (ConvAlgo::Winograd2, true) => cpu::winograd::conv2d_reference_bf16(&x, &c),
                (_, false) => cpu::conv::conv2d_reference(&x, &c),
                (_, true) => cpu::conv::conv2d_reference_bf16_for(&x, &c, isa),
            };
            let got = pool.install(|| cpu::conv::conv2d_isa(&x, &c, isa));
            assert_eq!(first_difference(&got, &want), None, "{isa:?} k {k} cin {cin} {algo:?}");
        }
    }
    // Whole networks too, every op, in both precisions.
    use seamless::backend::Backend;
    for preset in ["unet-8-d2", "fcdensenet-56"] {
        let model = seamless::Model::random(seamless::model::ModelConfig::preset(preset).unwrap(), 4).unwrap();
        let img = random_image(&mut rng, model.in_channels(), 64, 64);
        for precision in [Precision::F32, Precision::Bf16] {
            let backend = || cpu::CpuBackend::default().with_precision(precision).unwrap();
            let want = backend().run(&model.graph, &img).unwrap();
            let got = pool.install(|| backend().run(&model.graph, &img)).unwrap();
            assert_eq!(first_difference(&got, &want), None, "{preset} {precision:?}");
        }
    }
}
