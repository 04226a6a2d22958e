//! Convolution families, every implementation this CPU has (AVX-512, AVX2+FMA, portable): the
//! shapes U-Net and FC-DenseNet actually run, at small map sizes so a run takes seconds.
//! `cargo bench --bench conv`; throughput is reported in FLOP (2 per multiply-add).

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use seamless::Tensor;
use seamless::cpu::{conv, conv_transpose, direct::Isa};
use seamless::graph::{Conv2d, ConvTranspose2d, ScaleShift};
use seamless::model::weights::SplitMix64;

fn randv(rng: &mut SplitMix64, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.normal() as f32 * 0.1).collect()
}

fn conv_layer(rng: &mut SplitMix64, cin: usize, cout: usize, k: usize, pre: bool) -> Conv2d {
    Conv2d {
        cin,
        cout,
        k,
        weight: randv(rng, cout * cin * k * k),
        bias: randv(rng, cout),
        relu: true,
        pre: pre.then(|| ScaleShift { scale: randv(rng, cin), shift: randv(rng, cin), relu: true }),
        algo: Default::default(),
    }
}

fn convs(cr: &mut Criterion) {
    let mut rng = SplitMix64(1);
    // (name, cin, cout, k, fused BN-ReLU in front, map side)
    let cases = [
        ("unet_3x3_64to64", 64, 64, 3, false, 64),
        ("unet_3x3_512to512", 512, 512, 3, false, 16),
        ("densenet_growth_3x3_400to16", 400, 16, 3, true, 32),
        ("densenet_transition_1x1_192to192", 192, 192, 1, true, 32),
        ("classifier_1x1_64to2", 64, 2, 1, false, 64),
    ];
    let mut g = cr.benchmark_group("conv2d");
    g.sample_size(10);
    for (name, cin, cout, k, pre, n) in cases {
        let c = conv_layer(&mut rng, cin, cout, k, pre);
        let x = Tensor::from_vec(cin, n, n, randv(&mut rng, cin * n * n));
        g.throughput(Throughput::Elements((2 * cin * cout * k * k * n * n) as u64));
        for isa in Isa::available() {
            g.bench_with_input(BenchmarkId::new(name, format!("{isa:?}")), &isa, |b, &isa| {
                b.iter(|| conv::conv2d_isa(&x, &c, isa))
            });
        }
    }
    g.finish();
}

fn conv_transposes(cr: &mut Criterion) {
    let mut rng = SplitMix64(2);
    // (name, cin, cout, k, input side)
    let cases = [("unet_up_k2_256to128", 256, 128, 2, 32), ("densenet_up_k3_240to240", 240, 240, 3, 16)];
    let mut g = cr.benchmark_group("conv_transpose2d");
    g.sample_size(10);
    for (name, cin, cout, k, n) in cases {
        let c =
            ConvTranspose2d { cin, cout, k, weight: randv(&mut rng, cin * cout * k * k), bias: randv(&mut rng, cout) };
        let x = Tensor::from_vec(cin, n, n, randv(&mut rng, cin * n * n));
        g.throughput(Throughput::Elements((2 * cin * cout * k * k * n * n) as u64));
        for isa in Isa::available() {
            g.bench_with_input(BenchmarkId::new(name, format!("{isa:?}")), &isa, |b, &isa| {
                b.iter(|| conv_transpose::conv_transpose2d_isa(&x, &c, isa))
            });
        }
    }
    g.finish();
}

criterion_group!(benches, convs, conv_transposes);
criterion_main!(benches);
