//! The bits `seamless::numerics::REVISION` stands for. A journal and a shard record hold the
//! revision, and a run is continued only by a build of the same one; so every change that moves an
//! output bit must bump it. These digests make that impossible to forget: they pin the CPU's raw
//! outputs (the logits, before the softmax, whose exp is the C library's) at f32 and at bf16 in both
//! of its summation orders, for both model families, direct and Winograd; and the text of every CUDA
//! kernel, whose bits on a GPU this machine cannot compute.
//!
//! When one fails: if the change meant to move those bits, bump `REVISION` and write the new digests
//! here (the message gives them); if it did not, the change is a bug.

mod common;

use common::*;
use seamless::Model;
use seamless::backend::Backend;
use seamless::cpu::{CpuBackend, direct::Isa};
use seamless::graph::{Graph, Op};
use seamless::model::weights::SplitMix64;
use seamless::planner::Precision;

/// The revision the digests below were taken at.
const PINNED_AT: u32 = 1;

/// BLAKE3 of the output's bits, little-endian, shortened.
fn digest(t: &seamless::Tensor) -> String {
    let bytes: Vec<u8> = t.data.iter().flat_map(|v| v.to_bits().to_le_bytes()).collect();
    blake3::hash(&bytes).to_hex()[..16].to_string()
}

/// `graph` up to node `output`, the nodes after it dropped.
fn up_to(graph: &Graph, output: usize) -> Graph {
    Graph { nodes: graph.nodes[..=output].to_vec(), output }
}

/// What each case's bits are pinned at: the logits (before the softmax, whose exp is the C
/// library's), and the input of the last convolution. A final 1 x 1 convolution sums one tap, and
/// at bf16 it reads its input rounded to bf16: the two bf16 orders differ only in bits that
/// rounding drops, so only the second shows them.
fn pinned_outputs(model: &Model) -> [Graph; 2] {
    let g = &model.graph;
    let softmax = g.nodes.last().expect("a graph");
    assert!(matches!(softmax.op, Op::Softmax), "the graph ends in a softmax");
    let last_conv = g.nodes.iter().rposition(|n| matches!(n.op, Op::Conv2d(_))).expect("a convolution");
    [up_to(g, softmax.inputs[0]), up_to(g, g.nodes[last_conv].inputs[0])]
}

/// The models and the image each runs on (a multiple of the model's alignment: no padding).
fn cases() -> Vec<(&'static str, Model, seamless::Tensor)> {
    let mut rng = SplitMix64(0x5EED);
    let mut case = |name, model: Model, h: usize, w: usize| {
        let (a, c) = (model.align(), model.in_channels());
        let img = random_image(&mut rng, c, h * a, w * a);
        (name, model, img)
    };
    vec![
        case("unet, transposed up-sampling", random_model(unet(3, 3, 8, 3, true, "transpose"), 11), 3, 2),
        case(
            "unet, Winograd, bilinear",
            winograd_everywhere(random_model(unet(1, 2, 8, 2, false, "bilinear"), 12)),
            5,
            3,
        ),
        // Sums of few bf16 products are often exact in f32, whatever their order: the tiles' order
        // shows only in layers of more than 16 channel pairs.
        case("unet, 32 to 128 channels", random_model(unet(3, 2, 32, 2, true, "transpose"), 15), 2, 2),
        case("fcdensenet", random_model(densenet(3, 3, 8, 4, &[2, 2], 2), 13), 3, 4),
        case("fcdensenet, Winograd", winograd_everywhere(random_model(densenet(2, 2, 8, 6, &[2], 2), 14)), 4, 4),
    ]
}

/// The digest of every case on every engine of `engines` this CPU has, which must all agree.
fn digests(engines: &[Isa]) -> Vec<String> {
    let engines: Vec<Isa> = engines.iter().copied().filter(|i| i.is_available()).collect();
    assert!(!engines.is_empty());
    cases()
        .into_iter()
        .map(|(name, model, img)| {
            let per_engine: Vec<String> = engines
                .iter()
                .map(|&isa| {
                    let backend = CpuBackend::default().with_engine(isa).unwrap();
                    let bits = pinned_outputs(&model)
                        .map(|g| digest(&backend.run(&g, &img).unwrap_or_else(|e| panic!("{name} on {isa:?}: {e}"))));
                    bits.join("/")
                })
                .collect();
            assert!(per_engine.iter().all(|d| d == &per_engine[0]), "{name}: the engines {engines:?} disagree");
            per_engine[0].clone()
        })
        .collect()
}

fn assert_pinned(what: &str, got: Vec<String>, want: &[&str]) {
    assert_eq!(
        seamless::numerics::REVISION,
        PINNED_AT,
        "numerics::REVISION was bumped: take the new digests ({what}: {got:?}) and set PINNED_AT"
    );
    assert!(
        got == want,
        "{what}: these bits are not those of numerics revision {PINNED_AT}: {got:?}, pinned {want:?}. If the \
         change meant to move them, bump seamless::numerics::REVISION and pin these; if not, it is a bug"
    );
}

#[test]
fn f32_outputs_are_those_of_this_numerics_revision() {
    let f32_engines: Vec<Isa> =
        Isa::NAMES.iter().map(|&(i, _)| i).filter(|i| i.precision() == Precision::F32).collect();
    assert_pinned(
        "f32",
        digests(&f32_engines),
        &[
            "41798fbcfec03ead/26530dd41625ad2c",
            "2a4b4e5b408d5131/0a5723d2e2c67cc7",
            "c1eac4902bede3e6/d38f2b0509bd0e8f",
            "cf7f0de3464b02ee/50d4b47339eb690d",
            "c2eadaf680ea0346/278c6faace16b1eb",
        ],
    );
}

#[test]
fn bf16_outputs_are_those_of_this_numerics_revision() {
    // Two summation orders: every tap of a pair before the next pair, or 16-pair blocks per tap.
    assert_pinned(
        "bf16, pairs first",
        digests(&[Isa::Bf16Portable, Isa::Avx512Bf16]),
        &[
            "61d6e609d3d29620/370a048028583561",
            "2bfb80cd10417ed0/3d88386273f6f0f4",
            "723097712ea9cf7d/0ef657fdd759887f",
            "e30fec9c67996883/f47611fd4a94b3f1",
            "9088014e1696faa2/545e5940593794d3",
        ],
    );
    assert_pinned(
        "bf16, 16-pair blocks",
        digests(&[Isa::AmxEmulated, Isa::Amx]),
        &[
            "61d6e609d3d29620/efa68fd416e6c762",
            "2bfb80cd10417ed0/3d88386273f6f0f4",
            "723097712ea9cf7d/dc8ede0b2fc8afba",
            "e30fec9c67996883/90d383225ace506a",
            "9088014e1696faa2/1adc3df6ea1723bf",
        ],
    );
}

#[test]
fn cuda_kernels_are_those_of_this_numerics_revision() {
    let mut h = blake3::Hasher::new();
    for text in std::iter::once(seamless::cuda::sources::COMMON)
        .chain(seamless::cuda::sources::FAMILIES.iter().flat_map(|f| [f.name, f.source]))
    {
        h.update(&(text.len() as u64).to_le_bytes());
        h.update(text.as_bytes());
    }
    assert_pinned("CUDA kernel sources", vec![h.finalize().to_hex()[..16].to_string()], &["f75592df1fee9a17"]);
}
