//! Real-slide inputs: channel selection and RGB to grey, with tiled == whole bit for bit on each.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::*;
use seamless::Tensor;
use seamless::model::file::save_random;
use seamless::model::weights::SplitMix64;
use seamless::slide::select::Channels;

fn seamless(args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_seamless")).args(args).envs(env.iter().copied()).output().expect("runs")
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A random 8-bit image of `c` channels, as f32 values.
fn image_u8(c: usize, h: usize, w: usize, seed: u64) -> Tensor {
    let mut rng = SplitMix64(seed);
    Tensor::from_vec(c, h, w, (0..c * h * w).map(|_| (rng.next_u64() % 256) as f32).collect())
}

/// `img` (u8 values) as an interleaved striped TIFF: grey for one channel, RGB for three.
fn write_tiff_u8(path: &Path, img: &Tensor) {
    use tiff::encoder::{TiffEncoder, colortype};
    let plane = img.h * img.w;
    let mut data = vec![0u8; plane * img.c];
    for ch in 0..img.c {
        for i in 0..plane {
            data[i * img.c + ch] = img.data[ch * plane + i] as u8;
        }
    }
    let mut enc = TiffEncoder::new(std::fs::File::create(path).unwrap()).unwrap();
    match img.c {
        1 => enc.write_image::<colortype::Gray8>(img.w as u32, img.h as u32, &data).unwrap(),
        3 => enc.write_image::<colortype::RGB8>(img.w as u32, img.h as u32, &data).unwrap(),
        c => panic!("{c} channels"),
    }
}

/// `img` as an f32 .npy, (H,W) for one channel.
fn write_npy_f32(path: &Path, img: &Tensor) {
    assert_eq!(img.c, 1);
    seamless::image_io::save_npy(path, &[img.h as u64, img.w as u64], img.data.iter().copied()).unwrap();
}

struct Dir(tempfile::TempDir);

impl Dir {
    fn new() -> Dir {
        let d = Dir(tempfile::tempdir().unwrap());
        save_random(&unet(1, 2, 4, 2, true, "transpose"), 5, false, &d.p("grey-model.safetensors"), "test").unwrap();
        d
    }
    fn p(&self, n: &str) -> PathBuf {
        self.0.path().join(n)
    }
    /// `seamless infer` of the one-channel model on `input` into `out` with `extra` options.
    fn infer(&self, input: &Path, out: &str, extra: &[&str]) -> Output {
        self.infer_env(input, out, extra, &[])
    }
    fn infer_env(&self, input: &Path, out: &str, extra: &[&str], env: &[(&str, &str)]) -> Output {
        let (m, o) = (self.p("grey-model.safetensors"), self.p(out));
        let mut args = vec!["infer", "--model", s(&m), "--input", s(input), "--output", s(&o), "-q"];
        args.extend_from_slice(extra);
        seamless(&args, env)
    }
    fn bytes(&self, name: &str) -> Vec<u8> {
        std::fs::read(self.p(name)).unwrap()
    }
}

#[test]
fn an_rgb_slide_runs_a_grey_model_through_channels_grey_and_picks() {
    let d = Dir::new();
    let rgb = image_u8(3, 150, 211, 7);
    write_tiff_u8(&d.p("rgb.tif"), &rgb);

    // Without a selection the model cannot take it, and the message says what to do.
    let o = d.infer(&d.p("rgb.tif"), "x.npy", &[]);
    assert_eq!(o.status.code(), Some(4), "{}", stderr(&o));
    assert!(stderr(&o).contains("--channels grey"), "{}", stderr(&o));
    assert!(!d.p("x.npy").exists());

    // RGB -> grey: tiled == whole, and both equal the model run on the grey image itself.
    for (out, extra) in [("g-whole.npy", vec!["--whole"]), ("g-tiled.npy", vec!["--tile", "64"])] {
        let mut args = vec!["--channels", "grey"];
        args.extend(extra);
        let o = d.infer(&d.p("rgb.tif"), out, &args);
        assert!(o.status.success(), "{}", stderr(&o));
    }
    assert_eq!(d.bytes("g-whole.npy"), d.bytes("g-tiled.npy"), "grey: tiled != whole");
    write_npy_f32(&d.p("grey.npy"), &Channels::Grey.select(&rgb));
    assert!(d.infer(&d.p("grey.npy"), "g-direct.npy", &["--tile", "64"]).status.success());
    assert_eq!(d.bytes("g-tiled.npy"), d.bytes("g-direct.npy"), "grey from RGB != the grey image");

    // A pick: channel 2 of the RGB slide is the blue plane stored alone.
    let blue = Channels::Pick(vec![2]).select(&rgb);
    write_tiff_u8(&d.p("blue.tif"), &blue);
    for (input, out) in [("rgb.tif", "b-pick.npy"), ("blue.tif", "b-direct.npy")] {
        let extra: &[&str] = if input == "rgb.tif" { &["--channels", "2", "--tile", "64"] } else { &["--tile", "64"] };
        let o = d.infer(&d.p(input), out, extra);
        assert!(o.status.success(), "{}", stderr(&o));
    }
    assert_eq!(d.bytes("b-pick.npy"), d.bytes("b-direct.npy"));

    // The selection is part of the run: a resume with other channels is refused, the same resumes.
    let pick = |c: &'static str| -> Vec<&'static str> { vec!["--channels", c, "--tile", "64"] };
    let o = d.infer_env(&d.p("rgb.tif"), "r.npy", &pick("2"), &[("SEAMLESS_TEST_ABORT_AFTER_TILES", "2")]);
    assert!(!o.status.success() && d.p("r.npy.partial").exists(), "{}", stderr(&o));
    let o = d.infer(&d.p("rgb.tif"), "r.npy", &[pick("1"), vec!["--resume"]].concat());
    assert_eq!(o.status.code(), Some(5), "{}", stderr(&o));
    let o = d.infer(&d.p("rgb.tif"), "r.npy", &[pick("2"), vec!["--resume"]].concat());
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(d.bytes("r.npy"), d.bytes("b-pick.npy"));

    // Selections that do not fit the image, or do not parse, are refused before any output.
    for (extra, code, says) in [
        (&["--channels", "3"][..], 4, "channel 3"),
        (&["--channels", "0,1"][..], 4, "expects 1"),
        (&["--channels", "r"][..], 2, "--channels"),
    ] {
        let o = d.infer(&d.p("rgb.tif"), "bad.npy", extra);
        assert_eq!(o.status.code(), Some(code), "{extra:?}: {}", stderr(&o));
        assert!(stderr(&o).contains(says), "{extra:?}: {}", stderr(&o));
        assert!(!d.p("bad.npy").exists());
    }
    let o = d.infer(&d.p("blue.tif"), "bad.npy", &["--channels", "grey"]);
    assert_eq!(o.status.code(), Some(4), "{}", stderr(&o));
    assert!(stderr(&o).contains("RGB"), "{}", stderr(&o));
}
