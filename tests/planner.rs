//! The memory planner: the arena executor computes exactly what the plain executor computes,
//! reads nothing after it is freed, and allocates exactly the planned bytes.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use common::*;
use seamless::Model;
use seamless::cpu::{self, Buffers};
use seamless::model::ModelConfig;
use seamless::model::weights::SplitMix64;
use seamless::planner::ArenaPlan;

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
        // Winograd layers (and their transform workspace) in both families.
        winograd_everywhere(random_model(unet(1, 2, 4, 3, true, "transpose"), 6)),
        winograd_everywhere(random_model(densenet(1, 3, 4, 3, &[2, 3], 2), 7)),
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
            let planned = (plan.arena_elems + cpu::workspace_elems(&model.graph, &plan, cpu::direct::Isa::detect()))
                * 4
                + cpu::packed_weight_bytes(&model.graph, cpu::direct::Isa::detect());
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

#[test]
fn scaled_plans_equal_direct_plans() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut rng = SplitMix64(3);
    for model in models() {
        let a = model.align();
        let unit = ArenaPlan::new(&model.graph, a, a).unwrap();
        for _ in 0..5 {
            let (h, w) = (a * (1 + rng.next_u64() as usize % 9), a * (1 + rng.next_u64() as usize % 9));
            let direct = ArenaPlan::new(&model.graph, h, w).unwrap();
            let scaled = unit.scaled_to(&model.graph, h, w).unwrap();
            assert_eq!(direct.slots, scaled.slots, "{} {h}x{w}", model.config.config_json());
            assert_eq!(direct.arena_elems, scaled.arena_elems);
        }
    }
}

#[test]
fn chosen_tile_fits_and_the_next_larger_does_not() {
    use seamless::planner::{MemoryModel, Precision, TilePlanner};
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut rng = SplitMix64(11);
    for model in models() {
        for precision in [Precision::F32, Precision::F16] {
            let (cpu, device) = (seamless::cpu::CpuMemory::of(precision), seamless::cuda::DeviceMemory { precision });
            for mem in [&cpu as &dyn MemoryModel, &device] {
                let (h, w) = (200 + rng.next_u64() as usize % 3000, 200 + rng.next_u64() as usize % 3000);
                let planner = TilePlanner::new(&model, h, w, mem).unwrap();
                let a = model.align();
                let smallest = planner.grid_peak(a, a).unwrap().0.total();
                let whole = planner.grid_peak(planner.padded_h, planner.padded_w).unwrap().0.total();
                for _ in 0..4 {
                    let budget = smallest + (rng.uniform() * (whole - smallest) as f64 * 1.2) as usize;
                    let c = planner.choose(budget).unwrap();
                    assert!(c.peak.total() <= budget, "chosen tile must fit");
                    assert_eq!(c.peak, planner.grid_peak(c.tile_h, c.tile_w).unwrap().0);
                    // The next larger aligned tile (in the growing dimension) does not fit, unless
                    // the tile already spans the image.
                    if c.tile_h < planner.padded_h && c.tile_w < planner.padded_w {
                        assert_eq!(c.tile_h, c.tile_w, "square until the image stops it");
                        let next = c.tile_h + a;
                        assert!(!planner.fits(next, next, budget).unwrap(), "{next} would fit {budget}");
                    } else if c.tile_w < planner.padded_w {
                        assert!(!planner.fits(c.tile_h, c.tile_w + a, budget).unwrap());
                    } else if c.tile_h < planner.padded_h {
                        assert!(!planner.fits(c.tile_h + a, c.tile_w, budget).unwrap());
                    }
                }
                // Too small a budget is refused with the reason.
                assert!(matches!(planner.choose(smallest - 1), Err(seamless::Error::OutOfMemory { .. })));
            }
        }
    }
}

#[test]
fn tiles_that_run_out_of_memory_are_retried_smaller_and_the_result_stays_exact() {
    use seamless::cpu::CpuBackend;
    use seamless::pipeline::{PadMode, Progress, Tiling, infer, infer_on};
    use seamless::tile_grid::{TileGrid, round_up};
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    for model in
        [random_model(unet(1, 2, 4, 2, true, "transpose"), 7), random_model(densenet(1, 2, 4, 3, &[1, 2], 1), 8)]
    {
        let a = model.align();
        let img = random_image(&mut SplitMix64(4), 1, 150, 131);
        let whole = infer(&model, &img, PadMode::Zero, Tiling::Whole).unwrap();
        let (ph, pw) = (round_up(img.h, a), round_up(img.w, a));
        let grid = TileGrid::new(ph, pw, 64, 64, model.exact_halo(), a).unwrap();
        // Memory for windows of tiles up to 16x16, as if another process took the rest.
        let small = 16 + 2 * model.exact_halo();
        let plan = ArenaPlan::new(&model.graph, small, small).unwrap();
        let limit = (plan.arena_elems + cpu::workspace_elems(&model.graph, &plan, cpu::direct::Isa::detect())) * 4;
        let backend = CpuBackend::with_limit(Some(limit));
        let mut notes = Vec::new();
        let out = infer_on(
            &backend,
            &model,
            &img,
            PadMode::Zero,
            Tiling::Grid(&grid),
            &mut |p| {
                if let Progress::Retry(n) = p {
                    notes.push(n)
                }
            },
            None,
        )
        .unwrap();
        assert_eq!(first_difference(&out, &whole), None, "retried tiles must still be exact");
        assert!(!notes.is_empty() && notes[0].contains("out of memory"), "{notes:?}");
    }
}

/// Planning is O(rows + columns) in memory, never O(tiles) or O(pixels): choosing a tile for a
/// 1,000,000 x 1,000,000 image (about 4e9 tiles at the smallest size the search tries) takes a few
/// MiB of heap, where a grid of every tile would take hundreds of GiB.
#[test]
fn planning_a_huge_image_needs_little_memory() {
    use seamless::planner::TilePlanner;
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let model = random_model(unet(1, 2, 8, 2, true, "transpose"), 3);
    let base = LIVE.load(Ordering::SeqCst);
    PEAK.store(base, Ordering::SeqCst);
    let planner = TilePlanner::new(&model, 1_000_000, 1_000_000, &seamless::cpu::CPU_F32).unwrap();
    let c = planner.choose(64 << 20).unwrap();
    let grown = PEAK.load(Ordering::SeqCst) - base;
    println!("tile {}x{}, {} tiles, planning heap {} KiB", c.tile_h, c.tile_w, c.tiles, grown >> 10);
    assert!(c.tiles > 1_000_000, "{} tiles", c.tiles);
    assert!(grown < 64 << 20, "planning took {grown} bytes of heap");
}
