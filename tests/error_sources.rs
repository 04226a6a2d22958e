//! A file that a codec cannot read gives `Error::Codec`, which keeps the codec library's own error
//! as its source (not only flattened into the message), takes its exit code from the file's side
//! (model 3, input 4, output 5), and still names the file and says what failed. NVRTC failures
//! likewise keep NVRTC's error (`Error::Nvrtc`, `Error::NvrtcCall`).

mod common;

use std::error::Error as _;
use std::path::Path;

use common::*;
use seamless::Error;
use seamless::error::Side;
use seamless::slide::{self, Format, OutSpec, OutType};

/// `err` is a codec error about `path` on `side`, whose source is a `S`, and whose message says
/// `what` and names the file.
fn assert_codec<S: std::error::Error + 'static>(err: &Error, side: Side, path: &Path, what: &str) {
    match err {
        Error::Codec { side: s, path: p, .. } => {
            assert_eq!(*s, side, "{err}");
            assert_eq!(p, path, "{err}");
        }
        other => panic!("expected Error::Codec, got {other:?}"),
    }
    let code = match side {
        Side::Model => 3,
        Side::Input => 4,
        Side::Output => 5,
    };
    assert_eq!(err.exit_code(), code, "{err}");
    let source = err.source().unwrap_or_else(|| panic!("no source: {err}"));
    assert!(source.downcast_ref::<S>().is_some(), "source is not a {}: {source:?}", std::any::type_name::<S>());
    let msg = err.to_string();
    assert!(msg.contains(&path.display().to_string()), "the message names no file: {msg}");
    assert!(msg.contains(what), "{msg}");
    // The source's text stays in the message, as it was when it was flattened into it.
    assert!(msg.ends_with(&source.to_string()), "{msg}");
}

fn open(path: &Path) -> seamless::Result<Box<dyn slide::Source>> {
    slide::open_source(path.to_str().unwrap(), None)
}

#[test]
fn a_corrupt_png_keeps_the_png_error() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("garbage.png");
    std::fs::write(&p, b"\x89PNG\r\n\x1a\nnot really").unwrap();
    let err = open(&p).err().expect("a corrupt PNG opens");
    assert_codec::<png::DecodingError>(&err, Side::Input, &p, "not a readable PNG");
}

#[test]
fn a_corrupt_tiff_keeps_the_tiff_error() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("img.tif");
    std::fs::write(&p, b"II*\0").unwrap();
    let err = open(&p).err().expect("a 4-byte TIFF opens");
    assert_codec::<tiff::TiffError>(&err, Side::Input, &p, "not a readable TIFF");
}

#[test]
fn a_tiff_chunk_that_does_not_inflate_keeps_the_tiff_error() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("img.tif");
    let spec = OutSpec { height: 32, width: 32, channels: 1, out: OutType::U8, chunk: 16, pixel_size: None };
    slide::stream::write_bands(&p, Format::Tiff, spec, &mut |y0, rows| {
        Ok(seamless::Tensor::from_vec(1, rows, 32, (0..rows * 32).map(|i| ((y0 * 32 + i) % 251) as f32).collect()))
    })
    .unwrap();
    // The first tile's Deflate stream starts after the 16-byte BigTIFF header: break its zlib header.
    let mut bytes = std::fs::read(&p).unwrap();
    bytes[16..18].copy_from_slice(&[0xff, 0xff]);
    std::fs::write(&p, bytes).unwrap();
    let mut src = open(&p).unwrap();
    let err = src.read(0, 0, 32, 32).expect_err("a broken tile decodes");
    assert_codec::<tiff::TiffError>(&err, Side::Input, &p, "cannot decode chunk 0");
}

#[test]
fn a_zarr_store_with_broken_metadata_keeps_the_zarrs_error() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("broken.zarr");
    std::fs::create_dir(&p).unwrap();
    std::fs::write(p.join("zarr.json"), b"{\"zarr_format\": 3, \"node_type\": ").unwrap();
    let err = open(&p).err().expect("a store with broken metadata opens");
    assert_codec::<zarrs::group::GroupCreateError>(
        &err,
        Side::Input,
        &p,
        "neither a Zarr array nor a readable Zarr group",
    );
}

#[test]
fn a_truncated_model_file_keeps_the_safetensors_error() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.safetensors");
    seamless::model::file::save_random(&unet(1, 2, 4, 1, true, "transpose"), 1, false, &good, "x").unwrap();
    let bytes = std::fs::read(&good).unwrap();
    let p = dir.path().join("truncated.safetensors");
    std::fs::write(&p, &bytes[..bytes.len() - 100]).unwrap();
    let err = seamless::model::file::load(&p).expect_err("a truncated model loads");
    assert_codec::<safetensors::SafeTensorError>(&err, Side::Model, &p, "not a valid safetensors file");
}

#[test]
fn a_model_whose_config_is_not_json_keeps_the_serde_error() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.safetensors");
    seamless::model::file::save_random(&unet(1, 2, 4, 1, true, "transpose"), 1, false, &good, "x").unwrap();
    let (tensors, mut meta) = model_parts(&good);
    for (k, v) in meta.iter_mut() {
        if k == "config" {
            *v = "{\"in_channels\": 1,".into();
        }
    }
    let meta: Vec<(&str, &str)> = meta.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let p = dir.path().join("bad-config.safetensors");
    write_safetensors(&p, &tensors, &meta);
    let err = seamless::model::file::load(&p).expect_err("a model with a broken config loads");
    assert_codec::<serde_json::Error>(&err, Side::Model, &p, "unet config");

    // The same configuration given on its own (`--arch`, `--config`): no file, exit 3 all the same.
    let err = seamless::model::config::ModelConfig::parse("unet", "{\"in_channels\": 1,").unwrap_err();
    assert!(matches!(err, Error::ConfigJson { .. }), "{err:?}");
    assert_eq!(err.exit_code(), 3);
    assert!(err.source().is_some_and(|s| s.is::<serde_json::Error>()), "{err:?}");
    assert!(err.to_string().starts_with("model configuration: unet config"), "{err}");
}

#[test]
fn an_unreadable_journal_keeps_the_serde_error() {
    use seamless::slide::stream::{self, StreamOptions};
    let dir = tempfile::tempdir().unwrap();
    let model = random_model(unet(1, 2, 4, 1, true, "transpose"), 2);
    let input = "synth:48x40:3";
    let opts = StreamOptions {
        resume: true,
        existing: stream::Existing::Replace,
        input_id: input.into(),
        ..StreamOptions::new(Format::Tiff, (16, 16), model.exact_halo())
    };
    let out = dir.path().join("out.tif");
    let journal = dir.path().join("out.tif.partial.journal");
    std::fs::write(dir.path().join("out.tif.partial"), b"").unwrap();
    std::fs::write(&journal, b"{\"version\": 3, \"model\": \n").unwrap();
    let backend = seamless::cpu::CpuBackend::default();
    let src = slide::open_source(input, None).unwrap();
    let err = stream::run(src, &model, &backend, &out, &opts, &mut |_| {}, &mut |_| {}, None)
        .expect_err("a resume from a broken journal runs");
    assert_codec::<serde_json::Error>(&err, Side::Output, &journal, "the journal is unreadable");
}

#[test]
fn nvrtc_errors_keep_nvrtcs_error() {
    use cudarc::nvrtc::result::NvrtcError;
    use cudarc::nvrtc::sys::nvrtcResult;
    let err = Error::Nvrtc {
        family: "conv",
        arch: "sm_90".into(),
        what: "options [\"--fmad=false\"]".into(),
        log: "conv.cu(3): error: expected a \";\"".into(),
        source: NvrtcError(nvrtcResult::NVRTC_ERROR_COMPILATION),
    };
    assert_eq!(err.exit_code(), 6);
    let nvrtc = NvrtcError(nvrtcResult::NVRTC_ERROR_COMPILATION);
    assert_eq!(
        err.to_string(),
        format!(
            "NVRTC could not compile kernels/conv.cu for sm_90 ({nvrtc}, options [\"--fmad=false\"]):\n\
             conv.cu(3): error: expected a \";\""
        )
    );
    let source = err.source().and_then(|s| s.downcast_ref::<NvrtcError>());
    assert_eq!(source, Some(&NvrtcError(nvrtcResult::NVRTC_ERROR_COMPILATION)));

    // Without a log (a step other than compiling failed), no empty log lines.
    let err = Error::Nvrtc {
        family: "pool",
        arch: "sm_80".into(),
        what: "getting the cubin".into(),
        log: String::new(),
        source: NvrtcError(nvrtcResult::NVRTC_ERROR_INTERNAL_ERROR),
    };
    assert!(err.to_string().ends_with("getting the cubin)"), "{err}");

    let err = Error::NvrtcCall { call: "nvrtcVersion", source: NvrtcError(nvrtcResult::NVRTC_ERROR_INTERNAL_ERROR) };
    assert_eq!(err.exit_code(), 6);
    assert!(err.to_string().starts_with("nvrtcVersion: "), "{err}");
    assert!(err.source().is_some_and(|s| s.is::<NvrtcError>()), "{err:?}");
}
