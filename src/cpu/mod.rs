//! The CPU backend: one module per op family (the twins of `kernels/<family>.cu`), and the graph
//! executor that runs them. f32, multi-threaded over output channels and rows only, so every output
//! element is accumulated by one thread in one fixed order whatever the tile's extent or position.

pub mod concat;
pub mod conv;
pub mod conv_transpose;
pub mod elementwise;
pub mod pool;
pub mod softmax;
pub mod upsample;

use crate::error::Result;
use crate::graph::{Graph, Op};
use crate::tensor::Tensor;

/// A raw pointer that parallel tasks use to write disjoint parts of one output buffer.
#[derive(Clone, Copy)]
pub(crate) struct DisjointOut(pub *mut f32);
// SAFETY: every user hands each task a set of indices no other task writes, and the buffer
// outlives the parallel scope that uses the pointer.
unsafe impl Send for DisjointOut {}
unsafe impl Sync for DisjointOut {}

impl DisjointOut {
    /// # Safety
    /// `[offset, offset+len)` must lie inside the buffer and be written by this task alone.
    #[allow(clippy::mut_from_ref)]
    pub(crate) unsafe fn slice(&self, offset: usize, len: usize) -> &mut [f32] {
        unsafe { std::slice::from_raw_parts_mut(self.0.add(offset), len) }
    }
}

/// Statistics of one forward pass, for tests and reports.
#[derive(Clone, Copy, Debug, Default)]
pub struct RunStats {
    /// Largest sum of live activation bytes at any point of the schedule.
    pub peak_activation_bytes: usize,
}

/// Run one node on its inputs.
pub fn run_op(op: &Op, ins: &[&Tensor]) -> Tensor {
    match op {
        Op::Input { .. } => ins[0].clone(),
        Op::Conv2d(c) => conv::conv2d(ins[0], c),
        Op::ConvTranspose2d(c) => conv_transpose::conv_transpose2d(ins[0], c),
        Op::BatchNorm(bn) => {
            let (scale, shift) = bn.scale_shift();
            let scale: Vec<f32> = scale.iter().map(|&v| v as f32).collect();
            let shift: Vec<f32> = shift.iter().map(|&v| v as f32).collect();
            elementwise::scale_shift(ins[0], &scale, &shift, false)
        }
        Op::ScaleShift(s) => elementwise::scale_shift(ins[0], &s.scale, &s.shift, s.relu),
        Op::Relu => elementwise::relu(ins[0]),
        Op::Dropout => ins[0].clone(),
        Op::MaxPool2 => pool::max_pool2(ins[0]),
        Op::Upsample2(mode) => upsample::upsample2(ins[0], *mode),
        Op::Concat => concat::concat(ins),
        Op::Softmax => softmax::softmax(ins[0]),
        Op::Argmax => softmax::argmax(ins[0]),
    }
}

/// Execute `graph` on `input`, freeing each activation after its last reader.
pub fn run(graph: &Graph, input: &Tensor) -> Result<(Tensor, RunStats)> {
    graph.shapes(input.h, input.w)?;
    let last = graph.last_use();
    let mut values: Vec<Option<Tensor>> = vec![None; graph.nodes.len()];
    let mut live = 0usize;
    let mut stats = RunStats::default();
    let profile = std::env::var_os("SEAMLESS_PROFILE").is_some();
    for (i, node) in graph.nodes.iter().enumerate() {
        let t0 = std::time::Instant::now();
        let out = if i == 0 {
            input.clone()
        } else {
            let ins: Vec<&Tensor> = node.inputs.iter().map(|&j| values[j].as_ref().expect("live input")).collect();
            run_op(&node.op, &ins)
        };
        if profile {
            eprintln!("{:>9.3} ms  {:<40} {:?}", t0.elapsed().as_secs_f64() * 1e3, node.name, (out.c, out.h, out.w));
        }
        live += out.bytes();
        stats.peak_activation_bytes = stats.peak_activation_bytes.max(live);
        values[i] = Some(out);
        for &j in &node.inputs {
            if last[j] == i
                && let Some(t) = values[j].take()
            {
                live -= t.bytes();
            }
        }
    }
    Ok((values[graph.output].take().expect("output computed"), stats))
}
