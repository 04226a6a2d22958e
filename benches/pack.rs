//! Packing a model's convolution weights for the CPU engines: what a process does once per model
//! before its first window. U-Net-64 (31 M weights, seeded random), its Winograd and its direct
//! layers apart, for the fastest f32 and bf16 engines this CPU has and for the AMX tiles' layout,
//! into buffers already faulted in (the page faults of fresh memory are the start-up profile's business, not this bench's).
//! `cargo bench --bench pack`.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use seamless::cpu::{conv, direct::Isa};
use seamless::graph::{ConvAlgo, Op};
use seamless::model::{Model, ModelConfig};
use seamless::planner::Precision;

fn packing(cr: &mut Criterion) {
    let model = Model::random(ModelConfig::preset("unet-64").expect("a preset"), 0).expect("a model");
    let mut g = cr.benchmark_group("pack_unet64");
    g.sample_size(20);
    // The fastest engine of each precision, and the AMX tiles' layout (which the AMX engine packs
    // its direct layers into on any CPU; its Winograd layers are the vector engine's).
    let engines = [
        (Isa::detect_for(Precision::F32), &[("direct", false), ("winograd", true)][..]),
        (Isa::detect_for(Precision::Bf16), &[("direct", false), ("winograd", true)][..]),
        (Isa::AmxEmulated, &[("direct", false)][..]),
    ];
    for (isa, kinds) in engines {
        for &(name, winograd) in kinds {
            let layers: Vec<_> = model
                .graph
                .nodes
                .iter()
                .filter_map(|n| match &n.op {
                    Op::Conv2d(c) if (c.algo == ConvAlgo::Winograd2) == winograd => Some(c),
                    _ => None,
                })
                .collect();
            let mut bufs: Vec<Vec<f32>> = layers.iter().map(|c| vec![1.0; conv::packed_elems(c, isa)]).collect();
            let weights: usize = layers.iter().map(|c| c.weight.len()).sum();
            g.throughput(Throughput::Elements(weights as u64));
            g.bench_function(BenchmarkId::new(name, format!("{isa:?}")), |b| {
                b.iter(|| {
                    for (c, buf) in layers.iter().zip(&mut bufs) {
                        conv::pack(c, buf, isa);
                    }
                })
            });
        }
    }
    g.finish();
}

criterion_group!(benches, packing);
criterion_main!(benches);
