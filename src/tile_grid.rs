//! The tile grid of the exactness contract: output tiles of T x T (the last ones clipped) stride
//! across the image padded to a multiple of A; each tile's input window adds the halo on every
//! side, clipped to the padded image. Tile sizes and halos must be multiples of A so that every
//! window starts on the pooling grid.

use crate::error::{Error, Result};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tile {
    /// Output region (padded-image coordinates).
    pub y0: usize,
    pub x0: usize,
    pub h: usize,
    pub w: usize,
    /// Input window.
    pub win_y0: usize,
    pub win_x0: usize,
    pub win_h: usize,
    pub win_w: usize,
}

impl Tile {
    /// The tile size an out-of-memory retry uses: half of this tile's sides, multiples of `a`.
    pub fn retry_size(&self, a: usize) -> (usize, usize) {
        ((self.h / 2).max(a) / a * a, (self.w / 2).max(a) / a * a)
    }

    /// This tile's output region cut into tiles of at most `th x tw`, each with its window (halo
    /// `halo`, clipped to the padded image `ph x pw`), row by row.
    pub fn split(&self, th: usize, tw: usize, halo: usize, ph: usize, pw: usize) -> Vec<Tile> {
        let mut parts = Vec::new();
        for y0 in (self.y0..self.y0 + self.h).step_by(th) {
            for x0 in (self.x0..self.x0 + self.w).step_by(tw) {
                let (h, w) = (th.min(self.y0 + self.h - y0), tw.min(self.x0 + self.w - x0));
                let (wy0, wx0) = (y0.saturating_sub(halo), x0.saturating_sub(halo));
                let (wy1, wx1) = ((y0 + h + halo).min(ph), (x0 + w + halo).min(pw));
                parts.push(Tile { y0, x0, h, w, win_y0: wy0, win_x0: wx0, win_h: wy1 - wy0, win_w: wx1 - wx0 });
            }
        }
        parts
    }
}

#[derive(Clone, Debug)]
pub struct TileGrid {
    pub tiles: Vec<Tile>,
    pub rows: usize,
    pub cols: usize,
    pub halo: usize,
}

pub fn round_up(v: usize, a: usize) -> usize {
    v.div_ceil(a) * a
}

fn starts(len: usize, tile: usize, offset: usize) -> Vec<(usize, usize)> {
    let mut bounds = vec![0];
    let mut p = if offset.is_multiple_of(tile) { tile } else { offset % tile };
    while p < len {
        bounds.push(p);
        p += tile;
    }
    bounds.push(len);
    bounds.windows(2).map(|b| (b[0], b[1] - b[0])).collect()
}

impl TileGrid {
    /// The grid the exactness contract allows; refuses sizes that would break it.
    pub fn new(
        padded_h: usize,
        padded_w: usize,
        tile_h: usize,
        tile_w: usize,
        halo: usize,
        align: usize,
    ) -> Result<TileGrid> {
        for (what, v) in [("tile height", tile_h), ("tile width", tile_w)] {
            if v == 0 || v % align != 0 {
                return Err(Error::Tiling(format!(
                    "{what} {v} is not a positive multiple of the model's down-sampling factor {align}; \
                     try {} (tile origins off that grid put pooling windows on a different phase than \
                     the whole-image run)",
                    round_up(v.max(1), align)
                )));
            }
        }
        if !halo.is_multiple_of(align) {
            return Err(Error::Tiling(format!(
                "halo {halo} is not a multiple of the down-sampling factor {align}; try {}",
                round_up(halo, align)
            )));
        }
        if !padded_h.is_multiple_of(align) || !padded_w.is_multiple_of(align) {
            return Err(Error::Tiling(format!("padded image {padded_h}x{padded_w} is not a multiple of {align}")));
        }
        Ok(TileGrid::with_offset(padded_h, padded_w, tile_h, tile_w, halo, 0, 0))
    }

    /// Any grid, including ones that break the contract (tile boundaries shifted by an offset,
    /// any halo): for experiments that measure what breaking it costs. Windows are clipped to the
    /// image; the runner zero-extends them to a multiple of A.
    pub fn with_offset(
        padded_h: usize,
        padded_w: usize,
        tile_h: usize,
        tile_w: usize,
        halo: usize,
        off_y: usize,
        off_x: usize,
    ) -> TileGrid {
        let ys = starts(padded_h, tile_h, off_y);
        let xs = starts(padded_w, tile_w, off_x);
        let mut tiles = Vec::with_capacity(ys.len() * xs.len());
        for &(y0, h) in &ys {
            for &(x0, w) in &xs {
                let win_y0 = y0.saturating_sub(halo);
                let win_x0 = x0.saturating_sub(halo);
                let win_y1 = (y0 + h).saturating_add(halo).min(padded_h);
                let win_x1 = (x0 + w).saturating_add(halo).min(padded_w);
                tiles.push(Tile { y0, x0, h, w, win_y0, win_x0, win_h: win_y1 - win_y0, win_w: win_x1 - win_x0 });
            }
        }
        TileGrid { tiles, rows: ys.len(), cols: xs.len(), halo }
    }

    /// Input pixels processed per output pixel: how much the halos cost.
    pub fn overhead(&self) -> f64 {
        let win: usize = self.tiles.iter().map(|t| t.win_h * t.win_w).sum();
        let out: usize = self.tiles.iter().map(|t| t.h * t.w).sum();
        win as f64 / out.max(1) as f64
    }
}
