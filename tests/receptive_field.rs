//! The receptive-field analysis against measurement, and against the reference numbers of
//! docs/design.md.

mod common;

use common::*;
use seamless::Model;
use seamless::model::ModelConfig;
use seamless::model::weights::SplitMix64;
use seamless::pipeline::{PadMode, Tiling, infer};

/// Perturb single input pixels (one per phase of A, far from the borders, in every row) and
/// measure how far left/right outputs change: the empirical one-sided reaches, and the halo the
/// first/last edge of an A-aligned tile needs (reach minus the output's phase depth).
fn measured_reach(model: &Model) -> (usize, usize, usize, usize) {
    let a = model.align();
    let r = model.rf.reach_before.max(model.rf.reach_after);
    let n = 2 * r + 3 * a;
    let n = n.div_ceil(a) * a;
    let mut rng = SplitMix64(99);
    let img = random_image(&mut rng, model.in_channels(), a, n);
    let base = infer(model, &img, PadMode::Zero, Tiling::Whole).unwrap();
    let (mut before, mut after, mut need_b, mut need_a) = (0usize, 0usize, 0usize, 0usize);
    let centre = (n / 2) / a * a;
    for phase in 0..a {
        let i = centre + phase;
        let mut p = img.clone();
        for c in 0..p.c {
            for y in 0..p.h {
                p.data[(c * p.h + y) * p.w + i] += 3.0;
            }
        }
        let out = infer(model, &p, PadMode::Zero, Tiling::Whole).unwrap();
        for (k, (x, y)) in base.data.iter().zip(&out.data).enumerate() {
            if x.to_bits() != y.to_bits() {
                let q = k % base.w;
                // Output q changed because input i is within its reach.
                let phase = q % a;
                if q > i {
                    before = before.max(q - i);
                    need_b = need_b.max((q - i).saturating_sub(phase));
                } else {
                    after = after.max(i - q);
                    need_a = need_a.max((i - q).saturating_sub(a - 1 - phase));
                }
            }
        }
    }
    (before, after, need_b, need_a)
}

#[test]
fn analysis_bounds_measurement_and_is_tight_to_the_alignment() {
    let configs = [
        unet(1, 2, 4, 2, true, "transpose"),
        unet(1, 2, 4, 3, false, "bilinear"),
        unet(1, 2, 4, 2, true, "nearest"),
        densenet(1, 2, 4, 3, &[1, 1], 1),
        densenet(1, 2, 4, 2, &[2, 1, 1], 2),
    ];
    for cfg in configs {
        let model = random_model(cfg.clone(), 5);
        let (before, after, need_b, need_a) = measured_reach(&model);
        let rf = &model.rf;
        eprintln!(
            "{}: measured reach {before}/{after} need {need_b}/{need_a}, analysed {}/{} need {}/{}",
            cfg.config_json(),
            rf.reach_before,
            rf.reach_after,
            rf.need_before,
            rf.need_after
        );
        assert!(
            before <= rf.reach_before && after <= rf.reach_after,
            "{}: the analysis must bound what is measured",
            cfg.config_json()
        );
        assert!(
            need_b <= rf.need_before && need_a <= rf.need_after,
            "{}: needs bound what is measured",
            cfg.config_json()
        );
        let a = model.align();
        assert_eq!(
            need_b.max(need_a).div_ceil(a) * a,
            model.exact_halo(),
            "{}: the measured reach needs the same halo as the analysis",
            cfg.config_json()
        );
    }
}

#[test]
fn presets_match_the_reference_table() {
    // The table of docs/design.md, "Reference numbers": U-Net (64 filters, 4 poolings)
    // ~1.47 MFLOP/px, 31.0 M params, RF ~188-204 px; FC-DenseNet56/67/103: 0.36/0.83/0.80 MFLOP/px,
    // 1.4/3.5/9.4 M params, RF ~0.8k/1.0k/2.3k.
    // Exact halos: the paper's Table 2 has 96 / 384 / 480 / 1120; ours are one A larger for
    // FC-DenseNet because its 3x3 transposed convolutions reach further on one side than the
    // paper's Σ 2^level·⌊k/2⌋ counts (tests above measure the reach).
    let cases = [
        ("unet-64", 1.47e6, 31.0e6, 204, 16, 96),
        ("fcdensenet-56", 0.36e6, 1.4e6, 826, 32, 416),
        ("fcdensenet-67", 0.83e6, 3.5e6, 1016, 32, 512),
        ("fcdensenet-103", 0.80e6, 9.4e6, 2294, 32, 1152),
    ];
    for (name, flop, params, rf, a, halo) in cases {
        let m = Model::random(ModelConfig::preset(name).unwrap(), 0).unwrap();
        let f = m.graph.flops_per_pixel(4 * a).unwrap();
        assert!((f / flop - 1.0).abs() < 0.02, "{name}: {f} FLOP/px vs {flop}");
        assert!((m.params() as f64 / params - 1.0).abs() < 0.02, "{name}: {} params vs {params}", m.params());
        assert_eq!(m.rf.receptive_field, rf, "{name}");
        assert_eq!(m.align(), a, "{name}");
        assert_eq!(m.exact_halo(), halo, "{name}");
    }
}
