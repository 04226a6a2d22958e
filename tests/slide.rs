//! Whole-slide streaming: every input and output format gives the whole-image result bit for
//! bit; interrupted runs resume to the same bytes; shards fill one output together; memory stays
//! bounded on a 20000 x 20000 image; bad files and full disks give clear errors.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::*;
use seamless::model::file::save_random;
use seamless::model::weights::SplitMix64;
use seamless::normalize::{self, NormSpec, Normalize};
use seamless::pipeline::{PadMode, Tiling, infer};
use seamless::slide::stream::{self, OutputKind, StreamOptions};
use seamless::slide::{self, Format, OutSpec, OutType};
use seamless::{Model, Tensor};

fn seamless(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_seamless"));
    c.args(args);
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().expect("runs")
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Integer-valued test image (like a u8/u16 scan) with `c` channels.
fn image(c: usize, h: usize, w: usize, seed: u64, max: f64) -> Tensor {
    let mut r = SplitMix64(seed);
    Tensor::from_vec(c, h, w, (0..c * h * w).map(|_| (r.uniform() * max).floor() as f32).collect())
}

/// Write `img` as a striped TIFF with the `tiff` crate (LZW or Deflate), in its sample type.
fn write_striped_tiff(path: &Path, img: &Tensor, kind: &str, compression: tiff::encoder::Compression) {
    use tiff::encoder::{TiffEncoder, colortype};
    let f = std::fs::File::create(path).unwrap();
    let mut enc = TiffEncoder::new(f).unwrap().with_compression(compression);
    let (w, h, hw) = (img.w as u32, img.h as u32, img.h * img.w);
    let interleaved = |conv: &dyn Fn(f32) -> f64| -> Vec<f64> {
        (0..hw).flat_map(|p| (0..img.c).map(move |c| (p, c))).map(|(p, c)| conv(img.data[c * hw + p])).collect()
    };
    let vals = interleaved(&|v| v as f64);
    match (kind, img.c) {
        ("u8", 1) => enc.write_image::<colortype::Gray8>(w, h, &vals.iter().map(|&v| v as u8).collect::<Vec<_>>()),
        ("u16", 3) => enc.write_image::<colortype::RGB16>(w, h, &vals.iter().map(|&v| v as u16).collect::<Vec<_>>()),
        ("f32", 1) => {
            enc.write_image::<colortype::Gray32Float>(w, h, &vals.iter().map(|&v| v as f32).collect::<Vec<_>>())
        }
        ("i32", 1) => enc.write_image::<colortype::GrayI32>(w, h, &vals.iter().map(|&v| v as i32).collect::<Vec<_>>()),
        ("f64", 1) => enc.write_image::<colortype::Gray64Float>(w, h, &vals.to_vec()),
        other => panic!("no writer for {other:?}"),
    }
    .unwrap();
}

/// Write `img` through one of seamless' own sinks (tiled BigTIFF, OME-Zarr, .npy).
fn write_with_sink(path: &Path, format: Format, img: &Tensor, out: OutType) {
    let spec = OutSpec { height: img.h, width: img.w, channels: img.c, out, chunk: 64, pixel_size: None };
    stream::write_bands(path, format, spec, &mut |y0, rows| Ok(img.window(y0, 0, rows, img.w))).unwrap();
}

fn read_all(path: &Path) -> Tensor {
    let mut src = slide::open_source(s(path), None).unwrap();
    let (h, w, _) = src.shape();
    src.read(0, 0, h, w).unwrap()
}

fn opts(format: Format, tile: usize, halo: usize, whole: bool) -> StreamOptions {
    StreamOptions { whole, kind: OutputKind::Probs, ..StreamOptions::new(format, (tile, tile), halo) }
}

fn run_stream(model: &Model, input: &Path, out: &Path, o: &StreamOptions) {
    let src = slide::open_source(s(input), None).unwrap();
    let backend = seamless::cpu::CpuBackend::default();
    stream::run(src, model, &backend, out, o, &mut |_| {}, &mut |_| {}, None).unwrap();
}

#[test]
fn every_input_and_output_format_streams_the_whole_image_result_bit_for_bit() {
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n);
    let gray = image(1, 150, 201, 1, 256.0);
    let rgb16 = image(3, 97, 130, 2, 65536.0);
    let float = Tensor::from_vec(1, 90, 75, image(1, 90, 75, 3, 1000.0).data.iter().map(|v| v / 7.0 - 50.0).collect());
    // (file, image it holds)
    let mut inputs: Vec<(PathBuf, &Tensor)> = Vec::new();
    write_striped_tiff(&p("lzw8.tif"), &gray, "u8", tiff::encoder::Compression::Lzw);
    inputs.push((p("lzw8.tif"), &gray));
    write_striped_tiff(&p("deflate16rgb.tif"), &rgb16, "u16", tiff::encoder::Compression::Deflate(Default::default()));
    inputs.push((p("deflate16rgb.tif"), &rgb16));
    write_striped_tiff(&p("plainf32.tif"), &float, "f32", tiff::encoder::Compression::Uncompressed);
    inputs.push((p("plainf32.tif"), &float));
    write_with_sink(&p("tiled.tif"), Format::Tiff, &gray, OutType::U8);
    inputs.push((p("tiled.tif"), &gray));
    write_with_sink(&p("in.zarr"), Format::Zarr, &rgb16, OutType::U16);
    inputs.push((p("in.zarr"), &rgb16));
    write_with_sink(&p("in.npy"), Format::Npy, &float, OutType::F32);
    inputs.push((p("in.npy"), &float));
    let png = p("in.png");
    seamless::image_io::save_png_labels(&png, &gray, false).unwrap();
    inputs.push((png, &gray));

    for (k, (input, img)) in inputs.iter().enumerate() {
        assert_eq!(&read_all(input), *img, "{} does not read back as written", input.display());
        let model = random_model(unet(img.c, 3, 4, 2, k % 2 == 0, "transpose"), k as u64);
        // The in-memory reference: global z-score, whole image at once.
        let mut norm = (*img).clone();
        normalize::apply(&mut norm, &normalize::statistics(img, Normalize::Zscore));
        let reference = infer(&model, &norm, PadMode::Zero, Tiling::Whole).unwrap();
        for (name, format) in [("o.npy", Format::Npy), ("o.tif", Format::Tiff), ("o.zarr", Format::Zarr)] {
            let out = p(&format!("{k}-{name}"));
            run_stream(&model, input, &out, &opts(format, 32, model.exact_halo(), false));
            let got = read_all(&out);
            assert_eq!(first_difference(&got, &reference), None, "{} -> {name}", input.display());
            let whole = p(&format!("{k}-whole-{name}"));
            run_stream(&model, input, &whole, &opts(format, 0, 0, true));
            assert_eq!(first_difference(&read_all(&whole), &reference), None, "--whole {} -> {name}", input.display());
        }
    }
}

struct Cli {
    dir: tempfile::TempDir,
}

impl Cli {
    fn new() -> Cli {
        let c = Cli { dir: tempfile::tempdir().unwrap() };
        save_random(&unet(1, 2, 4, 2, true, "transpose"), 5, false, &c.p("m.safetensors"), "test").unwrap();
        c
    }
    fn p(&self, n: &str) -> PathBuf {
        self.dir.path().join(n)
    }
    fn infer(&self, out: &str, extra: &[&str], env: &[(&str, &str)]) -> Output {
        let (m, o) = (self.p("m.safetensors"), self.p(out));
        let mut args =
            vec!["infer", "--model", s(&m), "--input", "synth:300x233:4", "--output", s(&o), "--tile", "64", "-q"];
        args.extend_from_slice(extra);
        seamless(&args, env)
    }
}

#[test]
fn an_interrupted_run_resumes_to_the_same_bytes() {
    let c = Cli::new();
    for out in ["r.npy", "r.tif", "r.zarr"] {
        let full = format!("full-{out}");
        assert!(c.infer(&full, &[], &[]).status.success());
        let o = c.infer(out, &[], &[("SEAMLESS_TEST_ABORT_AFTER_TILES", "7")]);
        assert!(!o.status.success(), "{out}: the run was to be interrupted");
        assert!(!c.p(out).exists(), "{out}: an interrupted run must not leave the final name");
        assert!(c.p(&format!("{out}.partial")).exists(), "{out}: finished tiles are kept for --resume");
        let summary = c.p(&format!("sum-{out}.json"));
        let o = c.infer(out, &["--resume", "--summary", s(&summary)], &[]);
        assert!(o.status.success(), "{}", stderr(&o));
        let sum: serde_json::Value = serde_json::from_slice(&std::fs::read(&summary).unwrap()).unwrap();
        assert_eq!(sum["tiles_resumed"], 7, "{out}");
        assert!(!c.p(&format!("{out}.partial")).exists());
        if out.ends_with(".zarr") {
            assert_eq!(read_all(&c.p(out)), read_all(&c.p(&full)));
        } else {
            assert_eq!(std::fs::read(c.p(out)).unwrap(), std::fs::read(c.p(&full)).unwrap(), "{out}: bytes differ");
        }
    }
    // A PNG is encoded whole at the end: a resumed PNG run recomputes every tile (it once wrote the
    // tiles of the interrupted run as zeros). It keeps no journal: there is nothing to resume.
    assert!(c.infer("full.png", &[], &[]).status.success());
    let o = c.infer("r.png", &[], &[("SEAMLESS_TEST_ABORT_AFTER_TILES", "7")]);
    assert!(!o.status.success() && !c.p("r.png").exists());
    let left: Vec<_> = std::fs::read_dir(c.p(".")).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert!(
        !left.iter().any(|n| n.to_string_lossy().starts_with("r.png.partial.journal")),
        "a PNG run journaled: {left:?}"
    );
    let (m, r) = (c.p("m.safetensors"), c.p("r.png"));
    let args = ["infer", "--model", s(&m), "--input", "synth:300x233:4", "--output", s(&r), "--tile", "64", "--resume"];
    let o = seamless(&args, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("nothing of an earlier run can be reused"), "{}", stderr(&o));
    assert_eq!(std::fs::read(c.p("r.png")).unwrap(), std::fs::read(c.p("full.png")).unwrap(), "resumed PNG");
    // A resume with other settings is refused rather than mixed.
    let _ = c.infer("x.npy", &[], &[("SEAMLESS_TEST_ABORT_AFTER_TILES", "2")]);
    let o = c.infer("x.npy", &["--resume", "--halo", "16"], &[]);
    assert_eq!(o.status.code(), Some(5), "{}", stderr(&o));
    assert!(stderr(&o).contains("other settings"));
}

/// Ctrl-C (SIGINT) during a run to a file stops it cleanly: exit 130, the tiles written so far
/// and their journal are kept, one line says how many and to use --resume, and the resumed run
/// ends with the bytes of an uninterrupted one.
#[test]
fn ctrl_c_keeps_the_written_tiles_and_says_how_to_resume() {
    let c = Cli::new();
    let m = c.p("m.safetensors");
    let args = |out: &str| -> Vec<String> {
        let out = c.p(out);
        ["infer", "--model", s(&m), "--input", "synth:1200x1000:4", "--output", s(&out), "--tile", "32", "-q"]
            .map(String::from)
            .to_vec()
    };
    let o = Command::new(env!("CARGO_BIN_EXE_seamless")).args(args("full.npy")).output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let child = Command::new(env!("CARGO_BIN_EXE_seamless"))
        .args(args("r.npy"))
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Interrupt once a few tiles are journaled (the journal's first line is the run's header).
    let journal = c.p("r.npy.partial.journal");
    let t0 = std::time::Instant::now();
    while std::fs::read_to_string(&journal).map_or(0, |j| j.lines().count()) < 4 {
        assert!(t0.elapsed().as_secs() < 120, "no tile was journaled");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    // SAFETY: kill(2) on our own child's pid.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGINT) }, 0);
    let o = child.wait_with_output().unwrap();
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(130), "{err}");
    assert_eq!(err.lines().count(), 1, "one line, even with -q: {err}");
    assert!(err.contains("run the same command with --resume to continue"), "{err}");
    // "interrupted: N of M tiles are written": N is what the journal holds.
    let n: usize =
        err.strip_prefix("interrupted: ").and_then(|r| r.split(' ').next()).and_then(|n| n.parse().ok()).expect(&err);
    assert!(n >= 3 && err.contains(&format!("{n} of 1216 tiles are written")), "{err}");
    assert_eq!(std::fs::read_to_string(&journal).unwrap().lines().count(), n + 1, "{err}");
    assert!(!c.p("r.npy").exists() && c.p("r.npy.partial").exists());
    let sum = c.p("r.json");
    let o = Command::new(env!("CARGO_BIN_EXE_seamless"))
        .args(args("r.npy"))
        .args(["--resume", "--summary", s(&sum)])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let sum: serde_json::Value = serde_json::from_slice(&std::fs::read(&sum).unwrap()).unwrap();
    assert_eq!(sum["tiles_resumed"], n);
    assert!(std::fs::read(c.p("r.npy")).unwrap() == std::fs::read(c.p("full.npy")).unwrap(), "resumed bytes differ");
}

#[test]
fn two_shards_fill_one_ome_zarr_like_one_run() {
    let c = Cli::new();
    assert!(c.infer("one.zarr", &[], &[]).status.success());
    let o = c.infer("two.zarr", &["--shard", "1/2"], &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!c.p("two.zarr").exists(), "one shard of two does not complete the output");
    let o = c.infer("two.zarr", &["--shard", "0/2"], &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(read_all(&c.p("two.zarr")), read_all(&c.p("one.zarr")));
    let o = c.infer("bad.tif", &["--shard", "0/2"], &[]);
    assert_eq!(o.status.code(), Some(2));
    let o = c.infer("bad.zarr", &["--shard", "2/2"], &[]);
    assert_eq!(o.status.code(), Some(2));
}

/// Shards run by builds that compute other bits (another numerics revision, or an earlier build
/// that did not record one) are refused before they write anything: one output never mixes them.
#[test]
fn shards_of_builds_that_compute_other_bits_are_refused() {
    let c = Cli::new();
    let o = c.infer("n.zarr", &["--shard", "1/2"], &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let record = c.p("n.zarr.partial/seamless-run.json");
    let run: serde_json::Value = serde_json::from_slice(&std::fs::read(&record).unwrap()).unwrap();
    for (run, says) in records_of_other_builds(&run) {
        std::fs::write(&record, serde_json::to_string(&run).unwrap()).unwrap();
        let o = c.infer("n.zarr", &["--shard", "0/2"], &[]);
        assert_eq!(o.status.code(), Some(5), "{}", stderr(&o));
        assert!(stderr(&o).contains(&says) && stderr(&o).contains("same numerics revision"), "{}", stderr(&o));
        assert!(!c.p("n.zarr").exists());
    }
}

/// The input of the concurrent shard tests: 600x500 in 64x64 tiles, 80 tiles (20 per shard of 4).
const CLUSTER_INPUT: &str = "synth:600x500:3";

impl Cli {
    /// `seamless infer` on [`CLUSTER_INPUT`] into `out` (tile 64 unless `extra` gives one),
    /// started and not waited for.
    fn spawn(&self, out: &str, extra: &[&str]) -> std::process::Child {
        let (m, o) = (self.p("m.safetensors"), self.p(out));
        let tile: &[&str] = if extra.contains(&"--tile") { &[] } else { &["--tile", "64"] };
        Command::new(env!("CARGO_BIN_EXE_seamless"))
            .args(["infer", "--model", s(&m), "--input", CLUSTER_INPUT, "--output", s(&o), "-q"])
            .args(tile)
            .args(extra)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("runs")
    }

    /// Names in the run's folder that a finished or refused run must not leave: partial stores,
    /// lock files, stores renamed aside.
    fn leftovers(&self) -> Vec<String> {
        std::fs::read_dir(self.dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains(".partial") || n.contains(".lock") || n.contains(".replaced"))
            .collect()
    }
}

/// Every file under `dir` whose name contains `part`.
fn files_named(dir: &Path, part: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            found.extend(files_named(&p, part));
        } else if p.file_name().unwrap().to_string_lossy().contains(part) {
            found.push(p);
        }
    }
    found
}

/// Start shard `i/n` of `out` for each `(i, extra options)`, all at once.
fn spawn_shards(c: &Cli, out: &str, n: usize, shards: &[(usize, &[&str])]) -> Vec<std::process::Child> {
    shards
        .iter()
        .map(|&(i, extra)| {
            let shard = format!("{i}/{n}");
            let mut args = vec!["--shard", &shard];
            args.extend_from_slice(extra);
            c.spawn(out, &args)
        })
        .collect()
}

/// Four shard processes started at the same moment on one machine (as a job array starts them)
/// fill one OME-Zarr: each exits 0, exactly one of them moves the store into place, nothing of
/// the run is left beside it or in it, and it equals one unsharded run bit for bit.
#[test]
fn concurrent_shards_fill_one_ome_zarr_like_one_run() {
    let c = Cli::new();
    let o = c.spawn("one.zarr", &[]).wait_with_output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let one = read_all(&c.p("one.zarr"));
    for round in 0..3 {
        let out = format!("four-{round}.zarr");
        let sums: Vec<String> = (0..4).map(|i| s(&c.p(&format!("sum-{round}-{i}.json"))).to_string()).collect();
        let extra: Vec<[&str; 2]> = sums.iter().map(|p| ["--summary", p.as_str()]).collect();
        let shards: Vec<(usize, &[&str])> = (0..4).map(|i| (i, &extra[i][..])).collect();
        for (i, child) in spawn_shards(&c, &out, 4, &shards).into_iter().enumerate() {
            let o = child.wait_with_output().unwrap();
            assert!(o.status.success(), "round {round}, shard {i}/4: {}", stderr(&o));
        }
        assert!(c.p(&out).is_dir(), "round {round}: the output is not in place");
        assert_eq!(c.leftovers(), Vec::<String>::new(), "round {round}");
        let inside = files_named(&c.p(&out), "seamless-");
        assert!(inside.is_empty(), "round {round}: {inside:?}");
        assert_eq!(read_all(&c.p(&out)), one, "round {round}: the shards' output differs from one run");
        // Each shard computed its own quarter, and the shard that moved the store says so.
        let sums: Vec<serde_json::Value> =
            sums.iter().map(|p| serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()).collect();
        let computed: u64 = sums.iter().map(|v| v["tiles_computed"].as_u64().unwrap()).sum();
        assert_eq!(computed, 80, "round {round}");
        assert!(sums.iter().all(|v| v["tiles_total"] == 20), "round {round}");
        assert!(sums.iter().any(|v| v["complete"] == true), "round {round}");
    }
}

/// A shard started with other settings while the others run is refused (exit 5, naming the
/// reason) and writes nothing; the output is never a mix of two runs. Whichever shard records the
/// run first defines it: when the odd one wins the race, the others are the ones refused.
#[test]
fn a_concurrent_shard_with_other_settings_is_refused_and_never_mixed_in() {
    let c = Cli::new();
    let refused = |o: &Output, what: &str| {
        assert_eq!(o.status.code(), Some(5), "{what}: {}", stderr(o));
        assert!(stderr(o).contains("other shards of this output run with other settings"), "{what}: {}", stderr(o));
    };
    // The odd shard starts once the run is recorded, while the other three are computing.
    let mut good = spawn_shards(&c, "halo.zarr", 4, &[(0, &[]), (1, &[]), (2, &[])]);
    let run = c.p("halo.zarr.partial").join("seamless-run.json");
    let t0 = std::time::Instant::now();
    while !run.exists() {
        assert!(t0.elapsed().as_secs() < 120, "no shard recorded the run");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let odd = c.spawn("halo.zarr", &["--shard", "3/4", "--halo", "0"]).wait_with_output().unwrap();
    refused(&odd, "--halo 0");
    for (i, child) in good.drain(..).enumerate() {
        let o = child.wait_with_output().unwrap();
        assert!(o.status.success(), "shard {i}/4: {}", stderr(&o));
    }
    assert!(!c.p("halo.zarr").exists(), "three shards of four completed the output");
    // The refused shard left nothing in the store: its own run completes it to one run's bytes.
    let o = c.spawn("halo.zarr", &["--shard", "3/4"]).wait_with_output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(c.leftovers(), Vec::<String>::new());
    let o = c.spawn("one.zarr", &[]).wait_with_output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(read_all(&c.p("halo.zarr")), read_all(&c.p("one.zarr")));

    // All four at once, one with another tile: either the odd one is refused or, when it recorded
    // the run first, every other one is; never both kinds write, and the output never completes.
    let odd: &[&str] = &["--tile", "32"];
    let out = spawn_shards(&c, "tile.zarr", 4, &[(0, &[]), (1, &[]), (2, &[]), (3, odd)]);
    let out: Vec<Output> = out.into_iter().map(|ch| ch.wait_with_output().unwrap()).collect();
    let ok: Vec<bool> = out.iter().map(|o| o.status.success()).collect();
    if ok[3] {
        for (i, o) in out[..3].iter().enumerate() {
            refused(o, &format!("shard {i}/4 after the odd shard recorded the run"));
        }
    } else {
        refused(&out[3], "--tile 32");
        assert!(ok[..3].iter().all(|&k| k), "{ok:?}: {}", stderr(&out[0]));
    }
    assert!(!c.p("tile.zarr").exists(), "a refused shard's tiles were counted: {ok:?}");
}

#[test]
fn memory_stays_bounded_on_a_20000_by_20000_image() {
    // A 400-megapixel tiled BigTIFF (zero tiles compress to almost nothing) through a tiny model;
    // as f32 the image alone would be 1.6 GB, the labels 400 MB.
    let c = Cli::new();
    let n = 20_000;
    let input = c.p("big.tif");
    let zeros = Tensor::zeros(1, 256, n);
    let spec = OutSpec { height: n, width: n, channels: 1, out: OutType::U8, chunk: 256, pixel_size: None };
    stream::write_bands(&input, Format::Tiff, spec, &mut |_, rows| Ok(zeros.window(0, 0, rows, n))).unwrap();
    let tiny = c.p("tiny.safetensors");
    save_random(&unet(1, 2, 2, 1, false, "transpose"), 1, false, &tiny, "tiny").unwrap();
    // Both a tiled BigTIFF and an OME-Zarr output (which once peaked at almost twice its budget).
    for name in ["labels.tif", "labels.zarr"] {
        let out = c.p(name);
        let o = seamless(
            &["infer", "--model", s(&tiny), "--input", s(&input), "--output", s(&out), "--memory-budget", "64MiB"],
            &[],
        );
        assert!(o.status.success(), "{}", stderr(&o));
        let text = stderr(&o);
        // "peak memory X MiB" from the run's own VmHWM.
        let peak_mib: f64 = text
            .split("peak memory ")
            .nth(1)
            .and_then(|t| t.split(" MiB").next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no peak memory in: {text}"));
        eprintln!("20000x20000 run to {name}: peak RSS {peak_mib:.1} MiB");
        // The budget covers the arena, workspace, weights and the windows in flight; what is left is
        // the process itself (binary, thread stacks, one statistics band of 256 rows, decoder state).
        assert!(
            peak_mib < 64.0 + 48.0,
            "{name}: peak RSS {peak_mib} MiB under a 64 MiB budget; the image is 381 MiB as u8, 1526 MiB as f32"
        );
        let mut r = slide::open_source(s(&out), None).unwrap();
        assert_eq!(r.shape(), (n, n, 1));
        // Away from the image border (where the zero padding shows) a constant image gives constant
        // labels, across tile seams too.
        let inner = r.read(n / 2 - 700, n / 2 - 700, 1400, 1400).unwrap();
        assert!(inner.data.iter().all(|&v| v == inner.data[0]), "a constant image gives constant labels");
    }
}

#[test]
fn bad_slides_and_full_disks_give_clear_errors() {
    let c = Cli::new();
    let m = c.p("m.safetensors");
    let run = |input: &Path, out: &Path| {
        seamless(&["infer", "--model", s(&m), "--input", s(input), "--output", s(out), "-q"], &[])
    };
    let img = image(1, 200, 300, 9, 256.0);
    write_with_sink(&c.p("good.tif"), Format::Tiff, &img, OutType::U8);
    let bytes = std::fs::read(c.p("good.tif")).unwrap();
    // Truncated: the tiles are there, the directory at the end is not.
    std::fs::write(c.p("truncated.tif"), &bytes[..bytes.len() / 2]).unwrap();
    // Corrupt: tile data overwritten with garbage.
    let mut corrupt = bytes.clone();
    for b in &mut corrupt[16..2000] {
        *b = 0xA5;
    }
    std::fs::write(c.p("corrupt.tif"), &corrupt).unwrap();
    // Unsupported compression: the Compression tag (259) says JPEG 2000 (34712).
    let mut j2k = bytes.clone();
    let ifd = u64::from_le_bytes(bytes[8..16].try_into().unwrap()) as usize;
    let entries = u64::from_le_bytes(bytes[ifd..ifd + 8].try_into().unwrap()) as usize;
    for e in 0..entries {
        let at = ifd + 8 + e * 20;
        if u16::from_le_bytes([bytes[at], bytes[at + 1]]) == 259 {
            j2k[at + 12..at + 14].copy_from_slice(&34712u16.to_le_bytes());
        }
    }
    std::fs::write(c.p("j2k.tif"), &j2k).unwrap();
    // Unsupported dtype: complex numbers.
    let mut complex = seamless::slide::npy::header_bytes("<c8", &[4, 4]);
    complex.extend_from_slice(&[0u8; 128]);
    std::fs::write(c.p("complex.npy"), &complex).unwrap();
    for (file, msg) in [
        ("truncated.tif", "TIFF"),
        ("corrupt.tif", "corrupt"),
        ("j2k.tif", "unsupported"),
        ("complex.npy", "unsupported .npy dtype"),
    ] {
        let out = c.p("out.tif");
        let o = run(&c.p(file), &out);
        assert_eq!(o.status.code(), Some(4), "{file}: {}", stderr(&o));
        assert!(stderr(&o).contains(msg), "{file}: {}", stderr(&o));
        assert!(!stderr(&o).contains("panicked"));
        assert!(!out.exists());
    }
    // A full output location (a file-size limit stands in for a full disk): a clear error, nothing
    // under the final name, and the finished tiles kept for --resume.
    let out = c.p("full.npy");
    let cmd = format!(
        "ulimit -f 64; exec '{}' infer --model '{}' --input synth:600x600 --output '{}' --tile 64 -q",
        env!("CARGO_BIN_EXE_seamless"),
        s(&m),
        s(&out)
    );
    let o = Command::new("bash").arg("-c").arg(&cmd).output().unwrap();
    assert_eq!(o.status.code(), Some(5), "{}", stderr(&o));
    assert!(stderr(&o).contains("write failed") || stderr(&o).contains("cannot create"), "{}", stderr(&o));
    assert!(!out.exists());
}

/// A Zarr v2 array written by hand (no compressor), as zarr-python 2 writes one, inside an
/// OME-NGFF 0.4 group (`.zattrs` multiscales, dataset "0", axes c, y, x).
fn write_zarr_v2(dir: &Path, img: &Tensor, chunk: usize) {
    let arr = dir.join("0");
    std::fs::create_dir_all(&arr).unwrap();
    std::fs::write(dir.join(".zgroup"), r#"{"zarr_format": 2}"#).unwrap();
    let zattrs = r#"{"multiscales": [{"version": "0.4", "axes": [{"name": "c", "type": "channel"},
        {"name": "y", "type": "space"}, {"name": "x", "type": "space"}], "datasets": [{"path": "0"}]}]}"#;
    std::fs::write(dir.join(".zattrs"), zattrs).unwrap();
    let zarray = format!(
        r#"{{"zarr_format": 2, "shape": [{}, {}, {}], "chunks": [{}, {chunk}, {chunk}], "dtype": "<u2",
            "compressor": null, "fill_value": 0, "order": "C", "filters": null}}"#,
        img.c, img.h, img.w, img.c
    );
    std::fs::write(arr.join(".zarray"), zarray).unwrap();
    for cy in 0..img.h.div_ceil(chunk) {
        for cx in 0..img.w.div_ceil(chunk) {
            let mut bytes = Vec::new();
            for c in 0..img.c {
                for y in cy * chunk..(cy + 1) * chunk {
                    for x in cx * chunk..(cx + 1) * chunk {
                        let v = if y < img.h && x < img.w { img.at(c, y, x) as u16 } else { 0 };
                        bytes.extend_from_slice(&v.to_le_bytes());
                    }
                }
            }
            std::fs::write(arr.join(format!("0.{cy}.{cx}")), bytes).unwrap();
        }
    }
}

#[test]
fn ome_zarr_v2_input_is_read_and_streams_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let img = image(2, 70, 93, 12, 4000.0);
    let input = dir.path().join("v2.zarr");
    write_zarr_v2(&input, &img, 32);
    assert_eq!(read_all(&input), img);
    let model = random_model(unet(2, 2, 4, 2, true, "bilinear"), 3);
    let mut norm = img.clone();
    normalize::apply(&mut norm, &normalize::statistics(&img, Normalize::Zscore));
    let reference = infer(&model, &norm, PadMode::Zero, Tiling::Whole).unwrap();
    let out = dir.path().join("o.zarr");
    run_stream(&model, &input, &out, &opts(Format::Zarr, 16, model.exact_halo(), false));
    assert_eq!(first_difference(&read_all(&out), &reference), None);
}

/// A float TIFF holding NaN or infinity is refused with the position, as .npy and Zarr inputs are:
/// one such pixel would make the global statistics NaN and every label class 0.
#[test]
fn float_tiffs_with_nan_or_infinity_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    for (k, bad) in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY].into_iter().enumerate() {
        let mut img = image(1, 20, 30, 7, 100.0);
        img.data[5 * 30 + 17] = bad;
        let path = dir.path().join(format!("bad{k}.tif"));
        write_striped_tiff(&path, &img, "f32", tiff::encoder::Compression::Uncompressed);
        let mut src = slide::open_source(s(&path), None).unwrap();
        let err = src.read(0, 0, 20, 30).expect_err("a non-finite pixel is an error").to_string();
        assert!(err.contains("NaN or infinite value at (5, 17)"), "{err}");
    }
}

/// Signed 32-bit and 64-bit float TIFFs read as the values they hold (they were refused as an
/// unnamed "unsupported TIFF sample type").
#[test]
fn signed_and_double_tiffs_read_back() {
    let dir = tempfile::tempdir().unwrap();
    let img = Tensor::from_vec(1, 21, 34, image(1, 21, 34, 9, 4000.0).data.iter().map(|v| v - 2000.0).collect());
    for kind in ["i32", "f64"] {
        let path = dir.path().join(format!("{kind}.tif"));
        write_striped_tiff(&path, &img, kind, tiff::encoder::Compression::Deflate(Default::default()));
        assert_eq!(read_all(&path), img, "{kind}");
    }
}

/// An `.npy` input cut short while it is being read gives an error naming the row (it was
/// memory-mapped, and the process died of SIGBUS).
#[test]
fn an_npy_truncated_during_the_run_gives_an_error_not_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("in.npy");
    let img = image(1, 64, 48, 4, 1000.0);
    write_with_sink(&path, Format::Npy, &img, OutType::F32);
    let mut src = slide::open_source(s(&path), None).unwrap();
    assert_eq!(src.read(0, 0, 64, 48).unwrap(), img);
    let len = std::fs::metadata(&path).unwrap().len();
    std::fs::OpenOptions::new().write(true).open(&path).unwrap().set_len(len / 2).unwrap();
    let e = src.read(32, 0, 32, 48).expect_err("rows past the new end cannot be read").to_string();
    assert!(e.contains("truncated") && e.contains("row 3"), "{e}");
    // A window beyond the image is refused, not read past its rows.
    assert!(src.read(60, 0, 8, 48).is_err());
}

/// An input rewritten while the run reads it would give tiles of two images: the run fails and
/// leaves its unfinished output under `.partial`, nothing under the output's name.
#[test]
fn an_input_changed_during_the_run_is_not_taken_for_one_image() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.npy");
    let img = image(1, 96, 80, 5, 1000.0);
    write_with_sink(&input, Format::Npy, &img, OutType::F32);
    let model = random_model(unet(1, 2, 4, 1, false, "transpose"), 3);
    let out = dir.path().join("out.npy");
    let mut o = opts(Format::Npy, 32, model.exact_halo(), false);
    o.input_id = slide::input_identity(s(&input)).unwrap();
    o.recheck_input = Some(s(&input).to_string());
    let backend = seamless::cpu::CpuBackend::default();
    let mut rewritten = false;
    let src = slide::open_source(s(&input), None).unwrap();
    let e = stream::run(
        src,
        &model,
        &backend,
        &out,
        &o,
        &mut |p| {
            if matches!(p, stream::Progress::Tiles { .. }) && !rewritten {
                write_with_sink(&input, Format::Npy, &image(1, 96, 80, 6, 1000.0), OutType::F32);
                rewritten = true;
            }
        },
        &mut |_| {},
        None,
    )
    .expect_err("the input changed");
    assert!(rewritten);
    assert_eq!(e.exit_code(), 4, "{e}");
    assert!(e.to_string().contains("changed while it was being read"), "{e}");
    assert!(!out.exists(), "an output of two images was moved into place");
    // Unchanged, the same run completes.
    let mut o2 = o.clone();
    o2.input_id = slide::input_identity(s(&input)).unwrap();
    run_stream(&model, &input, &out, &o2);
    assert!(out.exists());
}

/// The statistics pass reads an image in blocks of at most 256 x 4096 pixels, whatever its width,
/// and its sums round exactly as the in-memory statistics' (the same blocks in the same order).
#[test]
fn statistics_of_a_wide_image_stream_in_blocks_and_match_memory() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("wide.npy");
    let img = image(1, 300, 9001, 8, 60000.0);
    write_with_sink(&input, Format::Npy, &img, OutType::U16);
    let model = random_model(unet(1, 2, 2, 1, false, "transpose"), 4);
    let backend = seamless::cpu::CpuBackend::default();
    for mode in [Normalize::Zscore, Normalize::Percentile] {
        let mut o = opts(Format::Npy, 512, model.exact_halo(), false);
        o.norm = NormSpec::new(mode);
        let out = dir.path().join(format!("{mode:?}.npy"));
        let widest = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let probe = ReadProbe { inner: slide::open_source(s(&input), None).unwrap(), widest: widest.clone() };
        let summary = stream::run(Box::new(probe), &model, &backend, &out, &o, &mut |_| {}, &mut |_| {}, None).unwrap();
        let want = normalize::statistics_spec(&img, &o.norm).unwrap();
        let bits = |v: &[(f64, f64)]| v.iter().map(|(a, b)| (a.to_bits(), b.to_bits())).collect::<Vec<_>>();
        assert_eq!(bits(&summary.normalization), bits(&want), "{mode:?}");
        let widest = widest.load(std::sync::atomic::Ordering::Relaxed);
        assert!(widest <= 4096, "a read {widest} pixels wide");
    }
}

/// A source that records its widest read (tile windows here are at most 512 + 2 halos wide).
struct ReadProbe {
    inner: Box<dyn slide::Source>,
    widest: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl slide::Source for ReadProbe {
    fn shape(&self) -> (usize, usize, usize) {
        self.inner.shape()
    }
    fn read(&mut self, y0: usize, x0: usize, h: usize, w: usize) -> seamless::Result<Tensor> {
        self.widest.fetch_max(w, std::sync::atomic::Ordering::Relaxed);
        self.inner.read(y0, x0, h, w)
    }
    fn sample_type(&self) -> &'static str {
        self.inner.sample_type()
    }
}

/// A 16-bit float TIFF (written by hand: the `tiff` crate's encoder has no f16) reads as the
/// values it holds.
#[test]
fn half_float_tiffs_read_back() {
    let (w, h) = (7u16, 5u16);
    let values: Vec<f32> = (0..w as usize * h as usize).map(|i| i as f32 * 0.25 - 3.0).collect();
    let data: Vec<u8> = values.iter().flat_map(|&v| half::f16::from_f32(v).to_le_bytes()).collect();
    let entries: [(u16, u16, u32); 10] = [
        (256, 3, w as u32),          // ImageWidth, SHORT
        (257, 3, h as u32),          // ImageLength
        (258, 3, 16),                // BitsPerSample
        (259, 3, 1),                 // Compression: none
        (262, 3, 1),                 // Photometric: black is zero
        (273, 4, 0),                 // StripOffsets, LONG: filled in below
        (277, 3, 1),                 // SamplesPerPixel
        (278, 3, h as u32),          // RowsPerStrip
        (279, 4, data.len() as u32), // StripByteCounts
        (339, 3, 3),                 // SampleFormat: IEEE float
    ];
    let data_at = 8 + 2 + 12 * entries.len() as u32 + 4;
    let mut b = b"II*\0".to_vec();
    b.extend_from_slice(&8u32.to_le_bytes());
    b.extend_from_slice(&(entries.len() as u16).to_le_bytes());
    for (tag, kind, value) in entries {
        let value = if tag == 273 { data_at } else { value };
        b.extend_from_slice(&tag.to_le_bytes());
        b.extend_from_slice(&kind.to_le_bytes());
        b.extend_from_slice(&1u32.to_le_bytes());
        match kind {
            3 => b.extend_from_slice(&[(value as u16).to_le_bytes().as_slice(), &[0, 0]].concat()),
            _ => b.extend_from_slice(&value.to_le_bytes()),
        }
    }
    b.extend_from_slice(&0u32.to_le_bytes());
    assert_eq!(b.len() as u32, data_at);
    b.extend_from_slice(&data);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("half.tif");
    std::fs::write(&path, &b).unwrap();
    let got = read_all(&path);
    assert_eq!((got.c, got.h, got.w), (1, h as usize, w as usize));
    assert_eq!(got.data, values);
}
