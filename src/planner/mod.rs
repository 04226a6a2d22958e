//! Memory planning: the exact arena of one forward pass (arena.rs), what executing it means node
//! by node (steps.rs), and the tile for a memory budget: the largest that fits, and the smallest
//! within a few percent of the least compute, which `--tile auto` takes (tile_plan.rs).

pub mod arena;
pub mod steps;
pub mod tile_plan;

pub use arena::{ArenaPlan, Slot};
pub use steps::{Action, NodeStep, Schedule};
pub use tile_plan::{
    AUTO_COMPUTE_SLACK, AutoChoice, MemoryModel, Peak, Precision, QUEUE_DEPTH, TileChoice, TilePlanner, in_flight_bytes,
};
