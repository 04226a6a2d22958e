//! The arena schedule the CUDA backend follows (`planner::Schedule`), tested without a GPU: a
//! small interpreter does what each step says with the CPU ops over a `Vec<f32>` arena, poisons
//! every freed region with NaN, and must give the plain executor's output bit for bit, for both
//! model families, several window sizes, with fused conv pre-ops and with them split into their
//! own nodes (the graph the CUDA backend runs).

mod common;

use common::*;
use seamless::cpu;
use seamless::graph::Graph;
use seamless::model::weights::SplitMix64;
use seamless::planner::{Action, ArenaPlan, Schedule, Slot};
use seamless::{Model, Tensor};

fn models() -> Vec<Model> {
    vec![
        random_model(unet(1, 2, 4, 3, true, "transpose"), 1),
        random_model(unet(2, 3, 4, 2, false, "bilinear"), 2),
        random_model(unet(1, 2, 2, 2, true, "nearest"), 3),
        random_model(densenet(1, 3, 4, 3, &[2, 3], 2), 4),
        random_model(densenet(2, 2, 6, 2, &[1, 2, 2], 3), 5),
        random_model(densenet(3, 4, 8, 4, &[2], 1), 6),
    ]
}

fn region(arena: &[f32], s: Slot) -> &[f32] {
    &arena[s.offset..s.end()]
}

/// Run `graph` on `input` by following `schedule`, as the device executor does.
fn interpret(graph: &Graph, plan: &ArenaPlan, schedule: &Schedule, input: &Tensor) -> Result<Tensor, String> {
    let mut arena = vec![f32::NAN; schedule.arena_elems];
    let tensor = |arena: &[f32], node: usize, s: Slot| {
        let sh = plan.shapes[node];
        Tensor::from_vec(sh.c, sh.h, sh.w, region(arena, s).to_vec())
    };
    for step in &schedule.steps {
        let node = &graph.nodes[step.node];
        for action in &step.actions {
            match *action {
                Action::Input { dst } => arena[dst.offset..dst.end()].copy_from_slice(&input.data),
                Action::Copy { src, dst } => {
                    let part = region(&arena, src).to_vec();
                    if part.iter().any(|v| v.is_nan()) {
                        return Err(format!("{}: copies poisoned memory", node.name));
                    }
                    arena[dst.offset..dst.end()].copy_from_slice(&part);
                }
                Action::Launch { src, dst } => {
                    let x = tensor(&arena, node.inputs[0], src);
                    if x.data.iter().any(|v| v.is_nan()) {
                        return Err(format!("{}: reads poisoned memory", node.name));
                    }
                    let y = cpu::run_op(&node.op, &[&x]);
                    arena[dst.offset..dst.end()].copy_from_slice(&y.data);
                }
                Action::InPlace { slot } => {
                    let x = tensor(&arena, node.inputs[0], slot);
                    if x.data.iter().any(|v| v.is_nan()) {
                        return Err(format!("{}: reads poisoned memory in place", node.name));
                    }
                    let y = cpu::run_op(&node.op, &[&x]);
                    arena[slot.offset..slot.end()].copy_from_slice(&y.data);
                }
            }
        }
        for s in &step.freed {
            arena[s.offset..s.end()].fill(f32::NAN);
        }
    }
    Ok(tensor(&arena, graph.output, schedule.output))
}

fn check(graph: &Graph, reference: &Tensor, input: &Tensor, what: &str) {
    let plan = ArenaPlan::new(graph, input.h, input.w).unwrap();
    let schedule = Schedule::new(graph, &plan).unwrap_or_else(|e| panic!("{what}: {e}"));
    assert_eq!(schedule.steps.len(), graph.nodes.len());
    let got = interpret(graph, &plan, &schedule, input).unwrap_or_else(|e| panic!("{what}: {e}"));
    assert_eq!(first_difference(&got, reference), None, "{what}");
    assert!(got.data.iter().all(|v| v.is_finite()), "{what}: poisoned memory reached the output");
}

#[test]
fn following_the_schedule_gives_the_plain_executors_output() {
    let mut rng = SplitMix64(23);
    for model in models() {
        let a = model.align();
        let split = model.graph.without_conv_pre();
        for _ in 0..4 {
            let h = a * (1 + rng.next_u64() as usize % 4);
            let w = a * (1 + rng.next_u64() as usize % 4);
            let img = random_image(&mut rng, model.in_channels(), h, w);
            let (plain, _) = cpu::run_unplanned(&model.graph, &img).unwrap();
            let what = format!("{} at {h}x{w}", model.config.config_json());
            check(&model.graph, &plain, &img, &format!("{what}, fused"));
            // The split graph computes the same values (the fused pre-op is the same arithmetic);
            // compare with its own plain run so this holds whatever the fusion's rounding.
            let (plain_split, _) = cpu::run_unplanned(&split, &img).unwrap();
            check(&split, &plain_split, &img, &format!("{what}, pre-ops split"));
        }
    }
}

#[test]
fn the_split_graph_is_the_one_with_extra_steps() {
    // FC-DenseNet fuses BN -> ReLU into the next conv; the CUDA backend runs it split, so its
    // schedule has in-place or launched scale-shifts the fused one does not.
    let model = random_model(densenet(1, 3, 4, 3, &[2, 3], 2), 4);
    assert!(model.graph.has_conv_pre());
    let a = model.align();
    let split = model.graph.without_conv_pre();
    let steps = |g: &Graph| {
        let plan = ArenaPlan::new(g, 2 * a, 2 * a).unwrap();
        Schedule::new(g, &plan).unwrap().launches().count()
    };
    assert!(steps(&split) > steps(&model.graph));
}

#[test]
fn every_action_stays_inside_the_arena_and_launches_never_alias() {
    for model in models() {
        let a = model.align();
        for graph in [model.graph.clone(), model.graph.without_conv_pre()] {
            let plan = ArenaPlan::new(&graph, 3 * a, 2 * a).unwrap();
            let s = Schedule::new(&graph, &plan).unwrap();
            for step in &s.steps {
                for action in &step.actions {
                    let (src, dst) = match *action {
                        Action::Input { dst } => (None, dst),
                        Action::Copy { src, dst } | Action::Launch { src, dst } => (Some(src), dst),
                        Action::InPlace { slot } => (None, slot),
                    };
                    assert!(dst.end() <= s.arena_elems);
                    if let Some(src) = src {
                        assert!(src.end() <= s.arena_elems && !src.overlaps(&dst));
                    }
                }
            }
        }
    }
}

/// The device memory model plans the graph the CUDA backend runs (pre-ops split) and counts one
/// input and one output staging buffer.
#[test]
fn the_device_memory_model_counts_the_split_graph_and_the_staging_buffers() {
    use seamless::planner::{Precision, tile_plan};
    for model in models() {
        let a = model.align();
        let split = model.graph.without_conv_pre();
        for precision in [Precision::F32, Precision::F16] {
            let (h, w) = (2 * a, 3 * a);
            let p = tile_plan::peak(&model.graph, h, w, &seamless::cuda::DeviceMemory { precision }).unwrap();
            let plan = ArenaPlan::new(&split, h, w).unwrap();
            let e = precision.bytes();
            assert_eq!(p.arena_bytes, plan.arena_elems * e);
            assert_eq!(p.staging_bytes, (model.in_channels() + model.classes()) * h * w * e);
            assert_eq!(p.weight_bytes, seamless::cuda::weights::device_bytes(&split, precision));
            assert_eq!(p.workspace_bytes, 0);
            assert_eq!(p.total(), p.arena_bytes + p.weight_bytes + p.staging_bytes);
        }
    }
}
