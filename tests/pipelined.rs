//! The streaming runner over a backend that pipelines (`Backend::run_pipelined`) the way the CUDA
//! backend does — one window in flight, its result handed back only after the next window has
//! been read — tested on the CPU: outputs stay in order and exact, and a window that runs out of
//! memory is still retried as smaller tiles from inside the pipeline.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};

use common::*;
use seamless::backend::Backend;
use seamless::backend::Timings;
use seamless::cpu::CpuBackend;
use seamless::error::Result;
use seamless::graph::Graph;
use seamless::model::weights::SplitMix64;
use seamless::normalize::{NormSpec, Normalize};
use seamless::pipeline::{PadMode, Tiling, infer};
use seamless::planner::{ArenaPlan, MemoryModel};
use seamless::slide::stream::{self, OutputKind, StreamOptions};
use seamless::slide::{self, Format};
use seamless::{Model, Tensor, cpu};

/// A CPU backend whose pipelined path lags by one window, as CUDA's does.
struct Lagging {
    inner: CpuBackend,
    /// Windows handed to `done` while a later window was already taken from `next`.
    overlapped: AtomicUsize,
}

impl Backend for Lagging {
    fn name(&self) -> String {
        "lagging cpu".into()
    }
    fn run(&self, graph: &Graph, input: &Tensor) -> Result<Tensor> {
        self.inner.run(graph, input)
    }
    fn memory(&self) -> &dyn MemoryModel {
        self.inner.memory()
    }
    fn run_timed(&self, graph: &Graph, input: &Tensor, per_node: bool) -> Result<(Tensor, Timings)> {
        self.inner.run_timed(graph, input, per_node)
    }
    fn run_pipelined(
        &self,
        graph: &Graph,
        next: &mut dyn FnMut() -> Option<Tensor>,
        done: &mut dyn FnMut(Tensor, Result<Tensor>) -> bool,
    ) {
        let mut in_flight: Option<(Tensor, Result<Tensor>)> = None;
        while let Some(x) = next() {
            let y = self.inner.run(graph, &x);
            if let Some((px, py)) = in_flight.take() {
                self.overlapped.fetch_add(1, Ordering::SeqCst);
                if !done(px, py) {
                    return;
                }
            }
            in_flight = Some((x, y));
        }
        if let Some((px, py)) = in_flight {
            done(px, py);
        }
    }
}

fn opts(tile: usize, halo: usize) -> StreamOptions {
    StreamOptions {
        norm: NormSpec::new(Normalize::None),
        kind: OutputKind::Probs,
        ..StreamOptions::new(Format::Npy, (tile, tile), halo)
    }
}

fn stream_through(backend: &dyn Backend, model: &Model, img: &Tensor, tile: usize) -> (Tensor, Vec<String>) {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("o.npy");
    let src = Box::new(slide::InMemory::new(img.clone()));
    let summary =
        stream::run(src, model, backend, &out, &opts(tile, model.exact_halo()), &mut |_| {}, &mut |_| {}, None)
            .unwrap();
    let mut src = slide::open_source(out.to_str().unwrap(), None).unwrap();
    let (h, w, _) = src.shape();
    (src.read(0, 0, h, w).unwrap(), summary.retries)
}

#[test]
fn a_lagging_pipeline_streams_every_tile_in_order_and_exactly() {
    for model in
        [random_model(unet(1, 2, 4, 2, true, "transpose"), 7), random_model(densenet(1, 2, 4, 3, &[1, 2], 1), 8)]
    {
        let img = random_image(&mut SplitMix64(4), 1, 150, 131);
        let whole = infer(&model, &img, PadMode::Zero, Tiling::Whole).unwrap();
        let backend = Lagging { inner: CpuBackend::default(), overlapped: AtomicUsize::new(0) };
        let (got, retries) = stream_through(&backend, &model, &img, 32);
        assert_eq!(first_difference(&got, &whole), None);
        assert!(retries.is_empty());
        assert!(backend.overlapped.load(Ordering::SeqCst) > 0, "the pipeline kept a window in flight");
    }
}

#[test]
fn a_window_out_of_memory_inside_the_pipeline_is_retried_smaller() {
    for model in
        [random_model(unet(1, 2, 4, 2, true, "transpose"), 7), random_model(densenet(1, 2, 4, 3, &[1, 2], 1), 8)]
    {
        let img = random_image(&mut SplitMix64(5), 1, 150, 131);
        let whole = infer(&model, &img, PadMode::Zero, Tiling::Whole).unwrap();
        // Memory for windows of tiles up to 16x16 only: the 64x64 tiles' windows fail and are
        // retried from inside `done`, with a later window already taken from the reader.
        let small = 16 + 2 * model.exact_halo();
        let plan = ArenaPlan::new(&model.graph, small, small).unwrap();
        let limit = (plan.arena_elems + cpu::workspace_elems(&model.graph, &plan, cpu::direct::Isa::detect())) * 4;
        let backend = Lagging { inner: CpuBackend::with_limit(Some(limit)), overlapped: AtomicUsize::new(0) };
        let (got, retries) = stream_through(&backend, &model, &img, 64);
        assert_eq!(first_difference(&got, &whole), None, "retried tiles must still be exact");
        assert!(!retries.is_empty() && retries[0].contains("out of memory"), "{retries:?}");
    }
}
