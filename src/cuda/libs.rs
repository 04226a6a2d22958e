//! Finding the CUDA driver (libcuda.so.1) and NVRTC (libnvrtc.so.13, .12, ...).
//!
//! cudarc opens both lazily by plain `dlopen` of fixed names and panics when neither is found, so
//! every entry point of the CUDA backend asks here first and turns a missing library into an
//! error that says what to install. `SEAMLESS_NVRTC_LIB=/path/to/libnvrtc.so.13` loads NVRTC from
//! an explicit path first; the dynamic loader then hands that same library to cudarc's later
//! `dlopen` by name, because it matches the library's soname.
//!
//! The driver can be chosen the same way: `SEAMLESS_CUDA_DRIVER=/path/to/lib.so` (or
//! [`use_driver_library`], for a process that decides after it started) loads that library first.
//! This is how the emulated device (`cuda_emulator/`, soname `libcuda.so`, the first name cudarc
//! tries) replaces the real driver, on a machine with or without a GPU.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::error::{Error, Result};

/// Whether each library can be loaded, with the reason when it cannot.
#[derive(Clone, Debug)]
pub struct Libraries {
    pub driver: std::result::Result<(), String>,
    pub nvrtc: std::result::Result<(), String>,
}

static CHOSEN_DRIVER: OnceLock<PathBuf> = OnceLock::new();
static PROBED: AtomicBool = AtomicBool::new(false);

/// Use the driver library at `path` (the emulated device, say) instead of the system's libcuda.
/// Must be called before anything in this process has touched CUDA.
pub fn use_driver_library(path: &Path) -> Result<()> {
    if PROBED.load(Ordering::SeqCst) {
        return Err(Error::Backend("use_driver_library: the CUDA libraries were already probed".into()));
    }
    if CHOSEN_DRIVER.set(path.to_path_buf()).is_err() && CHOSEN_DRIVER.get().map(PathBuf::as_path) != Some(path) {
        return Err(Error::Backend("use_driver_library: another driver library was already chosen".into()));
    }
    Ok(())
}

/// The driver library chosen by path ([`use_driver_library`] or `$SEAMLESS_CUDA_DRIVER`), if any.
pub fn driver_library() -> Option<PathBuf> {
    CHOSEN_DRIVER
        .get()
        .cloned()
        .or_else(|| std::env::var_os("SEAMLESS_CUDA_DRIVER").filter(|v| !v.is_empty()).map(PathBuf::from))
}

/// Probe once per process (loading a library is not undone, so the answer cannot change).
pub fn probe() -> &'static Libraries {
    static PROBE: OnceLock<Libraries> = OnceLock::new();
    PROBE.get_or_init(|| {
        PROBED.store(true, Ordering::SeqCst);
        let chosen = preload_driver();
        let preload = preload_nvrtc();
        // SAFETY: these only try to dlopen the library names cudarc would use; a library's
        // initialisers are the only code that runs, as with any dynamic library.
        let driver_found = chosen.is_ok() && unsafe { cudarc::driver::sys::is_culib_present() };
        let nvrtc_found = preload.is_ok() && unsafe { cudarc::nvrtc::sys::is_culib_present() };
        Libraries {
            driver: match chosen {
                Err(e) => Err(e),
                Ok(()) if driver_found => Ok(()),
                Ok(()) => {
                    Err("the CUDA driver library (libcuda.so.1) was not found: no NVIDIA driver on this machine".into())
                }
            },
            nvrtc: match preload {
                Err(e) => Err(e),
                Ok(()) if nvrtc_found => Ok(()),
                Ok(()) => Err("NVRTC (libnvrtc.so.13 or .12) was not found: install the CUDA toolkit or \
                               `pip install nvidia-cuda-nvrtc` and put its lib folder on LD_LIBRARY_PATH, \
                               or set SEAMLESS_NVRTC_LIB to the library's path"
                    .into()),
            },
        }
    })
}

/// Load `$SEAMLESS_NVRTC_LIB` (when set) and keep it loaded for the life of the process.
fn preload_nvrtc() -> std::result::Result<(), String> {
    match std::env::var_os("SEAMLESS_NVRTC_LIB") {
        Some(path) => preload("SEAMLESS_NVRTC_LIB", Path::new(&path)),
        None => Ok(()),
    }
}

/// Load the chosen driver library (when one is chosen) and keep it loaded.
fn preload_driver() -> std::result::Result<(), String> {
    match driver_library() {
        Some(path) => preload("SEAMLESS_CUDA_DRIVER", &path),
        None => Ok(()),
    }
}

fn preload(what: &str, path: &Path) -> std::result::Result<(), String> {
    // SAFETY: loading a library runs only its initialisers; the handle is leaked on purpose so
    // the library stays mapped while cudarc uses it.
    match unsafe { libloading::Library::new(path) } {
        Ok(lib) => {
            std::mem::forget(lib);
            Ok(())
        }
        Err(e) => Err(format!("{what}={}: cannot load it: {e}", path.display())),
    }
}

/// Ok when NVRTC can be used (enough to compile kernels).
pub fn require_nvrtc() -> Result<()> {
    probe().nvrtc.clone().map_err(Error::Backend)
}

/// Ok when both the driver and NVRTC can be used (enough to run kernels, given a device).
pub fn require_cuda() -> Result<()> {
    probe().driver.clone().map_err(Error::Backend)?;
    require_nvrtc()
}
