//! The f16 conv kernels (`kernels/conv.cu`, variants 2 and 3) as data: their names, which kernel
//! sizes each exists for, and the launch shape each expects. All of them give identical bits for
//! every layer (same accumulation order per output element; see the comment atop conv.cu), so
//! which one runs is purely a speed question, settled by `autotune.rs`.

/// One f16 conv kernel shape: `co` output channels x `th` x `tw` pixels per block, `warps` warps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct F16Variant {
    /// Short name, as shown by `seamless bench --layers` and stored in the autotune cache.
    pub tag: &'static str,
    /// Variant 3 (weights and patch staged in shared memory, double-buffered), which exists for
    /// [`STAGED_KERNEL_SIZES`] only; otherwise variant 2, `conv2d_k{K}_f16`, for every size.
    pub staged: bool,
    pub co: usize,
    pub th: usize,
    pub tw: usize,
    pub warps: usize,
}

/// Kernel sizes variant 3 is instantiated for: its two shared stages of a 5x5 or 7x7 chunk's
/// weights would not fit in 48 KiB.
pub const STAGED_KERNEL_SIZES: &[usize] = &[1, 3];

const fn staged(tag: &'static str, co: usize, th: usize, tw: usize, warps: usize) -> F16Variant {
    F16Variant { tag, staged: true, co, th, tw, warps }
}

/// Every f16 variant; the first is variant 2. The staged tags must match `CONV_STAGED_ALL` in
/// kernels/conv.cu (a unit test checks the names against `sources.rs`).
pub const F16_VARIANTS: &[F16Variant] = &[
    F16Variant { tag: "v2_co64_8x8_w4", staged: false, co: 64, th: 8, tw: 8, warps: 4 },
    staged("co16_16x16_w8", 16, 16, 16, 8),
    staged("co16_16x8_w4", 16, 16, 8, 4),
    staged("co32_16x16_w8", 32, 16, 16, 8),
    staged("co32_16x8_w4", 32, 16, 8, 4),
    staged("co64_16x8_w8", 64, 16, 8, 8),
    staged("co64_8x8_w4", 64, 8, 8, 4),
];

impl F16Variant {
    pub fn exists_for(&self, k: usize) -> bool {
        !self.staged || STAGED_KERNEL_SIZES.contains(&k)
    }

    /// The `extern "C"` name of this variant for kernel size `k`.
    pub fn kernel_name(&self, k: usize) -> String {
        if self.staged { format!("conv2d_k{k}_f16_{}", self.tag) } else { format!("conv2d_k{k}_f16") }
    }

    /// (grid, threads per block) for a `cout` x `h` x `w` output.
    pub fn grid(&self, cout: usize, h: usize, w: usize) -> ((usize, usize, usize), usize) {
        ((w.div_ceil(self.tw), h.div_ceil(self.th), cout.div_ceil(self.co)), self.warps * 32)
    }
}

/// The variants that exist for kernel size `k`, variant 2 first.
pub fn eligible(k: usize) -> impl Iterator<Item = &'static F16Variant> {
    F16_VARIANTS.iter().filter(move |v| v.exists_for(k))
}

pub fn by_tag(tag: &str) -> Option<&'static F16Variant> {
    F16_VARIANTS.iter().find(|v| v.tag == tag)
}

/// The choice without measuring (`SEAMLESS_AUTOTUNE=off`): the smallest channel tile that holds
/// `cout` (FC-DenseNet's growth layers have 12 or 16), else 64 channels; the larger pixel tile of
/// that width. Sizes without staged kernels get variant 2.
pub fn heuristic(k: usize, cout: usize) -> &'static F16Variant {
    let tag = match cout {
        _ if !STAGED_KERNEL_SIZES.contains(&k) => "v2_co64_8x8_w4",
        0..=16 => "co16_16x16_w8",
        17..=32 => "co32_16x16_w8",
        _ => "co64_16x8_w8",
    };
    by_tag(tag).expect("listed above")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cuda::sources::{CONV_KERNEL_SIZES, FAMILIES};

    #[test]
    fn every_variant_is_exported_by_the_conv_family() {
        let conv = FAMILIES.iter().find(|f| f.name == "conv").unwrap();
        for &k in CONV_KERNEL_SIZES {
            for v in eligible(k) {
                let name = v.kernel_name(k);
                assert!(conv.functions.contains(&name.as_str()), "{name} is not listed in sources.rs");
                assert!(
                    conv.source.contains(&format!("CONV_STAGED(K, {}, {}, {}, {})", v.co, v.th, v.tw, v.warps))
                        || !v.staged,
                    "{name}"
                );
            }
        }
        let staged = conv.functions.iter().filter(|f| f.contains("_f16_")).count();
        assert_eq!(staged, STAGED_KERNEL_SIZES.len() * (F16_VARIANTS.len() - 1));
    }

    #[test]
    fn tags_are_unique_and_names_follow_the_shape() {
        for (i, v) in F16_VARIANTS.iter().enumerate() {
            assert_eq!(by_tag(v.tag), Some(v));
            assert!(F16_VARIANTS[..i].iter().all(|u| u.tag != v.tag));
            if v.staged {
                assert_eq!(v.tag, format!("co{}_{}x{}_w{}", v.co, v.th, v.tw, v.warps));
            }
            assert!(v.tw % 8 == 0 && (v.th * v.tw / 8) % v.warps == 0 && 64 % v.co == 0);
        }
    }

    #[test]
    fn heuristic_fits_the_channel_tile_to_cout() {
        assert_eq!(heuristic(3, 12).co, 16);
        assert_eq!(heuristic(3, 16).co, 16);
        assert_eq!(heuristic(1, 17).co, 32);
        assert_eq!(heuristic(3, 48).co, 64);
        assert_eq!(heuristic(3, 1024).co, 64);
        assert!(!heuristic(5, 16).staged && !heuristic(7, 64).staged);
        for k in [1, 3, 5, 7] {
            for cout in [1, 12, 16, 32, 48, 100] {
                assert!(heuristic(k, cout).exists_for(k));
            }
        }
    }

    #[test]
    fn grids_cover_the_output() {
        let v = by_tag("co16_16x8_w4").unwrap();
        // 16 rows x 8 columns per block.
        assert_eq!(v.grid(17, 9, 33), ((5, 1, 2), 128));
    }
}
