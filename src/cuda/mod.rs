//! The CUDA backend: hand-written kernels (`kernels/<family>.cu`) compiled at run time by NVRTC
//! and launched through cudarc's driver API, f32 and f16, with the same op set and the same
//! exactness contract as the CPU backend (every output element is accumulated in an order fixed by
//! the layer, never by the tile).
//!
//! Everything is loaded dynamically: the crate builds and its CPU path runs on machines with no
//! CUDA. Nothing here calls into cudarc before [`libs`] has checked that the library is loadable,
//! because cudarc panics on a missing library.
//!
//! - [`libs`]: finding libcuda and libnvrtc (and why not).
//! - [`sources`]: the kernel sources, one family per file, and the functions each must export.
//! - [`compile`]: NVRTC options, compilation to cubin, the on-disk kernel cache.
//! - [`device`]: opening a device and describing it.
//! - [`weights`]: layer parameters in the layouts the kernels read (f16 mma fragments).
//! - [`conv_variants`]: the f16 conv kernels' shapes; [`autotune`]: one of them per layer.
//! - [`kernels`]: loaded modules, and one parameter struct per op launched through one checked path.
//! - [`memory`]: the executor's memory as the planner counts it (no device needed).
//! - [`executor`]: the arena, the staging buffers and the three streams one forward pass runs on.
//! - [`backend`]: [`CudaBackend`], the graph executor implementing [`crate::backend::Backend`].

pub mod autotune;
pub mod backend;
pub mod compile;
pub mod conv_variants;
pub mod device;
pub mod executor;
pub mod kernels;
pub mod libs;
pub mod memory;
pub mod ops;
pub mod sources;
pub mod storage;
pub mod weights;

pub use autotune::TuneMode;
pub use backend::CudaBackend;
pub use executor::{DeviceBytes, NodeTimer};
pub use memory::DeviceMemory;

/// Arithmetic of the CUDA backend (the planner's precision: element sizes follow from it).
pub use crate::planner::Precision;

/// The error for a driver call that failed while doing `what`, keeping the driver's error as its
/// source. A `&'static str` becomes a `String` only on failure: most calls are on the per-tile path.
pub(crate) fn driver_err(what: impl Into<String>) -> impl FnOnce(cudarc::driver::DriverError) -> crate::Error {
    move |source| crate::Error::Cuda { context: what.into(), source }
}
