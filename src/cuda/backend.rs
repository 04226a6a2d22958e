//! [`CudaBackend`]: runs a graph on one GPU in f32 or f16, inside the arena the memory planner
//! laid out (`executor.rs`).
//!
//! Per backend: one context, three streams (upload, compute, download), the kernels loaded once,
//! the model's parameters uploaded once (and again only when a different graph arrives), plans
//! cached per window size, and one arena plus one input and one output staging buffer, grown only
//! when a larger window needs it. [`Backend::run`] queues one window and waits for it;
//! [`Backend::run_pipelined`] keeps one window in flight while the next is read and uploaded, so
//! transfers overlap compute.

use std::sync::{Arc, Mutex, MutexGuard};

use cudarc::driver::{CudaContext, CudaSlice};
use half::f16;

use super::autotune::{ConvSignature, TuneMode};
use super::conv_variants;
use super::device::{self, DeviceInfo};
use super::executor::{DeviceBytes, Exec, NodeTimer, Pending, Streams, launch_op};
use super::kernels::{FamilyReport, Kernels};
use super::ops;
use super::storage::Storage;
use super::weights::LayerParams;
use super::{Precision, driver_err, libs};
use crate::backend::{Backend, Timings};
use crate::error::{Error, Result};
use crate::graph::{Conv2d, Graph, Op, Shape};
use crate::tensor::Tensor;

enum PrecisionState {
    F32(Mutex<Exec<f32>>),
    F16(Mutex<Exec<f16>>),
}

fn lock<T: Storage>(m: &Mutex<Exec<T>>) -> MutexGuard<'_, Exec<T>> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Run `$body` with `$exec` bound to the locked executor of whichever precision this backend has.
macro_rules! with_exec {
    ($self:expr, $exec:ident => $body:expr) => {
        match &$self.state {
            PrecisionState::F32(m) => {
                #[allow(unused_mut)]
                let mut $exec = lock(m);
                $body
            }
            PrecisionState::F16(m) => {
                #[allow(unused_mut)]
                let mut $exec = lock(m);
                $body
            }
        }
    };
}

pub struct CudaBackend {
    precision: Precision,
    memory: super::DeviceMemory,
    info: DeviceInfo,
    ctx: Arc<CudaContext>,
    streams: Streams,
    kernels: Kernels,
    reports: Vec<FamilyReport>,
    state: PrecisionState,
}

impl CudaBackend {
    /// Open device `ordinal`, compile (or load from the cache) every kernel for its architecture.
    /// Fails with an error saying what is missing when there is no driver, no NVRTC or no device.
    /// f16 conv variants are autotuned unless `SEAMLESS_AUTOTUNE=off` ([`TuneMode::from_env`]).
    pub fn new(ordinal: usize, precision: Precision) -> Result<CudaBackend> {
        Self::with_tuning(ordinal, precision, TuneMode::from_env())
    }

    /// [`CudaBackend::new`] with the f16 conv variants chosen as `tune` says.
    pub fn with_tuning(ordinal: usize, precision: Precision, tune: TuneMode) -> Result<CudaBackend> {
        if precision == Precision::Bf16 {
            return Err(Error::Usage("bf16 is a CPU arithmetic (--backend cpu); on CUDA use --precision f16".into()));
        }
        libs::require_cuda()?;
        let (ctx, info) = device::open(ordinal)?;
        // SAFETY: buffers shared between streams (the staging buffers) are ordered by this
        // backend's own events, the host waits for each pinned buffer's last copy before it touches
        // or frees it (executor.rs, `Pinned`), and a device buffer is reallocated or dropped only
        // after every stream is drained, so cudarc's per-buffer events are not needed. (With them
        // off, cudarc records nothing on pinned buffers: their own waits are no-ops.)
        unsafe { ctx.disable_event_tracking() };
        let streams = Streams::new(&ctx)?;
        let (kernels, reports) = Kernels::load(&ctx, &info.arch(), &info.name, tune)?;
        let state = match precision {
            Precision::F32 => PrecisionState::F32(Mutex::new(Exec::new(&ctx)?)),
            Precision::F16 | Precision::Bf16 => PrecisionState::F16(Mutex::new(Exec::new(&ctx)?)),
        };
        Ok(CudaBackend {
            precision,
            memory: super::DeviceMemory { precision },
            info,
            ctx,
            streams,
            kernels,
            reports,
            state,
        })
    }

    pub fn info(&self) -> &DeviceInfo {
        &self.info
    }

    pub fn precision(&self) -> Precision {
        self.precision
    }

    pub fn context(&self) -> &Arc<CudaContext> {
        &self.ctx
    }

    /// How each kernel family was obtained when this backend started (compiled or cached).
    pub fn kernel_reports(&self) -> &[FamilyReport] {
        &self.reports
    }

    /// Device bytes the executor holds now: the arena (of the largest plan run so far), the
    /// parameters, the staging buffers. What `tile_plan::peak` with `MemoryModel::Device`
    /// predicts. [`CudaBackend::run_op`]'s buffers are not included (they are freed on return).
    pub fn allocated(&self) -> DeviceBytes {
        with_exec!(self, exec => exec.allocated())
    }

    /// (free, total) device memory as the driver reports it (cuMemGetInfo).
    pub fn mem_get_info(&self) -> Result<(usize, usize)> {
        self.ctx.mem_get_info().map_err(driver_err("cuMemGetInfo"))
    }

    /// Run `graph` on `input` once, recording `timer`'s events around the compute (and around
    /// every node when it has per-node marks), for `seamless bench --backend cuda`.
    pub fn run_with_timer(&self, graph: &Graph, input: &Tensor, timer: Option<&mut NodeTimer>) -> Result<Tensor> {
        with_exec!(self, exec => {
            let run = exec.prepare(&self.streams, graph)?;
            let p = exec.enqueue(&self.ctx, &self.streams, &self.kernels, &run, input, timer)?;
            exec.collect(&self.ctx, p)
        })
    }

    /// The graph this backend runs for `graph` (fused conv pre-ops split into their own nodes),
    /// its parameters uploaded: per-node timings refer to its nodes.
    pub fn executed_graph(&self, graph: &Graph) -> Result<Arc<Graph>> {
        with_exec!(self, exec => exec.prepare(&self.streams, graph))
    }

    /// The tensor-core rate of this device in FLOP/s: `mma.sync.m16n8k16` f16→f32 issued from
    /// registers by every SM (kernels/peak.cu), the best of a few timed launches.
    pub fn mma_peak_flops(&self) -> Result<f64> {
        use cudarc::driver::sys::{CUdevice_attribute, CUevent_flags};
        let s = &self.streams.compute;
        let sms = self
            .ctx
            .attribute(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
            .map_err(driver_err("device attribute"))?;
        // 4 blocks of 8 warps per SM: enough warps to keep every tensor core busy.
        let (blocks, warps) = (sms.max(1) as u32 * 4, 8u32);
        let mut out =
            s.alloc_zeros::<f32>((blocks * warps * 32) as usize).map_err(driver_err("allocating the peak buffer"))?;
        let event = || self.ctx.new_event(Some(CUevent_flags::CU_EVENT_DEFAULT)).map_err(driver_err("event"));
        let (start, end) = (event()?, event()?);
        let mut iters = 1024u64;
        let mut best = 0f64;
        for _ in 0..12 {
            start.record(s).map_err(driver_err("event record"))?;
            ops::MmaPeak { out: &mut out, blocks, warps, iters }.launch(&self.kernels, s)?;
            end.record(s).map_err(driver_err("event record"))?;
            let ms = start.elapsed_ms(&end).map_err(driver_err("event timer"))? as f64;
            let flop = (blocks * warps) as f64 * iters as f64 * super::sources::PEAK_MMAS_PER_ROUND as f64 * 4096.0;
            if ms < 20.0 {
                iters *= 4; // too short to time well: lengthen, do not count
                continue;
            }
            best = best.max(flop / (ms * 1e-3));
        }
        if best == 0.0 {
            return Err(Error::Backend("the tensor-core peak kernel ran too briefly to time".into()));
        }
        Ok(best)
    }

    /// The kernel a conv with an `h` x `w` output runs: the f16 variant chosen for its signature
    /// (None before its first launch), or variant 1 at f32.
    pub fn conv_variant(&self, c: &Conv2d, h: usize, w: usize) -> Option<&'static str> {
        match self.precision {
            Precision::F32 => Some("v1_f32_direct"),
            Precision::F16 | Precision::Bf16 => {
                self.kernels.tune.chosen(&ConvSignature::new(c, h, w, Precision::F16)).map(|v| v.tag)
            }
        }
    }

    /// Run an f16 conv on a host tensor with the variant tagged `tag` (`conv_variants`), on its own
    /// buffers (NaN-poisoned first when `poison`): the hook the variant tests use.
    pub fn run_conv_f16_variant(&self, c: &Conv2d, x: &Tensor, tag: &str, poison: bool) -> Result<Tensor> {
        let v = conv_variants::by_tag(tag).ok_or_else(|| Error::Backend(format!("no f16 conv variant {tag}")))?;
        if self.precision != Precision::F16 {
            return Err(Error::Backend("f16 conv variants need a backend opened with --precision f16".into()));
        }
        let s = &self.streams.compute;
        let upload = |v: &[f16]| s.clone_htod(v).map_err(driver_err("upload"));
        let weight = upload(&<f16 as Storage>::conv_weights(c))?;
        let bias = s.clone_htod(&c.bias).map_err(driver_err("upload"))?;
        let input = upload(&x.data.iter().map(|&v| f16::from_f32(v)).collect::<Vec<_>>())?;
        let fill = f16::from_f32(if poison { f32::NAN } else { 0.0 });
        let mut out = upload(&vec![fill; c.cout * x.h * x.w])?;
        let (input, mut output, xs) = (input.as_view(), out.as_view_mut(), Shape { c: x.c, h: x.h, w: x.w });
        let mut conv = ops::Conv { c, weight: &weight, bias: &bias, x: &input, out: &mut output, xs };
        conv.launch_variant(&self.kernels, s, Some(v))?;
        let host = s.clone_dtoh(&out).map_err(driver_err("download"))?;
        s.synchronize().map_err(driver_err("synchronize"))?;
        Ok(Tensor::from_vec(c.cout, x.h, x.w, host.into_iter().map(|v| v.to_f32()).collect()))
    }

    /// Run one op on host tensors and return its output: the hook the kernel tests use to compare
    /// each kernel with its CPU twin. With `poison`, the output buffer is first filled with NaN,
    /// so a result free of NaN shows that the kernel wrote every element. Allocates its own
    /// buffers on the compute stream, outside the arena.
    pub fn run_op(&self, op: &Op, ins: &[&Tensor], poison: bool) -> Result<Tensor> {
        match &self.state {
            PrecisionState::F32(_) => self.run_op_as::<f32>(op, ins, poison),
            PrecisionState::F16(_) => self.run_op_as::<f16>(op, ins, poison),
        }
    }

    fn run_op_as<T: Storage>(&self, op: &Op, ins: &[&Tensor], poison: bool) -> Result<Tensor> {
        let s = &self.streams.compute;
        let params = LayerParams::<T>::upload(s, op)?;
        let mut bufs = Vec::with_capacity(ins.len());
        for t in ins {
            let host: Vec<T> = t.data.iter().map(|&v| T::from_f32(v)).collect();
            bufs.push(s.clone_htod(&host).map_err(driver_err("upload"))?);
        }
        let in_shapes: Vec<Shape> = ins.iter().map(|t| Shape { c: t.c, h: t.h, w: t.w }).collect();
        let o = out_shape(op, &in_shapes);
        let n = o.c * o.h * o.w;
        let mut out: CudaSlice<T> = if poison {
            s.clone_htod(&vec![T::from_f32(f32::NAN); n]).map_err(driver_err("upload"))?
        } else {
            s.alloc_zeros::<T>(n).map_err(driver_err("allocation"))?
        };
        if let Op::Concat = op {
            let mut offset = 0;
            for b in &bufs {
                ops::CopyInto { x: &b.as_view(), out: &mut out.as_view_mut(), offset }.launch(&self.kernels, s)?;
                offset += b.len();
            }
        } else {
            launch_op(&self.kernels, s, op, &params, &bufs[0].as_view(), in_shapes[0], &mut out.as_view_mut())?;
        }
        let host = s.clone_dtoh(&out).map_err(driver_err("download"))?;
        s.synchronize().map_err(driver_err("synchronize"))?;
        Ok(Tensor::from_vec(o.c, o.h, o.w, host.into_iter().map(T::to_f32).collect()))
    }

    fn pipelined<T: Storage>(
        &self,
        m: &Mutex<Exec<T>>,
        graph: &Graph,
        next: &mut dyn FnMut() -> Option<Tensor>,
        done: &mut dyn FnMut(Tensor, Result<Tensor>) -> bool,
    ) {
        let run = match lock(m).prepare(&self.streams, graph) {
            Ok(g) => g,
            Err(e) => {
                // Report the failure against the first window, as run() would.
                if let Some(x) = next() {
                    done(x, Err(e));
                }
                return;
            }
        };
        // The executor is locked only while queueing or collecting, never while `next` reads a
        // window or `done` handles one: `done` may call run() on this backend.
        let mut in_flight: Option<(Tensor, Pending<T>)> = None;
        while let Some(x) = next() {
            let queued = lock(m).enqueue(&self.ctx, &self.streams, &self.kernels, &run, &x, None);
            if let Some((px, p)) = in_flight.take() {
                let y = lock(m).collect(&self.ctx, p);
                if !done(px, y) {
                    return; // the queued tile's buffers wait for its copies when dropped
                }
            }
            match queued {
                Ok(p) => in_flight = Some((x, p)),
                // Nothing of this window is in flight (allocation happens before queueing).
                Err(e) => {
                    if !done(x, Err(e)) {
                        return;
                    }
                }
            }
        }
        if let Some((px, p)) = in_flight {
            let y = lock(m).collect(&self.ctx, p);
            done(px, y);
        }
    }
}

impl Backend for CudaBackend {
    fn memory(&self) -> &dyn crate::planner::MemoryModel {
        &self.memory
    }

    /// The device, its architecture, the precision and the NVRTC that compiled the kernels: a
    /// journal holds this, and a run is continued only where all of it is the same. (NVRTC brings
    /// the device's `expf`, whose bits another CUDA release may change.)
    fn name(&self) -> String {
        let nvrtc =
            super::compile::nvrtc_version().map_or_else(|_| "NVRTC ?".into(), |(a, b)| format!("NVRTC {a}.{b}"));
        format!(
            "cuda:{} {} ({}, {}, {nvrtc})",
            self.info.ordinal,
            self.info.name,
            self.info.arch(),
            self.precision.name()
        )
    }

    fn run(&self, graph: &Graph, input: &Tensor) -> Result<Tensor> {
        self.run_with_timer(graph, input, None)
    }

    fn run_timed(&self, graph: &Graph, input: &Tensor, per_node: bool) -> Result<(Tensor, Timings)> {
        let nodes = if per_node { self.executed_graph(graph)?.nodes.len() } else { 0 };
        let mut timer = NodeTimer::new(&self.ctx, nodes)?;
        let y = self.run_with_timer(graph, input, Some(&mut timer))?;
        let nodes = if per_node { timer.node_ms()?.into_iter().map(|ms| ms * 1e-3).collect() } else { Vec::new() };
        Ok((y, Timings { compute_seconds: timer.whole_ms()? * 1e-3, nodes }))
    }

    fn run_pipelined(
        &self,
        graph: &Graph,
        next: &mut dyn FnMut() -> Option<Tensor>,
        done: &mut dyn FnMut(Tensor, Result<Tensor>) -> bool,
    ) {
        match &self.state {
            PrecisionState::F32(m) => self.pipelined(m, graph, next, done),
            PrecisionState::F16(m) => self.pipelined(m, graph, next, done),
        }
    }
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
