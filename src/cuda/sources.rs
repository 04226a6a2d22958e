//! The kernel sources, embedded in the binary, and what each family must export. One family per
//! file under `kernels/`, each the twin of the CPU module of the same name under `src/cpu/`.

use super::conv_variants::CONV_FUNCTIONS;

/// Helpers every family uses (f16 conversions, storage load/store); prepended to each source so
/// that no include path or CUDA header is needed.
pub const COMMON: &str = include_str!("../../kernels/common.cuh");

/// One `kernels/<name>.cu` file: its source and the `extern "C"` kernels the launch wrappers use.
#[derive(Clone, Copy, Debug)]
pub struct Family {
    pub name: &'static str,
    pub source: &'static str,
    pub functions: &'static [&'static str],
}

impl Family {
    /// The text handed to NVRTC: the common helpers, then the family's file with line numbers
    /// that match it (so compiler messages point into `kernels/<name>.cu`).
    pub fn full_source(&self) -> String {
        format!("{COMMON}\n#line 1 \"{}.cu\"\n{}", self.name, self.source)
    }
}

pub const FAMILIES: &[Family] = &[
    Family {
        name: "conv",
        source: include_str!("../../kernels/conv.cu"),
        // Spelled from the kernel sizes and variant shapes in conv_variants.rs.
        functions: CONV_FUNCTIONS,
    },
    Family {
        name: "conv_transpose",
        source: include_str!("../../kernels/conv_transpose.cu"),
        functions: &[
            "conv_transpose2d_k2_f32",
            "conv_transpose2d_k2_f16",
            "conv_transpose2d_k3_f32",
            "conv_transpose2d_k3_f16",
        ],
    },
    Family {
        name: "upsample",
        source: include_str!("../../kernels/upsample.cu"),
        functions: &["upsample2_f32", "upsample2_f16"],
    },
    Family {
        name: "pool",
        source: include_str!("../../kernels/pool.cu"),
        functions: &["max_pool2_f32", "max_pool2_f16"],
    },
    Family {
        name: "concat",
        source: include_str!("../../kernels/concat.cu"),
        functions: &["copy_into_f32", "copy_into_f16"],
    },
    Family {
        name: "elementwise",
        source: include_str!("../../kernels/elementwise.cu"),
        functions: &[
            "scale_shift_f32",
            "scale_shift_f16",
            "relu_f32",
            "relu_f16",
            "scale_shift_inplace_f32",
            "scale_shift_inplace_f16",
            "relu_inplace_f32",
            "relu_inplace_f16",
        ],
    },
    Family {
        name: "softmax",
        source: include_str!("../../kernels/softmax.cu"),
        functions: &["softmax_f32", "softmax_f16", "argmax_f32", "argmax_f16"],
    },
    Family { name: "peak", source: include_str!("../../kernels/peak.cu"), functions: &["mma_peak_f16"] },
];

/// mma.sync m16n8k16 issued per warp per loop round by `mma_peak_f16` (kernels/peak.cu).
pub const PEAK_MMAS_PER_ROUND: u64 = 8;
