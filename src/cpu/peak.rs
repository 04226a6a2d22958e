//! This CPU's arithmetic peaks, measured: what `seamless bench` compares each layer's rate with.
//! Every worker thread runs a loop of independent multiply-adds (enough accumulators to cover
//! the instruction's latency on every pipe) for a fixed count; the rate is all threads' FLOPs
//! over the wall time. A fused multiply-add counts 2 FLOPs, a bf16 pair step 4 (and a tile
//! product, 16 x 16 outputs of 16 pair steps, 4 per pair step).

use std::hint::black_box;
use std::time::Instant;

/// Peaks in FLOP/s over all of rayon's threads.
#[derive(Clone, Copy, Debug, serde::Serialize)]
pub struct Peaks {
    /// f32 fused multiply-adds on the widest vectors this CPU has (AVX-512, AVX2, or scalar).
    pub f32_flops: f64,
    /// bf16 pair steps (`VDPBF16PS`), where the CPU has AVX512-BF16.
    pub bf16_flops: Option<f64>,
    /// bf16 tile products (`TDPBF16PS`), where the CPU's AMX tiles are in use ([`super::amx`]).
    pub amx_flops: Option<f64>,
}

/// Multiply-add steps each thread runs per measurement (about a tenth of a second).
const STEPS: u64 = 1 << 22;

/// Measure both peaks (about half a second).
pub fn measure() -> Peaks {
    let f32_flops = rate(f32_loop);
    #[cfg(target_arch = "x86_64")]
    let bf16_flops = (std::arch::is_x86_feature_detected!("avx512f")
        && std::arch::is_x86_feature_detected!("avx512bf16"))
    .then(|| {
        // SAFETY: the features were detected just above.
        rate(|n| unsafe { bf16_loop_avx512(n) })
    });
    #[cfg(not(target_arch = "x86_64"))]
    let bf16_flops = None;
    let amx_flops = super::amx::usable().then(|| rate(|n| super::amx::peak_loop(n / 16)));
    Peaks { f32_flops, bf16_flops, amx_flops }
}

/// FLOP/s of `run` (which returns the FLOPs it did for `n` steps) on every thread at once; the
/// best of three, after a warm-up (clocks ramp up).
fn rate(run: impl Fn(u64) -> f64 + Sync) -> f64 {
    rayon::broadcast(|_| run(STEPS / 8));
    (0..3)
        .map(|_| {
            let t0 = Instant::now();
            let flops: f64 = rayon::broadcast(|_| run(STEPS)).iter().sum();
            flops / t0.elapsed().as_secs_f64()
        })
        .fold(0.0, f64::max)
}

fn f32_loop(n: u64) -> f64 {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: detected just above.
            return unsafe { f32_loop_avx512(n) };
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
            // SAFETY: detected just above.
            return unsafe { f32_loop_avx2(n) };
        }
    }
    let mut acc = [black_box(0.0f32); 8];
    let (a, b) = (black_box(0.999_f32), black_box(1e-3_f32));
    for _ in 0..n {
        for v in &mut acc {
            *v = v.mul_add(a, b);
        }
    }
    black_box(acc);
    (n * 8 * 2) as f64
}

/// Independent accumulators per thread: covers a 4-cycle latency on two pipes with room to spare.
const ACC: usize = 12;

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn f32_loop_avx512(n: u64) -> f64 {
    use std::arch::x86_64::*;
    let (a, b) = (_mm512_set1_ps(black_box(0.999)), _mm512_set1_ps(black_box(1e-3)));
    let mut acc = [_mm512_set1_ps(black_box(0.0)); ACC];
    for _ in 0..n {
        for v in &mut acc {
            *v = _mm512_fmadd_ps(*v, a, b);
        }
    }
    black_box(acc);
    (n * ACC as u64 * 16 * 2) as f64
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn f32_loop_avx2(n: u64) -> f64 {
    use std::arch::x86_64::*;
    let (a, b) = (_mm256_set1_ps(black_box(0.999)), _mm256_set1_ps(black_box(1e-3)));
    let mut acc = [_mm256_set1_ps(black_box(0.0)); ACC];
    for _ in 0..n {
        for v in &mut acc {
            *v = _mm256_fmadd_ps(*v, a, b);
        }
    }
    black_box(acc);
    (n * ACC as u64 * 8 * 2) as f64
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn bf16_loop_avx512(n: u64) -> f64 {
    use std::arch::x86_64::*;
    // SAFETY: 512 bits of plain data either way.
    let pairs = unsafe { std::mem::transmute::<__m512i, __m512bh>(_mm512_set1_epi32(black_box(0x3F80_3F80))) };
    let mut acc = [_mm512_set1_ps(black_box(0.0)); ACC];
    for _ in 0..n {
        for v in &mut acc {
            *v = _mm512_dpbf16_ps(*v, pairs, pairs);
        }
    }
    black_box(acc);
    (n * ACC as u64 * 16 * 4) as f64
}
