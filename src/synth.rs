//! Procedurally generated cell-like images with ground-truth masks: the demo slide and the demo
//! models' training data come from here.
//!
//! Cells are ellipses on a jittered grid of 32-pixel cells: each pixel's value depends only on the
//! seed and its position (via hashed per-cell parameters), so any window of an arbitrarily large
//! slide can be generated on its own.

use rayon::prelude::*;

use crate::model::weights::SplitMix64;

const CELL: i64 = 32;

#[derive(Clone, Copy)]
struct Blob {
    cx: f64,
    cy: f64,
    a: f64,
    b: f64,
    cos: f64,
    sin: f64,
    brightness: f64,
}

fn hash(seed: u64, gx: i64, gy: i64) -> SplitMix64 {
    let mut r = SplitMix64(
        seed ^ (gx as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (gy as u64).wrapping_mul(0xC2B2_AE3D_27D4_EB4F),
    );
    r.next_u64();
    r
}

fn blob(seed: u64, gx: i64, gy: i64) -> Option<Blob> {
    let mut r = hash(seed, gx, gy);
    if r.uniform() < 0.35 {
        return None;
    }
    let a = 5.0 + 9.0 * r.uniform();
    let b = a * (0.55 + 0.45 * r.uniform());
    let t = std::f64::consts::PI * r.uniform();
    Some(Blob {
        cx: (gx * CELL) as f64 + 4.0 + (CELL as f64 - 8.0) * r.uniform(),
        cy: (gy * CELL) as f64 + 4.0 + (CELL as f64 - 8.0) * r.uniform(),
        a,
        b,
        cos: t.cos(),
        sin: t.sin(),
        brightness: 110.0 + 90.0 * r.uniform(),
    })
}

/// Pixel value (0..255) and label (0 background, 1 cell) of a `w x h` window at `(x0, y0)`.
pub fn generate(seed: u64, x0: i64, y0: i64, w: usize, h: usize) -> (Vec<u8>, Vec<u8>) {
    let mut img = vec![0u8; w * h];
    let mut lab = vec![0u8; w * h];
    // Blobs of every grid cell the window touches, plus a ring of neighbours (a blob reaches at
    // most 16 px from its centre, so only the pixel's own and adjacent cells matter).
    let (gx0, gy0) = (x0.div_euclid(CELL) - 1, y0.div_euclid(CELL) - 1);
    let gw = ((x0 + w as i64).div_euclid(CELL) + 1 - gx0 + 1) as usize;
    let gh = ((y0 + h as i64).div_euclid(CELL) + 1 - gy0 + 1) as usize;
    let grid: Vec<Option<Blob>> =
        (0..gh * gw).map(|i| blob(seed, gx0 + (i % gw) as i64, gy0 + (i / gw) as i64)).collect();
    img.par_chunks_mut(w).zip(lab.par_chunks_mut(w)).enumerate().for_each(|(yy, (irow, lrow))| {
        let yi = y0 + yy as i64;
        let y = yi as f64;
        let gy = (yi.div_euclid(CELL) - gy0) as usize;
        for xx in 0..w {
            let xi = x0 + xx as i64;
            let x = xi as f64;
            let gx = (xi.div_euclid(CELL) - gx0) as usize;
            // Uneven illumination plus per-pixel noise, as in a real scan.
            let mut v = 40.0 + 15.0 * ((x / 377.0).sin() + (y / 291.0).cos());
            let mut inside = false;
            for ny in gy - 1..=gy + 1 {
                for bl in grid[ny * gw + gx - 1..=ny * gw + gx + 1].iter().flatten() {
                    let (dx, dy) = (x - bl.cx, y - bl.cy);
                    if dx.abs() >= 16.0 || dy.abs() >= 16.0 {
                        continue;
                    }
                    let u = (dx * bl.cos + dy * bl.sin) / bl.a;
                    let t = (-dx * bl.sin + dy * bl.cos) / bl.b;
                    let d = (u * u + t * t).sqrt();
                    // Soft edge about 1.5 px wide; a darker nucleus inside.
                    let edge = 1.0 / (1.0 + ((d - 1.0) * bl.a / 0.8).exp());
                    let nucleus = if d < 0.45 { 0.7 } else { 1.0 };
                    v = f64::max(v, 40.0 + (bl.brightness - 40.0) * edge * nucleus);
                    inside |= d < 1.0;
                }
            }
            let mut r = hash(seed ^ 0xA5A5, xi, yi);
            let noise = (r.uniform() + r.uniform() + r.uniform() - 1.5) * 24.0;
            irow[xx] = (v + noise).round().clamp(0.0, 255.0) as u8;
            lrow[xx] = inside as u8;
        }
    });
    (img, lab)
}
