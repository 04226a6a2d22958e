//! Real-slide inputs: TIFF compressions and layouts of whole-slide scanners (JPEG in YCbCr, Zstd,
//! WebP, Deflate with a predictor, planar RGB), vendor slides through OpenSlide, pyramid levels,
//! channel selection and RGB to grey, with tiled == whole bit for bit on each.

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

/// How the tiles of [`write_tiled_tiff`] are stored.
#[derive(Clone, Copy, PartialEq, Debug)]
enum TileCoding {
    /// Uncompressed interleaved RGB.
    Raw,
    /// Each tile a JPEG (JFIF, YCbCr 4:2:0), photometric YCbCr: what scanners and vips write.
    JpegYcbcr,
    /// Zstd (compression 50000).
    Zstd,
    /// Lossless WebP (compression 50001).
    WebP,
    /// Deflate after horizontal differencing (predictor 2).
    DeflatePredictor,
    /// Uncompressed, one plane per channel (planar configuration 2).
    Planar,
    /// Marked Aperio JPEG 2000 (33003) but holding no valid codestream.
    BrokenJpeg2000,
    /// JPEG (JFIF, so YCbCr inside) in a page that says RGB, as Aperio writes them.
    JpegInRgbPage,
}

/// One stored tile of `raw` (tile x tile interleaved RGB) in `coding`; planar gives three.
fn encode_tile(raw: &[u8], tile: usize, coding: TileCoding) -> Vec<Vec<u8>> {
    use std::io::Write;
    match coding {
        TileCoding::Raw | TileCoding::BrokenJpeg2000 => vec![raw.to_vec()],
        TileCoding::JpegYcbcr | TileCoding::JpegInRgbPage => {
            let mut out = Vec::new();
            let mut enc = jpeg_encoder::Encoder::new(&mut out, 95);
            enc.set_sampling_factor(jpeg_encoder::SamplingFactor::R_4_2_0);
            enc.encode(raw, tile as u16, tile as u16, jpeg_encoder::ColorType::Rgb).unwrap();
            vec![out]
        }
        TileCoding::Zstd => vec![zstd::encode_all(raw, 3).unwrap()],
        TileCoding::WebP => {
            let mut out = Vec::new();
            image_webp::WebPEncoder::new(&mut out)
                .encode(raw, tile as u32, tile as u32, image_webp::ColorType::Rgb8)
                .unwrap();
            vec![out]
        }
        TileCoding::DeflatePredictor => {
            let mut diff = raw.to_vec();
            for row in diff.chunks_mut(tile * 3) {
                for i in (3..row.len()).rev() {
                    row[i] = row[i].wrapping_sub(row[i - 3]);
                }
            }
            let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
            z.write_all(&diff).unwrap();
            vec![z.finish().unwrap()]
        }
        TileCoding::Planar => (0..3).map(|c| raw.iter().skip(c).step_by(3).copied().collect()).collect(),
    }
}

/// An RGB (u8 values) pyramid as a classic tiled TIFF, one directory per level, each level's
/// first directory carrying `description` (an Aperio description makes it an SVS for OpenSlide).
fn write_tiled_tiff(path: &Path, levels: &[Tensor], tile: usize, description: &str, coding: TileCoding) {
    let mut file: Vec<u8> = b"II*\0\0\0\0\0".to_vec();
    let mut next_ifd_at = 4usize;
    for img in levels {
        assert_eq!(img.c, 3);
        let (across, down) = (img.w.div_ceil(tile), img.h.div_ceil(tile));
        let mut offsets = Vec::new();
        let mut counts = Vec::new();
        let mut planes: Vec<Vec<(u32, u32)>> = vec![Vec::new(); 3];
        for ty in 0..down {
            for tx in 0..across {
                // Edge tiles are stored whole, padded with zeros, as the format asks.
                let mut raw = vec![0u8; tile * tile * 3];
                for y in 0..tile.min(img.h - ty * tile) {
                    for x in 0..tile.min(img.w - tx * tile) {
                        for c in 0..3 {
                            let v = img.data[c * img.h * img.w + (ty * tile + y) * img.w + tx * tile + x];
                            raw[(y * tile + x) * 3 + c] = v as u8;
                        }
                    }
                }
                for (plane, bytes) in encode_tile(&raw, tile, coding).into_iter().enumerate() {
                    planes[plane].push((file.len() as u32, bytes.len() as u32));
                    file.extend_from_slice(&bytes);
                }
            }
        }
        // Planar files list every tile of the first channel, then of the second, and so on.
        for (o, n) in planes.concat() {
            offsets.push(o);
            counts.push(n);
        }
        let (compression, photometric, planar) = match coding {
            TileCoding::Raw | TileCoding::Planar => (1u16, 2u16, 1 + (coding == TileCoding::Planar) as u16),
            TileCoding::JpegYcbcr => (7, 6, 1),
            TileCoding::Zstd => (50000, 2, 1),
            TileCoding::WebP => (50001, 2, 1),
            TileCoding::DeflatePredictor => (8, 2, 1),
            TileCoding::BrokenJpeg2000 => (33003, 2, 1),
            TileCoding::JpegInRgbPage => (7, 2, 1),
        };
        let mut extra: Vec<u8> = Vec::new();
        // (tag, type, count, value or bytes): type 3 SHORT, 4 LONG, 2 ASCII.
        let mut entries: Vec<(u16, u16, u32, Vec<u8>)> = vec![
            (256, 4, 1, (img.w as u32).to_le_bytes().to_vec()),
            (257, 4, 1, (img.h as u32).to_le_bytes().to_vec()),
            (258, 3, 3, [8u16, 8, 8].iter().flat_map(|v| v.to_le_bytes()).collect()),
            (259, 3, 1, compression.to_le_bytes().to_vec()),
            (262, 3, 1, photometric.to_le_bytes().to_vec()),
            (270, 2, description.len() as u32 + 1, [description.as_bytes(), b"\0"].concat()),
            (277, 3, 1, 3u16.to_le_bytes().to_vec()),
            (284, 3, 1, planar.to_le_bytes().to_vec()),
            (322, 4, 1, (tile as u32).to_le_bytes().to_vec()),
            (323, 4, 1, (tile as u32).to_le_bytes().to_vec()),
            (324, 4, offsets.len() as u32, offsets.iter().flat_map(|v| v.to_le_bytes()).collect()),
            (325, 4, counts.len() as u32, counts.iter().flat_map(|v| v.to_le_bytes()).collect()),
        ];
        if coding == TileCoding::DeflatePredictor {
            entries.push((317, 3, 1, 2u16.to_le_bytes().to_vec()));
        }
        if coding == TileCoding::JpegYcbcr {
            entries.push((530, 3, 2, [2u16, 2].iter().flat_map(|v| v.to_le_bytes()).collect()));
        }
        entries.sort_by_key(|e| e.0);
        let ifd_at = file.len() + (file.len() % 2);
        file.resize(ifd_at, 0);
        file[next_ifd_at..next_ifd_at + 4].copy_from_slice(&(ifd_at as u32).to_le_bytes());
        let extra_at = ifd_at + 2 + entries.len() * 12 + 4;
        let mut ifd: Vec<u8> = (entries.len() as u16).to_le_bytes().to_vec();
        for (tag, ty, count, value) in &entries {
            ifd.extend_from_slice(&tag.to_le_bytes());
            ifd.extend_from_slice(&ty.to_le_bytes());
            ifd.extend_from_slice(&count.to_le_bytes());
            if value.len() <= 4 {
                let mut v = value.clone();
                v.resize(4, 0);
                ifd.extend_from_slice(&v);
            } else {
                ifd.extend_from_slice(&((extra_at + extra.len()) as u32).to_le_bytes());
                extra.extend_from_slice(value);
                extra.resize(extra.len() + extra.len() % 2, 0);
            }
        }
        next_ifd_at = ifd_at + ifd.len();
        ifd.extend_from_slice(&[0; 4]);
        file.extend_from_slice(&ifd);
        file.extend_from_slice(&extra);
    }
    std::fs::write(path, file).unwrap();
}

/// Every second pixel of every second row: the next pyramid level.
fn half(img: &Tensor) -> Tensor {
    let (h, w) = (img.h / 2, img.w / 2);
    let mut out = Tensor::zeros(img.c, h, w);
    for c in 0..img.c {
        for y in 0..h {
            for x in 0..w {
                out.data[(c * h + y) * w + x] = img.data[(c * img.h + 2 * y) * img.w + 2 * x];
            }
        }
    }
    out
}

/// OpenSlide is there, or this machine is not asked to have it (`.ci/run` installs it and sets
/// SEAMLESS_REQUIRE_OPENSLIDE=1, so CI always runs these checks).
fn openslide_here() -> bool {
    match seamless::slide::openslide::version() {
        Ok(_) => true,
        Err(e) if std::env::var("SEAMLESS_REQUIRE_OPENSLIDE").is_ok_and(|v| v == "1") => panic!("{e}"),
        Err(e) => {
            eprintln!("skipped: {e}");
            false
        }
    }
}

const APERIO: &str = "Aperio Image Library vTEST\r\n211x150 [0,0 211x150] (64x64) RAW|AppMag = 20|MPP = 0.4990";

#[test]
fn an_aperio_svs_reads_through_openslide_like_the_same_pixels_in_a_tiff() {
    let d = Dir::new();
    let rgb = image_u8(3, 150, 211, 11);
    let svs = d.p("slide.svs");
    write_tiled_tiff(&svs, &[rgb.clone(), half(&rgb)], 64, APERIO, TileCoding::Raw);
    write_tiff_u8(&d.p("same.tif"), &rgb);
    write_tiff_u8(&d.p("level1.tif"), &half(&rgb));

    // Without OpenSlide: a clear error, exit 4, nothing written.
    let m = d.p("grey-model.safetensors");
    let o = seamless(
        &["infer", "--model", s(&m), "--input", s(&svs), "--output", s(&d.p("none.npy")), "--channels", "grey"],
        &[("SEAMLESS_OPENSLIDE_LIB", "/nonexistent/libopenslide.so.1")],
    );
    assert_eq!(o.status.code(), Some(4), "{}", stderr(&o));
    assert!(stderr(&o).contains("OpenSlide is not installed"), "{}", stderr(&o));
    assert!(!d.p("none.npy").exists());
    if !openslide_here() {
        return;
    }

    let src = seamless::slide::openslide::OpenSlideSource::open(&svs, 0).unwrap();
    assert_eq!(src.levels(), 2);
    assert_eq!(src.microns_per_pixel(), Some((0.499, 0.499)));
    drop(src);

    // Level 0 and level 1, whole and tiled, equal the same pixels stored as a plain TIFF.
    for (level, plain) in [("0", "same.tif"), ("1", "level1.tif")] {
        let run = |input: &Path, out: &str, extra: &[&str]| {
            let mut args = vec!["--channels", "grey", "--tile", "64"];
            args.extend_from_slice(extra);
            let o = d.infer(input, out, &args);
            assert!(o.status.success(), "{out}: {}", stderr(&o));
            d.bytes(out)
        };
        let tiled = run(&svs, &format!("os{level}-tiled.npy"), &["--level", level]);
        let whole = run(&svs, &format!("os{level}-whole.npy"), &["--level", level, "--whole"]);
        let plain = run(&d.p(plain), &format!("plain{level}.npy"), &[]);
        assert!(tiled == whole, "level {level}: tiled != whole");
        if level == "0" {
            // Level 1's downsample is 2.0048 (211 px to 105), so OpenSlide resamples it.
            assert!(tiled == plain, "level {level}: OpenSlide's pixels != the TIFF's");
        }
    }
    let o = d.infer(&svs, "bad.npy", &["--channels", "grey", "--level", "2"]);
    assert_eq!(o.status.code(), Some(4), "{}", stderr(&o));
    assert!(stderr(&o).contains("levels 0 to 1"), "{}", stderr(&o));
    let o = d.infer(&d.p("same.tif"), "bad.npy", &["--channels", "grey", "--level", "1"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    // A file OpenSlide does not take for a slide.
    std::fs::write(d.p("junk.svs"), b"not a slide").unwrap();
    let o = d.infer(&d.p("junk.svs"), "bad.npy", &["--channels", "grey"]);
    assert_eq!(o.status.code(), Some(4), "{}", stderr(&o));
}

/// A smooth RGB image (what JPEG is made for), u8 values.
fn smooth_rgb(h: usize, w: usize) -> Tensor {
    let mut data = Vec::with_capacity(3 * h * w);
    for c in 0..3 {
        for y in 0..h {
            for x in 0..w {
                let v = 128.0 + 100.0 * ((x as f32 * 0.05 + c as f32).sin() * (y as f32 * 0.07).cos());
                data.push(v.round());
            }
        }
    }
    Tensor::from_vec(3, h, w, data)
}

fn read_whole(path: &Path) -> Tensor {
    let mut src = seamless::slide::open_source(s(path), None).unwrap();
    let (h, w, _) = src.shape();
    src.read(0, 0, h, w).unwrap()
}

/// (max, mean) absolute difference.
fn difference(a: &Tensor, b: &Tensor) -> (f32, f32) {
    assert_eq!((a.c, a.h, a.w), (b.c, b.h, b.w));
    let d: Vec<f32> = a.data.iter().zip(&b.data).map(|(x, y)| (x - y).abs()).collect();
    (d.iter().copied().fold(0.0, f32::max), d.iter().sum::<f32>() / d.len() as f32)
}

#[test]
fn tiled_tiffs_in_every_scanner_compression_read_back_and_stream_exactly() {
    let d = Dir::new();
    let rgb = smooth_rgb(150, 211);
    for coding in
        [TileCoding::Raw, TileCoding::Zstd, TileCoding::WebP, TileCoding::DeflatePredictor, TileCoding::Planar]
    {
        let path = d.p(&format!("{coding:?}.tif"));
        write_tiled_tiff(&path, std::slice::from_ref(&rgb), 64, "seamless test", coding);
        let back = read_whole(&path);
        assert_eq!(difference(&back, &rgb).0, 0.0, "{coding:?}: lossless, yet the pixels differ");
    }

    // JPEG 2000 (Aperio) goes to OpenSlide; one it cannot read is refused saying so.
    let j2k = d.p("j2k.tif");
    write_tiled_tiff(&j2k, std::slice::from_ref(&rgb), 64, "seamless test", TileCoding::BrokenJpeg2000);
    let o = d.infer(&j2k, "x.npy", &["--channels", "grey"]);
    assert_eq!(o.status.code(), Some(4), "{}", stderr(&o));
    assert!(stderr(&o).contains("JPEG 2000") && stderr(&o).contains("OpenSlide"), "{}", stderr(&o));

    // JPEG in YCbCr 4:2:0: the usual whole-slide compression. Near the original (quality 95)...
    let jpeg = d.p("jpeg.tif");
    write_tiled_tiff(&jpeg, std::slice::from_ref(&rgb), 64, "seamless test", TileCoding::JpegYcbcr);
    let back = read_whole(&jpeg);
    let (max, mean) = difference(&back, &rgb);
    eprintln!("JPEG YCbCr 4:2:0 q95 vs original: max {max}, mean {mean}");
    assert!(mean < 2.5 && max < 24.0, "JPEG YCbCr read back off by {max} at most, {mean} on average");
    // The same tiles in a page that says RGB (Aperio's way) read the same.
    let rgb_page = d.p("jpeg-rgb-page.tif");
    write_tiled_tiff(&rgb_page, std::slice::from_ref(&rgb), 64, "seamless test", TileCoding::JpegInRgbPage);
    assert!(read_whole(&rgb_page) == back, "JPEG in an RGB page reads differently from the YCbCr page");
    // ... any window reads the same values as the whole image ...
    let mut src = seamless::slide::open_source(s(&jpeg), None).unwrap();
    let win = src.read(37, 50, 80, 101).unwrap();
    assert!(win == back.window(37, 50, 80, 101), "a window differs from the whole image");
    // ... and a run over it is tiled == whole.
    for (out, extra) in [("j-whole.npy", vec!["--whole"]), ("j-tiled.npy", vec!["--tile", "64"])] {
        let o = d.infer(&jpeg, out, &[vec!["--channels", "grey"], extra].concat());
        assert!(o.status.success(), "{}", stderr(&o));
    }
    assert!(d.bytes("j-whole.npy") == d.bytes("j-tiled.npy"), "JPEG: tiled != whole");

    // OpenSlide (libjpeg and libtiff) decodes the same file as an SVS to nearly the same pixels.
    let svs = d.p("jpeg.svs");
    write_tiled_tiff(&svs, std::slice::from_ref(&rgb), 64, APERIO, TileCoding::JpegYcbcr);
    if openslide_here() {
        let (max, mean) = difference(&read_whole(&svs), &back);
        eprintln!("OpenSlide vs seamless JPEG decode: max {max}, mean {mean}");
        assert!(mean < 1.0 && max < 16.0, "OpenSlide and seamless decode the JPEG tiles {max} / {mean} apart");
    }
}

/// Grey u8 pages (one per image) in one TIFF; `description` on page 0 (OME-XML, say); pages in
/// `reduced` are marked reduced-resolution (NewSubfileType 1).
fn write_pages(path: &Path, pages: &[Tensor], description: Option<&str>, reduced: &[usize]) {
    use tiff::encoder::{TiffEncoder, colortype};
    use tiff::tags::Tag;
    let mut enc = TiffEncoder::new(std::fs::File::create(path).unwrap()).unwrap();
    for (i, p) in pages.iter().enumerate() {
        assert_eq!(p.c, 1);
        let data: Vec<u8> = p.data.iter().map(|&v| v as u8).collect();
        let mut img = enc.new_image::<colortype::Gray8>(p.w as u32, p.h as u32).unwrap();
        if let (0, Some(d)) = (i, description) {
            img.encoder().write_tag(Tag::ImageDescription, d).unwrap();
        }
        if reduced.contains(&i) {
            img.encoder().write_tag(Tag::NewSubfileType, 1u32).unwrap();
        }
        img.write_data(&data).unwrap();
    }
}

fn ome(c: usize, z: usize) -> String {
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?><OME xmlns="http://www.openmicroscopy.org/Schemas/OME/2016-06"><Image ID="Image:0"><Pixels ID="Pixels:0" DimensionOrder="XYCZT" Type="uint8" SizeX="211" SizeY="150" SizeC="{c}" SizeZ="{z}" SizeT="1" PhysicalSizeX="0.5" PhysicalSizeY="0.5"/></Image></OME>"#
    )
}

#[test]
fn multi_page_tiffs_are_read_by_page_or_as_ome_channels_and_never_cut_silently() {
    let d = Dir::new();
    let planes: Vec<Tensor> = (0..3).map(|i| image_u8(1, 150, 211, 20 + i)).collect();
    for (i, p) in planes.iter().enumerate() {
        write_tiff_u8(&d.p(&format!("plane{i}.tif")), p);
        assert!(d.infer(&d.p(&format!("plane{i}.tif")), &format!("ref{i}.npy"), &["--tile", "64"]).status.success());
    }

    // Three full-size pages and nothing saying what they are: refused, naming --page.
    write_pages(&d.p("stack.tif"), &planes, None, &[]);
    let o = d.infer(&d.p("stack.tif"), "x.npy", &[]);
    assert_eq!(o.status.code(), Some(4), "{}", stderr(&o));
    assert!(stderr(&o).contains("--page"), "{}", stderr(&o));
    assert!(!d.p("x.npy").exists());
    // --page picks one, tiled == whole, equal to that page stored alone.
    for (out, extra) in [("p1-tiled.npy", vec!["--tile", "64"]), ("p1-whole.npy", vec!["--whole"])] {
        let o = d.infer(&d.p("stack.tif"), out, &[vec!["--page", "1"], extra].concat());
        assert!(o.status.success(), "{}", stderr(&o));
    }
    assert!(d.bytes("p1-tiled.npy") == d.bytes("ref1.npy") && d.bytes("p1-whole.npy") == d.bytes("ref1.npy"));
    let o = d.infer(&d.p("stack.tif"), "x.npy", &["--page", "3"]);
    assert_eq!(o.status.code(), Some(4), "{}", stderr(&o));
    assert!(stderr(&o).contains("pages 0 to 2"), "{}", stderr(&o));

    // An OME-TIFF with its three channels as pages: read as one 3-channel image; --channels picks.
    write_pages(&d.p("ome.tif"), &planes, Some(&ome(3, 1)), &[]);
    let o = d.infer(&d.p("ome.tif"), "x.npy", &[]);
    assert_eq!(o.status.code(), Some(4), "three channels for a one-channel model: {}", stderr(&o));
    assert!(stderr(&o).contains("expects 1") && stderr(&o).contains("--channels"), "{}", stderr(&o));
    for (out, extra) in [("c2-tiled.npy", vec!["--tile", "64"]), ("c2-whole.npy", vec!["--whole"])] {
        let o = d.infer(&d.p("ome.tif"), out, &[vec!["--channels", "2"], extra].concat());
        assert!(o.status.success(), "{}", stderr(&o));
    }
    assert!(d.bytes("c2-tiled.npy") == d.bytes("ref2.npy") && d.bytes("c2-whole.npy") == d.bytes("ref2.npy"));
    // An OME z-stack is not channels: refused without --page.
    write_pages(&d.p("omez.tif"), &planes, Some(&ome(1, 3)), &[]);
    let o = d.infer(&d.p("omez.tif"), "x.npy", &[]);
    assert_eq!(o.status.code(), Some(4), "{}", stderr(&o));

    // A full-size page and a reduced-resolution one (a pyramid level): page 0, with a warning.
    write_pages(&d.p("pyr.tif"), &[planes[0].clone(), half(&planes[0])], None, &[1]);
    let m = d.p("grey-model.safetensors");
    let o = seamless(
        &["infer", "--model", s(&m), "--input", s(&d.p("pyr.tif")), "--output", s(&d.p("pyr.npy")), "--tile", "64"],
        &[],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("1 more page(s)"), "{}", stderr(&o));
    assert!(d.bytes("pyr.npy") == d.bytes("ref0.npy"));
}

/// Every level of the OME-Zarr at `path` as f32 tensors, level 0 first, and its group metadata.
fn zarr_levels(path: &Path) -> (Vec<Tensor>, serde_json::Value) {
    use zarrs::array::{Array, ArraySubset};
    let store = std::sync::Arc::new(zarrs::filesystem::FilesystemStore::new(path).unwrap());
    let meta: serde_json::Value = serde_json::from_slice(&std::fs::read(path.join("zarr.json")).unwrap()).unwrap();
    let n = meta["attributes"]["ome"]["multiscales"][0]["datasets"].as_array().unwrap().len();
    let levels = (0..n)
        .map(|k| {
            let a = Array::open(store.clone(), &format!("/{k}")).unwrap();
            let s = a.shape().to_vec();
            let all = ArraySubset::new_with_shape(s.clone());
            let v: Vec<f32> = a.retrieve_array_subset::<Vec<u8>>(&all).unwrap().into_iter().map(f32::from).collect();
            Tensor::from_vec(s[0] as usize, s[1] as usize, s[2] as usize, v)
        })
        .collect();
    (levels, meta)
}

#[test]
fn outputs_carry_the_pixel_size_and_zarr_outputs_have_a_pyramid() {
    let d = Dir::new();
    // 1100 x 700 px at 0.5 um (OME-XML): an OME-Zarr of labels gets two more levels.
    let img = image_u8(1, 700, 1100, 31);
    let desc = ome(1, 1).replace("SizeX=\"211\" SizeY=\"150\"", "SizeX=\"1100\" SizeY=\"700\"");
    write_pages(&d.p("um.tif"), std::slice::from_ref(&img), Some(&desc), &[]);
    for (out, extra) in [("whole.zarr", vec!["--whole"]), ("tiled.zarr", vec!["--tile", "256"]), ("o.tif", vec![])] {
        let o = d.infer(&d.p("um.tif"), out, &extra);
        assert!(o.status.success(), "{out}: {}", stderr(&o));
    }
    let (levels, meta) = zarr_levels(&d.p("tiled.zarr"));
    let (whole, _) = zarr_levels(&d.p("whole.zarr"));
    assert!(levels == whole, "the pyramid of a tiled run differs from the whole-image run's");
    let sizes: Vec<(usize, usize)> = levels.iter().map(|t| (t.h, t.w)).collect();
    assert_eq!(sizes, vec![(700, 1100), (350, 550), (175, 275)]);
    for k in 1..levels.len() {
        let a = &levels[k - 1];
        let expect = seamless::slide::pyramid::reduce(&a.data, a.c, a.h, a.w, true);
        assert!(levels[k].data == expect, "level {k} is not the 2x2 mode of level {}", k - 1);
    }
    let ms = &meta["attributes"]["ome"]["multiscales"][0];
    for (k, ds) in ms["datasets"].as_array().unwrap().iter().enumerate() {
        let f = (1 << k) as f64;
        assert_eq!(ds["coordinateTransformations"][0]["scale"], serde_json::json!([1.0, 0.5 * f, 0.5 * f]));
    }
    assert_eq!(ms["axes"][2]["unit"], "micrometer");
    let colours = meta["attributes"]["ome"]["image-label"]["colors"].as_array().unwrap();
    assert_eq!(colours.len(), 2, "one colour per class of the model");

    // The OME-TIFF output records it too, where seamless (and any OME reader) finds it.
    let src = seamless::slide::open_source(s(&d.p("o.tif")), None).unwrap();
    assert_eq!(src.pixel_size(), seamless::slide::PixelSize::new(0.5, 0.5));
    // An Aperio MPP and OpenSlide's mpp are read too.
    let rgb = image_u8(3, 150, 211, 11);
    write_tiled_tiff(&d.p("aperio.tif"), std::slice::from_ref(&rgb), 64, APERIO, TileCoding::Raw);
    let src = seamless::slide::open_source(s(&d.p("aperio.tif")), None).unwrap();
    assert_eq!(src.pixel_size(), seamless::slide::PixelSize::new(0.499, 0.499));
    // tifffile and zarr, what users open them with, read the same sizes, scales and values.
    if let Some(python) = readers_python() {
        let o = Command::new(python)
            .args([
                concat!(env!("CARGO_MANIFEST_DIR"), "/tools/read_outputs.py"),
                s(&d.p("o.tif")),
                s(&d.p("tiled.zarr")),
            ])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", stderr(&o));
        let seen: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        let sum = |t: &Tensor| t.data.iter().map(|&v| v as f64).sum::<f64>();
        let tif = &seen["tiff"];
        assert_eq!(tif["shape"], serde_json::json!([700, 1100]), "{seen}");
        assert_eq!(tif["is_ome"], true, "{seen}");
        assert_eq!(tif["physical_size"], serde_json::json!([0.5, 0.5]), "{seen}");
        assert_eq!(tif["sum"].as_f64(), Some(sum(&levels[0])), "tifffile reads other values: {seen}");
        let zl = seen["zarr"]["levels"].as_array().unwrap();
        assert_eq!(zl.len(), levels.len(), "{seen}");
        for (k, (l, ours)) in zl.iter().zip(&levels).enumerate() {
            let f = (1 << k) as f64;
            assert_eq!(l["shape"], serde_json::json!([1, ours.h, ours.w]), "{seen}");
            assert_eq!(l["scale"], serde_json::json!([1.0, 0.5 * f, 0.5 * f]), "{seen}");
            assert_eq!(l["sum"].as_f64(), Some(sum(ours)), "zarr reads other values at level {k}: {seen}");
        }
        assert_eq!(seen["zarr"]["units"], serde_json::json!([null, "micrometer", "micrometer"]), "{seen}");
        // The OME-TIFF's SubIFD pyramid holds the same levels as the OME-Zarr's.
        let tl = tif["levels"].as_array().unwrap();
        assert_eq!(tl.len(), levels.len(), "{seen}");
        for (k, (l, ours)) in tl.iter().zip(&levels).enumerate() {
            assert_eq!(l["shape"], serde_json::json!([ours.h, ours.w]), "TIFF level {k}: {seen}");
            assert_eq!(l["sum"].as_f64(), Some(sum(ours)), "TIFF level {k} differs from the Zarr's: {seen}");
        }
        assert_eq!(seen["zarr"]["colors"], 2, "{seen}");
    }

    // No size in the input: none claimed in the output (pixels, no unit).
    write_tiff_u8(&d.p("plain.tif"), &img);
    assert!(d.infer(&d.p("plain.tif"), "plain.zarr", &["--tile", "256"]).status.success());
    let (_, meta) = zarr_levels(&d.p("plain.zarr"));
    assert!(meta["attributes"]["ome"]["multiscales"][0]["axes"][2].get("unit").is_none());
}

/// The Python with tifffile and zarr (`SEAMLESS_READERS_PYTHON`; `.ci/run` makes one from
/// tools/requirements-readers.txt and sets SEAMLESS_REQUIRE_READERS=1, so CI always checks).
fn readers_python() -> Option<String> {
    let required = std::env::var("SEAMLESS_REQUIRE_READERS").is_ok_and(|v| v == "1");
    match std::env::var("SEAMLESS_READERS_PYTHON") {
        Ok(p) => Some(p),
        Err(_) if required => panic!("SEAMLESS_REQUIRE_READERS=1 but SEAMLESS_READERS_PYTHON is not set"),
        Err(_) => {
            eprintln!("skipped the tifffile/zarr checks: SEAMLESS_READERS_PYTHON is not set");
            None
        }
    }
}
