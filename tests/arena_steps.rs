//! The arena schedule the CUDA backend follows (`planner::Schedule`), tested without a GPU: the
//! CPU executor follows the same steps, poisoning every freed region with NaN and refusing to
//! read one, and must give the plain executor's output bit for bit, for both model families,
//! several window sizes, with fused conv pre-ops and with them split into their own nodes (the
//! graph the CUDA backend runs).

mod common;

use common::*;
use seamless::cpu::{self, Buffers};
use seamless::graph::{Graph, Op};
use seamless::model::weights::SplitMix64;
use seamless::planner::{Action, ArenaPlan, Schedule};
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

fn check(graph: &Graph, reference: &Tensor, input: &Tensor, what: &str) {
    let plan = ArenaPlan::new(graph, input.h, input.w).unwrap();
    let schedule = Schedule::new(graph, &plan).unwrap_or_else(|e| panic!("{what}: {e}"));
    assert_eq!(schedule.steps.len(), graph.nodes.len());
    let got =
        cpu::run_planned(graph, &plan, input, &mut Buffers::default(), true).unwrap_or_else(|e| panic!("{what}: {e}"));
    assert_eq!(first_difference(&got, reference), None, "{what}");
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

#[test]
fn a_value_freed_before_its_last_reader_is_caught() {
    let model = &models()[0];
    let a = model.align();
    let img = random_image(&mut SplitMix64(7), model.in_channels(), 2 * a, 2 * a);
    let mut plan = ArenaPlan::new(&model.graph, img.h, img.w).unwrap();
    let output_group = plan.group_of[model.graph.output];
    let g = (0..plan.group_live.len())
        .find(|&g| g != output_group && plan.group_slot[g].len > 0 && plan.group_live[g].0 < plan.group_live[g].1)
        .expect("a buffer read after the step that writes it");
    // Its last reader, as far as the plan now says, is the step that writes it.
    plan.group_live[g].1 = plan.group_live[g].0;
    let err = cpu::run_planned(&model.graph, &plan, &img, &mut Buffers::default(), true).unwrap_err();
    assert!(err.to_string().contains("poisoned"), "{err}");
}

#[test]
fn a_launch_over_its_own_input_is_refused_before_it_runs() {
    let model = &models()[0];
    let a = model.align();
    let img = random_image(&mut SplitMix64(8), model.in_channels(), 2 * a, 2 * a);
    let mut plan = ArenaPlan::new(&model.graph, img.h, img.w).unwrap();
    let (i, src) = model
        .graph
        .nodes
        .iter()
        .enumerate()
        .filter(|(i, n)| matches!(n.op, Op::Conv2d(_)) && !plan.in_place[*i])
        .map(|(i, n)| (i, plan.slots[n.inputs[0]]))
        .find(|&(i, src)| src.offset + plan.slots[i].len <= plan.arena_elems)
        .expect("a convolution whose output fits where its input starts");
    plan.slots[i].offset = src.offset;
    let err = cpu::run_planned(&model.graph, &plan, &img, &mut Buffers::default(), false).unwrap_err();
    assert!(err.to_string().contains("overlaps"), "{err}");
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
