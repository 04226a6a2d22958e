//! The graph IR: nodes in execution order, each an op over earlier nodes' outputs, plus the
//! passes that turn what a model file describes into what the executor runs (batch-norm folding,
//! dropout removal, ReLU fusion) and shape inference.

use rayon::prelude::*;

use crate::error::{Error, Result};

pub type NodeId = usize;

#[derive(Clone, Debug)]
pub struct Conv2d {
    pub cin: usize,
    pub cout: usize,
    /// Odd kernel size; stride 1, zero "same" padding of k/2.
    pub k: usize,
    /// `[cout][cin][k][k]`, as PyTorch stores it.
    pub weight: Vec<f32>,
    pub bias: Vec<f32>,
    /// A following ReLU fused into this op.
    pub relu: bool,
    /// A preceding per-input-channel scale-shift (+ ReLU) fused into this op: FC-DenseNet's
    /// BN -> ReLU -> conv reads `max(x·scale + shift, 0)` while loading, before the zero padding,
    /// so the transformed copy of the block's feature maps is never stored.
    pub pre: Option<ScaleShift>,
    /// How the CPU computes it. Chosen once per model graph ([`Graph::assign_conv_algos`]) so that
    /// every CPU executor does the same arithmetic for this layer; ops built by hand are `Direct`.
    /// Other backends ignore it (they agree with the CPU only to a tolerance).
    pub algo: ConvAlgo,
}

/// The CPU algorithm of a [`Conv2d`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ConvAlgo {
    /// `bias + Σ_ci Σ_taps w·x`, one FMA per term (`cpu::conv`).
    #[default]
    Direct,
    /// Winograd F(2x2, 3x3) over 2 x 2 output blocks anchored at the map's origin
    /// (`cpu::winograd`). Tiling stays exact only where every window's map starts and ends on
    /// that block grid: see [`Graph::assign_conv_algos`].
    Winograd2,
}

#[derive(Clone, Debug)]
pub struct ConvTranspose2d {
    pub cin: usize,
    pub cout: usize,
    /// 2 (U-Net) or 3 (FC-DenseNet); stride 2, padding 0, output cropped to exactly 2h x 2w.
    pub k: usize,
    /// `[cin][cout][k][k]`, as PyTorch stores it.
    pub weight: Vec<f32>,
    pub bias: Vec<f32>,
}

#[derive(Clone, Debug)]
pub struct BatchNorm {
    pub gamma: Vec<f32>,
    pub beta: Vec<f32>,
    pub mean: Vec<f32>,
    pub var: Vec<f32>,
    pub eps: f64,
}

impl BatchNorm {
    /// The per-channel affine map `y = x * scale + shift`, computed in f64 so that folding it is as
    /// accurate as f32 allows.
    pub fn scale_shift(&self) -> (Vec<f64>, Vec<f64>) {
        let scale: Vec<f64> =
            self.gamma.iter().zip(&self.var).map(|(&g, &v)| g as f64 / (v as f64 + self.eps).sqrt()).collect();
        let shift =
            self.beta.iter().zip(&self.mean).zip(&scale).map(|((&b, &m), &s)| b as f64 - m as f64 * s).collect();
        (scale, shift)
    }
}

#[derive(Clone, Debug)]
pub struct ScaleShift {
    pub scale: Vec<f32>,
    pub shift: Vec<f32>,
    pub relu: bool,
}

impl ScaleShift {
    /// Channel `ci`'s map as a fused input transform computes it: `v·scale + shift` (a rounded
    /// multiply, then a rounded add), then the ReLU if it has one. The channel's values are read
    /// once, so a loop over a plane vectorises.
    #[inline(always)]
    pub fn channel(&self, ci: usize) -> impl Fn(f32) -> f32 + Copy {
        let (sc, sh, relu) = (self.scale[ci], self.shift[ci], self.relu);
        move |v: f32| {
            let t = v * sc + sh;
            if relu { t.max(0.0) } else { t }
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UpsampleMode {
    Nearest,
    /// Bilinear x2 with `align_corners=False` (half-pixel centres): position-independent, tileable.
    Bilinear,
}

#[derive(Clone, Debug)]
pub enum Op {
    Input { channels: usize },
    Conv2d(Conv2d),
    ConvTranspose2d(ConvTranspose2d),
    BatchNorm(BatchNorm),
    ScaleShift(ScaleShift),
    Relu,
    MaxPool2,
    Upsample2(UpsampleMode),
    Concat,
    Dropout,
    Softmax,
    Argmax,
}

impl Op {
    pub fn kind(&self) -> &'static str {
        match self {
            Op::Input { .. } => "input",
            Op::Conv2d(_) => "conv2d",
            Op::ConvTranspose2d(_) => "conv_transpose2d",
            Op::BatchNorm(_) => "batch_norm",
            Op::ScaleShift(_) => "scale_shift",
            Op::Relu => "relu",
            Op::MaxPool2 => "max_pool2",
            Op::Upsample2(UpsampleMode::Nearest) => "upsample_nearest2",
            Op::Upsample2(UpsampleMode::Bilinear) => "upsample_bilinear2",
            Op::Concat => "concat",
            Op::Dropout => "dropout",
            Op::Softmax => "softmax",
            Op::Argmax => "argmax",
        }
    }

    pub fn params(&self) -> usize {
        match self {
            Op::Conv2d(c) => c.weight.len() + c.bias.len(),
            Op::ConvTranspose2d(c) => c.weight.len() + c.bias.len(),
            Op::BatchNorm(b) => b.gamma.len() * 4,
            Op::ScaleShift(s) => s.scale.len() * 2,
            _ => 0,
        }
    }
}

#[derive(Clone, Debug)]
pub struct Node {
    pub name: String,
    pub op: Op,
    pub inputs: Vec<NodeId>,
}

/// Follow `alias` to the node that finally stands for `i`.
fn resolve(alias: &[NodeId], mut i: NodeId) -> NodeId {
    while alias[i] != i {
        i = alias[i];
    }
    i
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shape {
    pub c: usize,
    pub h: usize,
    pub w: usize,
}

/// Nodes in execution order: every node's inputs come before it. Node 0 is the input.
#[derive(Clone, Debug, Default)]
pub struct Graph {
    pub nodes: Vec<Node>,
    pub output: NodeId,
}

impl Graph {
    /// A hash (XXH3-128) of everything that determines the network's output: every node's op, its
    /// attributes, its inputs and every bit of every parameter, in graph order. Two graphs with the
    /// same fingerprint compute the same bytes on the same backend; what `--resume` and `--shard`
    /// compare, so that a run never mixes two models.
    ///
    /// It must only change with the numerics revision (`crate::numerics`), or journals of the same
    /// revision could no longer be resumed: `tests/model_file.rs` pins it. It is not BLAKE3, as it
    /// was before the revision was recorded: a resumable run hashes every weight before its first
    /// window, and BLAKE3 took 0.016 s of U-Net-64's start on two cores. It guards against a model
    /// changed by mistake, not against one forged to collide.
    pub fn fingerprint(&self) -> String {
        use rayon::prelude::*;
        use xxhash_rust::xxh3::{Xxh3, xxh3_128};
        /// Values hashed as one block: a larger tensor's blocks are hashed on every worker, and
        /// their digests hashed in order.
        const BLOCK: usize = 1 << 18;
        fn le_bytes(v: &[f32]) -> std::borrow::Cow<'_, [u8]> {
            if cfg!(target_endian = "little") {
                std::borrow::Cow::Borrowed(bytemuck::cast_slice(v))
            } else {
                std::borrow::Cow::Owned(v.iter().flat_map(|x| x.to_bits().to_le_bytes()).collect())
            }
        }
        let mut h = Xxh3::new();
        let int = |h: &mut Xxh3, v: usize| {
            h.update(&(v as u64).to_le_bytes());
        };
        let floats = |h: &mut Xxh3, v: &[f32]| {
            h.update(&(v.len() as u64).to_le_bytes());
            if v.len() <= BLOCK {
                h.update(&le_bytes(v));
            } else {
                let blocks: Vec<u128> = v.par_chunks(BLOCK).map(|b| xxh3_128(&le_bytes(b))).collect();
                for d in blocks {
                    h.update(&d.to_le_bytes());
                }
            }
        };
        int(&mut h, self.nodes.len());
        int(&mut h, self.output);
        for node in &self.nodes {
            h.update(node.op.kind().as_bytes());
            int(&mut h, node.inputs.len());
            for &i in &node.inputs {
                int(&mut h, i);
            }
            match &node.op {
                Op::Input { channels } => int(&mut h, *channels),
                Op::Conv2d(c) => {
                    for v in [c.cin, c.cout, c.k, c.relu as usize, c.algo as usize] {
                        int(&mut h, v);
                    }
                    floats(&mut h, &c.weight);
                    floats(&mut h, &c.bias);
                    if let Some(p) = &c.pre {
                        int(&mut h, 1 + p.relu as usize);
                        floats(&mut h, &p.scale);
                        floats(&mut h, &p.shift);
                    }
                }
                Op::ConvTranspose2d(c) => {
                    for v in [c.cin, c.cout, c.k] {
                        int(&mut h, v);
                    }
                    floats(&mut h, &c.weight);
                    floats(&mut h, &c.bias);
                }
                Op::BatchNorm(b) => {
                    for v in [&b.gamma, &b.beta, &b.mean, &b.var] {
                        floats(&mut h, v);
                    }
                    h.update(&b.eps.to_bits().to_le_bytes());
                }
                Op::ScaleShift(s) => {
                    int(&mut h, s.relu as usize);
                    floats(&mut h, &s.scale);
                    floats(&mut h, &s.shift);
                }
                _ => {}
            }
        }
        format!("{:032x}", h.digest128())
    }
}

impl Graph {
    pub fn new(in_channels: usize) -> Graph {
        let mut g = Graph::default();
        g.add("input", Op::Input { channels: in_channels }, &[]);
        g
    }

    pub fn input_channels(&self) -> usize {
        match self.nodes[0].op {
            Op::Input { channels } => channels,
            _ => unreachable!("node 0 is always the input"),
        }
    }

    pub fn add(&mut self, name: impl Into<String>, op: Op, inputs: &[NodeId]) -> NodeId {
        debug_assert!(inputs.iter().all(|&i| i < self.nodes.len()));
        self.nodes.push(Node { name: name.into(), op, inputs: inputs.to_vec() });
        self.output = self.nodes.len() - 1;
        self.output
    }

    pub fn params(&self) -> usize {
        self.nodes.iter().map(|n| n.op.params()).sum()
    }

    /// How many nodes read each node's output (the graph output counts as one reader).
    pub fn consumers(&self) -> Vec<usize> {
        let mut n = vec![0; self.nodes.len()];
        for node in &self.nodes {
            for &i in &node.inputs {
                n[i] += 1;
            }
        }
        n[self.output] += 1;
        n
    }

    /// Index of the last node that reads each node's output (the output lives to the end).
    pub fn last_use(&self) -> Vec<usize> {
        let mut last: Vec<usize> = (0..self.nodes.len()).collect();
        for (i, node) in self.nodes.iter().enumerate() {
            for &j in &node.inputs {
                last[j] = i;
            }
        }
        last[self.output] = usize::MAX;
        last
    }

    /// The graph the executor runs: dropout removed, batch norm folded into the convolution before
    /// it (or turned into a scale-shift), ReLUs fused into the op before them. Numerically this is
    /// the same network; only folding changes rounding, and it does so identically for every tile.
    pub fn optimized(self) -> Graph {
        let mut consumers = self.consumers();
        // `alias[i]`: the node of `self` whose output stands for node i's output.
        let mut alias: Vec<NodeId> = (0..self.nodes.len()).collect();
        // Moved out, not cloned: the weights are folded in place, so the model's weights are held
        // once (124 MB for U-Net-64), not twice.
        let mut ops: Vec<Option<Op>> = Vec::with_capacity(self.nodes.len());
        let mut nodes: Vec<(String, Vec<NodeId>)> = Vec::with_capacity(self.nodes.len());
        for n in self.nodes {
            ops.push(Some(n.op));
            nodes.push((n.name, n.inputs));
        }
        for i in 0..nodes.len() {
            let inputs = &nodes[i].1;
            let src = inputs.first().map(|&j| resolve(&alias, j));
            // Each op is taken once, here; only earlier ops are changed below.
            let op = ops[i].take().expect("not taken yet");
            ops[i] = match (op, src) {
                (Op::Dropout, Some(s)) => {
                    alias[i] = s;
                    consumers[s] = consumers[i];
                    None
                }
                (Op::BatchNorm(bn), Some(s)) => {
                    let (scale, shift) = bn.scale_shift();
                    let foldable = consumers[s] == 1 && matches!(ops[s], Some(Op::Conv2d(ref c)) if !c.relu);
                    if foldable {
                        if let Some(Op::Conv2d(conv)) = ops[s].as_mut() {
                            let per = conv.cin * conv.k * conv.k;
                            // On every worker: U-Net-64 folds 124 MB of weights before its first window.
                            conv.weight.par_chunks_mut(per.max(1)).zip(&scale).for_each(|(w, &s)| {
                                w.iter_mut().for_each(|w| *w = (*w as f64 * s) as f32);
                            });
                            for co in 0..conv.cout {
                                conv.bias[co] = (conv.bias[co] as f64 * scale[co] + shift[co]) as f32;
                            }
                        }
                        alias[i] = s;
                        consumers[s] = consumers[i];
                        None
                    } else {
                        Some(Op::ScaleShift(ScaleShift {
                            scale: scale.iter().map(|&v| v as f32).collect(),
                            shift: shift.iter().map(|&v| v as f32).collect(),
                            relu: false,
                        }))
                    }
                }
                (Op::Conv2d(mut c), Some(s))
                    if consumers[s] == 1 && matches!(ops[s], Some(Op::ScaleShift(_))) && inputs.len() == 1 =>
                {
                    let Some(Op::ScaleShift(ss)) = ops[s].take() else { unreachable!() };
                    c.pre = Some(ss);
                    // The conv now reads what the scale-shift read.
                    alias[s] = resolve(&alias, nodes[s].1[0]);
                    Some(Op::Conv2d(c))
                }
                (Op::Relu, Some(s)) if consumers[s] == 1 => {
                    let fused = match ops[s].as_mut() {
                        Some(Op::Conv2d(c)) if !c.relu => {
                            c.relu = true;
                            true
                        }
                        Some(Op::ScaleShift(ss)) if !ss.relu => {
                            ss.relu = true;
                            true
                        }
                        _ => false,
                    };
                    if fused {
                        alias[i] = s;
                        consumers[s] = consumers[i];
                        None
                    } else {
                        Some(Op::Relu)
                    }
                }
                (op, _) => Some(op),
            };
        }
        let mut out = Graph::default();
        let mut new_id = vec![usize::MAX; nodes.len()];
        for (i, (op, (name, inputs))) in ops.into_iter().zip(nodes).enumerate() {
            if let Some(op) = op {
                let inputs: Vec<NodeId> = inputs.iter().map(|&j| new_id[resolve(&alias, j)]).collect();
                new_id[i] = out.add(name, op, &inputs);
            }
        }
        out.output = new_id[resolve(&alias, self.output)];
        out
    }

    /// Output shape of every node for an input of `h x w`, or an error naming the first node whose
    /// inputs do not fit (odd sizes into a pooling, concatenation of different sizes).
    pub fn shapes(&self, h: usize, w: usize) -> Result<Vec<Shape>> {
        let mut shapes: Vec<Shape> = Vec::with_capacity(self.nodes.len());
        let mut total = 0usize;
        for node in &self.nodes {
            let ins: Vec<Shape> = node.inputs.iter().map(|&i| shapes[i]).collect();
            let bad = |msg: String| Error::Shape(format!("node '{}' ({}): {msg}", node.name, node.op.kind()));
            let s = match &node.op {
                Op::Input { channels } => Shape { c: *channels, h, w },
                Op::Conv2d(c) => {
                    if ins[0].c != c.cin {
                        return Err(bad(format!("expects {} input channels, gets {}", c.cin, ins[0].c)));
                    }
                    Shape { c: c.cout, ..ins[0] }
                }
                Op::ConvTranspose2d(c) => {
                    if ins[0].c != c.cin {
                        return Err(bad(format!("expects {} input channels, gets {}", c.cin, ins[0].c)));
                    }
                    Shape { c: c.cout, h: ins[0].h * 2, w: ins[0].w * 2 }
                }
                Op::BatchNorm(b) if b.gamma.len() != ins[0].c => {
                    return Err(bad(format!("has {} channels, input has {}", b.gamma.len(), ins[0].c)));
                }
                Op::ScaleShift(s) if s.scale.len() != ins[0].c => {
                    return Err(bad(format!("has {} channels, input has {}", s.scale.len(), ins[0].c)));
                }
                Op::MaxPool2 => {
                    if !ins[0].h.is_multiple_of(2) || !ins[0].w.is_multiple_of(2) {
                        return Err(bad(format!(
                            "2x2 pooling of an odd-sized {}x{} map (input sizes must be multiples of the \
                             down-sampling factor)",
                            ins[0].w, ins[0].h
                        )));
                    }
                    Shape { h: ins[0].h / 2, w: ins[0].w / 2, ..ins[0] }
                }
                Op::Upsample2(_) => Shape { h: ins[0].h * 2, w: ins[0].w * 2, ..ins[0] },
                Op::Concat => {
                    let first = ins[0];
                    if ins.iter().any(|s| s.h != first.h || s.w != first.w) {
                        return Err(bad(format!("concatenates maps of different sizes: {ins:?}")));
                    }
                    Shape { c: ins.iter().map(|s| s.c).sum(), ..first }
                }
                Op::Argmax => Shape { c: 1, ..ins[0] },
                _ => ins[0],
            };
            // Checked: every size the planner and executors derive from shapes (sums of node
            // sizes, offsets, bytes) then fits in 64 bits with room to spare.
            let elems = s.c.checked_mul(s.h).and_then(|n| n.checked_mul(s.w));
            total =
                elems.and_then(|n| total.checked_add(n)).filter(|&t| t <= MAX_ACTIVATION_ELEMS).ok_or_else(|| {
                    Error::Shape(format!(
                        "a {w}x{h} input needs more than 2^{} activation values: no machine holds that; use a smaller \
                     tile",
                        MAX_ACTIVATION_ELEMS.ilog2()
                    ))
                })?;
            shapes.push(s);
        }
        Ok(shapes)
    }
}

/// The smallest input and output channel counts for which the model graph picks Winograd (the CPU's
/// F(2x2, 3x3), `cpu::winograd`). Below
/// that the transforms' memory traffic (16 values per 2 x 2 block and channel, in and out) eats
/// the saved multiplications: on U-Net-64's 64-channel 512 x 512 layers Winograd ran from 15 %
/// faster to 45 % slower than the direct engine depending on the process (a cache effect not
/// tracked down), while from 128 channels on it wins in every process measured. This also keeps
/// FC-DenseNet's 16-channel dense layers and every first layer direct.
pub const WINOGRAD_MIN_CHANNELS: usize = 128;

/// All activations of one forward pass together, in values (2^52 f32 values are 16 PiB).
pub const MAX_ACTIVATION_ELEMS: usize = 1 << 52;

impl Graph {
    /// Multiply-adds x2 of the convolutions per input pixel (the usual FLOP count), measured on an
    /// input of `size x size` (a multiple of the down-sampling factor).
    pub fn flops_per_pixel(&self, size: usize) -> Result<f64> {
        let shapes = self.shapes(size, size)?;
        Ok(self.node_flops(&shapes).iter().sum::<f64>() / (size * size) as f64)
    }

    /// Multiply-add FLOPs (2 per term) of every node, given the nodes' output `shapes`; a direct
    /// convolution's count, whatever algorithm runs it.
    pub fn node_flops(&self, shapes: &[Shape]) -> Vec<f64> {
        self.nodes
            .iter()
            .zip(shapes)
            .map(|(node, s)| match &node.op {
                Op::Conv2d(c) => 2.0 * (c.cin * c.k * c.k * c.cout) as f64 * (s.h * s.w) as f64,
                // Stride 2: one input pixel per 2x2 output pixels.
                Op::ConvTranspose2d(c) => 2.0 * (c.cin * c.k * c.k * c.cout) as f64 * (s.h * s.w / 4) as f64,
                _ => 0.0,
            })
            .collect()
    }
}

impl Graph {
    /// Down-sampling level of every node's output: log2 of how many input pixels one of its pixels
    /// spans (poolings add one, up-samplings take one off).
    pub fn levels(&self) -> Vec<i32> {
        let mut lv: Vec<i32> = Vec::with_capacity(self.nodes.len());
        for node in &self.nodes {
            let l = node.inputs.first().map_or(0, |&i| lv[i]);
            lv.push(match node.op {
                Op::MaxPool2 => l + 1,
                Op::ConvTranspose2d(_) | Op::Upsample2(_) => l - 1,
                _ => l,
            });
        }
        lv
    }

    /// Choose each convolution's CPU algorithm ([`ConvAlgo`]), once, for every executor that runs
    /// this graph. Winograd F(2x2, 3x3) works on 2 x 2 output blocks anchored at the map's origin,
    /// so it keeps tiling exact only where every window's map starts on an even row and column
    /// of that level's whole map. Windows start at multiples of `align` (A), so a map at level L
    /// starts at a multiple of A / 2^L, and its size is one too: Winograd where A / 2^L is even,
    /// the direct convolution elsewhere (U-Net's bottleneck, at A / 2^L = 1). Only 3 x 3
    /// convolutions with at least `min_channels` input and output channels are worth it.
    pub fn assign_conv_algos(&mut self, align: usize, min_channels: usize) {
        let levels = self.levels();
        for (node, &l) in self.nodes.iter_mut().zip(&levels) {
            if let Op::Conv2d(c) = &mut node.op {
                let grid_even = (0..31).contains(&l) && align.is_multiple_of(2 << l);
                let worth = c.k == 3 && c.cin >= min_channels && c.cout >= min_channels;
                c.algo = if grid_even && worth { ConvAlgo::Winograd2 } else { ConvAlgo::Direct };
            }
        }
    }

    /// True when some convolution carries a fused input scale-shift (see [`Conv2d::pre`]).
    pub fn has_conv_pre(&self) -> bool {
        self.nodes.iter().any(|n| matches!(&n.op, Op::Conv2d(c) if c.pre.is_some()))
    }

    /// The same network with every fused input scale-shift split back into its own node, for
    /// backends whose convolution kernels do not fuse it. Same values, one more buffer per layer.
    pub fn without_conv_pre(&self) -> Graph {
        let mut out = Graph::default();
        let mut new_id = Vec::with_capacity(self.nodes.len());
        for node in &self.nodes {
            let inputs: Vec<NodeId> = node.inputs.iter().map(|&j| new_id[j]).collect();
            let id = match &node.op {
                Op::Conv2d(c) if c.pre.is_some() => {
                    let pre = c.pre.clone().expect("checked");
                    let ss = out.add(format!("{}.pre", node.name), Op::ScaleShift(pre), &inputs);
                    out.add(node.name.clone(), Op::Conv2d(Conv2d { pre: None, ..c.clone() }), &[ss])
                }
                op => out.add(node.name.clone(), op.clone(), &inputs),
            };
            new_id.push(id);
        }
        out.output = new_id[self.output];
        out
    }
}
