//! Models: configuration, builders for the two families, weight sources and the model file.

mod builder;
pub mod config;
pub mod fcdensenet;
pub mod file;
pub mod unet;
pub mod weights;

pub use config::{FcDenseNetConfig, ModelConfig, UnetConfig};

use crate::error::{Error, Result};
use crate::graph::Graph;
use crate::receptive_field::ReceptiveField;
use weights::{RandomSource, WeightSource};

/// A network ready to run: its configuration, the optimised graph, and what tiling needs to know.
#[derive(Clone, Debug)]
pub struct Model {
    pub config: ModelConfig,
    /// The graph as the model file describes it (batch norms and dropouts still separate).
    pub source_graph: Graph,
    /// What the executor runs.
    pub graph: Graph,
    pub rf: ReceptiveField,
    /// Trainable parameters, counted as PyTorch does (running statistics excluded).
    pub trainable: usize,
    /// Where the model came from: a file path or a preset name.
    pub origin: String,
    pub description: Option<String>,
}

impl Model {
    pub fn build(config: ModelConfig, src: &mut dyn WeightSource, origin: &str) -> Result<Model> {
        config.validate()?;
        let (source_graph, trainable) = match &config {
            ModelConfig::Unet(c) => unet::build(c, src),
            ModelConfig::FcDenseNet(c) => fcdensenet::build(c, src),
        };
        let problems = src.problems();
        if !problems.is_empty() {
            return Err(Error::Model {
                path: origin.to_string(),
                msg: format!("{} problem(s) with the weights:\n  {}", problems.len(), problems.join("\n  ")),
            });
        }
        let mut graph = source_graph.optimized();
        graph.assign_conv_algos(config.align(), crate::cpu::winograd::MIN_CHANNELS);
        let rf = ReceptiveField::analyze(&graph, config.align())?;
        Ok(Model { config, source_graph, graph, rf, trainable, origin: origin.to_string(), description: None })
    }

    /// A model with seeded random weights (tests, benchmarks, `info` on presets).
    pub fn random(config: ModelConfig, seed: u64) -> Result<Model> {
        let origin = format!("random {} (seed {seed})", config.architecture());
        Model::build(config, &mut RandomSource::new(seed), &origin)
    }

    /// A model file path, or a preset name (with seeded random weights).
    pub fn open(spec: &str) -> Result<Model> {
        if let Some(cfg) = ModelConfig::preset(spec)
            && !std::path::Path::new(spec).exists()
        {
            let mut m = Model::random(cfg, 0)?;
            m.origin = format!("preset {spec} (random weights)");
            return Ok(m);
        }
        file::load(std::path::Path::new(spec))
    }

    pub fn align(&self) -> usize {
        self.config.align()
    }

    pub fn in_channels(&self) -> usize {
        self.config.in_channels()
    }

    pub fn classes(&self) -> usize {
        self.config.classes()
    }

    pub fn exact_halo(&self) -> usize {
        self.rf.exact_halo
    }

    pub fn params(&self) -> usize {
        self.trainable
    }
}
