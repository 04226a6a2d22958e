//! The tile for a memory budget, with its exact halo: the largest that fits, and the one
//! `--tile auto` takes, the smallest whose compute is within [`AUTO_COMPUTE_SLACK`] of the least.
//!
//! Peak memory of a tiled run = weights + the arena of the largest window the grid produces +
//! the backend's workspace and staging for it, counted for the graph the backend really runs. Tiles are multiples of A; the search finds a tile that fits
//! while the next larger aligned one does not, square first, then stretched along the image's
//! longer side when the image is narrower than the square tile.
//!
//! Compute is deterministic: the input pixels of every window of the grid (tile + halo on each
//! side, clipped to the image) over the pixels of the padded image. It falls quickly as tiles grow
//! past a few halos and then hardly at all, while a window's memory grows with its area; so
//! `--tile auto` weighs every candidate tile that fits (the squares, multiples of the step, up to
//! the largest, clipped to the image and then stretched along its longer side, as the search
//! grows them) and takes the smallest within the slack of the least compute among them.

use std::borrow::Cow;

use serde::Serialize;

use super::arena::ArenaPlan;
use crate::error::{Error, Result};
use crate::graph::Graph;
use crate::model::Model;
use crate::tile_grid::{TileGrid, round_up};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, Serialize)]
pub enum Precision {
    /// f32 storage and true f32 arithmetic (no TF32, no FMA contraction).
    #[default]
    F32,
    /// f16 storage, f32 accumulation; convolutions on tensor cores (CUDA only).
    F16,
    /// Convolutions in bf16 with f32 accumulation, activations kept in f32 (CPU only: AVX512-BF16
    /// where the CPU has it, else a portable path).
    Bf16,
}

impl Precision {
    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::F16 => "f16",
            Precision::Bf16 => "bf16",
        }
    }

    pub fn bytes(self) -> usize {
        match self {
            Precision::F32 => 4,
            Precision::F16 | Precision::Bf16 => 2,
        }
    }
}

/// How one executor's memory grows with the window it runs: what the planner counts for it.
/// Each backend implements this for itself (`cpu::CpuMemory`, `cuda::DeviceMemory`); the planner
/// knows no backend, only this.
pub trait MemoryModel: Sync {
    /// Element size of activations and weights.
    fn precision(&self) -> Precision;
    /// The graph the executor really runs for `graph` (a backend may lower it: CUDA splits fused
    /// pre-ops into their own nodes); its arena is the one planned.
    fn lower<'g>(&self, graph: &'g Graph) -> Cow<'g, Graph>;
    /// Peak memory of one forward pass of the lowered `graph` with `plan`.
    fn peak(&self, graph: &Graph, plan: &ArenaPlan) -> Peak;
}

/// `--tile auto` takes the smallest tile whose compute (input pixels of all windows over the
/// image's pixels) is at most `1 + AUTO_COMPUTE_SLACK` times the least compute of the tiles that
/// fit the budget. Why 5%: past a few halos a tile's compute falls by a few percent per doubling
/// of its side while its window's memory grows fourfold, and the memory costs time the compute
/// count does not show (first-touch page faults, a larger resident set: on an 8192x8192 slide the
/// demo U-Net's largest tile under the default 4 GiB, 4608x4608 for a TIFF, took 3.6 GB and 6.5 s
/// of system time for 4.7% less compute than 2048x2048 tiles, which took 0.85 GB and 2.2 s in the
/// same user time; docs/perf.md). 5% keeps the extra arithmetic near a run's noise while dropping
/// the window's memory several times over.
pub const AUTO_COMPUTE_SLACK: f64 = 0.05;

/// Windows in flight in the streaming runner: one queued between each pair of its three threads
/// (reader -> compute -> writer), beside the one each thread holds. One is enough for the threads
/// to overlap; every extra slot is another window the memory budget has to hold.
pub const QUEUE_DEPTH: usize = 1;

/// Host bytes of the tiles in flight for windows of `h x w`, `in_c` input and `out_c` output
/// channels (f32): at most four input windows (the reader's window and, for a window that
/// crosses the image border, the part it pastes from; one queued; one being computed) and four
/// window-sized outputs (the network's output and its cropped tile in the compute thread, one
/// queued, one being written). Output tiles are counted at the window's size, an upper bound.
/// A memory model of a host executor counts these with its arena.
pub fn in_flight_bytes(in_c: usize, out_c: usize, h: usize, w: usize) -> usize {
    let (inputs, outputs) = (3 + QUEUE_DEPTH, 3 + QUEUE_DEPTH);
    // Saturating: a window no machine could hold is then simply over every budget.
    (inputs * in_c + outputs * out_c).saturating_mul(h).saturating_mul(w).saturating_mul(std::mem::size_of::<f32>())
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Peak {
    pub arena_bytes: usize,
    pub workspace_bytes: usize,
    pub weight_bytes: usize,
    /// Buffers outside the arena that hold windows on their way in and out: for the CPU model,
    /// the windows and outputs in flight between the streaming pipeline's threads; for the device,
    /// the input and output staging buffers of the pipelined path.
    pub staging_bytes: usize,
}

impl Peak {
    pub fn total(&self) -> usize {
        self.arena_bytes + self.workspace_bytes + self.weight_bytes + self.staging_bytes
    }
}

/// Memory of one forward pass of `graph` over an `h x w` window, by the executor `mem` describes.
pub fn peak(graph: &Graph, h: usize, w: usize, mem: &dyn MemoryModel) -> Result<Peak> {
    let graph = mem.lower(graph);
    Ok(mem.peak(&graph, &ArenaPlan::new(&graph, h, w)?))
}

#[derive(Clone, Debug, Serialize)]
pub struct TileChoice {
    pub tile_h: usize,
    pub tile_w: usize,
    pub halo: usize,
    /// The largest input window of the grid.
    pub window_h: usize,
    pub window_w: usize,
    pub peak: Peak,
    pub tiles: usize,
    /// ((T + 2H) / T)^2 for an interior tile.
    pub halo_overhead: f64,
    /// Input pixels processed over all windows / pixels of the padded image: compute relative to a
    /// budget large enough for the whole image in one pass.
    pub relative_compute: f64,
    /// How many windows of this size would fit at once (a batch), at most the number of tiles.
    pub batch: usize,
}

/// What `--tile auto` picks ([`TilePlanner::choose_auto`]), and what it was weighed against.
#[derive(Clone, Debug, Serialize)]
pub struct AutoChoice {
    /// The smallest candidate tile within [`AUTO_COMPUTE_SLACK`] of the least compute.
    pub choice: TileChoice,
    /// The largest tile that fits ([`TilePlanner::choose`]).
    pub largest: TileChoice,
    /// The least compute (`relative_compute`) among the candidates that fit.
    pub least_compute: f64,
    /// How many candidate tiles fit and were weighed.
    pub candidates: usize,
}

/// Plans for one image under one budget.
pub struct TilePlanner<'a> {
    pub model: &'a Model,
    /// The graph the backend runs ([`MemoryModel::lower`]).
    graph: Cow<'a, Graph>,
    /// The arena plan at A x A, scaled to every window size asked about.
    unit: ArenaPlan,
    pub mem: &'a dyn MemoryModel,
    pub padded_h: usize,
    pub padded_w: usize,
    /// Tiles are multiples of this: A, or a multiple of it an output format needs (TIFF: 16).
    pub step: usize,
}

impl<'a> TilePlanner<'a> {
    /// Tiles that are also multiples of `m` (e.g. 16 for TIFF output tiles).
    pub fn with_multiple(mut self, m: usize) -> Self {
        self.set_multiple(m);
        self
    }

    /// As [`Self::with_multiple`], in place: retrying with another multiple keeps the unit plan.
    pub fn set_multiple(&mut self, m: usize) {
        self.step = crate::tile_grid::lcm(self.model.align(), m.max(1));
    }

    pub fn new(model: &'a Model, image_h: usize, image_w: usize, mem: &'a dyn MemoryModel) -> Result<Self> {
        let a = model.align();
        let graph = mem.lower(&model.graph);
        let unit = ArenaPlan::new(&graph, a, a)?;
        Ok(TilePlanner {
            model,
            graph,
            unit,
            mem,
            padded_h: round_up(image_h, a),
            padded_w: round_up(image_w, a),
            step: a,
        })
    }

    /// The graph whose memory is planned: the model's, or its split form for a device.
    pub fn graph(&self) -> &Graph {
        &self.graph
    }

    /// Memory of one forward pass over an `h x w` window (multiples of A).
    pub fn window_peak(&self, h: usize, w: usize) -> Result<Peak> {
        let plan = self.unit.scaled_to(&self.graph, h, w)?;
        Ok(self.mem.peak(&self.graph, &plan))
    }

    fn grid(&self, th: usize, tw: usize) -> Result<TileGrid> {
        let a = self.model.align();
        TileGrid::new(self.padded_h, self.padded_w, th, tw, self.model.exact_halo(), a)
    }

    /// Peak memory of the grid with tiles `th x tw`: the largest over its distinct window shapes.
    pub fn grid_peak(&self, th: usize, tw: usize) -> Result<(Peak, usize, usize)> {
        let grid = self.grid(th, tw)?;
        let shapes = grid.window_shapes();
        let mut worst: Option<(Peak, usize, usize)> = None;
        for (h, w) in shapes {
            let p = self.window_peak(h, w)?;
            if worst.is_none_or(|(q, _, _)| p.total() > q.total()) {
                worst = Some((p, h, w));
            }
        }
        Ok(worst.expect("a grid has tiles"))
    }

    pub fn fits(&self, th: usize, tw: usize, budget: usize) -> Result<bool> {
        Ok(self.grid_peak(th, tw)?.0.total() <= budget)
    }

    /// Largest multiple of the step in [lo, hi] for which `ok` holds, given that it holds at `lo`.
    fn search(&self, lo: usize, hi: usize, ok: &dyn Fn(usize) -> Result<bool>) -> Result<usize> {
        let a = self.step;
        if ok(hi)? {
            return Ok(hi);
        }
        // In units of A: ok(good·A) holds, ok(bad·A) does not.
        let (mut good, mut bad) = (lo / a, hi / a);
        while bad - good > 1 {
            let mid = (good + bad) / 2;
            if ok(mid * a)? {
                good = mid;
            } else {
                bad = mid;
            }
        }
        Ok(good * a)
    }

    /// The largest tile that fits `budget` bytes.
    pub fn choose(&self, budget: usize) -> Result<TileChoice> {
        let a = self.step;
        let (hp, wp) = (self.padded_h, self.padded_w);
        if !self.fits(a, a, budget)? {
            let (p, h, w) = self.grid_peak(a, a)?;
            return Err(Error::OutOfMemory {
                what: format!(
                    "even the smallest tile ({a}x{a}, window {w}x{h}; weights {} B, arena {} B, workspace {} B, \
                     windows in flight / staging {} B) exceeds the budget of {budget} B",
                    p.weight_bytes, p.arena_bytes, p.workspace_bytes, p.staging_bytes
                ),
                bytes: p.total(),
            });
        }
        let side = self.search(a, hp.max(wp), &|t| self.fits(t.min(hp), t.min(wp), budget))?;
        let (mut th, mut tw) = (side.min(hp), side.min(wp));
        // Narrow images: a tile spanning the whole short side can grow along the long one.
        if th == hp && tw < wp {
            tw = self.search(tw, wp, &|t| self.fits(th, t, budget))?;
        } else if tw == wp && th < hp {
            th = self.search(th, hp, &|t| self.fits(t, tw, budget))?;
        }
        self.describe(th, tw, budget)
    }

    /// The tiles `--tile auto` weighs below `largest` (rows, columns), smallest first, `largest`
    /// last: squares of side k x step clipped to the padded image (so along a narrow image's
    /// longer side they grow as the search does), each once, none larger than `largest` in
    /// either side. Whether they fit is the caller's to check.
    pub fn candidates(&self, largest: (usize, usize)) -> Vec<(usize, usize)> {
        let (hp, wp) = (self.padded_h, self.padded_w);
        let mut out: Vec<(usize, usize)> = Vec::new();
        let mut s = self.step;
        while s < hp.max(wp) + self.step {
            let clipped = (s.min(hp), s.min(wp));
            if clipped.0 > largest.0 || clipped.1 > largest.1 {
                break;
            }
            // Unless the tile is the whole image, a side clipped to the image is rounded up to the
            // step again: tiles beside it must stay multiples of it (TIFF tiles of 16 or 256 px),
            // and the grid clips its last windows to the image anyway.
            let t = if clipped == (hp, wp) {
                clipped
            } else {
                (round_up(clipped.0, self.step), round_up(clipped.1, self.step))
            };
            if out.last() != Some(&t) {
                out.push(t);
            }
            s += self.step;
        }
        if out.last() != Some(&largest) {
            out.retain(|&t| t != largest);
            out.push(largest);
        }
        out
    }

    /// Input pixels of every window of the grid of `th x tw` tiles over the padded image's pixels
    /// (1.0: the whole image in one pass).
    pub fn relative_compute(&self, th: usize, tw: usize) -> Result<f64> {
        Ok(self.grid(th, tw)?.window_pixels() as f64 / (self.padded_h * self.padded_w) as f64)
    }

    /// What `--tile auto` takes: among the candidate tiles that fit `budget` ([`Self::candidates`]
    /// up to [`Self::choose`]'s largest), the smallest whose compute is within
    /// [`AUTO_COMPUTE_SLACK`] of the least. Compute is counted, not timed, so the choice is
    /// the same on every run.
    pub fn choose_auto(&self, budget: usize) -> Result<AutoChoice> {
        let largest = self.choose(budget)?;
        let top = (largest.tile_h, largest.tile_w);
        let mut weighed = Vec::new();
        for t in self.candidates(top) {
            if t == top || self.fits(t.0, t.1, budget)? {
                weighed.push((t, self.relative_compute(t.0, t.1)?));
            }
        }
        let least = weighed.iter().map(|&(_, c)| c).fold(f64::INFINITY, f64::min);
        let &((th, tw), _) =
            weighed.iter().find(|&&(_, c)| c <= least * (1.0 + AUTO_COMPUTE_SLACK)).expect("the least is weighed");
        let choice = if (th, tw) == top { largest.clone() } else { self.describe(th, tw, budget)? };
        Ok(AutoChoice { choice, largest, least_compute: least, candidates: weighed.len() })
    }

    pub fn describe(&self, th: usize, tw: usize, budget: usize) -> Result<TileChoice> {
        let grid = self.grid(th, tw)?;
        let (p, window_h, window_w) = self.grid_peak(th, tw)?;
        let halo = self.model.exact_halo();
        let win = grid.window_pixels();
        let per_window = p.arena_bytes + p.workspace_bytes + p.staging_bytes;
        let batch = budget.saturating_sub(p.weight_bytes).checked_div(per_window).unwrap_or(1).max(1);
        Ok(TileChoice {
            tile_h: th,
            tile_w: tw,
            halo,
            window_h,
            window_w,
            peak: p,
            tiles: grid.len(),
            halo_overhead: ((th + 2 * halo) as f64 / th as f64) * ((tw + 2 * halo) as f64 / tw as f64),
            relative_compute: win as f64 / (self.padded_h * self.padded_w) as f64,
            batch: batch.min(grid.len()),
        })
    }
}

/// "4GiB", "512MiB", "1.5GB", "2e9", "1000000": bytes.
pub fn parse_bytes(s: &str) -> Result<usize> {
    let t = s.trim();
    // The unit is the trailing run of letters, so an exponent stays with the number: 2e9, 1.5e3MB.
    let split = t.trim_end_matches(|c: char| c.is_ascii_alphabetic()).len();
    let (num, unit) = t.split_at(split);
    let v: f64 = num.trim().parse().map_err(|_| Error::Usage(format!("'{s}' is not a size (e.g. 4GiB, 512MiB)")))?;
    let mult = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kb" => 1e3,
        "kib" => 1024.0,
        "m" | "mb" => 1e6,
        "mib" => 1024.0 * 1024.0,
        "g" | "gb" => 1e9,
        "gib" => 1024.0 * 1024.0 * 1024.0,
        "t" | "tb" => 1e12,
        "tib" => 1024f64.powi(4),
        _ => {
            return Err(Error::Usage(format!(
                "'{s}': unknown unit '{unit}' (use B, KiB, MiB, GiB, TiB, KB, MB, GB, TB)"
            )));
        }
    };
    if !(v.is_finite() && v > 0.0) {
        return Err(Error::Usage(format!("'{s}': a size must be positive")));
    }
    Ok((v * mult) as usize)
}

/// Bytes of memory available to this process now (Linux: MemAvailable, and a cgroup limit or what
/// `ulimit -v` / `ulimit -d` leave this process, if lower).
pub fn available_host_memory() -> Option<usize> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kb: usize =
        meminfo.lines().find(|l| l.starts_with("MemAvailable:"))?.split_whitespace().nth(1)?.parse().ok()?;
    let mut avail = kb * 1024;
    if let Ok(limit) = std::fs::read_to_string("/sys/fs/cgroup/memory.max")
        && let (Ok(limit), Ok(used)) = (
            limit.trim().parse::<usize>(),
            std::fs::read_to_string("/sys/fs/cgroup/memory.current").map(|u| u.trim().parse::<usize>().unwrap_or(0)),
        )
    {
        avail = avail.min(limit.saturating_sub(used));
    }
    Some(avail.min(address_space_headroom().unwrap_or(usize::MAX)))
}

/// What the process may still map under its resource limits (`ulimit -v`: RLIMIT_AS against
/// VmSize; `ulimit -d`: RLIMIT_DATA against VmData), or `None` when neither is set. Past it every
/// allocation fails, and one that cannot fail cleanly aborts the process; so budgets stay inside.
pub fn address_space_headroom() -> Option<usize> {
    let status = std::fs::read_to_string("/proc/self/status").ok();
    let used = |key: &str| -> usize {
        status
            .as_deref()
            .and_then(|s| s.lines().find(|l| l.starts_with(key)))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<usize>().ok())
            .map_or(0, |kb| kb * 1024)
    };
    let limit = |resource| {
        let mut r = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        // SAFETY: getrlimit writes only the struct it is given.
        let ok = unsafe { libc::getrlimit(resource, &mut r) } == 0;
        (ok && r.rlim_cur != libc::RLIM_INFINITY).then_some(r.rlim_cur as usize)
    };
    let room = [
        limit(libc::RLIMIT_AS).map(|l| l.saturating_sub(used("VmSize:"))),
        limit(libc::RLIMIT_DATA).map(|l| l.saturating_sub(used("VmData:"))),
    ];
    room.into_iter().flatten().min()
}

#[cfg(test)]
mod tests {
    use super::parse_bytes;

    #[test]
    fn sizes_parse_with_units_and_exponents() {
        for (s, want) in [
            ("4GiB", 4usize << 30),
            ("512MiB", 512 << 20),
            ("2e9", 2_000_000_000),
            ("1.5e3MB", 1_500_000_000),
            ("100", 100),
        ] {
            assert_eq!(parse_bytes(s).unwrap(), want, "{s}");
        }
        for bad in ["", "GiB", "-1GiB", "0", "4 parsecs", "nan"] {
            assert!(parse_bytes(bad).is_err(), "{bad}");
        }
    }
}
