//! Finding the CUDA driver (libcuda.so.1) and NVRTC (libnvrtc.so.13, .12, ...).
//!
//! cudarc opens both lazily by plain `dlopen` of fixed names and panics when neither is found, so
//! every entry point of the CUDA backend asks here first and turns a missing library into an
//! error that says what to install. `SEAMLESS_NVRTC_LIB=/path/to/libnvrtc.so.13` loads NVRTC from
//! an explicit path first; the dynamic loader then hands that same library to cudarc's later
//! `dlopen` by name, because it matches the library's soname.

use std::sync::OnceLock;

use crate::error::{Error, Result};

/// Whether each library can be loaded, with the reason when it cannot.
#[derive(Clone, Debug)]
pub struct Libraries {
    pub driver: std::result::Result<(), String>,
    pub nvrtc: std::result::Result<(), String>,
}

/// Probe once per process (loading a library is not undone, so the answer cannot change).
pub fn probe() -> &'static Libraries {
    static PROBE: OnceLock<Libraries> = OnceLock::new();
    PROBE.get_or_init(|| {
        let preload = preload_nvrtc();
        // SAFETY: these only try to dlopen the library names cudarc would use; a library's
        // initialisers are the only code that runs, as with any dynamic library.
        let driver_found = unsafe { cudarc::driver::sys::is_culib_present() };
        let nvrtc_found = preload.is_ok() && unsafe { cudarc::nvrtc::sys::is_culib_present() };
        Libraries {
            driver: if driver_found {
                Ok(())
            } else {
                Err("the CUDA driver library (libcuda.so.1) was not found: no NVIDIA driver on this machine".into())
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
    let Some(path) = std::env::var_os("SEAMLESS_NVRTC_LIB") else {
        return Ok(());
    };
    // SAFETY: loading NVRTC runs only its initialisers; the handle is leaked on purpose so the
    // library stays mapped while cudarc uses it.
    match unsafe { libloading::Library::new(&path) } {
        Ok(lib) => {
            std::mem::forget(lib);
            Ok(())
        }
        Err(e) => Err(format!("SEAMLESS_NVRTC_LIB={}: cannot load it: {e}", path.to_string_lossy())),
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
