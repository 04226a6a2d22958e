//! Decides, at build time, whether this machine can run the CUDA tests at all: on a GPU (an NVIDIA
//! driver node), or on the emulated device (cuda_emulator/), which needs NVRTC for the cubins and a
//! C++ compiler for the host build of the kernels. When neither is possible, the CUDA tests are
//! compiled as ignored, with the reason, so a summary never counts them as passed.

use std::path::Path;
use std::process::Command;

fn nvrtc_present() -> bool {
    if let Some(p) = std::env::var_os("SEAMLESS_NVRTC_LIB") {
        return Path::new(&p).exists();
    }
    let mut dirs: Vec<String> = std::env::var("LD_LIBRARY_PATH")
        .unwrap_or_default()
        .split(':')
        .filter(|d| !d.is_empty())
        .map(String::from)
        .collect();
    dirs.extend(["/usr/local/cuda/lib64", "/usr/lib/x86_64-linux-gnu", "/usr/lib64", "/usr/lib"].map(String::from));
    dirs.iter().any(|d| ["libnvrtc.so.13", "libnvrtc.so.12"].iter().any(|n| Path::new(d).join(n).exists()))
}

fn cxx_present() -> bool {
    let cxx = std::env::var("CXX").ok().filter(|c| !c.is_empty()).unwrap_or_else(|| "c++".into());
    Command::new(cxx).arg("--version").output().is_ok_and(|o| o.status.success())
}

/// `git rev-parse --short HEAD` of the checkout being built, for `--summary` and `--version`
/// ("unknown" outside a git checkout, as in a packaged crate). The build script runs again when
/// HEAD or the branch it names moves.
fn git_commit() -> String {
    let git = |args: &[&str]| -> Option<String> {
        let out = Command::new("git").args(args).output().ok().filter(|o| o.status.success())?;
        Some(String::from_utf8(out.stdout).ok()?.trim().to_string()).filter(|s| !s.is_empty())
    };
    if !Path::new(".git").exists() {
        return "unknown".into();
    }
    let mut watch = vec!["HEAD".to_string(), "packed-refs".to_string()];
    watch.extend(git(&["symbolic-ref", "-q", "HEAD"]));
    for name in watch {
        if let Some(path) = git(&["rev-parse", "--git-path", &name])
            && Path::new(&path).exists()
        {
            println!("cargo::rerun-if-changed={path}");
        }
    }
    git(&["rev-parse", "--short", "HEAD"]).unwrap_or_else(|| "unknown".into())
}

fn main() {
    println!("cargo::rustc-env=SEAMLESS_GIT_COMMIT={}", git_commit());
    println!("cargo::rustc-check-cfg=cfg(no_cuda_device)");
    println!("cargo::rustc-check-cfg=cfg(no_nvrtc)");
    println!("cargo::rustc-check-cfg=cfg(real_gpu)");
    for var in ["SEAMLESS_NVRTC_LIB", "LD_LIBRARY_PATH", "CXX", "SEAMLESS_TEST_CUDA", "SEAMLESS_REQUIRE_NVRTC"] {
        println!("cargo::rerun-if-env-changed={var}");
    }
    println!("cargo::rerun-if-changed=build.rs");
    let nvrtc = nvrtc_present();
    if !nvrtc {
        println!("cargo::rustc-cfg=no_nvrtc");
    }
    let gpu = Path::new("/dev/nvidiactl").exists() || std::env::var("SEAMLESS_TEST_CUDA").is_ok_and(|v| v == "real");
    if gpu {
        println!("cargo::rustc-cfg=real_gpu"); // the tests of the emulator itself do not apply
    }
    let device = gpu || (nvrtc && cxx_present());
    // CI sets this: there, CUDA tests that cannot run are a failure of the setup, not a skip.
    if std::env::var("SEAMLESS_REQUIRE_NVRTC").is_ok_and(|v| v == "1") && !(nvrtc && device) {
        panic!(
            "SEAMLESS_REQUIRE_NVRTC=1, but NVRTC (libnvrtc.so.13 on LD_LIBRARY_PATH or SEAMLESS_NVRTC_LIB) {}",
            if nvrtc {
                "is here and neither a GPU nor a C++ compiler for the emulated device is"
            } else {
                "was not found"
            }
        );
    }
    if !device {
        println!("cargo::rustc-cfg=no_cuda_device");
        println!(
            "cargo::warning=no GPU and no emulated CUDA device (it needs NVRTC on LD_LIBRARY_PATH, \
             `pip install -r tools/requirements-cuda.txt`, and a C++ compiler): the CUDA tests are ignored"
        );
    }
}
