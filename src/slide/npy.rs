//! `.npy` in and out. Input is read a window at a time, a row at a time with positioned reads (not
//! memory-mapped: a file truncated during a run would kill the process with SIGBUS where a read
//! gives an error); output is a file of its final size from the start, each tile's rows written in
//! place.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::{OutSpec, OutType, Sink, Source, encode, input_err};
use crate::error::{Error, Result, Side};
use crate::tensor::Tensor;

#[derive(Clone, Copy, Debug)]
enum Dt {
    U8,
    I8,
    U16,
    I16,
    U32,
    I32,
    F16,
    F32,
    F64,
    Bool,
}

impl Dt {
    fn parse(descr: &str) -> Option<Dt> {
        // split_at_checked: an empty or multi-byte first character is a bad header, not a panic.
        let (order, rest) = descr.split_at_checked(1)?;
        if order == ">" && !matches!(rest, "u1" | "i1" | "b1") {
            return None; // big-endian multi-byte: not supported
        }
        Some(match rest {
            "u1" => Dt::U8,
            "i1" => Dt::I8,
            "b1" => Dt::Bool,
            "u2" => Dt::U16,
            "i2" => Dt::I16,
            "u4" => Dt::U32,
            "i4" => Dt::I32,
            "f2" => Dt::F16,
            "f4" => Dt::F32,
            "f8" => Dt::F64,
            _ => return None,
        })
    }
    fn size(self) -> usize {
        match self {
            Dt::U8 | Dt::I8 | Dt::Bool => 1,
            Dt::U16 | Dt::I16 | Dt::F16 => 2,
            Dt::U32 | Dt::I32 | Dt::F32 => 4,
            Dt::F64 => 8,
        }
    }
    fn get(self, b: &[u8]) -> f32 {
        match self {
            Dt::U8 | Dt::Bool => b[0] as f32,
            Dt::I8 => b[0] as i8 as f32,
            Dt::U16 => u16::from_le_bytes([b[0], b[1]]) as f32,
            Dt::I16 => i16::from_le_bytes([b[0], b[1]]) as f32,
            Dt::U32 => u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f32,
            Dt::I32 => i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f32,
            Dt::F16 => half::f16::from_le_bytes([b[0], b[1]]).to_f32(),
            Dt::F32 => f32::from_le_bytes([b[0], b[1], b[2], b[3]]),
            Dt::F64 => f64::from_le_bytes(b[..8].try_into().unwrap()) as f32,
        }
    }
    fn name(self) -> &'static str {
        match self {
            Dt::U8 => "u8",
            Dt::I8 => "i8",
            Dt::Bool => "bool",
            Dt::U16 => "u16",
            Dt::I16 => "i16",
            Dt::U32 => "u32",
            Dt::I32 => "i32",
            Dt::F16 => "f16",
            Dt::F32 => "f32",
            Dt::F64 => "f64",
        }
    }
}

pub struct NpySource {
    file: File,
    row: Vec<u8>,
    offset: usize,
    dt: Dt,
    h: usize,
    w: usize,
    c: usize,
    path: PathBuf,
}

/// The header's dictionary text and where the data starts.
fn header(bytes: &[u8]) -> Option<(String, usize)> {
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return None;
    }
    let (len, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 => (u32::from_le_bytes(bytes.get(8..12)?.try_into().ok()?) as usize, 12),
        _ => return None,
    };
    let text = std::str::from_utf8(bytes.get(start..start + len)?).ok()?.to_string();
    Some((text, start + len))
}

fn field<'a>(dict: &'a str, key: &str) -> Option<&'a str> {
    let i = dict.find(&format!("'{key}'"))? + key.len() + 2;
    Some(dict[i..].trim_start().strip_prefix(':')?.trim_start())
}

impl NpySource {
    pub fn open(path: &Path) -> Result<NpySource> {
        let file = File::open(path).map_err(|e| Error::io(Side::Input, path, "cannot open", e))?;
        let len = file.metadata().map_err(|e| Error::io(Side::Input, path, "cannot open", e))?.len();
        // The header: 10 or 12 bytes, then its length (at most 4 GiB by its u32, 64 KiB in practice).
        let mut head = vec![0u8; 12.min(len as usize)];
        file.read_exact_at(&mut head, 0).map_err(|e| Error::io(Side::Input, path, "cannot read", e))?;
        let declared = match head.get(6) {
            Some(1) => head.get(8..10).map(|b| u16::from_le_bytes([b[0], b[1]]) as u64 + 10),
            Some(2 | 3) => head.get(8..12).map(|b| u32::from_le_bytes(b.try_into().unwrap()) as u64 + 12),
            _ => None,
        };
        let head_len = declared.filter(|&n| n <= len).unwrap_or(head.len() as u64);
        head.resize(head_len as usize, 0);
        file.read_exact_at(&mut head, 0).map_err(|e| Error::io(Side::Input, path, "cannot read", e))?;
        let (dict, offset) = header(&head).ok_or_else(|| input_err(path, "not a readable .npy file (bad header)"))?;
        let descr = field(&dict, "descr").and_then(|v| v.get(1..).and_then(|v| v.split('\'').next()));
        let dt = descr.and_then(Dt::parse).ok_or_else(|| {
            input_err(path, format!("unsupported .npy dtype {descr:?} (integer, bool or float, little-endian)"))
        })?;
        if field(&dict, "fortran_order").is_some_and(|v| v.starts_with("True")) {
            return Err(input_err(path, "Fortran-ordered array; save it with np.ascontiguousarray"));
        }
        let shape_text = field(&dict, "shape")
            .and_then(|v| v.strip_prefix('('))
            .and_then(|v| v.split(')').next())
            .ok_or_else(|| input_err(path, "bad .npy header: no shape"))?;
        let shape: Vec<usize> = shape_text
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| s.parse::<usize>())
            .collect::<std::result::Result<_, _>>()
            .map_err(|_| input_err(path, "bad .npy header: shape"))?;
        let (h, w, c) = match shape[..] {
            [h, w] => (h, w, 1),
            [h, w, c] if c <= 64 => (h, w, c),
            _ => {
                return Err(input_err(
                    path,
                    format!("array of shape {shape:?}; expected (H, W) or (H, W, C) with C <= 64"),
                ));
            }
        };
        // Checked: a header's shape can claim any numbers, and a wrapped product would pass.
        let need = h
            .checked_mul(w)
            .and_then(|n| n.checked_mul(c))
            .and_then(|n| n.checked_mul(dt.size()))
            .and_then(|n| n.checked_add(offset))
            .ok_or_else(|| input_err(path, format!("array of shape {shape:?} is larger than any file can be")))?;
        if (len as usize) < need {
            return Err(input_err(path, format!("the .npy file ends early (truncated?): {len} of {need} bytes")));
        }
        Ok(NpySource { file, row: Vec::new(), offset, dt, h, w, c, path: path.to_path_buf() })
    }
}

impl Source for NpySource {
    fn shape(&self) -> (usize, usize, usize) {
        (self.h, self.w, self.c)
    }

    fn read(&mut self, y0: usize, x0: usize, h: usize, w: usize) -> Result<Tensor> {
        let (c, s) = (self.c, self.dt.size());
        let mut t = Tensor::zeros(c, h, w);
        if y0 + h > self.h || x0 + w > self.w {
            return Err(input_err(&self.path, format!("window {w}x{h} at ({y0}, {x0}) is outside the image")));
        }
        self.row.resize(w * c * s, 0);
        for y in 0..h {
            let at = self.offset + ((y0 + y) * self.w + x0) * c * s;
            let bytes = &mut self.row;
            self.file.read_exact_at(bytes, at as u64).map_err(|e| {
                input_err(
                    &self.path,
                    format!("cannot read row {} (was the file truncated during the run?): {e}", y0 + y),
                )
            })?;
            for x in 0..w {
                for ch in 0..c {
                    let v = self.dt.get(&bytes[(x * c + ch) * s..]);
                    if !v.is_finite() {
                        return Err(input_err(
                            &self.path,
                            format!("NaN or infinite value at ({}, {})", y0 + y, x0 + x),
                        ));
                    }
                    t.data[(ch * h + y) * w + x] = v;
                }
            }
        }
        Ok(t)
    }

    fn sample_type(&self) -> &'static str {
        self.dt.name()
    }
}

/// A `.npy` header (version 1.0) for a C-ordered array.
pub fn header_bytes(descr: &str, shape: &[usize]) -> Vec<u8> {
    let dims = match shape.len() {
        1 => format!("({},)", shape[0]),
        _ => format!("({})", shape.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", ")),
    };
    let mut dict = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {dims}, }}");
    while (10 + dict.len() + 1) % 64 != 0 {
        dict.push(' ');
    }
    dict.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend_from_slice(&(dict.len() as u16).to_le_bytes());
    out.extend_from_slice(dict.as_bytes());
    out
}

pub fn descr(out: OutType) -> &'static str {
    match out {
        OutType::U8 => "|u1",
        OutType::U16 => "<u2",
        OutType::F16 => "<f2",
        OutType::F32 => "<f4",
    }
}

/// Output `(H, W)` for one channel, `(H, W, C)` for several.
pub struct NpySink {
    file: File,
    offset: usize,
    spec: OutSpec,
    path: PathBuf,
}

impl NpySink {
    /// Create (or, resuming, reopen) the file at `path` with its full size.
    pub fn create(path: &Path, spec: OutSpec, resume: bool) -> Result<NpySink> {
        let shape: Vec<usize> = if spec.channels == 1 {
            vec![spec.height, spec.width]
        } else {
            vec![spec.height, spec.width, spec.channels]
        };
        let head = header_bytes(descr(spec.out), &shape);
        let err = |e: std::io::Error| Error::io(Side::Output, path, "cannot create", e);
        let file = if resume {
            std::fs::OpenOptions::new().read(true).write(true).open(path).map_err(err)?
        } else {
            File::create(path).map_err(err)?
        };
        let len = head.len() + spec.height * spec.width * spec.channels * spec.out.bytes();
        file.write_all_at(&head, 0).map_err(err)?;
        file.set_len(len as u64).map_err(err)?;
        Ok(NpySink { file, offset: head.len(), spec, path: path.to_path_buf() })
    }
}

impl Sink for NpySink {
    fn write(&mut self, y0: usize, x0: usize, t: &Tensor) -> Result<()> {
        let (c, hw) = (self.spec.channels, t.h * t.w);
        let mut row = Vec::with_capacity(t.w * c * self.spec.out.bytes());
        for y in 0..t.h {
            row.clear();
            for x in 0..t.w {
                for ch in 0..c {
                    encode(t.data[ch * hw + y * t.w + x], self.spec.out, &mut row);
                }
            }
            let at = self.offset + ((y0 + y) * self.spec.width + x0) * c * self.spec.out.bytes();
            self.file
                .write_all_at(&row, at as u64)
                .map_err(|e| Error::io(Side::Output, &self.path, "write failed", e))?;
        }
        Ok(())
    }

    fn sync(&mut self) -> Result<serde_json::Value> {
        self.file.sync_data().map_err(|e| Error::io(Side::Output, &self.path, "write failed", e))?;
        Ok(serde_json::Value::Null)
    }

    fn finish(self: Box<Self>) -> Result<()> {
        self.file.sync_all().map_err(|e| Error::io(Side::Output, &self.path, "write failed", e))
    }
}
