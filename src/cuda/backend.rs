//! [`CudaBackend`]: runs a graph on one GPU, node by node, in f32 or f16.
//!
//! Per backend: one context, one stream, the kernels loaded once, the model's parameters uploaded
//! once (and again only when a different graph arrives), and pinned host staging buffers reused
//! across tiles. Per tile: the window is converted to the storage type into pinned memory and
//! copied asynchronously, every node is launched on the stream with activations freed after their
//! last reader, and the output is copied back into pinned memory; the stream is synchronised once.

use std::collections::HashMap;
use std::rc::Rc;
use std::sync::{Arc, Mutex};

use cudarc::driver::{CudaContext, CudaSlice, CudaStream, PinnedHostSlice};
use half::f16;

use super::device::{self, DeviceInfo};
use super::kernels::{self, FamilyReport, Kernels};
use super::storage::Storage;
use super::weights::{GraphParams, LayerParams, fingerprint};
use super::{Precision, libs};
use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::graph::{Graph, Op, Shape};
use crate::tensor::Tensor;

fn driver_err(what: &'static str) -> impl Fn(cudarc::driver::DriverError) -> Error {
    move |e| Error::Backend(format!("CUDA: {what}: {e}"))
}

/// What one precision keeps between tiles.
struct State<T: Storage> {
    params: Option<GraphParams<T>>,
    pinned_in: Pinned<T>,
    pinned_out: Pinned<T>,
}

impl<T: Storage> State<T> {
    fn new() -> Self {
        State { params: None, pinned_in: Pinned::default(), pinned_out: Pinned::default() }
    }
}

/// Pinned host buffers by length. cudarc copies a pinned buffer whole, so each must have exactly
/// the tensor's length; a tile grid has few distinct window sizes (interior, right and bottom
/// edges, corner), so a handful of buffers serve a whole image.
struct Pinned<T> {
    by_len: HashMap<usize, PinnedHostSlice<T>>,
}

impl<T> Default for Pinned<T> {
    fn default() -> Self {
        Pinned { by_len: HashMap::new() }
    }
}

impl<T: Storage> Pinned<T> {
    fn get(&mut self, ctx: &Arc<CudaContext>, len: usize) -> Result<&mut PinnedHostSlice<T>> {
        if !self.by_len.contains_key(&len) {
            if self.by_len.len() >= 8 {
                self.by_len.clear();
            }
            // SAFETY: the memory starts uninitialised; callers write all of it (host side, or by a
            // device copy they wait for) before reading it. Flags 0: ordinary cached pinned
            // memory, since the host reads outputs back (write-combined would make that slow).
            let buf = unsafe { ctx.alloc_pinned_with_flags::<T>(len, 0) }.map_err(driver_err("pinned allocation"))?;
            self.by_len.insert(len, buf);
        }
        Ok(self.by_len.get_mut(&len).expect("inserted above"))
    }
}

enum PrecisionState {
    F32(Mutex<State<f32>>),
    F16(Mutex<State<f16>>),
}

pub struct CudaBackend {
    precision: Precision,
    info: DeviceInfo,
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    kernels: Kernels,
    reports: Vec<FamilyReport>,
    state: PrecisionState,
}

impl CudaBackend {
    /// Open device `ordinal`, compile (or load from the cache) every kernel for its architecture.
    /// Fails with an error saying what is missing when there is no driver, no NVRTC or no device.
    pub fn new(ordinal: usize, precision: Precision) -> Result<CudaBackend> {
        libs::require_cuda()?;
        let (ctx, info) = device::open(ordinal)?;
        // SAFETY: every buffer this backend allocates is used on its own single stream only, so
        // cudarc's per-buffer events (which order uses across streams) are not needed.
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx.new_stream().map_err(driver_err("creating a stream"))?;
        let (kernels, reports) = Kernels::load(&ctx, &info.arch())?;
        let state = match precision {
            Precision::F32 => PrecisionState::F32(Mutex::new(State::new())),
            Precision::F16 => PrecisionState::F16(Mutex::new(State::new())),
        };
        Ok(CudaBackend { precision, info, ctx, stream, kernels, reports, state })
    }

    pub fn info(&self) -> &DeviceInfo {
        &self.info
    }

    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// How each kernel family was obtained when this backend started (compiled or cached).
    pub fn kernel_reports(&self) -> &[FamilyReport] {
        &self.reports
    }

    /// Run one op on host tensors and return its output: the hook the kernel tests use to compare
    /// each kernel with its CPU twin. With `poison`, the output buffer is first filled with NaN,
    /// so a result free of NaN shows that the kernel wrote every element.
    pub fn run_op(&self, op: &Op, ins: &[&Tensor], poison: bool) -> Result<Tensor> {
        match &self.state {
            PrecisionState::F32(_) => self.run_op_as::<f32>(op, ins, poison),
            PrecisionState::F16(_) => self.run_op_as::<f16>(op, ins, poison),
        }
    }

    fn run_op_as<T: Storage>(&self, op: &Op, ins: &[&Tensor], poison: bool) -> Result<Tensor> {
        let s = &self.stream;
        let params = LayerParams::<T>::upload(s, op)?;
        let mut bufs = Vec::with_capacity(ins.len());
        for t in ins {
            let host: Vec<T> = t.data.iter().map(|&v| T::from_f32(v)).collect();
            bufs.push(s.clone_htod(&host).map_err(driver_err("upload"))?);
        }
        let in_shapes: Vec<Shape> = ins.iter().map(|t| Shape { c: t.c, h: t.h, w: t.w }).collect();
        let o = out_shape(op, &in_shapes);
        let n = o.c * o.h * o.w;
        let mut out = if poison {
            s.clone_htod(&vec![T::from_f32(f32::NAN); n]).map_err(driver_err("upload"))?
        } else {
            s.alloc_zeros::<T>(n).map_err(driver_err("allocation"))?
        };
        let refs: Vec<&CudaSlice<T>> = bufs.iter().collect();
        launch_op(&self.kernels, s, op, &params, &refs, &in_shapes, &mut out)?;
        let host = s.clone_dtoh(&out).map_err(driver_err("download"))?;
        s.synchronize().map_err(driver_err("synchronize"))?;
        Ok(Tensor::from_vec(o.c, o.h, o.w, host.into_iter().map(T::to_f32).collect()))
    }

    fn execute<T: Storage>(&self, st: &mut State<T>, graph: &Graph, input: &Tensor) -> Result<Tensor> {
        let shapes = graph.shapes(input.h, input.w)?;
        let s = &self.stream;
        if st.params.as_ref().map(|p| p.fingerprint) != Some(fingerprint(graph)) {
            st.params = None; // free the old model's weights before uploading the new ones
            st.params = Some(GraphParams::upload(s, graph)?);
        }
        let params = st.params.as_ref().expect("uploaded above");
        let last = graph.last_use();
        let mut values: Vec<Option<Rc<CudaSlice<T>>>> = vec![None; graph.nodes.len()];
        for (i, node) in graph.nodes.iter().enumerate() {
            let o = shapes[i];
            let out = match &node.op {
                Op::Input { .. } => Rc::new(upload_pinned(&self.ctx, s, &mut st.pinned_in, input)?),
                Op::Dropout => values[node.inputs[0]].clone().expect("live input"),
                op => {
                    let ins: Vec<&CudaSlice<T>> =
                        node.inputs.iter().map(|&j| values[j].as_deref().expect("live input")).collect();
                    let in_shapes: Vec<Shape> = node.inputs.iter().map(|&j| shapes[j]).collect();
                    // SAFETY: uninitialised memory; the kernel launched next writes every element
                    // (the poisoned-output tests check this for every kernel).
                    let mut out = unsafe { s.alloc::<T>(o.c * o.h * o.w) }.map_err(driver_err("allocation"))?;
                    launch_op(&self.kernels, s, op, &params.layers[i], &ins, &in_shapes, &mut out)?;
                    Rc::new(out)
                }
            };
            values[i] = Some(out);
            for &j in &node.inputs {
                if last[j] == i {
                    values[j] = None;
                }
            }
        }
        let out = values[graph.output].take().expect("output computed");
        let o = shapes[graph.output];
        let data = download_pinned(&self.ctx, s, &mut st.pinned_out, &out)?;
        drop(out);
        self.ctx.check_err().map_err(driver_err("deferred error"))?;
        Ok(Tensor::from_vec(o.c, o.h, o.w, data))
    }
}

impl Backend for CudaBackend {
    fn memory_model(&self) -> (Precision, crate::planner::MemoryModel) {
        (self.precision, crate::planner::MemoryModel::Device)
    }

    fn name(&self) -> String {
        format!("cuda:{} {} ({}, {})", self.info.ordinal, self.info.name, self.info.arch(), self.precision.name())
    }

    fn run(&self, graph: &Graph, input: &Tensor) -> Result<Tensor> {
        // The CUDA conv kernels do not fuse an input scale-shift: run it as its own node.
        let split;
        let graph = if graph.has_conv_pre() {
            split = graph.without_conv_pre();
            &split
        } else {
            graph
        };
        match &self.state {
            PrecisionState::F32(m) => self.execute(&mut m.lock().unwrap_or_else(|e| e.into_inner()), graph, input),
            PrecisionState::F16(m) => self.execute(&mut m.lock().unwrap_or_else(|e| e.into_inner()), graph, input),
        }
    }
}

/// The input window, converted to the storage type in pinned memory, copied asynchronously.
fn upload_pinned<T: Storage>(
    ctx: &Arc<CudaContext>,
    s: &Arc<CudaStream>,
    pinned: &mut Pinned<T>,
    t: &Tensor,
) -> Result<CudaSlice<T>> {
    let n = t.data.len();
    if n == 0 {
        return s.alloc_zeros::<T>(0).map_err(driver_err("allocation"));
    }
    let buf = pinned.get(ctx, n)?;
    // as_mut_slice first waits until the previous copy out of this buffer has finished.
    for (d, &v) in buf.as_mut_slice().map_err(driver_err("pinned buffer"))?.iter_mut().zip(&t.data) {
        *d = T::from_f32(v);
    }
    // SAFETY: uninitialised memory, fully overwritten by the copy just below.
    let mut dev = unsafe { s.alloc::<T>(n) }.map_err(driver_err("allocation"))?;
    s.memcpy_htod(&*buf, &mut dev).map_err(driver_err("copy to device"))?;
    Ok(dev)
}

/// The output, copied asynchronously into pinned memory, then (after one stream synchronisation)
/// converted to f32.
fn download_pinned<T: Storage>(
    ctx: &Arc<CudaContext>,
    s: &Arc<CudaStream>,
    pinned: &mut Pinned<T>,
    x: &CudaSlice<T>,
) -> Result<Vec<f32>> {
    let n = x.len();
    if n == 0 {
        return Ok(Vec::new());
    }
    let buf = pinned.get(ctx, n)?;
    s.memcpy_dtoh(x, buf).map_err(driver_err("copy to host"))?;
    s.synchronize().map_err(driver_err("synchronize"))?;
    Ok(buf.as_slice().map_err(driver_err("pinned buffer"))?.iter().map(|&v| v.to_f32()).collect())
}

/// The shape of an op's output for inputs of `ins` shapes (the ops the backend runs).
fn out_shape(op: &Op, ins: &[Shape]) -> Shape {
    let x = ins[0];
    match op {
        Op::Conv2d(c) => Shape { c: c.cout, ..x },
        Op::ConvTranspose2d(c) => Shape { c: c.cout, h: 2 * x.h, w: 2 * x.w },
        Op::MaxPool2 => Shape { h: x.h / 2, w: x.w / 2, ..x },
        Op::Upsample2(_) => Shape { h: 2 * x.h, w: 2 * x.w, ..x },
        Op::Concat => Shape { c: ins.iter().map(|s| s.c).sum(), ..x },
        Op::Argmax => Shape { c: 1, ..x },
        _ => x,
    }
}

/// Launch the kernel(s) for one op, reading `ins` and writing all of `out`.
fn launch_op<T: Storage>(
    k: &Kernels,
    s: &Arc<CudaStream>,
    op: &Op,
    params: &LayerParams<T>,
    ins: &[&CudaSlice<T>],
    in_shapes: &[Shape],
    out: &mut CudaSlice<T>,
) -> Result<()> {
    let x = in_shapes[0];
    match (op, params) {
        (Op::Conv2d(c), LayerParams::Conv { weight, bias }) => {
            kernels::conv2d(k, s, c, weight, bias, ins[0], out, x.h, x.w)
        }
        (Op::ConvTranspose2d(c), LayerParams::ConvTranspose { weight, bias }) => {
            kernels::conv_transpose2d(k, s, (c.cin, c.cout, c.k), weight, bias, ins[0], out, x.h, x.w)
        }
        (Op::BatchNorm(_) | Op::ScaleShift(_), LayerParams::ScaleShift { scale, shift, relu }) => {
            kernels::scale_shift(k, s, scale, shift, *relu, ins[0], out, x.h * x.w)
        }
        (Op::Relu, _) => kernels::relu(k, s, ins[0], out),
        (Op::MaxPool2, _) => kernels::max_pool2(k, s, ins[0], out, (x.c, x.h, x.w)),
        (Op::Upsample2(mode), _) => kernels::upsample2(k, s, *mode, ins[0], out, (x.c, x.h, x.w)),
        (Op::Concat, _) => {
            let mut offset = 0;
            for t in ins {
                kernels::copy_into(k, s, t, out, offset)?;
                offset += t.len();
            }
            Ok(())
        }
        (Op::Softmax, _) => kernels::softmax_or_argmax(k, s, false, ins[0], out, x.c, x.h * x.w),
        (Op::Argmax, _) => kernels::softmax_or_argmax(k, s, true, ins[0], out, x.c, x.h * x.w),
        (Op::Input { .. } | Op::Dropout, _) => {
            // Identity ops: a copy (the executor aliases them instead of calling this).
            kernels::copy_into(k, s, ins[0], out, 0)
        }
        (op, _) => Err(Error::Backend(format!("internal: no parameters uploaded for {}", op.kind()))),
    }
}
