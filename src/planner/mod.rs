//! Memory planning: the exact arena of one forward pass (arena.rs) and the largest tile that fits
//! a memory budget (tile_plan.rs).

pub mod arena;
pub mod tile_plan;

pub use arena::{ArenaPlan, Slot};
pub use tile_plan::{MemoryModel, Peak, Precision, TileChoice, TilePlanner};
