//! The backend seam: what the pipeline needs from a compute device. The CPU backend implements it
//! here; the CUDA backend (src/cuda/) implements the same trait with the same op set.

use crate::error::Result;
use crate::graph::Graph;
use crate::tensor::Tensor;

pub trait Backend: Sync {
    /// Human-readable name for logs and summaries, e.g. "cpu (2 threads)".
    fn name(&self) -> String;
    /// Run the whole graph on one input window (CHW, f32) and return the graph's output.
    fn run(&self, graph: &Graph, input: &Tensor) -> Result<Tensor>;
}

/// The multi-threaded f32 CPU backend (src/cpu/).
#[derive(Clone, Copy, Debug, Default)]
pub struct CpuBackend;

impl Backend for CpuBackend {
    fn name(&self) -> String {
        format!("cpu ({} threads)", rayon::current_num_threads())
    }

    fn run(&self, graph: &Graph, input: &Tensor) -> Result<Tensor> {
        Ok(crate::cpu::run(graph, input)?.0)
    }
}
