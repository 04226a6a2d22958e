//! seamless: exact tile-based segmentation inference for images larger than device memory.
//!
//! The data path: [`image_io`] reads an image, [`normalize`] applies global statistics,
//! [`pipeline`] pads it, cuts it into the [`tile_grid`] the model's [`receptive_field`] allows,
//! runs each window through the [`graph`] on a backend ([`cpu`]) and stitches the tiles' interiors,
//! which equal the whole-image result bit for bit.

pub mod backend;
pub mod cpu;
pub mod cuda;
pub mod erf;
pub mod error;
pub mod graph;
pub mod image_io;
pub mod model;
pub mod normalize;
pub mod out_of_memory;
pub mod output;
pub mod pipeline;
pub mod planner;
pub mod plot;
pub mod receptive_field;
pub mod slide;
pub mod sweep;
pub mod synth;
pub mod tensor;
pub mod tile_grid;

pub use error::{Error, Result};
pub use model::Model;
pub use tensor::Tensor;
