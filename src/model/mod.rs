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

/// The most parameter values (and tensors) a model may have: 2^31 values (8 GiB as f32), seventy
/// times the largest reference model (U-Net-64, 31 million).
pub const MAX_PARAMETERS: usize = 1 << 31;
pub const MAX_TENSORS: usize = 1 << 20;

/// A network ready to run: its configuration, the optimised graph, and what tiling needs to know.
#[derive(Clone, Debug)]
pub struct Model {
    pub config: ModelConfig,
    /// The layers as the model file describes them (batch norms and dropouts still separate),
    /// without their weights: the executed graph holds the only copy, folded (see
    /// [`source_graph`] for the unfolded graph itself).
    pub source_layers: Vec<SourceLayer>,
    /// What the executor runs.
    pub graph: Graph,
    pub rf: ReceptiveField,
    /// Trainable parameters, counted as PyTorch does (running statistics excluded).
    pub trainable: usize,
    /// Where the model came from: a file path or a preset name.
    pub origin: String,
    pub description: Option<String>,
}

/// One node of the graph a model file describes: what `seamless info --layers` lists.
#[derive(Clone, Debug)]
pub struct SourceLayer {
    pub name: String,
    pub op: &'static str,
    pub out_channels: usize,
    pub params: usize,
}

/// The graph `config` describes, with its weights from `src`, before batch-norm folding and
/// fusion, and its number of trainable parameters. Every missing or mis-shaped tensor is reported
/// at once; an absurd configuration is refused before anything of its size is allocated.
pub fn source_graph(config: &ModelConfig, src: &mut dyn WeightSource, origin: &str) -> Result<(Graph, usize)> {
    config.validate()?;
    // A dry run first: an absurd configuration (in a 300-byte file, or a preset name) is
    // refused by its size before anything of that size is allocated.
    let mut count = weights::ShapeCounter::default();
    match config {
        ModelConfig::Unet(c) => unet::build(c, &mut count),
        ModelConfig::FcDenseNet(c) => fcdensenet::build(c, &mut count),
    };
    if count.values > MAX_PARAMETERS || count.tensors > MAX_TENSORS {
        return Err(Error::Config(format!(
            "this configuration needs {} values in {} tensors; at most {MAX_PARAMETERS} values in {MAX_TENSORS} \
                 tensors are supported (the largest reference models have about 31 million)",
            count.values, count.tensors
        )));
    }
    let (source_graph, trainable) = match config {
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
    Ok((source_graph, trainable))
}

impl Model {
    pub fn build(config: ModelConfig, src: &mut dyn WeightSource, origin: &str) -> Result<Model> {
        let t = std::time::Instant::now();
        let (source_graph, trainable) = source_graph(&config, src, origin)?;
        crate::profile::step("  reading the weights", t);
        let probe = config.align() * 4;
        let shapes = source_graph.shapes(probe, probe)?;
        let source_layers = source_graph
            .nodes
            .iter()
            .zip(&shapes)
            .map(|(n, s)| SourceLayer {
                name: n.name.clone(),
                op: n.op.kind(),
                out_channels: s.c,
                params: n.op.params(),
            })
            .collect();
        // Folding moves the weights instead of copying them: one copy of U-Net-64's 124 MB, not two.
        let t = std::time::Instant::now();
        let mut graph = source_graph.optimized();
        crate::profile::step("  folding batch norm", t);
        graph.assign_conv_algos(config.align(), crate::graph::WINOGRAD_MIN_CHANNELS);
        let rf = ReceptiveField::analyze(&graph, config.align())?;
        Ok(Model { config, source_layers, graph, rf, trainable, origin: origin.to_string(), description: None })
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
