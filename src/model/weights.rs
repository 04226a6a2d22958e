//! Where a model builder gets its tensors: a safetensors file (validated by name, shape and dtype),
//! or a seeded random initialisation for tests, benchmarks and `seamless info` on presets.

use std::collections::{BTreeMap, BTreeSet};

use rayon::prelude::*;
use safetensors::{Dtype, SafeTensors};

/// Values per block when a tensor is decoded and checked in parallel (1 MiB).
const BLOCK: usize = 1 << 18;

/// What a requested tensor is, so a random source can initialise it sensibly.
#[derive(Clone, Copy, Debug)]
pub enum ParamKind {
    ConvWeight { fan_in: usize },
    Bias,
    BnGamma,
    BnBeta,
    BnMean,
    BnVar,
}

pub trait WeightSource {
    /// The tensor `name` with exactly `shape`, as f32. Problems are remembered, not returned, so
    /// that one load reports every missing or mis-shaped tensor at once (see `problems`).
    fn take(&mut self, name: &str, shape: &[usize], kind: ParamKind) -> Vec<f32>;
    /// Everything wrong so far, plus tensors the file has that the model does not use.
    fn problems(&self) -> Vec<String>;
    /// `n` zeros where the architecture has no tensor (a conv without bias).
    fn zeros(&mut self, n: usize) -> Vec<f32> {
        vec![0.0; n]
    }
}

/// Asks for nothing and allocates nothing: counts the values a configuration would need, so that
/// an absurd one (widths of 10^9, 100,000 layers) is refused before anything is built.
#[derive(Default)]
pub struct ShapeCounter {
    pub values: usize,
    pub tensors: usize,
}

impl WeightSource for ShapeCounter {
    fn take(&mut self, _name: &str, shape: &[usize], _kind: ParamKind) -> Vec<f32> {
        let n = shape.iter().fold(1usize, |a, &d| a.saturating_mul(d));
        self.values = self.values.saturating_add(n);
        self.tensors += 1;
        Vec::new()
    }
    fn problems(&self) -> Vec<String> {
        Vec::new()
    }
    fn zeros(&mut self, n: usize) -> Vec<f32> {
        self.values = self.values.saturating_add(n);
        Vec::new()
    }
}

/// Tensors of a safetensors file, checked against what the builder asks for.
pub struct SafetensorsSource<'a> {
    st: SafeTensors<'a>,
    /// The file the tensors are read from, and where its map begins (see [`Self::reading`]).
    file: Option<(&'a std::fs::File, usize)>,
    used: BTreeSet<String>,
    problems: Vec<String>,
}

impl<'a> SafetensorsSource<'a> {
    pub fn new(st: SafeTensors<'a>) -> Self {
        SafetensorsSource { st, file: None, used: BTreeSet::new(), problems: Vec::new() }
    }

    /// Read the f32 values from `file`, whose memory map `map` the tensors were found in, instead
    /// of copying them out of the map: the map is then only touched for the header.
    pub fn reading(self, file: &'a std::fs::File, map: &'a [u8]) -> Self {
        SafetensorsSource { file: Some((file, map.as_ptr() as usize)), ..self }
    }
}

impl WeightSource for SafetensorsSource<'_> {
    fn take(&mut self, name: &str, shape: &[usize], kind: ParamKind) -> Vec<f32> {
        let (values, finite) = self.decode(name, shape);
        // Such values load fine and compute NaN (or a NaN square root) for every pixel. The
        // branch-free scan first: it vectorises, and a model has no such value.
        let finite = finite.unwrap_or_else(|| values.par_chunks(BLOCK).all(all_finite));
        let bad = if finite { None } else { values.iter().position(|v| !v.is_finite()) };
        if let Some(i) = bad {
            self.problems.push(format!("tensor '{name}' holds NaN or infinity (element {i}: {})", values[i]));
        } else if let (ParamKind::BnVar, Some(i)) = (kind, values.iter().position(|&v| v < 0.0)) {
            self.problems.push(format!("tensor '{name}' (a variance) is negative at element {i}: {}", values[i]));
        }
        values
    }

    fn problems(&self) -> Vec<String> {
        let mut p = self.problems.clone();
        let mut extra: Vec<&str> = self.st.names().into_iter().filter(|n| !self.used.contains(*n)).collect();
        extra.sort_unstable();
        for name in extra {
            p.push(format!("unexpected tensor '{name}' (not part of this architecture/config)"));
        }
        p
    }
}

/// Branch-free, so that it vectorises: a model has no such value.
fn all_finite(values: &[f32]) -> bool {
    values.iter().fold(true, |ok, v| ok & v.is_finite())
}

impl SafetensorsSource<'_> {
    /// The tensor's values as f32 (or none, with a problem noted), and whether they are all finite
    /// where that was seen while decoding them.
    fn decode(&mut self, name: &str, shape: &[usize]) -> (Vec<f32>, Option<bool>) {
        self.used.insert(name.to_string());
        let view = match self.st.tensor(name) {
            Ok(v) => v,
            Err(_) => {
                self.problems.push(format!("missing tensor '{name}' (expected shape {shape:?})"));
                return (Vec::new(), None); // the load fails; nothing of the configuration's size is allocated
            }
        };
        if view.shape() != shape {
            self.problems.push(format!("tensor '{name}' has shape {:?}, expected {shape:?}", view.shape()));
            return (Vec::new(), None);
        }
        let bytes = view.data();
        match view.dtype() {
            // Little-endian on disk per the safetensors spec, at any alignment in the file: read
            // (or copied from memory) as bytes into aligned values.
            Dtype::F32 => {
                let mut v = vec![0f32; bytes.len() / 4];
                crate::huge_pages::advise(&mut v);
                let file = self.file.map(|(f, base)| (f, bytes.as_ptr() as usize - base));
                // In blocks on every worker: the copy faults in fresh pages as it goes, and each
                // block is checked while it is in cache (not in a second pass over all of them).
                let read =
                    v.par_chunks_mut(BLOCK).zip(bytes.par_chunks(BLOCK * 4)).enumerate().map(|(i, (dst, src))| {
                        let bytes = bytemuck::cast_slice_mut::<f32, u8>(dst);
                        match file {
                            #[cfg(unix)]
                            Some((f, at)) => {
                                std::os::unix::fs::FileExt::read_exact_at(f, bytes, (at + i * BLOCK * 4) as u64)?
                            }
                            _ => bytes.copy_from_slice(src),
                        }
                        if cfg!(target_endian = "big") {
                            dst.iter_mut().for_each(|x| *x = f32::from_bits(u32::from_le(x.to_bits())));
                        }
                        std::io::Result::Ok(all_finite(dst))
                    });
                match read.try_reduce(|| true, |a, b| Ok(a & b)) {
                    Ok(finite) => (v, Some(finite)),
                    Err(e) => {
                        self.problems.push(format!("tensor '{name}' could not be read: {e}"));
                        (Vec::new(), None)
                    }
                }
            }
            Dtype::F16 => {
                (bytes.chunks_exact(2).map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()).collect(), None)
            }
            other => {
                self.problems.push(format!("tensor '{name}' has dtype {other:?}; only F32 and F16 are supported"));
                (Vec::new(), None)
            }
        }
    }
}

/// SplitMix64: tiny, fast and stable across crate versions, so seeded models and synthetic images
/// stay the same bytes forever.
#[derive(Clone, Debug)]
pub struct SplitMix64(pub u64);

impl SplitMix64 {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    pub fn normal(&mut self) -> f64 {
        let u1 = self.uniform().max(1e-300);
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }
}

/// He-normal convolutions and mildly perturbed batch norms: activations keep a sane scale through
/// deep networks, so random models exercise every op with non-trivial values.
pub struct RandomSource {
    rng: SplitMix64,
    /// Every tensor handed out, for writing the model to a file.
    pub recorded: BTreeMap<String, (Vec<usize>, Vec<f32>)>,
}

impl RandomSource {
    pub fn new(seed: u64) -> Self {
        RandomSource { rng: SplitMix64(seed ^ 0x5EA4_1E55), recorded: BTreeMap::new() }
    }
}

impl WeightSource for RandomSource {
    fn take(&mut self, name: &str, shape: &[usize], kind: ParamKind) -> Vec<f32> {
        let n: usize = shape.iter().product();
        let r = &mut self.rng;
        let data: Vec<f32> = (0..n)
            .map(|_| match kind {
                ParamKind::ConvWeight { fan_in } => (r.normal() * (2.0 / fan_in as f64).sqrt()) as f32,
                ParamKind::Bias => (r.normal() * 0.05) as f32,
                ParamKind::BnGamma => (0.5 + r.uniform()) as f32,
                ParamKind::BnBeta => (r.normal() * 0.1) as f32,
                ParamKind::BnMean => (r.normal() * 0.1) as f32,
                ParamKind::BnVar => (0.5 + r.uniform()) as f32,
            })
            .collect();
        self.recorded.insert(name.to_string(), (shape.to_vec(), data.clone()));
        data
    }

    fn problems(&self) -> Vec<String> {
        Vec::new()
    }
}
