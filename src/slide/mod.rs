//! Whole-slide I/O: image sources that read only the windows a tile needs, and sinks that write
//! each tile's interior as soon as it is done, so host memory stays bounded whatever the image
//! size. Formats by extension (overridable): TIFF/BigTIFF, OME-Zarr (v2 and v3), .npy
//! (positioned reads), PNG (small images only: decoded whole), and `synth:WxH[:seed]` (generated).

mod journal;
pub mod npy;
pub mod openslide;
pub mod pyramid;
pub mod select;
pub mod stream;
pub mod synth_source;
pub mod tiff_io;
pub(crate) mod tiles;
pub mod zarr_io;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result, Side};

use crate::tensor::Tensor;
pub use tiles::{Cancel, PadMode, Progress};

/// An image that can be read a window at a time.
pub trait Source: Send {
    /// (height, width, channels).
    fn shape(&self) -> (usize, usize, usize);
    /// Raw values of the region `[y0, y0+h) x [x0, x0+w)` (inside the image) as f32, CHW.
    fn read(&mut self, y0: usize, x0: usize, h: usize, w: usize) -> Result<Tensor>;
    /// Sample type name, for messages and summaries.
    fn sample_type(&self) -> &'static str;
    /// Something about the input the user should know before a long run (a sparse store, say).
    fn warnings(&self) -> Vec<String> {
        Vec::new()
    }
    /// The physical size of a pixel, where the file records it: carried into the output's metadata.
    fn pixel_size(&self) -> Option<PixelSize> {
        None
    }
}

/// The physical size of one pixel, in micrometres, along x (width) and y (height).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct PixelSize {
    pub x_um: f64,
    pub y_um: f64,
}

impl PixelSize {
    /// Both sizes, if both are finite and positive (a file's metadata may say anything).
    pub fn new(x_um: f64, y_um: f64) -> Option<PixelSize> {
        let ok = |v: f64| v.is_finite() && v > 0.0 && v < 1e9;
        (ok(x_um) && ok(y_um)).then_some(PixelSize { x_um, y_um })
    }

    /// `length` in `unit` (OME's unit symbols and names) as micrometres.
    pub fn to_um(length: f64, unit: &str) -> Option<f64> {
        let per = match unit.trim() {
            "µm" | "um" | "micrometer" | "micrometre" | "micron" | "" => 1.0,
            "nm" | "nanometer" | "nanometre" => 1e-3,
            "mm" | "millimeter" | "millimetre" => 1e3,
            "cm" | "centimeter" | "centimetre" => 1e4,
            "m" | "meter" | "metre" => 1e6,
            "in" | "inch" => 25_400.0,
            _ => return None,
        };
        Some(length * per)
    }
}

/// Element type of an output.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
pub enum OutType {
    U8,
    U16,
    F16,
    F32,
}

impl OutType {
    pub fn bytes(self) -> usize {
        match self {
            OutType::U8 => 1,
            OutType::U16 | OutType::F16 => 2,
            OutType::F32 => 4,
        }
    }
}

/// What a sink holds: `channels` planes of `out` values over `height x width`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct OutSpec {
    pub height: usize,
    pub width: usize,
    pub channels: usize,
    pub out: OutType,
    /// Chunk (TIFF tile, Zarr chunk) edge, chosen to divide the compute tile so that every compute
    /// tile writes whole chunks.
    pub chunk: usize,
    /// The input's pixel size, written into the output's metadata (OME-XML, NGFF scale).
    #[serde(default)]
    pub pixel_size: Option<PixelSize>,
}

/// Where a tiled run writes. Regions are written once each, in any order.
pub trait Sink: Send {
    /// Write the region at `(y0, x0)` from `t` (CHW, f32 values converted to the output type).
    fn write(&mut self, y0: usize, x0: usize, t: &Tensor) -> Result<()>;
    /// Make everything written so far durable; returns state to journal for `--resume`.
    fn sync(&mut self) -> Result<serde_json::Value>;
    /// Complete the output (directories, metadata). The caller renames it into place.
    fn finish(self: Box<Self>) -> Result<()>;
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
pub enum Format {
    Tiff,
    Zarr,
    Npy,
    Png,
    /// A vendor slide read through OpenSlide (.svs, .ndpi, .mrxs, .scn, .bif, ...); input only.
    Openslide,
}

impl Format {
    /// Whether an interrupted run to this output keeps what it wrote, for `--resume`: not a PNG,
    /// which is encoded whole at the end, from memory.
    pub fn resumable(self) -> bool {
        matches!(self, Format::Tiff | Format::Zarr | Format::Npy)
    }
}

pub fn format_of(path: &Path) -> Option<Format> {
    let name = path.to_string_lossy().to_ascii_lowercase();
    let name = name.trim_end_matches('/');
    if name.ends_with(".tif") || name.ends_with(".tiff") || name.ends_with(".btf") || name.ends_with(".tf8") {
        Some(Format::Tiff)
    } else if name.ends_with(".zarr") {
        Some(Format::Zarr)
    } else if name.ends_with(".npy") {
        Some(Format::Npy)
    } else if name.ends_with(".png") {
        Some(Format::Png)
    } else if openslide::EXTENSIONS.iter().any(|e| name.ends_with(e)) {
        Some(Format::Openslide)
    } else {
        None
    }
}

pub(crate) fn input_err(path: &Path, msg: impl Into<String>) -> Error {
    Error::Input { path: path.to_path_buf(), msg: msg.into() }
}

pub(crate) fn output_err(path: &Path, msg: impl Into<String>) -> Error {
    Error::Output { path: path.to_path_buf(), msg: msg.into() }
}

/// What identifies an input for `--resume` and `--shard`: a generated slide by its spec; a file by
/// its resolved path, size, modification time and a hash of its first and last 64 KiB; a Zarr store
/// by its resolved path and the sizes and modification times of its folders and metadata files
/// (writers create chunk files, which changes their folder's time). A different image of the same
/// size is then a different input even under `--normalize none`, whose statistics do not see it.
pub fn input_identity(spec: &str) -> Result<String> {
    use std::io::{Read, Seek, SeekFrom};
    if spec.starts_with("synth:") {
        return Ok(spec.to_string());
    }
    let path = PathBuf::from(spec);
    let err = |e: std::io::Error| Error::io(Side::Input, &path, "cannot open", e);
    let canon = std::fs::canonicalize(&path).map_err(err)?;
    let mut h = blake3::Hasher::new();
    h.update(canon.as_os_str().as_encoded_bytes());
    let stamp = |h: &mut blake3::Hasher, m: &std::fs::Metadata| {
        h.update(&m.len().to_le_bytes());
        if let Ok(t) = m.modified().map(|t| t.duration_since(std::time::UNIX_EPOCH).unwrap_or_default()) {
            h.update(&t.as_nanos().to_le_bytes());
        }
    };
    let meta = std::fs::metadata(&canon).map_err(err)?;
    stamp(&mut h, &meta);
    if meta.is_dir() {
        let mut stack = vec![canon.clone()];
        let mut entries = 0usize;
        while let Some(dir) = stack.pop() {
            let mut children: Vec<_> = std::fs::read_dir(&dir).map_err(err)?.filter_map(|e| e.ok()).collect();
            children.sort_by_key(|e| e.file_name());
            for e in children {
                let Ok(m) = e.metadata() else { continue };
                let name = e.file_name();
                let is_meta = name.to_string_lossy().ends_with("json") || name.to_string_lossy().starts_with(".z");
                if m.is_dir() || is_meta {
                    h.update(e.path().as_os_str().as_encoded_bytes());
                    stamp(&mut h, &m);
                    entries += 1;
                }
                // Bounded: the folders of a store number its chunk rows, not its pixels.
                if m.is_dir() && entries < 1_000_000 {
                    stack.push(e.path());
                }
            }
        }
    } else {
        let mut f = std::fs::File::open(&canon).map_err(err)?;
        let mut buf = vec![0u8; 64 << 10];
        let n = f.read(&mut buf).map_err(err)?;
        h.update(&buf[..n]);
        if meta.len() > buf.len() as u64 {
            f.seek(SeekFrom::End(-(buf.len() as i64))).map_err(err)?;
            let n = f.read(&mut buf).map_err(err)?;
            h.update(&buf[..n]);
        }
    }
    Ok(format!("{} {}", canon.display(), h.finalize().to_hex()))
}

/// Images larger than this many pixels are refused (2^44: a thousand times the largest whole-slide
/// scans). Below it every size derived from an image (with at most 2^20 channels or classes, 4
/// bytes each) fits in 64 bits.
pub const MAX_IMAGE_PIXELS: u64 = 1 << 44;

/// Refuse an image of `h x w` pixels that no run could handle, before anything is sized from it.
pub fn check_image_size(what: &str, h: usize, w: usize) -> Result<()> {
    let pixels = (h as u128) * (w as u128);
    if pixels > MAX_IMAGE_PIXELS as u128 || h > u32::MAX as usize || w > u32::MAX as usize {
        return Err(Error::Usage(format!(
            "{what}: a {w}x{h} image is beyond what seamless handles (at most 2^44 pixels, 2^32 per side)"
        )));
    }
    Ok(())
}

/// Which image of a file that holds several to read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ImageIndex {
    /// Pyramid level (0 = full resolution): OpenSlide's levels.
    pub level: usize,
    /// TIFF page (0-based, in file order); None reads the image the file holds, and refuses a
    /// file of several full-size pages rather than read only the first.
    pub page: Option<usize>,
}

/// Open an image for windowed reading.
pub fn open_source(spec: &str, format: Option<Format>) -> Result<Box<dyn Source>> {
    open_source_at(spec, format, ImageIndex::default())
}

/// Open image `index` of `spec` for windowed reading.
pub fn open_source_at(spec: &str, format: Option<Format>, index: ImageIndex) -> Result<Box<dyn Source>> {
    if let Some(rest) = spec.strip_prefix("synth:") {
        let src = synth_source::SynthSource::parse(rest)?;
        check_image_size(spec, src.height, src.width)?;
        return Ok(Box::new(src));
    }
    let path = PathBuf::from(spec);
    let format = format.or_else(|| format_of(&path)).ok_or_else(|| {
        input_err(
            &path,
            "unknown image format (supported: .tif/.tiff, .zarr, .npy, .png, synth:WxH, and through OpenSlide \
             .svs, .ndpi, .mrxs, .scn, .bif, .vms, .vmu, .svslide)",
        )
    })?;
    if index.level > 0 && format != Format::Openslide {
        return Err(Error::Usage(format!(
            "--level {}: pyramid levels are read from OpenSlide slides; this input is {format:?}",
            index.level
        )));
    }
    if index.page.is_some() && format != Format::Tiff {
        return Err(Error::Usage(format!("--page: pages are TIFF pages; this input is {format:?}")));
    }
    let meta = std::fs::metadata(&path).map_err(|e| Error::io(Side::Input, &path, "cannot open", e))?;
    // Checked before opening: opening a FIFO blocks until a writer comes, maybe forever.
    match (format, meta.is_dir(), meta.is_file()) {
        (Format::Zarr, true, _) | (Format::Tiff | Format::Npy | Format::Png | Format::Openslide, _, true) => {}
        // MIRAX keeps its data in a folder beside the .mrxs file; OpenSlide finds it.
        (Format::Zarr, false, _) => return Err(input_err(&path, "is not a directory: an OME-Zarr image is a store")),
        (_, true, _) => return Err(input_err(&path, "is a directory, not an image file")),
        _ => return Err(input_err(&path, "is not a regular file (a FIFO, socket or device?); give an image file")),
    }
    let src: Box<dyn Source> = match format {
        Format::Tiff => tiff_io::open(&path, index.page)?,
        Format::Zarr => Box::new(zarr_io::ZarrSource::open(&path)?),
        Format::Npy => Box::new(npy::NpySource::open(&path)?),
        Format::Png => Box::new(InMemory::new(crate::image_io::read_png_file(&path)?)),
        Format::Openslide => Box::new(openslide::OpenSlideSource::open(&path, index.level)?),
    };

    let (h, w, c) = src.shape();
    if h == 0 || w == 0 || c == 0 {
        return Err(input_err(&path, format!("empty image ({w}x{h} with {c} channels)")));
    }
    if check_image_size(spec, h, w).is_err() {
        return Err(input_err(
            &path,
            format!("claims {w}x{h} pixels, beyond what seamless handles (at most 2^44 pixels, 2^32 per side)"),
        ));
    }
    Ok(src)
}

/// A whole image in memory, from any source `open_source` reads (sweeps and receptive-field
/// measurements work on images held whole).
pub fn read_image(spec: &str) -> Result<Tensor> {
    let mut src = open_source(spec, None)?;
    let (h, w, _) = src.shape();
    src.read(0, 0, h, w)
}

/// A decoded image held in memory (PNG, small inputs).
pub struct InMemory {
    img: Tensor,
}

impl InMemory {
    pub fn new(img: Tensor) -> InMemory {
        InMemory { img }
    }
}

impl Source for InMemory {
    fn shape(&self) -> (usize, usize, usize) {
        (self.img.h, self.img.w, self.img.c)
    }
    fn read(&mut self, y0: usize, x0: usize, h: usize, w: usize) -> Result<Tensor> {
        Ok(self.img.window(y0, x0, h, w))
    }
    fn sample_type(&self) -> &'static str {
        "f32"
    }
}

/// Convert a f32 value to the output type (labels are small integers; probabilities in [0, 1]).
pub(crate) fn encode(v: f32, out: OutType, dst: &mut Vec<u8>) {
    match out {
        OutType::U8 => dst.push(v as u8),
        OutType::U16 => dst.extend_from_slice(&(v as u16).to_le_bytes()),
        OutType::F16 => dst.extend_from_slice(&half::f16::from_f32(v).to_le_bytes()),
        OutType::F32 => dst.extend_from_slice(&v.to_le_bytes()),
    }
}
