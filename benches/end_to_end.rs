//! Whole forward passes of small models through the planned CPU executor (the path `seamless
//! infer` takes per tile). `cargo bench --bench end_to_end`; throughput is reported in pixels.
//! For the full-size numbers use `seamless bench unet-64` / `tools/bench_cpu_vs_ort.py`.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use seamless::cpu::{self, Buffers};
use seamless::model::ModelConfig;
use seamless::model::weights::SplitMix64;
use seamless::planner::ArenaPlan;
use seamless::{Model, Tensor};

fn end_to_end(cr: &mut Criterion) {
    let mut g = cr.benchmark_group("forward");
    g.sample_size(10);
    for (preset, n) in [("unet-16-d3", 128), ("fcdensenet-56", 64)] {
        let m = Model::random(ModelConfig::preset(preset).expect("preset"), 0).expect("model");
        let mut rng = SplitMix64(3);
        let x = Tensor::from_vec(
            m.in_channels(),
            n,
            n,
            (0..m.in_channels() * n * n).map(|_| rng.normal() as f32).collect(),
        );
        let plan = ArenaPlan::new(&m.graph, n, n).expect("plan");
        let mut bufs = Buffers::default();
        g.throughput(Throughput::Elements((n * n) as u64));
        g.bench_function(format!("{preset}_{n}x{n}"), |b| {
            b.iter(|| cpu::run_planned(&m.graph, &plan, &x, &mut bufs, false).expect("forward"))
        });
    }
    g.finish();
}

criterion_group!(benches, end_to_end);
criterion_main!(benches);
