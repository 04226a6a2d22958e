//! `seamless info`: what a model is and what tiling it needs.

use seamless::Model;
use seamless::error::Result;

#[derive(clap::Args)]
pub struct InfoArgs {
    /// A model file (.safetensors) or a preset: unet-64, unet-F[-dD], fcdensenet-56/67/103.
    model: String,
    /// Print machine-readable JSON instead of the table.
    #[arg(long)]
    json: bool,
    /// List every layer.
    #[arg(long)]
    layers: bool,
}

#[derive(serde::Serialize)]
struct Summary<'a> {
    origin: &'a str,
    architecture: &'a str,
    config: serde_json::Value,
    description: Option<&'a str>,
    parameters: usize,
    conv_layers: usize,
    flop_per_pixel: f64,
    receptive_field: usize,
    reach_before: usize,
    reach_after: usize,
    halo_need_before: usize,
    halo_need_after: usize,
    downsampling_factor: usize,
    exact_halo: usize,
    layers: Vec<Layer>,
}

#[derive(serde::Serialize)]
struct Layer {
    name: String,
    op: &'static str,
    out_channels: usize,
    params: usize,
}

pub fn run(a: InfoArgs) -> Result<()> {
    let m = Model::open(&a.model)?;
    let probe = m.align() * 4;
    let layers: Vec<Layer> = m
        .source_layers
        .iter()
        .map(|l| Layer { name: l.name.clone(), op: l.op, out_channels: l.out_channels, params: l.params })
        .collect();
    let s = Summary {
        origin: &m.origin,
        architecture: m.config.architecture(),
        config: serde_json::from_str(&m.config.config_json()).expect("valid json"),
        description: m.description.as_deref(),
        parameters: m.params(),
        conv_layers: m.source_layers.iter().filter(|l| matches!(l.op, "conv2d" | "conv_transpose2d")).count(),
        flop_per_pixel: m.graph.flops_per_pixel(probe)?,
        receptive_field: m.rf.receptive_field,
        reach_before: m.rf.reach_before,
        reach_after: m.rf.reach_after,
        halo_need_before: m.rf.need_before,
        halo_need_after: m.rf.need_after,
        downsampling_factor: m.align(),
        exact_halo: m.exact_halo(),
        layers,
    };
    if a.json {
        println!("{}", serde_json::to_string_pretty(&s).expect("serialisable"));
        return Ok(());
    }
    if a.layers {
        println!("{:<48} {:<20} {:>8} {:>10}", "layer", "op", "out ch", "params");
        for l in &s.layers {
            println!("{:<48} {:<20} {:>8} {:>10}", l.name, l.op, l.out_channels, l.params);
        }
        println!();
    }
    println!("model               {}", s.origin);
    if let Some(d) = s.description {
        println!("description         {d}");
    }
    println!("architecture        {} {}", s.architecture, m.config.config_json());
    println!("parameters          {} ({:.2} M)", s.parameters, s.parameters as f64 / 1e6);
    println!("conv layers         {}", s.conv_layers);
    println!("FLOP per pixel      {:.0} ({:.3} M)", s.flop_per_pixel, s.flop_per_pixel / 1e6);
    println!(
        "receptive field     {} px (reaches {} before, {} after an output pixel)",
        s.receptive_field, s.reach_before, s.reach_after
    );
    println!("down-sampling A     {}", s.downsampling_factor);
    println!(
        "halo needed         {} px before, {} px after a tile (reach minus the pixel's depth in an A-aligned tile)",
        s.halo_need_before, s.halo_need_after
    );
    println!("exact halo          {} px (the smallest multiple of A covering both)", s.exact_halo);
    Ok(())
}
