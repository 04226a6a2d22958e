//! The multiscale pyramid of a finished OME-Zarr output, so viewers open it at any zoom at once:
//! level k+1 is level k reduced 2x2 -> 1, the most frequent label (ties to the smaller) for labels
//! and the mean for probabilities, until the image fits in one 512-px chunk. Built right after the
//! last tile, from the store itself, a band of rows at a time, so memory stays bounded by a few
//! bands whatever the image size. Each level is a pure function of the one above: shards, resumed
//! runs and whole-image runs all give the same pyramid.

use std::path::Path;
use std::sync::Arc;

use zarrs::array::{Array, ArraySubset};
use zarrs::filesystem::FilesystemStore as Store;

use super::{OutSpec, OutType};
use crate::error::{Error, Result, Side};

/// Levels are added until both sides are at most this.
pub const SMALLEST_SIDE: usize = 512;

/// Rows of the level being read per band (a multiple of 2), at most.
const BAND_ROWS: usize = 512;

/// Values per band at most (8 MiB as f32), so a wide image of many classes stays bounded too: the
/// pyramid runs after the tiles, inside the margin `tests/slide.rs` allows over the budget.
const BAND_VALUES: usize = 2 << 20;

/// The (height, width) of every level, level 0 first.
pub fn level_sizes(height: usize, width: usize) -> Vec<(usize, usize)> {
    let mut sizes = vec![(height, width)];
    while let Some(&(h, w)) = sizes.last() {
        if h <= SMALLEST_SIDE && w <= SMALLEST_SIDE {
            break;
        }
        sizes.push((h.div_ceil(2), w.div_ceil(2)));
    }
    sizes
}

/// 2x2 -> 1 of `values` (c x h x w, C order) into c x ceil(h/2) x ceil(w/2); edge blocks have
/// fewer than four values. Labels: the most frequent value, ties to the smaller; else the mean.
pub fn reduce(values: &[f32], c: usize, h: usize, w: usize, labels: bool) -> Vec<f32> {
    let (oh, ow) = (h.div_ceil(2), w.div_ceil(2));
    let mut out = Vec::with_capacity(c * oh * ow);
    for ch in 0..c {
        let plane = &values[ch * h * w..(ch + 1) * h * w];
        for y in 0..oh {
            for x in 0..ow {
                let mut block = [0f32; 4];
                let mut n = 0;
                for dy in 0..2 {
                    for dx in 0..2 {
                        let (yy, xx) = (2 * y + dy, 2 * x + dx);
                        if yy < h && xx < w {
                            block[n] = plane[yy * w + xx];
                            n += 1;
                        }
                    }
                }
                let block = &mut block[..n];
                out.push(if labels {
                    block.sort_by(f32::total_cmp);
                    // Sorted: the longest run, the first (smallest) of equal runs.
                    let (mut best, mut best_len, mut i) = (block[0], 0, 0);
                    while i < n {
                        let j = (i..n).find(|&j| block[j] != block[i]).unwrap_or(n);
                        if j - i > best_len {
                            (best, best_len) = (block[i], j - i);
                        }
                        i = j;
                    }
                    best
                } else {
                    // Summed in a fixed order: the same bits whichever run wrote level 0.
                    block.iter().sum::<f32>() / n as f32
                });
            }
        }
    }
    out
}

fn read_f32(array: &Array<Store>, subset: &ArraySubset, out: OutType) -> Result<Vec<f32>, zarrs::array::ArrayError> {
    Ok(match out {
        OutType::U8 => array.retrieve_array_subset::<Vec<u8>>(subset)?.into_iter().map(f32::from).collect(),
        OutType::U16 => array.retrieve_array_subset::<Vec<u16>>(subset)?.into_iter().map(f32::from).collect(),
        OutType::F16 => array.retrieve_array_subset::<Vec<half::f16>>(subset)?.into_iter().map(f32::from).collect(),
        OutType::F32 => array.retrieve_array_subset::<Vec<f32>>(subset)?,
    })
}

/// Write levels 1.. of the store at `path`, whose level 0 (`/0`) is complete, and return the
/// level sizes (for the multiscales metadata).
pub fn build(path: &Path, spec: &OutSpec) -> Result<Vec<(usize, usize)>> {
    let fail = |what: &'static str| move |e: zarrs::array::ArrayError| Error::codec(Side::Output, path, what, e);
    let store = Arc::new(Store::new(path).map_err(|e| Error::codec(Side::Output, path, "cannot open", e))?);
    let sizes = level_sizes(spec.height, spec.width);
    let labels = matches!(spec.out, OutType::U8 | OutType::U16);
    let c = spec.channels as u64;
    let mut above =
        Array::open(store.clone(), "/0").map_err(|e| Error::codec(Side::Output, path, "cannot open level 0", e))?;
    for (k, win) in sizes.windows(2).enumerate() {
        let ((h, w), (oh, ow)) = (win[0], win[1]);
        let chunk = (spec.chunk as u64).min(oh.max(ow) as u64).max(1);
        let level = super::zarr_io::create_array(&store, path, &format!("/{}", k + 1), spec, (oh, ow), chunk)?;
        let band_rows = (BAND_VALUES / (w * spec.channels).max(1)).clamp(2, BAND_ROWS) & !1;
        for y0 in (0..h).step_by(band_rows) {
            let rows = band_rows.min(h - y0);
            let band = ArraySubset::new_with_ranges(&[0..c, y0 as u64..(y0 + rows) as u64, 0..w as u64]);
            let v = read_f32(&above, &band, spec.out).map_err(fail("cannot read a level"))?;
            let r = reduce(&v, spec.channels, rows, w, labels);
            let (oy, orows) = (y0 / 2, rows.div_ceil(2));
            let dst = ArraySubset::new_with_ranges(&[0..c, oy as u64..(oy + orows) as u64, 0..ow as u64]);
            super::zarr_io::store_values(&level, &dst, &r, spec.out).map_err(fail("cannot write a pyramid level"))?;
        }
        above = level;
    }
    Ok(sizes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_take_the_most_frequent_value_and_probabilities_the_mean() {
        // 3x3: blocks [1,2,2,3] -> 2, [1,1] (edge) -> 1, [4,5] -> 4 (tie to the smaller), [9] -> 9.
        let v = [1.0, 2.0, 1.0, 2.0, 3.0, 1.0, 4.0, 5.0, 9.0];
        assert_eq!(reduce(&v, 1, 3, 3, true), vec![2.0, 1.0, 4.0, 9.0]);
        let p = [0.0, 1.0, 0.5, 0.5];
        assert_eq!(reduce(&p, 1, 2, 2, false), vec![0.5]);
    }

    #[test]
    fn levels_halve_until_one_chunk_holds_the_image() {
        assert_eq!(level_sizes(300, 200), vec![(300, 200)]);
        assert_eq!(level_sizes(2000, 1025), vec![(2000, 1025), (1000, 513), (500, 257)]);
    }
}
