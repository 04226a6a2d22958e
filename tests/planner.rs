//! The memory planner: the arena executor computes exactly what the plain executor computes,
//! reads nothing after it is freed, and allocates exactly the planned bytes.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use common::*;
use seamless::cpu::{self, Buffers};
use seamless::model::weights::SplitMix64;
use seamless::model::ModelConfig;
use seamless::planner::ArenaPlan;
use seamless::Model;

/// Counts live heap bytes and their high-water mark.
struct Counting;
static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);


unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(l) };
        if !p.is_null() {
            let now = LIVE.fetch_add(l.size(), Ordering::SeqCst) + l.size();
            PEAK.fetch_max(now, Ordering::SeqCst);
        }
        p
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        unsafe { System.dealloc(p, l) };
        LIVE.fetch_sub(l.size(), Ordering::SeqCst);
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Tests here measure the heap, so they run one at a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn models() -> Vec<Model> {
    vec![
        random_model(unet(1, 2, 4, 3, true, "transpose"), 1),
        random_model(unet(2, 3, 4, 2, false, "bilinear"), 2),
        random_model(unet(1, 2, 2, 2, true, "nearest"), 3),
        random_model(densenet(1, 3, 4, 3, &[2, 3], 2), 4),
        random_model(densenet(2, 2, 6, 2, &[1, 2, 2], 3), 5),
    ]
}

#[test]
fn planned_executor_equals_plain_executor_and_reads_nothing_freed() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut rng = SplitMix64(17);
    for model in models() {
        let a = model.align();
        for _ in 0..4 {
            let h = a * (1 + rng.next_u64() as usize % 5);
            let w = a * (1 + rng.next_u64() as usize % 5);
            let img = random_image(&mut rng, model.in_channels(), h, w);
            let plan = ArenaPlan::new(&model.graph, h, w).unwrap();
            let planned = cpu::run_planned(&model.graph, &plan, &img, &mut Buffers::default(), true).unwrap();
            let (plain, stats) = cpu::run_unplanned(&model.graph, &img).unwrap();
            assert_eq!(first_difference(&planned, &plain), None, "{} at {h}x{w}", model.config.config_json());
            assert!(planned.data.iter().all(|v| v.is_finite()), "poisoned memory was read");
            assert!(
                plan.arena_elems * 4 <= stats.peak_activation_bytes,
                "{}: plan {} B vs plain peak {} B",
                model.config.config_json(),
                plan.arena_elems * 4,
                stats.peak_activation_bytes
            );
        }
    }
}

#[test]
fn planned_bytes_are_the_bytes_really_allocated() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    // Start the thread pool first: its own set-up is not part of a forward pass.
    rayon::broadcast(|_| ());
    let mut rng = SplitMix64(5);
    for model in models() {
        for size in [2, 5] {
            let n = model.align() * size;
            let img = random_image(&mut rng, model.in_channels(), n, n + model.align());
            let plan = ArenaPlan::new(&model.graph, img.h, img.w).unwrap();
            let planned = (plan.arena_elems + cpu::workspace_elems(&model.graph, &plan)) * 4;
            let out_bytes = model.classes() * img.h * img.w * 4;
            let mut bufs = Buffers::default();
            let before = LIVE.load(Ordering::SeqCst);
            PEAK.store(before, Ordering::SeqCst);
            let out = cpu::run_planned(&model.graph, &plan, &img, &mut bufs, false).unwrap();
            let peak = PEAK.load(Ordering::SeqCst) - before;
            assert_eq!(bufs.allocated_bytes(), planned, "executor buffers vs plan");
            // Everything the run allocated: the planned buffers and the returned output. The heap is
            // process-wide, and the test harness's own threads allocate a few hundred bytes now and
            // then, so a bookkeeping excess below 4 KiB is tolerated (the buffers are MBs at real sizes).
            assert!(peak >= planned + out_bytes, "peak {peak} < planned {planned} + output {out_bytes}");
            assert!(peak < planned + out_bytes + 4096, "peak {peak} vs planned {planned} + output {out_bytes}");
            drop(out);
        }
    }
}

#[test]
fn concatenation_is_free_in_dense_blocks() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    // FC-DenseNet-56 at 224x224: the plain executor copies every layer input of a dense block;
    // the plan writes layers straight into their block's buffer.
    let m = Model::random(ModelConfig::preset("fcdensenet-56").unwrap(), 0).unwrap();
    let plan = ArenaPlan::new(&m.graph, 224, 224).unwrap();
    let copies: usize = plan.concat_copies.iter().flatten().filter(|&&c| c).count();
    let concats = m.graph.nodes.iter().filter(|n| matches!(n.op, seamless::graph::Op::Concat)).count();
    assert!(concats > 40, "{concats}");
    assert!(copies <= 6, "only the network input and kept-apart skips may be copied, got {copies} copies");
}

#[test]
fn plans_are_valid_for_random_models_and_sizes() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut rng = SplitMix64(99);
    for model in models() {
        let a = model.align();
        for _ in 0..10 {
            let (h, w) = (a * (1 + rng.next_u64() as usize % 8), a * (1 + rng.next_u64() as usize % 8));
            let plan = ArenaPlan::new(&model.graph, h, w).unwrap();
            plan.validate(&model.graph).unwrap_or_else(|e| panic!("{} {h}x{w}: {e}", model.config.config_json()));
        }
    }
}
