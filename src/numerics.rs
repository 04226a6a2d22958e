//! Which bits this build computes. Within one build every backend's output is fixed by the model,
//! the image and the settings (tiles equal the whole image; the CPU's engines agree bit for bit
//! within each precision and summation order, and the backend's name says which it is). Between
//! builds it is fixed only until a change moves some output bit: a kernel that sums in another
//! order, a new engine's rounding, another Winograd transform. [`REVISION`] counts such changes,
//! so that a run continued by another build (`--resume`) or split over several (`--shard`) is
//! refused when the two would compute other bits: one output never mixes them.

/// The numerics revision of this build, recorded in every journal and shard record.
///
/// Bump it with every change that moves any output bit of any backend at any precision, and pin
/// the new bits in `tests/numerics.rs`, which fails until both are done: it holds the digests of
/// the CPU's outputs at f32 and bf16 (both summation orders) for both model families, and of the
/// CUDA kernels' sources.
pub const REVISION: u32 = 1;
