//! The tile grid of the exactness contract: output tiles of T x T (the last ones clipped) stride
//! across the image padded to a multiple of A; each tile's input window adds the halo on every
//! side, clipped to the padded image. Tile sizes and halos must be multiples of A so that every
//! window starts on the pooling grid.

use crate::error::{Error, Result};

/// A size on the command line and in reports: width x height, as image tools write it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Size {
    pub width: usize,
    pub height: usize,
}

impl Size {
    /// (rows, columns): the order of tensors and the tile grid.
    pub fn hw(self) -> (usize, usize) {
        (self.height, self.width)
    }
    /// From (rows, columns).
    pub fn from_hw((height, width): (usize, usize)) -> Size {
        Size { width, height }
    }
    pub fn is_square(self) -> bool {
        self.width == self.height
    }
}

impl std::fmt::Display for Size {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}x{}", self.width, self.height)
    }
}

/// The one parser of sizes given on the command line (`--tile`, `--window`, `--image`, `--synth`,
/// `synth:WxH`): `N` (a square) or `WxH`, width first (`x`, `X` or `×`; spaces around the numbers
/// allowed). Both sides at least 1. `what` names the option in the error (exit code 2).
pub fn parse_size(what: &str, s: &str) -> Result<Size> {
    let bad = || Error::Usage(format!("{what} '{s}': expected N or WxH (width x height, e.g. 1024x768), sizes >= 1"));
    let num = |v: &str| v.trim().parse::<usize>().ok().filter(|&n| n > 0).ok_or_else(bad);
    match s.split_once(['x', 'X', '×']) {
        Some((w, h)) => Ok(Size { width: num(w)?, height: num(h)? }),
        None => {
            let n = num(s)?;
            Ok(Size { width: n, height: n })
        }
    }
}

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

/// A grid is the product of its row bands and its column bands, so it is kept as those two lists:
/// O(rows + cols) memory however many tiles it has (a 100000 x 100000 image at the smallest tile
/// has millions), and each tile is computed when asked for.
#[derive(Clone, Debug)]
pub struct TileGrid {
    /// (start, length) of each row band and column band of output, and of its window.
    ys: Vec<Band>,
    xs: Vec<Band>,
    pub rows: usize,
    pub cols: usize,
    pub halo: usize,
    /// The padded image the grid covers.
    pub padded_h: usize,
    pub padded_w: usize,
}

#[derive(Clone, Copy, Debug)]
struct Band {
    start: usize,
    len: usize,
    win_start: usize,
    win_len: usize,
}

impl Band {
    fn all(len: usize, tile: usize, offset: usize, halo: usize) -> Vec<Band> {
        starts(len, tile, offset)
            .into_iter()
            .map(|(start, n)| {
                let win_start = start.saturating_sub(halo);
                let win_end = (start + n).saturating_add(halo).min(len);
                Band { start, len: n, win_start, win_len: win_end - win_start }
            })
            .collect()
    }
}

pub fn round_up(v: usize, a: usize) -> usize {
    v.div_ceil(a) * a
}

pub fn gcd(a: usize, b: usize) -> usize {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// The least common multiple (`a`, `b` > 0): tiles that are multiples of both A and an output
/// format's block size.
pub fn lcm(a: usize, b: usize) -> usize {
    a / gcd(a, b) * b
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
            return Err(Error::Tiling(format!("padded image {padded_w}x{padded_h} is not a multiple of {align}")));
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
        let ys = Band::all(padded_h, tile_h, off_y, halo);
        let xs = Band::all(padded_w, tile_w, off_x, halo);
        TileGrid { rows: ys.len(), cols: xs.len(), ys, xs, halo, padded_h, padded_w }
    }

    /// Number of tiles.
    pub fn len(&self) -> usize {
        self.rows * self.cols
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Tile `i`, row by row.
    pub fn tile(&self, i: usize) -> Tile {
        let (y, x) = (self.ys[i / self.cols], self.xs[i % self.cols]);
        Tile {
            y0: y.start,
            x0: x.start,
            h: y.len,
            w: x.len,
            win_y0: y.win_start,
            win_x0: x.win_start,
            win_h: y.win_len,
            win_w: x.win_len,
        }
    }

    /// Every tile, row by row.
    pub fn tiles(&self) -> impl Iterator<Item = Tile> + '_ {
        (0..self.len()).map(|i| self.tile(i))
    }

    /// The distinct window shapes (h, w): few (interior, edges, corner), found from the bands.
    pub fn window_shapes(&self) -> Vec<(usize, usize)> {
        let distinct = |b: &[Band]| {
            let mut v: Vec<usize> = b.iter().map(|b| b.win_len).collect();
            v.sort_unstable();
            v.dedup();
            v
        };
        let (hs, ws) = (distinct(&self.ys), distinct(&self.xs));
        hs.iter().flat_map(|&h| ws.iter().map(move |&w| (h, w))).collect()
    }

    /// Input pixels over all windows.
    pub fn window_pixels(&self) -> usize {
        let sum = |b: &[Band]| b.iter().map(|b| b.win_len).sum::<usize>();
        sum(&self.ys) * sum(&self.xs)
    }

    /// Input pixels processed per output pixel: how much the halos cost.
    pub fn overhead(&self) -> f64 {
        let out = self.ys.iter().map(|b| b.len).sum::<usize>() * self.xs.iter().map(|b| b.len).sum::<usize>();
        self.window_pixels() as f64 / out.max(1) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_width_by_height() {
        let size = |s| parse_size("--tile", s);
        assert_eq!(size("512").unwrap(), Size { width: 512, height: 512 });
        assert_eq!(size("256x512").unwrap(), Size { width: 256, height: 512 });
        assert_eq!(size("256x512").unwrap().hw(), (512, 256));
        assert_eq!(size(" 300 X 200 ").unwrap(), Size { width: 300, height: 200 });
        assert_eq!(size("300×200").unwrap(), Size { width: 300, height: 200 });
        assert_eq!(size("300x200").unwrap().to_string(), "300x200");
        assert_eq!(Size::from_hw((2, 3)), Size { width: 3, height: 2 });
        assert!(size("7").unwrap().is_square() && !size("7x8").unwrap().is_square());
        for bad in [
            "",
            "x",
            "0",
            "0x5",
            "5x0",
            "5x",
            "x5",
            "-3",
            "5x-3",
            "1.5",
            "auto",
            "5x5x5",
            "5*5",
            "5,5",
            "99999999999999999999999",
        ] {
            let e = size(bad).expect_err(bad);
            assert!(matches!(e, Error::Usage(_)), "{bad}: {e:?}");
            assert_eq!(e.exit_code(), 2, "{bad}");
            let msg = e.to_string();
            assert!(msg.starts_with(&format!("--tile '{bad}'")) && msg.contains("WxH (width x height"), "{msg}");
        }
    }

    /// The grid as every tile written out: what the bands must reproduce.
    fn every_tile(ph: usize, pw: usize, th: usize, tw: usize, halo: usize, oy: usize, ox: usize) -> Vec<Tile> {
        let mut v = Vec::new();
        for (y0, h) in starts(ph, th, oy) {
            for (x0, w) in starts(pw, tw, ox) {
                let (wy0, wx0) = (y0.saturating_sub(halo), x0.saturating_sub(halo));
                let (wy1, wx1) = ((y0 + h + halo).min(ph), (x0 + w + halo).min(pw));
                v.push(Tile { y0, x0, h, w, win_y0: wy0, win_x0: wx0, win_h: wy1 - wy0, win_w: wx1 - wx0 });
            }
        }
        v
    }

    #[test]
    fn bands_give_every_tile_window_shape_and_pixel_count() {
        let mut r = 0x9E37_79B9u64;
        let mut next = |m: usize| {
            r ^= r << 13;
            r ^= r >> 7;
            r ^= r << 17;
            1 + (r as usize) % m
        };
        for _ in 0..300 {
            let (ph, pw, th, tw, halo) = (next(300), next(300), next(80), next(80), next(60) - 1);
            let (oy, ox) = (next(90) - 1, next(90) - 1);
            let g = TileGrid::with_offset(ph, pw, th, tw, halo, oy, ox);
            let want = every_tile(ph, pw, th, tw, halo, oy, ox);
            assert_eq!(g.tiles().collect::<Vec<_>>(), want);
            assert_eq!(g.len(), want.len());
            let mut shapes: Vec<(usize, usize)> = want.iter().map(|t| (t.win_h, t.win_w)).collect();
            shapes.sort_unstable();
            shapes.dedup();
            let mut got = g.window_shapes();
            got.sort_unstable();
            assert_eq!(got, shapes);
            assert_eq!(g.window_pixels(), want.iter().map(|t| t.win_h * t.win_w).sum::<usize>());
        }
    }
}
