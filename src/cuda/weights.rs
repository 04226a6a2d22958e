//! Layer parameters in the layouts the kernels read, uploaded once per model.
//!
//! The f16 conv kernel (`kernels/conv.cu`, variant 2) reads its weights as mma.sync m16n8k16 A
//! fragments: for output-channel block b (64 channels), input-channel chunk c (16 channels), tap t
//! (ky·k + kx) and m-tile m (16 channels of the block), lane l holds 8 halves. With g = l / 4 and
//! q = l % 4, the PTX ISA's A layout (row = output channel, column = input channel within the chunk)
//! puts, in order: (g, 2q), (g, 2q+1), (g+8, 2q), (g+8, 2q+1), (g, 2q+8), (g, 2q+9), (g+8, 2q+8),
//! (g+8, 2q+9). Channels past cout or cin are zero, so they add nothing.

use std::sync::Arc;

use cudarc::driver::{CudaSlice, CudaStream};
use half::f16;

use super::storage::Storage;
use crate::error::Result;
use crate::graph::{Conv2d, Graph, Op};

/// Output channels per block, input channels per chunk, lanes per warp, halves per lane.
pub const MMA_CO: usize = 64;
pub const MMA_CI: usize = 16;
const LANES: usize = 32;
const PER_LANE: usize = 8;

/// (row, column) of the A-fragment element `i` (0..8) held by `lane`.
pub fn a_fragment_position(lane: usize, i: usize) -> (usize, usize) {
    let (g, q) = (lane / 4, lane % 4);
    let row = g + if i % 4 >= 2 { 8 } else { 0 };
    let col = 2 * q + (i % 2) + if i >= 4 { 8 } else { 0 };
    (row, col)
}

/// Number of halves `pack_conv_f16` produces for a layer.
pub fn packed_len(c: &Conv2d) -> usize {
    c.cout.div_ceil(MMA_CO) * c.cin.div_ceil(MMA_CI) * c.k * c.k * 4 * LANES * PER_LANE
}

/// The weights as `[block][chunk][tap][m-tile][lane][8]` halves (see the module comment).
pub fn pack_conv_f16(c: &Conv2d) -> Vec<f16> {
    let taps = c.k * c.k;
    let (blocks, chunks) = (c.cout.div_ceil(MMA_CO), c.cin.div_ceil(MMA_CI));
    let mut out = Vec::with_capacity(packed_len(c));
    for b in 0..blocks {
        for chunk in 0..chunks {
            for tap in 0..taps {
                for m in 0..4 {
                    for lane in 0..LANES {
                        for i in 0..PER_LANE {
                            let (row, col) = a_fragment_position(lane, i);
                            let (co, ci) = (b * MMA_CO + m * 16 + row, chunk * MMA_CI + col);
                            let v =
                                if co < c.cout && ci < c.cin { c.weight[(co * c.cin + ci) * taps + tap] } else { 0.0 };
                            out.push(f16::from_f32(v));
                        }
                    }
                }
            }
        }
    }
    debug_assert_eq!(out.len(), packed_len(c));
    out
}

/// One node's parameters on the device.
pub enum LayerParams<T> {
    None,
    /// Weights in `T::conv_weights` layout; bias always f32 (the accumulators' type).
    Conv {
        weight: CudaSlice<T>,
        bias: CudaSlice<f32>,
    },
    /// Weights `[cin][cout][k][k]` in storage type T.
    ConvTranspose {
        weight: CudaSlice<T>,
        bias: CudaSlice<f32>,
    },
    /// Batch norm (folded into scale and shift on the host, in f64 as the CPU does) or scale-shift.
    ScaleShift {
        scale: CudaSlice<f32>,
        shift: CudaSlice<f32>,
        relu: bool,
    },
}

impl<T> LayerParams<T> {
    /// Device bytes these parameters occupy.
    pub fn bytes(&self) -> usize {
        match self {
            LayerParams::None => 0,
            LayerParams::Conv { weight, bias } | LayerParams::ConvTranspose { weight, bias } => {
                weight.num_bytes() + bias.num_bytes()
            }
            LayerParams::ScaleShift { scale, shift, .. } => scale.num_bytes() + shift.num_bytes(),
        }
    }
}

/// Every node's parameters, uploaded once, for the graph they were made from.
pub struct GraphParams<T> {
    pub fingerprint: blake3::Hash,
    pub layers: Vec<LayerParams<T>>,
    /// Device bytes of all of them (what [`device_bytes`] predicts).
    pub bytes: usize,
}

/// Device bytes the CUDA backend allocates for `op`'s parameters at `precision`, as
/// [`LayerParams::upload`] lays them out: conv weights in the storage type (f16: packed mma
/// fragments, padded to whole 64-channel blocks and 16-channel chunks), biases, scales and shifts
/// in f32, batch norm folded to a scale and a shift. The planner's device memory model uses this,
/// so that planned bytes are the bytes really allocated.
pub fn op_device_bytes(op: &Op, precision: crate::planner::Precision) -> usize {
    let elem = precision.bytes();
    match op {
        Op::Conv2d(c) => {
            let w = match precision {
                crate::planner::Precision::F32 => c.weight.len(),
                // bf16 is no CUDA arithmetic; planned as the 2-byte storage it would be.
                crate::planner::Precision::F16 | crate::planner::Precision::Bf16 => packed_len(c),
            };
            w * elem + c.bias.len() * 4
        }
        Op::ConvTranspose2d(c) => c.weight.len() * elem + c.bias.len() * 4,
        Op::BatchNorm(bn) => 2 * bn.gamma.len() * 4,
        Op::ScaleShift(s) => (s.scale.len() + s.shift.len()) * 4,
        _ => 0,
    }
}

/// [`op_device_bytes`] summed over a graph.
pub fn device_bytes(graph: &Graph, precision: crate::planner::Precision) -> usize {
    graph.nodes.iter().map(|n| op_device_bytes(&n.op, precision)).sum()
}

fn upload<T: Storage>(stream: &Arc<CudaStream>, v: &[T]) -> Result<CudaSlice<T>> {
    let bytes = std::mem::size_of_val(v);
    stream.clone_htod(v).map_err(super::executor::alloc_err("the model's parameters".into(), bytes))
}

impl<T: Storage> LayerParams<T> {
    /// Upload what `op` needs (nothing for ops without parameters).
    pub fn upload(stream: &Arc<CudaStream>, op: &Op) -> Result<LayerParams<T>> {
        Ok(match op {
            Op::Conv2d(c) => {
                LayerParams::Conv { weight: upload(stream, &T::conv_weights(c))?, bias: upload(stream, &c.bias)? }
            }
            Op::ConvTranspose2d(c) => LayerParams::ConvTranspose {
                weight: upload(stream, &c.weight.iter().map(|&v| T::from_f32(v)).collect::<Vec<T>>())?,
                bias: upload(stream, &c.bias)?,
            },
            Op::BatchNorm(bn) => {
                let (scale, shift) = bn.scale_shift();
                let f = |v: Vec<f64>| v.into_iter().map(|x| x as f32).collect::<Vec<f32>>();
                LayerParams::ScaleShift {
                    scale: upload(stream, &f(scale))?,
                    shift: upload(stream, &f(shift))?,
                    relu: false,
                }
            }
            Op::ScaleShift(s) => LayerParams::ScaleShift {
                scale: upload(stream, &s.scale)?,
                shift: upload(stream, &s.shift)?,
                relu: s.relu,
            },
            _ => LayerParams::None,
        })
    }
}

impl<T: Storage> GraphParams<T> {
    pub fn upload(stream: &Arc<CudaStream>, graph: &Graph) -> Result<GraphParams<T>> {
        let layers = graph.nodes.iter().map(|n| LayerParams::upload(stream, &n.op)).collect::<Result<Vec<_>>>()?;
        let bytes = layers.iter().map(LayerParams::bytes).sum();
        Ok(GraphParams { fingerprint: fingerprint(graph), layers, bytes })
    }
}

/// Identifies the graph whose parameters are on the device, cheaply enough to check on every
/// tile: each node's kind, parameter sizes and addresses, and the first and last values. Weights
/// are never mutated while a graph is alive, so a match means the same weights.
pub fn fingerprint(graph: &Graph) -> blake3::Hash {
    let mut h = blake3::Hasher::new();
    let mut mix = |v: u64| {
        h.update(&v.to_le_bytes());
    };
    mix(graph.nodes.len() as u64);
    mix(graph.output as u64);
    for node in &graph.nodes {
        let kind = node.op.kind();
        mix(kind.len() as u64);
        kind.bytes().for_each(|b| mix(b.into()));
        mix(node.inputs.len() as u64);
        for &i in &node.inputs {
            mix(i as u64);
        }
        let params: [&[f32]; 2] = match &node.op {
            Op::Conv2d(c) => [&c.weight, &c.bias],
            Op::ConvTranspose2d(c) => [&c.weight, &c.bias],
            Op::BatchNorm(b) => [&b.gamma, &b.var],
            Op::ScaleShift(s) => [&s.scale, &s.shift],
            _ => [&[], &[]],
        };
        for p in params {
            mix(p.as_ptr() as u64);
            mix(p.len() as u64);
            if let (Some(a), Some(b)) = (p.first(), p.last()) {
                mix(a.to_bits() as u64);
                mix(b.to_bits() as u64);
            }
        }
        if let Op::Conv2d(c) = &node.op {
            mix(c.relu as u64);
        }
    }
    h.finalize()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fragment_covers_the_16x16_tile_once() {
        let mut seen = [[0u32; 16]; 16];
        for lane in 0..32 {
            for i in 0..8 {
                let (r, c) = a_fragment_position(lane, i);
                seen[r][c] += 1;
            }
        }
        assert!(seen.iter().flatten().all(|&n| n == 1), "{seen:?}");
        // Spot checks against the PTX ISA figure for m16n8k16 .f16 A: lane 5 (g 1, q 1).
        assert_eq!(a_fragment_position(5, 0), (1, 2));
        assert_eq!(a_fragment_position(5, 3), (9, 3));
        assert_eq!(a_fragment_position(5, 6), (9, 10));
    }

    #[test]
    fn packing_places_every_weight_once_and_pads_with_zeros() {
        for (cin, cout, k) in [(1, 2, 3), (17, 65, 1), (16, 8, 3), (3, 5, 5)] {
            let n = cout * cin * k * k;
            // Distinct values that f16 represents exactly (integers up to 2048).
            assert!(n <= 2048);
            let weight: Vec<f32> = (0..n).map(|i| (i + 1) as f32).collect();
            let c = Conv2d {
                cin,
                cout,
                k,
                weight,
                bias: vec![0.0; cout],
                relu: false,
                pre: None,
                algo: Default::default(),
            };
            let packed = pack_conv_f16(&c);
            assert_eq!(packed.len(), packed_len(&c));
            let mut values: Vec<f32> = packed.iter().map(|v| v.to_f32()).filter(|&v| v != 0.0).collect();
            values.sort_by(f32::total_cmp);
            assert_eq!(values, (1..=n).map(|i| i as f32).collect::<Vec<_>>(), "cin {cin} cout {cout} k {k}");
        }
    }

    #[test]
    fn packed_position_of_one_weight() {
        // cin 20 (2 chunks), cout 70 (2 blocks), k 3: weight (co 66, ci 17, tap 4).
        let (cin, cout, k) = (20, 70, 3);
        let mut weight = vec![0.0f32; cout * cin * 9];
        weight[(66 * cin + 17) * 9 + 4] = 1.0;
        let c =
            Conv2d { cin, cout, k, weight, bias: vec![0.0; cout], relu: false, pre: None, algo: Default::default() };
        let packed = pack_conv_f16(&c);
        let at = packed.iter().position(|v| v.to_f32() == 1.0).unwrap();
        // block 1, chunk 1, tap 4, m-tile 0, row 2, col 1 -> lane 8 (g 2, q 0), element 1.
        let chunks = 2;
        let expect = ((((chunks + 1) * 9 + 4) * 4) * 32 + 8) * 8 + 1;
        assert_eq!(at, expect);
    }
}
