//! Model files: a round trip keeps every bit, f16 weights load, and every kind of broken file is
//! refused with a message that names the problem.

mod common;

use common::*;
use safetensors::Dtype;
use seamless::model::file::{load, save_random};
use seamless::model::weights::{RandomSource, SplitMix64};
use seamless::pipeline::{PadMode, Tiling, infer};
use seamless::{Error, Model};

fn small_unet() -> seamless::model::ModelConfig {
    unet(1, 2, 4, 2, true, "transpose")
}

#[test]
fn round_trip_reproduces_the_random_model_bit_for_bit() {
    let dir = tempfile::tempdir().unwrap();
    for (cfg, seed) in
        [(small_unet(), 3), (densenet(2, 3, 4, 3, &[1, 2], 1), 4), (unet(3, 2, 2, 3, false, "bilinear"), 5)]
    {
        let path = dir.path().join("m.safetensors");
        save_random(&cfg, seed, false, &path, "test").unwrap();
        let loaded = load(&path).unwrap();
        let direct = Model::random(cfg.clone(), seed).unwrap();
        assert_eq!(loaded.config, cfg);
        assert_eq!(loaded.description.as_deref(), Some("test"));
        let img = random_image(&mut SplitMix64(1), cfg.in_channels(), 37, 41);
        let a = infer(&loaded, &img, PadMode::Zero, Tiling::Whole).unwrap();
        let b = infer(&direct, &img, PadMode::Zero, Tiling::Whole).unwrap();
        assert_eq!(first_difference(&a, &b), None);
    }
}

/// A file is read with `pread` into the weights' buffers, a model embedded in the binary is
/// copied out of memory: both give every bit, wherever the data starts in the file (the header
/// may be padded to any length) and however many blocks a tensor spans.
#[test]
fn a_file_and_its_bytes_in_memory_load_the_same_weights_at_every_alignment() {
    let dir = tempfile::tempdir().unwrap();
    // U-Net-32's level-3 convolutions hold 590,000 values: three read blocks of 1 MiB.
    for (cfg, seed) in [(unet(3, 2, 32, 3, true, "transpose"), 6), (densenet(2, 3, 8, 4, &[2, 3], 2), 7)] {
        let path = dir.path().join("m.safetensors");
        save_random(&cfg, seed, false, &path, "test").unwrap();
        let want = Model::random(cfg.clone(), seed).unwrap().graph.fingerprint();
        let bytes = std::fs::read(&path).unwrap();
        let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        for pad in 0..4 {
            // The header padded with spaces, as the format allows: the data moves by `pad` bytes.
            let mut moved = ((n + pad) as u64).to_le_bytes().to_vec();
            moved.extend_from_slice(&bytes[8..8 + n]);
            moved.extend(std::iter::repeat_n(b' ', pad));
            moved.extend_from_slice(&bytes[8 + n..]);
            let padded = dir.path().join(format!("pad{pad}.safetensors"));
            std::fs::write(&padded, &moved).unwrap();
            assert_eq!(load(&padded).unwrap().graph.fingerprint(), want, "{cfg:?}: read, data at +{pad}");
            let mem = seamless::model::file::load_bytes(&moved, "in memory").unwrap();
            assert_eq!(mem.graph.fingerprint(), want, "{cfg:?}: in memory, data at +{pad}");
        }
    }
}

/// The values are read from the file, not through the map: a file cut short after its header was
/// parsed (another process truncating it while it loads) gives an error naming a tensor, where a
/// read through the map would have died of SIGBUS.
#[test]
fn a_file_cut_short_while_its_values_are_read_gives_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.safetensors");
    let cfg = unet(3, 2, 32, 3, true, "transpose");
    save_random(&cfg, 6, false, &path, "test").unwrap();
    let whole = std::fs::read(&path).unwrap();
    // The header as it was when parsed; the file as it is when the values are read.
    let cut = dir.path().join("cut.safetensors");
    std::fs::write(&cut, &whole[..whole.len() / 2]).unwrap();
    let file = std::fs::File::open(&cut).unwrap();
    let st = safetensors::SafeTensors::deserialize(&whole).unwrap();
    let mut src = seamless::model::weights::SafetensorsSource::new(st).reading(&file, &whole);
    let err = Model::build(cfg, &mut src, "cut.safetensors").expect_err("half a file must not load");
    assert_eq!(err.exit_code(), 3, "{err}");
    assert!(err.to_string().contains("could not be read"), "{err}");
}

#[test]
fn f16_weights_load_and_agree_with_f32_closely() {
    let dir = tempfile::tempdir().unwrap();
    let (p16, p32) = (dir.path().join("h.safetensors"), dir.path().join("f.safetensors"));
    save_random(&small_unet(), 8, true, &p16, "f16").unwrap();
    save_random(&small_unet(), 8, false, &p32, "f32").unwrap();
    let (m16, m32) = (load(&p16).unwrap(), load(&p32).unwrap());
    let img = random_image(&mut SplitMix64(2), 1, 32, 32);
    let d = max_abs_diff(
        &infer(&m16, &img, PadMode::Zero, Tiling::Whole).unwrap(),
        &infer(&m32, &img, PadMode::Zero, Tiling::Whole).unwrap(),
    );
    assert!(d > 0.0 && d < 2e-2, "f16 rounding should change probabilities a little: {d}");
}

/// Load a variant of a valid file and return the error message.
fn broken(edit: impl FnOnce(&mut Vec<RawTensor>, &mut Vec<(String, String)>)) -> String {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.safetensors");
    save_random(&small_unet(), 1, false, &good, "x").unwrap();
    let (mut tensors, mut meta) = model_parts(&good);
    edit(&mut tensors, &mut meta);
    let bad = dir.path().join("bad.safetensors");
    let meta_ref: Vec<(&str, &str)> = meta.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    write_safetensors(&bad, &tensors, &meta_ref);
    let err = load(&bad).expect_err("a broken model must not load");
    assert_eq!(err.exit_code(), 3, "{err}");
    err.to_string()
}

/// Metadata claiming an FC-DenseNet with one dense block of `layers` layers of `growth` channels.
fn as_densenet(meta: &mut [(String, String)], growth: usize, layers: usize) {
    set(meta, "architecture", "fcdensenet");
    let cfg = format!(
        r#"{{"in_channels":1,"classes":2,"first_conv_filters":8,"growth_rate":{growth},"down_blocks":[{layers}],"bottleneck_layers":1,"up_blocks":[1]}}"#
    );
    set(meta, "config", &cfg);
}

fn set(meta: &mut [(String, String)], key: &str, value: &str) {
    meta.iter_mut().find(|(k, _)| k == key).unwrap().1 = value.to_string();
}

#[test]
fn every_broken_model_file_is_refused_by_name() {
    let name = "inc.double_conv.0.weight";
    let cases: Vec<(&str, String)> = vec![
        ("missing tensor 'inc.double_conv.0.weight'", broken(|t, _| t.retain(|x| x.0 != name))),
        (
            "unexpected tensor 'extra.weight'",
            broken(|t, _| t.push(("extra.weight".into(), Dtype::F32, vec![1], vec![0; 4]))),
        ),
        (
            "tensor 'inc.double_conv.0.weight' has shape [4, 1, 3, 1]",
            broken(|t, _| {
                let x = t.iter_mut().find(|x| x.0 == name).unwrap();
                x.2 = vec![4, 1, 3, 1];
                x.3.truncate(4 * 3 * 4);
            }),
        ),
        (
            "tensor 'outc.conv.bias' has dtype I32",
            broken(|t, _| t.iter_mut().find(|x| x.0 == "outc.conv.bias").unwrap().1 = Dtype::I32),
        ),
        ("no 'architecture' key", broken(|_, m| m.retain(|(k, _)| k != "architecture"))),
        ("unknown architecture 'resnet'", broken(|_, m| set(m, "architecture", "resnet"))),
        ("format_version \"7\" is not supported", broken(|_, m| set(m, "format_version", "7"))),
        ("metadata 'format' is", broken(|_, m| set(m, "format", "other"))),
        (
            "unknown field `colour`",
            broken(|_, m| set(m, "config", r#"{"in_channels":1,"classes":2,"base_filters":4,"depth":2,"colour":1}"#)),
        ),
        ("EOF while parsing", broken(|_, m| set(m, "config", r#"{"in_channels":1"#))),
        (
            "align_corners=True",
            broken(|_, m| {
                set(
                    m,
                    "config",
                    r#"{"in_channels":1,"classes":2,"base_filters":4,"depth":2,"up_mode":"bilinear_align_corners"}"#,
                )
            }),
        ),
        (
            "'instance' normalisation",
            broken(|_, m| {
                set(m, "config", r#"{"in_channels":1,"classes":2,"base_filters":4,"depth":2,"norm":"instance"}"#)
            }),
        ),
        (
            "base_filters is 1000000000; at most 1048576",
            broken(|_, m| set(m, "config", r#"{"in_channels":1,"classes":2,"base_filters":1000000000,"depth":2}"#)),
        ),
        (
            "this configuration needs",
            broken(|_, m| set(m, "config", r#"{"in_channels":1,"classes":2,"base_filters":1048576,"depth":8}"#)),
        ),
        ("a dense block has more than 1024 layers", broken(|_, m| as_densenet(m, 12, 100_000))),
        ("this configuration needs", broken(|_, m| as_densenet(m, 4096, 1000))),
        (
            "at most 65536 are supported",
            broken(|_, m| set(m, "config", r#"{"in_channels":1,"classes":70000,"base_filters":4,"depth":2}"#)),
        ),
        (
            "depth must be",
            broken(|_, m| set(m, "config", r#"{"in_channels":1,"classes":2,"base_filters":4,"depth":0}"#)),
        ),
        (
            "tensor 'outc.conv.bias' holds NaN or infinity (element 1: NaN)",
            broken(|t, _| {
                t.iter_mut().find(|x| x.0 == "outc.conv.bias").unwrap().3[4..8].copy_from_slice(&f32::NAN.to_le_bytes())
            }),
        ),
        (
            "tensor 'inc.double_conv.0.weight' holds NaN or infinity (element 0: inf)",
            broken(|t, _| {
                t.iter_mut().find(|x| x.0 == name).unwrap().3[..4].copy_from_slice(&f32::INFINITY.to_le_bytes())
            }),
        ),
        (
            "(a variance) is negative at element 2: -0.5",
            broken(|t, _| {
                let v = t.iter_mut().find(|x| x.0.ends_with("running_var")).expect("the test model has batch norm");
                v.3[8..12].copy_from_slice(&(-0.5f32).to_le_bytes());
            }),
        ),
    ];
    for (want, got) in cases {
        assert!(got.contains(want), "expected the error to mention {want:?}, got: {got}");
    }
}

#[test]
fn all_problems_are_reported_at_once() {
    let msg = broken(|t, _| {
        t.retain(|x| x.0 != "outc.conv.weight" && x.0 != "outc.conv.bias");
    });
    assert!(msg.contains("outc.conv.weight") && msg.contains("outc.conv.bias") && msg.contains("2 problem"), "{msg}");
}

#[test]
fn truncated_and_corrupt_files_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.safetensors");
    save_random(&small_unet(), 1, false, &good, "x").unwrap();
    let bytes = std::fs::read(&good).unwrap();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("truncated", bytes[..bytes.len() - 100].to_vec()),
        ("header only", bytes[..20].to_vec()),
        ("empty", vec![]),
        ("garbage", (0..1000u32).map(|i| (i * 7919 % 251) as u8).collect()),
    ];
    for (what, data) in cases {
        let p = dir.path().join(format!("{what}.safetensors"));
        std::fs::write(&p, data).unwrap();
        let err = load(&p).expect_err(what);
        assert!(matches!(err, Error::Codec { side: seamless::error::Side::Model, .. }), "{what}: {err}");
        assert!(
            std::error::Error::source(&err).is_some_and(|s| s.is::<safetensors::SafeTensorError>()),
            "{what}: {err}"
        );
        assert!(err.to_string().contains("not a valid safetensors file"), "{what}: {err}");
    }
    let err = load(&dir.path().join("absent.safetensors")).unwrap_err();
    assert!(err.to_string().contains("cannot open"), "{err}");
    // The system's error is kept as the source, not only flattened into the message.
    assert_eq!(err.exit_code(), 3, "{err}");
    let source = std::error::Error::source(&err).and_then(|s| s.downcast_ref::<std::io::Error>());
    assert_eq!(source.map(|e| e.kind()), Some(std::io::ErrorKind::NotFound), "{err}");
    let err = seamless::slide::open_source(dir.path().join("absent.tif").to_str().unwrap(), None).err().unwrap();
    assert_eq!(err.exit_code(), 4, "{err}");
    assert!(std::error::Error::source(&err).is_some(), "{err}");
}

#[test]
fn folded_graph_computes_the_same_network() {
    // Batch-norm folding and fusion change rounding only.
    for cfg in [small_unet(), densenet(1, 2, 4, 3, &[1, 1], 1)] {
        let m = Model::random(cfg.clone(), 2).unwrap();
        // The same seed draws the same weights.
        let source = seamless::model::source_graph(&cfg, &mut RandomSource::new(2), "random").unwrap().0;
        assert_eq!(source.nodes.len(), m.source_layers.len());
        let img = random_image(&mut SplitMix64(3), 1, 32, 32);
        let (folded, _) = seamless::cpu::run(&m.graph, &img).unwrap();
        let (plain, _) = seamless::cpu::run(&source, &img).unwrap();
        assert!(m.graph.nodes.len() < source.nodes.len());
        let d = max_abs_diff(&folded, &plain);
        assert!(d < 1e-5, "max difference {d}");
    }
}

/// A model's fingerprint is what `--resume` and `--shard` compare: it must not change while the
/// numerics revision stays (`seamless::numerics`), or a run resumed by a newer build of the same
/// revision would be refused. These are the digests of revision 1, the first that journals record
/// (XXH3-128; journals of earlier builds held BLAKE3 digests, and are refused for their missing
/// revision anyway). U-Net-32's level-4 tensors (9 MB) are hashed a block at a time on several
/// threads, the others' whole.
#[test]
fn graph_fingerprints_stay_what_this_numerics_revision_wrote() {
    assert_eq!(seamless::numerics::REVISION, 1, "a new revision may pin new fingerprints here");
    let got: Vec<(&str, String)> = [("unet-32", 0), ("unet-8-d2", 1), ("fcdensenet-56", 2)]
        .into_iter()
        .map(|(preset, seed)| {
            let model = seamless::Model::random(seamless::model::ModelConfig::preset(preset).unwrap(), seed).unwrap();
            (preset, model.graph.fingerprint())
        })
        .collect();
    let want = [
        ("unet-32", "7e589a1c6105d585c02b491a5a683a94"),
        ("unet-8-d2", "d7d4e905fb405352a37506f70ce3ea88"),
        ("fcdensenet-56", "7d276663cd5b351895621e817a47e536"),
    ];
    assert!(got.iter().map(|(p, d)| (*p, d.as_str())).eq(want), "{got:?}");
}

/// Every bit of a large tensor counts, where it is hashed a block at a time: one bit flipped in one
/// block, or two blocks swapped, is another fingerprint.
#[test]
fn a_fingerprint_sees_every_bit_and_the_order_of_a_large_tensors_blocks() {
    let model = seamless::Model::random(seamless::model::ModelConfig::preset("unet-32").unwrap(), 0).unwrap();
    let want = model.graph.fingerprint();
    fn largest(g: &mut seamless::graph::Graph) -> &mut Vec<f32> {
        g.nodes
            .iter_mut()
            .filter_map(|n| match &mut n.op {
                seamless::graph::Op::Conv2d(c) => Some(&mut c.weight),
                _ => None,
            })
            .max_by_key(|w| w.len())
            .unwrap()
    }
    let block = 1 << 18;
    let mut flipped = model.graph.clone();
    let w = largest(&mut flipped);
    assert!(w.len() > 4 * block, "{} values: a tensor of several blocks", w.len());
    w[3 * block + 17] = f32::from_bits(w[3 * block + 17].to_bits() ^ 1);
    assert_ne!(flipped.fingerprint(), want, "one bit flipped");
    let mut swapped = model.graph.clone();
    let w = largest(&mut swapped);
    let (a, b) = w.split_at_mut(2 * block);
    a[..block].swap_with_slice(&mut b[..block]);
    assert_ne!(swapped.fingerprint(), want, "blocks 0 and 2 swapped");
}
