// Conv2d, odd k x k (1, 3, 5, 7), stride 1, zero "same" padding, bias, optional fused ReLU.
// Twin: src/cpu/conv.rs.
//
// Exactness: every output element is accumulated by one thread in one order fixed by the layer
// (never by the map's extent, the tile's position or the launch grid), and the zero padding
// enters as ordinary w·0 taps, exactly as in the twin. No atomics, no split-K.
//
// Variant 1, conv2d_k{K}_f32 (--precision f32): direct convolution, one thread per output pixel
// and CO_BLOCK output channels. acc = bias, then Σ_ci Σ_ky Σ_kx acc = fma(w, x, acc) (one
// correctly rounded fused multiply-add per term, no TF32): the twin's order and rounding (the CPU
// engine, src/cpu/direct.rs, uses FMA in the same order), so results equal the CPU's bit for bit.
//
// Variant 2, conv2d_k{K}_f16 (--precision f16): implicit GEMM on tensor cores, mma.sync
// m16n8k16 with f16 operands and f32 accumulators. M = output channels, N = pixels, and the
// reduction runs over chunks of 16 input channels (outer loop) and the k·k taps (inner loop); each
// mma adds one (chunk, tap) product of 16 channels to the accumulator, which starts at the bias.
// That K-loop order depends only on cin and k, i.e. on the layer. Weights arrive pre-packed by
// the host in mma fragment order (src/cuda/weights.rs), so a lane loads its A fragment with one
// 16-byte read.

// ---- variant 1: f32 direct ---------------------------------------------------------------------

#define TILE 16      // output pixels per block side (16 x 16 threads)
#define CO_BLOCK 16  // output channels per thread

template <int K>
__device__ void conv2d_f32(float* out, const float* x, const float* wt, const float* bias, unsigned cin,
                           unsigned cout, unsigned h, unsigned w, int relu) {
    const int P = TILE + K - 1;
    __shared__ float xs[P][P + 1];
    __shared__ float ws[CO_BLOCK][K * K];
    const unsigned tx = threadIdx.x, ty = threadIdx.y, tid = ty * TILE + tx;
    const int bx = blockIdx.x * TILE, by = blockIdx.y * TILE;
    const unsigned co0 = blockIdx.z * CO_BLOCK;
    const unsigned ox = bx + tx, oy = by + ty;

    float acc[CO_BLOCK];
#pragma unroll
    for (int j = 0; j < CO_BLOCK; j++) acc[j] = co0 + j < cout ? bias[co0 + j] : 0.0f;

    for (unsigned ci = 0; ci < cin; ci++) {
        const float* plane = x + (u64)ci * h * w;
        for (unsigned i = tid; i < P * P; i += TILE * TILE) {
            int iy = by + (int)(i / P) - K / 2, ix = bx + (int)(i % P) - K / 2;
            bool inside = iy >= 0 && iy < (int)h && ix >= 0 && ix < (int)w;
            xs[i / P][i % P] = inside ? plane[(u64)iy * w + ix] : 0.0f;
        }
        for (unsigned i = tid; i < CO_BLOCK * K * K; i += TILE * TILE) {
            unsigned j = i / (K * K), t = i % (K * K);
            ws[j][t] = co0 + j < cout ? wt[((u64)(co0 + j) * cin + ci) * K * K + t] : 0.0f;
        }
        __syncthreads();
#pragma unroll
        for (int ky = 0; ky < K; ky++) {
#pragma unroll
            for (int kx = 0; kx < K; kx++) {
                float v = xs[ty + ky][tx + kx];
#pragma unroll
                for (int j = 0; j < CO_BLOCK; j++) acc[j] = __fmaf_rn(ws[j][ky * K + kx], v, acc[j]);
            }
        }
        __syncthreads();
    }
    if (ox >= w || oy >= h) return;
#pragma unroll
    for (int j = 0; j < CO_BLOCK; j++) {
        if (co0 + j < cout) out[((u64)(co0 + j) * h + oy) * w + ox] = relu ? fmaxf(acc[j], 0.0f) : acc[j];
    }
}

// ---- variant 2: f16 tensor cores -----------------------------------------------------------------

#define MMA_CO 64        // output channels per block: 4 m-tiles of 16
#define MMA_SIDE 8       // output pixels per block side: 8 rows x 8 columns
#define MMA_WARPS 4      // warp w computes output rows 2w and 2w+1 (two n-tiles of 8 pixels)
#define XS_STRIDE 24     // halves per patch pixel in shared memory: 16 channels + 8 padding (banks)

struct alignas(16) Frag {
    unsigned r[4];
};

__device__ __forceinline__ void mma_16816(float* c, const Frag& a, unsigned b0, unsigned b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a.r[0]), "r"(a.r[1]), "r"(a.r[2]), "r"(a.r[3]), "r"(b0), "r"(b1));
}

// wp: [co_block][chunk][tap][m-tile][lane] fragments (see src/cuda/weights.rs, pack_conv_f16).
template <int K>
__device__ void conv2d_f16(half_t* out, const half_t* x, const Frag* wp, const float* bias, unsigned cin,
                           unsigned cout, unsigned h, unsigned w, int relu) {
    const int P = MMA_SIDE + K - 1;
    __shared__ alignas(16) half_t xs[P * P * XS_STRIDE];
    const unsigned warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const unsigned g = lane / 4, t = lane % 4;  // mma "groupID" and "threadID_in_group"
    const int x0 = blockIdx.x * MMA_SIDE, y0 = blockIdx.y * MMA_SIDE;
    const unsigned cob = blockIdx.z, co_base = cob * MMA_CO;
    const unsigned chunks = (cin + 15) / 16;

    // acc[m][j][e]: m-tile m, n-tile j (output row 2*warp + j); e = 0,1 -> channel row g,
    // e = 2,3 -> row g + 8; columns 2t and 2t + 1.
    float acc[4][2][4];
#pragma unroll
    for (int m = 0; m < 4; m++) {
        unsigned c_lo = co_base + m * 16 + g, c_hi = c_lo + 8;
        float b_lo = c_lo < cout ? bias[c_lo] : 0.0f, b_hi = c_hi < cout ? bias[c_hi] : 0.0f;
#pragma unroll
        for (int j = 0; j < 2; j++) {
            acc[m][j][0] = b_lo;
            acc[m][j][1] = b_lo;
            acc[m][j][2] = b_hi;
            acc[m][j][3] = b_hi;
        }
    }

    for (unsigned chunk = 0; chunk < chunks; chunk++) {
        // The input patch of 16 channels, channel-fastest per pixel, zero outside the map and
        // past cin.
        for (unsigned i = threadIdx.x; i < 16 * P * P; i += MMA_WARPS * 32) {
            unsigned ci = i / (P * P), pix = i % (P * P);
            int iy = y0 + (int)(pix / P) - K / 2, ix = x0 + (int)(pix % P) - K / 2;
            unsigned c = chunk * 16 + ci;
            bool inside = c < cin && iy >= 0 && iy < (int)h && ix >= 0 && ix < (int)w;
            xs[pix * XS_STRIDE + ci] = inside ? x[((u64)c * h + iy) * w + ix] : (half_t)0;
        }
        __syncthreads();
        const Frag* wc = wp + ((u64)cob * chunks + chunk) * K * K * 4 * 32;
#pragma unroll 1
        for (int tap = 0; tap < K * K; tap++) {
            const int ky = tap / K, kx = tap % K;
            Frag a[4];
#pragma unroll
            for (int m = 0; m < 4; m++) a[m] = wc[(tap * 4 + m) * 32 + lane];
#pragma unroll
            for (int j = 0; j < 2; j++) {
                // B fragment: channels 2t, 2t+1 (b0) and 2t+8, 2t+9 (b1) of pixel column g.
                const half_t* px = xs + ((warp * 2 + j + ky) * P + g + kx) * XS_STRIDE;
                unsigned b0 = *(const unsigned*)(px + 2 * t);
                unsigned b1 = *(const unsigned*)(px + 2 * t + 8);
#pragma unroll
                for (int m = 0; m < 4; m++) mma_16816(acc[m][j], a[m], b0, b1);
            }
        }
        __syncthreads();
    }

#pragma unroll
    for (int m = 0; m < 4; m++) {
#pragma unroll
        for (int j = 0; j < 2; j++) {
            unsigned oy = y0 + warp * 2 + j;
#pragma unroll
            for (int e = 0; e < 4; e++) {
                unsigned co = co_base + m * 16 + g + (e >= 2 ? 8 : 0);
                unsigned ox = x0 + 2 * t + (e & 1);
                if (co < cout && oy < h && ox < w) {
                    float v = acc[m][j][e];
                    out[((u64)co * h + oy) * w + ox] = f2h(relu ? fmaxf(v, 0.0f) : v);
                }
            }
        }
    }
}

#define CONV(K)                                                                                              \
    extern "C" __global__ void __launch_bounds__(TILE* TILE)                                                 \
        conv2d_k##K##_f32(float* out, const float* x, const float* wt, const float* bias, unsigned cin,      \
                          unsigned cout, unsigned h, unsigned w, int relu) {                                 \
        conv2d_f32<K>(out, x, wt, bias, cin, cout, h, w, relu);                                              \
    }                                                                                                        \
    extern "C" __global__ void __launch_bounds__(MMA_WARPS * 32)                                             \
        conv2d_k##K##_f16(half_t* out, const half_t* x, const Frag* wp, const float* bias, unsigned cin,     \
                          unsigned cout, unsigned h, unsigned w, int relu) {                                 \
        conv2d_f16<K>(out, x, wp, bias, cin, cout, h, w, relu);                                              \
    }
CONV(1)
CONV(3)
CONV(5)
CONV(7)
