//! The model file: safetensors (memory-mapped) with the architecture in `__metadata__`. See
//! docs/model-format.md.

use std::collections::HashMap;
use std::fs::File;
use std::path::Path;

use safetensors::{Dtype, SafeTensors};

use super::Model;
use super::config::ModelConfig;
use super::weights::{RandomSource, SafetensorsSource};
use crate::error::{Error, Result, Side};
use crate::output::AtomicFile;

pub const FORMAT: &str = "seamless-model";
pub const FORMAT_VERSION: &str = "1";

pub fn load(path: &Path) -> Result<Model> {
    let shown = path.display().to_string();
    let err = |msg: String| Error::Model { path: shown.clone(), msg };
    // Checked before opening: opening a FIFO blocks until a writer comes, maybe forever.
    match std::fs::metadata(path) {
        Ok(m) if m.is_dir() => return Err(err("is a directory, not a model file".into())),
        Ok(m) if !m.is_file() => {
            return Err(err("is not a regular file (a FIFO, socket or device?); give a .safetensors file".into()));
        }
        _ => {}
    }
    let file = File::open(path).map_err(|e| Error::io(Side::Model, path, "cannot open", e))?;
    // SAFETY: the map is read-only and lives only for this function; a file truncated by another
    // process while its header is parsed could fault, which is the documented risk of any mmap
    // reader (the values are read with `pread`, which returns an error instead).
    // Not populated: only the header is read through the map. The values are read straight into
    // their buffers (see `SafetensorsSource`), which spares mapping 30,000 pages (10 ms for
    // U-Net-64's 124 MB) before a single value is copied, and unmapping them after.
    let map =
        unsafe { memmap2::MmapOptions::new().map(&file) }.map_err(|e| Error::io(Side::Model, path, "cannot map", e))?;
    load_from(&map, Some(&file), &shown)
}

/// A model from the bytes of a model file (memory-mapped, or embedded in the binary).
pub fn load_bytes(map: &[u8], shown: &str) -> Result<Model> {
    load_from(map, None, shown)
}

/// `map` is the whole file; where `file` is given, it is that file, and the values are read from it.
fn load_from(map: &[u8], file: Option<&File>, shown: &str) -> Result<Model> {
    let err = |msg: String| Error::Model { path: shown.to_string(), msg };
    let invalid = |e: safetensors::SafeTensorError| {
        Error::codec(Side::Model, shown, "not a valid safetensors file (truncated or corrupt?)", e)
    };
    let (_, meta) = SafeTensors::read_metadata(map).map_err(invalid)?;
    let st = SafeTensors::deserialize(map).map_err(invalid)?;
    let md: HashMap<String, String> = meta.metadata().clone().unwrap_or_default();
    let get = |k: &str| {
        md.get(k).ok_or_else(|| {
            err(format!(
                "metadata has no '{k}' key; is this a seamless model? (docs/model-format.md; \
                 tools/export_torch.py converts PyTorch weights)"
            ))
        })
    };
    if get("format")? != FORMAT {
        return Err(err(format!("metadata 'format' is {:?}, expected {FORMAT:?}", md["format"])));
    }
    if get("format_version")? != FORMAT_VERSION {
        return Err(err(format!(
            "format_version {:?} is not supported by this seamless (it reads version {FORMAT_VERSION})",
            md["format_version"]
        )));
    }
    let config = ModelConfig::parse(get("architecture")?, get("config")?).map_err(|e| match e {
        Error::Config(m) => err(m),
        Error::ConfigJson { what, source } => Error::codec(Side::Model, shown, what, source),
        other => other,
    })?;
    let mut src = SafetensorsSource::new(st);
    if let Some(file) = file {
        src = src.reading(file, map);
    }
    let mut model = Model::build(config, &mut src, shown)?;
    model.description = md.get("description").cloned();
    Ok(model)
}

/// Write a model file with seeded random weights (for tests, benchmarks and trying the tool on an
/// architecture without training it). Written atomically.
pub fn save_random(config: &ModelConfig, seed: u64, f16: bool, path: &Path, description: &str) -> Result<()> {
    let mut src = RandomSource::new(seed);
    Model::build(config.clone(), &mut src, "random")?;
    let dtype = if f16 { Dtype::F16 } else { Dtype::F32 };
    let encoded: Vec<(String, Vec<usize>, Vec<u8>)> = src
        .recorded
        .into_iter()
        .map(|(name, (shape, data))| {
            let bytes = if f16 {
                data.iter().flat_map(|&v| half::f16::from_f32(v).to_le_bytes()).collect()
            } else {
                data.iter().flat_map(|&v| v.to_le_bytes()).collect()
            };
            (name, shape, bytes)
        })
        .collect();
    let views = encoded.iter().map(|(name, shape, bytes)| {
        (name.clone(), safetensors::tensor::TensorView::new(dtype, shape.clone(), bytes).expect("sizes match"))
    });
    let meta = HashMap::from([
        ("format".to_string(), FORMAT.to_string()),
        ("format_version".to_string(), FORMAT_VERSION.to_string()),
        ("architecture".to_string(), config.architecture().to_string()),
        ("config".to_string(), config.config_json()),
        ("description".to_string(), description.to_string()),
    ]);
    let bytes =
        safetensors::serialize(views, Some(meta)).map_err(|e| Error::codec(Side::Output, path, "serialising", e))?;
    let mut out = AtomicFile::create(path)?;
    out.write_all(&bytes)?;
    out.commit()
}
