//! Vendor whole-slide formats (Aperio SVS, Hamamatsu NDPI, MIRAX, Leica SCN, Philips TIFF,
//! Ventana BIF, ...) through OpenSlide, loaded at run time like the CUDA libraries: the binary
//! runs without it, and only opening such a slide needs it. OpenSlide returns premultiplied ARGB;
//! a pixel is composited onto white (what viewers show where nothing was scanned) and read as
//! three 8-bit channels, R, G, B. Each read depends only on the pixels it covers, so windows
//! agree with the whole image.

use std::ffi::{CStr, CString, c_char, c_double, c_void};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use super::{Source, input_err};
use crate::error::Result;
use crate::tensor::Tensor;

/// File names OpenSlide is tried under (its soname was .so.0 up to 3.4, .so.1 from 4.0), unless
/// `$SEAMLESS_OPENSLIDE_LIB` names the library.
const LIBRARY_NAMES: [&str; 4] =
    ["libopenslide.so.1", "libopenslide.so.0", "libopenslide.1.dylib", "libopenslide-1.dll"];

/// Extensions read through OpenSlide by default.
pub const EXTENSIONS: [&str; 8] = [".svs", ".ndpi", ".mrxs", ".scn", ".bif", ".vms", ".vmu", ".svslide"];

type Osr = *mut c_void;

/// The OpenSlide functions seamless calls (their C signatures are stable since 3.0).
struct Api {
    open: unsafe extern "C" fn(*const c_char) -> Osr,
    close: unsafe extern "C" fn(Osr),
    get_error: unsafe extern "C" fn(Osr) -> *const c_char,
    level_count: unsafe extern "C" fn(Osr) -> i32,
    level_dimensions: unsafe extern "C" fn(Osr, i32, *mut i64, *mut i64),
    level_downsample: unsafe extern "C" fn(Osr, i32) -> c_double,
    read_region: unsafe extern "C" fn(Osr, *mut u32, i64, i64, i32, i64, i64),
    property_value: unsafe extern "C" fn(Osr, *const c_char) -> *const c_char,
    version: unsafe extern "C" fn() -> *const c_char,
    /// Keeps the functions above loaded.
    _lib: libloading::Library,
}

fn load() -> Result<Api, String> {
    // A path the user gives is the only one tried: a wrong one must not fall back unseen.
    let candidates: Vec<String> = match std::env::var("SEAMLESS_OPENSLIDE_LIB") {
        Ok(path) => vec![path],
        Err(_) => LIBRARY_NAMES.iter().map(|s| s.to_string()).collect(),
    };
    let mut tried = Vec::new();
    for name in &candidates {
        // SAFETY: loading OpenSlide runs its (and its dependencies') initialisers, which have no
        // preconditions.
        match unsafe { libloading::Library::new(name) } {
            Ok(lib) => return api(lib).map_err(|e| format!("{name}: {e}")),
            Err(e) => tried.push(format!("{name} ({e})")),
        }
    }
    Err(format!(
        "OpenSlide is not installed (tried {}). Install it (Debian/Ubuntu: apt install libopenslide0; \
         Fedora: dnf install openslide; macOS: brew install openslide) or set SEAMLESS_OPENSLIDE_LIB to its path",
        tried.join(", ")
    ))
}

fn api(lib: libloading::Library) -> Result<Api, libloading::Error> {
    // SAFETY: each symbol is looked up by its OpenSlide name and given that function's C
    // signature (openslide.h); the library outlives them in `_lib`.
    unsafe {
        Ok(Api {
            open: *lib.get(b"openslide_open\0")?,
            close: *lib.get(b"openslide_close\0")?,
            get_error: *lib.get(b"openslide_get_error\0")?,
            level_count: *lib.get(b"openslide_get_level_count\0")?,
            level_dimensions: *lib.get(b"openslide_get_level_dimensions\0")?,
            level_downsample: *lib.get(b"openslide_get_level_downsample\0")?,
            read_region: *lib.get(b"openslide_read_region\0")?,
            property_value: *lib.get(b"openslide_get_property_value\0")?,
            version: *lib.get(b"openslide_get_version\0")?,
            _lib: lib,
        })
    }
}

fn library() -> Result<&'static Api, String> {
    static API: OnceLock<Result<Api, String>> = OnceLock::new();
    API.get_or_init(load).as_ref().map_err(Clone::clone)
}

/// OpenSlide's version, or why it cannot be loaded (for `seamless doctor` and messages).
pub fn version() -> Result<String, String> {
    let api = library()?;
    // SAFETY: returns a static NUL-terminated string.
    Ok(unsafe { CStr::from_ptr((api.version)()) }.to_string_lossy().into_owned())
}

/// A string OpenSlide owns, copied; None for NULL.
fn owned(p: *const c_char) -> Option<String> {
    // SAFETY: OpenSlide returns NULL or a NUL-terminated string valid until the slide is closed;
    // it is copied before that.
    (!p.is_null()).then(|| unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned())
}

/// OpenSlide is asked for aligned blocks of this many pixels square at the level read. At a level
/// whose downsample is not an integer (2.0048 for a 211-px slide's second level) OpenSlide maps a
/// region's origin to a fractional position and resamples, so the same pixel could read
/// differently from two windows. Read through fixed blocks, every pixel comes from the one read
/// of its block, whichever window asks.
const BLOCK: usize = 256;

/// Blocks kept for overlapping windows (halos): 64 of 256 KiB, 16 MiB.
const CACHED_BLOCKS: usize = 64;

pub struct OpenSlideSource {
    api: &'static Api,
    osr: Osr,
    path: PathBuf,
    level: i32,
    downsample: f64,
    h: usize,
    w: usize,
    vendor_levels: usize,
    /// Premultiplied ARGB blocks by (block row, block column), oldest first.
    blocks: Vec<((usize, usize), Vec<u32>)>,
}

// SAFETY: an OpenSlide handle may be used from any thread ("openslide_t objects are thread-safe",
// openslide.h); this source is used by one thread at a time anyway (&mut self).
unsafe impl Send for OpenSlideSource {}

impl OpenSlideSource {
    /// Open `path` at pyramid `level` (0 = full resolution).
    pub fn open(path: &Path, level: usize) -> Result<OpenSlideSource> {
        let api = library().map_err(|e| input_err(path, e))?;
        let c_path = CString::new(path.as_os_str().as_encoded_bytes())
            .map_err(|_| input_err(path, "the path contains a NUL byte"))?;
        // SAFETY: a NUL-terminated path; returns NULL or a handle closed in Drop.
        let osr = unsafe { (api.open)(c_path.as_ptr()) };
        if osr.is_null() {
            return Err(input_err(path, "OpenSlide does not recognise this file as a slide it can read"));
        }
        let mut src = OpenSlideSource {
            api,
            osr,
            path: path.to_path_buf(),
            level: 0,
            downsample: 1.0,
            h: 0,
            w: 0,
            vendor_levels: 0,
            blocks: Vec::new(),
        };
        src.check()?;
        // SAFETY (this block): `osr` is a valid handle without an error.
        let levels = unsafe { (api.level_count)(osr) };
        if levels < 1 {
            return Err(input_err(path, "OpenSlide found no pyramid level in it"));
        }
        src.vendor_levels = levels as usize;
        if level >= levels as usize {
            return Err(input_err(path, format!("--level {level}: the slide has levels 0 to {}", levels - 1)));
        }
        let (mut w, mut h) = (0i64, 0i64);
        unsafe { (api.level_dimensions)(osr, level as i32, &mut w, &mut h) };
        src.downsample = unsafe { (api.level_downsample)(osr, level as i32) };
        src.check()?;
        if w <= 0 || h <= 0 || src.downsample.is_nan() || src.downsample < 1.0 {
            return Err(input_err(path, format!("OpenSlide reports level {level} as {w}x{h} (corrupt?)")));
        }
        (src.level, src.w, src.h) = (level as i32, w as usize, h as usize);
        Ok(src)
    }

    /// OpenSlide's sticky error for this slide, as ours.
    fn check(&self) -> Result<()> {
        // SAFETY: a valid handle.
        match owned(unsafe { (self.api.get_error)(self.osr) }) {
            None => Ok(()),
            Some(e) => Err(input_err(&self.path, format!("OpenSlide: {e}"))),
        }
    }

    /// A property of the slide (`openslide.mpp-x`, `aperio.AppMag`, ...).
    pub fn property(&self, name: &str) -> Option<String> {
        let name = CString::new(name).ok()?;
        // SAFETY: a valid handle and a NUL-terminated name.
        owned(unsafe { (self.api.property_value)(self.osr, name.as_ptr()) })
    }

    /// The number of pyramid levels the slide has.
    pub fn levels(&self) -> usize {
        self.vendor_levels
    }

    /// Microns per pixel at the level read (x, y), where the slide records it.
    pub fn microns_per_pixel(&self) -> Option<(f64, f64)> {
        let get = |k: &str| self.property(k)?.trim().parse::<f64>().ok().filter(|v| v.is_finite() && *v > 0.0);
        Some((get("openslide.mpp-x")? * self.downsample, get("openslide.mpp-y")? * self.downsample))
    }
}

impl OpenSlideSource {
    /// Block (`by`, `bx`) of the level read, BLOCK x BLOCK premultiplied ARGB pixels (transparent
    /// past the level's edge), from the cache or from OpenSlide.
    fn block(&mut self, by: usize, bx: usize) -> Result<&[u32]> {
        if let Some(i) = self.blocks.iter().position(|(k, _)| *k == (by, bx)) {
            let hit = self.blocks.remove(i);
            self.blocks.push(hit);
        } else {
            let mut px = vec![0u32; BLOCK * BLOCK];
            // Level-0 coordinates of the block's corner (OpenSlide takes them in level 0).
            let lx = ((bx * BLOCK) as f64 * self.downsample) as i64;
            let ly = ((by * BLOCK) as f64 * self.downsample) as i64;
            // SAFETY: `px` holds the BLOCK x BLOCK pixels asked for.
            unsafe {
                (self.api.read_region)(self.osr, px.as_mut_ptr(), lx, ly, self.level, BLOCK as i64, BLOCK as i64)
            };
            self.check()?;
            if self.blocks.len() >= CACHED_BLOCKS {
                self.blocks.remove(0);
            }
            self.blocks.push(((by, bx), px));
        }
        Ok(&self.blocks.last().expect("just pushed").1)
    }
}

impl Drop for OpenSlideSource {
    fn drop(&mut self) {
        // SAFETY: the handle from openslide_open, closed once.
        unsafe { (self.api.close)(self.osr) }
    }
}

impl Source for OpenSlideSource {
    fn shape(&self) -> (usize, usize, usize) {
        (self.h, self.w, 3)
    }

    fn read(&mut self, y0: usize, x0: usize, h: usize, w: usize) -> Result<Tensor> {
        let mut out = Tensor::zeros(3, h, w);
        let plane = h * w;
        for by in y0 / BLOCK..(y0 + h).div_ceil(BLOCK) {
            for bx in x0 / BLOCK..(x0 + w).div_ceil(BLOCK) {
                let block = self.block(by, bx)?;
                // The part of this block inside the window, in image coordinates.
                let (ya, yb) = ((by * BLOCK).max(y0), ((by + 1) * BLOCK).min(y0 + h));
                let (xa, xb) = ((bx * BLOCK).max(x0), ((bx + 1) * BLOCK).min(x0 + w));
                for y in ya..yb {
                    for x in xa..xb {
                        let p = block[(y - by * BLOCK) * BLOCK + (x - bx * BLOCK)];
                        // Premultiplied ARGB onto white: c + (255 - a) for each colour.
                        let bg = 255 - (p >> 24);
                        let at = (y - y0) * w + (x - x0);
                        out.data[at] = (((p >> 16) & 0xff) + bg).min(255) as f32;
                        out.data[plane + at] = (((p >> 8) & 0xff) + bg).min(255) as f32;
                        out.data[2 * plane + at] = ((p & 0xff) + bg).min(255) as f32;
                    }
                }
            }
        }
        Ok(out)
    }

    fn sample_type(&self) -> &'static str {
        "u8 RGB (OpenSlide)"
    }

    fn pixel_size(&self) -> Option<super::PixelSize> {
        let (x, y) = self.microns_per_pixel()?;
        super::PixelSize::new(x, y)
    }
}
