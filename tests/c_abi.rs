//! The C ABI: `include/seamless.h` is what cbindgen generates from `src/capi.rs` today, and a C
//! program compiled against it and the shared library gets, bit for bit, what the Rust embedding
//! API gives (and clean errors and cancellation). `SEAMLESS_BLESS=1` rewrites the header.

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::*;
use seamless::embed::{Device, Engine, Options};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn generated_header() -> String {
    let mut out = Vec::new();
    cbindgen::Builder::new()
        .with_crate(root())
        .with_config(cbindgen::Config::from_file(root().join("cbindgen.toml")).expect("cbindgen.toml"))
        .generate()
        .expect("cbindgen reads src/capi.rs")
        .write(&mut out);
    String::from_utf8(out).unwrap()
}

#[test]
fn the_header_is_what_cbindgen_generates() {
    let path = root().join("include/seamless.h");
    let want = generated_header();
    if std::env::var_os("SEAMLESS_BLESS").is_some() {
        std::fs::write(&path, &want).unwrap();
    }
    let have = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(have == want, "include/seamless.h is stale: run `SEAMLESS_BLESS=1 cargo test --release --test c_abi`");
    for f in ["seamless_engine_open", "seamless_segment", "seamless_run_file", "seamless_string_free"] {
        assert!(have.contains(f), "{f} missing from the header");
    }
}

/// The shared library of this build: cargo compiles the lib target once, as rlib and cdylib
/// together, and leaves the cdylib in the folder of the test binaries (`target/<profile>/deps`;
/// only `cargo build` copies it up a level).
fn library_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.parent().unwrap().to_path_buf()
}

#[test]
fn a_c_program_embeds_seamless() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("m.safetensors");
    seamless::model::file::save_random(&unet(1, 3, 4, 2, true, "transpose"), 5, false, &model, "c").unwrap();
    let exe = dir.path().join("embed");
    let lib = library_dir();
    // Linked as it is: a nested `cargo build` saw the LD_LIBRARY_PATH cargo test gives its
    // tests, reran the build script and recompiled the whole lib (a minute of CI).
    assert!(lib.join("libseamless.so").exists(), "no libseamless.so in {}", lib.display());
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let o = Command::new(&cc)
        .args(["-std=c11", "-Wall", "-Werror", "-I"])
        .arg(root().join("include"))
        .arg(root().join("tests/c/embed.c"))
        .arg("-L")
        .arg(&lib)
        .args(["-lseamless", "-o"])
        .arg(&exe)
        .output()
        .unwrap_or_else(|e| panic!("{cc}: {e}"));
    assert!(o.status.success(), "compiling the C program: {}", String::from_utf8_lossy(&o.stderr));
    let (probs, labels) = (dir.path().join("probs.f32"), dir.path().join("labels.npy"));
    let o = Command::new(&exe).arg(&model).arg(&probs).arg(&labels).env("LD_LIBRARY_PATH", &lib).output().unwrap();
    assert!(o.status.success(), "the C program: {}", String::from_utf8_lossy(&o.stderr));

    // The same call from Rust gives the same bits.
    let options = Options { device: Device::Cpu, memory_budget: Some(1 << 20), threads: Some(2), ..Options::default() };
    let engine = Engine::open(&model, &options).unwrap();
    let (c, h, w) = (1, 97, 131);
    let image = seamless::Tensor::from_vec(c, h, w, (0..c * h * w).map(|i| ((i * 7919) % 251) as f32).collect());
    let want = engine.segment(&image, &mut |_| {}, None).unwrap();
    let got: Vec<f32> =
        std::fs::read(&probs).unwrap().chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect();
    assert_eq!(got.len(), want.data.len());
    assert!(got.iter().zip(&want.data).all(|(a, b)| a.to_bits() == b.to_bits()), "C and Rust results differ");
    // And the tiled result is the whole-image one.
    let whole = Engine::open(&model, &Options { device: Device::Cpu, ..Options::default() }).unwrap();
    assert_eq!(bits(&whole.segment(&image, &mut |_| {}, None).unwrap()), bits(&want));
    // And that is the reference: the image z-scored as a whole, run whole (the engine normalises a
    // window at a time instead).
    use seamless::normalize::{self, Normalize};
    use seamless::pipeline::{PadMode, Tiling, infer};
    let mut z = image.clone();
    normalize::apply(&mut z, &normalize::statistics(&image, Normalize::Zscore));
    let reference = infer(&seamless::Model::open(model.to_str().unwrap()).unwrap(), &z, PadMode::Zero, Tiling::Whole);
    assert_eq!(bits(&reference.unwrap()), bits(&want));
    let labels = seamless::slide::read_image(labels.to_str().unwrap()).unwrap();
    assert_eq!((labels.c, labels.h, labels.w), (1, 50, 70));
}
