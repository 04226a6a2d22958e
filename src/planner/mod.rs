//! Memory planning: the exact arena of one forward pass (arena.rs), what executing it means node
//! by node (steps.rs), and the largest tile that fits a memory budget (tile_plan.rs).

pub mod arena;
pub mod steps;
pub mod tile_plan;

pub use arena::{ArenaPlan, Slot};
pub use steps::{Action, NodeStep, Schedule};
pub use tile_plan::{MemoryModel, Peak, Precision, QUEUE_DEPTH, TileChoice, TilePlanner, in_flight_bytes};
