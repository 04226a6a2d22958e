//! seamless: exact tile-based segmentation inference for images larger than device memory.
//!
//! The data path: a [`slide::Source`] reads the image a window at a time (or [`image_io`] reads a
//! small one whole), [`normalize`] computes statistics over the whole image, and the image, padded
//! to a multiple of the alignment A, is cut into the [`tile_grid`] that the model's
//! [`receptive_field`] allows (by default with the tile the memory [`planner`] picks for the budget:
//! the smallest that fits with compute within a few percent of the least). Each window runs
//! through the [`graph`] on a [`backend::Backend`] — the CPU ([`cpu`]) or a GPU ([`cuda`]) — and
//! a [`slide::Sink`] writes each tile's interior, which equals the
//! whole-image result bit for bit. [`slide::stream`] runs this for images of any size, reading,
//! computing and writing on three threads; [`pipeline`] runs it for an image held in memory. The
//! method, the exactness contract and a map of these modules: `docs/design.md`.

pub mod backend;
pub mod capi;
pub mod cpu;
pub mod cuda;
pub mod embed;
pub mod erf;
pub mod error;
pub mod graph;
pub mod huge_pages;
pub mod image_io;
pub mod model;
pub mod normalize;
pub mod numerics;
pub mod out_of_memory;
pub mod output;
pub mod pipeline;
pub mod planner;
pub mod plot;
pub mod profile;
pub mod receptive_field;
pub mod slide;
pub mod sweep;
pub mod synth;
pub mod tensor;
pub mod tile_grid;

pub use error::{Error, Result};
pub use model::Model;
pub use tensor::Tensor;
