//! OME-Zarr in (Zarr v2 and v3, through `zarrs`: the first multiscale level, or a plain array) and
//! out (Zarr v3, OME-NGFF 0.5 `c, y, x`, chunks that divide the compute tile so each tile writes
//! whole chunks: several processes can fill one output, see `--shard`).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use zarrs::array::{Array, ArrayBuilder, data_type};
use zarrs::filesystem::FilesystemStore;
use zarrs::group::{Group, GroupBuilder};

use super::{OutSpec, OutType, PixelSize, Sink, Source, input_err};
use crate::error::{Error, Result, Side};
use crate::tensor::Tensor;

type Store = FilesystemStore;

pub struct ZarrSource {
    array: Array<Store>,
    path: PathBuf,
    /// Axis index of y, x and (if any) c; every other axis has length 1.
    y: usize,
    x: usize,
    c: Option<usize>,
    shape: Vec<u64>,
    sample: &'static str,
    /// Chunk files present, and chunks in the array's grid (missing ones read as the fill value).
    chunks: (u64, u64),
    pixel_size: Option<PixelSize>,
}

/// Chunk (or shard) files below an array's folder: every file but the metadata. Bounded by what
/// the store really holds, whatever its metadata claims.
fn stored_chunks(dir: &Path) -> u64 {
    let mut n = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for e in entries.flatten() {
            let name = e.file_name();
            let name = name.to_string_lossy();
            match e.file_type() {
                Ok(t) if t.is_dir() => stack.push(e.path()),
                Ok(t) if t.is_file() && name != "zarr.json" && !name.starts_with(".z") => n += 1,
                _ => {}
            }
        }
    }
    n
}

/// The first multiscale of a group's OME-NGFF 0.4 (top level) or 0.5 (under `ome`) attributes.
fn first_multiscale(attrs: &serde_json::Map<String, serde_json::Value>) -> Option<&serde_json::Value> {
    attrs.get("multiscales").or_else(|| attrs.get("ome")?.get("multiscales"))?.get(0)
}

/// Path of the first multiscale dataset and the axis names, from OME-NGFF 0.4 or 0.5 attributes.
fn multiscale(attrs: &serde_json::Map<String, serde_json::Value>) -> Option<(String, Option<Vec<String>>)> {
    let ms = first_multiscale(attrs)?;
    let path = ms.get("datasets")?.get(0)?.get("path")?.as_str()?.to_string();
    let axes = ms.get("axes").and_then(|a| {
        a.as_array()?
            .iter()
            .map(|x| x.get("name").and_then(|n| n.as_str()).or_else(|| x.as_str()).map(str::to_string))
            .collect::<Option<Vec<String>>>()
    });
    Some((path, axes))
}

/// The pixel size the first multiscale dataset's `scale` gives, where its y and x axes have a unit.
fn ngff_pixel_size(attrs: &serde_json::Map<String, serde_json::Value>) -> Option<PixelSize> {
    let ms = first_multiscale(attrs)?;
    let axes = ms.get("axes")?.as_array()?;
    let scale = ms
        .get("datasets")?
        .get(0)?
        .get("coordinateTransformations")?
        .as_array()?
        .iter()
        .find(|t| t.get("type").and_then(|v| v.as_str()) == Some("scale"))?
        .get("scale")?
        .as_array()?;
    let along = |name: &str| {
        let i = axes.iter().position(|a| a.get("name").and_then(|n| n.as_str()) == Some(name))?;
        PixelSize::to_um(scale.get(i)?.as_f64()?, axes[i].get("unit")?.as_str()?)
    };
    PixelSize::new(along("x")?, along("y")?)
}

impl ZarrSource {
    pub fn open(path: &Path) -> Result<ZarrSource> {
        let err = |m: String| input_err(path, m);
        let store = Arc::new(Store::new(path).map_err(|e| Error::codec(Side::Input, path, "cannot open", e))?);
        let mut pixel_size = None;
        let (array, axes, array_dir) = match Array::open(store.clone(), "/") {
            Ok(a) => (a, None, path.to_path_buf()),
            Err(_) => {
                let group = Group::open(store.clone(), "/").map_err(|e| {
                    Error::codec(Side::Input, path, "neither a Zarr array nor a readable Zarr group", e)
                })?;
                let (ds, axes) = multiscale(group.attributes())
                    .ok_or_else(|| err("a Zarr group without OME-NGFF 'multiscales' metadata".into()))?;
                pixel_size = ngff_pixel_size(group.attributes());
                let a = Array::open(store, &format!("/{}", ds.trim_start_matches('/')))
                    .map_err(|e| Error::codec(Side::Input, path, format!("cannot open dataset '{ds}'"), e))?;
                (a, axes, path.join(ds.trim_start_matches('/')))
            }
        };
        let shape = array.shape().to_vec();
        let names: Vec<String> = axes
            .or_else(|| {
                array
                    .dimension_names()
                    .as_ref()
                    .map(|d| d.iter().map(|n| n.as_deref().unwrap_or("").to_string()).collect())
            })
            .unwrap_or_default();
        let find = |n: &str| names.iter().position(|a| a == n);
        let (y, x, c) = match (find("y"), find("x")) {
            (Some(y), Some(x)) => (y, x, find("c")),
            _ => match shape.len() {
                2 => (0, 1, None),
                3 => (1, 2, Some(0)),
                5 => (3, 4, Some(1)),
                n => {
                    return Err(err(format!(
                        "{n}-dimensional array without axis names; expected (y, x), (c, y, x) or (t, c, z, y, x)"
                    )));
                }
            },
        };
        for (i, &n) in shape.iter().enumerate() {
            if i != y && i != x && Some(i) != c && n != 1 {
                return Err(err(format!("axis {i} has length {n}; only y, x and c may be longer than 1")));
            }
        }
        let dt = array.data_type();
        let sample = if *dt == data_type::uint8() {
            "u8"
        } else if *dt == data_type::uint16() {
            "u16"
        } else if *dt == data_type::float32() {
            "f32"
        } else if *dt == data_type::int16() {
            "i16"
        } else if *dt == data_type::float64() {
            "f64"
        } else {
            return Err(err(format!("unsupported Zarr data type {dt} (uint8, uint16, int16, float32, float64)")));
        };
        let grid = array.chunk_grid_shape().iter().try_fold(1u64, |n, &k| n.checked_mul(k)).unwrap_or(u64::MAX);
        let stored = stored_chunks(&array_dir);
        // A store whose metadata claims an image but holds no chunk at all is all fill value:
        // nothing to segment, and reading it would take as long as the claimed size.
        if stored == 0 && shape.iter().all(|&n| n > 0) {
            return Err(err(format!(
                "holds no chunk data: every one of its {} pixels would be the fill value (an array written \
                 only as metadata?)",
                shape.iter().product::<u64>()
            )));
        }
        Ok(ZarrSource { array, path: path.to_path_buf(), y, x, c, shape, sample, chunks: (stored, grid), pixel_size })
    }
}

impl Source for ZarrSource {
    fn shape(&self) -> (usize, usize, usize) {
        let c = self.c.map_or(1, |c| self.shape[c] as usize);
        (self.shape[self.y] as usize, self.shape[self.x] as usize, c)
    }

    fn read(&mut self, y0: usize, x0: usize, h: usize, w: usize) -> Result<Tensor> {
        let ranges: Vec<std::ops::Range<u64>> = (0..self.shape.len())
            .map(|i| {
                if i == self.y {
                    y0 as u64..(y0 + h) as u64
                } else if i == self.x {
                    x0 as u64..(x0 + w) as u64
                } else {
                    0..self.shape[i]
                }
            })
            .collect();
        let subset = zarrs::array::ArraySubset::new_with_ranges(&ranges);
        let bad =
            |e: zarrs::array::ArrayError| Error::codec(Side::Input, &self.path, "cannot read (corrupt chunk?)", e);
        let values: Vec<f32> = match self.sample {
            "u8" => {
                self.array.retrieve_array_subset::<Vec<u8>>(&subset).map_err(bad)?.into_iter().map(f32::from).collect()
            }
            "u16" => {
                self.array.retrieve_array_subset::<Vec<u16>>(&subset).map_err(bad)?.into_iter().map(f32::from).collect()
            }
            "i16" => {
                self.array.retrieve_array_subset::<Vec<i16>>(&subset).map_err(bad)?.into_iter().map(f32::from).collect()
            }
            "f64" => self
                .array
                .retrieve_array_subset::<Vec<f64>>(&subset)
                .map_err(bad)?
                .into_iter()
                .map(|v| v as f32)
                .collect(),
            _ => self.array.retrieve_array_subset::<Vec<f32>>(&subset).map_err(bad)?,
        };
        // The subset is C-ordered over the array's axes; only c, y, x have extent > 1.
        let c = self.shape().2;
        let (cy, cx) = (self.y, self.x);
        let chan_first = self.c.is_none_or(|ci| ci < cy.min(cx));
        let mut t = Tensor::zeros(c, h, w);
        if chan_first && cy < cx {
            t.data.copy_from_slice(&values);
        } else {
            // y, x, c (channels last) or other orders: gather by strides.
            let dims: Vec<usize> = ranges.iter().map(|r| (r.end - r.start) as usize).collect();
            let stride = |axis: usize| dims[axis + 1..].iter().product::<usize>();
            let (sy, sx, sc) = (stride(cy), stride(cx), self.c.map_or(0, stride));
            for ch in 0..c {
                for y in 0..h {
                    for x in 0..w {
                        t.data[(ch * h + y) * w + x] = values[y * sy + x * sx + ch * sc];
                    }
                }
            }
        }
        if t.data.iter().any(|v| !v.is_finite()) {
            return Err(input_err(&self.path, "contains NaN or infinite values"));
        }
        Ok(t)
    }

    fn sample_type(&self) -> &'static str {
        self.sample
    }

    fn pixel_size(&self) -> Option<PixelSize> {
        self.pixel_size
    }

    fn warnings(&self) -> Vec<String> {
        let (stored, grid) = self.chunks;
        if stored >= grid {
            return Vec::new();
        }
        vec![format!(
            "{}: only {stored} of its {grid} chunks are stored; the others read as the array's fill value",
            self.path.display()
        )]
    }
}

pub struct ZarrSink {
    array: Array<Store>,
    path: PathBuf,
    spec: OutSpec,
}

/// Turns zarrs' error into [`Error::Codec`] for the output store at `path`, doing `what`.
fn failed<'a, E>(path: &'a Path, what: &'static str) -> impl FnOnce(E) -> Error + 'a
where
    E: std::error::Error + Send + Sync + 'static,
{
    move |e| Error::codec(Side::Output, path, what, e)
}

impl ZarrSink {
    /// Create the group and array (idempotent: shards of one job write identical metadata).
    pub fn create(path: &Path, spec: OutSpec) -> Result<ZarrSink> {
        std::fs::create_dir_all(path).map_err(|e| Error::io(Side::Output, path, "cannot create", e))?;
        let store = Arc::new(Store::new(path).map_err(failed(path, "cannot create"))?);
        let array = create_array(&store, path, "/0", &spec, (spec.height, spec.width), spec.chunk as u64)?;
        write_group_metadata(path, &spec, 1, None)?;
        Ok(ZarrSink { array, path: path.to_path_buf(), spec })
    }
}

/// The `(c, y, x)` array `node` of an output store, of `size` (rows, columns) in `k`-px chunks, in
/// `spec`'s element type, gzip-compressed, its metadata written: level 0 and each pyramid level.
pub(super) fn create_array(
    store: &Arc<Store>,
    path: &Path,
    node: &str,
    spec: &OutSpec,
    (h, w): (usize, usize),
    k: u64,
) -> Result<Array<Store>> {
    let (dt, fill) = match spec.out {
        OutType::U8 => (data_type::uint8(), zarrs::array::FillValue::from(0u8)),
        OutType::U16 => (data_type::uint16(), zarrs::array::FillValue::from(0u16)),
        OutType::F16 => (data_type::float16(), zarrs::array::FillValue::from(half::f16::ZERO)),
        OutType::F32 => (data_type::float32(), zarrs::array::FillValue::from(0f32)),
    };
    let c = spec.channels as u64;
    let array = ArrayBuilder::new(vec![c, h as u64, w as u64], vec![c, k, k], dt, fill)
        .bytes_to_bytes_codecs(vec![Arc::new(
            zarrs::array::codec::GzipCodec::new(1).map_err(failed(path, "gzip level"))?,
        )])
        .dimension_names(["c", "y", "x"].into())
        .build(store.clone(), node)
        .map_err(failed(path, "cannot create array"))?;
    array.store_metadata().map_err(failed(path, "cannot write metadata"))?;
    Ok(array)
}

/// Store `values` (C order, as f32) into `subset` of `array`, converted to the element type `out`.
pub(super) fn store_values(
    array: &Array<Store>,
    subset: &zarrs::array::ArraySubset,
    values: &[f32],
    out: OutType,
) -> Result<(), zarrs::array::ArrayError> {
    match out {
        OutType::U8 => array.store_array_subset(subset, values.iter().map(|&v| v as u8).collect::<Vec<u8>>()),
        OutType::U16 => array.store_array_subset(subset, values.iter().map(|&v| v as u16).collect::<Vec<u16>>()),
        OutType::F16 => {
            array.store_array_subset(subset, values.iter().map(|&v| half::f16::from_f32(v)).collect::<Vec<half::f16>>())
        }
        OutType::F32 => array.store_array_subset(subset, values.to_vec()),
    }
}

/// A distinct colour per class for viewers (`image-label`): the background (0) transparent, the
/// others spread around the hue circle by the golden angle.
fn label_colours(classes: usize) -> Vec<serde_json::Value> {
    (0..classes)
        .map(|k| {
            let rgba = if k == 0 {
                [0, 0, 0, 0]
            } else {
                let h = (k as f64 * 137.507_764) % 360.0 / 60.0;
                let x = (1.0 - (h % 2.0 - 1.0).abs()) * 255.0;
                let (r, g, b) = match h as u32 {
                    0 => (255.0, x, 0.0),
                    1 => (x, 255.0, 0.0),
                    2 => (0.0, 255.0, x),
                    3 => (0.0, x, 255.0),
                    4 => (x, 0.0, 255.0),
                    _ => (255.0, 0.0, x),
                };
                [r.round() as u32, g.round() as u32, b.round() as u32, 255]
            };
            serde_json::json!({"label-value": k, "rgba": rgba})
        })
        .collect()
}

/// The OME-NGFF 0.5 group metadata of an output with `levels` levels (`/0`, `/1`, ...: each half
/// the size of the one before): axes, the input's pixel size as each level's scale (micrometres;
/// pixels, with no unit, where the input did not say), and for labels `image-label` with a colour
/// of the `classes` (known once the run is complete).
pub fn write_group_metadata(path: &Path, spec: &OutSpec, levels: usize, classes: Option<usize>) -> Result<()> {
    let store = Arc::new(Store::new(path).map_err(failed(path, "cannot open"))?);
    let unit = spec.pixel_size.map(|_| "micrometer");
    let space = |name: &str| match unit {
        Some(u) => serde_json::json!({"name": name, "type": "space", "unit": u}),
        None => serde_json::json!({"name": name, "type": "space"}),
    };
    let (sy, sx) = spec.pixel_size.map_or((1.0, 1.0), |p| (p.y_um, p.x_um));
    let datasets: Vec<serde_json::Value> = (0..levels)
        .map(|k| {
            let f = (1u64 << k) as f64;
            serde_json::json!({
                "path": k.to_string(),
                "coordinateTransformations": [{"type": "scale", "scale": [1.0, sy * f, sx * f]}]
            })
        })
        .collect();
    let mut ome = serde_json::json!({
        "version": "0.5",
        "multiscales": [{
            "name": "seamless",
            "axes": [{"name": "c", "type": "channel"}, space("y"), space("x")],
            "datasets": datasets,
            "type": if levels > 1 { "2x2 mode for labels, mean for probabilities" } else { "none" }
        }]
    });
    if let (OutType::U8 | OutType::U16, Some(classes)) = (spec.out, classes) {
        ome["image-label"] = serde_json::json!({"version": "0.5", "colors": label_colours(classes)});
    }
    let mut group = GroupBuilder::new().build(store, "/").map_err(failed(path, "cannot create group"))?;
    group.attributes_mut().insert("ome".into(), ome);
    group.store_metadata().map_err(failed(path, "cannot write metadata"))
}

impl Sink for ZarrSink {
    fn write(&mut self, y0: usize, x0: usize, t: &Tensor) -> Result<()> {
        let c = self.spec.channels as u64;
        let subset = zarrs::array::ArraySubset::new_with_ranges(&[
            0..c,
            y0 as u64..(y0 + t.h) as u64,
            x0 as u64..(x0 + t.w) as u64,
        ]);
        // Tensor and array are both C-ordered (c, y, x).
        store_values(&self.array, &subset, &t.data, self.spec.out)
            .map_err(|e| Error::codec(Side::Output, &self.path, "write failed", e))
    }

    fn sync(&mut self) -> Result<serde_json::Value> {
        Ok(serde_json::Value::Null)
    }

    fn finish(self: Box<Self>) -> Result<()> {
        Ok(())
    }
}
