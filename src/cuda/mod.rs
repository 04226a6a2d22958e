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
//! - [`kernels`]: loaded modules and one launch wrapper per op.
//! - [`backend`]: [`CudaBackend`], the graph executor implementing [`crate::backend::Backend`].

pub mod backend;
pub mod compile;
pub mod device;
pub mod kernels;
pub mod libs;
pub mod sources;
pub mod storage;
pub mod weights;

pub use backend::CudaBackend;

/// Arithmetic of the CUDA backend.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
pub enum Precision {
    /// f32 storage and true f32 arithmetic (no TF32, no FMA contraction).
    #[default]
    F32,
    /// f16 storage, f32 accumulation; convolutions on tensor cores (mma.sync).
    F16,
}

impl Precision {
    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::F16 => "f16",
        }
    }
}
