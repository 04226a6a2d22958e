//! Architecture configurations as stored in a model file's metadata, their validation (including
//! refusing what cannot be tiled exactly) and the named presets.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

fn default_true() -> bool {
    true
}
fn default_eps() -> f64 {
    1e-5
}
fn default_up_mode() -> String {
    "transpose".into()
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UnetConfig {
    pub in_channels: usize,
    pub classes: usize,
    pub base_filters: usize,
    pub depth: usize,
    #[serde(default = "default_true")]
    pub batch_norm: bool,
    #[serde(default = "default_up_mode")]
    pub up_mode: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub norm: Option<String>,
    #[serde(default = "default_eps")]
    pub bn_eps: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FcDenseNetConfig {
    pub in_channels: usize,
    pub classes: usize,
    pub first_conv_filters: usize,
    pub growth_rate: usize,
    pub down_blocks: Vec<usize>,
    pub bottleneck_layers: usize,
    pub up_blocks: Vec<usize>,
    #[serde(default = "default_eps")]
    pub bn_eps: f64,
}

#[derive(Clone, Debug, PartialEq)]
pub enum ModelConfig {
    Unet(UnetConfig),
    FcDenseNet(FcDenseNetConfig),
}

/// The largest channel count or class count a configuration may name.
const MAX_WIDTH: usize = 1 << 20;
/// The most layers in one dense block.
const MAX_BLOCK_LAYERS: usize = 1024;

impl ModelConfig {
    pub fn architecture(&self) -> &'static str {
        match self {
            ModelConfig::Unet(_) => "unet",
            ModelConfig::FcDenseNet(_) => "fcdensenet",
        }
    }

    pub fn config_json(&self) -> String {
        match self {
            ModelConfig::Unet(c) => serde_json::to_string(c),
            ModelConfig::FcDenseNet(c) => serde_json::to_string(c),
        }
        .expect("configs always serialise")
    }

    pub fn in_channels(&self) -> usize {
        match self {
            ModelConfig::Unet(c) => c.in_channels,
            ModelConfig::FcDenseNet(c) => c.in_channels,
        }
    }

    pub fn classes(&self) -> usize {
        match self {
            ModelConfig::Unet(c) => c.classes,
            ModelConfig::FcDenseNet(c) => c.classes,
        }
    }

    pub fn parse(architecture: &str, json: &str) -> Result<ModelConfig> {
        let bad = |source| Error::ConfigJson { what: format!("{architecture} config {json:?}"), source };
        let cfg = match architecture {
            "unet" => ModelConfig::Unet(serde_json::from_str(json).map_err(bad)?),
            "fcdensenet" => ModelConfig::FcDenseNet(serde_json::from_str(json).map_err(bad)?),
            other => {
                return Err(Error::Config(format!("unknown architecture '{other}' (expected 'unet' or 'fcdensenet')")));
            }
        };
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn validate(&self) -> Result<()> {
        // Bounded above too, so that no size computed from them can overflow (a width of 2^62
        // panicked); the model's total size is checked by a dry run (`Model::build`).
        let positive = |what: &str, v: usize| match v {
            0 => Err(Error::Config(format!("{what} must be at least 1"))),
            v if v > MAX_WIDTH => Err(Error::Config(format!("{what} is {v}; at most {MAX_WIDTH}"))),
            _ => Ok(()),
        };
        // Labels are written as 16-bit integers at most: more classes would be capped, silently.
        if self.classes() > 65536 {
            return Err(Error::Config(format!(
                "classes is {}; at most 65536 are supported (labels are written as 16-bit integers)",
                self.classes()
            )));
        }
        match self {
            ModelConfig::Unet(c) => {
                positive("in_channels", c.in_channels)?;
                positive("classes", c.classes)?;
                positive("base_filters", c.base_filters)?;
                if !(1..=8).contains(&c.depth) {
                    return Err(Error::Config(format!("depth must be 1..=8, got {}", c.depth)));
                }
                match c.up_mode.as_str() {
                    "transpose" | "bilinear" | "nearest" => {}
                    "bilinear_align_corners" => {
                        return Err(Error::NotTileable(
                            "up_mode 'bilinear_align_corners' (align_corners=True) samples at positions that \
                             depend on the whole feature map's size, so no tile can reproduce the whole-image \
                             result; re-export the model with align_corners=False ('bilinear')"
                                .into(),
                        ));
                    }
                    other => {
                        return Err(Error::Config(format!(
                            "unknown up_mode '{other}' (expected transpose, bilinear or nearest)"
                        )));
                    }
                }
                match c.norm.as_deref() {
                    None => {}
                    Some("batch") if c.batch_norm => {}
                    Some("none") if !c.batch_norm => {}
                    Some(n @ ("instance" | "group" | "layer")) => {
                        return Err(Error::NotTileable(format!(
                            "'{n}' normalisation computes statistics over the whole spatial extent, which \
                             differ per tile; only batch norm (inference form) or none can be tiled exactly"
                        )));
                    }
                    Some(n) => {
                        return Err(Error::Config(format!(
                            "norm '{n}' disagrees with batch_norm={} or is unknown",
                            c.batch_norm
                        )));
                    }
                }
                if c.bn_eps.is_nan() || c.bn_eps <= 0.0 {
                    return Err(Error::Config("bn_eps must be positive".into()));
                }
            }
            ModelConfig::FcDenseNet(c) => {
                positive("in_channels", c.in_channels)?;
                positive("classes", c.classes)?;
                positive("first_conv_filters", c.first_conv_filters)?;
                positive("growth_rate", c.growth_rate)?;
                if c.down_blocks.is_empty() || c.down_blocks.len() > 8 {
                    return Err(Error::Config("down_blocks must have 1..=8 entries".into()));
                }
                if c.up_blocks.len() != c.down_blocks.len() {
                    return Err(Error::Config(format!(
                        "up_blocks has {} entries, down_blocks {}: they must match",
                        c.up_blocks.len(),
                        c.down_blocks.len()
                    )));
                }
                positive("bottleneck_layers", c.bottleneck_layers)?;
                // A dense layer concatenates every earlier one: graph size grows with the square
                // of a block's layers (100,000 layers took 4 GiB before any check could run).
                if c.down_blocks.iter().chain(&c.up_blocks).chain([&c.bottleneck_layers]).any(|&n| n > MAX_BLOCK_LAYERS)
                {
                    return Err(Error::Config(format!(
                        "a dense block has more than {MAX_BLOCK_LAYERS} layers (FC-DenseNet-103's largest has 15)"
                    )));
                }
                if c.up_blocks.contains(&0) {
                    return Err(Error::Config("every up block needs at least one layer".into()));
                }
                if c.bn_eps.is_nan() || c.bn_eps <= 0.0 {
                    return Err(Error::Config("bn_eps must be positive".into()));
                }
            }
        }
        Ok(())
    }

    /// Total down-sampling factor A: tile origins, halos and padded sizes are multiples of it.
    pub fn align(&self) -> usize {
        match self {
            ModelConfig::Unet(c) => 1 << c.depth,
            ModelConfig::FcDenseNet(c) => 1 << c.down_blocks.len(),
        }
    }

    /// Named configurations: `unet-64` (the classic U-Net: 64 filters, depth 4), `unet-F[-dD]`,
    /// `fcdensenet-56`, `fcdensenet-67`, `fcdensenet-103`.
    pub fn preset(name: &str) -> Option<ModelConfig> {
        if let Some(rest) = name.strip_prefix("unet-") {
            let (f, d) = match rest.split_once("-d") {
                Some((f, d)) => (f.parse().ok()?, d.parse().ok()?),
                None => (rest.parse().ok()?, 4),
            };
            return Some(ModelConfig::Unet(UnetConfig {
                in_channels: 3,
                classes: 2,
                base_filters: f,
                depth: d,
                batch_norm: true,
                up_mode: default_up_mode(),
                norm: None,
                bn_eps: 1e-5,
            }));
        }
        let (growth, layers, bottleneck): (usize, Vec<usize>, usize) = match name {
            "fcdensenet-56" => (12, vec![4; 5], 4),
            "fcdensenet-67" => (16, vec![5; 5], 5),
            "fcdensenet-103" => (16, vec![4, 5, 7, 10, 12], 15),
            _ => return None,
        };
        let mut up = layers.clone();
        up.reverse();
        Some(ModelConfig::FcDenseNet(FcDenseNetConfig {
            in_channels: 3,
            classes: 12,
            first_conv_filters: 48,
            growth_rate: growth,
            down_blocks: layers,
            bottleneck_layers: bottleneck,
            up_blocks: up,
            bn_eps: 1e-5,
        }))
    }
}
