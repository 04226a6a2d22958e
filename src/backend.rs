//! The backend seam: everything the runner, the planner and the benchmarks need from a compute
//! device, and the only place that knows one. The CPU (`cpu::CpuBackend`) and CUDA
//! (`cuda::CudaBackend`) implement it with the same op set; each also describes its memory to the
//! planner through [`MemoryModel`].

use std::borrow::Cow;

use crate::error::Result;
use crate::graph::Graph;
use crate::planner::MemoryModel;
use crate::tensor::Tensor;

/// What one timed run measured.
#[derive(Clone, Debug, Default)]
pub struct Timings {
    /// The whole network, by the backend's own clock (CUDA: events around the compute on the
    /// device, without the transfers; CPU: wall time).
    pub compute_seconds: f64,
    /// Seconds per node of [`Backend::lowered`]'s graph, when asked for (empty otherwise).
    pub nodes: Vec<f64>,
}

pub trait Backend: Send + Sync {
    /// Human-readable name for logs and summaries, e.g. "cpu (2 threads)".
    fn name(&self) -> String;
    /// How the planner counts this backend's memory, and how it lowers a graph.
    fn memory(&self) -> &dyn MemoryModel;
    /// The graph this backend executes for `graph`: per-node timings refer to its nodes.
    fn lowered<'g>(&self, graph: &'g Graph) -> Cow<'g, Graph> {
        self.memory().lower(graph)
    }
    /// Get ready to run `graph` (the CPU packs its weights for its engine), so that the first
    /// window does not wait for it: callers may do this on another thread while they open their
    /// input. Optional: [`Backend::run`] does whatever is still needed.
    fn prepare(&self, graph: &Graph) -> Result<()> {
        let _ = graph;
        Ok(())
    }
    /// Run the whole graph on one input window (CHW, f32) and return the graph's output.
    fn run(&self, graph: &Graph, input: &Tensor) -> Result<Tensor>;
    /// [`Backend::run`], timed; with `per_node`, each node of the lowered graph too (which may
    /// slow the run: nodes are then synchronised one by one).
    fn run_timed(&self, graph: &Graph, input: &Tensor, per_node: bool) -> Result<(Tensor, Timings)>;
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
