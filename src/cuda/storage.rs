//! The two activation storage types: f32 (`--precision f32`) and f16 (`--precision f16`, IEEE
//! binary16, rounded to nearest even on the host exactly as the kernels' `cvt.rn.f16.f32`).

use cudarc::driver::{DeviceRepr, ValidAsZeroBits};
use half::f16;

use super::{Precision, weights};
use crate::graph::Conv2d;

pub trait Storage: DeviceRepr + ValidAsZeroBits + Copy + Default + Send + Sync + Unpin + 'static {
    /// The precision this type stores; its name ends the kernels' names: `conv2d_k3_f32`.
    const PRECISION: Precision;
    fn from_f32(v: f32) -> Self;
    fn to_f32(self) -> f32;
    /// A conv layer's weights in the layout this type's conv kernel reads.
    fn conv_weights(c: &Conv2d) -> Vec<Self>;
}

impl Storage for f32 {
    const PRECISION: Precision = Precision::F32;
    fn from_f32(v: f32) -> f32 {
        v
    }
    fn to_f32(self) -> f32 {
        self
    }
    /// `[cout][cin][k][k]` as the model stores them.
    fn conv_weights(c: &Conv2d) -> Vec<f32> {
        c.weight.clone()
    }
}

impl Storage for f16 {
    const PRECISION: Precision = Precision::F16;
    fn from_f32(v: f32) -> f16 {
        f16::from_f32(v)
    }
    fn to_f32(self) -> f32 {
        f16::to_f32(self)
    }
    /// Pre-packed tensor-core A fragments.
    fn conv_weights(c: &Conv2d) -> Vec<f16> {
        weights::pack_conv_f16(c)
    }
}
