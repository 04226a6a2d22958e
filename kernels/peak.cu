// Tensor-core peak: nothing but mma.sync.m16n8k16 f16 x f16 -> f32, the instruction the f16 conv
// (conv.cu, variant 2) is built on, issued back to back from registers so that neither memory nor
// address arithmetic limits it. `seamless bench --backend cuda` times it on the same device as the
// model, so a layer's GFLOP/s can be read as a fraction of what this instruction can reach there.
// (On Hopper, wgmma reaches more than mma.sync; this measures the rate of what our kernels issue.)
//
// Each warp keeps 8 independent accumulators so consecutive mmas do not wait on one another.
// One mma is 2·16·8·16 = 4096 FLOP per warp.

#define PEAK_CHAINS 8

// iters rounds of PEAK_CHAINS mmas per warp; every thread writes one sum so nothing is dead code.
extern "C" __global__ void mma_peak_f16(float* out, u64 iters) {
    // Small f16 values (bit patterns of about 1e-3) that keep the sums finite.
    unsigned seed = 0x1400u + (threadIdx.x & 7u);
    unsigned a0 = seed | (seed << 16);
    const Frag a = {{a0, a0 + 1u, a0 + 2u, a0 + 3u}};
    unsigned b0 = a0 ^ 0x10001u, b1 = (a0 + 1u) ^ 0x10001u;
    float c[PEAK_CHAINS][4];
#pragma unroll
    for (int j = 0; j < PEAK_CHAINS; ++j) {
        c[j][0] = c[j][1] = c[j][2] = c[j][3] = 0.0f;
    }
    for (u64 i = 0; i < iters; ++i) {
#pragma unroll
        for (int j = 0; j < PEAK_CHAINS; ++j) {
            mma_16816(c[j], a, b0, b1);
        }
    }
    float s = 0.0f;
#pragma unroll
    for (int j = 0; j < PEAK_CHAINS; ++j) {
        s += c[j][0] + c[j][1] + c[j][2] + c[j][3];
    }
    out[(u64)blockIdx.x * blockDim.x + threadIdx.x] = s;
}
