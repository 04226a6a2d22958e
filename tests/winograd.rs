//! Winograd F(2x2, 3x3): every implementation gives the bits of the plain transform-domain
//! reference, the result agrees with the direct convolution to rounding, a window of a map that
//! starts on the 2 x 2 block grid gets the whole map's bits (what tiled exactness rests on), and
//! the model graph uses it only where every window's map starts on that grid.

mod common;

use common::*;
use seamless::Tensor;
use seamless::cpu::{self, direct::Isa, winograd};
use seamless::graph::{Conv2d, ConvAlgo, Op, ScaleShift};
use seamless::model::ModelConfig;
use seamless::model::weights::{RandomSource, SplitMix64};

fn randv(rng: &mut SplitMix64, n: usize, scale: f32) -> Vec<f32> {
    (0..n).map(|_| rng.normal() as f32 * scale).collect()
}

fn layer(rng: &mut SplitMix64, cin: usize, cout: usize, case: usize) -> Conv2d {
    Conv2d {
        cin,
        cout,
        k: 3,
        weight: randv(rng, cout * cin * 9, 1.0 / (9.0 * cin as f32).sqrt()),
        bias: if case % 4 == 3 { vec![0.0; cout] } else { randv(rng, cout, 0.5) },
        relu: case.is_multiple_of(2),
        pre: case.is_multiple_of(3).then(|| ScaleShift {
            scale: randv(rng, cin, 1.0),
            shift: randv(rng, cin, 0.5),
            relu: case % 2 == 1,
        }),
        algo: ConvAlgo::Winograd2,
    }
}

#[test]
fn every_implementation_equals_the_reference_bit_for_bit() {
    let mut rng = SplitMix64(0x3A7);
    for case in 0..40 {
        let (cin, cout) = (pick(&mut rng, 1, 70), pick(&mut rng, 1, 70));
        // Even sizes whose half is odd, odd sizes (a last half block), and maps wider than a
        // transform chunk (64 tiles).
        let (h, w) = match case % 4 {
            0 => (2 * pick(&mut rng, 0, 9) + 2, 2 * (2 * pick(&mut rng, 0, 9) + 1)),
            1 => (pick(&mut rng, 1, 15) | 1, pick(&mut rng, 1, 41) | 1),
            2 => (pick(&mut rng, 1, 6), pick(&mut rng, 128, 140)),
            _ => (pick(&mut rng, 1, 30), pick(&mut rng, 1, 30)),
        };
        let c = layer(&mut rng, cin, cout, case);
        let x = random_image(&mut rng, cin, h, w);
        let want = winograd::conv2d_reference(&x, &c);
        for isa in Isa::available() {
            let got = cpu::conv::conv2d_isa(&x, &c, isa);
            assert_eq!(first_difference(&want, &got), None, "case {case} {isa:?}: cin {cin} cout {cout} {h}x{w}");
        }
        // The executors' entry points take the same path.
        assert_eq!(first_difference(&want, &cpu::run_op(&Op::Conv2d(c.clone()), &[&x])), None, "case {case}");
    }
}

/// Largest |a - b| over the largest |b|.
fn relative_error(a: &Tensor, b: &Tensor) -> f32 {
    let scale = b.data.iter().fold(0f32, |m, v| m.max(v.abs())).max(f32::MIN_POSITIVE);
    a.data.iter().zip(&b.data).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale
}

#[test]
fn agrees_with_the_direct_convolution_to_rounding() {
    let mut rng = SplitMix64(0xACC);
    for case in 0..20 {
        let (cin, cout) = (pick(&mut rng, 1, 300), pick(&mut rng, 1, 40));
        let (h, w) = (pick(&mut rng, 1, 40), pick(&mut rng, 1, 40));
        let c = layer(&mut rng, cin, cout, case);
        let x = random_image(&mut rng, cin, h, w);
        let wino = cpu::conv::conv2d(&x, &c);
        let direct = cpu::conv::conv2d(&x, &Conv2d { algo: ConvAlgo::Direct, ..c.clone() });
        let err = relative_error(&wino, &direct);
        assert!(err < 1e-5, "case {case}: cin {cin} cout {cout} {h}x{w}: relative error {err}");
    }
}

/// The convolution of the window `(y0, x0, hh, ww)` of `x`, compared with the whole map's result
/// on the window's pixels whose 3 x 3 neighbourhood the window holds (or where the window's edge
/// is the map's edge, so its zero padding is the map's).
fn window_matches(x: &Tensor, c: &Conv2d, whole: &Tensor, (y0, x0, hh, ww): (usize, usize, usize, usize)) -> bool {
    let got = cpu::conv::conv2d(&x.window(y0, x0, hh, ww), c);
    let inner = |o: usize, n: usize, full: usize, v: usize| (v > 0 || o == 0) && (v + 1 < n || o + n == full);
    (0..c.cout).all(|co| {
        (0..hh).all(|y| {
            (0..ww).all(|xx| {
                !(inner(y0, hh, x.h, y) && inner(x0, ww, x.w, xx))
                    || got.at(co, y, xx).to_bits() == whole.at(co, y0 + y, x0 + xx).to_bits()
            })
        })
    })
}

#[test]
fn a_window_on_the_block_grid_gets_the_whole_maps_bits() {
    let mut rng = SplitMix64(0x6D1);
    for case in 0..30 {
        let (cin, cout) = (pick(&mut rng, 1, 40), pick(&mut rng, 1, 20));
        let (h, w) = (2 * pick(&mut rng, 2, 20), 2 * pick(&mut rng, 2, 40));
        let c = layer(&mut rng, cin, cout, case);
        let x = random_image(&mut rng, cin, h, w);
        let whole = cpu::conv::conv2d(&x, &c);
        // Even origins; sizes even, or reaching the map's (even) end.
        let (y0, x0) = (2 * pick(&mut rng, 0, h / 2 - 1), 2 * pick(&mut rng, 0, w / 2 - 1));
        let (hh, ww) = (2 * pick(&mut rng, 1, (h - y0) / 2), 2 * pick(&mut rng, 1, (w - x0) / 2));
        assert!(window_matches(&x, &c, &whole, (y0, x0, hh, ww)), "case {case}: window {y0},{x0} {hh}x{ww} of {h}x{w}");
    }
}

/// The converse, so the property above is not vacuous: off the block grid the bits differ (which
/// is why the graph keeps Winograd to levels where every window starts on it).
#[test]
fn a_window_off_the_block_grid_gets_other_bits() {
    let mut rng = SplitMix64(0x0DD);
    let c = layer(&mut rng, 48, 8, 1);
    let x = random_image(&mut rng, 48, 30, 30);
    let whole = cpu::conv::conv2d(&x, &c);
    assert!(window_matches(&x, &c, &whole, (2, 4, 20, 20)));
    assert!(!window_matches(&x, &c, &whole, (3, 5, 20, 20)), "odd origins should change some bits");
}

fn winograd_levels(preset: &str) -> Vec<(i32, usize, usize)> {
    let m = seamless::Model::random(ModelConfig::preset(preset).unwrap(), 0).unwrap();
    let levels = m.graph.levels();
    m.graph
        .nodes
        .iter()
        .zip(levels)
        .filter_map(|(n, l)| match &n.op {
            Op::Conv2d(c) if c.algo == ConvAlgo::Winograd2 => Some((l, c.cin, c.cout)),
            _ => None,
        })
        .collect()
}

#[test]
fn models_use_winograd_only_where_windows_start_on_the_block_grid() {
    // U-Net-64 (A = 16): the 3 x 3 convs of levels 1-3 with >= 128 channels in and out; level 0
    // (64 channels) and the 1024-channel level 4 (A / 16 = 1) stay direct.
    let unet = winograd_levels("unet-64");
    assert_eq!(unet.len(), 11, "{unet:?}");
    assert!(unet.iter().all(|&(l, ci, co)| (1..=3).contains(&l) && ci.min(co) >= winograd::MIN_CHANNELS), "{unet:?}");
    // A model's own graph is the one every executor runs; ops built by hand are direct.
    let cfg = ModelConfig::preset("unet-64").unwrap();
    let m = seamless::Model::random(cfg.clone(), 0).unwrap();
    let source = seamless::model::source_graph(&cfg, &mut RandomSource::new(0), "random").unwrap().0;
    let mut g = source.optimized();
    assert!(g.nodes.iter().all(|n| !matches!(&n.op, Op::Conv2d(c) if c.algo != ConvAlgo::Direct)));
    // With no channel minimum, the level-4 convs still stay direct.
    g.assign_conv_algos(m.align(), 1);
    let levels = g.levels();
    for (n, l) in g.nodes.iter().zip(levels) {
        if let Op::Conv2d(c) = &n.op {
            assert_eq!(c.algo == ConvAlgo::Winograd2, c.k == 3 && l <= 3, "{} at level {l}", n.name);
        }
    }
}

#[test]
fn kernels_transformed_together_equal_one_at_a_time() {
    // The vectorised transform the packing uses against the one-kernel definition, bit for bit:
    // random kernels with signed zeros, tiny and huge values among them.
    let mut rng = SplitMix64(77);
    for _ in 0..2000 {
        let g: [[f32; 9]; cpu::direct::MR] = std::array::from_fn(|_| {
            std::array::from_fn(|_| match rng.next_u64() % 6 {
                0 => 0.0,
                1 => -0.0,
                2 => rng.normal() as f32 * 1e-30,
                3 => rng.normal() as f32 * 1e30,
                _ => rng.normal() as f32,
            })
        });
        let together = winograd::transform_kernels(&g);
        for (j, k) in g.iter().enumerate() {
            let one = winograd::transform_kernel(k);
            for t in 0..16 {
                assert_eq!(together[t][j].to_bits(), one[t].to_bits(), "kernel {k:?} element {t}");
            }
        }
    }
}
