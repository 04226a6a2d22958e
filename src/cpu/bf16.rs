//! bf16 arithmetic for the CPU engines: what `--precision bf16` computes, written plainly.
//!
//! Activations stay f32 in the arena; a convolution rounds its input (after any fused input
//! transform) and its weights to bf16 (round to nearest even) and accumulates in f32. Input
//! channels are taken in pairs: one f32-sized element holds channel `2p` in its low half and
//! `2p + 1` in its high half, for both the input planes and the packed weights, so the engines'
//! layouts and loops are those of f32 with half as many "channels" ([`depth`]). An odd last
//! channel is paired with a zero.
//!
//! One pair updates an f32 accumulator exactly as `VDPBF16PS` does (Intel SDM): the high halves'
//! product is added first, then the low halves', each addition rounded to nearest even; bf16
//! inputs that are subnormal count as zero and subnormal sums are flushed to zero (the rounding
//! to bf16 already makes subnormal inputs zero, as the hardware conversions do). The products of
//! two bf16 values are exact in f32, so each step is one fused multiply-add. [`madd`] is that
//! step; the AVX512-BF16 engine gives the same bits (checked by the tests on every CPU that has
//! it), so tiles and whole images agree on every path, and the portable and vector paths agree
//! with each other. (The AMX tiles take the same steps per pair in another order: `super::amx`.)

/// Elements a `cin`-channel input occupies per position: channel pairs.
pub const fn depth(cin: usize) -> usize {
    cin.div_ceil(2)
}

/// `v` rounded to bf16 (nearest, ties to even; NaN stays a quiet NaN; a subnormal is zero of
/// its sign, as the hardware conversions and products treat them), as its bits. Branch-free, so
/// that the conversion loops vectorise.
#[inline(always)]
pub fn round(v: f32) -> u16 {
    let b = v.to_bits();
    let nearest = b.wrapping_add(0x7FFF + ((b >> 16) & 1)) >> 16;
    let r = if v.is_nan() {
        (b >> 16) | 0x40
    } else if b & 0x7F80_0000 == 0 {
        (b >> 16) & 0x8000
    } else {
        nearest
    };
    r as u16
}

/// The f32 value of a bf16.
#[inline(always)]
pub fn widen(b: u16) -> f32 {
    f32::from_bits(u32::from(b) << 16)
}

/// Channels `lo` and `hi` rounded and packed into one pair element (`lo` in the low half), held
/// in an f32 slot as raw bits (never used as a number: only moved).
#[inline(always)]
pub fn pair(lo: f32, hi: f32) -> f32 {
    f32::from_bits(u32::from(round(lo)) | (u32::from(round(hi)) << 16))
}

/// A subnormal as zero of the same sign (the hardware's DAZ and FTZ).
#[inline(always)]
pub fn flush(v: f32) -> f32 {
    if v.is_subnormal() { 0.0f32.copysign(v) } else { v }
}

/// `acc` plus the products of the pair elements `x` and `w`: high halves first, then low, each
/// one correctly rounded fused multiply-add with subnormals flushed, as `VDPBF16PS` does.
#[inline(always)]
pub fn madd(acc: f32, x: f32, w: f32) -> f32 {
    let (x, w) = (x.to_bits(), w.to_bits());
    let half = |v: u32, hi: bool| flush(widen(if hi { (v >> 16) as u16 } else { v as u16 }));
    let acc = flush(half(x, true).mul_add(half(w, true), acc));
    flush(half(x, false).mul_add(half(w, false), acc))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounding_is_to_nearest_even() {
        // 1 + 2^-8 lies halfway between 1 and 1 + 2^-7: ties go to the even mantissa, 1.
        assert_eq!(widen(round(1.0 + 2f32.powi(-8))), 1.0);
        assert_eq!(widen(round(1.0 + 3.0 * 2f32.powi(-8))), 1.0 + 2f32.powi(-6));
        assert!(widen(round(f32::NAN)).is_nan());
        // Subnormals become zero of their sign, even the one next to the smallest normal.
        assert_eq!(round(f32::from_bits(0x007F_FFFF)), 0);
        assert_eq!(round(-f32::from_bits(1)), 0x8000);
        assert_eq!(round(f32::MAX), 0x7F80);
    }

    #[test]
    fn a_pair_adds_the_high_product_first() {
        // From 1: the high product 2^-24 is a tie and lost (to even), then the low product 2^-23
        // lands exactly. Low first, 1 + 2^-23 + 2^-24 would tie the other way (to 1 + 2^-22), and
        // so would one rounding of the whole sum.
        let x = pair(2f32.powi(-23), 2f32.powi(-24));
        let w = pair(1.0, 1.0);
        assert_eq!(madd(1.0, x, w), 1.0 + 2f32.powi(-23));
        assert_eq!(madd(0.0, x, w), 3.0 * 2f32.powi(-24));
        // Subnormal inputs count as zero.
        let tiny = pair(f32::from_bits(1 << 16), 0.0);
        assert_eq!(madd(0.0, tiny, pair(1.0, 0.0)), 0.0);
    }
}
