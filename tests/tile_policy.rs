//! `--tile auto`: the smallest tile whose compute (input pixels of all windows over the image's
//! pixels) is within 5% of the least among the tiles that fit the budget, not the largest that
//! fits. Checked against every candidate tile, counted here from the grid, and through the CLI.

use std::path::Path;
use std::process::{Command, Output};

use seamless::Model;
use seamless::planner::{AUTO_COMPUTE_SLACK, MemoryModel, Precision, TilePlanner};
use seamless::tile_grid::TileGrid;

const DEMO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/models/unet-demo.safetensors");

fn seamless(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_seamless")).args(args).output().expect("runs")
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Compute of `th x tw` tiles over the planner's padded image, from the grid's windows.
fn compute(p: &TilePlanner, th: usize, tw: usize) -> f64 {
    let grid = TileGrid::new(p.padded_h, p.padded_w, th, tw, p.model.exact_halo(), p.model.align()).unwrap();
    grid.window_pixels() as f64 / (p.padded_h * p.padded_w) as f64
}

/// Every square tile (side a multiple of the step, clipped to the padded image) that fits, smallest
/// first, with its compute.
fn fitting_squares(p: &TilePlanner, budget: usize) -> Vec<((usize, usize), f64)> {
    let mut out: Vec<((usize, usize), f64)> = Vec::new();
    for side in (p.step..p.padded_h.max(p.padded_w) + p.step).step_by(p.step) {
        let t = (side.min(p.padded_h), side.min(p.padded_w));
        if out.last().is_some_and(|l| l.0 == t) {
            continue;
        }
        if p.fits(t.0, t.1, budget).unwrap() {
            out.push((t, compute(p, t.0, t.1)));
        }
    }
    out
}

/// The policy, checked against every candidate: the pick fits, its compute is within the slack of
/// the least, and no smaller candidate is. Returns (auto tile, largest tile).
fn check_policy(p: &TilePlanner, budget: usize) -> ((usize, usize), (usize, usize)) {
    let auto = p.choose_auto(budget).unwrap();
    let (c, l) = (&auto.choice, &auto.largest);
    let (tile, largest) = ((c.tile_h, c.tile_w), (l.tile_h, l.tile_w));
    assert_eq!(largest, {
        let l = p.choose(budget).unwrap();
        (l.tile_h, l.tile_w)
    });
    assert!(c.peak.total() <= budget, "auto tile {tile:?} must fit {budget}");
    assert_eq!(c.peak, p.grid_peak(tile.0, tile.1).unwrap().0);
    assert!((c.relative_compute - compute(p, tile.0, tile.1)).abs() < 1e-12);
    assert!(tile.0 % p.step == 0 || tile.0 == p.padded_h, "{tile:?} is a multiple of {}", p.step);
    assert!(tile.1 % p.step == 0 || tile.1 == p.padded_w, "{tile:?} is a multiple of {}", p.step);
    let all = fitting_squares(p, budget);
    let least = all.iter().map(|c| c.1).fold(f64::INFINITY, f64::min);
    assert!((auto.least_compute - least).abs() < 1e-12, "least {} vs {least}", auto.least_compute);
    let limit = least * (1.0 + AUTO_COMPUTE_SLACK);
    assert!(c.relative_compute <= limit, "{tile:?}: {} > {limit}", c.relative_compute);
    for &(t, cost) in all.iter().filter(|(t, _)| t.0 * t.1 < tile.0 * tile.1) {
        assert!(cost > limit, "smaller {t:?} does {cost} <= {limit}, yet {tile:?} was picked");
    }
    (tile, largest)
}

#[test]
fn auto_takes_the_smallest_tile_within_the_slack_of_the_least_compute() {
    assert_eq!(AUTO_COMPUTE_SLACK, 0.05);
    let demo = Model::open(DEMO).unwrap();
    let big = Model::open("unet-64").unwrap();
    let cpu = seamless::cpu::CpuMemory::of(Precision::F32);
    let device = seamless::cuda::DeviceMemory { precision: Precision::F16 };
    for (model, mem, budget) in
        [(&demo, &cpu as &dyn MemoryModel, 4usize << 30), (&demo, &cpu, 64 << 30), (&big, &device, 80 << 30)]
    {
        for multiple in [1, 256] {
            let p = TilePlanner::new(model, 8192, 8192, mem).unwrap().with_multiple(multiple);
            let (tile, largest) = check_policy(&p, budget);
            println!("{} {budget} B, multiple {multiple}: auto {tile:?}, largest {largest:?}", model.origin);
            assert!(tile.0 < largest.0 && tile.1 < largest.1, "{tile:?} is not below the largest {largest:?}");
            assert_eq!(tile.0 % multiple, 0);
        }
    }
    // The demo U-Net on 8192x8192 under the default CPU budget of 4 GiB: 2048x2048 (1.07x the
    // pixels of one pass) rather than the largest that fits, 4680x4680 (1.02x).
    let p = TilePlanner::new(&demo, 8192, 8192, &cpu).unwrap();
    let auto = p.choose_auto(4 << 30).unwrap();
    assert_eq!((auto.choice.tile_h, auto.choice.tile_w), (2048, 2048));
    assert_eq!((auto.largest.tile_h, auto.largest.tile_w), (4680, 4680));
}

#[test]
fn a_tight_budget_still_fits_and_a_small_image_is_one_tile() {
    let demo = Model::open(DEMO).unwrap();
    let cpu = seamless::cpu::CpuMemory::of(Precision::F32);
    let p = TilePlanner::new(&demo, 8192, 8192, &cpu).unwrap();
    let a = p.step;
    let smallest = p.grid_peak(a, a).unwrap().0.total();
    for budget in [smallest, smallest + (1 << 20), smallest + (16 << 20), 64 << 20] {
        let (tile, largest) = check_policy(&p, budget);
        assert!(tile.0 <= largest.0 && tile.1 <= largest.1);
    }
    assert_eq!(check_policy(&p, smallest).0, (a, a), "only the smallest tile fits");
    assert!(matches!(p.choose_auto(smallest - 1), Err(seamless::Error::OutOfMemory { .. })));
    // A small image: one tile as large as the padded image (no halo to compute at all).
    for (h, w) in [(200, 300), (97, 150), (1000, 640)] {
        let p = TilePlanner::new(&demo, h, w, &cpu).unwrap().with_multiple(256);
        let auto = p.choose_auto(4 << 30).unwrap();
        assert_eq!((auto.choice.tile_h, auto.choice.tile_w), (p.padded_h, p.padded_w), "{w}x{h}");
        assert_eq!(auto.choice.tiles, 1);
        assert_eq!(auto.choice.relative_compute, 1.0);
    }
    // A narrow image: tiles span its short side and grow along the long one.
    let p = TilePlanner::new(&demo, 20000, 300, &cpu).unwrap();
    for budget in [64 << 20, 4 << 30] {
        let (tile, _) = check_policy(&p, budget);
        assert_eq!(tile.1, p.padded_w, "spans the width");
        assert!(tile.0 > p.padded_w && tile.0 < p.padded_h, "{tile:?}");
    }
}

/// Through the CLI: `infer --tile auto` runs the tile `plan` reports for the same image and budget,
/// says why on its `plan:` line, and records it in the summary as {width, height}.
#[test]
fn infer_runs_the_tile_plan_reports_and_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let (out, sum) = (dir.path().join("o.npy"), dir.path().join("s.json"));
    let (image, budget) = ("1400x1000", "40MiB");
    let o = seamless(&["plan", DEMO, "--image", image, "--budget", budget, "--json"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let rows: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let row = &rows[0];
    let (tw, th) = (row["tile_w"].as_u64().unwrap(), row["tile_h"].as_u64().unwrap());
    let (lw, lh) = (row["largest"]["tile_w"].as_u64().unwrap(), row["largest"]["tile_h"].as_u64().unwrap());
    assert!(tw * th < lw * lh, "auto {tw}x{th} should be below the largest {lw}x{lh} here");
    let o = seamless(&[
        "infer",
        "--model",
        DEMO,
        "--input",
        &format!("synth:{image}"),
        "--output",
        s(&out),
        "--memory-budget",
        budget,
        "--backend",
        "cpu",
        "--summary",
        s(&sum),
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    let line = err.lines().find(|l| l.starts_with("plan: tile")).unwrap_or_else(|| panic!("{err}"));
    let want = format!(
        "plan: tile {tw}x{th} (auto: smallest within 5% of the least compute, {:.2}x the pixels of one pass; \
         the largest that fits, {lw}x{lh}, would do {:.2}x)",
        row["relative_compute"].as_f64().unwrap(),
        row["largest"]["relative_compute"].as_f64().unwrap()
    );
    assert!(line.starts_with(&want), "{line}\nwanted {want}");
    let summary: serde_json::Value = serde_json::from_slice(&std::fs::read(&sum).unwrap()).unwrap();
    assert_eq!(summary["tile"], serde_json::json!({"width": tw, "height": th}), "{summary}");
}
