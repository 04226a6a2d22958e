//! Compiling the kernel families with NVRTC, and the on-disk cache of what it produced.
//!
//! Kernels are compiled to cubin for the exact GPU architecture (`sm_90` on an H100): a cubin
//! needs no JIT at load time, and unlike PTX from a newer NVRTC it loads on a driver of the same
//! major version that is older than the compiler. The options are decided here, not by the
//! caller: `--fmad=false` keeps f32 arithmetic free of implicit multiply-add contraction (fused
//! multiply-adds appear only where a kernel writes `__fmaf_rn`, as its CPU twin uses FMA: the twins'
//! rounding), and nothing enables fast math or TF32.
//!
//! Cache: `$SEAMLESS_KERNEL_CACHE` (`off` disables it), else `$XDG_CACHE_HOME/seamless`, else
//! `~/.cache/seamless`; one file per family named by a hash of the source, architecture, options
//! and NVRTC version, so any change to one of them compiles afresh.

use std::ffi::{CStr, CString};
use std::path::{Path, PathBuf};

use cudarc::nvrtc::{result as nvrtc, sys as nvrtc_sys};

use super::libs;
use super::sources::Family;
use crate::error::{Error, Result};

/// The NVRTC options for `arch` (e.g. "sm_90"). Headers are not needed; an include folder (e.g.
/// `nvidia-cuda-runtime`'s) is passed when `$SEAMLESS_CUDA_INCLUDE` names one, for variants that
/// want cuda_fp16.h or mma.h.
pub fn options(arch: &str) -> Vec<String> {
    let mut o = vec![format!("--gpu-architecture={arch}"), "--fmad=false".into(), "--std=c++17".into()];
    if let Some(dir) = std::env::var_os("SEAMLESS_CUDA_INCLUDE") {
        o.push(format!("--include-path={}", dir.to_string_lossy()));
    }
    o
}

/// NVRTC's (major, minor) version.
pub fn nvrtc_version() -> Result<(i32, i32)> {
    libs::require_nvrtc()?;
    let (mut major, mut minor) = (0, 0);
    // SAFETY: NVRTC is loadable (checked above); both pointers are valid for the call.
    unsafe { nvrtc_sys::nvrtcVersion(&mut major, &mut minor) }
        .result()
        .map_err(|source| Error::NvrtcCall { call: "nvrtcVersion", source })?;
    Ok((major, minor))
}

/// Compile one family to a cubin for `arch`, without the cache.
pub fn compile_cubin(family: &Family, arch: &str) -> Result<Vec<u8>> {
    libs::require_nvrtc()?;
    let fail = |what: String, log: String| {
        move |source| Error::Nvrtc { family: family.name, arch: arch.to_string(), what, log, source }
    };
    let src = CString::new(family.full_source()).expect("kernel sources contain no NUL");
    let name = CString::new(format!("{}.cu", family.name)).expect("no NUL");
    let prog = nvrtc::create_program(&src, Some(&name)).map_err(fail("creating the program".into(), String::new()))?;
    let opts = options(arch);
    // SAFETY (this block): `prog` was just created from `src` and `name`, which outlive it, and is
    // destroyed exactly once below, after the last call that uses it.
    let result = unsafe {
        match nvrtc::compile_program(prog, &opts) {
            Err(e) => Err(fail(format!("options {opts:?}"), program_log(prog))(e)),
            Ok(()) => {
                let mut size = 0usize;
                match nvrtc_sys::nvrtcGetCUBINSize(prog, &mut size).result() {
                    Err(e) => Err(fail("no cubin".into(), String::new())(e)),
                    Ok(()) => {
                        let mut cubin = vec![0u8; size];
                        nvrtc_sys::nvrtcGetCUBIN(prog, cubin.as_mut_ptr().cast())
                            .result()
                            .map(|()| cubin)
                            .map_err(fail("getting the cubin".into(), String::new()))
                    }
                }
            }
        }
    };
    // SAFETY: see above; `prog` is not used after this.
    let _ = unsafe { nvrtc::destroy_program(prog) };
    result
}

/// # Safety
/// `prog` must be a live NVRTC program.
unsafe fn program_log(prog: nvrtc_sys::nvrtcProgram) -> String {
    match unsafe { nvrtc::get_program_log(prog) } {
        // SAFETY: NVRTC returns a NUL-terminated log.
        Ok(log) => unsafe { CStr::from_ptr(log.as_ptr()) }.to_string_lossy().into_owned(),
        Err(e) => format!("(no log: {e:?})"),
    }
}

/// Where compiled kernels are kept, or None when caching is off or no folder can be named.
pub fn cache_dir() -> Option<PathBuf> {
    match std::env::var_os("SEAMLESS_KERNEL_CACHE") {
        Some(v) if v == "off" || v.is_empty() => None,
        Some(v) => Some(PathBuf::from(v)),
        None => std::env::var_os("XDG_CACHE_HOME")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
            .map(|d| d.join("seamless")),
    }
}

/// A cache file's key: 16 hex digits of the BLAKE3 hash of `parts`. BLAKE3 because the key must
/// not change between Rust versions or platforms (std's hasher may); each part goes in after its
/// length, so moving bytes from one part to the next changes the key; 64 bits, because a cache
/// folder holds a few dozen files, not billions.
pub(crate) fn cache_key(parts: &[&[u8]]) -> String {
    let mut h = blake3::Hasher::new();
    for part in parts {
        h.update(&(part.len() as u64).to_le_bytes());
        h.update(part);
    }
    h.finalize().to_hex()[..16].to_string()
}

/// The cache file name for a family compiled with `options` for `arch` by NVRTC `nvrtc`.
pub fn cache_file_name(family: &Family, arch: &str, options: &[String], nvrtc: (i32, i32)) -> String {
    let version = format!("{}.{}", nvrtc.0, nvrtc.1);
    let opts = options.join(" ");
    let key = cache_key(&[family.full_source().as_bytes(), arch.as_bytes(), opts.as_bytes(), version.as_bytes()]);
    format!("{}-{arch}-{key}.cubin", family.name)
}

/// A compiled family and whether it came from the cache.
pub struct Compiled {
    pub cubin: Vec<u8>,
    pub cached: bool,
}

/// The cubin for `family` on `arch`: from the cache when present, else compiled and stored. A cache
/// that cannot be written only costs a recompilation next time.
pub fn load_or_compile(family: &Family, arch: &str) -> Result<Compiled> {
    let dir = cache_dir();
    let path = match &dir {
        Some(d) => Some(d.join(cache_file_name(family, arch, &options(arch), nvrtc_version()?))),
        None => None,
    };
    if let Some(p) = &path
        && let Ok(cubin) = std::fs::read(p)
        && is_elf(&cubin)
    {
        return Ok(Compiled { cubin, cached: true });
    }
    let cubin = compile_cubin(family, arch)?;
    if let Some(p) = &path {
        let _ = store(p, &cubin);
    }
    Ok(Compiled { cubin, cached: false })
}

/// Write through a temporary file and a rename, so a concurrent reader never sees half a file.
pub(crate) fn store(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d)?;
    }
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

/// A cubin is an ELF file.
pub fn is_elf(bytes: &[u8]) -> bool {
    bytes.starts_with(b"\x7fELF")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cuda::sources::FAMILIES;

    #[test]
    fn cache_names_change_with_arch_options_and_version() {
        let f = &FAMILIES[0];
        let o = options("sm_90");
        let a = cache_file_name(f, "sm_90", &o, (13, 0));
        assert!(a.starts_with("conv-sm_90-") && a.ends_with(".cubin"), "{a}");
        assert_eq!(a, cache_file_name(f, "sm_90", &o, (13, 0)), "stable");
        assert_ne!(a, cache_file_name(f, "sm_80", &o, (13, 0)));
        assert_ne!(a, cache_file_name(f, "sm_90", &o, (13, 5)));
        assert_ne!(a, cache_file_name(f, "sm_90", &[o.join(" "), "--ftz=true".into()], (13, 0)));
        assert_ne!(a, cache_file_name(&FAMILIES[1], "sm_90", &o, (13, 0)));
    }

    #[test]
    fn cache_keys_keep_parts_apart() {
        let k = cache_key(&[b"sm_9", b"0--fmad=false"]);
        assert_eq!(k.len(), 16, "{k}");
        assert_ne!(k, cache_key(&[b"sm_90", b"--fmad=false"]));
        assert_ne!(cache_key(&[b"", b"x"]), cache_key(&[b"x", b""]));
    }

    #[test]
    fn options_never_contract_or_use_fast_math() {
        let o = options("sm_80");
        assert!(o.contains(&"--fmad=false".to_string()), "{o:?}");
        assert!(o.contains(&"--gpu-architecture=sm_80".to_string()));
        assert!(!o.iter().any(|s| s.contains("fast-math") || s.contains("fmad=true")));
    }
}
