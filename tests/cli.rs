//! The command line as a user meets it: results, exit codes, messages, and no half-written output
//! under the final name when something goes wrong.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn seamless(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_seamless")).args(args).output().expect("runs")
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Fixture {
        let f = Fixture { dir: tempfile::tempdir().unwrap() };
        let m = f.path("unet.safetensors");
        let cfg = r#"{"in_channels":1,"classes":3,"base_filters":4,"depth":2}"#;
        assert!(
            seamless(&["random-model", "--arch", "unet", "--config", cfg, "--seed", "3", "--out", s(&m)])
                .status
                .success()
        );
        let img = f.path("img.npy");
        assert!(
            seamless(&["synth", "--width", "150", "--height", "97", "--seed", "2", "--image", s(&img)])
                .status
                .success()
        );
        f
    }
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
    /// Nothing but what the test created itself: no leftovers or partial files.
    fn files(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn tiled_equals_whole_through_the_cli_for_probabilities_and_labels() {
    let f = Fixture::new();
    let (m, img) = (f.path("unet.safetensors"), f.path("img.npy"));
    for kind in ["probs", "labels"] {
        let (t, w) = (f.path(&format!("t-{kind}.npy")), f.path(&format!("w-{kind}.npy")));
        let o = seamless(&[
            "infer",
            "--model",
            s(&m),
            "--input",
            s(&img),
            "--output",
            s(&t),
            "--tile",
            "16x32",
            "--output-kind",
            kind,
            "-q",
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
        let o = seamless(&[
            "infer",
            "--model",
            s(&m),
            "--input",
            s(&img),
            "--output",
            s(&w),
            "--whole",
            "--output-kind",
            kind,
            "-q",
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
        assert_eq!(std::fs::read(&t).unwrap(), std::fs::read(&w).unwrap(), "{kind}: tiled and whole outputs differ");
    }
    // Labels as PNG, from a PNG input.
    let png_in = f.path("img.png");
    assert!(seamless(&["synth", "--width", "40", "--height", "33", "--image", s(&png_in)]).status.success());
    let out = f.path("labels.png");
    let o = seamless(&["infer", "--model", s(&m), "--input", s(&png_in), "--output", s(&out), "-q"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(std::fs::metadata(&out).unwrap().len() > 0);
}

/// `--tile WxH` is width x height, as every size in seamless: a 300x200 image in 64x32 tiles is 5
/// columns of 7 rows. A non-square size says how it is read (earlier versions read HxW).
#[test]
fn tile_sizes_are_width_by_height() {
    let f = Fixture::new();
    let m = f.path("unet.safetensors");
    for (tile, w, h, tiles) in [("64x32", 64, 32, 5 * 7), ("32x64", 32, 64, 10 * 4), ("32", 32, 32, 10 * 7)] {
        let (out, sum) = (f.path(&format!("t{tile}.npy")), f.path(&format!("t{tile}.json")));
        let args = ["infer", "--model", s(&m), "--input", "synth:300x200", "--output", s(&out), "--tile", tile];
        let o = seamless(&[&args[..], &["--backend", "cpu", "--summary", s(&sum)]].concat());
        let err = stderr(&o);
        assert!(o.status.success(), "{err}");
        let j: serde_json::Value = serde_json::from_slice(&std::fs::read(&sum).unwrap()).unwrap();
        assert_eq!(j["tile"], serde_json::json!({"width": w, "height": h}), "--tile {tile}");
        assert_eq!(j["tiles_total"], tiles, "--tile {tile}");
        assert!(err.contains(&format!("300x200 px, tiles {w}x{h}, halo")), "--tile {tile}: {err}");
        let warned = err.contains(&format!("warning: --tile {tile} is read as width {w} x height {h}"));
        assert_eq!(warned, w != h, "--tile {tile}: {err}");
    }
    // The unicode sign reads the same; -q keeps the warning quiet.
    let out = f.path("u.npy");
    let o = seamless(&[
        "infer",
        "--model",
        s(&m),
        "--input",
        "synth:300x200",
        "--output",
        s(&out),
        "--tile",
        "64×32",
        "-q",
    ]);
    assert!(o.status.success() && stderr(&o).is_empty(), "{}", stderr(&o));
    assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(f.path("t64x32.npy")).unwrap());
}

/// `--summary` says what ran (version, commit, model hash, backend, device, precision, input and
/// every option) and where the time went.
#[test]
fn the_summary_says_what_ran_and_where_the_time_went() {
    let f = Fixture::new();
    let (m, out, sum) = (f.path("unet.safetensors"), f.path("o.tif"), f.path("run.json"));
    let args = ["infer", "--model", s(&m), "--input", "synth:300x200:5", "--output", s(&out), "--tile", "64"];
    let o = seamless(&[&args[..], &["--backend", "cpu", "--summary", s(&sum), "-q"]].concat());
    assert!(o.status.success(), "{}", stderr(&o));
    let j: serde_json::Value = serde_json::from_slice(&std::fs::read(&sum).unwrap()).unwrap();
    assert_eq!(j["seamless"]["version"], env!("CARGO_PKG_VERSION"));
    let commit = j["seamless"]["commit"].as_str().unwrap();
    assert!(commit == "unknown" || (commit.len() >= 7 && commit.chars().all(|c| c.is_ascii_hexdigit())), "{commit}");
    assert_eq!(j["seamless"]["numerics"], seamless::numerics::REVISION);
    // `--version` says the same, for a user checking that the builds of a cluster agree.
    let v = seamless(&["--version"]);
    assert_eq!(
        String::from_utf8_lossy(&v.stdout).trim(),
        format!(
            "seamless {} (commit {commit}, numerics revision {})",
            env!("CARGO_PKG_VERSION"),
            seamless::numerics::REVISION
        )
    );
    assert_eq!(j["model"]["path"], s(&m));
    assert_eq!(j["model"]["blake3"], blake3::hash(&std::fs::read(&m).unwrap()).to_hex().as_str());
    assert_eq!(j["backend"], "cpu");
    assert!(j["device"].as_str().unwrap().starts_with("cpu"), "{}", j["device"]);
    assert_eq!(j["precision"], "f32");
    assert_eq!(j["input"]["path"], "synth:300x200:5");
    assert_eq!(
        (&j["input"]["width"], &j["input"]["height"], &j["input"]["channels"]),
        (&300.into(), &200.into(), &1.into())
    );
    assert_eq!(j["image"], serde_json::json!({"width": 300, "height": 200, "channels": 1}));
    let opts = &j["options"];
    for (k, v) in [("tile", "64"), ("halo", "exact"), ("backend", "cpu"), ("precision", "f32"), ("normalize", "zscore")]
    {
        assert_eq!(opts[k], v, "options.{k}");
    }
    for k in [
        "model",
        "input",
        "output",
        "output_kind",
        "pad",
        "memory_budget",
        "resume",
        "shard",
        "whole",
        "threads",
        "log_interval",
    ] {
        assert!(opts.get(k).is_some(), "options.{k} missing: {opts}");
    }
    let times = &j["times"];
    for k in ["read", "statistics", "compute", "write"] {
        let t = times[k].as_f64().unwrap_or_else(|| panic!("times.{k}: {times}"));
        assert!(t >= 0.0 && t <= j["seconds"].as_f64().unwrap() * 3.0, "times.{k} = {t}");
    }
    assert!(times["compute"].as_f64().unwrap() > 0.0, "{times}");
    assert!(j["tiles_total"].as_u64().unwrap() > 1 && j["complete"] == true);
}

/// Where stderr is not a terminal (a batch job's log), progress is a line every --log-interval
/// seconds and a last line per phase: tiles, the statistics passes, `synth`.
#[test]
fn progress_is_logged_where_stderr_is_not_a_terminal() {
    let f = Fixture::new();
    let m = f.path("unet.safetensors");
    let run = |out: &str, extra: &[&str], env: &[(&str, &str)]| {
        let out = f.path(out);
        let mut c = Command::new(env!("CARGO_BIN_EXE_seamless"));
        c.args(["infer", "--model", s(&m), "--input", "synth:300x200", "--output", s(&out), "--tile", "64"]);
        c.args(extra).env_remove("SEAMLESS_LOG_INTERVAL");
        for (k, v) in env {
            c.env(k, v);
        }
        let o = c.output().unwrap();
        assert!(o.status.success(), "{}", stderr(&o));
        stderr(&o)
    };
    let lines = |err: &str, start: &str| err.lines().filter(|l| l.starts_with(start)).count();
    // Every step with an interval of 0: tiles done/total, Mpx done/total, rate and ETA.
    let err = run("a.npy", &["--log-interval", "0"], &[]);
    assert_eq!(lines(&err, "tiles: "), 20 + 1, "{err}");
    assert!(err.lines().any(|l| l.starts_with("tiles: 1/20 tiles, 0.00/0.06 Mpx, ") && l.contains(", ETA ")), "{err}");
    assert!(err.lines().any(|l| l.starts_with("tiles: 20/20 tiles in 0:00:") && l.ends_with(" Mpx/s")), "{err}");
    assert!(lines(&err, "statistics, pass 1: 200/200 rows in ") == 1, "{err}");
    // The default, 30 s: only the last line of each phase in so short a run.
    let err = run("b.npy", &[], &[]);
    assert_eq!(lines(&err, "tiles: "), 1, "{err}");
    // The environment sets it too; the option wins.
    assert_eq!(lines(&run("c.npy", &[], &[("SEAMLESS_LOG_INTERVAL", "0")]), "tiles: "), 21);
    assert_eq!(lines(&run("d.npy", &["--log-interval", "100"], &[("SEAMLESS_LOG_INTERVAL", "0")]), "tiles: "), 1);
    // Nothing with -q.
    assert!(run("e.npy", &["-q", "--log-interval", "0"], &[]).is_empty());
    let o =
        seamless(&["infer", "--model", s(&m), "--input", "synth:30x20", "--output", "x.npy", "--log-interval", "-1"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("--log-interval"), "{}", stderr(&o));
    // synth writes big images: its rows are logged too.
    let img = f.path("big.npy");
    let o = seamless(&["synth", "--width", "300", "--height", "600", "--image", s(&img), "--log-interval", "0"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let err = stderr(&o);
    let synth = format!("synth {}: ", img.display());
    assert!(err.contains(&format!("{synth}256/600 rows, 0.08/0.18 Mpx")), "{err}");
    assert!(err.contains(&format!("{synth}600/600 rows in ")), "{err}");
}

#[test]
fn info_reports_the_reference_numbers() {
    let o = seamless(&["info", "unet-64", "--json"]);
    assert!(o.status.success());
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["receptive_field"], 204);
    assert_eq!(v["exact_halo"], 96);
    assert_eq!(v["downsampling_factor"], 16);
    assert_eq!(v["parameters"], 31037698);
    let o = seamless(&["info", "fcdensenet-103"]);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("receptive field     2294 px") && text.contains("exact halo          1152 px"), "{text}");
    assert!(text.contains("(0.801 M)"), "{text}");
}

/// Run a failing command; check the exit code, the message, and that `out` was not created.
fn fails(f: &Fixture, args: &[&str], code: i32, message: &str, out: &Path) {
    let before = f.files();
    let o = seamless(args);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(code), "{args:?}: {err}");
    assert!(err.contains(message), "{args:?}: expected {message:?} in: {err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(!out.exists(), "{args:?} left {}", out.display());
    assert_eq!(f.files(), before, "{args:?} left files behind");
}

#[test]
fn bad_inputs_give_clear_errors_and_leave_no_output() {
    let f = Fixture::new();
    let (m, img) = (f.path("unet.safetensors"), f.path("img.npy"));
    let out = f.path("out.npy");
    let infer = |model: &Path, input: &Path, extra: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = ["infer", "--model", s(model), "--input", s(input), "--output", s(&out), "-q"]
            .iter()
            .map(|x| x.to_string())
            .collect();
        v.extend(extra.iter().map(|x| x.to_string()));
        v
    };
    let run = |args: Vec<String>, code: i32, msg: &str| {
        let a: Vec<&str> = args.iter().map(|x| x.as_str()).collect();
        fails(&f, &a, code, msg, &out);
    };

    // Models.
    let bytes = std::fs::read(&m).unwrap();
    let truncated = f.path("truncated.safetensors");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    run(infer(&truncated, &img, &[]), 3, "not a valid safetensors file");
    let corrupt = f.path("corrupt.safetensors");
    std::fs::write(&corrupt, b"this is not a model at all, just some text").unwrap();
    run(infer(&corrupt, &img, &[]), 3, "not a valid safetensors file");
    run(infer(&f.path("missing.safetensors"), &img, &[]), 3, "cannot open");

    // Images.
    let rgb = f.path("rgb.npy");
    std::fs::write(&rgb, npy_bytes("<f4", &[5, 6, 3], &[0u8; 5 * 6 * 3 * 4])).unwrap();
    run(infer(&m, &rgb, &[]), 4, "has 3 channel(s), the model expects 1");
    let empty = f.path("empty.npy");
    std::fs::write(&empty, npy_bytes("<f4", &[0, 7], &[])).unwrap();
    run(infer(&m, &empty, &[]), 4, "empty image");
    let short = f.path("short.npy");
    std::fs::write(&short, npy_bytes("<f4", &[10, 10], &[0u8; 40])).unwrap();
    run(infer(&m, &short, &[]), 4, "truncated");
    let garbage = f.path("garbage.png");
    std::fs::write(&garbage, b"\x89PNG\r\n\x1a\nnot really").unwrap();
    run(infer(&m, &garbage, &[]), 4, "not a readable PNG");
    run(infer(&m, &f.path("absent.npy"), &[]), 4, "cannot open");
    let tiff = f.path("img.tif");
    std::fs::write(&tiff, b"II*\0").unwrap();
    run(infer(&m, &tiff, &[]), 4, "not a readable TIFF");
    let bmp = f.path("img.bmp");
    std::fs::write(&bmp, b"BM").unwrap();
    run(infer(&m, &bmp, &[]), 4, "unknown image format");

    // Tiling parameters.
    run(infer(&m, &img, &["--tile", "30"]), 2, "not a positive multiple of the model's down-sampling factor 4");
    run(infer(&m, &img, &["--halo", "6"]), 2, "halo 6 is not a multiple");
    run(infer(&m, &img, &["--tile", "big"]), 2, "expected N, WxH (width x height");

    // Outputs.
    let nodir = f.path("no/such/dir/out.npy");
    let mut a = infer(&m, &img, &[]);
    a[6] = s(&nodir).to_string();
    run(a, 5, "does not exist");
    let mut a = infer(&m, &img, &["--output-kind", "probs"]);
    a[6] = s(&f.path("p.png")).to_string();
    run(a, 5, "PNG holds labels only");
}

#[test]
fn unwritable_output_directory_is_reported() {
    // Root ignores permissions, so probe whether the directory really refuses writes.
    let f = Fixture::new();
    let ro = f.path("ro");
    std::fs::create_dir(&ro).unwrap();
    let mut perm = std::fs::metadata(&ro).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perm, 0o555);
    std::fs::set_permissions(&ro, perm).unwrap();
    if std::fs::write(ro.join("probe"), b"x").is_ok() {
        let _ = std::fs::remove_file(ro.join("probe"));
        eprintln!("skipped: running as a user that ignores directory permissions (root)");
        return;
    }
    let out = ro.join("out.npy");
    let o = seamless(&[
        "infer",
        "--model",
        s(&f.path("unet.safetensors")),
        "--input",
        s(&f.path("img.npy")),
        "--output",
        s(&out),
        "-q",
    ]);
    assert_eq!(o.status.code(), Some(5), "{}", stderr(&o));
    assert!(stderr(&o).contains("cannot create"));
    assert!(!out.exists());
}

#[test]
fn output_that_is_a_directory_is_refused() {
    let f = Fixture::new();
    let d = f.path("out.npy");
    std::fs::create_dir(&d).unwrap();
    let o = seamless(&[
        "infer",
        "--model",
        s(&f.path("unet.safetensors")),
        "--input",
        s(&f.path("img.npy")),
        "--output",
        s(&d),
        "-q",
    ]);
    assert_eq!(o.status.code(), Some(5), "{}", stderr(&o));
    assert!(stderr(&o).contains("a directory where a file goes"), "{}", stderr(&o));
}

#[test]
fn untileable_models_are_refused_with_the_reason() {
    let f = Fixture::new();
    let out = f.path("m.safetensors");
    let cfg = r#"{"in_channels":1,"classes":2,"base_filters":4,"depth":2,"up_mode":"bilinear_align_corners"}"#;
    fails(&f, &["random-model", "--arch", "unet", "--config", cfg, "--out", s(&out)], 3, "align_corners=True", &out);
}

#[test]
fn usage_errors_exit_2_and_help_explains() {
    let o = seamless(&["infer", "--model"]);
    assert_eq!(o.status.code(), Some(2));
    let o = seamless(&["--help"]);
    assert!(o.status.success());
    let help = String::from_utf8_lossy(&o.stdout);
    assert!(help.contains("Exit codes") && help.contains("demo") && help.contains("infer"), "{help}");
    let o = seamless(&["infer", "--help"]);
    let help = String::from_utf8_lossy(&o.stdout);
    assert!(help.contains("--tile") && help.contains("multiple of the model's"), "{help}");
}

#[test]
fn demo_runs_end_to_end_on_a_small_slide() {
    let f = Fixture::new();
    let dir = f.path("demo");
    let o = seamless(&["demo", "--size", "300", "--out-dir", s(&dir), "-q"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("pixel accuracy") && text.contains("Mpx/s"), "{text}");
    for name in ["slide.png", "labels.png", "preview.png"] {
        assert!(dir.join(name).exists(), "{name}");
    }
}

/// A .npy file with a given dtype, shape and raw data.
fn npy_bytes(descr: &str, shape: &[usize], data: &[u8]) -> Vec<u8> {
    let mut out = seamless::slide::npy::header_bytes(descr, shape);
    out.extend_from_slice(data);
    out
}

#[test]
fn plan_reports_tiles_per_budget() {
    let o =
        seamless(&["plan", "unet-64", "--budget", "1GiB,80GiB", "--precision", "f16", "--memory", "device", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let rows = v.as_array().unwrap();
    assert_eq!(rows.len(), 2);
    let (small, big) = (&rows[0], &rows[1]);
    assert!(small["tile_h"].as_u64().unwrap() < big["tile_h"].as_u64().unwrap());
    assert!(small["peak"]["arena_bytes"].as_u64().unwrap() <= 1 << 30);
    assert_eq!(big["halo"], 96);
    let o = seamless(&["plan", "fcdensenet-103", "--budget", "1GiB"]);
    assert!(o.status.success());
    assert!(String::from_utf8_lossy(&o.stdout).contains("does not fit"));
    let o = seamless(&["plan", "unet-64", "--budget", "lots"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("not a size"));
}

#[test]
fn memory_budget_picks_the_tile_and_too_small_a_budget_is_refused() {
    let f = Fixture::new();
    let (m, img, out) = (f.path("unet.safetensors"), f.path("img.npy"), f.path("o.npy"));
    let o = seamless(&["infer", "--model", s(&m), "--input", s(&img), "--output", s(&out), "--memory-budget", "2MiB"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("plan: tile"), "{}", stderr(&o));
    let out2 = f.path("o2.npy");
    fails(
        &f,
        &["infer", "--model", s(&m), "--input", s(&img), "--output", s(&out2), "--memory-budget", "10KiB"],
        6,
        "exceeds the budget",
        &out2,
    );
}

#[test]
fn bench_reports_whole_network_and_per_layer_throughput() {
    let out =
        seamless(&["--threads", "2", "bench", "unet-8-d2", "--size", "32", "--runs", "2", "--warmup", "0", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let rep: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json report");
    assert_eq!(rep["size"], 32);
    assert_eq!(rep["run_seconds"].as_array().map(|a| a.len()), Some(2));
    assert!(rep["mpx_per_s"].as_f64().unwrap() > 0.0 && rep["gflop_per_s"].as_f64().unwrap() > 0.0);
    let layers = rep["layers"].as_array().expect("layers");
    assert!(layers.iter().any(|l| l["op"] == "conv2d" && l["gflop"].as_f64().unwrap() > 0.0));
    // A size the model cannot take, and a backend this build lacks, are refused with a reason.
    let bad = seamless(&["bench", "unet-8-d2", "--size", "30"]);
    assert_eq!(bad.status.code(), Some(2), "{}", String::from_utf8_lossy(&bad.stderr));
    let gpu = seamless(&["bench", "unet-8-d2", "--size", "32", "--backend", "cuda"]);
    // 6 where no GPU can be used; where one can, the CUDA report.
    assert!(matches!(gpu.status.code(), Some(0) | Some(6)), "{}", String::from_utf8_lossy(&gpu.stderr));
    let other = seamless(&["bench", "unet-8-d2", "--size", "32", "--backend", "tpu"]);
    assert_eq!(other.status.code(), Some(2), "{}", String::from_utf8_lossy(&other.stderr));
    let f16_cpu = seamless(&["bench", "unet-8-d2", "--size", "32", "--precision", "f16"]);
    assert_eq!(f16_cpu.status.code(), Some(2), "{}", String::from_utf8_lossy(&f16_cpu.stderr));
}

#[test]
fn profile_reports_the_start_up_steps_and_each_window() {
    // SEAMLESS_PROFILE=1: each start-up step with its time and when it ended, then the windows.
    let f = Fixture::new();
    let (m, img, out) = (f.path("unet.safetensors"), f.path("img.npy"), f.path("out.npy"));
    let o = Command::new(env!("CARGO_BIN_EXE_seamless"))
        .args(["infer", "--model", s(&m), "--input", s(&img), "--output", s(&out), "--tile", "64"])
        .env("SEAMLESS_PROFILE", "1")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    let first = |what: &str| err.lines().position(|l| l.starts_with(&format!("profile: {what}")));
    let [load, fingerprint, pack, window] =
        ["loading the model", "the model's fingerprint", "packing the weights", "a 88x88 window begins"]
            .map(|w| first(w).unwrap_or_else(|| panic!("no '{w}' line in:\n{err}")));
    // Within the loading, its two largest parts, indented.
    let [read, fold] = ["  reading the weights", "  folding batch norm"]
        .map(|w| first(w).unwrap_or_else(|| panic!("no '{w}' line in:\n{err}")));
    // The packing runs beside the statistics and the fingerprint: either may end first.
    let order = [read, fold, load, fingerprint.min(pack), fingerprint.max(pack), window];
    // 150 x 97 in 64-px tiles with their halos: six windows.
    assert_eq!(err.lines().filter(|l| l.ends_with(" s after start") && l.contains(" window begins ")).count(), 6);
    assert!(order.is_sorted(), "{order:?} in:\n{err}");
    let step = err.lines().find(|l| l.starts_with("profile: loading the model")).unwrap();
    assert!(step.ends_with(" s after start)") && step.contains(" s (ends "), "{step}");
    // Packed once per process, not once per window.
    assert_eq!(err.lines().filter(|l| l.starts_with("profile: packing")).count(), 1, "{err}");
    // Without it, none of this.
    let quiet =
        seamless(&["infer", "--model", s(&m), "--input", s(&img), "--output", s(&out), "--tile", "64", "--overwrite"]);
    assert!(quiet.status.success() && !String::from_utf8_lossy(&quiet.stderr).contains("profile:"));
}
