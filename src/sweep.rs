//! The error of tiled inference against the whole-image reference as a function of the halo and
//! of the tile origins' alignment: the experiment of the NIST paper that shows why the exactness
//! contract has its two rules (halo >= the exact halo, everything on the A grid).
//!
//! Every point of a sweep runs the tiled pipeline on a [`TileGrid::with_offset`] grid (any halo,
//! tile boundaries shifted by an offset) and compares it with one whole-image run. Windows that
//! are not a multiple of A are zero-extended by the runner, exactly as an experiment that breaks
//! the contract would do it.

use std::time::Instant;

use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::model::Model;
use crate::pipeline::{PadMode, Progress, Tiling, infer_on, labels};
use crate::tensor::Tensor;
use crate::tile_grid::{TileGrid, round_up};

/// What a sweep varies.
#[derive(Clone, Debug)]
pub struct SweepSpec {
    pub tile_h: usize,
    pub tile_w: usize,
    /// Halos to try, in pixels (any value: non-multiples of A are part of the experiment).
    pub halos: Vec<usize>,
    /// Offsets of the tile origins, in pixels, applied to both axes (0 = the contract's grid).
    pub offsets: Vec<usize>,
    pub pad: PadMode,
}

/// How far a tiled output is from the reference.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize)]
pub struct ErrorStats {
    /// Largest absolute difference of the probabilities.
    pub max_abs: f64,
    /// Root mean square difference of the probabilities (over every class and pixel).
    pub rmse: f64,
    /// Output values (class probabilities) whose bits differ.
    pub changed_values: usize,
    /// Pixels whose label (argmax) differs.
    pub changed_labels: usize,
    /// `changed_labels` over the number of pixels.
    pub label_fraction: f64,
}

impl ErrorStats {
    /// Bit-identical to the reference.
    pub fn is_exact(&self) -> bool {
        self.changed_values == 0
    }
}

/// Compare a tiled output with the reference (same shape; `ref_labels` = `labels(reference)`).
pub fn compare(reference: &Tensor, ref_labels: &Tensor, tiled: &Tensor) -> ErrorStats {
    assert_eq!((reference.c, reference.h, reference.w), (tiled.c, tiled.h, tiled.w), "shapes differ");
    let (mut max_abs, mut sq, mut changed_values) = (0f64, 0f64, 0usize);
    for (&a, &b) in reference.data.iter().zip(&tiled.data) {
        if a.to_bits() != b.to_bits() {
            changed_values += 1;
            let d = (a as f64 - b as f64).abs();
            max_abs = max_abs.max(d);
            sq += d * d;
        }
    }
    let tiled_labels = labels(tiled);
    let changed_labels = ref_labels.data.iter().zip(&tiled_labels.data).filter(|(a, b)| a != b).count();
    let n = reference.data.len().max(1) as f64;
    ErrorStats {
        max_abs,
        rmse: (sq / n).sqrt(),
        changed_values,
        changed_labels,
        label_fraction: changed_labels as f64 / (reference.h * reference.w).max(1) as f64,
    }
}

/// One configuration of a sweep and its error.
#[derive(Clone, Debug, serde::Serialize)]
pub struct SweepPoint {
    pub halo: usize,
    pub offset: usize,
    /// Tile size, halo and offset all multiples of A: the grid the contract allows.
    pub aligned: bool,
    /// The input windows start on the A grid (halo ≡ offset mod A, tile a multiple of A), so
    /// pooling windows fall on the whole-image run's phase; true whenever `aligned` is.
    pub windows_on_grid: bool,
    /// Aligned and halo >= the exact halo: the contract promises bit-identity.
    pub contract: bool,
    pub tiles: usize,
    /// Input pixels processed per output pixel.
    pub overhead: f64,
    #[serde(flatten)]
    pub error: ErrorStats,
    pub seconds: f64,
}

/// A whole sweep: the reference's geometry and time, and one point per (halo, offset).
#[derive(Clone, Debug, serde::Serialize)]
pub struct Sweep {
    pub model: String,
    pub height: usize,
    pub width: usize,
    pub tile_h: usize,
    pub tile_w: usize,
    pub align: usize,
    pub exact_halo: usize,
    pub whole_seconds: f64,
    pub points: Vec<SweepPoint>,
}

impl Sweep {
    /// The sweep as CSV, one row per point, with a header.
    pub fn to_csv(&self) -> String {
        let mut s = String::from(
            "height,width,tile_h,tile_w,align,exact_halo,halo,offset,aligned,windows_on_grid,contract,tiles,overhead,\
             max_abs,rmse,changed_values,changed_labels,label_fraction,bit_exact,seconds,relative_time\n",
        );
        for p in &self.points {
            let e = &p.error;
            s += &format!(
                "{},{},{},{},{},{},{},{},{},{},{},{},{:.4},{:e},{:e},{},{},{:e},{},{:.3},{:.3}\n",
                self.height,
                self.width,
                self.tile_h,
                self.tile_w,
                self.align,
                self.exact_halo,
                p.halo,
                p.offset,
                p.aligned,
                p.windows_on_grid,
                p.contract,
                p.tiles,
                p.overhead,
                e.max_abs,
                e.rmse,
                e.changed_values,
                e.changed_labels,
                e.label_fraction,
                e.is_exact(),
                p.seconds,
                p.seconds / self.whole_seconds.max(1e-9)
            );
        }
        s
    }
}

fn grid_for(model: &Model, h: usize, w: usize, spec: &SweepSpec, halo: usize, offset: usize) -> TileGrid {
    let a = model.align();
    TileGrid::with_offset(round_up(h, a), round_up(w, a), spec.tile_h, spec.tile_w, halo, offset, offset)
}

fn check(spec: &SweepSpec) -> Result<()> {
    if spec.tile_h == 0 || spec.tile_w == 0 {
        return Err(Error::Usage("the tile size must be at least 1 pixel".into()));
    }
    if spec.halos.is_empty() {
        return Err(Error::Usage("no halo to sweep".into()));
    }
    if spec.offsets.is_empty() {
        return Err(Error::Usage("no offset to sweep".into()));
    }
    Ok(())
}

/// Run the sweep: the whole image once, then every (halo, offset) tiled, in the order halos x
/// offsets. `img` is already normalised. `progress(done, total)` counts tiles over the whole sweep.
pub fn run(
    backend: &dyn Backend,
    model: &Model,
    img: &Tensor,
    spec: &SweepSpec,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Sweep> {
    check(spec)?;
    let a = model.align();
    let configs: Vec<(usize, usize, TileGrid)> = spec
        .halos
        .iter()
        .flat_map(|&h| spec.offsets.iter().map(move |&o| (h, o)))
        .map(|(h, o)| (h, o, grid_for(model, img.h, img.w, spec, h, o)))
        .collect();
    let total: usize = configs.iter().map(|c| c.2.len()).sum();

    let t0 = Instant::now();
    let reference = infer_on(backend, model, img, spec.pad, Tiling::Whole, &mut |_| {}, None)?;
    let whole_seconds = t0.elapsed().as_secs_f64();
    let ref_labels = labels(&reference);

    let mut done = 0;
    let mut points = Vec::with_capacity(configs.len());
    for (halo, offset, grid) in configs {
        let t0 = Instant::now();
        let tiled = infer_on(
            backend,
            model,
            img,
            spec.pad,
            Tiling::Grid(&grid),
            &mut |p| {
                if let Progress::Tiles { done: d, .. } = p {
                    progress(done + d, total)
                }
            },
            None,
        )?;
        let seconds = t0.elapsed().as_secs_f64();
        done += grid.len();
        let aligned = [spec.tile_h, spec.tile_w, halo, offset].iter().all(|v| v.is_multiple_of(a));
        let windows_on_grid = spec.tile_h.is_multiple_of(a) && spec.tile_w.is_multiple_of(a) && halo % a == offset % a;
        points.push(SweepPoint {
            halo,
            offset,
            aligned,
            windows_on_grid,
            contract: aligned && halo >= model.exact_halo(),
            tiles: grid.len(),
            overhead: grid.overhead(),
            error: compare(&reference, &ref_labels, &tiled),
            seconds,
        });
    }
    Ok(Sweep {
        model: model.origin.clone(),
        height: img.h,
        width: img.w,
        tile_h: spec.tile_h,
        tile_w: spec.tile_w,
        align: a,
        exact_halo: model.exact_halo(),
        whole_seconds,
        points,
    })
}

/// The answer to "how much halo do my labels need?": an aligned sweep and the smallest halo whose
/// changed-label fraction is within the tolerance.
#[derive(Clone, Debug, serde::Serialize)]
pub struct LabelHalo {
    pub tolerance: f64,
    /// Smallest swept halo with `label_fraction <= tolerance`.
    pub first_within: Option<usize>,
    /// Smallest swept halo from which every larger swept halo is within the tolerance too.
    pub stable_from: Option<usize>,
    pub sweep: Sweep,
}

/// Sweep the aligned halos `0, step, 2·step, ..` up to the exact halo (offset 0) and find where the
/// changed-label fraction falls to `tolerance` or below. `step` must be a positive multiple of A.
#[allow(clippy::too_many_arguments)]
pub fn label_halo(
    backend: &dyn Backend,
    model: &Model,
    img: &Tensor,
    tile: (usize, usize),
    pad: PadMode,
    tolerance: f64,
    step: usize,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<LabelHalo> {
    let a = model.align();
    if step == 0 || !step.is_multiple_of(a) {
        return Err(Error::Usage(format!("the halo step {step} must be a positive multiple of A = {a}")));
    }
    if !(0.0..=1.0).contains(&tolerance) {
        return Err(Error::Usage(format!("the tolerance {tolerance} must be a fraction between 0 and 1")));
    }
    let exact = model.exact_halo();
    let mut halos: Vec<usize> = (0..=exact).step_by(step).collect();
    if halos.last() != Some(&exact) {
        halos.push(exact);
    }
    let spec = SweepSpec { tile_h: tile.0, tile_w: tile.1, halos, offsets: vec![0], pad };
    let sweep = run(backend, model, img, &spec, progress)?;
    let within = |p: &SweepPoint| p.error.label_fraction <= tolerance;
    let first_within = sweep.points.iter().find(|p| within(p)).map(|p| p.halo);
    let stable_from = sweep
        .points
        .iter()
        .rposition(|p| !within(p))
        .map_or(sweep.points.first(), |i| sweep.points.get(i + 1))
        .map(|p| p.halo);
    Ok(LabelHalo { tolerance, first_within, stable_from, sweep })
}

fn usage(what: &str, spec: &str, msg: &str) -> Error {
    Error::Usage(format!("{what} '{spec}': {msg}"))
}

/// Parse a list of pixel values: comma-separated items, each a number, the word `exact` (when
/// `exact` is given), or a range `lo:hi[:step]` whose `hi` may be `exact` (step defaults to
/// `default_step`). Sorted, without duplicates.
pub fn parse_list(what: &str, spec: &str, exact: Option<usize>, default_step: usize) -> Result<Vec<usize>> {
    let value = |s: &str| -> Result<usize> {
        let s = s.trim();
        match (s, exact) {
            ("exact", Some(e)) => Ok(e),
            ("exact", None) => Err(usage(what, spec, "'exact' is not allowed here")),
            _ => s.parse().map_err(|_| usage(what, spec, &format!("'{s}' is not a number of pixels"))),
        }
    };
    let mut out = Vec::new();
    for item in spec.split(',') {
        let parts: Vec<&str> = item.split(':').collect();
        match parts.as_slice() {
            [v] => out.push(value(v)?),
            [lo, hi] | [lo, hi, _] => {
                let (lo, hi) = (value(lo)?, value(hi)?);
                let step = match parts.get(2) {
                    Some(s) => s.trim().parse().map_err(|_| usage(what, spec, &format!("bad step '{s}'")))?,
                    None => default_step,
                };
                if step == 0 {
                    return Err(usage(what, spec, "the step must be at least 1"));
                }
                if lo > hi {
                    return Err(usage(what, spec, &format!("the range starts at {lo}, after its end {hi}")));
                }
                out.extend((lo..=hi).step_by(step));
            }
            _ => return Err(usage(what, spec, "expected N, lo:hi or lo:hi:step, comma-separated")),
        }
    }
    if out.is_empty() {
        return Err(usage(what, spec, "no values"));
    }
    out.sort_unstable();
    out.dedup();
    Ok(out)
}

/// `--halos`: see [`parse_list`]; `exact` is the model's exact halo, the default step is A.
pub fn parse_halos(spec: &str, model: &Model) -> Result<Vec<usize>> {
    parse_list("--halos", spec, Some(model.exact_halo()), model.align())
}

/// `--offsets`: see [`parse_list`]; the default step is 1.
pub fn parse_offsets(spec: &str) -> Result<Vec<usize>> {
    parse_list("--offsets", spec, None, 1)
}
