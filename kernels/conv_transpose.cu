// ConvTranspose2d, stride 2, padding 0, k = 2 or 3, output cropped to 2h x 2w.
// Twin: src/cpu/conv_transpose.rs. One thread per output element sums
// bias + Σ_ci Σ_ky Σ_kx w[ci][co][ky][kx]·x[ci][iy][ix] over the taps with oy = 2·iy + ky,
// ox = 2·ix + kx, in ascending (ci, ky, kx) order with one fused multiply-add per term: the twin's
// order and rounding, so f32 results equal it bit for bit. Which taps exist depends only on the parity of (oy, ox)
// and the map edge; tiles start on even positions, so they sum exactly as the whole image does.
// Weights have the activations' storage type; accumulation is always f32.

template <typename T, int K>
__device__ void conv_transpose2d(T* out, const T* x, const T* wt, const float* bias, unsigned cin, unsigned cout,
                                 unsigned h, unsigned w, u64 n) {
    unsigned oh = 2 * h, ow = 2 * w;
    FOR_EACH_INDEX(i, n) {
        unsigned co = (unsigned)(i / ((u64)oh * ow));
        unsigned r = (unsigned)(i % ((u64)oh * ow));
        unsigned oy = r / ow, ox = r % ow;
        float acc = bias[co];
        for (unsigned ci = 0; ci < cin; ci++) {
            const T* plane = x + (u64)ci * h * w;
            const T* wk = wt + ((u64)ci * cout + co) * K * K;
#pragma unroll
            for (int ky = 0; ky < K; ky++) {
                if ((int)oy < ky || ((oy - ky) & 1) != 0) continue;
                unsigned iy = (oy - ky) / 2;
                if (iy >= h) continue;
#pragma unroll
                for (int kx = 0; kx < K; kx++) {
                    if ((int)ox < kx || ((ox - kx) & 1) != 0) continue;
                    unsigned ix = (ox - kx) / 2;
                    if (ix >= w) continue;
                    acc = __fmaf_rn(ld(wk + ky * K + kx), ld(plane + iy * w + ix), acc);
                }
            }
        }
        st(out + i, acc);
    }
}

#define CONV_T(K)                                                                                              \
    extern "C" __global__ void conv_transpose2d_k##K##_f32(float* out, const float* x, const float* wt,       \
                                                           const float* bias, unsigned cin, unsigned cout,   \
                                                           unsigned h, unsigned w, u64 n) {                  \
        conv_transpose2d<float, K>(out, x, wt, bias, cin, cout, h, w, n);                                    \
    }                                                                                                          \
    extern "C" __global__ void conv_transpose2d_k##K##_f16(half_t* out, const half_t* x, const half_t* wt,    \
                                                           const float* bias, unsigned cin, unsigned cout,   \
                                                           unsigned h, unsigned w, u64 n) {                  \
        conv_transpose2d<half_t, K>(out, x, wt, bias, cin, cout, h, w, n);                                   \
    }
CONV_T(2)
CONV_T(3)
