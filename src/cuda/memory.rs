//! The CUDA executor's memory, as the planner counts it: computed from the graph alone, so
//! `seamless plan --memory device` needs no GPU.

use std::borrow::Cow;

use crate::graph::Graph;
use crate::planner::{ArenaPlan, MemoryModel, Peak, Precision};

/// The arena of the graph the executor runs, its parameters as laid out on the device, and one
/// input and one output staging buffer (the pipelined path uploads the next window and downloads
/// the last output there).
#[derive(Clone, Copy, Debug)]
pub struct DeviceMemory {
    pub precision: Precision,
}

/// The graph the CUDA executor runs for `graph`: the kernels do not fuse an input scale-shift
/// into a convolution, so those become nodes of their own.
pub fn lower(graph: &Graph) -> Cow<'_, Graph> {
    if graph.has_conv_pre() { Cow::Owned(graph.without_conv_pre()) } else { Cow::Borrowed(graph) }
}

impl MemoryModel for DeviceMemory {
    fn precision(&self) -> Precision {
        self.precision
    }

    fn lower<'g>(&self, graph: &'g Graph) -> Cow<'g, Graph> {
        lower(graph)
    }

    fn peak(&self, graph: &Graph, plan: &ArenaPlan) -> Peak {
        let elem = self.precision.bytes();
        Peak {
            arena_bytes: plan.arena_elems * elem,
            workspace_bytes: 0,
            weight_bytes: super::weights::device_bytes(graph, self.precision),
            // Node 0 is the input (see `Graph`).
            staging_bytes: (plan.slots[0].len + plan.slots[graph.output].len) * elem,
        }
    }
}
