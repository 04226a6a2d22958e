//! Choosing one f16 conv variant per layer signature, once per run.
//!
//! On the first launch of a conv with a new signature (k, cin, cout, h, w, precision), every
//! variant that exists for k is timed with CUDA events on the layer's real buffers (one warm-up
//! launch, then a few timed ones), and the fastest is kept for the rest of the run. The layer's
//! real launch follows, so the output the variants overwrote is written again. Every variant
//! gives the same bits (kernels/conv.cu), so the choice changes speed, never results; tiles of
//! different sizes may run different variants and still join exactly.
//!
//! Choices persist in `autotune-<key>.json` in the kernel cache folder (`compile::cache_dir`),
//! `<key>` a hash of the device name, its architecture and the conv kernels' source, so a new GPU or
//! a changed kernel measures afresh. `SEAMLESS_AUTOTUNE=off` measures nothing and uses
//! [`conv_variants::heuristic`].

use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};
use std::path::PathBuf;
use std::sync::Mutex;

use super::Precision;
use super::compile::{cache_dir, cache_key};
use super::conv_variants::{self, F16Variant};
use super::sources::FAMILIES;
use crate::error::Result;
use crate::graph::Conv2d;

/// How the backend picks f16 conv variants.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TuneMode {
    /// [`conv_variants::heuristic`]; nothing is timed (`SEAMLESS_AUTOTUNE=off`).
    Heuristic,
    /// Time every variant on first encounter; `disk` reads and writes the cache file.
    Measure { disk: bool },
    /// Always this variant where it exists for k, else the heuristic (for tests).
    Fixed(&'static str),
}

impl TuneMode {
    /// From `SEAMLESS_AUTOTUNE`: `off` -> heuristic, anything else (or unset) -> measure, cached.
    pub fn from_env() -> TuneMode {
        match std::env::var("SEAMLESS_AUTOTUNE") {
            Ok(v) if v.eq_ignore_ascii_case("off") => TuneMode::Heuristic,
            _ => TuneMode::Measure { disk: true },
        }
    }
}

/// A conv layer as the tuner tells layers apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvSignature {
    pub k: usize,
    pub cin: usize,
    pub cout: usize,
    pub h: usize,
    pub w: usize,
    pub precision: Precision,
}

impl ConvSignature {
    /// Layer `c` run at `precision` with an `h` x `w` output.
    pub fn new(c: &Conv2d, h: usize, w: usize, precision: Precision) -> ConvSignature {
        ConvSignature { k: c.k, cin: c.cin, cout: c.cout, h, w, precision }
    }

    /// The signature in the cache file (its format predates the `Precision` field: keep it).
    fn key(&self) -> String {
        let ConvSignature { k, cin, cout, h, w, precision } = self;
        format!("k{k} cin{cin} cout{cout} {h}x{w} {}", precision.name())
    }
}

// By hand: the planner's `Precision` does not derive `Hash`. Every field is hashed (the precision
// by its name), so equal signatures hash equally.
impl Hash for ConvSignature {
    fn hash<H: Hasher>(&self, state: &mut H) {
        let ConvSignature { k, cin, cout, h, w, precision } = self;
        (k, cin, cout, h, w, precision.name()).hash(state);
    }
}

#[derive(serde::Serialize, serde::Deserialize, Default)]
struct CacheFile {
    device: String,
    arch: String,
    /// Signature key -> variant tag.
    choices: BTreeMap<String, String>,
}

pub struct Autotune {
    mode: TuneMode,
    device: String,
    arch: String,
    path: Option<PathBuf>,
    choices: Mutex<HashMap<ConvSignature, &'static F16Variant>>,
    /// Read from disk: used when their signature first comes up.
    stored: HashMap<String, &'static F16Variant>,
}

/// Timed launches per variant, after one warm-up.
pub const TIMED_LAUNCHES: usize = 3;

impl Autotune {
    pub fn new(mode: TuneMode, device: &str, arch: &str) -> Autotune {
        let path = match mode {
            TuneMode::Measure { disk: true } => cache_dir().map(|d| d.join(cache_file_name(device, arch))),
            _ => None,
        };
        let stored = path.as_ref().map(|p| read_cache(p, device, arch)).unwrap_or_default();
        Autotune { mode, device: device.into(), arch: arch.into(), path, choices: Mutex::new(HashMap::new()), stored }
    }

    pub fn mode(&self) -> TuneMode {
        self.mode
    }

    /// The variant chosen so far for `sig`, if it has been launched.
    pub fn chosen(&self, sig: &ConvSignature) -> Option<&'static F16Variant> {
        self.lock().get(sig).copied()
    }

    /// The variant for `sig`: the one chosen before in this run, else from the cache file, else
    /// the fastest by `time` (milliseconds per launch; a variant whose timing fails is skipped).
    pub fn choose(
        &self,
        sig: &ConvSignature,
        mut time: impl FnMut(&'static F16Variant) -> Result<f64>,
    ) -> Result<&'static F16Variant> {
        if let Some(v) = self.chosen(sig) {
            return Ok(v);
        }
        let picked = match self.mode {
            TuneMode::Heuristic => conv_variants::heuristic(sig.k, sig.cout),
            TuneMode::Fixed(tag) => conv_variants::by_tag(tag)
                .filter(|v| v.exists_for(sig.k))
                .unwrap_or_else(|| conv_variants::heuristic(sig.k, sig.cout)),
            TuneMode::Measure { .. } => match self.stored.get(&sig.key()).filter(|v| v.exists_for(sig.k)) {
                Some(v) => v,
                None => {
                    let mut best: Option<(f64, &'static F16Variant)> = None;
                    let mut first_err = None;
                    for v in conv_variants::eligible(sig.k) {
                        match time(v) {
                            // Strictly faster, so ties keep the earlier variant: deterministic.
                            Ok(ms) if best.is_none_or(|(b, _)| ms < b) => best = Some((ms, v)),
                            Ok(_) => {}
                            Err(e) => first_err = first_err.or(Some(e)),
                        }
                    }
                    match (best, first_err) {
                        (Some((_, v)), _) => v,
                        (None, Some(e)) => return Err(e),
                        (None, None) => conv_variants::heuristic(sig.k, sig.cout),
                    }
                }
            },
        };
        // A concurrent caller may have decided first: keep its choice, one per signature per run.
        let (v, new) = {
            let mut map = self.lock();
            let new = !map.contains_key(sig);
            (*map.entry(*sig).or_insert(picked), new)
        };
        if new && matches!(self.mode, TuneMode::Measure { .. }) && !self.stored.contains_key(&sig.key()) {
            self.persist();
        }
        Ok(v)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<ConvSignature, &'static F16Variant>> {
        self.choices.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Write the stored and this run's choices; a cache that cannot be written only costs a
    /// measurement next time.
    fn persist(&self) {
        let Some(path) = &self.path else { return };
        let mut file = CacheFile { device: self.device.clone(), arch: self.arch.clone(), ..Default::default() };
        // Another process may have added entries since this one started: keep them too.
        for (k, v) in read_cache(path, &self.device, &self.arch).into_iter().chain(self.stored.clone()) {
            file.choices.insert(k, v.tag.into());
        }
        for (sig, v) in self.lock().iter() {
            file.choices.insert(sig.key(), v.tag.into());
        }
        if let Ok(text) = serde_json::to_string_pretty(&file) {
            let _ = super::compile::store(path, text.as_bytes());
        }
    }
}

/// `autotune-<hash of device, arch, conv source>.json`.
pub fn cache_file_name(device: &str, arch: &str) -> String {
    let conv = FAMILIES.iter().find(|f| f.name == "conv").expect("the conv family");
    let key = cache_key(&[device.as_bytes(), arch.as_bytes(), conv.full_source().as_bytes()]);
    format!("autotune-{key}.json")
}

/// Choices in a cache file written for this device and arch; unknown tags are dropped.
fn read_cache(path: &std::path::Path, device: &str, arch: &str) -> HashMap<String, &'static F16Variant> {
    let Ok(text) = std::fs::read_to_string(path) else { return HashMap::new() };
    let Ok(file) = serde_json::from_str::<CacheFile>(&text) else { return HashMap::new() };
    if file.device != device || file.arch != arch {
        return HashMap::new();
    }
    file.choices.into_iter().filter_map(|(k, tag)| conv_variants::by_tag(&tag).map(|v| (k, v))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Error;

    fn sig(k: usize, cout: usize) -> ConvSignature {
        ConvSignature { k, cin: 32, cout, h: 64, w: 48, precision: Precision::F16 }
    }

    #[test]
    fn measure_keeps_the_fastest_and_times_once() {
        let t = Autotune::new(TuneMode::Measure { disk: false }, "dev", "sm_90");
        let mut calls = 0;
        let fast = "co32_16x8_w4";
        let v = t
            .choose(&sig(3, 40), |v| {
                calls += 1;
                Ok(if v.tag == fast { 1.0 } else { 2.0 })
            })
            .unwrap();
        assert_eq!(v.tag, fast);
        assert_eq!(calls, conv_variants::eligible(3).count());
        let again = t.choose(&sig(3, 40), |_| panic!("timed twice")).unwrap();
        assert_eq!(again.tag, fast);
        assert_eq!(t.chosen(&sig(3, 40)).map(|v| v.tag), Some(fast));
    }

    #[test]
    fn failed_timings_are_skipped_and_ties_keep_the_first() {
        let t = Autotune::new(TuneMode::Measure { disk: false }, "dev", "sm_90");
        let v = t.choose(&sig(1, 16), |v| if v.staged { Ok(1.0) } else { Err(Error::Backend("no".into())) }).unwrap();
        assert_eq!(v, conv_variants::eligible(1).find(|v| v.staged).unwrap());
        let all_fail = t.choose(&sig(1, 17), |_| Err(Error::Backend("launch failed".into())));
        assert!(all_fail.is_err());
        // k 5 has variant 2 only.
        assert!(!t.choose(&sig(5, 16), |_| Ok(1.0)).unwrap().staged);
    }

    #[test]
    fn heuristic_and_fixed_never_time() {
        let h = Autotune::new(TuneMode::Heuristic, "dev", "sm_90");
        assert_eq!(h.choose(&sig(3, 12), |_| panic!("timed")).unwrap().co, 16);
        let f = Autotune::new(TuneMode::Fixed("co64_8x8_w4"), "dev", "sm_90");
        assert_eq!(f.choose(&sig(3, 12), |_| panic!("timed")).unwrap().tag, "co64_8x8_w4");
        assert_eq!(f.choose(&sig(7, 12), |_| panic!("timed")).unwrap().tag, "v2_co64_8x8_w4");
    }

    #[test]
    fn choices_survive_in_the_cache_file() {
        let dir = std::env::temp_dir().join(format!("seamless-autotune-test-{}", std::process::id()));
        let path = dir.join(cache_file_name("dev", "sm_90"));
        let mk = || Autotune {
            mode: TuneMode::Measure { disk: true },
            device: "dev".into(),
            arch: "sm_90".into(),
            path: Some(path.clone()),
            choices: Mutex::new(HashMap::new()),
            stored: read_cache(&path, "dev", "sm_90"),
        };
        let a = mk();
        let v = a.choose(&sig(3, 100), |v| Ok(if v.tag == "co16_16x8_w4" { 0.5 } else { 1.0 })).unwrap();
        assert_eq!(v.tag, "co16_16x8_w4");
        let b = mk();
        assert_eq!(b.choose(&sig(3, 100), |_| panic!("measured again")).unwrap().tag, "co16_16x8_w4");
        // Another device's file is not used.
        assert!(read_cache(&path, "other", "sm_90").is_empty());
        assert_ne!(cache_file_name("dev", "sm_90"), cache_file_name("dev", "sm_80"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
