//! PNG figures for the sweep and the ERF (plotters, bitmap backend). Text is drawn with DejaVu Sans
//! embedded in the binary (assets/fonts, Bitstream Vera licence), so plotting needs no system font
//! library.

use std::path::Path;
use std::sync::Once;

use plotters::prelude::*;
use plotters::style::{FontStyle, register_font};

use crate::erf::Erf;
use crate::error::{Error, Result, Side};
use crate::output::AtomicFile;
use crate::sweep::Sweep;

static FONT: &[u8] = include_bytes!("../assets/fonts/DejaVuSans.ttf");

fn fonts() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        for family in ["sans-serif", "serif", "monospace"] {
            // The embedded font is valid; a failure would only mean text is not drawn.
            let _ = register_font(family, FontStyle::Normal, FONT);
        }
    });
}

/// Write an RGB buffer as a compressed PNG, atomically (no half-written file under the name).
fn save_png(path: &Path, (w, h): (u32, u32), rgb: &[u8]) -> Result<()> {
    let mut f = AtomicFile::create(path)?;
    let io = |e: png::EncodingError| out_err(path, e);
    {
        let mut enc = png::Encoder::new(f.writer(), w, h);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        enc.set_compression(png::Compression::High);
        let mut wr = enc.write_header().map_err(io)?;
        wr.write_image_data(rgb).map_err(io)?;
        wr.finish().map_err(io)?;
    }
    f.commit()
}

fn out_err(path: &Path, e: impl std::error::Error + Send + Sync + 'static) -> Error {
    Error::codec(Side::Output, path, "cannot draw the plot", e)
}

/// Check that `path` can hold a PNG before any long computation.
pub fn check_png_path(path: &Path) -> Result<()> {
    let ext = path.extension().and_then(|e| e.to_str()).map(|e| e.to_ascii_lowercase());
    if ext.as_deref() != Some("png") {
        return Err(Error::Usage(format!("plot file {}: must end in .png", path.display())));
    }
    check_parent(path)
}

/// Check that the folder of `path` exists.
pub fn check_parent(path: &Path) -> Result<()> {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() && !d.is_dir() => {
            Err(Error::Output { path: path.to_path_buf(), msg: format!("the folder {} does not exist", d.display()) })
        }
        _ => Ok(()),
    }
}

const COLORS: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
];

/// log10 of `v`, with exact zeros put on `floor` (drawn as the bottom line of the panel).
fn lg(v: f64, floor: f64) -> f64 {
    if v > 0.0 { v.log10().max(floor) } else { floor }
}

/// Three panels against the halo (or the offset, when the sweep varies offsets more than halos):
/// RMSE, max |error| (log scale; exact zeros on the bottom line) and the % of changed labels.
pub fn plot_sweep(sweep: &Sweep, path: &Path, title: &str) -> Result<()> {
    fonts();
    let mut halos: Vec<usize> = sweep.points.iter().map(|p| p.halo).collect();
    let mut offsets: Vec<usize> = sweep.points.iter().map(|p| p.offset).collect();
    halos.dedup();
    halos.sort_unstable();
    halos.dedup();
    offsets.sort_unstable();
    offsets.dedup();
    let by_halo = halos.len() >= offsets.len();
    let (xs_name, series_name) = if by_halo { ("halo (px)", "offset") } else { ("tile-origin offset (px)", "halo") };
    let x_of = |p: &crate::sweep::SweepPoint| if by_halo { p.halo } else { p.offset } as f64;
    let s_of = |p: &crate::sweep::SweepPoint| if by_halo { p.offset } else { p.halo };
    // One line per offset (or halo); split in two where some windows start on the A grid and
    // others do not (halo ≢ offset mod A): the two behave differently.
    let mixed = sweep.points.iter().any(|p| p.windows_on_grid) && sweep.points.iter().any(|p| !p.windows_on_grid);
    let series: Vec<(usize, bool)> = (if by_halo { &offsets } else { &halos })
        .iter()
        .flat_map(|&s| [(s, true), (s, false)])
        .filter(|&(s, g)| sweep.points.iter().any(|p| s_of(p) == s && p.windows_on_grid == g))
        .collect();
    let xmax = sweep.points.iter().map(x_of).fold(1.0, f64::max);
    let xmax = if by_halo { xmax.max(sweep.exact_halo as f64) } else { xmax } * 1.04 + 1.0;

    let smallest = sweep
        .points
        .iter()
        .flat_map(|p| [p.error.rmse, p.error.max_abs])
        .filter(|&v| v > 0.0)
        .fold(f64::INFINITY, f64::min);
    let floor = if smallest.is_finite() { smallest.log10().floor() - 1.0 } else { -10.0 };
    let top = sweep.points.iter().map(|p| lg(p.error.max_abs, floor)).fold(floor + 1.0, f64::max).ceil() + 0.2;
    let lab_top = sweep.points.iter().map(|p| 100.0 * p.error.label_fraction).fold(0.0, f64::max).max(1e-3) * 1.15;

    let size: (u32, u32) = (1500, 520);
    let mut buf = vec![0u8; size.0 as usize * size.1 as usize * 3];
    {
        let root = BitMapBackend::with_buffer(&mut buf, size).into_drawing_area();
        root.fill(&WHITE).map_err(|e| out_err(path, e))?;
        let root = root.titled(title, ("sans-serif", 22)).map_err(|e| out_err(path, e))?;
        let (body, foot) = root.split_vertically(470);
        foot.draw_text(
        &format!(
            "{}x{} px, tiles {}x{}, A = {}, exact halo {} (dashed line). Points on the bottom line of the log panels \
             are exactly 0 (bit-identical to the whole-image run).",
            sweep.width, sweep.height, sweep.tile_w, sweep.tile_h, sweep.align, sweep.exact_halo
        ),
        &("sans-serif", 15).into_font().color(&BLACK),
        (20, 8),
    )
    .map_err(|e| out_err(path, e))?;
        let panels = body.split_evenly((1, 3));
        type Metric = fn(&crate::sweep::SweepPoint) -> f64;
        let metrics: [(&str, Metric, bool); 3] = [
            ("RMSE of the probabilities", |p| p.error.rmse, true),
            ("max |error| of the probabilities", |p| p.error.max_abs, true),
            ("changed labels (%)", |p| 100.0 * p.error.label_fraction, false),
        ];
        for (panel, (name, metric, log)) in panels.iter().zip(metrics) {
            let (y0, y1) = if log { (floor - 0.2, top) } else { (0.0, lab_top) };
            let mut chart = ChartBuilder::on(panel)
                .caption(name, ("sans-serif", 18))
                .margin(12)
                .x_label_area_size(40)
                .y_label_area_size(62)
                .build_cartesian_2d(-xmax * 0.02..xmax, y0..y1)
                .map_err(|e| out_err(path, e))?;
            let fmt_log =
                |v: &f64| if v.round() <= floor { "0".to_string() } else { format!("1e{}", v.round() as i64) };
            let fmt_lin = |v: &f64| format!("{v:.3}");
            let fmt_x = |v: &f64| format!("{}", v.round() as i64);
            let mut mesh = chart.configure_mesh();
            mesh.x_desc(xs_name)
                .x_label_formatter(&fmt_x)
                .label_style(("sans-serif", 13))
                .light_line_style(RGBColor(235, 235, 235));
            if log {
                mesh.y_labels((top - floor).ceil() as usize + 1).y_label_formatter(&fmt_log);
            } else {
                mesh.y_label_formatter(&fmt_lin);
            }
            mesh.draw().map_err(|e| out_err(path, e))?;
            if by_halo {
                let xe = sweep.exact_halo as f64;
                let mut dashes = vec![];
                let n = 30;
                for k in (0..n).step_by(2) {
                    let a = y0 + (y1 - y0) * k as f64 / n as f64;
                    let b = y0 + (y1 - y0) * (k + 1) as f64 / n as f64;
                    dashes.push(PathElement::new(vec![(xe, a), (xe, b)], BLACK.stroke_width(1)));
                }
                chart.draw_series(dashes).map_err(|e| out_err(path, e))?;
            }
            for (i, &(s, on_grid)) in series.iter().enumerate() {
                let color = COLORS[i % COLORS.len()];
                let pts: Vec<(f64, f64)> = sweep
                    .points
                    .iter()
                    .filter(|p| s_of(p) == s && p.windows_on_grid == on_grid)
                    .map(|p| {
                        let v = metric(p);
                        (x_of(p), if log { lg(v, floor) } else { v })
                    })
                    .collect();
                chart
                    .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))
                    .map_err(|e| out_err(path, e))?
                    .label(match (mixed, on_grid) {
                        (false, _) => format!("{series_name} {s}"),
                        (true, true) => format!("{series_name} {s}, windows on the A grid"),
                        (true, false) => format!("{series_name} {s}, windows off the grid"),
                    })
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2)));
                chart
                    .draw_series(pts.iter().map(|&(x, y)| Circle::new((x, y), 3, color.filled())))
                    .map_err(|e| out_err(path, e))?;
            }
            if series.len() > 1 || !by_halo {
                chart
                    .configure_series_labels()
                    .position(if log { SeriesLabelPosition::LowerLeft } else { SeriesLabelPosition::UpperRight })
                    .background_style(WHITE.mix(0.85))
                    .border_style(BLACK)
                    .label_font(("sans-serif", 13))
                    .draw()
                    .map_err(|e| out_err(path, e))?;
            }
        }
        root.present().map_err(|e| out_err(path, e))?;
    }
    save_png(path, size, &buf)
}

/// A perceptually ordered colour ramp (dark blue -> teal -> yellow), `t` in [0, 1].
fn ramp(t: f64) -> RGBColor {
    const STOPS: [(f64, [f64; 3]); 5] = [
        (0.0, [68.0, 1.0, 84.0]),
        (0.25, [59.0, 82.0, 139.0]),
        (0.5, [33.0, 145.0, 140.0]),
        (0.75, [94.0, 201.0, 98.0]),
        (1.0, [253.0, 231.0, 37.0]),
    ];
    let t = t.clamp(0.0, 1.0);
    let i = STOPS.iter().rposition(|s| s.0 <= t).unwrap_or(0).min(STOPS.len() - 2);
    let (a, b) = (STOPS[i], STOPS[i + 1]);
    let f = (t - a.0) / (b.0 - a.0);
    let c = |k: usize| (a.1[k] + f * (b.1[k] - a.1[k])).round() as u8;
    RGBColor(c(0), c(1), c(2))
}

/// The ERF as a heat map of log10(|Δ logit| / max) over input offsets from the output pixel, with
/// the theoretical receptive field (the analysed reaches, red) drawn on it. Exact zeros are white,
/// unmeasured cells grey. Large maps are max-pooled to at most 400 cells a side.
pub fn plot_erf_heatmap(erf: &Erf, path: &Path, title: &str) -> Result<()> {
    fonts();
    let (ry, rx) = (erf.radius_y as i64, erf.radius_x as i64);
    let block = ((2 * ry.max(rx) + 1) as usize).div_ceil(400).max(1) as i64;
    let lo = -9.0;
    let plot_w = 900u32;
    let plot_h = ((plot_w as f64) * (2 * ry + 1) as f64 / (2 * rx + 1) as f64).clamp(120.0, 900.0) as u32;
    let size: (u32, u32) = (plot_w + 300, plot_h + 150);
    let mut buf = vec![0u8; size.0 as usize * size.1 as usize * 3];
    {
        let root = BitMapBackend::with_buffer(&mut buf, size).into_drawing_area();
        root.fill(&WHITE).map_err(|e| out_err(path, e))?;
        let (main, bar) = root.split_horizontally(plot_w + 100);
        let mut chart = ChartBuilder::on(&main)
            .caption(title, ("sans-serif", 18))
            .margin(10)
            .x_label_area_size(40)
            .y_label_area_size(50)
            .build_cartesian_2d(-rx as f64 - 0.5..rx as f64 + 0.5, -ry as f64 - 0.5..ry as f64 + 0.5)
            .map_err(|e| out_err(path, e))?;
        let fmt_i = |v: &f64| format!("{}", v.round() as i64);
        chart
            .configure_mesh()
            .disable_mesh()
            .x_label_formatter(&fmt_i)
            .y_label_formatter(&fmt_i)
            .x_desc("input offset x from the output pixel (px)")
            .y_desc("offset y (px)")
            .label_style(("sans-serif", 13))
            .draw()
            .map_err(|e| out_err(path, e))?;
        let mut cells = Vec::new();
        let mut by = -ry;
        while by <= ry {
            let mut bx = -rx;
            while bx <= rx {
                let mut v = f64::NAN;
                for uy in by..(by + block).min(ry + 1) {
                    for ux in bx..(bx + block).min(rx + 1) {
                        let m = erf.at(&erf.logit_map, uy, ux);
                        if !m.is_nan() {
                            v = if v.is_nan() { m } else { v.max(m) };
                        }
                    }
                }
                let color = if v.is_nan() {
                    RGBColor(200, 200, 200)
                } else if v == 0.0 {
                    WHITE
                } else {
                    ramp(((v / erf.max_logit).log10() - lo) / -lo)
                };
                let (x0, y0) = (bx as f64 - 0.5, by as f64 - 0.5);
                let (x1, y1) = ((bx + block).min(rx + 1) as f64 - 0.5, (by + block).min(ry + 1) as f64 - 0.5);
                cells.push(Rectangle::new([(x0, y1), (x1, y0)], color.filled()));
                bx += block;
            }
            by += block;
        }
        chart.draw_series(cells).map_err(|e| out_err(path, e))?;
        let t = &erf.theory;
        let clip = |v: f64, r: i64| v.clamp(-r as f64 - 0.5, r as f64 + 0.5);
        let rf = |b: usize, a: usize, r: i64| (clip(-(b as f64) - 0.5, r), clip(a as f64 + 0.5, r));
        let (x0, x1) = rf(t.reach_before, t.reach_after, rx);
        let (y0, y1) = rf(t.reach_before, t.reach_after, ry);
        chart
            .draw_series(std::iter::once(Rectangle::new([(x0, y1), (x1, y0)], RED.stroke_width(2))))
            .map_err(|e| out_err(path, e))?
            .label(format!("theoretical RF: {} px before, {} after", t.reach_before, t.reach_after))
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], RED.stroke_width(2)));
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font(("sans-serif", 13))
            .draw()
            .map_err(|e| out_err(path, e))?;
        // Colour bar.
        let bar = bar.margin(40, 60, 10, 60);
        let mut cb = ChartBuilder::on(&bar)
            .y_label_area_size(75)
            .build_cartesian_2d(0.0..1.0, lo..0.0)
            .map_err(|e| out_err(path, e))?;
        cb.configure_mesh()
            .disable_mesh()
            .disable_x_axis()
            .y_label_formatter(&|v: &f64| format!("1e{}", v.round() as i64))
            .y_desc("|Δ logit| / max (white: exactly 0)")
            .label_style(("sans-serif", 13))
            .draw()
            .map_err(|e| out_err(path, e))?;
        let n = 90;
        cb.draw_series((0..n).map(|k| {
            let a = lo + (-lo) * k as f64 / n as f64;
            let b = lo + (-lo) * (k + 1) as f64 / n as f64;
            Rectangle::new([(0.0, a), (1.0, b)], ramp((a - lo) / -lo).filled())
        }))
        .map_err(|e| out_err(path, e))?;
        root.present().map_err(|e| out_err(path, e))?;
    }
    save_png(path, size, &buf)
}

/// The radial profile (max and mean |Δ logit| per L∞ ring, relative to the max, log scale) with
/// the theoretical reach and the exact halo marked.
pub fn plot_erf_profile(erf: &Erf, path: &Path, title: &str) -> Result<()> {
    fonts();
    let floor = -12.0;
    let rel = |v: f64| lg(v / erf.max_logit.max(f64::MIN_POSITIVE), floor);
    let dmax = erf.profile.len().max(2) as f64;
    let size: (u32, u32) = (1000, 520);
    let mut buf = vec![0u8; size.0 as usize * size.1 as usize * 3];
    {
        let root = BitMapBackend::with_buffer(&mut buf, size).into_drawing_area();
        root.fill(&WHITE).map_err(|e| out_err(path, e))?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 18))
            .margin(14)
            .x_label_area_size(42)
            .y_label_area_size(62)
            .build_cartesian_2d(0.0..dmax, floor - 0.3..0.5)
            .map_err(|e| out_err(path, e))?;
        let fmt_log = |v: &f64| if v.round() <= floor { "0".to_string() } else { format!("1e{}", v.round() as i64) };
        let fmt_x = |v: &f64| format!("{}", v.round() as i64);
        chart
            .configure_mesh()
            .x_label_formatter(&fmt_x)
            .x_desc("L∞ distance of the perturbed input from the output pixel (px)")
            .y_desc("|Δ logit| / max (exact 0 on the bottom line)")
            .y_labels(14)
            .y_label_formatter(&fmt_log)
            .label_style(("sans-serif", 13))
            .light_line_style(RGBColor(235, 235, 235))
            .draw()
            .map_err(|e| out_err(path, e))?;
        let vline = |x: f64, color: RGBColor| PathElement::new(vec![(x, floor - 0.3), (x, 0.5)], color.stroke_width(2));
        let t = &erf.theory;
        let reach = t.reach_before.max(t.reach_after) as f64;
        chart
            .draw_series(std::iter::once(vline(reach, RED)))
            .map_err(|e| out_err(path, e))?
            .label(format!("theoretical reach {reach} px"))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], RED.stroke_width(2)));
        let halo = t.exact_halo as f64;
        chart
            .draw_series(std::iter::once(vline(halo, COLORS[2])))
            .map_err(|e| out_err(path, e))?
            .label(format!("exact halo {halo} px"))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], COLORS[2].stroke_width(2)));
        for (i, (name, f)) in [
            ("max over the ring", (|r: &crate::erf::Ring| r.max_logit) as fn(&crate::erf::Ring) -> f64),
            ("mean over the ring", |r: &crate::erf::Ring| r.mean_logit),
        ]
        .into_iter()
        .enumerate()
        {
            let color = COLORS[i];
            let pts: Vec<(f64, f64)> =
                erf.profile.iter().filter(|r| r.cells > 0).map(|r| (r.distance as f64, rel(f(r)))).collect();
            chart
                .draw_series(LineSeries::new(pts, color.stroke_width(2)))
                .map_err(|e| out_err(path, e))?
                .label(name)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2)));
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font(("sans-serif", 13))
            .draw()
            .map_err(|e| out_err(path, e))?;
        root.present().map_err(|e| out_err(path, e))?;
    }
    save_png(path, size, &buf)
}
