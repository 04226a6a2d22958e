//! `seamless erf`: the empirical effective receptive field next to the theoretical one, and the
//! halo your labels actually need.

use std::path::PathBuf;

use seamless::Model;
use seamless::cpu::CpuBackend;
use seamless::erf::{self, Erf, ErfSpec};
use seamless::error::{Error, Result};
use seamless::pipeline::PadMode;
use seamless::sweep::{self, LabelHalo};
use seamless::tile_grid::round_up;

use super::infer::parse_tile_fixed as parse_tile;
use super::sweep::{ImageArgs, default_tile, load_image, print_table, with_progress, write_text};

#[derive(clap::Args)]
#[command(after_help = "Examples:
  seamless erf --model unet-64 --noise --heatmap erf.png --plot profile.png
  seamless erf --model models/unet-demo.safetensors --input cells.png --tol 0 --tile 64

The map is measured by perturbation, not gradients: each probe adds --delta to one input pixel
(all channels) and the change of the logits (the softmax's input) is read at every output pixel,
which gives the influence of the input at every offset from an output in one forward pass.")]
pub struct ErfArgs {
    /// Model file (.safetensors) or a preset name (random weights).
    #[arg(long)]
    pub model: String,
    #[command(flatten)]
    pub image: ImageArgs,
    /// The window the ERF is measured on: N or WxH (width x height), multiples of A (default: twice
    /// the analysed reach plus 2·A, clipped to the image). It is cropped from the image's centre.
    #[arg(long)]
    pub window: Option<String>,
    /// Probe phases on the A grid, 1..=A (default A: every phase, which the exact reach needs).
    #[arg(long)]
    pub probes: Option<usize>,
    /// Perturbation added to the probed pixel (in normalised units).
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
    pub delta: f32,
    /// Also find the smallest aligned halo whose fraction of changed labels is <= this
    /// tolerance (0 = no label may change), by a sweep over halos 0, step, .., exact on the image.
    #[arg(long)]
    pub tol: Option<f64>,
    /// Tile size for the --tol sweep: N or WxH (width x height; default 4·A).
    #[arg(long)]
    pub tile: Option<String>,
    /// Halo step of the --tol sweep (a multiple of A; default A).
    #[arg(long)]
    pub halo_step: Option<usize>,
    /// How the image is padded to a multiple of A in the --tol sweep.
    #[arg(long, value_enum, default_value_t = PadMode::Zero)]
    pub pad: PadMode,
    /// Write the radial profile as CSV.
    #[arg(long)]
    pub csv: Option<PathBuf>,
    /// Write the heat map (PNG).
    #[arg(long)]
    pub heatmap: Option<PathBuf>,
    /// Write the radial profile plot (PNG).
    #[arg(long)]
    pub plot: Option<PathBuf>,
    /// Write the --tol sweep as CSV.
    #[arg(long, requires = "tol")]
    pub tol_csv: Option<PathBuf>,
    /// Print the result as JSON instead of the summary.
    #[arg(long)]
    pub json: bool,
    /// No progress bar or notes.
    #[arg(long, short)]
    pub quiet: bool,
}

#[derive(serde::Serialize)]
struct Report<'a> {
    model: &'a str,
    image: &'a str,
    erf: &'a Erf,
    label_halo: Option<&'a LabelHalo>,
}

/// `--window N|WxH`: (rows, columns).
fn parse_window(s: &str, model: &Model, quiet: bool) -> Result<(usize, usize)> {
    let (h, w) = super::infer::size_flag("--window", s, false, quiet)?.hw();
    let a = model.align();
    if h == 0 || w == 0 || !h.is_multiple_of(a) || !w.is_multiple_of(a) {
        return Err(Error::Usage(format!("--window {s}: sizes must be positive multiples of A = {a}")));
    }
    if h.saturating_mul(w) > 1 << 26 {
        return Err(Error::Usage(format!("--window {s}: at most 64 Mpx (the ERF needs twice the reach, not more)")));
    }
    Ok((h, w))
}

pub fn run(a: ErfArgs) -> Result<()> {
    let model = Model::open(&a.model)?;
    let al = model.align();
    for p in [&a.heatmap, &a.plot].into_iter().flatten() {
        seamless::plot::check_png_path(p)?;
    }
    for p in [&a.csv, &a.tol_csv].into_iter().flatten() {
        seamless::plot::check_parent(p)?;
    }
    if let Some(t) = a.tol
        && !(0.0..=1.0).contains(&t)
    {
        return Err(Error::Usage(format!("--tol {t}: a fraction of pixels between 0 and 1")));
    }
    let step = a.halo_step.unwrap_or(al);
    if step == 0 || !step.is_multiple_of(al) {
        return Err(Error::Usage(format!("--halo-step {step}: must be a positive multiple of A = {al}")));
    }
    let window = match &a.window {
        Some(s) => Some(parse_window(s, &model, a.quiet)?),
        None => None,
    };
    let probes = a.probes.unwrap_or(al);
    if probes == 0 || probes > al {
        return Err(Error::Usage(format!("--probes {probes}: must be between 1 and A = {al}")));
    }
    let d = erf::default_window(&model);
    let default_synth = match window {
        Some((h, w)) => format!("{w}x{h}"),
        None => format!("{d}x{d}"),
    };
    let (img, what) = load_image(&a.image, &model, &default_synth)?;
    let (wh, ww) = window.unwrap_or((d.min(round_up(img.h, al)), d.min(round_up(img.w, al))));
    let win = erf::crop_window(&img, al, wh, ww);
    if !a.quiet {
        eprintln!(
            "model: {} (A = {al}, reach {}/{} px, exact halo {}); image: {what}; window {ww}x{wh}; {probes} probe(s)",
            model.origin,
            model.rf.reach_before,
            model.rf.reach_after,
            model.exact_halo()
        );
    }
    let spec = ErfSpec { probes, delta: a.delta };
    let e = with_progress("passes", a.quiet, |p| erf::measure(&CpuBackend::default(), &model, &win, &spec, p))?;

    let lh = match a.tol {
        Some(tol) => {
            let tile = match &a.tile {
                Some(t) => parse_tile("--tile", t, &model, img.h, img.w, a.quiet)?,
                None => default_tile(&model, img.h, img.w),
            };
            Some(with_progress("tiles", a.quiet, |p| {
                sweep::label_halo(&CpuBackend::default(), &model, &img, tile, a.pad, tol, step, p)
            })?)
        }
        None => None,
    };

    if a.json {
        let r = Report { model: &model.origin, image: &what, erf: &e, label_halo: lh.as_ref() };
        println!("{}", serde_json::to_string_pretty(&r).expect("serialisable"));
    } else {
        print_summary(&model, &e);
        if let Some(lh) = &lh {
            println!();
            println!(
                "label error vs halo ({}x{} px, tiles {}x{}, offset 0):",
                lh.sweep.width, lh.sweep.height, lh.sweep.tile_w, lh.sweep.tile_h
            );
            print_table(&lh.sweep);
            let show = |h: Option<usize>| h.map_or("none of the swept halos".to_string(), |h| format!("{h} px"));
            println!(
                "smallest halo with changed labels <= {}: {} (and for every larger swept halo: {}); exact halo {} px",
                lh.tolerance,
                show(lh.first_within),
                show(lh.stable_from),
                model.exact_halo()
            );
        }
    }
    if let Some(p) = &a.csv {
        write_text(p, &e.profile_csv())?;
    }
    if let (Some(p), Some(lh)) = (&a.tol_csv, &lh) {
        write_text(p, &lh.sweep.to_csv())?;
    }
    if let Some(p) = &a.heatmap {
        let title = format!("empirical ERF (|Δ logit|), {}", model.origin);
        seamless::plot::plot_erf_heatmap(&e, p, &title)?;
    }
    if let Some(p) = &a.plot {
        let title = format!("ERF radial profile, {}", model.origin);
        seamless::plot::plot_erf_profile(&e, p, &title)?;
    }
    Ok(())
}

fn print_summary(model: &Model, e: &Erf) {
    let t = &e.theory;
    let m = &e.measured;
    println!(
        "window {}x{}, {} probe(s), delta {}, max |Δ logit| {:.3e}",
        e.window_w,
        e.window_h,
        e.probes.len(),
        e.delta,
        e.max_logit
    );
    println!("{:<34} {:>10} {:>10}", "", "measured", "analysis");
    println!("{:<34} {:>10} {:>10}", "reach before (left/up), px", m.reach_before, t.reach_before);
    println!("{:<34} {:>10} {:>10}", "reach after (right/down), px", m.reach_after, t.reach_after);
    println!("{:<34} {:>10} {:>10}", "halo need before, px", m.need_before, t.need_before);
    println!("{:<34} {:>10} {:>10}", "halo need after, px", m.need_after, t.need_after);
    println!("{:<34} {:>10} {:>10}", "halo (multiple of A), px", m.halo, model.exact_halo());
    println!("influence exactly 0 beyond (L∞)    {:>10} px", e.zero_beyond);
    for (f, d) in &e.below {
        println!("influence below {f:e} of max from   {d:>8} px");
    }
    let edge = e.window_h.min(e.window_w) / 2;
    if edge < t.reach_before.max(t.reach_after) {
        println!(
            "note: the window reaches only {edge} px from the probes on its short side; vertical reach is cut there"
        );
    }
}
