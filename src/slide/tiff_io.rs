//! TIFF and BigTIFF. Reading (tiled or striped; 8 to 64-bit integer or 16 to 64-bit float samples;
//! one or more channels, interleaved or planar; any compression the `tiff` crate decodes: none,
//! LZW and Deflate with or without predictors, PackBits, JPEG in YCbCr or RGB, Zstd, WebP)
//! decodes only the chunks a window touches, keeping a small cache of recent ones. Writing produces
//! a tiled, Deflate-compressed BigTIFF whose tiles are appended as compute tiles finish; the
//! directory goes at the end. (The `tiff` crate's encoder writes whole images or strips, so the
//! container is written here: a header, tiles, one IFD.)

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::io::{BufReader, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use flate2::Compression;
use flate2::write::ZlibEncoder;
use tiff::ColorType;
use tiff::decoder::{ChunkType, Decoder, DecodingResult};
use tiff::tags::Tag;

use super::{OutSpec, OutType, PixelSize, Sink, Source, encode, input_err, output_err};
use crate::error::{Error, Result, Side};
use crate::tensor::Tensor;

pub struct TiffSource {
    dec: Decoder<BufReader<File>>,
    path: PathBuf,
    h: usize,
    w: usize,
    c: usize,
    chunk_w: usize,
    chunk_h: usize,
    tiled: bool,
    /// Planar configuration 2: each channel's chunks stored apart, `chunks_per_plane` apart.
    planar: bool,
    chunks_per_plane: u32,
    /// JPEG's YCbCr, converted to RGB as it is decoded.
    ycbcr: bool,
    sample: &'static str,
    /// What the user should know about the file (pages not read).
    note: Option<String>,
    pixel_size: Option<PixelSize>,
    cache: HashMap<u32, (usize, usize, Vec<f32>)>,
    order: VecDeque<u32>,
}

/// The most a TIFF chunk's bytes are taken to decompress to: beyond LZW's and Deflate's best
/// (a few thousand to one), so only impossible headers are refused.
const MAX_RATIO: u64 = 20_000;

/// Decoded chunks kept for windows that overlap (halos): about 16 MiB of f32 samples.
const CACHE_VALUES: usize = 4 << 20;

/// One top-level directory (page) of a TIFF.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Page {
    w: u32,
    h: u32,
    /// NewSubfileType says it is a reduced-resolution copy (a thumbnail or a pyramid level).
    reduced: bool,
}

/// More pages than this are refused (a corrupt chain, or a file no slide reader is meant for).
const MAX_PAGES: usize = 1 << 16;

fn decoder(path: &Path) -> Result<Decoder<BufReader<File>>> {
    let file = File::open(path).map_err(|e| Error::io(Side::Input, path, "cannot open", e))?;
    Decoder::new(BufReader::new(file)).map_err(|e| Error::codec(Side::Input, path, "not a readable TIFF", e))
}

/// What [`open`] decides by: the pages, page 0's ImageDescription (OME-XML, an Aperio header,
/// ...), and whether page 0's tiles are Aperio JPEG 2000 (compression 33003 or 33005).
struct Layout {
    pages: Vec<Page>,
    description: Option<String>,
    jpeg2000: bool,
}

fn layout(path: &Path) -> Result<Layout> {
    let bad = |e: tiff::TiffError| Error::codec(Side::Input, path, "not a readable TIFF", e);
    let mut dec = decoder(path)?;
    let description = dec.get_tag_ascii_string(Tag::ImageDescription).ok();
    let jpeg2000 = matches!(dec.find_tag_unsigned::<u16>(Tag::Compression), Ok(Some(33003 | 33005)));
    let mut pages = Vec::new();
    loop {
        let (w, h) = dec.dimensions().map_err(bad)?;
        let kind = dec.find_tag_unsigned::<u32>(Tag::NewSubfileType).ok().flatten().unwrap_or(0);
        pages.push(Page { w, h, reduced: kind & 1 == 1 });
        if !dec.more_images() {
            break;
        }
        if pages.len() >= MAX_PAGES {
            return Err(input_err(path, format!("more than {MAX_PAGES} pages (corrupt?)")));
        }
        dec.next_image().map_err(bad)?;
    }
    Ok(Layout { pages, description, jpeg2000 })
}

/// Whether an OME-XML `description` says the full-size pages are the channels of one plane
/// (SizeC of them, one Z, one T): how OME-TIFF stores multi-channel (fluorescence) images. The
/// other case it describes, Z or T planes, is refused by the caller unless one page is picked.
fn ome_channel_pages(description: &str, full_pages: usize) -> Option<bool> {
    let doc = roxmltree::Document::parse(description).ok()?;
    let pixels = doc.descendants().find(|n| n.tag_name().name() == "Pixels")?;
    let size = |k: &str| pixels.attribute(k).and_then(|v| v.parse::<usize>().ok());
    Some(size("SizeC")? == full_pages && size("SizeZ")? == 1 && size("SizeT")? == 1)
}

/// Open page `page` of a TIFF, or (None) the image the file holds: its one full-size page, or an
/// OME-TIFF's channel pages as one image. Several full-size pages of another kind (a z-stack, a
/// time series, unrelated images) are refused, never cut silently to the first.
pub fn open(path: &Path, page: Option<usize>) -> Result<Box<dyn Source>> {
    let Layout { pages, description, jpeg2000 } = layout(path)?;
    if jpeg2000 {
        // Aperio's JPEG 2000 (33003 YCbCr, 33005 RGB): decoded by OpenSlide, which reads these.
        return match super::openslide::OpenSlideSource::open(path, 0) {
            Ok(src) if page.is_none_or(|p| p == 0) => Ok(Box::new(src)),
            Ok(_) => Err(Error::Usage("--page: a JPEG 2000 slide is read through OpenSlide; use --level".into())),
            Err(e) => Err(input_err(
                path,
                format!(
                    "its tiles are JPEG 2000 (Aperio), which seamless reads through OpenSlide, and OpenSlide \
                     could not read it: {e}"
                ),
            )),
        };
    }
    if let Some(p) = page {
        if p >= pages.len() {
            return Err(input_err(path, format!("--page {p}: the file has pages 0 to {}", pages.len() - 1)));
        }
        return Ok(Box::new(TiffSource::open_page(path, p)?));
    }
    let first = pages[0];
    let full: Vec<usize> =
        (0..pages.len()).filter(|&i| !pages[i].reduced && (pages[i].w, pages[i].h) == (first.w, first.h)).collect();
    if full.len() == 1 {
        let mut src = TiffSource::open_page(path, 0)?;
        if pages.len() > 1 {
            src.note = Some(format!(
                "{} has {} more page(s) of other sizes or reduced resolution (thumbnails, labels, pyramid \
                 levels); reading page 0 (--page N reads another)",
                path.display(),
                pages.len() - 1
            ));
        }
        return Ok(Box::new(src));
    }
    if description.as_deref().and_then(|d| ome_channel_pages(d, full.len())) == Some(true) {
        let planes = full.iter().map(|&p| TiffSource::open_page(path, p)).collect::<Result<Vec<_>>>()?;
        if let Some(p) = planes.iter().position(|t| t.c != 1) {
            return Err(input_err(
                path,
                format!("OME channel page {} has {} samples, expected 1", full[p], planes[p].c),
            ));
        }
        return Ok(Box::new(PageChannels { planes }));
    }
    Err(input_err(
        path,
        format!(
            "has {} full-size pages of {}x{} (a z-stack, a time series, or channels stored as pages): \
             choose one with --page N (pages {})",
            full.len(),
            first.w,
            first.h,
            full.iter().map(|p| p.to_string()).collect::<Vec<_>>().join(", ")
        ),
    ))
}

/// The pixel size a TIFF page records: OME-XML's PhysicalSizeX/Y, an Aperio description's MPP, or
/// the resolution tags with a unit (inch or centimetre; "no unit" says nothing physical).
fn pixel_size<R: std::io::Read + std::io::Seek>(dec: &mut Decoder<R>) -> Option<PixelSize> {
    let description = dec.get_tag_ascii_string(Tag::ImageDescription).ok().unwrap_or_default();
    if description.contains("<OME")
        && let Ok(doc) = roxmltree::Document::parse(&description)
        && let Some(px) = doc.descendants().find(|n| n.tag_name().name() == "Pixels")
    {
        let size = |k: &str| {
            let v = px.attribute(k)?.parse::<f64>().ok()?;
            PixelSize::to_um(v, px.attribute(format!("{k}Unit").as_str()).unwrap_or("µm"))
        };
        return PixelSize::new(size("PhysicalSizeX")?, size("PhysicalSizeY")?);
    }
    if description.starts_with("Aperio")
        && let Some(mpp) = description.split('|').find_map(|f| f.trim().strip_prefix("MPP = "))
        && let Ok(mpp) = mpp.trim().parse::<f64>()
    {
        return PixelSize::new(mpp, mpp);
    }
    let per_unit = match dec.find_tag_unsigned::<u16>(Tag::ResolutionUnit).ok().flatten().unwrap_or(2) {
        2 => 25_400.0,
        3 => 10_000.0,
        _ => return None,
    };
    let resolution = |dec: &mut Decoder<R>, tag| match dec.find_tag(tag).ok().flatten()? {
        tiff::decoder::ifd::Value::Rational(n, d) if n > 0 && d > 0 => Some(n as f64 / d as f64),
        _ => None,
    };
    let (x, y) = (resolution(dec, Tag::XResolution)?, resolution(dec, Tag::YResolution)?);
    PixelSize::new(per_unit / x, per_unit / y)
}

/// An OME-TIFF's channel pages read as the channels of one image.
struct PageChannels {
    planes: Vec<TiffSource>,
}

impl Source for PageChannels {
    fn shape(&self) -> (usize, usize, usize) {
        let (h, w, _) = self.planes[0].shape();
        (h, w, self.planes.len())
    }
    fn read(&mut self, y0: usize, x0: usize, h: usize, w: usize) -> Result<Tensor> {
        let mut t = Tensor::zeros(self.planes.len(), h, w);
        for (c, p) in self.planes.iter_mut().enumerate() {
            let plane = p.read(y0, x0, h, w)?;
            t.data[c * h * w..(c + 1) * h * w].copy_from_slice(&plane.data);
        }
        Ok(t)
    }
    fn sample_type(&self) -> &'static str {
        self.planes[0].sample
    }
    fn pixel_size(&self) -> Option<PixelSize> {
        self.planes[0].pixel_size
    }
}

impl TiffSource {
    /// Page `page` (0-based, in file order) of the TIFF at `path`.
    pub fn open_page(path: &Path, page: usize) -> Result<TiffSource> {
        let bad = |e: tiff::TiffError| Error::codec(Side::Input, path, "not a readable TIFF", e);
        let mut dec = decoder(path)?;
        dec.seek_to_image(page).map_err(bad)?;
        let (w, h) = dec.dimensions().map_err(bad)?;
        let (c, sample) = match dec.colortype().map_err(bad)? {
            ColorType::Gray(8) => (1, "u8"),
            ColorType::Gray(16) => (1, "u16, i16 or f16"),
            ColorType::Gray(32) => (1, "f32, u32 or i32"),
            ColorType::Gray(64) => (1, "f64, u64 or i64"),
            ColorType::RGB(8) => (3, "u8"),
            ColorType::RGB(16) => (3, "u16"),
            ColorType::RGB(32) => (3, "f32 or u32"),
            ColorType::RGBA(8) => (4, "u8"),
            // JPEG tiles (the usual whole-slide compression) decode to YCbCr: converted to RGB.
            ColorType::YCbCr(8) => (3, "u8 (YCbCr, read as RGB)"),
            ColorType::Multiband { bit_depth: 8, num_samples } => (num_samples as usize, "u8"),
            ColorType::Multiband { bit_depth: 16, num_samples } => (num_samples as usize, "u16"),
            ColorType::Multiband { bit_depth: 32, num_samples } => (num_samples as usize, "f32 or u32"),
            other => {
                return Err(input_err(
                    path,
                    format!("unsupported TIFF sample layout {other:?} (8 to 64-bit integer or 16 to 64-bit float)"),
                ));
            }
        };
        let planar = c > 1 && matches!(dec.find_tag_unsigned::<u16>(Tag::PlanarConfiguration), Ok(Some(2)));
        let mut ycbcr = matches!(dec.colortype(), Ok(ColorType::YCbCr(_)));
        let tiled = dec.get_chunk_type() == ChunkType::Tile;
        // The header may claim any size (a 186-byte file claimed 10^12 pixels): every chunk must lie
        // inside the file, and the pixels must fit what its bytes can decompress to.
        let file_len = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
        let tag = if tiled { Tag::TileByteCounts } else { Tag::StripByteCounts };
        let offsets_tag = if tiled { Tag::TileOffsets } else { Tag::StripOffsets };
        let counts = dec.get_tag_u64_vec(tag).map_err(bad)?;
        let offsets = dec.get_tag_u64_vec(offsets_tag).map_err(bad)?;
        if counts.len() != offsets.len()
            || offsets.iter().zip(&counts).any(|(&o, &n)| o.checked_add(n).is_none_or(|end| end > file_len))
        {
            return Err(input_err(path, "its chunk table points past the end of the file (truncated or corrupt?)"));
        }
        // JPEG tiles in a page that says RGB may still hold YCbCr (Aperio's do): the decoder hands
        // the stream's own colours back, so look at the stream as libjpeg does.
        let jpeg = matches!(dec.find_tag_unsigned::<u16>(Tag::Compression), Ok(Some(7)));
        if jpeg && matches!(dec.colortype(), Ok(ColorType::RGB(8))) && !counts.is_empty() {
            let mut head = vec![0u8; counts[0].min(1 << 16) as usize];
            let mut f = File::open(path).map_err(|e| Error::io(Side::Input, path, "cannot open", e))?;
            f.seek(SeekFrom::Start(offsets[0]))
                .and_then(|_| std::io::Read::read_exact(&mut f, &mut head))
                .map_err(|e| Error::io(Side::Input, path, "cannot read", e))?;
            ycbcr = jpeg_is_ycbcr(&head);
        }
        let stored: u64 = counts.iter().sum();
        let bits = dec.colortype().map_err(bad)?.bit_depth() as u64;
        let decoded = (w as u64).saturating_mul(h as u64).saturating_mul(c as u64).saturating_mul(bits) / 8;
        if decoded > stored.saturating_mul(MAX_RATIO) {
            return Err(input_err(
                path,
                format!(
                    "it claims {w}x{h} pixels ({decoded} bytes) but holds {stored} bytes of image data: \
                     more than any TIFF compression reaches (corrupt or truncated?)"
                ),
            ));
        }
        let pixel_size = pixel_size(&mut dec);
        let (cw, ch) = dec.chunk_dimensions();
        let chunks = counts.len() as u32;
        if planar && !chunks.is_multiple_of(c as u32) {
            return Err(input_err(path, format!("planar, {c} channels, but {chunks} chunks (corrupt?)")));
        }
        let chunks_per_plane = if planar { chunks / c as u32 } else { chunks };
        Ok(TiffSource {
            dec,
            path: path.to_path_buf(),
            h: h as usize,
            w: w as usize,
            c,
            chunk_w: cw as usize,
            chunk_h: ch as usize,
            tiled,
            planar,
            chunks_per_plane,
            ycbcr,
            sample,
            note: None,
            pixel_size,
            cache: HashMap::new(),
            order: VecDeque::new(),
        })
    }

    /// The decoded samples of stored chunk `index`, as f32.
    fn decode(&mut self, index: u32) -> Result<Vec<f32>> {
        let data = self.dec.read_chunk(index).map_err(|e| {
            Error::codec(Side::Input, &self.path, format!("cannot decode chunk {index} (corrupt or truncated?)"), e)
        })?;
        Ok(match data {
            DecodingResult::U8(v) => v.into_iter().map(f32::from).collect(),
            DecodingResult::U16(v) => v.into_iter().map(f32::from).collect(),
            DecodingResult::U32(v) => v.into_iter().map(|x| x as f32).collect(),
            DecodingResult::F32(v) => v,
            DecodingResult::F64(v) => v.into_iter().map(|x| x as f32).collect(),
            DecodingResult::I8(v) => v.into_iter().map(f32::from).collect(),
            DecodingResult::I16(v) => v.into_iter().map(f32::from).collect(),
            // Wider integers round to the nearest f32, as every input is computed in f32.
            DecodingResult::I32(v) => v.into_iter().map(|x| x as f32).collect(),
            DecodingResult::I64(v) => v.into_iter().map(|x| x as f32).collect(),
            DecodingResult::U64(v) => v.into_iter().map(|x| x as f32).collect(),
            DecodingResult::F16(v) => v.into_iter().map(f32::from).collect(),
        })
    }

    /// Chunk `index` (of the first plane, when planar) as (width, height, interleaved f32 samples).
    fn chunk(&mut self, index: u32) -> Result<&(usize, usize, Vec<f32>)> {
        if !self.cache.contains_key(&index) {
            let (cw, chh) = self.dec.chunk_data_dimensions(index);
            let mut values = self.decode(index)?;
            if self.planar {
                // One plane per channel: interleave them, as chunky files store them.
                let n = cw as usize * chh as usize;
                let mut all = vec![0.0f32; n * self.c];
                for p in 0..self.c {
                    let plane = if p == 0 {
                        std::mem::take(&mut values)
                    } else {
                        self.decode(index + p as u32 * self.chunks_per_plane)?
                    };
                    if plane.len() < n {
                        return Err(input_err(&self.path, format!("chunk {index} plane {p} is short (corrupt?)")));
                    }
                    for (i, v) in plane[..n].iter().enumerate() {
                        all[i * self.c + p] = *v;
                    }
                }
                values = all;
            }
            if self.ycbcr {
                ycbcr_to_rgb(&mut values);
            }
            // The decoder returns the chunk's data without the padding of edge tiles.
            let stride_w = cw as usize;
            if values.len() < stride_w * (chh as usize) * self.c {
                return Err(input_err(&self.path, format!("chunk {index} is shorter than its dimensions (corrupt?)")));
            }
            let cap = (CACHE_VALUES / (self.chunk_w * self.chunk_h * self.c).max(1)).max(4);
            while self.order.len() >= cap {
                if let Some(old) = self.order.pop_front() {
                    self.cache.remove(&old);
                }
            }
            self.cache.insert(index, (stride_w, chh as usize, values));
            self.order.push_back(index);
        }
        Ok(&self.cache[&index])
    }
}

/// Whether a 3-component JPEG stream holds YCbCr, decided as libjpeg does: an Adobe marker says
/// (transform 0: RGB), else a JFIF marker means YCbCr, else component ids 'R', 'G', 'B' mean RGB,
/// else YCbCr. `head` is the start of the stream (its markers come before the scan).
fn jpeg_is_ycbcr(head: &[u8]) -> bool {
    let (mut i, mut jfif, mut ids) = (2usize, false, None);
    while i + 4 <= head.len() && head[i] == 0xFF {
        let marker = head[i + 1];
        let len = u16::from_be_bytes([head[i + 2], head[i + 3]]) as usize;
        let body = &head[(i + 4).min(head.len())..(i + 2 + len).min(head.len())];
        match marker {
            0xE0 if body.starts_with(b"JFIF") => jfif = true,
            0xEE if body.starts_with(b"Adobe") && body.len() >= 12 => return body[11] != 0,
            // Start of frame: 3 components, each (id, sampling, table).
            0xC0..=0xC3 if body.len() >= 15 && body[5] == 3 => ids = Some([body[6], body[9], body[12]]),
            0xDA => break,
            _ => {}
        }
        i += 2 + len;
    }
    jfif || ids != Some(*b"RGB")
}

/// JPEG's YCbCr (full range, ITU-R BT.601, the JFIF convention that TIFF's default reference
/// black and white give) to 8-bit RGB in place, rounded and clamped like an 8-bit decoder. Per
/// pixel and in a fixed order, so every window gives the same values.
fn ycbcr_to_rgb(v: &mut [f32]) {
    for px in v.chunks_exact_mut(3) {
        let (y, cb, cr) = (px[0], px[1] - 128.0, px[2] - 128.0);
        let rgb = [y + 1.402 * cr, y - 0.344_136 * cb - 0.714_136 * cr, y + 1.772 * cb];
        for (o, c) in px.iter_mut().zip(rgb) {
            *o = c.round().clamp(0.0, 255.0);
        }
    }
}

impl Source for TiffSource {
    fn shape(&self) -> (usize, usize, usize) {
        (self.h, self.w, self.c)
    }

    fn read(&mut self, y0: usize, x0: usize, h: usize, w: usize) -> Result<Tensor> {
        let mut t = Tensor::zeros(self.c, h, w);
        let (cw, chh, c, tiled, img_w) = (self.chunk_w, self.chunk_h, self.c, self.tiled, self.w);
        let across = if self.tiled { self.w.div_ceil(cw) } else { 1 };
        for cy in y0 / chh..(y0 + h).div_ceil(chh) {
            let (cx0, cx1) = if self.tiled { (x0 / cw, (x0 + w).div_ceil(cw)) } else { (0, 1) };
            for cx in cx0..cx1 {
                let index = (cy * across + cx) as u32;
                let (stride, rows, ref vals) = *self.chunk(index)?;
                let (ox, oy) = (if tiled { cx * cw } else { 0 }, cy * chh);
                let ys = y0.max(oy)..(y0 + h).min(oy + rows);
                let xs = x0.max(ox)..(x0 + w).min(ox + stride).min(img_w);
                for y in ys {
                    for x in xs.clone() {
                        let src = ((y - oy) * stride + (x - ox)) * c;
                        for ch in 0..c {
                            let v = vals[src + ch];
                            // One NaN would make the global statistics NaN and every label class 0.
                            if !v.is_finite() {
                                return Err(input_err(
                                    &self.path,
                                    format!("NaN or infinite value at ({y}, {x}), channel {ch}"),
                                ));
                            }
                            t.data[(ch * h + y - y0) * w + x - x0] = v;
                        }
                    }
                }
            }
        }
        Ok(t)
    }

    fn sample_type(&self) -> &'static str {
        self.sample
    }

    fn warnings(&self) -> Vec<String> {
        self.note.iter().cloned().collect()
    }

    fn pixel_size(&self) -> Option<PixelSize> {
        self.pixel_size
    }
}

/// The OME-XML description that makes the output an OME-TIFF: one image of `channels` samples per
/// pixel (interleaved), with the input's pixel size where it was known.
fn ome_xml(s: &OutSpec) -> String {
    let kind = match s.out {
        OutType::U8 => "uint8",
        OutType::U16 => "uint16",
        OutType::F16 => "float",
        OutType::F32 => "float",
    };
    let physical = s
        .pixel_size
        .map(|p| {
            format!(
                r#" PhysicalSizeX="{}" PhysicalSizeXUnit="µm" PhysicalSizeY="{}" PhysicalSizeYUnit="µm""#,
                p.x_um, p.y_um
            )
        })
        .unwrap_or_default();
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?><OME xmlns="http://www.openmicroscopy.org/Schemas/OME/2016-06" Creator="seamless {}"><Image ID="Image:0" Name="seamless"><Pixels ID="Pixels:0" DimensionOrder="XYCZT" Type="{kind}" SizeX="{}" SizeY="{}" SizeC="{}" SizeZ="1" SizeT="1"{physical}><Channel ID="Channel:0:0" SamplesPerPixel="{}"/><TiffData IFD="0" PlaneCount="1"/></Pixels></Image></OME>"#,
        env!("CARGO_PKG_VERSION"),
        s.width,
        s.height,
        s.channels,
        s.channels
    )
}

/// Tiled, Deflate-compressed BigTIFF, tiles appended in completion order.
pub struct TiffSink {
    file: File,
    path: PathBuf,
    spec: OutSpec,
    pos: u64,
    offsets: Vec<u64>,
    counts: Vec<u64>,
    /// Tiles written since the last sync: (index, offset, bytes).
    fresh: Vec<(usize, u64, u64)>,
}

impl TiffSink {
    fn across(spec: &OutSpec) -> usize {
        spec.width.div_ceil(spec.chunk)
    }

    /// A new file, or (resuming) the partial one with the tiles `journal` lists.
    pub fn create(path: &Path, spec: OutSpec, journal: Option<&[serde_json::Value]>) -> Result<TiffSink> {
        if !spec.chunk.is_multiple_of(16) || spec.chunk == 0 {
            return Err(output_err(path, format!("TIFF tile size {} is not a multiple of 16", spec.chunk)));
        }
        let err = |e: std::io::Error| Error::io(Side::Output, path, "cannot create", e);
        let n = Self::across(&spec) * spec.height.div_ceil(spec.chunk);
        // Resuming reopens without truncating, then cuts back to what the journal says is durable.
        let file = match journal {
            Some(_) => std::fs::OpenOptions::new().read(true).write(true).open(path),
            // Read too: the pyramid is made from the tiles written.
            None => std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(true).open(path),
        }
        .map_err(err)?;
        let mut sink = TiffSink {
            file,
            path: path.to_path_buf(),
            spec,
            pos: 16,
            offsets: vec![0; n],
            counts: vec![0; n],
            fresh: Vec::new(),
        };
        if let Some(entries) = journal {
            for e in entries.iter().flat_map(|v| v.as_array().cloned().unwrap_or_default()) {
                let t: (usize, u64, u64) =
                    serde_json::from_value(e).map_err(|e| Error::codec(Side::Output, path, "journal", e))?;
                // A journal is a file anyone can edit: its numbers are checked, never trusted.
                let end = t.1.checked_add(t.2);
                if t.0 >= n || t.1 < 16 || end.is_none() {
                    return Err(output_err(
                        path,
                        format!(
                            "the journal names TIFF tile {} at {}+{}, which this output cannot hold; rerun without --resume",
                            t.0, t.1, t.2
                        ),
                    ));
                }
                sink.offsets[t.0] = t.1;
                sink.counts[t.0] = t.2;
                sink.pos = sink.pos.max(end.unwrap_or(0));
            }
            sink.file.set_len(sink.pos).map_err(err)?;
        } else {
            // BigTIFF header: little-endian, version 43, 8-byte offsets; IFD offset patched at the end.
            let mut head = b"II\x2b\x00\x08\x00\x00\x00".to_vec();
            head.extend_from_slice(&0u64.to_le_bytes());
            sink.file.write_all(&head).map_err(err)?;
        }
        Ok(sink)
    }

    fn append(&mut self, bytes: &[u8]) -> Result<u64> {
        let at = self.pos;
        self.file
            .seek(SeekFrom::Start(at))
            .and_then(|_| self.file.write_all(bytes))
            .map_err(|e| Error::io(Side::Output, &self.path, "write failed", e))?;
        self.pos += bytes.len() as u64;
        Ok(at)
    }
}

impl Sink for TiffSink {
    fn write(&mut self, y0: usize, x0: usize, t: &Tensor) -> Result<()> {
        let ct = self.spec.chunk;
        if !y0.is_multiple_of(ct) || !x0.is_multiple_of(ct) {
            return Err(output_err(
                &self.path,
                format!("internal: region at ({y0}, {x0}) is not on the {ct}-px TIFF tile grid"),
            ));
        }
        let hw = t.h * t.w;
        for ty in (0..t.h).step_by(ct) {
            for tx in (0..t.w).step_by(ct) {
                let packed = self.pack_tile(|y, x, ch| {
                    let (y, x) = (ty + y, tx + x);
                    // TIFF tiles are full size; pixels past the image edge are zero.
                    if y < t.h && x < t.w { t.data[ch * hw + y * t.w + x] } else { 0.0 }
                })?;
                let index = ((y0 + ty) / ct) * Self::across(&self.spec) + (x0 + tx) / ct;
                let at = self.append(&packed)?;
                self.offsets[index] = at;
                self.counts[index] = packed.len() as u64;
                self.fresh.push((index, at, packed.len() as u64));
            }
        }
        Ok(())
    }

    fn sync(&mut self) -> Result<serde_json::Value> {
        self.file.sync_data().map_err(|e| Error::io(Side::Output, &self.path, "write failed", e))?;
        Ok(serde_json::to_value(std::mem::take(&mut self.fresh)).expect("serialisable"))
    }

    fn finish(mut self: Box<Self>) -> Result<()> {
        if let Some(i) = self.counts.iter().position(|&n| n == 0) {
            return Err(output_err(&self.path, format!("internal: TIFF tile {i} was never written")));
        }
        // The pyramid's tiles, then one IFD per level (reduced-resolution SubIFDs), then the main
        // IFD that lists them: viewers open the image at any zoom without reading level 0.
        let sizes = super::pyramid::level_sizes(self.spec.height, self.spec.width);
        let mut levels = vec![(self.offsets.clone(), self.counts.clone())];
        for k in 1..sizes.len() {
            let level = self.reduce_level(&levels[k - 1], sizes[k - 1], sizes[k])?;
            levels.push(level);
        }
        let mut sub_ifds = Vec::new();
        for (k, (offsets, counts)) in levels.iter().enumerate().skip(1) {
            let (h, w) = sizes[k];
            sub_ifds.push(self.write_ifd(h, w, offsets, counts, Some(1), None, &[])?);
        }
        let (offsets, counts) = (self.offsets.clone(), self.counts.clone());
        let description = ome_xml(&self.spec);
        let ifd_at =
            self.write_ifd(self.spec.height, self.spec.width, &offsets, &counts, None, Some(&description), &sub_ifds)?;
        let err = |e: std::io::Error| Error::io(Side::Output, &self.path, "write failed", e);
        self.file.seek(SeekFrom::Start(8)).and_then(|_| self.file.write_all(&ifd_at.to_le_bytes())).map_err(err)?;
        self.file.sync_all().map_err(err)
    }
}

impl TiffSink {
    /// One stored tile: `value(y, x, channel)` over the chunk x chunk tile, interleaved, in the
    /// output type, Deflate-compressed.
    fn pack_tile(&self, value: impl Fn(usize, usize, usize) -> f32) -> Result<Vec<u8>> {
        let (ct, c) = (self.spec.chunk, self.spec.channels);
        let mut raw = Vec::with_capacity(ct * ct * c * self.spec.out.bytes());
        for y in 0..ct {
            for x in 0..ct {
                for ch in 0..c {
                    encode(value(y, x, ch), self.spec.out, &mut raw);
                }
            }
        }
        let mut z = ZlibEncoder::new(Vec::new(), Compression::fast());
        let compressing = |e| Error::codec(Side::Output, &self.path, "compressing", e);
        z.write_all(&raw).map_err(compressing)?;
        z.finish().map_err(compressing)
    }

    /// Tile bytes at `offset` (`count` of them, as written by this sink) as ct x ct x c
    /// interleaved values.
    fn read_tile(&mut self, offset: u64, count: u64) -> Result<Vec<f32>> {
        use std::io::Read;
        let err = |e: std::io::Error| Error::io(Side::Output, &self.path, "cannot read back a tile", e);
        let mut packed = vec![0u8; count as usize];
        self.file.seek(SeekFrom::Start(offset)).and_then(|_| self.file.read_exact(&mut packed)).map_err(err)?;
        let mut raw = Vec::new();
        flate2::read::ZlibDecoder::new(&packed[..]).read_to_end(&mut raw).map_err(err)?;
        Ok(match self.spec.out {
            OutType::U8 => raw.into_iter().map(f32::from).collect(),
            OutType::U16 => raw.chunks_exact(2).map(|b| f32::from(u16::from_le_bytes([b[0], b[1]]))).collect(),
            OutType::F16 => raw.chunks_exact(2).map(|b| f32::from(half::f16::from_le_bytes([b[0], b[1]]))).collect(),
            OutType::F32 => raw.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect(),
        })
    }

    /// The next pyramid level (`size`, rows x columns) from the tiles of the level above
    /// (`above`, of `above_size`), 2x2 -> 1 as `pyramid::reduce` does for OME-Zarr, four tiles
    /// in memory at a time. Returns the new level's tile offsets and byte counts.
    fn reduce_level(
        &mut self,
        above: &(Vec<u64>, Vec<u64>),
        (ph, pw): (usize, usize),
        (lh, lw): (usize, usize),
    ) -> Result<(Vec<u64>, Vec<u64>)> {
        let (ct, c) = (self.spec.chunk, self.spec.channels);
        let labels = matches!(self.spec.out, OutType::U8 | OutType::U16);
        let (p_across, across, down) = (pw.div_ceil(ct), lw.div_ceil(ct), lh.div_ceil(ct));
        let (mut offsets, mut counts) = (vec![0; across * down], vec![0; across * down]);
        for ty in 0..down {
            for tx in 0..across {
                // The level above's region under this tile, inside that level's image.
                let (r0, r1) = (2 * ty * ct, (2 * (ty + 1) * ct).min(ph));
                let (c0, c1) = (2 * tx * ct, (2 * (tx + 1) * ct).min(pw));
                let (rows, cols) = (r1 - r0, c1 - c0);
                let mut region = vec![0f32; c * rows * cols];
                for (py, px) in [(2 * ty, 2 * tx), (2 * ty, 2 * tx + 1), (2 * ty + 1, 2 * tx), (2 * ty + 1, 2 * tx + 1)]
                {
                    if py * ct >= r1 || px * ct >= c1 {
                        continue;
                    }
                    let i = py * p_across + px;
                    let tile = self.read_tile(above.0[i], above.1[i])?;
                    for y in py * ct..((py + 1) * ct).min(r1) {
                        for x in px * ct..((px + 1) * ct).min(c1) {
                            for ch in 0..c {
                                region[(ch * rows + y - r0) * cols + x - c0] =
                                    tile[((y - py * ct) * ct + x - px * ct) * c + ch];
                            }
                        }
                    }
                }
                let (rh, rw) = (rows.div_ceil(2), cols.div_ceil(2));
                let reduced = super::pyramid::reduce(&region, c, rows, cols, labels);
                let packed =
                    self.pack_tile(|y, x, ch| if y < rh && x < rw { reduced[(ch * rh + y) * rw + x] } else { 0.0 })?;
                offsets[ty * across + tx] = self.append(&packed)?;
                counts[ty * across + tx] = packed.len() as u64;
            }
        }
        Ok((offsets, counts))
    }

    /// Append an IFD for an image of `h x w` with these tiles, and return where it starts.
    /// `subfile`: NewSubfileType (1 for a reduced-resolution level); `description`: the OME-XML;
    /// `sub_ifds`: the levels' IFDs, for the main image.
    #[allow(clippy::too_many_arguments)]
    fn write_ifd(
        &mut self,
        h: usize,
        w: usize,
        offsets: &[u64],
        counts: &[u64],
        subfile: Option<u32>,
        description: Option<&str>,
        sub_ifds: &[u64],
    ) -> Result<u64> {
        let s = self.spec;
        let c = s.channels as u64;
        let (bits, format) = match s.out {
            OutType::U8 => (8u16, 1u16),
            OutType::U16 => (16, 1),
            OutType::F16 => (16, 3),
            OutType::F32 => (32, 3),
        };
        let le16 = |v: &[u16]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
        let le64 = |v: &[u64]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
        // (tag, type, count, value bytes); values over 8 bytes go out of line.
        let mut entries: Vec<(u16, u16, u64, Vec<u8>)> = vec![
            (256, 4, 1, (w as u32).to_le_bytes().to_vec()),
            (257, 4, 1, (h as u32).to_le_bytes().to_vec()),
            (258, 3, c, le16(&vec![bits; s.channels])),
            (259, 3, 1, le16(&[8])),
            (262, 3, 1, le16(&[if s.channels == 3 { 2 } else { 1 }])),
            (277, 3, 1, le16(&[s.channels as u16])),
            (284, 3, 1, le16(&[1])),
            (322, 4, 1, (s.chunk as u32).to_le_bytes().to_vec()),
            (323, 4, 1, (s.chunk as u32).to_le_bytes().to_vec()),
            (324, 16, offsets.len() as u64, le64(offsets)),
            (325, 16, counts.len() as u64, le64(counts)),
            (339, 3, c, le16(&vec![format; s.channels])),
        ];
        if s.channels > 1 && s.channels != 3 {
            entries.push((338, 3, c - 1, le16(&vec![0; s.channels - 1])));
        }
        if let Some(kind) = subfile {
            entries.push((254, 4, 1, kind.to_le_bytes().to_vec()));
        }
        if let Some(d) = description {
            entries.push((270, 2, d.len() as u64 + 1, [d.as_bytes(), b"\0"].concat()));
        }
        if !sub_ifds.is_empty() {
            entries.push((330, 18, sub_ifds.len() as u64, le64(sub_ifds)));
        }
        if let Some(px) = s.pixel_size {
            // Pixels per centimetre at this level, as RATIONAL numerator/denominator (millionths).
            let scale = s.width as f64 / w as f64;
            let rational = |um: f64| {
                let per_cm = 10_000.0 / (um * scale);
                [((per_cm * 1e6).round().min(u32::MAX as f64) as u32).to_le_bytes(), 1_000_000u32.to_le_bytes()]
                    .concat()
            };
            entries.push((282, 5, 1, rational(px.x_um)));
            entries.push((283, 5, 1, rational(px.y_um)));
            entries.push((296, 3, 1, le16(&[3])));
        }
        entries.sort_by_key(|e| e.0);
        let mut ifd = Vec::new();
        ifd.extend_from_slice(&(entries.len() as u64).to_le_bytes());
        for (tag, ty, count, bytes) in entries {
            let value = if bytes.len() <= 8 {
                let mut v = bytes.clone();
                v.resize(8, 0);
                v
            } else {
                self.append_aligned(&bytes)?.to_le_bytes().to_vec()
            };
            ifd.extend_from_slice(&tag.to_le_bytes());
            ifd.extend_from_slice(&ty.to_le_bytes());
            ifd.extend_from_slice(&count.to_le_bytes());
            ifd.extend_from_slice(&value);
        }
        ifd.extend_from_slice(&0u64.to_le_bytes());
        self.append_aligned(&ifd)
    }

    /// Append at an even offset, as TIFF wants for IFDs and their arrays.
    fn append_aligned(&mut self, bytes: &[u8]) -> Result<u64> {
        if self.pos % 2 == 1 {
            self.append(&[0])?;
        }
        self.append(bytes)
    }
}
