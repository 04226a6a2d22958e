//! The exactness contract: tiled output equals the whole-image output bit for bit for every
//! aligned tile size, every image size and every halo >= the exact one; and the converse, so that
//! these tests can fail: a halo below exact, or tile origins off the A grid, change the output.

mod common;

use common::*;
use seamless::Model;
use seamless::cpu::CpuBackend;
use seamless::model::weights::SplitMix64;
use seamless::pipeline::{PadMode, Tiling, infer};
use seamless::tile_grid::{TileGrid, round_up};

/// A small model of the family, its architecture varied by the seed.
fn family_model(family: &str, rng: &mut SplitMix64) -> Model {
    let seed = rng.next_u64();
    let cfg = match family {
        "unet" => {
            let up = ["transpose", "bilinear", "nearest"][pick(rng, 0, 2)];
            unet(pick(rng, 1, 2), pick(rng, 2, 3), 2 * pick(rng, 1, 2), pick(rng, 1, 3), rng.uniform() < 0.7, up)
        }
        _ => {
            let levels = pick(rng, 1, 3);
            let down: Vec<usize> = (0..levels).map(|_| pick(rng, 1, 2)).collect();
            densenet(pick(rng, 1, 2), pick(rng, 2, 3), 4, pick(rng, 2, 3), &down, pick(rng, 1, 2))
        }
    };
    random_model(cfg, seed)
}

fn exact_over_random_geometries(family: &str, cases: usize, seed: u64, winograd: bool) {
    let mut rng = SplitMix64(seed);
    for case in 0..cases {
        let model = family_model(family, &mut rng);
        let model = if winograd { winograd_everywhere(model) } else { model };
        let t = TilingCase::random(&mut rng, &model, 20);
        let img = random_image(&mut rng, model.in_channels(), t.h, t.w);
        let (whole, tiled) = t.run(&CpuBackend::default(), &model, &img).unwrap();
        assert_eq!(first_difference(&whole, &tiled), None, "{family} case {case}: {}", t.describe(&model));
    }
}

#[test]
fn unet_tiled_equals_whole_over_random_geometries() {
    exact_over_random_geometries("unet", 60, 0xC0FFEE, false);
}

#[test]
fn fcdensenet_tiled_equals_whole_over_random_geometries() {
    exact_over_random_geometries("fcdensenet", 60, 0xD00D, false);
}

/// The same with Winograd F(2x2, 3x3) on every level the alignment allows (the test models are
/// too narrow for the default channel minimum): the check that the graph's alignment rule for it
/// is right.
#[test]
fn unet_with_winograd_tiled_equals_whole_over_random_geometries() {
    exact_over_random_geometries("unet", 60, 0xC0FFEF, true);
}

#[test]
fn fcdensenet_with_winograd_tiled_equals_whole_over_random_geometries() {
    exact_over_random_geometries("fcdensenet", 60, 0xD00E, true);
}

/// An image large enough that some tile's window is cut inside the image on every side.
fn converse_setup(family: &str, seed: u64) -> (Model, seamless::Tensor, usize) {
    let mut rng = SplitMix64(seed);
    let model = match family {
        "unet" => random_model(unet(1, 2, 4, 2, true, "transpose"), 11),
        _ => random_model(densenet(1, 2, 4, 3, &[1, 1], 1), 12),
    };
    let tile = 2 * model.align();
    let n = 3 * tile + 2 * model.exact_halo() + 5;
    (model, random_image(&mut rng, 1, n, n), tile)
}

#[test]
fn halo_below_exact_changes_the_output() {
    for family in ["unet", "fcdensenet"] {
        let (model, img, tile) = converse_setup(family, 3);
        let whole = infer(&model, &img, PadMode::Zero, Tiling::Whole).unwrap();
        let short = model.exact_halo() - model.align();
        let tiled = infer(&model, &img, PadMode::Zero, Tiling::Tiles { tile: (tile, tile), halo: short }).unwrap();
        assert!(
            first_difference(&whole, &tiled).is_some(),
            "{family}: halo {short} < exact {} should differ from the whole-image run",
            model.exact_halo()
        );
        assert!(max_abs_diff(&whole, &tiled) > 1e-6, "{family}: the difference should be measurable");
    }
}

#[test]
fn misaligned_tile_origins_change_the_output() {
    for family in ["unet", "fcdensenet"] {
        let (model, img, tile) = converse_setup(family, 4);
        let a = model.align();
        let whole = infer(&model, &img, PadMode::Zero, Tiling::Whole).unwrap();
        // Exact halo plus one more step, so only the phase is wrong, not the context.
        let halo = model.exact_halo() + a;
        let (ph, pw) = (round_up(img.h, a), round_up(img.w, a));
        let grid = TileGrid::with_offset(ph, pw, tile, tile, halo, a / 2, a / 2);
        let tiled = infer(&model, &img, PadMode::Zero, Tiling::Grid(&grid)).unwrap();
        assert!(first_difference(&whole, &tiled).is_some(), "{family}: origins off the A grid should differ");
        // ...while the same grid shifted by a whole A is exact again.
        let grid = TileGrid::with_offset(ph, pw, tile, tile, halo, a, a);
        let tiled = infer(&model, &img, PadMode::Zero, Tiling::Grid(&grid)).unwrap();
        assert_eq!(first_difference(&whole, &tiled), None, "{family}: origins on the A grid are exact");
    }
}

#[test]
fn tiling_refuses_sizes_off_the_alignment() {
    let model = random_model(unet(1, 2, 2, 2, false, "transpose"), 1);
    let img = random_image(&mut SplitMix64(1), 1, 40, 40);
    for (tile, halo) in [(6, 12), (8, 6), (0, 12)] {
        let err = infer(&model, &img, PadMode::Zero, Tiling::Tiles { tile: (tile, tile), halo }).unwrap_err();
        assert_eq!(err.exit_code(), 2, "tile {tile} halo {halo}: {err}");
        assert!(err.to_string().contains("multiple"), "{err}");
    }
}

#[test]
fn results_do_not_depend_on_the_thread_count() {
    for (cfg, wino) in [
        (unet(2, 3, 4, 2, true, "transpose"), false),
        (densenet(1, 2, 4, 3, &[1, 2], 1), false),
        (unet(2, 3, 4, 2, true, "transpose"), true),
        (densenet(1, 2, 4, 3, &[1, 2], 1), true),
    ] {
        let model = random_model(cfg, 21);
        let model = if wino { winograd_everywhere(model) } else { model };
        let img = random_image(&mut SplitMix64(8), model.in_channels(), 83, 70);
        let run = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            pool.install(|| {
                infer(&model, &img, PadMode::Zero, Tiling::Tiles { tile: (16, 32), halo: model.exact_halo() }).unwrap()
            })
        };
        let one = run(1);
        for threads in [2, 3, 7] {
            assert_eq!(first_difference(&one, &run(threads)), None, "{threads} threads");
        }
    }
}
