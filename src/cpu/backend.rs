//! The CPU as a [`Backend`]: the planned executor, with plans cached per window size and one arena
//! reused across tiles; and its memory model for the planner.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::Buffers;
use super::direct::Isa;
use crate::backend::{Backend, Timings};
use crate::error::{Error, Result};
use crate::graph::Graph;
use crate::planner::{ArenaPlan, MemoryModel, Peak, Precision, in_flight_bytes};
use crate::tensor::Tensor;

/// What the CPU executor holds inside the streaming runner: the arena, the convolution workspace
/// (padded inputs, Winograd transforms), the weights plus their copy packed for the convolution
/// engine, and the windows and outputs in flight between the runner's reader, compute and writer
/// threads (all host memory, all under one budget). The backend computes in f32 or bf16, and keeps
/// activations in f32 either way (bf16 packs its weights and rounds each convolution's input
/// copy); f16 is for planning what 2-byte storage would need.
#[derive(Clone, Copy, Debug)]
pub struct CpuMemory {
    pub precision: Precision,
    /// The engine, where not this CPU's fastest for the precision ([`CpuBackend::with_engine`]).
    pub engine: Option<Isa>,
}

/// The CPU backend's memory model at f32.
pub const CPU_F32: CpuMemory = CpuMemory::of(Precision::F32);
/// ... and at bf16.
pub const CPU_BF16: CpuMemory = CpuMemory::of(Precision::Bf16);

impl MemoryModel for CpuMemory {
    fn precision(&self) -> Precision {
        self.precision
    }

    fn lower<'g>(&self, graph: &'g Graph) -> Cow<'g, Graph> {
        Cow::Borrowed(graph)
    }

    fn peak(&self, graph: &Graph, plan: &ArenaPlan) -> Peak {
        Peak {
            arena_bytes: plan.arena_elems * self.activation_bytes(),
            workspace_bytes: super::workspace_elems(graph, plan, self.isa()) * std::mem::size_of::<f32>(),
            weight_bytes: self.weight_bytes(graph),
            // Node 0 is the input (see `Graph`).
            staging_bytes: in_flight_bytes(plan.shapes[0].c, plan.shapes[graph.output].c, plan.h, plan.w),
        }
    }
}

impl CpuMemory {
    /// `precision` on this CPU's fastest engine for it.
    pub const fn of(precision: Precision) -> CpuMemory {
        CpuMemory { precision, engine: None }
    }

    /// The parameters and their packed copy: what the model costs before any window.
    pub fn weight_bytes(&self, graph: &Graph) -> usize {
        graph.params() * self.activation_bytes() + super::packed_weight_bytes(graph, self.isa())
    }

    /// The engine that runs this precision here.
    pub fn isa(&self) -> Isa {
        self.engine.unwrap_or_else(|| Isa::detect_for(self.precision))
    }

    /// Bytes per activation (and parameter) held: f32 but when planning f16 storage.
    fn activation_bytes(&self) -> usize {
        match self.precision {
            Precision::F32 | Precision::Bf16 => 4,
            Precision::F16 => 2,
        }
    }
}

/// The multi-threaded CPU backend, in f32 (the default) or bf16.
#[derive(Default)]
pub struct CpuBackend {
    plans: Mutex<HashMap<(usize, usize), Arc<ArenaPlan>>>,
    buffers: Mutex<Buffers>,
    /// Refuse windows whose arena and workspace exceed this many bytes, as a device with that much
    /// free memory would (`--memory-budget` minus the weights and their packed copy).
    pub limit_bytes: Option<usize>,
    /// Worker threads of its own (an embedding program's choice); else rayon's global pool.
    pool: Option<rayon::ThreadPool>,
    memory: Option<CpuMemory>,
}

impl CpuBackend {
    pub fn with_limit(limit_bytes: Option<usize>) -> CpuBackend {
        CpuBackend { limit_bytes, ..CpuBackend::default() }
    }

    /// Computing in `precision`: f32, or bf16 on this CPU's fastest bf16 engine (AMX tiles,
    /// AVX512-BF16, else the portable one). f16 is a CUDA precision and is refused.
    pub fn with_precision(mut self, precision: Precision) -> Result<CpuBackend> {
        if precision == Precision::F16 {
            return Err(Error::Usage("f16 needs the CUDA backend; the CPU computes in f32 or bf16".into()));
        }
        self.memory = Some(CpuMemory::of(precision));
        *self.buffers.get_mut().unwrap_or_else(|e| e.into_inner()) = Buffers::new(self.isa());
        Ok(self)
    }

    /// Computing on one particular engine of this CPU (its precision is the engine's): for tests
    /// and for comparing engines; [`CpuBackend::with_precision`] picks the fastest.
    pub fn with_engine(mut self, isa: Isa) -> Result<CpuBackend> {
        if !isa.is_available() {
            return Err(Error::Usage(format!(
                "this CPU cannot run the {} engine (`seamless doctor` lists what it has)",
                isa.name()
            )));
        }
        self.memory = Some(CpuMemory { precision: isa.precision(), engine: Some(isa) });
        *self.buffers.get_mut().unwrap_or_else(|e| e.into_inner()) = Buffers::new(isa);
        Ok(self)
    }

    /// The engine the convolutions run on.
    pub fn isa(&self) -> Isa {
        self.mem().isa()
    }

    fn mem(&self) -> &CpuMemory {
        self.memory.as_ref().unwrap_or(&CPU_F32)
    }

    fn plan(&self, graph: &Graph, h: usize, w: usize) -> Result<Arc<ArenaPlan>> {
        let mut plans = self.plans.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(p) = plans.get(&(h, w)) {
            return Ok(p.clone());
        }
        let p = Arc::new(ArenaPlan::new(graph, h, w)?);
        plans.insert((h, w), p.clone());
        Ok(p)
    }

    /// With a pool of `threads` workers of its own.
    pub fn with_threads(mut self, threads: usize) -> Result<CpuBackend> {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .map_err(|e| Error::Backend(format!("cannot start {threads} worker threads: {e}")))?;
        self.pool = Some(pool);
        Ok(self)
    }

    fn run_with(&self, graph: &Graph, input: &Tensor, per_node: Option<&mut [f64]>) -> Result<Tensor> {
        match &self.pool {
            Some(pool) => pool.install(|| self.run_here(graph, input, per_node)),
            None => self.run_here(graph, input, per_node),
        }
    }

    fn prepare_locked(&self, bufs: &mut Buffers, graph: &Graph) -> Result<()> {
        let t = std::time::Instant::now();
        if bufs.prepare(graph)? {
            crate::profile::step("packing the weights", t);
            // Another model: the plans cached by window size were made for the last one.
            self.plans.lock().unwrap_or_else(|e| e.into_inner()).clear();
        }
        Ok(())
    }

    fn run_here(&self, graph: &Graph, input: &Tensor, per_node: Option<&mut [f64]>) -> Result<Tensor> {
        let mut bufs = self.buffers.lock().unwrap_or_else(|e| e.into_inner());
        self.prepare_locked(&mut bufs, graph)?;
        let plan = self.plan(graph, input.h, input.w)?;
        let need = (plan.arena_elems + super::workspace_elems(graph, &plan, self.isa())) * 4;
        if let Some(limit) = self.limit_bytes
            && need > limit
        {
            return Err(Error::OutOfMemory { what: format!("a {}x{} window", input.w, input.h), bytes: need });
        }
        // The buffers grow to the largest window seen and are reused, not reallocated per tile.
        super::run_planned_timed(graph, &plan, input, &mut bufs, false, per_node)
    }
}

impl Backend for CpuBackend {
    fn name(&self) -> String {
        let threads = self.pool.as_ref().map_or_else(rayon::current_num_threads, |p| p.current_num_threads());
        match self.mem().precision {
            Precision::Bf16 => format!("cpu ({threads} threads, bf16 on {:?})", self.isa()),
            _ => format!("cpu ({threads} threads)"),
        }
    }

    fn memory(&self) -> &dyn MemoryModel {
        self.mem()
    }

    /// Packs `graph`'s weights for this backend's engine now (on its workers): what a process
    /// pays once per model, timed on its own by `seamless bench`.
    fn prepare(&self, graph: &Graph) -> Result<()> {
        let prepare = || self.prepare_locked(&mut self.buffers.lock().unwrap_or_else(|e| e.into_inner()), graph);
        match &self.pool {
            Some(pool) => pool.install(prepare),
            None => prepare(),
        }
    }

    fn run(&self, graph: &Graph, input: &Tensor) -> Result<Tensor> {
        self.run_with(graph, input, None)
    }

    fn run_timed(&self, graph: &Graph, input: &Tensor, per_node: bool) -> Result<(Tensor, Timings)> {
        let mut nodes = vec![0.0; if per_node { graph.nodes.len() } else { 0 }];
        let t0 = std::time::Instant::now();
        let y = self.run_with(graph, input, per_node.then_some(nodes.as_mut_slice()))?;
        Ok((y, Timings { compute_seconds: t0.elapsed().as_secs_f64(), nodes }))
    }
}
