//! Whole-file codecs below the windowed I/O of `slide`: PNG decoding into an f32 CHW tensor (grey,
//! grey+alpha, RGB, RGBA; 8 or 16 bit; alpha is dropped), PNG encoding of labels and of RGB
//! pictures, and `.npy` writing of small arrays. Which format a path is, and reading any image a
//! window at a time, is `slide`'s.

use std::fs::File;
use std::io::BufReader;
use std::path::Path;

use npyz::WriterBuilder;

use crate::error::{Error, Result, Side};
use crate::output::AtomicFile;
use crate::tensor::Tensor;

fn input_err(path: &Path, msg: impl Into<String>) -> Error {
    Error::Input { path: path.to_path_buf(), msg: msg.into() }
}

/// A PNG file decoded whole (PNG inputs are small images: see [`MAX_PNG_BYTES`]).
pub fn read_png_file(path: &Path) -> Result<Tensor> {
    let file = File::open(path).map_err(|e| Error::io(Side::Input, path, "cannot open", e))?;
    let img = read_png(path, BufReader::new(file))?;
    if img.h == 0 || img.w == 0 || img.c == 0 {
        return Err(input_err(path, format!("empty image ({}x{} with {} channels)", img.w, img.h, img.c)));
    }
    Ok(img)
}

/// HWC (interleaved) values to CHW.
fn planar(h: usize, w: usize, c: usize, hwc: impl IntoIterator<Item = f32>) -> Tensor {
    let mut t = Tensor::zeros(c, h, w);
    let hw = h * w;
    for (i, v) in hwc.into_iter().enumerate() {
        t.data[(i % c) * hw + i / c] = v;
    }
    t
}

/// The largest decoded PNG read (PNG inputs are read whole into memory, as f32 after decoding).
const MAX_PNG_BYTES: usize = 1 << 30;

fn read_png(path: &Path, r: impl std::io::BufRead + std::io::Seek) -> Result<Tensor> {
    let bad = |e: png::DecodingError| Error::codec(Side::Input, path, "not a readable PNG", e);
    let mut dec = png::Decoder::new(r);
    dec.set_transformations(png::Transformations::EXPAND);
    let mut reader = dec.read_info().map_err(bad)?;
    let size = reader.output_buffer_size().ok_or_else(|| input_err(path, "PNG too large"))?;
    // A PNG is decoded whole into memory, and its header may claim any size: refuse what deflate
    // could not have compressed into this file (at most about 1032:1), and what would not fit.
    let file_len = std::fs::metadata(path).map(|m| m.len()).unwrap_or(u64::MAX);
    if size as u64 > file_len.saturating_mul(1100).saturating_add(1 << 20) || size > MAX_PNG_BYTES {
        let (w, h) = reader.info().size();
        return Err(input_err(
            path,
            format!(
                "the PNG claims {w}x{h} pixels ({size} bytes decoded), which a {file_len}-byte file cannot hold or \
                 memory should not: PNG inputs are read whole, up to {} MiB; use TIFF or OME-Zarr for larger images",
                MAX_PNG_BYTES >> 20
            ),
        ));
    }
    let mut buf = vec![0u8; size];
    let info = reader.next_frame(&mut buf).map_err(bad)?;
    let (h, w) = (info.height as usize, info.width as usize);
    let (c_in, keep) = match info.color_type {
        png::ColorType::Grayscale => (1, 1),
        png::ColorType::GrayscaleAlpha => (2, 1),
        png::ColorType::Rgb => (3, 3),
        png::ColorType::Rgba => (4, 3),
        png::ColorType::Indexed => return Err(input_err(path, "indexed PNG could not be expanded")),
    };
    let sixteen = info.bit_depth == png::BitDepth::Sixteen;
    let bytes = &buf[..info.buffer_size()];
    let sample = |i: usize| -> f32 {
        if sixteen { u16::from_be_bytes([bytes[2 * i], bytes[2 * i + 1]]) as f32 } else { bytes[i] as f32 }
    };
    let values = (0..h * w).flat_map(|p| (0..keep).map(move |c| p * c_in + c)).map(sample);
    Ok(planar(h, w, keep, values))
}

/// Labels (a 1-channel map of class indices) as a greyscale PNG: 8-bit, or 16-bit where `wide`
/// (more than 256 classes).
pub fn write_png_labels(
    w: impl std::io::Write,
    labels: &Tensor,
    wide: bool,
) -> std::result::Result<(), png::EncodingError> {
    let mut enc = png::Encoder::new(w, labels.w as u32, labels.h as u32);
    enc.set_color(png::ColorType::Grayscale);
    enc.set_depth(if wide { png::BitDepth::Sixteen } else { png::BitDepth::Eight });
    let bytes: Vec<u8> = if wide {
        labels.data.iter().flat_map(|&v| (v as u16).to_be_bytes()).collect()
    } else {
        labels.data.iter().map(|&v| v as u8).collect()
    };
    let mut wr = enc.write_header()?;
    wr.write_image_data(&bytes)?;
    wr.finish()
}

/// [`write_png_labels`] to `path`, atomically.
pub fn save_png_labels(path: &Path, labels: &Tensor, wide: bool) -> Result<()> {
    let mut f = AtomicFile::create(path)?;
    write_png_labels(f.writer(), labels, wide).map_err(|e| Error::codec(Side::Output, path, "write failed", e))?;
    f.commit()
}

pub fn write_npy<T: npyz::AutoSerialize>(
    w: impl std::io::Write,
    shape: &[u64],
    values: impl Iterator<Item = T>,
) -> std::io::Result<()> {
    let mut wr = npyz::WriteOptions::new().default_dtype().shape(shape).writer(w).begin_nd()?;
    wr.extend(values)?;
    wr.finish()
}

/// Write an array to `.npy` atomically (synthetic images, tests).
pub fn save_npy<T: npyz::AutoSerialize>(path: &Path, shape: &[u64], values: impl Iterator<Item = T>) -> Result<()> {
    let mut f = AtomicFile::create(path)?;
    write_npy(f.writer(), shape, values).map_err(|e| Error::io(Side::Output, path, "write failed", e))?;
    f.commit()
}

/// Write an 8-bit RGB PNG atomically.
pub fn save_rgb_png(path: &Path, w: usize, h: usize, rgb: &[u8]) -> Result<()> {
    let mut f = AtomicFile::create(path)?;
    let io = |e: png::EncodingError| Error::codec(Side::Output, path, "write failed", e);
    {
        let mut enc = png::Encoder::new(f.writer(), w as u32, h as u32);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        let mut wr = enc.write_header().map_err(io)?;
        wr.write_image_data(rgb).map_err(io)?;
        wr.finish().map_err(io)?;
    }
    f.commit()
}
