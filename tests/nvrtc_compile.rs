//! Every kernel family compiles with NVRTC to cubin for sm_80 (A100) and sm_90 (H100/H200), and
//! the cubin exports every kernel the launch wrappers call. Needs only libnvrtc, no GPU: CI
//! installs it from PyPI (`nvidia-cuda-nvrtc`). Where the build found no NVRTC (build.rs) these
//! tests are ignored, with the reason; where it did, an NVRTC that cannot be loaded fails them.

use seamless::cuda::{compile, libs, sources::FAMILIES};

fn require_nvrtc() {
    if let Err(e) = libs::require_nvrtc() {
        panic!("NVRTC cannot be used: {e}");
    }
}

#[test]
#[cfg_attr(
    no_nvrtc,
    ignore = "no NVRTC found at build time: pip install -r tools/requirements-cuda.txt, lib folder on LD_LIBRARY_PATH"
)]
fn every_kernel_compiles_for_sm80_and_sm90() {
    require_nvrtc();
    let (major, minor) = compile::nvrtc_version().unwrap();
    println!("NVRTC {major}.{minor}");
    for arch in ["sm_80", "sm_90"] {
        for family in FAMILIES {
            let t0 = std::time::Instant::now();
            let cubin = compile::compile_cubin(family, arch).unwrap_or_else(|e| panic!("{e}"));
            assert!(compile::is_elf(&cubin), "{} for {arch}: not an ELF cubin", family.name);
            for f in family.functions {
                assert!(
                    cubin.windows(f.len() + 1).any(|w| &w[..f.len()] == f.as_bytes() && w[f.len()] == 0),
                    "kernels/{}.cu for {arch}: kernel {f} missing from the cubin",
                    family.name
                );
            }
            println!(
                "{arch} {:<16} {:>7} bytes, {} kernels, {:.2} s",
                family.name,
                cubin.len(),
                family.functions.len(),
                t0.elapsed().as_secs_f64()
            );
        }
    }
}

/// With `SEAMLESS_CUDA_INCLUDE` naming a CUDA include folder (CI: `nvidia-cuda-runtime`'s), the
/// header route works too: cuda_fp16.h and mma.h compile, for kernel variants that want WMMA.
#[test]
#[cfg_attr(
    no_nvrtc,
    ignore = "no NVRTC found at build time: pip install -r tools/requirements-cuda.txt, lib folder on LD_LIBRARY_PATH"
)]
fn cuda_headers_from_the_include_path_compile() {
    require_nvrtc();
    if std::env::var_os("SEAMLESS_CUDA_INCLUDE").is_none() {
        println!("skipped: SEAMLESS_CUDA_INCLUDE is not set");
        return;
    }
    let family = seamless::cuda::sources::Family {
        name: "header_check",
        source: "#include <cuda_fp16.h>\n#include <mma.h>\n\
                 extern \"C\" __global__ void header_check(__half* p) { p[0] = __float2half(1.0f); }\n",
        functions: &["header_check"],
    };
    let cubin = compile::compile_cubin(&family, "sm_90").unwrap_or_else(|e| panic!("{e}"));
    assert!(compile::is_elf(&cubin));
}

/// A kernel that does not compile gives `Error::Nvrtc`: the message names the file and the
/// architecture and carries the compiler's log, and NVRTC's own error is kept as the source.
#[test]
#[cfg_attr(
    no_nvrtc,
    ignore = "no NVRTC found at build time: pip install -r tools/requirements-cuda.txt, lib folder on LD_LIBRARY_PATH"
)]
fn a_kernel_that_does_not_compile_keeps_nvrtcs_error() {
    require_nvrtc();
    let family = seamless::cuda::sources::Family {
        name: "broken",
        source: "extern \"C\" __global__ void broken(float* p) { p[0] = undeclared_name; }\n",
        functions: &["broken"],
    };
    let err = compile::compile_cubin(&family, "sm_90").expect_err("a broken kernel compiles");
    assert!(matches!(err, seamless::Error::Nvrtc { family: "broken", .. }), "{err:?}");
    assert_eq!(err.exit_code(), 6);
    let msg = err.to_string();
    assert!(msg.starts_with("NVRTC could not compile kernels/broken.cu for sm_90 ("), "{msg}");
    assert!(msg.contains("undeclared_name"), "the compiler's log is in the message: {msg}");
    let source = std::error::Error::source(&err).and_then(|s| s.downcast_ref::<cudarc::nvrtc::result::NvrtcError>());
    assert_eq!(
        source,
        Some(&cudarc::nvrtc::result::NvrtcError(cudarc::nvrtc::sys::nvrtcResult::NVRTC_ERROR_COMPILATION)),
        "{err:?}"
    );
}
