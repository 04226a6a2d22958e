//! The guarantees of docs/reliability.md, from the command line. Never lose the user's data: an
//! existing output is replaced only with `--overwrite`, and then only by an output of its own kind
//! (a directory that is not a Zarr store is never deleted); no output may be one of the run's
//! inputs; two runs on one output cannot interleave (the second stops, touching nothing); a finished
//! Zarr store keeps no journal. Never a silently wrong result: `--whole` is whole or fails. Inputs
//! that are not files are refused at once.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn seamless(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_seamless")).args(args).output().expect("runs")
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

struct Fixture {
    dir: tempfile::TempDir,
    model: PathBuf,
    image: PathBuf,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let (model, image) = (dir.path().join("m.safetensors"), dir.path().join("img.npy"));
        let cfg = r#"{"in_channels":1,"classes":2,"base_filters":4,"depth":1}"#;
        let o = seamless(&["random-model", "--arch", "unet", "--config", cfg, "--out", s(&model)]);
        assert!(o.status.success(), "{}", stderr(&o));
        let o = seamless(&["synth", "--width", "40", "--height", "30", "--image", s(&image)]);
        assert!(o.status.success(), "{}", stderr(&o));
        Fixture { dir, model, image }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn infer(&self, out: &Path, extra: &[&str]) -> Output {
        let mut args = vec!["infer", "--model", s(&self.model), "--input", s(&self.image), "--output", s(out), "-q"];
        args.extend_from_slice(extra);
        seamless(&args)
    }
}

/// Every file below `dir` with its bytes: what must stay untouched.
fn snapshot(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push((p.clone(), std::fs::read(&p).unwrap()));
            }
        }
    }
    out.sort();
    out
}

/// The files below `dir` whose path contains `part`.
fn files_containing(dir: &Path, part: &str) -> Vec<PathBuf> {
    snapshot(dir).into_iter().map(|(p, _)| p).filter(|p| p.to_string_lossy().contains(part)).collect()
}

/// A hash of every file below `p` (or of the file `p`) with its name.
fn digest(p: &Path) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    if p.is_dir() { snapshot(p) } else { vec![(p.to_path_buf(), std::fs::read(p).unwrap())] }.hash(&mut h);
    h.finish()
}

#[test]
fn an_existing_output_is_replaced_only_with_overwrite() {
    let f = Fixture::new();
    for name in ["out.npy", "out.tif", "out.zarr"] {
        let out = f.path(name);
        let first = f.infer(&out, &[]);
        assert!(first.status.success(), "{name}: {}", stderr(&first));
        let before = digest(&out);
        // Probabilities, not labels: a different result to tell the outputs apart.
        let again = f.infer(&out, &["--output-kind", "probs"]);
        assert_eq!(again.status.code(), Some(5), "{name}: {}", stderr(&again));
        assert!(stderr(&again).contains("--overwrite"), "{name}: {}", stderr(&again));
        assert_eq!(before, digest(&out), "{name}: the refused run changed the existing output");
        let replaced = f.infer(&out, &["--output-kind", "probs", "--overwrite"]);
        assert!(replaced.status.success(), "{name}: {}", stderr(&replaced));
        assert_ne!(before, digest(&out), "{name}: --overwrite wrote the new result");
    }
    // Nothing left behind: no partial outputs, journals, locks or replaced stores.
    let mut names: Vec<String> =
        std::fs::read_dir(f.dir.path()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into()).collect();
    names.sort();
    assert_eq!(names, ["img.npy", "m.safetensors", "out.npy", "out.tif", "out.zarr"]);
}

#[test]
fn a_directory_that_is_not_a_zarr_store_is_never_deleted() {
    let f = Fixture::new();
    let dir = f.path("results");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("thesis.tex"), b"years of work").unwrap();
    for extra in [&[][..], &["--overwrite"][..]] {
        let o = f.infer(&dir, &[&["--output-format", "zarr"], extra].concat());
        assert_eq!(o.status.code(), Some(5), "{extra:?}: {}", stderr(&o));
        assert_eq!(std::fs::read(dir.join("thesis.tex")).unwrap(), b"years of work");
        // A file output onto a directory, and a Zarr output onto a file, are refused too.
        let o = f.infer(&dir, &[&["--output-format", "npy"], extra].concat());
        assert_eq!(o.status.code(), Some(5), "{extra:?}: {}", stderr(&o));
    }
    let file = f.path("notes.zarr");
    std::fs::write(&file, b"not a store").unwrap();
    let o = f.infer(&file, &["--overwrite"]);
    assert_eq!(o.status.code(), Some(5), "{}", stderr(&o));
    assert_eq!(std::fs::read(&file).unwrap(), b"not a store");
}

#[test]
fn no_output_may_be_an_input() {
    let f = Fixture::new();
    let model_bytes = std::fs::read(&f.model).unwrap();
    let image_bytes = std::fs::read(&f.image).unwrap();
    // The same files under other spellings: ./x, dir/../x.
    let sub = f.path("sub");
    std::fs::create_dir(&sub).unwrap();
    let image_again = sub.join("..").join("img.npy");
    for (out, extra) in [
        (f.image.clone(), vec!["--overwrite"]),
        (image_again.clone(), vec!["--overwrite"]),
        (f.model.clone(), vec!["--output-format", "npy", "--overwrite"]),
    ] {
        let o = f.infer(&out, &extra);
        assert_eq!(o.status.code(), Some(2), "{}: {}", out.display(), stderr(&o));
        assert!(stderr(&o).contains("never writes over its own inputs"), "{}", stderr(&o));
    }
    let out = f.path("out.npy");
    for summary in [out.clone(), f.image.clone(), f.model.clone()] {
        let o = f.infer(&out, &["--summary", s(&summary), "--overwrite"]);
        assert_eq!(o.status.code(), Some(2), "summary {}: {}", summary.display(), stderr(&o));
    }
    assert!(!out.exists(), "a refused run writes nothing");
    assert_eq!(std::fs::read(&f.model).unwrap(), model_bytes);
    assert_eq!(std::fs::read(&f.image).unwrap(), image_bytes);
    let o = seamless(&["synth", "--image", s(&f.image), "--labels", s(&image_again), "--overwrite"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert_eq!(std::fs::read(&f.image).unwrap(), image_bytes);
}

#[test]
fn a_second_run_on_the_same_output_stops_and_touches_nothing() {
    let f = Fixture::new();
    let out = f.path("out.zarr");
    // The first run, stopped mid-way, leaves a partial output to resume; a run holding the lock
    // stands for it being still alive.
    let partial = f.path("out.zarr.partial");
    std::fs::create_dir(&partial).unwrap();
    std::fs::write(partial.join("zarr.json"), b"{}").unwrap();
    let lock = std::fs::File::create(f.path("out.zarr.partial.lock")).unwrap();
    lock.try_lock().unwrap();
    let before = digest(&partial);
    let o = f.infer(&out, &[]);
    assert_eq!(o.status.code(), Some(5), "{}", stderr(&o));
    assert!(stderr(&o).contains("another seamless run is writing this output"), "{}", stderr(&o));
    assert_eq!(digest(&partial), before, "the other run's partial output was touched");
    assert!(!out.exists());
    // Once the other run is gone, a new run proceeds (and replaces the stale partial output).
    drop(lock);
    let o = f.infer(&out, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!partial.exists() && !f.path("out.zarr.partial.lock").exists());
}

#[test]
fn a_finished_zarr_store_keeps_no_journal() {
    let f = Fixture::new();
    let out = f.path("out.zarr");
    let o = f.infer(&out, &["--tile", "8"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let journals = files_containing(&out, "journal");
    assert!(journals.is_empty(), "{journals:?}");
}

#[test]
fn generators_refuse_to_replace_without_overwrite() {
    let f = Fixture::new();
    let model_bytes = std::fs::read(&f.model).unwrap();
    let cfg = r#"{"in_channels":1,"classes":2,"base_filters":4,"depth":1}"#;
    let o = seamless(&["random-model", "--arch", "unet", "--config", cfg, "--seed", "9", "--out", s(&f.model)]);
    assert_eq!(o.status.code(), Some(5), "{}", stderr(&o));
    assert_eq!(std::fs::read(&f.model).unwrap(), model_bytes);
    let image_bytes = std::fs::read(&f.image).unwrap();
    let o = seamless(&["synth", "--width", "50", "--height", "20", "--image", s(&f.image)]);
    assert_eq!(o.status.code(), Some(5), "{}", stderr(&o));
    assert_eq!(std::fs::read(&f.image).unwrap(), image_bytes);
    let o = seamless(&["synth", "--width", "50", "--height", "20", "--image", s(&f.image), "--overwrite"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_ne!(std::fs::read(&f.image).unwrap(), image_bytes);
}

/// Inputs that are not what they claim: a FIFO would block the open forever, a directory gave
/// "No such device". Each is refused at once with a message that says what it is.
#[test]
fn inputs_that_are_not_regular_files_are_refused_at_once() {
    let f = Fixture::new();
    let fifo = f.path("pipe.npy");
    let c = std::ffi::CString::new(s(&fifo)).unwrap();
    // SAFETY: mkfifo with a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let dir = f.path("folder.npy");
    std::fs::create_dir(&dir).unwrap();
    let out = f.path("out.npy");
    for (input, want) in [(&fifo, "not a regular file"), (&dir, "is a directory")] {
        let o = seamless(&["infer", "--model", s(&f.model), "--input", s(input), "--output", s(&out), "-q"]);
        assert_eq!(o.status.code(), Some(4), "{}", stderr(&o));
        assert!(stderr(&o).contains(want), "{}", stderr(&o));
    }
    let fifo_model = f.path("pipe.safetensors");
    let c = std::ffi::CString::new(s(&fifo_model)).unwrap();
    // SAFETY: as above.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    for (model, want) in [(&fifo_model, "not a regular file"), (&dir, "is a directory")] {
        let o = seamless(&["infer", "--model", s(model), "--input", s(&f.image), "--output", s(&out), "-q"]);
        assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
        assert!(stderr(&o).contains(want), "{}", stderr(&o));
    }
    for threads in ["0", "100000"] {
        let o = seamless(&["--threads", threads, "info", s(&f.model)]);
        assert_eq!(o.status.code(), Some(2), "--threads {threads}: {}", stderr(&o));
    }
}

/// `--whole` is the reference run: when the whole image does not fit the budget it fails (exit 6)
/// instead of silently running tiles with no halo and reporting a whole-image run.
#[test]
fn whole_is_whole_or_fails() {
    let f = Fixture::new();
    let out = f.path("whole.npy");
    let o = seamless(&[
        "infer",
        "--model",
        s(&f.model),
        "--input",
        "synth:600x500",
        "--output",
        s(&out),
        "--whole",
        "--backend",
        "cpu",
        "--memory-budget",
        "2MiB",
        "-q",
    ]);
    assert_eq!(o.status.code(), Some(6), "{}", stderr(&o));
    assert!(stderr(&o).contains("never split into tiles"), "{}", stderr(&o));
    assert!(!out.exists());
    let o = seamless(&[
        "infer",
        "--model",
        s(&f.model),
        "--input",
        "synth:600x500",
        "--output",
        s(&out),
        "--memory-budget",
        "2e9",
        "-q",
    ]);
    assert!(o.status.success(), "--memory-budget 2e9: {}", stderr(&o));
}

/// Under `ulimit -v` a run never dies of SIGABRT (exit 134, a backtrace): the default budget stays
/// inside the limit (`--whole` then fails as planned), a budget past it is refused at once, and an
/// allocation that fails anyway ends the run with exit 6 and a message. No partial output is left
/// by a run that failed before its first tile, when it could clean up.
#[test]
fn whole_under_an_address_space_limit_fails_cleanly() {
    let f = Fixture::new();
    let out = f.path("whole.npy");
    let mut ways = std::collections::BTreeSet::new();
    for limit_kib in [100_000, 150_000, 200_000, 300_000] {
        for budget in ["", "60MiB", "140MiB", "1TiB"] {
            let budget_arg = if budget.is_empty() { String::new() } else { format!("--memory-budget {budget}") };
            let script = format!(
                "ulimit -v {limit_kib}; exec '{}' infer --model '{}' --input synth:3000x3000 --output '{}' --whole \
                 --backend cpu -q {budget_arg}",
                env!("CARGO_BIN_EXE_seamless"),
                s(&f.model),
                s(&out)
            );
            let o = Command::new("sh").arg("-c").arg(&script).env("RUST_BACKTRACE", "0").output().unwrap();
            let (code, text) = (o.status.code(), stderr(&o));
            let case = format!("ulimit -v {limit_kib}, budget {budget:?}: exit {code:?}: {text}");
            assert!(budget != "1TiB" || code == Some(2), "{case}");
            match code {
                Some(2) => assert!(text.contains("ulimit -v") && !budget.is_empty(), "{case}"),
                Some(6) => assert!(text.contains("does not fit") || text.contains("out of memory"), "{case}"),
                _ => panic!("{case}"),
            }
            assert!(!out.exists(), "{case}");
            let partial = files_containing(f.dir.path(), "whole.npy.partial");
            if text.contains("out of memory") {
                // Ended from the abort handler, which cannot clean up; a rerun removes it.
                partial.iter().for_each(|p| std::fs::remove_file(p).unwrap());
                ways.insert("allocation failed");
            } else {
                assert!(partial.is_empty(), "{case}: a partial output was left: {partial:?}");
                ways.insert("planned");
            }
        }
    }
    assert!(ways.contains("planned"), "the default budget never refused the whole image up front");
}

/// Shards past the last tile would never complete the output. A journal line edited (or damaged
/// on disk) to name a tile, or a TIFF tile, the run does not have is not taken for a finished tile
/// (it panicked): every line carries a hash of the run and its content, and a line that does not
/// match is redone, so the resumed output is the uninterrupted one.
#[test]
fn impossible_shards_and_edited_journals_are_refused() {
    let f = Fixture::new();
    let out = f.path("out.zarr");
    let o = f.infer(&out, &["--shard", "0/1000000000"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("at most"), "{}", stderr(&o));
    let run = |out: &Path, extra: &[&str], abort_after: Option<&str>| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_seamless"));
        c.args(["infer", "--model", s(&f.model), "--input", "synth:300x233:4", "--output", s(out), "--tile", "64"])
            .args(["-q"])
            .args(extra);
        if let Some(n) = abort_after {
            c.env("SEAMLESS_TEST_ABORT_AFTER_TILES", n);
        }
        c.output().unwrap()
    };
    let reference = f.path("reference.tif");
    assert!(run(&reference, &[], None).status.success());
    let read = |p: &Path| {
        let mut src = seamless::slide::open_source(s(p), None).unwrap();
        let (h, w, _) = src.shape();
        src.read(0, 0, h, w).unwrap()
    };
    type Edit = fn(&mut serde_json::Value);
    let edits: [(&str, Edit); 3] = [
        ("tile index", |e| e["tile"] = serde_json::json!(99999)),
        ("TIFF tile index", |e| e["sink"][0][0] = serde_json::json!(99999)),
        ("another finished tile", |e| e["tile"] = serde_json::json!(e["tile"].as_u64().unwrap() + 1)),
    ];
    for (what, edit) in edits {
        let tif = f.path("out.tif");
        let o = run(&tif, &["--overwrite"], Some("2"));
        assert!(!o.status.success());
        let journal = f.path("out.tif.partial.journal");
        let text = std::fs::read_to_string(&journal).unwrap();
        let mut lines: Vec<String> = text.lines().map(String::from).collect();
        assert!(lines.len() >= 3, "{text}");
        let mut last: serde_json::Value = serde_json::from_str(lines.last().unwrap()).unwrap();
        edit(&mut last);
        *lines.last_mut().unwrap() = last.to_string();
        std::fs::write(&journal, lines.join("\n") + "\n").unwrap();
        let o = run(&tif, &["--resume", "--overwrite"], None);
        assert!(o.status.success(), "{what}: {}", stderr(&o));
        assert!(read(&tif) == read(&reference), "{what}: the resumed output differs from an uninterrupted run");
    }
}

/// Sizes so large that the arithmetic on them would overflow, or whose buffers no machine holds,
/// are refused with a message before any work, never wrapped or attempted: a halo of 2^64 - 8, an
/// image (planned, generated or read) past 2^44 pixels or 2^32 per side, a tile whose window is
/// over the memory budget (its window would have been read whole before the backend refused it).
#[test]
fn absurd_sizes_are_refused_before_any_work() {
    let f = Fixture::new();
    let out = f.path("out.npy");
    let o = f.infer(&out, &["--halo", "18446744073709551608", "--tile", "8"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("at most"), "{}", stderr(&o));
    assert!(!out.exists());
    let m = s(&f.model);
    for image in ["18446744073709551615x5", "4294967297x2", "5000000x5000000"] {
        let o = seamless(&["plan", m, "--image", image]);
        assert_eq!(o.status.code(), Some(2), "plan {image}: {}", stderr(&o));
        assert!(stderr(&o).contains("beyond what seamless handles"), "{}", stderr(&o));
        let input = format!("synth:{image}");
        let o = seamless(&["infer", "--model", m, "--input", &input, "--output", s(&out), "-q"]);
        assert_eq!(o.status.code(), Some(2), "{input}: {}", stderr(&o));
        assert!(!out.exists());
    }
    // A 10^6 x 10^6 plan is fine (planning does not grow with the image).
    assert!(seamless(&["plan", m, "--image", "1000000x1000000"]).status.success());
    for tile in ["18446744073709551600", "65536"] {
        let o = seamless(&[
            "infer",
            "--model",
            m,
            "--input",
            "synth:4000000x4000000",
            "--output",
            s(&out),
            "--tile",
            tile,
            "--normalize",
            "none",
            "--memory-budget",
            "1GiB",
            "-q",
        ]);
        assert_eq!(o.status.code(), Some(6), "--tile {tile}: {}", stderr(&o));
        assert!(stderr(&o).contains("more than the memory budget"), "{}", stderr(&o));
        assert!(!out.exists() && files_containing(f.dir.path(), "out.npy").is_empty());
    }
}

/// A copy of the safetensors file `src` at `dst` with one weight of tensor `name` changed: the
/// same configuration and shapes, one parameter different.
fn with_one_weight_changed(src: &Path, dst: &Path, name: &str) {
    let mut bytes = std::fs::read(src).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let start = header[name]["data_offsets"][0].as_u64().expect("the tensor exists") as usize;
    let at = 8 + n + start + 4 * 5; // weight 5, an f32
    let v = f32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) + 0.25;
    bytes[at..at + 4].copy_from_slice(&v.to_le_bytes());
    std::fs::write(dst, bytes).unwrap();
}

/// `--resume` continues only the run it interrupted: another model (here one transposed-conv
/// weight apart, which the old sampled fingerprint never looked at), another image of the same
/// size under `--normalize none` (whose statistics cannot tell), or another halo is refused.
#[test]
fn resume_never_mixes_two_runs() {
    let f = Fixture::new();
    let other_model = f.path("m2.safetensors");
    with_one_weight_changed(&f.model, &other_model, "up1.up.weight");
    let out = f.path("r.npy");
    let run = |model: &Path, input: &str, extra: &[&str], env: &[(&str, &str)]| {
        Command::new(env!("CARGO_BIN_EXE_seamless"))
            .args(["infer", "--model", s(model), "--input", input, "--output", s(&out), "--tile", "64"])
            .args(["--normalize", "none", "-q"])
            .args(extra)
            .envs(env.iter().copied())
            .output()
            .unwrap()
    };
    let o = run(&f.model, "synth:300x233:4", &[], &[("SEAMLESS_TEST_ABORT_AFTER_TILES", "3")]);
    assert!(!o.status.success() && !out.exists());
    for (what, model, input, extra) in [
        ("another model", &other_model, "synth:300x233:4", &[][..]),
        ("another image of the same size", &f.model, "synth:300x233:5", &[][..]),
        ("another halo", &f.model, "synth:300x233:4", &["--halo", "32"][..]),
    ] {
        let o = run(model, input, &[&["--resume"], extra].concat(), &[]);
        assert_eq!(o.status.code(), Some(5), "{what}: {}", stderr(&o));
        assert!(stderr(&o).contains("other settings"), "{what}: {}", stderr(&o));
    }
    let o = run(&f.model, "synth:300x233:4", &["--resume"], &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    // A file input rewritten with other pixels of the same size.
    let big = f.path("big.npy");
    let synth = |seed: &str| {
        seamless(&["synth", "--width", "300", "--height", "233", "--seed", seed, "--image", s(&big), "--overwrite"])
    };
    assert!(synth("4").status.success());
    std::fs::remove_file(&out).unwrap();
    let o = run(&f.model, s(&big), &[], &[("SEAMLESS_TEST_ABORT_AFTER_TILES", "3")]);
    assert!(!o.status.success() && !out.exists());
    assert!(synth("6").status.success());
    let o = run(&f.model, s(&big), &["--resume"], &[]);
    assert_eq!(o.status.code(), Some(5), "a rewritten input file: {}", stderr(&o));
}

/// Shards of one output must be one run: a shard started with other settings stops before it
/// writes anything (it used to rewrite the array's metadata).
#[test]
fn shards_of_one_output_must_agree() {
    let f = Fixture::new();
    let out = f.path("s.zarr");
    let shard = |i: &str, tile: &str| {
        Command::new(env!("CARGO_BIN_EXE_seamless"))
            .args(["infer", "--model", s(&f.model), "--input", "synth:300x233:4", "--output", s(&out)])
            .args(["--tile", tile, "--shard", i, "-q"])
            .output()
            .unwrap()
    };
    let o = shard("0/2", "64");
    assert!(o.status.success(), "{}", stderr(&o));
    let partial = f.path("s.zarr.partial");
    let before = digest(&partial);
    let o = shard("1/2", "32");
    assert_eq!(o.status.code(), Some(5), "{}", stderr(&o));
    assert!(stderr(&o).contains("other shards of this output"), "{}", stderr(&o));
    assert_eq!(digest(&partial), before, "the refused shard wrote into the store");
    let o = shard("1/2", "64");
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(out.is_dir() && !partial.exists());
    let leftovers = files_containing(&out, "seamless-");
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

/// Tiny files whose headers claim huge images are refused from the header, before anything of
/// that size is allocated: a TIFF claiming 10^6 x 10^6 pixels, a PNG claiming 100000 x 100000, an
/// `.npy` whose shape's byte count wraps around, a Zarr store of metadata only.
#[test]
fn headers_claiming_huge_images_are_refused_before_allocating() {
    let f = Fixture::new();
    // TIFF: a real 8x8 one with its width, height and rows-per-strip tags rewritten (one strip,
    // consistent to the decoder, of 10^12 pixels in 64 bytes).
    let tif = f.path("huge.tif");
    {
        let file = std::fs::File::create(&tif).unwrap();
        let mut enc = tiff::encoder::TiffEncoder::new(file).unwrap();
        enc.write_image::<tiff::encoder::colortype::Gray8>(8, 8, &[7u8; 64]).unwrap();
    }
    let mut b = std::fs::read(&tif).unwrap();
    assert_eq!(&b[..4], b"II*\0");
    let ifd = u32::from_le_bytes(b[4..8].try_into().unwrap()) as usize;
    let n = u16::from_le_bytes(b[ifd..ifd + 2].try_into().unwrap()) as usize;
    for e in (0..n).map(|k| ifd + 2 + 12 * k) {
        let tag = u16::from_le_bytes(b[e..e + 2].try_into().unwrap());
        if tag == 256 || tag == 257 || tag == 278 {
            b[e + 2..e + 4].copy_from_slice(&4u16.to_le_bytes()); // LONG
            b[e + 4..e + 8].copy_from_slice(&1u32.to_le_bytes());
            b[e + 8..e + 12].copy_from_slice(&1_000_000u32.to_le_bytes());
        }
    }
    std::fs::write(&tif, &b).unwrap();
    assert!(b.len() < 400, "a tiny file: {} bytes", b.len());
    // PNG: a real 1x1 one with its IHDR claiming 100000 x 100000 (CRC fixed up).
    let png = f.path("huge.png");
    {
        let file = std::fs::File::create(&png).unwrap();
        let mut enc = png::Encoder::new(file, 1, 1);
        enc.set_color(png::ColorType::Grayscale);
        enc.set_depth(png::BitDepth::Eight);
        enc.write_header().unwrap().write_image_data(&[9]).unwrap();
    }
    let mut b = std::fs::read(&png).unwrap();
    b[16..20].copy_from_slice(&100_000u32.to_be_bytes());
    b[20..24].copy_from_slice(&100_000u32.to_be_bytes());
    let mut crc = flate2::Crc::new();
    crc.update(&b[12..29]);
    b[29..33].copy_from_slice(&crc.sum().to_be_bytes());
    std::fs::write(&png, &b).unwrap();
    // .npy: 2^62 x 4 bytes, which wraps to 0 in 64 bits.
    let npy = f.path("huge.npy");
    let mut b = seamless::slide::npy::header_bytes("|u1", &[1 << 62, 4]);
    b.extend_from_slice(&[0u8; 16]);
    std::fs::write(&npy, &b).unwrap();
    // Zarr: a real 64x64 store (four 32x32 chunks) whose metadata claims 10^6 x 10^6; with its
    // chunks removed it holds nothing but metadata. Missing chunks are legal (they read as the fill
    // value), so a store that keeps some is read, with a warning that says how sparse it is.
    let zarr = f.path("huge.zarr");
    let spec = seamless::slide::OutSpec {
        height: 64,
        width: 64,
        channels: 1,
        out: seamless::slide::OutType::U8,
        chunk: 32,
        pixel_size: None,
    };
    let band = seamless::Tensor::from_vec(1, 32, 64, vec![5.0; 32 * 64]);
    seamless::slide::stream::write_bands(&zarr, seamless::slide::Format::Zarr, spec, &mut |_, _| Ok(band.clone()))
        .unwrap();
    let meta_path = zarr.join("0/zarr.json");
    let mut meta: serde_json::Value = serde_json::from_slice(&std::fs::read(&meta_path).unwrap()).unwrap();
    meta["shape"] = serde_json::json!([1, 1_000_000u64, 1_000_000u64]);
    std::fs::write(&meta_path, meta.to_string()).unwrap();
    let src = seamless::slide::open_source(s(&zarr), None).unwrap();
    assert_eq!(src.shape(), (1_000_000, 1_000_000, 1));
    let w = src.warnings().join(" ");
    assert!(w.contains("only 4 of its 976562500 chunks are stored"), "{w}");
    std::fs::remove_dir_all(zarr.join("0/c")).unwrap();
    for (input, want) in [
        (&tif, "more than any TIFF compression reaches"),
        (&png, "cannot hold"),
        (&npy, "larger than any file can be"),
        (&zarr, "holds no chunk data"),
    ] {
        let out = f.path("out.npy");
        let o = seamless(&["infer", "--model", s(&f.model), "--input", s(input), "--output", s(&out), "-q"]);
        assert_eq!(o.status.code(), Some(4), "{}: {}", input.display(), stderr(&o));
        assert!(stderr(&o).contains(want), "{}: {}", input.display(), stderr(&o));
        assert!(!out.exists());
    }
    // A PNG output is held whole in memory: one too large is refused before any work.
    let out = f.path("big.png");
    let o = seamless(&["infer", "--model", s(&f.model), "--input", "synth:20000x20000", "--output", s(&out), "-q"]);
    assert_eq!(o.status.code(), Some(5), "{}", stderr(&o));
    assert!(stderr(&o).contains("write .tif or .zarr"), "{}", stderr(&o));
}

/// Absurd presets on the command line are refused by their size before anything is built.
#[test]
fn absurd_presets_are_refused_before_building() {
    for preset in ["unet-1000000000", "unet-1048576-d8"] {
        let o = seamless(&["info", preset]);
        assert_eq!(o.status.code(), Some(3), "{preset}: {}", stderr(&o));
        assert!(stderr(&o).contains("at most"), "{preset}: {}", stderr(&o));
    }
}

/// A negative number reaches the option's own check, which says what is expected (it was
/// "unexpected argument '-8'").
#[test]
fn negative_numbers_are_answered_by_the_option() {
    let f = Fixture::new();
    let o = f.infer(&f.path("out.npy"), &["--halo", "-8"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("--halo '-8': expected a number of pixels"), "{}", stderr(&o));
    let o = seamless(&["synth", "--width", "-8", "--image", s(&f.path("x.npy"))]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("invalid value '-8' for '--width"), "{}", stderr(&o));
}
