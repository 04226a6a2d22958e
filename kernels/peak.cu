// Tensor-core peak: nothing but mma.sync.m16n8k16 f16 x f16 -> f32, the instruction the f16 conv
// (conv.cu, variant 2) is built on, issued back to back from registers so that neither memory nor
// address arithmetic limits it. `seamless bench --backend cuda` times it on the same device as the
// model, so a layer's GFLOP/s can be read as a fraction of what this instruction can reach there.
// (On Hopper, wgmma reaches more than mma.sync; this measures the rate of what our kernels issue.)
//
// Each warp keeps 8 independent accumulators so consecutive mmas do not wait on one another.
// One mma is 2·16·8·16 = 4096 FLOP per warp.

#define PEAK_CHAINS 8

__device__ __forceinline__ void mma_16816_peak(float* c, unsigned a0, unsigned a1, unsigned a2, unsigned a3,
                                               unsigned b0, unsigned b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

// iters rounds of PEAK_CHAINS mmas per warp; every thread writes one sum so nothing is dead code.
extern "C" __global__ void mma_peak_f16(float* out, u64 iters) {
    // Small f16 values (bit patterns of about 1e-3) that keep the sums finite.
    unsigned seed = 0x1400u + (threadIdx.x & 7u);
    unsigned a0 = seed | (seed << 16), a1 = a0 + 1u, a2 = a0 + 2u, a3 = a0 + 3u;
    unsigned b0 = a0 ^ 0x10001u, b1 = a1 ^ 0x10001u;
    float c[PEAK_CHAINS][4];
#pragma unroll
    for (int j = 0; j < PEAK_CHAINS; ++j) {
        c[j][0] = c[j][1] = c[j][2] = c[j][3] = 0.0f;
    }
    for (u64 i = 0; i < iters; ++i) {
#pragma unroll
        for (int j = 0; j < PEAK_CHAINS; ++j) {
            mma_16816_peak(c[j], a0, a1, a2, a3, b0, b1);
        }
    }
    float s = 0.0f;
#pragma unroll
    for (int j = 0; j < PEAK_CHAINS; ++j) {
        s += c[j][0] + c[j][1] + c[j][2] + c[j][3];
    }
    out[(u64)blockIdx.x * blockDim.x + threadIdx.x] = s;
}
