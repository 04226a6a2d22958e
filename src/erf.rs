//! The empirical effective receptive field (ERF), measured by perturbation (no gradients).
//!
//! One forward pass per probe: a probe adds `delta` to every channel of one input pixel `p` of a
//! window, and the change of the network's **logits** (the softmax's input; probabilities saturate)
//! is read at *every* output pixel `q`. Output `q` then depends on the input at offset
//! `u = p - q` from it, so one pass fills the whole influence map `ERF(u) = max |Δ logit_q|`
//! (max over classes and probes) instead of one value per pass. The network is periodic with
//! period A, so probes are placed at several phases `(φ, φ)` of the A grid (all A by default):
//! together they see every output phase against every input phase, which is what the one-sided
//! reaches of the receptive-field analysis are about.
//!
//! The window is the network's whole world: outputs near its edge see the window's zero padding,
//! identically in the base and the perturbed run. Make the window at least twice the reach (the
//! default) so that every output within reach of a probe sees real context.

use crate::backend::Backend;
use crate::cpu;
use crate::error::{Error, Result};
use crate::graph::{Graph, Op};
use crate::model::Model;
use crate::receptive_field::ReceptiveField;
use crate::tensor::Tensor;
use crate::tile_grid::round_up;

/// The graph up to the softmax's input (the logits), or the graph itself if it ends otherwise.
pub fn logits_graph(graph: &Graph) -> Graph {
    let mut g = graph.clone();
    if let Op::Softmax = g.nodes[g.output].op {
        g.output = g.nodes[g.output].inputs[0];
        // Nodes come in execution order: nothing after the new output is needed.
        g.nodes.truncate(g.output + 1);
    }
    g
}

/// What to measure.
#[derive(Clone, Debug)]
pub struct ErfSpec {
    /// Number of probe phases (1..=A), spread evenly over the A grid.
    pub probes: usize,
    /// Added to every channel of the probed input pixel.
    pub delta: f32,
}

/// Influence at one L∞ distance ("ring") from the output pixel.
#[derive(Clone, Copy, Debug, serde::Serialize)]
pub struct Ring {
    pub distance: usize,
    /// Largest |Δ logit| on the ring.
    pub max_logit: f64,
    /// Mean |Δ logit| over the ring's measured cells.
    pub mean_logit: f64,
    /// Largest |Δ probability| on the ring.
    pub max_prob: f64,
    /// Cells of the ring that some probe measured.
    pub cells: usize,
}

/// Measured reaches and the halo they call for, to set next to [`ReceptiveField`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct MeasuredReach {
    /// Farthest input left of / above an output that changed it (max over both axes).
    pub reach_before: usize,
    /// Farthest right of / below.
    pub reach_after: usize,
    /// Halo the first / last tile edge needs (reach minus the output's depth inside its A cell).
    pub need_before: usize,
    pub need_after: usize,
    /// Smallest multiple of A covering both needs.
    pub halo: usize,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct Erf {
    pub window_h: usize,
    pub window_w: usize,
    pub align: usize,
    pub delta: f32,
    /// Probed input pixels (window coordinates).
    pub probes: Vec<(usize, usize)>,
    /// Half-extents of the maps: offsets `u` in `[-radius_y, radius_y] x [-radius_x, radius_x]`.
    pub radius_y: usize,
    pub radius_x: usize,
    /// `(2·radius_y+1) x (2·radius_x+1)`, row-major, index `(u_y + radius_y, u_x + radius_x)`:
    /// max |Δ logit| of an output whose input at offset `u` (input minus output; negative = before,
    /// i.e. left / above) was perturbed; NaN where no probe
    /// measured (the window was too small in that direction).
    #[serde(skip)]
    pub logit_map: Vec<f64>,
    #[serde(skip)]
    pub prob_map: Vec<f64>,
    /// Largest |Δ logit| anywhere.
    pub max_logit: f64,
    /// Radial profile over L∞ rings (the theoretical receptive field is a square).
    pub profile: Vec<Ring>,
    /// Largest L∞ distance at which the influence is not exactly zero.
    pub zero_beyond: usize,
    /// For each fraction f: the smallest distance from which every ring's max is below f·max.
    pub below: Vec<(f64, usize)>,
    pub measured: MeasuredReach,
    pub theory: ReceptiveField,
}

impl Erf {
    pub fn at(&self, map: &[f64], uy: i64, ux: i64) -> f64 {
        let (ry, rx) = (self.radius_y as i64, self.radius_x as i64);
        if uy.abs() > ry || ux.abs() > rx {
            return f64::NAN;
        }
        map[((uy + ry) * (2 * rx + 1) + ux + rx) as usize]
    }

    /// The radial profile as CSV.
    pub fn profile_csv(&self) -> String {
        let mut s = String::from("distance,max_abs_dlogit,mean_abs_dlogit,max_abs_dprob,relative_max,cells\n");
        for r in &self.profile {
            s += &format!(
                "{},{:e},{:e},{:e},{:e},{}\n",
                r.distance,
                r.max_logit,
                r.mean_logit,
                r.max_prob,
                r.max_logit / self.max_logit.max(f64::MIN_POSITIVE),
                r.cells
            );
        }
        s
    }
}

/// The default window side: twice the analysed reach plus two A cells, rounded up to A.
pub fn default_window(model: &Model) -> usize {
    let r = model.rf.reach_before.max(model.rf.reach_after);
    round_up(2 * r + 2 * model.align(), model.align())
}

/// A window of `h x w` from an (already normalised) image, centred on the image and starting on
/// the A grid; zero where it extends past the image.
pub fn crop_window(img: &Tensor, align: usize, h: usize, w: usize) -> Tensor {
    let y0 = (img.h.saturating_sub(h) / 2) / align * align;
    let x0 = (img.w.saturating_sub(w) / 2) / align * align;
    img.window(y0, x0, h, w)
}

/// Measure the ERF of `model` on `window` (normalised, `c x h x w`, h and w multiples of A).
/// `progress(done, total)` counts forward passes.
pub fn measure(
    backend: &dyn Backend,
    model: &Model,
    window: &Tensor,
    spec: &ErfSpec,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Erf> {
    let a = model.align();
    let (h, w) = (window.h, window.w);
    if window.c != model.in_channels() {
        return Err(Error::Shape(format!(
            "the window has {} channel(s), the model expects {}",
            window.c,
            model.in_channels()
        )));
    }
    if h == 0 || w == 0 || !h.is_multiple_of(a) || !w.is_multiple_of(a) {
        return Err(Error::Usage(format!(
            "the ERF window {w}x{h} must be a positive multiple of A = {a} on each side"
        )));
    }
    if spec.probes == 0 || spec.probes > a {
        return Err(Error::Usage(format!("--probes {} must be between 1 and A = {a}", spec.probes)));
    }
    if !spec.delta.is_finite() || spec.delta == 0.0 {
        return Err(Error::Usage(format!("--delta {} must be a finite non-zero number", spec.delta)));
    }
    let graph = logits_graph(&model.graph);
    // Probes on the centre A cell, at phases (φ, φ), clipped to the window.
    let (cy, cx) = ((h / 2) / a * a, (w / 2) / a * a);
    let probes: Vec<(usize, usize)> = (0..spec.probes)
        .map(|k| k * a / spec.probes)
        .map(|phi| ((cy + phi).min(h - 1), (cx + phi).min(w - 1)))
        .collect();
    let total = probes.len() + 1;
    let base = backend.run(&graph, window)?;
    progress(1, total);
    let base_p = cpu::softmax::softmax(&base);

    let r = model.rf.reach_before.max(model.rf.reach_after) + a;
    let (ry, rx) = (r.min(h), r.min(w));
    let (mh, mw) = (2 * ry + 1, 2 * rx + 1);
    let mut logit_map = vec![f64::NAN; mh * mw];
    let mut prob_map = vec![f64::NAN; mh * mw];
    let mut m = MeasuredReach::default();
    let (classes, hw) = (base.c, h * w);
    for (i, &(py, px)) in probes.iter().enumerate() {
        let mut x = window.clone();
        for c in 0..x.c {
            x.data[(c * h + py) * w + px] += spec.delta;
        }
        let y = backend.run(&graph, &x)?;
        let yp = cpu::softmax::softmax(&y);
        for qy in 0..h {
            for qx in 0..w {
                let (uy, ux) = (py as i64 - qy as i64, px as i64 - qx as i64);
                if uy.unsigned_abs() as usize > ry || ux.unsigned_abs() as usize > rx {
                    continue;
                }
                let k = qy * w + qx;
                let (mut dl, mut dp, mut changed) = (0f64, 0f64, false);
                for c in 0..classes {
                    let (b, v) = (base.data[c * hw + k], y.data[c * hw + k]);
                    changed |= b.to_bits() != v.to_bits();
                    dl = dl.max((v as f64 - b as f64).abs());
                    dp = dp.max((yp.data[c * hw + k] as f64 - base_p.data[c * hw + k] as f64).abs());
                }
                let idx = (uy + ry as i64) as usize * mw + (ux + rx as i64) as usize;
                logit_map[idx] = if logit_map[idx].is_nan() { dl } else { logit_map[idx].max(dl) };
                prob_map[idx] = if prob_map[idx].is_nan() { dp } else { prob_map[idx].max(dp) };
                if changed {
                    // u < 0: the input lies before (left of / above) the output.
                    for (u, q) in [(uy, qy), (ux, qx)] {
                        let phase = (q % a) as i64;
                        if u < 0 {
                            m.reach_before = m.reach_before.max((-u) as usize);
                            m.need_before = m.need_before.max((-u - phase).max(0) as usize);
                        } else if u > 0 {
                            m.reach_after = m.reach_after.max(u as usize);
                            m.need_after = m.need_after.max((u - (a as i64 - 1 - phase)).max(0) as usize);
                        }
                    }
                }
            }
        }
        progress(i + 2, total);
    }
    m.halo = round_up(m.need_before.max(m.need_after), a);

    let max_logit = logit_map.iter().copied().filter(|v| !v.is_nan()).fold(0.0, f64::max);
    let rings = ry.max(rx);
    let mut profile: Vec<Ring> =
        (0..=rings).map(|d| Ring { distance: d, max_logit: 0.0, mean_logit: 0.0, max_prob: 0.0, cells: 0 }).collect();
    for iy in 0..mh {
        for ix in 0..mw {
            let v = logit_map[iy * mw + ix];
            if v.is_nan() {
                continue;
            }
            let d = (iy as i64 - ry as i64).unsigned_abs().max((ix as i64 - rx as i64).unsigned_abs()) as usize;
            let ring = &mut profile[d];
            ring.max_logit = ring.max_logit.max(v);
            ring.mean_logit += v;
            ring.max_prob = ring.max_prob.max(prob_map[iy * mw + ix]);
            ring.cells += 1;
        }
    }
    for ring in &mut profile {
        ring.mean_logit /= ring.cells.max(1) as f64;
    }
    let zero_beyond = profile.iter().rposition(|r| r.max_logit > 0.0).unwrap_or(0);
    let below = [1e-1, 1e-2, 1e-3, 1e-6]
        .iter()
        .map(|&f| {
            let d = profile.iter().rposition(|r| r.max_logit >= f * max_logit).map_or(0, |i| i + 1);
            (f, d)
        })
        .collect();
    Ok(Erf {
        window_h: h,
        window_w: w,
        align: a,
        delta: spec.delta,
        probes,
        radius_y: ry,
        radius_x: rx,
        logit_map,
        prob_map,
        max_logit,
        profile,
        zero_beyond,
        below,
        measured: m,
        theory: model.rf.clone(),
    })
}
