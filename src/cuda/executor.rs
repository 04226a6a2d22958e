//! The device side of one forward pass: one arena laid out by the memory plan, walked node by node
//! as [`Schedule`] says, and the transfers around it on their own streams.
//!
//! Device memory is exactly what the planner's `MemoryModel::Device` counts: the arena of the
//! largest plan run so far, the parameters, one input and one output staging buffer. Nothing is
//! allocated per node or per tile; the buffers grow (after draining every stream) only when a
//! larger window arrives.
//!
//! Three streams, ordered by four events, so that tile k+1's upload and tile k-1's download overlap
//! tile k's compute:
//!
//! ```text
//! upload:   wait(input_free)  pinned -> staging_in          record(uploaded)
//! compute:  wait(uploaded)    staging_in -> arena input     record(input_free)
//!           every node in the arena
//!           wait(output_free) arena output -> staging_out   record(computed)
//! download: wait(computed)    staging_out -> pinned         record(output_free)
//! ```
//!
//! One staging buffer per direction is enough: the compute stream empties `staging_in` with its
//! first copy, long before the next upload could need it, and fills `staging_out` with its last,
//! long after the previous download emptied it. Host buffers are page-locked and owned by the tile
//! whose data they hold until it is collected, so tiles in flight never share one.

use std::collections::HashMap;
use std::sync::Arc;

use cudarc::driver::{
    CudaContext, CudaEvent, CudaSlice, CudaStream, CudaView, CudaViewMut, DriverError, PinnedHostSlice, sys,
};

use super::driver_err;
use super::kernels::Kernels;
use super::ops;
use super::storage::Storage;
use super::weights::{GraphParams, LayerParams, fingerprint};
use crate::error::{Error, Result};
use crate::graph::{Graph, Op, Shape};
use crate::planner::{Action, ArenaPlan, Schedule, Slot};
use crate::tensor::Tensor;

/// A failed device allocation: `Error::OutOfMemory` when the device is full (the streaming runner
/// then retries the tile as smaller tiles), a backend error otherwise.
pub(crate) fn alloc_err(what: String, bytes: usize) -> impl FnOnce(DriverError) -> Error {
    move |e| match e.0 {
        sys::cudaError_enum::CUDA_ERROR_OUT_OF_MEMORY => Error::OutOfMemory { what, bytes },
        _ => Error::Cuda { context: format!("allocating {what} ({bytes} bytes)"), source: e },
    }
}

/// The three streams of one backend.
pub(crate) struct Streams {
    pub compute: Arc<CudaStream>,
    pub upload: Arc<CudaStream>,
    pub download: Arc<CudaStream>,
}

impl Streams {
    pub fn new(ctx: &Arc<CudaContext>) -> Result<Streams> {
        let s = || ctx.new_stream().map_err(driver_err("creating a stream"));
        Ok(Streams { compute: s()?, upload: s()?, download: s()? })
    }

    pub fn synchronize(&self) -> Result<()> {
        for s in [&self.upload, &self.compute, &self.download] {
            s.synchronize().map_err(driver_err("synchronize"))?;
        }
        Ok(())
    }
}

struct Events {
    uploaded: CudaEvent,
    input_free: CudaEvent,
    computed: CudaEvent,
    output_free: CudaEvent,
}

impl Events {
    fn new(ctx: &Arc<CudaContext>) -> Result<Events> {
        // Timing disabled: these only order streams, and such events are cheaper to record.
        let e = || ctx.new_event(None).map_err(driver_err("creating an event"));
        Ok(Events { uploaded: e()?, input_free: e()?, computed: e()?, output_free: e()? })
    }
}

/// A page-locked host buffer and the event recorded after the last copy that uses it. The backend
/// runs with cudarc's per-buffer event tracking off (backend.rs), so nothing else orders the host
/// against these copies: the host touches the memory only through [`Pinned::host`], which first
/// waits for that event, and dropping the buffer waits for it too.
struct Pinned<T> {
    buf: PinnedHostSlice<T>,
    last_copy: CudaEvent,
}

impl<T: Storage> Pinned<T> {
    /// The memory, once the last copy queued on it has completed.
    fn host(&mut self) -> Result<&mut [T]> {
        self.last_copy.synchronize().map_err(driver_err("waiting for a pinned buffer's copy"))?;
        self.buf.as_mut_slice().map_err(driver_err("pinned buffer"))
    }

    /// Mark the copy just queued on `stream` as the buffer's last use.
    fn used_by(&self, stream: &CudaStream) -> Result<()> {
        self.last_copy.record(stream).map_err(driver_err("event record"))
    }
}

impl<T> Drop for Pinned<T> {
    fn drop(&mut self) {
        // The copy may still be reading or writing the memory that is about to be freed.
        let _ = self.last_copy.synchronize();
    }
}

/// Page-locked host buffers by length. cudarc copies a pinned buffer whole, so each must have
/// exactly the window's length; a tile grid has few distinct window sizes (interior, right and
/// bottom edges, corner), so a handful serve a whole image.
struct PinnedPool<T> {
    free: HashMap<usize, Vec<Pinned<T>>>,
}

impl<T: Storage> PinnedPool<T> {
    fn new() -> Self {
        PinnedPool { free: HashMap::new() }
    }

    fn take(&mut self, ctx: &Arc<CudaContext>, len: usize) -> Result<Pinned<T>> {
        if let Some(buf) = self.free.get_mut(&len).and_then(Vec::pop) {
            return Ok(buf);
        }
        // SAFETY: the memory starts uninitialised; the host fills an input buffer before copying
        // it, and an output buffer is read only after the device copy into it has completed
        // (Pinned::host). Flags 0: ordinary cached pinned memory, since the host reads outputs back
        // (write-combined would make that slow).
        let buf = unsafe { ctx.alloc_pinned_with_flags::<T>(len, 0) }.map_err(driver_err("pinned host allocation"))?;
        let last_copy = ctx.new_event(None).map_err(driver_err("creating an event"))?;
        Ok(Pinned { buf, last_copy })
    }

    fn give_back(&mut self, buf: Pinned<T>) {
        if self.free.len() >= 8 && !self.free.contains_key(&buf.buf.len()) {
            self.free.clear();
        }
        let list = self.free.entry(buf.buf.len()).or_default();
        if list.len() < 2 {
            list.push(buf);
        }
    }
}

/// A plan and the steps that follow it, for one window size.
pub(crate) struct Planned {
    pub plan: ArenaPlan,
    pub schedule: Schedule,
}

/// Bytes this backend holds on the device, by purpose.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct DeviceBytes {
    pub arena: usize,
    pub weights: usize,
    pub staging: usize,
}

impl DeviceBytes {
    pub fn total(&self) -> usize {
        self.arena + self.weights + self.staging
    }
}

/// A tile whose output is on its way to the host.
pub(crate) struct Pending<T> {
    out: Pinned<T>,
    shape: Shape,
}

/// Events around the compute of one pass (input copy into the arena to output copy out of it) and,
/// optionally, around every node: what `seamless bench --backend cuda` times.
pub struct NodeTimer {
    whole: (CudaEvent, CudaEvent),
    nodes: Vec<(CudaEvent, CudaEvent)>,
}

impl NodeTimer {
    /// Per-node marks for a graph of `nodes` nodes (the graph the backend runs), or none (0): a
    /// whole-pass timing then has no event records between the kernels.
    pub fn new(ctx: &Arc<CudaContext>, nodes: usize) -> Result<NodeTimer> {
        let e = || ctx.new_event(Some(sys::CUevent_flags::CU_EVENT_DEFAULT)).map_err(driver_err("creating an event"));
        Ok(NodeTimer { whole: (e()?, e()?), nodes: (0..nodes).map(|_| Ok((e()?, e()?))).collect::<Result<_>>()? })
    }

    /// Milliseconds of the last timed pass's compute, waiting for it to finish.
    pub fn whole_ms(&self) -> Result<f64> {
        self.whole.0.elapsed_ms(&self.whole.1).map(f64::from).map_err(driver_err("reading an event timer"))
    }

    /// Milliseconds per node of the last timed pass (0 for nodes with nothing to do).
    pub fn node_ms(&self) -> Result<Vec<f64>> {
        self.nodes
            .iter()
            .map(|(a, b)| a.elapsed_ms(b).map(f64::from).map_err(driver_err("reading an event timer")))
            .collect()
    }
}

/// Everything one precision keeps on the device between tiles.
pub(crate) struct Exec<T: Storage> {
    /// Fingerprint of the graph given to the backend, and the graph really run (fused conv pre-ops
    /// split), kept so that its parameters keep their addresses and are uploaded once.
    graph: Option<(blake3::Hash, Arc<Graph>)>,
    params: Option<GraphParams<T>>,
    plans: HashMap<(usize, usize), Arc<Planned>>,
    arena: Option<CudaSlice<T>>,
    staging_in: Option<CudaSlice<T>>,
    staging_out: Option<CudaSlice<T>>,
    pinned_in: PinnedPool<T>,
    pinned_out: PinnedPool<T>,
    events: Events,
}

fn len_of<T>(b: &Option<CudaSlice<T>>) -> usize {
    b.as_ref().map_or(0, CudaSlice::len)
}

/// `buf` with at least `len` elements: reallocated to exactly `len` when smaller. The caller has
/// drained every stream that may still use the old buffer.
fn grow<T: Storage>(s: &Arc<CudaStream>, buf: &mut Option<CudaSlice<T>>, len: usize, what: &str) -> Result<()> {
    if len_of(buf) >= len {
        return Ok(());
    }
    *buf = None; // free first: the old and the new buffer need not both fit
    let bytes = len * std::mem::size_of::<T>();
    // SAFETY: uninitialised memory. The arena schedule writes every value before reading it
    // (tests/arena_steps.rs checks this with NaN-poisoned memory); staging buffers are written by
    // a copy before each read.
    *buf = Some(unsafe { s.alloc::<T>(len) }.map_err(alloc_err(what.to_string(), bytes))?);
    Ok(())
}

/// Views of `src` (to read) and `dst` (to write) inside one arena, for disjoint regions.
fn with_disjoint<T, R>(
    arena: &mut CudaSlice<T>,
    src: Slot,
    dst: Slot,
    f: impl for<'v> FnOnce(&CudaView<'v, T>, &mut CudaViewMut<'v, T>) -> Result<R>,
) -> Result<R> {
    if src.end() <= dst.offset {
        let (lo, mut hi) = arena.split_at_mut(dst.offset);
        let x = lo.slice(src.offset..src.end());
        let mut out = hi.slice_mut(0..dst.len);
        f(&x, &mut out)
    } else if dst.end() <= src.offset {
        let (mut lo, hi) = arena.split_at_mut(dst.end());
        let mut out = lo.slice_mut(dst.offset..dst.end());
        let x = hi.slice(src.offset - dst.end()..src.end() - dst.end());
        f(&x, &mut out)
    } else {
        Err(Error::Backend(format!("internal: {src:?} and {dst:?} overlap")))
    }
}

impl<T: Storage> Exec<T> {
    pub fn new(ctx: &Arc<CudaContext>) -> Result<Self> {
        Ok(Exec {
            graph: None,
            params: None,
            plans: HashMap::new(),
            arena: None,
            staging_in: None,
            staging_out: None,
            pinned_in: PinnedPool::new(),
            pinned_out: PinnedPool::new(),
            events: Events::new(ctx)?,
        })
    }

    pub fn allocated(&self) -> DeviceBytes {
        let size = std::mem::size_of::<T>();
        DeviceBytes {
            arena: len_of(&self.arena) * size,
            weights: self.params.as_ref().map_or(0, |p| p.bytes),
            staging: (len_of(&self.staging_in) + len_of(&self.staging_out)) * size,
        }
    }

    /// The graph to run for `graph` (split when it has fused pre-ops), with its parameters on the
    /// device. A different graph drops the old parameters and plans first.
    pub fn prepare(&mut self, streams: &Streams, graph: &Graph) -> Result<Arc<Graph>> {
        let key = fingerprint(graph);
        if let Some((k, g)) = &self.graph
            && *k == key
            && self.params.is_some()
        {
            return Ok(g.clone());
        }
        streams.synchronize()?; // tiles of the old graph may still read its parameters
        self.plans.clear();
        self.params = None;
        let run = Arc::new(super::memory::lower(graph).into_owned());
        self.graph = Some((key, run.clone()));
        self.params = Some(GraphParams::upload(&streams.compute, &run)?);
        Ok(run)
    }

    pub fn planned(&mut self, graph: &Graph, h: usize, w: usize) -> Result<Arc<Planned>> {
        if let Some(p) = self.plans.get(&(h, w)) {
            return Ok(p.clone());
        }
        let plan = ArenaPlan::new(graph, h, w)?;
        let schedule = Schedule::new(graph, &plan)?;
        let p = Arc::new(Planned { plan, schedule });
        if self.plans.len() >= 16 {
            self.plans.clear();
        }
        self.plans.insert((h, w), p.clone());
        Ok(p)
    }

    /// Make the arena and staging buffers big enough for `p`, draining the streams first when
    /// one of them must be reallocated.
    fn reserve(&mut self, streams: &Streams, p: &Planned) -> Result<()> {
        let (arena, n_in, n_out) = (p.schedule.arena_elems, p.schedule.input.len, p.schedule.output.len);
        if len_of(&self.arena) >= arena && len_of(&self.staging_in) >= n_in && len_of(&self.staging_out) >= n_out {
            return Ok(());
        }
        streams.synchronize()?;
        let s = &streams.compute;
        grow(s, &mut self.arena, arena, &format!("the activation arena of a {}x{} window", p.plan.w, p.plan.h))?;
        grow(s, &mut self.staging_in, n_in, "the input staging buffer")?;
        grow(s, &mut self.staging_out, n_out, "the output staging buffer")?;
        // Stream-ordered allocations belong to the compute stream until it passes them; the
        // upload and download streams touch the staging buffers next.
        s.synchronize().map_err(driver_err("synchronize"))
    }

    /// Queue one window on the three streams and return at once; [`Self::collect`] gives its
    /// output. `graph` is what [`Self::prepare`] returned.
    pub fn enqueue(
        &mut self,
        ctx: &Arc<CudaContext>,
        streams: &Streams,
        kernels: &Kernels,
        graph: &Graph,
        input: &Tensor,
        mut timer: Option<&mut NodeTimer>,
    ) -> Result<Pending<T>> {
        let p = self.planned(graph, input.h, input.w)?;
        let (sched, shapes) = (&p.schedule, &p.plan.shapes);
        if input.data.len() != sched.input.len {
            return Err(Error::Shape(format!(
                "the window has {} channel(s), the model expects {}",
                input.c, shapes[0].c
            )));
        }
        self.reserve(streams, &p)?;
        let (n_in, n_out) = (sched.input.len, sched.output.len);
        let Exec { arena, staging_in, staging_out, params, pinned_in, pinned_out, events: ev, .. } = self;
        let (arena, staging_in, staging_out) = (
            arena.as_mut().expect("reserved"),
            staging_in.as_mut().expect("reserved"),
            staging_out.as_mut().expect("reserved"),
        );
        let params = params.as_ref().expect("prepared");
        let c = &streams.compute;

        // Upload: the host converts into a page-locked buffer (once this buffer's previous upload
        // is done), the copy waits until the last tile took its input.
        let mut pin_in = pinned_in.take(ctx, n_in)?;
        for (d, &v) in pin_in.host()?.iter_mut().zip(&input.data) {
            *d = T::from_f32(v);
        }
        streams.upload.wait(&ev.input_free).map_err(driver_err("stream wait"))?;
        streams.upload.memcpy_htod(&pin_in.buf, &mut staging_in.slice_mut(0..n_in)).map_err(driver_err("upload"))?;
        pin_in.used_by(&streams.upload)?;
        ev.uploaded.record(&streams.upload).map_err(driver_err("event record"))?;
        pinned_in.give_back(pin_in);

        // Compute.
        c.wait(&ev.uploaded).map_err(driver_err("stream wait"))?;
        if let Some(t) = timer.as_deref_mut() {
            t.whole.0.record(c).map_err(driver_err("event record"))?;
        }
        let per_node = timer.as_ref().is_some_and(|t| t.nodes.len() == sched.steps.len());
        for step in &sched.steps {
            let node = &graph.nodes[step.node];
            if let Some(t) = timer.as_deref_mut().filter(|_| per_node) {
                t.nodes[step.node].0.record(c).map_err(driver_err("event record"))?;
            }
            for action in &step.actions {
                match *action {
                    Action::Input { dst } => {
                        c.memcpy_dtod(&staging_in.slice(0..n_in), &mut arena.slice_mut(dst.offset..dst.end()))
                            .map_err(driver_err("copying the input into the arena"))?;
                        ev.input_free.record(c).map_err(driver_err("event record"))?;
                    }
                    Action::Copy { src, dst } => with_disjoint(arena, src, dst, |x, out| {
                        c.memcpy_dtod(x, out).map_err(driver_err("copying in the arena"))
                    })?,
                    Action::Launch { src, dst } => with_disjoint(arena, src, dst, |x, out| {
                        launch_op(kernels, c, &node.op, &params.layers[step.node], x, shapes[node.inputs[0]], out)
                    })?,
                    Action::InPlace { slot } => {
                        let x = &mut arena.slice_mut(slot.offset..slot.end());
                        launch_in_place(kernels, c, &node.op, &params.layers[step.node], x, shapes[step.node])?;
                    }
                }
            }
            if let Some(t) = timer.as_deref_mut().filter(|_| per_node) {
                t.nodes[step.node].1.record(c).map_err(driver_err("event record"))?;
            }
        }
        let out = sched.output;
        c.wait(&ev.output_free).map_err(driver_err("stream wait"))?;
        c.memcpy_dtod(&arena.slice(out.offset..out.end()), &mut staging_out.slice_mut(0..n_out))
            .map_err(driver_err("copying the output out of the arena"))?;
        ev.computed.record(c).map_err(driver_err("event record"))?;
        if let Some(t) = timer {
            t.whole.1.record(c).map_err(driver_err("event record"))?;
        }

        // Download into a page-locked buffer this tile owns until it is collected.
        let mut pin_out = pinned_out.take(ctx, n_out)?;
        streams.download.wait(&ev.computed).map_err(driver_err("stream wait"))?;
        streams.download.memcpy_dtoh(&staging_out.slice(0..n_out), &mut pin_out.buf).map_err(driver_err("download"))?;
        pin_out.used_by(&streams.download)?;
        ev.output_free.record(&streams.download).map_err(driver_err("event record"))?;
        Ok(Pending { out: pin_out, shape: shapes[graph.output] })
    }

    /// Wait for a queued tile's output and convert it to f32.
    pub fn collect(&mut self, ctx: &Arc<CudaContext>, mut p: Pending<T>) -> Result<Tensor> {
        let data: Vec<f32> = p.out.host()?.iter().map(|&v| v.to_f32()).collect();
        self.pinned_out.give_back(p.out);
        ctx.check_err().map_err(driver_err("deferred error"))?;
        let o = p.shape;
        Ok(Tensor::from_vec(o.c, o.h, o.w, data))
    }
}

/// Launch the kernel for a one-input op, reading `x` and writing all of `out`.
pub(crate) fn launch_op<'v, T: Storage>(
    k: &Kernels,
    s: &Arc<CudaStream>,
    op: &Op,
    params: &LayerParams<T>,
    x: &CudaView<'v, T>,
    xs: Shape,
    out: &mut CudaViewMut<'v, T>,
) -> Result<()> {
    match (op, params) {
        (Op::Conv2d(c), LayerParams::Conv { weight, bias }) => ops::Conv { c, weight, bias, x, out, xs }.launch(k, s),
        (Op::ConvTranspose2d(c), LayerParams::ConvTranspose { weight, bias }) => {
            ops::ConvTranspose { c, weight, bias, x, out, xs }.launch(k, s)
        }
        (Op::BatchNorm(_) | Op::ScaleShift(_), LayerParams::ScaleShift { scale, shift, relu }) => {
            ops::ScaleShift { scale, shift, relu: *relu, x: Some(x), out, xs }.launch(k, s)
        }
        (Op::Relu, _) => ops::Relu { x: Some(x), out }.launch(k, s),
        (Op::MaxPool2, _) => ops::MaxPool2 { x, out, xs }.launch(k, s),
        (Op::Upsample2(mode), _) => ops::Upsample2 { mode: *mode, x, out, xs }.launch(k, s),
        (Op::Softmax, _) => ops::Softmax { argmax: false, x, out, xs }.launch(k, s),
        (Op::Argmax, _) => ops::Softmax { argmax: true, x, out, xs }.launch(k, s),
        (Op::Input { .. } | Op::Dropout, _) => ops::CopyInto { x, out, offset: 0 }.launch(k, s),
        (op, _) => {
            Err(Error::Backend(format!("internal: no one-input kernel with these parameters for {}", op.kind())))
        }
    }
}

/// Launch an elementwise op over `x` in place (`shape` is its value's shape).
fn launch_in_place<T: Storage>(
    k: &Kernels,
    s: &Arc<CudaStream>,
    op: &Op,
    params: &LayerParams<T>,
    x: &mut CudaViewMut<'_, T>,
    shape: Shape,
) -> Result<()> {
    match (op, params) {
        (Op::BatchNorm(_) | Op::ScaleShift(_), LayerParams::ScaleShift { scale, shift, relu }) => {
            ops::ScaleShift { scale, shift, relu: *relu, x: None, out: x, xs: shape }.launch(k, s)
        }
        (Op::Relu, _) => ops::Relu { x: None, out: x }.launch(k, s),
        (op, _) => Err(Error::Backend(format!("internal: {} has no in-place kernel", op.kind()))),
    }
}
