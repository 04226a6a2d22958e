//! Shared helpers for the integration tests: seeded random models and images.
#![allow(dead_code)]

use seamless::backend::Backend;
use seamless::model::weights::SplitMix64;
use seamless::model::{FcDenseNetConfig, ModelConfig, UnetConfig};
use seamless::pipeline::{PadMode, Tiling, infer_on};
use seamless::{Model, Tensor};

/// Uniform in `lo..=hi`.
pub fn pick(rng: &mut SplitMix64, lo: usize, hi: usize) -> usize {
    lo + (rng.next_u64() % (hi - lo + 1) as u64) as usize
}

/// One random tiling of one image for the exactness tests: odd and even sizes, from below one
/// tile to several tiles plus halos (`slack` more), tiles of 1-4 A, the exact halo or one A more,
/// zero padding mostly.
pub struct TilingCase {
    pub h: usize,
    pub w: usize,
    pub tile: (usize, usize),
    pub halo: usize,
    pub pad: PadMode,
}

impl TilingCase {
    pub fn random(rng: &mut SplitMix64, model: &Model, slack: usize) -> TilingCase {
        let (a, halo0) = (model.align(), model.exact_halo());
        let h = pick(rng, 1, 3 * a + halo0 + slack);
        let w = pick(rng, 1, 3 * a + halo0 + slack);
        let tile = (a * pick(rng, 1, 4), a * pick(rng, 1, 4));
        let halo = halo0 + a * pick(rng, 0, 1);
        let pad = if rng.uniform() < 0.8 { PadMode::Zero } else { PadMode::Reflect };
        TilingCase { h, w, tile, halo, pad }
    }

    /// The case in words, for assertion messages.
    pub fn describe(&self, model: &Model) -> String {
        format!(
            "{} A={} image {}x{} tile {}x{} halo {} (exact {}) {:?}",
            model.config.config_json(),
            model.align(),
            self.h,
            self.w,
            self.tile.0,
            self.tile.1,
            self.halo,
            model.exact_halo(),
            self.pad
        )
    }

    /// `img` whole and tiled as this case says, on `backend`.
    pub fn run(&self, backend: &dyn Backend, model: &Model, img: &Tensor) -> seamless::error::Result<(Tensor, Tensor)> {
        let whole = infer_on(backend, model, img, self.pad, Tiling::Whole, &mut |_| {}, None)?;
        let tiling = Tiling::Tiles { tile: self.tile, halo: self.halo };
        let tiled = infer_on(backend, model, img, self.pad, tiling, &mut |_| {}, None)?;
        Ok((whole, tiled))
    }
}

pub fn unet(in_channels: usize, classes: usize, base: usize, depth: usize, bn: bool, up: &str) -> ModelConfig {
    ModelConfig::Unet(UnetConfig {
        in_channels,
        classes,
        base_filters: base,
        depth,
        batch_norm: bn,
        up_mode: up.into(),
        norm: None,
        bn_eps: 1e-5,
    })
}

pub fn densenet(
    in_channels: usize,
    classes: usize,
    first: usize,
    growth: usize,
    down: &[usize],
    bottleneck: usize,
) -> ModelConfig {
    let mut up = down.to_vec();
    up.reverse();
    ModelConfig::FcDenseNet(FcDenseNetConfig {
        in_channels,
        classes,
        first_conv_filters: first,
        growth_rate: growth,
        down_blocks: down.to_vec(),
        bottleneck_layers: bottleneck,
        up_blocks: up,
        bn_eps: 1e-5,
    })
}

/// Standard-normal pixels: what a globally z-scored image looks like.
pub fn random_image(rng: &mut SplitMix64, c: usize, h: usize, w: usize) -> Tensor {
    Tensor::from_vec(c, h, w, (0..c * h * w).map(|_| rng.normal() as f32).collect())
}

pub fn random_model(config: ModelConfig, seed: u64) -> Model {
    Model::random(config, seed).expect("valid test model")
}

/// The model with every 3 x 3 convolution the alignment allows on Winograd F(2x2, 3x3), whatever
/// its channel count (test models are too narrow for the default minimum).
pub fn winograd_everywhere(mut model: Model) -> Model {
    let a = model.align();
    model.graph.assign_conv_algos(a, 1);
    model
}

pub fn bits(t: &Tensor) -> Vec<u32> {
    t.data.iter().map(|v| v.to_bits()).collect()
}

/// Index and values of the first element whose bits differ.
pub fn first_difference(a: &Tensor, b: &Tensor) -> Option<(usize, f32, f32)> {
    assert_eq!((a.c, a.h, a.w), (b.c, b.h, b.w), "shapes differ");
    a.data.iter().zip(&b.data).position(|(x, y)| x.to_bits() != y.to_bits()).map(|i| (i, a.data[i], b.data[i]))
}

pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    a.data.iter().zip(&b.data).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

/// One tensor of a safetensors file: name, dtype, shape, little-endian bytes.
pub type RawTensor = (String, safetensors::Dtype, Vec<usize>, Vec<u8>);

/// A safetensors file from raw parts, for building broken model files on purpose.
pub fn write_safetensors(path: &std::path::Path, tensors: &[RawTensor], meta: &[(&str, &str)]) {
    let views =
        tensors.iter().map(|(n, d, s, b)| (n.clone(), safetensors::tensor::TensorView::new(*d, s.clone(), b).unwrap()));
    let meta = meta.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    std::fs::write(path, safetensors::serialize(views, Some(meta)).unwrap()).unwrap();
}

/// The tensors and metadata of a valid model file, to be broken by a test.
pub fn model_parts(path: &std::path::Path) -> (Vec<RawTensor>, Vec<(String, String)>) {
    let bytes = std::fs::read(path).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut tensors: Vec<_> =
        st.tensors().into_iter().map(|(n, v)| (n, v.dtype(), v.shape().to_vec(), v.data().to_vec())).collect();
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    let mut meta: Vec<(String, String)> = meta.metadata().clone().unwrap().into_iter().collect();
    meta.sort();
    (tensors, meta)
}
pub mod emulator;

/// A journal header or shard record of this build (`record`) as other builds would have written
/// it: with the next numerics revision, and with none (a build before revisions were recorded),
/// each with what a refusal to continue it must say.
pub fn records_of_other_builds(record: &serde_json::Value) -> Vec<(serde_json::Value, String)> {
    assert_eq!(record["numerics"], seamless::numerics::REVISION, "{record}");
    let next = seamless::numerics::REVISION + 1;
    let mut newer = record.clone();
    newer["numerics"] = next.into();
    let mut older = record.clone();
    older.as_object_mut().expect("a JSON object").remove("numerics");
    vec![(newer, format!("a seamless of numerics revision {next}")), (older, "did not record".into())]
}
