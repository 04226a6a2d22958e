//! The CPU backend: one module per op family (the twins of `kernels/<family>.cu`), and the graph
//! executor that runs them. f32, multi-threaded over output channels and rows only, so every output
//! element is accumulated by one thread in one fixed order whatever the tile's extent or position.

pub mod amx;
mod backend;
pub mod bf16;
pub mod concat;
pub mod conv;
pub mod conv_transpose;
pub mod direct;
pub mod elementwise;
pub mod packed;
pub mod padded;
pub mod peak;
pub mod pool;
pub mod softmax;
pub mod unpadded;
pub mod upsample;
pub mod winograd;

pub use backend::{CPU_BF16, CPU_F32, CpuBackend, CpuMemory};

use std::marker::PhantomData;

use crate::error::{Error, Result};
use crate::graph::{Graph, Op, Shape};
use crate::planner::steps::Steps;
use crate::planner::{Action, ArenaPlan, Slot};
use crate::tensor::{Tensor, View};
use direct::Isa;

/// One output buffer that parallel tasks write in disjoint parts through a shared raw pointer
/// (the parts interleave, so the buffer cannot be split into `&mut` chunks up front). It borrows
/// the buffer, so it cannot outlive it, and in debug builds checks every access against its length.
#[derive(Clone, Copy)]
pub(crate) struct DisjointOut<'a> {
    ptr: *mut f32,
    len: usize,
    buf: PhantomData<&'a mut [f32]>,
}

// SAFETY: the pointer is only dereferenced through `slice` and `write`, whose callers promise that
// no two tasks touch the same element; the borrow in `buf` keeps the buffer alive and otherwise
// unused while the tasks run.
unsafe impl Send for DisjointOut<'_> {}
// SAFETY: as for `Send`: shared or not, the pointer is only used through `slice` and `write`.
unsafe impl Sync for DisjointOut<'_> {}

impl<'a> DisjointOut<'a> {
    pub(crate) fn new(buf: &'a mut [f32]) -> Self {
        DisjointOut { ptr: buf.as_mut_ptr(), len: buf.len(), buf: PhantomData }
    }

    /// # Safety
    /// `[offset, offset+len)` must lie inside the buffer and be accessed by this task alone while
    /// the returned slice lives.
    #[allow(clippy::mut_from_ref)]
    pub(crate) unsafe fn slice(&self, offset: usize, len: usize) -> &mut [f32] {
        debug_assert!(offset <= self.len && len <= self.len - offset, "{offset}+{len} outside {}", self.len);
        // SAFETY: inside the buffer and exclusive to this task, as the caller promised.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.add(offset), len) }
    }

    /// # Safety
    /// `offset` must lie inside the buffer and be written by this task alone.
    pub(crate) unsafe fn write(&self, offset: usize, v: f32) {
        debug_assert!(offset < self.len, "{offset} outside {}", self.len);
        // SAFETY: inside the buffer and exclusive to this task, as the caller promised.
        unsafe { *self.ptr.add(offset) = v }
    }
}

/// Statistics of one forward pass, for tests and reports.
#[derive(Clone, Copy, Debug, Default)]
pub struct RunStats {
    /// Bytes the executor really allocated (arena, workspace and packed weights).
    pub allocated_bytes: usize,
    /// Largest sum of live activation bytes at any point of the schedule (unplanned executor).
    pub peak_activation_bytes: usize,
}

/// Workspace elements the CPU ops need on `isa`'s engine for the largest of their calls in this
/// plan.
pub fn workspace_elems(graph: &Graph, plan: &ArenaPlan, isa: Isa) -> usize {
    graph
        .nodes
        .iter()
        .map(|n| match &n.op {
            Op::Conv2d(c) => {
                let s = plan.shapes[n.inputs[0]];
                conv::workspace_elems(c, s.h, s.w, isa)
            }
            Op::ConvTranspose2d(c) => {
                let s = plan.shapes[n.inputs[0]];
                conv_transpose::workspace_elems(c, s.h, s.w, isa)
            }
            _ => 0,
        })
        .max()
        .unwrap_or(0)
}

/// Model-level memory of the CPU executor on top of the parameters: the convolution weights
/// packed once for `isa`'s engine (see [`packed`]).
pub fn packed_weight_bytes(graph: &Graph, isa: Isa) -> usize {
    packed::elems(graph, isa) * 4
}

/// Arena and workspace of the planned executor, kept between tiles and grown only when a larger
/// plan needs it, and the packed weights of the model it last ran (packed again only when the
/// model changes); and the engine every convolution runs on, fixed for the buffers' life so that
/// every window of a model computes the same arithmetic.
pub struct Buffers {
    arena: Vec<f32>,
    workspace: Vec<f32>,
    packed: packed::Packed,
    isa: Isa,
}

impl Default for Buffers {
    /// f32 on this CPU's fastest implementation.
    fn default() -> Self {
        Buffers::new(Isa::detect())
    }
}

fn reserve(buf: &mut Vec<f32>, elems: usize, what: &str) -> Result<()> {
    if buf.len() < elems {
        *buf = Vec::new();
        *buf = zeroed(elems, what)?;
    }
    Ok(())
}

/// `elems` zeros, or [`Error::OutOfMemory`] naming `what`. Allocated zeroed (large blocks come
/// straight from the kernel, zero until written): no pass over the memory before the first
/// convolution writes it, which for U-Net-64 would fault in hundreds of MB on one thread before
/// any work starts. Backed by huge pages where Linux allows.
pub(crate) fn zeroed(elems: usize, what: &str) -> Result<Vec<f32>> {
    if elems == 0 {
        return Ok(Vec::new());
    }
    let oom = || {
        crate::out_of_memory::handled();
        Error::OutOfMemory { what: what.to_string(), bytes: elems.saturating_mul(4) }
    };
    let layout = std::alloc::Layout::array::<f32>(elems).map_err(|_| oom())?;
    // SAFETY: the layout has a non-zero size (elems > 0).
    let ptr = unsafe { std::alloc::alloc_zeroed(layout) } as *mut f32;
    if ptr.is_null() {
        return Err(oom());
    }
    // SAFETY: allocated by the global allocator with exactly this layout (`elems` f32s, so length
    // and capacity `elems`), and all-zero bits are a valid f32 (0.0) for every element.
    let mut v = unsafe { Vec::from_raw_parts(ptr, elems, elems) };
    crate::huge_pages::advise(&mut v);
    Ok(v)
}

impl Buffers {
    /// Empty buffers for convolutions on `isa` (one of [`Isa::available_for`] some precision).
    pub fn new(isa: Isa) -> Buffers {
        Buffers { arena: Vec::new(), workspace: Vec::new(), packed: packed::Packed::default(), isa }
    }

    /// Pack `graph`'s weights unless they are packed already; true when it packed (a model
    /// other than the last one run).
    pub fn prepare(&mut self, graph: &Graph) -> Result<bool> {
        self.packed.prepare(graph, self.isa)
    }

    /// Bytes of the arena, the workspace and the packed weights.
    pub fn allocated_bytes(&self) -> usize {
        (self.arena.capacity() + self.workspace.capacity()) * 4 + self.packed.allocated_bytes()
    }
}

/// Execute `graph` on `input` inside the memory `plan` (made for the input's size). With
/// `poison`, the arena starts as NaN and every buffer is filled with NaN when its last reader is
/// done, and an action that reads a NaN fails: a read of memory freed or never written shows.
pub fn run_planned(
    graph: &Graph,
    plan: &ArenaPlan,
    input: &Tensor,
    bufs: &mut Buffers,
    poison: bool,
) -> Result<Tensor> {
    run_planned_timed(graph, plan, input, bufs, poison, None)
}

/// [`run_planned`], also writing each node's wall time in seconds into `times` (one entry per
/// graph node) when given: what `seamless bench` reports per layer.
pub fn run_planned_timed(
    graph: &Graph,
    plan: &ArenaPlan,
    input: &Tensor,
    bufs: &mut Buffers,
    poison: bool,
    mut times: Option<&mut [f64]>,
) -> Result<Tensor> {
    assert_eq!((plan.h, plan.w), (input.h, input.w), "plan made for another size");
    reserve(&mut bufs.arena, plan.arena_elems, "activation arena")?;
    let isa = bufs.isa;
    reserve(&mut bufs.workspace, workspace_elems(graph, plan, isa), "convolution workspace")?;
    bufs.prepare(graph)?;
    let Buffers { arena, workspace, packed, .. } = bufs;
    let arena = &mut arena[..plan.arena_elems];
    if poison {
        arena.fill(f32::NAN);
    }
    let profile = crate::profile::enabled();
    crate::profile::begins(&format!("a {}x{} window", input.w, input.h));
    for step in Steps::new(graph, plan)? {
        let step = step?;
        let t0 = std::time::Instant::now();
        let (i, node) = (step.node, &graph.nodes[step.node]);
        let sh = plan.shapes[i];
        let check = |x: &[f32]| {
            if poison && x.iter().any(|v| v.is_nan()) {
                return Err(Error::Backend(format!(
                    "node {i} '{}' read poisoned (freed or never written) memory",
                    node.name
                )));
            }
            Ok(())
        };
        for &action in &step.actions {
            match action {
                Action::Input { dst } => arena[dst.range()].copy_from_slice(&input.data),
                Action::Copy { src, dst } => {
                    let (x, out) = apart(arena, src, dst);
                    check(x)?;
                    out.copy_from_slice(x);
                }
                Action::Launch { src, dst } => {
                    let (x, out) = apart(arena, src, dst);
                    check(x)?;
                    let xs = plan.shapes[node.inputs[0]];
                    launch(&node.op, View::new(xs.c, xs.h, xs.w, x), out, sh, packed.of(i), workspace, isa);
                }
                Action::InPlace { slot } => {
                    let data = &mut arena[slot.range()];
                    check(data)?;
                    in_place(&node.op, data, sh);
                }
            }
        }
        if let Some(t) = times.as_deref_mut() {
            t[i] = t0.elapsed().as_secs_f64();
        }
        if profile {
            eprintln!("{:>9.3} ms  {:<40} {:?}", t0.elapsed().as_secs_f64() * 1e3, node.name, (sh.c, sh.h, sh.w));
        }
        if poison {
            for s in &step.freed {
                arena[s.range()].fill(f32::NAN);
            }
        }
    }
    let (out, sh) = (plan.slots[graph.output], plan.shapes[graph.output]);
    if poison && arena[out.range()].iter().any(|v| v.is_nan()) {
        return Err(Error::Backend("the output holds poisoned (freed or never written) memory".into()));
    }
    Ok(Tensor::from_vec(sh.c, sh.h, sh.w, arena[out.range()].to_vec()))
}

/// `src` to read and `dst` to write, borrowed from one arena: the step they come from has been
/// checked to keep them apart (were they not, the slicing here would panic, never alias).
fn apart(arena: &mut [f32], src: Slot, dst: Slot) -> (&[f32], &mut [f32]) {
    if src.offset < dst.offset {
        let (lo, hi) = arena.split_at_mut(dst.offset);
        (&lo[src.range()], &mut hi[..dst.len])
    } else {
        let (lo, hi) = arena.split_at_mut(src.offset);
        (&hi[..src.len], &mut lo[dst.range()])
    }
}

/// Run a one-input op reading `x` and writing all of `out` (of shape `sh`).
#[allow(clippy::too_many_arguments)]
fn launch(op: &Op, x: View, out: &mut [f32], sh: Shape, packed: &[f32], ws: &mut [f32], isa: Isa) {
    match op {
        Op::Conv2d(c) => conv::conv2d_into(x, c, packed, out, ws, isa),
        Op::ConvTranspose2d(c) => conv_transpose::conv_transpose2d_into(x, c, packed, out, ws, isa),
        Op::MaxPool2 => pool::max_pool2_into(x, out),
        Op::Upsample2(mode) => upsample::upsample2_into(x, *mode, out),
        Op::Softmax => softmax::softmax_into(x, out),
        Op::Argmax => softmax::argmax_into(x, out),
        // Not in place: the in-place kernel over a copy, the same arithmetic.
        Op::ScaleShift(_) | Op::Relu | Op::BatchNorm(_) | Op::Dropout => {
            out.copy_from_slice(x.data);
            in_place(op, out, sh);
        }
        Op::Input { .. } | Op::Concat => unreachable!("{} is no one-input op", op.kind()),
    }
}

/// Run an elementwise op over `data` (of shape `sh`), overwriting it.
fn in_place(op: &Op, data: &mut [f32], sh: Shape) {
    match op {
        Op::ScaleShift(s) => elementwise::scale_shift_inplace(data, sh.h * sh.w, &s.scale, &s.shift, s.relu),
        Op::Relu => elementwise::relu_inplace(data),
        Op::BatchNorm(bn) => {
            let (scale, shift) = bn_f32(bn);
            elementwise::scale_shift_inplace(data, sh.h * sh.w, &scale, &shift, false)
        }
        Op::Dropout => {}
        other => unreachable!("{} is not elementwise", other.kind()),
    }
}

fn bn_f32(bn: &crate::graph::BatchNorm) -> (Vec<f32>, Vec<f32>) {
    let (scale, shift) = bn.scale_shift();
    (scale.iter().map(|&v| v as f32).collect(), shift.iter().map(|&v| v as f32).collect())
}

/// Run one node on its inputs, allocating its output.
pub fn run_op(op: &Op, ins: &[&Tensor]) -> Tensor {
    match op {
        Op::Input { .. } => ins[0].clone(),
        Op::Conv2d(c) => conv::conv2d(ins[0], c),
        Op::ConvTranspose2d(c) => conv_transpose::conv_transpose2d(ins[0], c),
        Op::BatchNorm(bn) => {
            let (scale, shift) = bn_f32(bn);
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

/// Execute `graph` on `input` with the memory plan for its size.
pub fn run(graph: &Graph, input: &Tensor) -> Result<(Tensor, RunStats)> {
    let plan = ArenaPlan::new(graph, input.h, input.w)?;
    let mut bufs = Buffers::default();
    let out = run_planned(graph, &plan, input, &mut bufs, false)?;
    let stats = RunStats { allocated_bytes: bufs.allocated_bytes(), peak_activation_bytes: plan.arena_elems * 4 };
    Ok((out, stats))
}

/// The plainest executor: a fresh tensor per node, dropped after its last reader. The reference
/// the planned executor is tested against.
pub fn run_unplanned(graph: &Graph, input: &Tensor) -> Result<(Tensor, RunStats)> {
    graph.shapes(input.h, input.w)?;
    let last = graph.last_use();
    let mut values: Vec<Option<Tensor>> = vec![None; graph.nodes.len()];
    let mut live = 0usize;
    let mut stats = RunStats::default();
    for (i, node) in graph.nodes.iter().enumerate() {
        let out = if i == 0 {
            input.clone()
        } else {
            let ins: Vec<&Tensor> = node.inputs.iter().map(|&j| values[j].as_ref().expect("live input")).collect();
            run_op(&node.op, &ins)
        };
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
    stats.allocated_bytes = stats.peak_activation_bytes;
    Ok((values[graph.output].take().expect("output computed"), stats))
}

// The bounds checks exist only where debug assertions are on.
#[cfg(all(test, debug_assertions))]
mod tests {
    use super::DisjointOut;

    #[test]
    #[should_panic(expected = "outside 4")]
    fn disjoint_out_refuses_an_access_past_its_buffer_in_debug_builds() {
        let mut buf = [0.0f32; 4];
        let out = DisjointOut::new(&mut buf);
        // SAFETY: not sound as a call (it reaches past the buffer), which is the point: the
        // debug assertion panics before the pointer is formed or used.
        let _ = unsafe { out.slice(2, 3) };
    }
}
