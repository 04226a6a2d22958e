//! Opening a GPU and describing it (for `seamless doctor`, logs and the kernel architecture).

use std::sync::Arc;

use cudarc::driver::{CudaContext, sys as cu};

use super::{driver_err, libs};
use crate::error::{Error, Result};

/// The installed driver's CUDA version, e.g. (13, 0) for driver 580.
pub fn driver_version() -> Result<(i32, i32)> {
    libs::probe().driver.clone().map_err(Error::Backend)?;
    let mut v = 0;
    // SAFETY: libcuda is loadable (checked above); `v` is valid for the call, and
    // cuDriverGetVersion needs no prior cuInit.
    unsafe { cu::cuDriverGetVersion(&mut v) }.result().map_err(driver_err("cuDriverGetVersion"))?;
    Ok((v / 1000, (v % 1000) / 10))
}

/// How many CUDA devices the driver sees.
pub fn device_count() -> Result<usize> {
    libs::probe().driver.clone().map_err(Error::Backend)?;
    let n = CudaContext::device_count().map_err(driver_err("counting devices"))?;
    Ok(n.max(0) as usize)
}

#[derive(Clone, Debug)]
pub struct DeviceInfo {
    pub ordinal: usize,
    pub name: String,
    pub compute_capability: (i32, i32),
    pub free_bytes: usize,
    pub total_bytes: usize,
}

impl DeviceInfo {
    /// The NVRTC architecture to compile for, e.g. "sm_90".
    pub fn arch(&self) -> String {
        format!("sm_{}{}", self.compute_capability.0, self.compute_capability.1)
    }
}

/// A context on device `ordinal` (the device's primary context) and what the device is.
pub fn open(ordinal: usize) -> Result<(Arc<CudaContext>, DeviceInfo)> {
    libs::require_cuda()?;
    let count = device_count()?;
    if ordinal >= count {
        return Err(Error::Backend(if count == 0 {
            "the CUDA driver is installed but sees no GPU".into()
        } else {
            format!("--device {ordinal}: this machine has {count} CUDA device(s), numbered from 0")
        }));
    }
    let ctx = CudaContext::new(ordinal).map_err(driver_err("creating a context"))?;
    let (free_bytes, total_bytes) = ctx.mem_get_info().map_err(driver_err("querying memory"))?;
    let info = DeviceInfo {
        ordinal,
        name: ctx.name().map_err(driver_err("device name"))?,
        compute_capability: ctx.compute_capability().map_err(driver_err("compute capability"))?,
        free_bytes,
        total_bytes,
    };
    if info.compute_capability.0 < 8 {
        return Err(Error::Backend(format!(
            "{} has compute capability {}.{}; the f16 kernels need tensor-core mma.sync m16n8k16 (8.0 or newer)",
            info.name, info.compute_capability.0, info.compute_capability.1
        )));
    }
    Ok((ctx, info))
}
