//! Convolution weights regrouped for the direct engine once per model, not once per call: U-Net-64
//! has 31 M parameters, and regrouping them for every window cost a few per cent of a forward
//! pass. They are model-level memory (counted with the weights, see [`elems`]), kept in the
//! executor's [`super::Buffers`] next to the arena.

use rayon::prelude::*;

use super::direct::Isa;
use super::{conv, conv_transpose};
use crate::error::Result;
use crate::graph::{Graph, NodeId, Op};

/// Packed elements of one node (0 for ops without weights).
fn node_elems(op: &Op, isa: Isa) -> usize {
    match op {
        Op::Conv2d(c) => conv::packed_elems(c, isa),
        Op::ConvTranspose2d(c) => conv_transpose::packed_elems(c, isa),
        _ => 0,
    }
}

/// Packed elements of the whole graph for `isa`'s engine.
pub fn elems(graph: &Graph, isa: Isa) -> usize {
    graph.nodes.iter().map(|n| node_elems(&n.op, isa)).sum()
}

/// Identifies the weights a pack was made from: the engine it was made for, their addresses and
/// lengths, each convolution's algorithm, and a sample of their values (so a model dropped and another loaded at the same addresses is still told apart).
fn fingerprint(graph: &Graph, isa: Isa) -> blake3::Hash {
    let mut h = blake3::Hasher::new();
    h.update(format!("{isa:?}").as_bytes());
    let mut mix = |v: u64| {
        h.update(&v.to_le_bytes());
    };
    for n in &graph.nodes {
        let w = match &n.op {
            Op::Conv2d(c) => {
                // The same weights packed for another algorithm are another pack.
                mix(c.algo as u64);
                &c.weight
            }
            Op::ConvTranspose2d(c) => &c.weight,
            _ => continue,
        };
        mix(w.as_ptr() as u64);
        mix(w.len() as u64);
        for i in 0..64.min(w.len()) {
            mix(u64::from(w[i * w.len() / 64.min(w.len())].to_bits()));
        }
    }
    mix(graph.nodes.len() as u64);
    h.finalize()
}

/// The packed weights of every convolution of one graph, stored flat.
#[derive(Default)]
pub struct Packed {
    key: Option<blake3::Hash>,
    start: Vec<usize>,
    data: Vec<f32>,
}

impl Packed {
    /// Pack `graph`'s weights for `isa` unless this already holds them; true when it packed
    /// (another model, or the first).
    pub fn prepare(&mut self, graph: &Graph, isa: Isa) -> Result<bool> {
        let key = fingerprint(graph, isa);
        if self.key == Some(key) {
            return Ok(false);
        }
        self.key = None;
        let total = elems(graph, isa);
        if self.data.len() != total {
            self.data = Vec::new();
            self.data = super::zeroed(total, "packed weights")?;
        }
        self.start.clear();
        self.start.reserve_exact(graph.nodes.len() + 1);
        let mut off = 0;
        let mut jobs = Vec::new();
        let mut rest = &mut self.data[..];
        for n in &graph.nodes {
            self.start.push(off);
            let len = node_elems(&n.op, isa);
            let (dst, tail) = std::mem::take(&mut rest).split_at_mut(len);
            rest = tail;
            if len > 0 {
                jobs.push((&n.op, dst));
            }
            off += len;
        }
        // On every worker: packing is a pass over all the weights, before the first window.
        jobs.into_par_iter().for_each(|(op, dst)| match op {
            Op::Conv2d(c) => conv::pack(c, dst, isa),
            Op::ConvTranspose2d(c) => conv_transpose::pack(c, dst, isa),
            _ => {}
        });
        self.start.push(off);
        self.key = Some(key);
        Ok(true)
    }

    /// Node `i`'s packed weights (after [`Packed::prepare`] with its graph).
    pub fn of(&self, i: NodeId) -> &[f32] {
        &self.data[self.start[i]..self.start[i + 1]]
    }

    pub fn allocated_bytes(&self) -> usize {
        self.data.capacity() * 4
    }
}
