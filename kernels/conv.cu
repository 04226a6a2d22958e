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
//
// Variant 3, conv2d_k{1,3}_f16_co{16,32,64}_{TH}x{TW}_w{W} (--precision f16): the same implicit
// GEMM with other block shapes (16, 32 or 64 output channels; TH x TW pixels; W warps), the
// weights' A fragments and the input patch of one chunk staged in shared memory, and the next
// chunk loaded into registers while the current one is multiplied (two shared buffers, one
// barrier per chunk). The autotuner (src/cuda/autotune.rs) picks one per layer.
//
// All f16 variants give identical bits. Every output element gets exactly the same arithmetic in
// each of them: its accumulator starts at the bias (0 past cout), then for chunk = 0..chunks
// ascending and tap = 0..K*K ascending one mma.sync.m16n8k16 adds that (chunk, tap) product, with
// the same 16 weights in the same fragment positions (channel chunk*16 + j is column j, zero past
// cin) and the same 16 inputs (zero outside the map); then the same epilogue (ReLU, cvt.rn.f16).
// mma.sync is deterministic for given fragments, so only which thread and block compute an
// element differs between variants, and choosing among them can never change the output.

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

// ---- variant 3: f16 tensor cores, staged and double-buffered ------------------------------------

// The input patch in shared memory: 16 halves (8 words) per patch pixel, word q holding channels
// 2q and 2q+1 of the chunk. The two 16-byte halves of a pixel swap when bit 2 of its index is set,
// so the eight pixels of a B-fragment read (and of a staging store) fall on 32 distinct banks
// without padding, which keeps the double buffers within 48 KiB.
__device__ __forceinline__ unsigned xs_word(unsigned pix, unsigned q) { return pix * 8 + (q ^ ((pix & 4) ? 4 : 0)); }

template <int K, int MT, int TH, int TW, int WARPS>
struct TileShape {
    static constexpr int P_H = TH + K - 1, P_W = TW + K - 1, PIX = P_H * P_W;
    static constexpr int THREADS = WARPS * 32;
    // Staging items: 8 channel pairs of every patch pixel, in groups of 8 pixels (64 items a
    // group, the last group padded), and every A fragment of the chunk (taps x m-tiles x lanes).
    static constexpr int X_ITEMS = 64 * ((PIX + 7) / 8), X_PER = (X_ITEMS + THREADS - 1) / THREADS;
    static constexpr int A_ITEMS = K * K * MT * 32, A_PER = (A_ITEMS + THREADS - 1) / THREADS;
    static constexpr int NTILES = TH * TW / 8, NT = NTILES / WARPS;  // n-tiles per block, per warp
    static_assert(TW % 8 == 0 && NTILES % WARPS == 0, "whole n-tiles of 8 pixels per warp");
    static_assert(4 % MT == 0, "the m-tiles of a block lie in one packed 64-channel block");
    static_assert(2 * 4 * (PIX * 8 + A_ITEMS * 4) <= 48 * 1024, "two stages within 48 KiB of static smem");
};

// Global loads of one chunk into registers. Item i of the patch: pixel (i % 8) + 8 (i / 64), channel
// pair (i / 8) % 8, so a warp reads 8 consecutive pixels of 4 channel-pair planes and stores to 32
// distinct banks.
template <int K, int MT, int TH, int TW, int WARPS>
__device__ __forceinline__ void load_chunk(unsigned (&xr)[TileShape<K, MT, TH, TW, WARPS>::X_PER],
                                           Frag (&ar)[TileShape<K, MT, TH, TW, WARPS>::A_PER], const half_t* x,
                                           const Frag* wc, unsigned chunk, unsigned cin, unsigned h, unsigned w,
                                           int x0, int y0, unsigned m0) {
    typedef TileShape<K, MT, TH, TW, WARPS> S;
#pragma unroll
    for (int k = 0; k < S::X_PER; k++) {
        const unsigned i = threadIdx.x + k * S::THREADS;
        const unsigned pix = (i & 7) + (i >> 6) * 8, q = (i >> 3) & 7;
        const int iy = y0 + (int)(pix / S::P_W) - K / 2, ix = x0 + (int)(pix % S::P_W) - K / 2;
        const unsigned c = chunk * 16 + 2 * q;
        unsigned v = 0;
        if (i < S::X_ITEMS && pix < S::PIX && iy >= 0 && iy < (int)h && ix >= 0 && ix < (int)w) {
            const half_t* p = x + ((u64)c * h + iy) * w + ix;
            unsigned lo = c < cin ? p[0] : 0, hi = c + 1 < cin ? p[(u64)h * w] : 0;
            v = lo | (hi << 16);  // the lower half is the lower channel, as mma expects
        }
        xr[k] = v;
    }
#pragma unroll
    for (int k = 0; k < S::A_PER; k++) {
        const unsigned i = threadIdx.x + k * S::THREADS;
        const unsigned tap = i / (MT * 32), r = i % (MT * 32);
        // Packed as [tap][m-tile of 4][lane]: this block's MT m-tiles are contiguous from m0.
        if (i < S::A_ITEMS) ar[k] = wc[(tap * 4 + m0) * 32 + r];
    }
}

template <int K, int MT, int TH, int TW, int WARPS>
__device__ __forceinline__ void store_chunk(unsigned* xs, Frag* as,
                                            const unsigned (&xr)[TileShape<K, MT, TH, TW, WARPS>::X_PER],
                                            const Frag (&ar)[TileShape<K, MT, TH, TW, WARPS>::A_PER]) {
    typedef TileShape<K, MT, TH, TW, WARPS> S;
#pragma unroll
    for (int k = 0; k < S::X_PER; k++) {
        const unsigned i = threadIdx.x + k * S::THREADS;
        const unsigned pix = (i & 7) + (i >> 6) * 8, q = (i >> 3) & 7;
        if (i < S::X_ITEMS && pix < S::PIX) xs[xs_word(pix, q)] = xr[k];
    }
#pragma unroll
    for (int k = 0; k < S::A_PER; k++) {
        const unsigned i = threadIdx.x + k * S::THREADS;
        if (i < S::A_ITEMS) as[i] = ar[k];
    }
}

// Block (bx, by, bz): output pixels [x0, x0 + TW) x [y0, y0 + TH), output channels
// [bz * 16 MT, (bz + 1) * 16 MT), i.e. m-tiles m0 .. m0 + MT of packed 64-channel block cob.
// Warp `warp` computes n-tiles warp * NT .. (warp + 1) * NT (n-tile n: tile row n / (TW / 8),
// columns 8 (n % (TW / 8)) .. + 8) for all MT m-tiles.
template <int K, int MT, int TH, int TW, int WARPS>
__device__ void conv2d_f16_staged(half_t* out, const half_t* x, const Frag* wp, const float* bias, unsigned cin,
                                  unsigned cout, unsigned h, unsigned w, int relu) {
    typedef TileShape<K, MT, TH, TW, WARPS> S;
    __shared__ alignas(16) unsigned xs[2][S::PIX * 8];
    __shared__ Frag as[2][S::A_ITEMS];
    const unsigned warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const unsigned g = lane / 4, t = lane % 4;
    const int x0 = blockIdx.x * TW, y0 = blockIdx.y * TH;
    const unsigned co_base = blockIdx.z * 16 * MT;
    const unsigned cob = co_base / 64, m0 = (co_base % 64) / 16;
    const unsigned chunks = (cin + 15) / 16;
    const Frag* wblock = wp + (u64)cob * chunks * K * K * 4 * 32;

    float acc[MT][S::NT][4];
#pragma unroll
    for (int m = 0; m < MT; m++) {
        unsigned c_lo = co_base + m * 16 + g, c_hi = c_lo + 8;
        float b_lo = c_lo < cout ? bias[c_lo] : 0.0f, b_hi = c_hi < cout ? bias[c_hi] : 0.0f;
#pragma unroll
        for (int j = 0; j < S::NT; j++) {
            acc[m][j][0] = b_lo;
            acc[m][j][1] = b_lo;
            acc[m][j][2] = b_hi;
            acc[m][j][3] = b_hi;
        }
    }

    unsigned xr[S::X_PER];
    Frag ar[S::A_PER];
    load_chunk<K, MT, TH, TW, WARPS>(xr, ar, x, wblock, 0, cin, h, w, x0, y0, m0);
    store_chunk<K, MT, TH, TW, WARPS>(xs[0], as[0], xr, ar);
    __syncthreads();

    for (unsigned chunk = 0; chunk < chunks; chunk++) {
        const unsigned buf = chunk & 1;
        const bool more = chunk + 1 < chunks;
        // Issue the next chunk's global loads now; they complete while the mmas below run.
        if (more)
            load_chunk<K, MT, TH, TW, WARPS>(xr, ar, x, wblock + (u64)(chunk + 1) * K * K * 4 * 32, chunk + 1, cin,
                                             h, w, x0, y0, m0);
        const unsigned* xb = xs[buf];
        const Frag* ab = as[buf];
#pragma unroll
        for (int tap = 0; tap < K * K; tap++) {
            const int ky = tap / K, kx = tap % K;
            Frag a[MT];
#pragma unroll
            for (int m = 0; m < MT; m++) a[m] = ab[(tap * MT + m) * 32 + lane];
#pragma unroll
            for (int j = 0; j < S::NT; j++) {
                const unsigned n = warp * S::NT + j, row = n / (TW / 8), col = (n % (TW / 8)) * 8;
                const unsigned pix = (row + ky) * S::P_W + col + g + kx;
                // B fragment: channels 2t, 2t+1 (b0) and 2t+8, 2t+9 (b1) of pixel column g.
                const unsigned b0 = xb[xs_word(pix, t)], b1 = xb[xs_word(pix, t + 4)];
#pragma unroll
                for (int m = 0; m < MT; m++) mma_16816(acc[m][j], a[m], b0, b1);
            }
        }
        // The other buffer was last read in the previous chunk, before the barrier that ended it.
        if (more) store_chunk<K, MT, TH, TW, WARPS>(xs[buf ^ 1], as[buf ^ 1], xr, ar);
        __syncthreads();
    }

#pragma unroll
    for (int m = 0; m < MT; m++) {
#pragma unroll
        for (int j = 0; j < S::NT; j++) {
            const unsigned n = warp * S::NT + j;
            const unsigned oy = y0 + n / (TW / 8), ox0 = x0 + (n % (TW / 8)) * 8 + 2 * t;
#pragma unroll
            for (int e = 0; e < 4; e++) {
                unsigned co = co_base + m * 16 + g + (e >= 2 ? 8 : 0);
                unsigned ox = ox0 + (e & 1);
                if (co < cout && oy < h && ox < w) {
                    float v = acc[m][j][e];
                    out[((u64)co * h + oy) * w + ox] = f2h(relu ? fmaxf(v, 0.0f) : v);
                }
            }
        }
    }
}

// One entry point per (K, channels, pixel tile, warps); the names in src/cuda/sources.rs and the
// launch shapes in src/cuda/conv_variants.rs must match these.
#define CONV_STAGED(K, CO, TH, TW, WARPS)                                                                     \
    extern "C" __global__ void __launch_bounds__(WARPS * 32)                                                  \
        conv2d_k##K##_f16_co##CO##_##TH##x##TW##_w##WARPS(half_t* out, const half_t* x, const Frag* wp,     \
                                                          const float* bias, unsigned cin, unsigned cout,   \
                                                          unsigned h, unsigned w, int relu) {               \
        conv2d_f16_staged<K, CO / 16, TH, TW, WARPS>(out, x, wp, bias, cin, cout, h, w, relu);                \
    }
#define CONV_STAGED_ALL(K)        \
    CONV_STAGED(K, 16, 16, 16, 8) \
    CONV_STAGED(K, 16, 16, 8, 4)  \
    CONV_STAGED(K, 32, 16, 16, 8) \
    CONV_STAGED(K, 32, 16, 8, 4)  \
    CONV_STAGED(K, 64, 16, 8, 8)  \
    CONV_STAGED(K, 64, 8, 8, 4)
CONV_STAGED_ALL(1)
CONV_STAGED_ALL(3)
