//! How the command line picks a backend: `--backend auto` falls back to the CPU with one line
//! saying why, an explicit `--backend cuda` that cannot start exits with code 6, and f16 is refused
//! on the CPU. Which branch runs depends on whether this machine has a usable GPU.

use std::process::{Command, Output};

use seamless::cuda::{CudaBackend, Precision};

fn seamless(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_seamless")).args(args).output().expect("runs")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn gpu_usable() -> bool {
    CudaBackend::new(0, Precision::F32).is_ok()
}

/// A tiny random model and image in a temporary folder.
fn fixture() -> (tempfile::TempDir, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let m = dir.path().join("m.safetensors").to_str().unwrap().to_string();
    let img = dir.path().join("img.npy").to_str().unwrap().to_string();
    let cfg = r#"{"in_channels":1,"classes":2,"base_filters":4,"depth":1}"#;
    assert!(seamless(&["random-model", "--arch", "unet", "--config", cfg, "--out", &m]).status.success());
    assert!(seamless(&["synth", "--width", "40", "--height", "30", "--image", &img]).status.success());
    (dir, m, img)
}

#[test]
fn backend_choice_and_messages() {
    let (dir, m, img) = fixture();
    let out = dir.path().join("out.npy");
    let out = out.to_str().unwrap();
    let run = |backend: &str, precision: &str| {
        seamless(&[
            "infer",
            "--model",
            &m,
            "--input",
            &img,
            "--output",
            out,
            "--backend",
            backend,
            "--precision",
            precision,
        ])
    };
    let auto = run("auto", "f32");
    assert!(auto.status.success(), "{}", stderr(&auto));
    let lines: Vec<String> = stderr(&auto).lines().filter(|l| l.starts_with("backend:")).map(String::from).collect();
    assert_eq!(lines.len(), 1, "exactly one line names the backend: {lines:?}");
    let cuda = run("cuda", "f32");
    if gpu_usable() {
        assert!(lines[0].starts_with("backend: cuda:"), "{lines:?}");
        assert!(cuda.status.success(), "{}", stderr(&cuda));
    } else {
        assert!(lines[0].starts_with("backend: cpu") && lines[0].contains("CUDA not used:"), "{lines:?}");
        assert_eq!(cuda.status.code(), Some(6), "{}", stderr(&cuda));
        assert!(stderr(&cuda).contains("error: backend:"), "{}", stderr(&cuda));
    }
    let f16_on_cpu = run("cpu", "f16");
    assert_eq!(f16_on_cpu.status.code(), Some(2), "{}", stderr(&f16_on_cpu));
    assert!(stderr(&f16_on_cpu).contains("CUDA backend"), "{}", stderr(&f16_on_cpu));
}

#[test]
fn doctor_reports_what_is_missing() {
    let o = seamless(&["doctor"]);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("driver") && text.contains("nvrtc"), "{text}");
    if gpu_usable() {
        assert!(o.status.success(), "{text}\n{}", stderr(&o));
    } else {
        assert_eq!(o.status.code(), Some(6), "{text}\n{}", stderr(&o));
        assert!(stderr(&o).contains("no usable GPU") || stderr(&o).contains("error: backend"), "{}", stderr(&o));
    }
}
