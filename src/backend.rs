//! The backend seam: what the pipeline needs from a compute device. The CPU backend implements it
//! here; the CUDA backend (src/cuda/) implements the same trait with the same op set.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::cpu::Buffers;
use crate::error::{Error, Result};
use crate::graph::Graph;
use crate::planner::{ArenaPlan, MemoryModel, Precision};
use crate::tensor::Tensor;

pub trait Backend: Sync {
    /// Human-readable name for logs and summaries, e.g. "cpu (2 threads)".
    fn name(&self) -> String;
    /// Run the whole graph on one input window (CHW, f32) and return the graph's output.
    fn run(&self, graph: &Graph, input: &Tensor) -> Result<Tensor>;
    /// How the tile planner should count this backend's memory.
    fn memory_model(&self) -> (Precision, MemoryModel) {
        (Precision::F32, MemoryModel::Cpu)
    }
    /// Run the graph on every window `next` yields until it yields `None`, handing each window
    /// back with its result to `done`, in the order the windows came. `done` returns false to
    /// stop early; it may call [`Backend::run`] (the streaming runner retries a window that ran
    /// out of memory as smaller tiles that way). A backend that can overlap one window's
    /// transfers with another's compute overrides this (CUDA); the default runs them one by one.
    fn run_pipelined(
        &self,
        graph: &Graph,
        next: &mut dyn FnMut() -> Option<Tensor>,
        done: &mut dyn FnMut(Tensor, Result<Tensor>) -> bool,
    ) {
        while let Some(x) = next() {
            let y = self.run(graph, &x);
            if !done(x, y) {
                return;
            }
        }
    }
}

/// The multi-threaded f32 CPU backend (src/cpu/): the planned executor, with plans cached per
/// window size and one arena reused across tiles.
#[derive(Default)]
pub struct CpuBackend {
    plans: Mutex<HashMap<(usize, usize), Arc<ArenaPlan>>>,
    buffers: Mutex<Buffers>,
    /// Refuse windows whose arena and workspace exceed this many bytes, as a device with that much
    /// free memory would (`--memory-budget` minus the weights and their packed copy).
    pub limit_bytes: Option<usize>,
}

impl CpuBackend {
    pub fn with_limit(limit_bytes: Option<usize>) -> CpuBackend {
        CpuBackend { limit_bytes, ..CpuBackend::default() }
    }

    fn plan(&self, graph: &Graph, h: usize, w: usize) -> Result<Arc<ArenaPlan>> {
        let mut plans = self.plans.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(p) = plans.get(&(h, w)) {
            return Ok(p.clone());
        }
        let p = Arc::new(ArenaPlan::new(graph, h, w)?);
        plans.insert((h, w), p.clone());
        Ok(p)
    }
}

impl Backend for CpuBackend {
    fn name(&self) -> String {
        format!("cpu ({} threads)", rayon::current_num_threads())
    }

    fn run(&self, graph: &Graph, input: &Tensor) -> Result<Tensor> {
        let plan = self.plan(graph, input.h, input.w)?;
        let need = (plan.arena_elems + crate::cpu::workspace_elems(graph, &plan)) * 4;
        if let Some(limit) = self.limit_bytes
            && need > limit
        {
            return Err(Error::OutOfMemory { what: format!("a {}x{} window", input.h, input.w), bytes: need });
        }
        // The buffers grow to the largest window seen and are reused, not reallocated per tile.
        let mut bufs = self.buffers.lock().unwrap_or_else(|e| e.into_inner());
        crate::cpu::run_planned(graph, &plan, input, &mut bufs, false)
    }
}
