//! The conv kernels (`kernels/conv.cu`) as data: the kernel sizes they exist for, the f16 variants'
//! names and launch shapes, and every `extern "C"` name the conv family exports. All f16 variants
//! give identical bits for every layer (same accumulation order per output element; see the
//! comment atop conv.cu), so which one runs is purely a speed question, settled by `autotune.rs`.

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

/// `co{co}_{th}x{tw}_w{warps}` for a shape `(co, th, tw, warps)`, as a literal.
macro_rules! tag {
    ($co:literal, $th:literal, $tw:literal, $warps:literal) => {
        concat!("co", $co, "_", $th, "x", $tw, "_w", $warps)
    };
}

/// The table entry for a shape, its tag spelled from the shape.
macro_rules! variant {
    ($prefix:literal, $staged:literal, ($co:literal, $th:literal, $tw:literal, $warps:literal)) => {
        F16Variant {
            tag: concat!($prefix, tag!($co, $th, $tw, $warps)),
            staged: $staged,
            co: $co,
            th: $th,
            tw: $tw,
            warps: $warps,
        }
    };
}

/// The names of one staged shape's kernels, one per kernel size.
macro_rules! staged_names {
    ([$($k:literal),*], $shape:tt) => {
        &[$(concat!("conv2d_k", $k, "_f16_", tag!$shape)),*]
    };
}

/// Declares the conv kernels from their kernel sizes and shapes alone, so that no shape is
/// written twice on the Rust side: the variant table, and every `extern "C"` name the conv family
/// exports (`sources.rs` loads them). A macro, because those names must be `&'static str` in a
/// `const` (`Family::functions`), which only `concat!` can spell. The C++ side is
/// `CONV_STAGED_ALL` in conv.cu; a unit test below compares the two.
macro_rules! conv_kernels {
    (
        kernel_sizes: [$($k:literal),*],
        variant_2: $v2:tt,
        staged_kernel_sizes: $staged_sizes:tt,
        staged: [$($shape:tt),*] $(,)?
    ) => {
        /// Kernel sizes the conv family is instantiated for (variants 1 and 2).
        pub const CONV_KERNEL_SIZES: &[usize] = &[$($k),*];

        /// Kernel sizes variant 3 is instantiated for: its two shared stages of a 5x5 or 7x7
        /// chunk's weights would not fit in 48 KiB.
        pub const STAGED_KERNEL_SIZES: &[usize] = &$staged_sizes;

        /// Every f16 variant; the first is variant 2. The staged shapes must match
        /// `CONV_STAGED_ALL` in kernels/conv.cu.
        pub const F16_VARIANTS: &[F16Variant] = &[variant!("v2_", false, $v2), $(variant!("", true, $shape)),*];

        const CONV_FUNCTION_GROUPS: &[&[&str]] = &[
            $(&[concat!("conv2d_k", $k, "_f32"), concat!("conv2d_k", $k, "_f16")],)*
            $(staged_names!($staged_sizes, $shape),)*
        ];

        /// Every kernel of the conv family: variants 1 (f32) and 2 (f16) for each kernel size,
        /// then each staged shape for each of its sizes.
        pub const CONV_FUNCTIONS: &[&str] = &flatten::<{ total(CONV_FUNCTION_GROUPS) }>(CONV_FUNCTION_GROUPS);
    };
}

conv_kernels! {
    kernel_sizes: [1, 3, 5, 7],
    variant_2: (64, 8, 8, 4),
    staged_kernel_sizes: [1, 3],
    staged: [(16, 16, 16, 8), (16, 16, 8, 4), (32, 16, 16, 8), (32, 16, 8, 4), (64, 16, 8, 8), (64, 8, 8, 4)],
}

/// How many names `groups` hold.
const fn total(groups: &[&[&str]]) -> usize {
    let (mut n, mut i) = (0, 0);
    while i < groups.len() {
        n += groups[i].len();
        i += 1;
    }
    n
}

/// The names of `groups` in one array of `N` = [`total`] names (a `const` cannot collect a `Vec`).
const fn flatten<const N: usize>(groups: &[&[&'static str]]) -> [&'static str; N] {
    let mut out = [""; N];
    let (mut n, mut i) = (0, 0);
    while i < groups.len() {
        let mut j = 0;
        while j < groups[i].len() {
            out[n] = groups[i][j];
            (n, j) = (n + 1, j + 1);
        }
        i += 1;
    }
    out
}

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
/// `cout` (FC-DenseNet's growth layers have 12 or 16), else the widest; the larger pixel tile of
/// that width. Sizes without staged kernels get variant 2.
pub fn heuristic(k: usize, cout: usize) -> &'static F16Variant {
    let staged = || eligible(k).filter(|v| v.staged);
    let Some(widest) = staged().map(|v| v.co).max() else { return &F16_VARIANTS[0] };
    let co = staged().map(|v| v.co).filter(|&co| co >= cout).min().unwrap_or(widest);
    staged().filter(|v| v.co == co).max_by_key(|v| v.th * v.tw).expect("a shape of that width")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cuda::sources::FAMILIES;

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
        assert_eq!(conv.functions.len(), 2 * CONV_KERNEL_SIZES.len() + staged);
        for (i, f) in conv.functions.iter().enumerate() {
            assert!(!conv.functions[..i].contains(f), "{f} is listed twice");
        }
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
        assert_eq!(heuristic(3, 12).tag, "co16_16x16_w8");
        assert_eq!(heuristic(1, 32).tag, "co32_16x16_w8");
        assert_eq!(heuristic(3, 65).tag, "co64_16x8_w8");
        assert_eq!(heuristic(5, 8).tag, "v2_co64_8x8_w4");
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
