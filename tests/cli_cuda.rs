//! The command line on CUDA, end to end: `seamless infer --backend cuda` (whole == tiled byte for
//! byte at f32 and f16, f32 labels equal to the CPU's), `seamless doctor` (exit 0 on a working
//! device, non-zero when the device computes wrong results), and how `--backend` is chosen when
//! there is no CUDA at all (`auto` falls back to the CPU with one line saying why, an explicit
//! `cuda` exits with code 6, f16 is refused on the CPU).
//!
//! The device is the one the other CUDA tests use (tests/common/emulator.rs): the emulated device on
//! a machine without a GPU, passed to each child process through SEAMLESS_CUDA_DRIVER.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::emulator;

/// `seamless` with the test device's environment (`cuda`), or with no CUDA driver at all.
fn seamless_with(cuda: bool, args: &[&str], extra_env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_seamless"));
    cmd.args(args);
    if cuda {
        cmd.envs(emulator::cuda_env());
    } else {
        cmd.env_remove("SEAMLESS_CUDA_DRIVER");
    }
    cmd.envs(extra_env.iter().copied());
    cmd.output().expect("runs")
}

fn seamless(args: &[&str]) -> Output {
    seamless_with(true, args, &[])
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A small random U-Net and a 150x97 image in a temporary folder.
fn fixture() -> (tempfile::TempDir, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let m = s(&dir.path().join("m.safetensors")).to_string();
    let img = s(&dir.path().join("img.npy")).to_string();
    let cfg = r#"{"in_channels":1,"classes":3,"base_filters":8,"depth":2}"#;
    assert!(
        seamless(&["random-model", "--arch", "unet", "--config", cfg, "--seed", "5", "--out", &m]).status.success()
    );
    assert!(seamless(&["synth", "--width", "150", "--height", "97", "--seed", "4", "--image", &img]).status.success());
    (dir, m, img)
}

fn infer(m: &str, img: &str, out: &str, rest: &[&str]) -> Output {
    let mut args = vec!["infer", "--model", m, "--input", img, "--output", out, "--quiet"];
    args.extend_from_slice(rest);
    seamless(&args)
}

#[test]
#[cfg_attr(no_cuda_device, ignore = "no GPU, and no emulated one: needs NVRTC and a C++ compiler (build.rs)")]
fn infer_on_cuda_whole_equals_tiled_and_f32_equals_the_cpu() {
    let (dir, m, img) = fixture();
    let out = |name: &str| s(&dir.path().join(name)).to_string();
    let read = |p: &str| std::fs::read(p).unwrap_or_else(|e| panic!("{p}: {e}"));
    // f16 probabilities cover f16 labels (the same kernels, plus argmax, which f32 checks).
    for (precision, kinds) in [("f32", &["labels", "probs"][..]), ("f16", &["probs"][..])] {
        for &kind in kinds {
            let (whole, tiled) =
                (out(&format!("whole-{precision}-{kind}.npy")), out(&format!("tiled-{precision}-{kind}.npy")));
            let common = ["--backend", "cuda", "--precision", precision, "--output-kind", kind];
            let o = infer(&m, &img, &whole, &[&common[..], &["--whole"]].concat());
            assert!(o.status.success(), "{precision} {kind} whole: {}", stderr(&o));
            let o = infer(&m, &img, &tiled, &[&common[..], &["--tile", "64x48"]].concat());
            assert!(o.status.success(), "{precision} {kind} tiled: {}", stderr(&o));
            assert!(read(&whole) == read(&tiled), "{precision} {kind}: tiled output differs from the whole-image run");
        }
    }
    let cpu = out("cpu-labels.npy");
    let o = infer(&m, &img, &cpu, &["--backend", "cpu", "--whole", "--output-kind", "labels"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(read(&cpu) == read(&out("whole-f32-labels.npy")), "CUDA f32 labels differ from the CPU's");
}

#[test]
#[cfg_attr(no_cuda_device, ignore = "no GPU, and no emulated one: needs NVRTC and a C++ compiler (build.rs)")]
fn doctor_passes_on_a_working_device_and_fails_on_a_wrong_one() {
    let o = seamless(&["doctor"]);
    let text = stdout(&o);
    assert!(o.status.success(), "{text}\n{}", stderr(&o));
    assert!(text.contains("ok: --backend cuda can run on device 0"), "{text}");
    assert_eq!(text.matches("smoke test").count(), 2, "f32 and f16 smoke tests: {text}");
    if emulator::emulated() {
        assert!(text.contains("seamless CUDA emulator"), "{text}");
        // A device whose tensor cores give wrong results: the f16 smoke test must catch it.
        let bad = seamless_with(true, &["doctor"], &[("SEAMLESS_EMU_FAULT", "mma")]);
        assert_eq!(bad.status.code(), Some(6), "{}\n{}", stdout(&bad), stderr(&bad));
        assert!(stderr(&bad).contains("f16 result differs from the CPU"), "{}", stderr(&bad));
    }
}

/// Without any CUDA driver (only meaningful where the machine has no GPU).
#[test]
fn without_cuda_auto_falls_back_and_explicit_cuda_fails() {
    if !emulator::emulated() {
        println!("this machine has a GPU: the no-driver branch cannot be exercised here");
        return;
    }
    let (dir, m, img) = fixture();
    let out = s(&dir.path().join("out.npy")).to_string();
    let run = |backend: &str, precision: &str| {
        seamless_with(
            false,
            &[
                "infer",
                "--model",
                &m,
                "--input",
                &img,
                "--output",
                &out,
                "--backend",
                backend,
                "--precision",
                precision,
                "--overwrite",
            ],
            &[],
        )
    };
    let auto = run("auto", "f32");
    assert!(auto.status.success(), "{}", stderr(&auto));
    let lines: Vec<String> = stderr(&auto).lines().filter(|l| l.starts_with("backend:")).map(String::from).collect();
    assert_eq!(lines.len(), 1, "exactly one line names the backend: {lines:?}");
    assert!(lines[0].starts_with("backend: cpu") && lines[0].contains("CUDA not used:"), "{lines:?}");
    let cuda = run("cuda", "f32");
    assert_eq!(cuda.status.code(), Some(6), "{}", stderr(&cuda));
    assert!(stderr(&cuda).contains("error: backend:"), "{}", stderr(&cuda));
    let f16_on_cpu = run("cpu", "f16");
    assert_eq!(f16_on_cpu.status.code(), Some(2), "{}", stderr(&f16_on_cpu));
    assert!(stderr(&f16_on_cpu).contains("CUDA backend"), "{}", stderr(&f16_on_cpu));
    let doctor = seamless_with(false, &["doctor"], &[]);
    let text = stdout(&doctor);
    assert!(text.contains("driver") && text.contains("nvrtc"), "{text}");
    // The CPU's side too: its engines, and what became of its AMX tiles.
    assert!(text.contains(&format!("cpu tiles       {}", seamless::cpu::amx::status())), "{text}");
    assert_eq!(doctor.status.code(), Some(6), "{text}\n{}", stderr(&doctor));
    assert!(stderr(&doctor).contains("no usable GPU"), "{}", stderr(&doctor));
}

#[test]
#[cfg_attr(no_cuda_device, ignore = "no GPU, and no emulated one: needs NVRTC and a C++ compiler (build.rs)")]
fn auto_picks_the_device_and_says_so() {
    let (dir, m, img) = fixture();
    let out = s(&dir.path().join("out.npy")).to_string();
    let o = seamless(&["infer", "--model", &m, "--input", &img, "--output", &out]);
    assert!(o.status.success(), "{}", stderr(&o));
    let lines: Vec<String> = stderr(&o).lines().filter(|l| l.starts_with("backend:")).map(String::from).collect();
    assert_eq!(lines.len(), 1, "exactly one line names the backend: {lines:?}");
    assert!(lines[0].starts_with("backend: cuda:"), "{lines:?}");
}
