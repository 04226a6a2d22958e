//! The paper's experiments as tests: the sweep is exactly 0 at and above the exact halo on the A
//! grid and not below it or off the grid; the measured ERF never reaches past the analysis and
//! ends where it says; the commands write their files and refuse bad arguments clearly.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::*;
use seamless::cpu::CpuBackend;
use seamless::erf::{self, ErfSpec};
use seamless::model::weights::SplitMix64;
use seamless::pipeline::PadMode;
use seamless::sweep::{self, SweepSpec};

fn seamless(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_seamless")).args(args).output().expect("runs")
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn sweep_is_exact_at_and_above_the_exact_halo_on_the_grid_and_not_otherwise() {
    for (cfg, pad) in
        [(unet(1, 3, 4, 2, true, "transpose"), PadMode::Zero), (densenet(1, 2, 4, 2, &[1, 1], 1), PadMode::Reflect)]
    {
        let model = random_model(cfg.clone(), 11);
        let (a, exact, t) = (model.align(), model.exact_halo(), model.rf.clone());
        let mut rng = SplitMix64(4);
        // Odd sizes (the padded border is part of the test), large enough that interior windows
        // are not clipped to the image's first row / column.
        let img = random_image(&mut rng, 1, 2 * exact + 5 * a + 3, 2 * exact + 7 * a + 1);
        let spec = SweepSpec {
            tile_h: 2 * a,
            tile_w: 3 * a,
            halos: vec![0, a, exact - a, exact - 1, exact, exact + 1, exact + a],
            offsets: vec![0, 1, a / 2, a],
            pad,
        };
        let sw = sweep::run(&CpuBackend::default(), &model, &img, &spec, &mut |_, _| {}).unwrap();
        assert_eq!(sw.points.len(), 7 * 4);
        for p in &sw.points {
            let e = &p.error;
            let what = format!("{}: halo {} offset {}: {e:?}", cfg.config_json(), p.halo, p.offset);
            assert_eq!(p.aligned, p.halo.is_multiple_of(a) && p.offset.is_multiple_of(a), "{what}");
            assert_eq!(p.windows_on_grid, p.halo % a == p.offset % a, "{what}");
            if p.aligned && p.halo >= exact {
                assert!(p.contract, "{what}");
                assert!(e.is_exact() && e.max_abs == 0.0 && e.rmse == 0.0 && e.changed_labels == 0, "{what}");
            } else if p.halo < exact - a || !p.windows_on_grid {
                // Too little halo, or windows that start off the A grid (a halo or an offset that
                // is not a multiple of A, unless they cancel): the error is visible.
                assert!(!e.is_exact() && e.max_abs > 0.0 && e.rmse > 0.0, "{what}");
            }
            if p.windows_on_grid && p.halo >= t.reach_before.max(t.reach_after) {
                // Shifted tiles whose windows still start on the grid, with a halo covering the
                // whole reach: exact too (the contract's rule is sufficient, not necessary).
                assert!(e.is_exact(), "{what}");
            }
        }
        // One step of A below the exact halo, on the grid: not exact for these models.
        let below = sw.points.iter().find(|p| p.halo == exact - a && p.offset == 0).unwrap();
        assert!(!below.error.is_exact(), "{}: {:?}", cfg.config_json(), below.error);
    }
}

#[test]
fn label_halo_finds_where_the_labels_stop_changing() {
    let model = random_model(unet(1, 3, 4, 2, true, "transpose"), 2);
    let a = model.align();
    let mut rng = SplitMix64(8);
    let img = random_image(&mut rng, 1, 48, 56);
    let lh =
        sweep::label_halo(&CpuBackend::default(), &model, &img, (a * 2, a * 2), PadMode::Zero, 0.0, a, &mut |_, _| {})
            .unwrap();
    let halos: Vec<usize> = lh.sweep.points.iter().map(|p| p.halo).collect();
    assert_eq!(halos, (0..=model.exact_halo()).step_by(a).collect::<Vec<_>>());
    let first = lh.first_within.expect("the exact halo changes no label");
    let stable = lh.stable_from.unwrap();
    assert!(first <= stable && stable <= model.exact_halo());
    assert!(lh.sweep.points.iter().filter(|p| p.halo >= stable).all(|p| p.error.changed_labels == 0));
    assert!(lh.sweep.points[0].error.changed_labels > 0, "halo 0 changes labels");
    assert!(
        sweep::label_halo(&CpuBackend::default(), &model, &img, (8, 8), PadMode::Zero, 0.0, a + 1, &mut |_, _| {})
            .is_err()
    );
}

#[test]
fn erf_ends_where_the_analysis_says() {
    for cfg in [unet(1, 3, 4, 2, true, "transpose"), densenet(1, 2, 4, 2, &[1, 1], 1)] {
        let model = random_model(cfg.clone(), 5);
        let a = model.align();
        let n = erf::default_window(&model);
        let mut rng = SplitMix64(3);
        let window = random_image(&mut rng, 1, n, n);
        let spec = ErfSpec { probes: a, delta: 1.0 };
        let e = erf::measure(&CpuBackend::default(), &model, &window, &spec, &mut |_, _| {}).unwrap();
        let (m, t) = (&e.measured, &model.rf);
        let what = format!("{}: measured {m:?}, analysis {t:?}", cfg.config_json());
        assert!(m.reach_before <= t.reach_before && m.reach_after <= t.reach_after, "{what}");
        assert!(e.zero_beyond <= t.reach_before.max(t.reach_after), "{what}");
        // Tight for these models: the influence stops exactly at the analysed reach, and the
        // measured needs call for the exact halo.
        assert_eq!(e.zero_beyond, t.reach_before.max(t.reach_after), "{what}");
        assert_eq!(m.halo, model.exact_halo(), "{what}");
        assert!(e.max_logit > 0.0 && e.profile[0].max_logit > 0.0);
        assert!(e.profile.iter().skip(e.zero_beyond + 1).all(|r| r.max_logit == 0.0));
        assert!(e.below.iter().all(|&(_, d)| d <= e.zero_beyond + 1), "{what}");
    }
}

#[test]
fn logits_graph_is_the_network_before_its_softmax() {
    let model = random_model(unet(1, 3, 4, 2, true, "transpose"), 4);
    let mut rng = SplitMix64(5);
    let img = random_image(&mut rng, 1, 16, 24);
    let logits = seamless::cpu::run(&erf::logits_graph(&model.graph), &img).unwrap().0;
    let probs = seamless::cpu::run(&model.graph, &img).unwrap().0;
    assert_eq!(logits.c, 3);
    assert_eq!(bits(&seamless::cpu::softmax::softmax(&logits)), bits(&probs));
    assert_ne!(bits(&logits), bits(&probs));
}

#[test]
fn erf_refuses_bad_windows_and_probes() {
    let model = random_model(unet(1, 2, 4, 2, false, "transpose"), 1);
    let mut rng = SplitMix64(3);
    let w = random_image(&mut rng, 1, 30, 32);
    let ok = ErfSpec { probes: 1, delta: 1.0 };
    assert!(
        erf::measure(&CpuBackend::default(), &model, &w, &ok, &mut |_, _| {}).is_err(),
        "30 is not a multiple of 4"
    );
    let w = random_image(&mut rng, 1, 32, 32);
    for bad in [ErfSpec { probes: 0, delta: 1.0 }, ErfSpec { probes: 5, delta: 1.0 }, ErfSpec { probes: 1, delta: 0.0 }]
    {
        assert!(erf::measure(&CpuBackend::default(), &model, &w, &bad, &mut |_, _| {}).is_err());
    }
}

#[test]
fn halo_and_offset_lists_parse_and_bad_ones_are_refused() {
    let model = random_model(unet(1, 2, 4, 2, false, "transpose"), 1);
    assert_eq!(sweep::parse_halos("0:exact", &model).unwrap(), vec![0, 4, 8, 12, 16, 20, 24]);
    assert_eq!(sweep::parse_halos("0:10:5,exact,3", &model).unwrap(), vec![0, 3, 5, 10, 24]);
    assert_eq!(sweep::parse_offsets("0,1,4,8").unwrap(), vec![0, 1, 4, 8]);
    for bad in ["", "x", "5:2", "0:8:0", "1:2:3:4", "-1"] {
        assert!(sweep::parse_halos(bad, &model).is_err(), "{bad}");
    }
    assert!(sweep::parse_offsets("exact").is_err());
}

#[test]
fn commands_write_csv_and_png_and_refuse_bad_arguments() {
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n);
    let m = p("u.safetensors");
    let cfg = r#"{"in_channels":1,"classes":3,"base_filters":4,"depth":2}"#;
    assert!(seamless(&["random-model", "--arch", "unet", "--config", cfg, "--out", s(&m)]).status.success());

    let (csv, png) = (p("sweep.csv"), p("sweep.png"));
    let args = ["sweep", "--model", s(&m), "--synth", "40x36", "--tile", "8", "--halos", "0:exact:8", "--offsets"];
    let o = seamless(&[&args[..], &["0,1", "--csv", s(&csv), "--plot", s(&png), "-q"]].concat());
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let table = String::from_utf8_lossy(&o.stdout);
    assert!(table.contains("bit-exact"), "{table}");
    let text = std::fs::read_to_string(&csv).unwrap();
    assert_eq!(text.lines().count(), 1 + 4 * 2, "{text}");
    assert!(text.lines().any(|l| l.contains(",24,0,true,true,true,") && l.contains(",0,0,0e0,true,")), "{text}");
    assert!(std::fs::read(&png).unwrap().starts_with(b"\x89PNG"));

    let (heat, prof, pcsv) = (p("erf.png"), p("profile.png"), p("profile.csv"));
    let o = seamless(&[
        "erf",
        "--model",
        s(&m),
        "--noise",
        "--heatmap",
        s(&heat),
        "--plot",
        s(&prof),
        "--csv",
        s(&pcsv),
        "--tol",
        "0",
        "--synth",
        "48x48",
        "-q",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("influence exactly 0 beyond (L∞)            23 px"), "{out}");
    assert!(out.contains("smallest halo with changed labels <= 0:"), "{out}");
    for f in [&heat, &prof] {
        assert!(std::fs::read(f).unwrap().starts_with(b"\x89PNG"));
    }
    assert!(std::fs::read_to_string(&pcsv).unwrap().starts_with("distance,"));

    // Bad arguments: exit code 2 and a message naming the option; a bad model: 3; nothing written.
    let bad = |extra: &[&str], code: i32, needle: &str| {
        let o = seamless(&[&["sweep", "--model", s(&m), "--synth", "40x36", "-q"][..], extra].concat());
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(code), "{extra:?}: {err}");
        assert!(err.contains(needle), "{extra:?}: {err}");
    };
    bad(&["--halos", "9:2"], 2, "--halos");
    bad(&["--offsets", "a"], 2, "--offsets");
    bad(&["--tile", "0"], 2, "--tile");
    bad(&["--plot", s(&p("x.jpg"))], 2, ".png");
    bad(&["--csv", s(&p("no/such/dir.csv"))], 5, "does not exist");
    let o = seamless(&["sweep", "--model", s(&p("missing.safetensors")), "-q"]);
    assert_eq!(o.status.code(), Some(3), "{}", String::from_utf8_lossy(&o.stderr));
    let o = seamless(&["sweep", "--model", s(&m), "--synth", "0x3"]);
    assert_eq!(o.status.code(), Some(2));
    let o = seamless(&["erf", "--model", s(&m), "--probes", "9", "-q"]);
    assert_eq!(o.status.code(), Some(2), "{}", String::from_utf8_lossy(&o.stderr));
    let o = seamless(&["erf", "--model", s(&m), "--window", "30", "-q"]);
    assert_eq!(o.status.code(), Some(2));
    let o = seamless(&["erf", "--model", s(&m), "--tol", "2", "-q"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(!p("x.jpg").exists());
}
