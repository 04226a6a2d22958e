// Softmax and argmax over channels, one thread per pixel. Twin: src/cpu/softmax.rs.
// Softmax: maximum, then the sum of exp(x - max) in channel order, then each exp divided by the
// sum (the exponential is recomputed rather than stored, which gives the same value). expf is
// the accurate one (not __expf), within 2 ulp of the CPU's exp: cross-backend this is a tolerance,
// not bits. Argmax returns the first maximal channel, as the twin does.

template <typename T>
__device__ void softmax(T* out, const T* x, unsigned c, u64 hw) {
    FOR_EACH_INDEX(p, hw) {
        float m = __int_as_float(0xff800000);  // -inf
        for (unsigned k = 0; k < c; k++) m = fmaxf(m, ld(x + k * hw + p));
        float sum = 0.0f;
        for (unsigned k = 0; k < c; k++) sum = __fadd_rn(sum, expf(__fsub_rn(ld(x + k * hw + p), m)));
        for (unsigned k = 0; k < c; k++) st(out + k * hw + p, __fdiv_rn(expf(__fsub_rn(ld(x + k * hw + p), m)), sum));
    }
}

template <typename T>
__device__ void argmax(T* out, const T* x, unsigned c, u64 hw) {
    FOR_EACH_INDEX(p, hw) {
        unsigned best = 0;
        float bv = ld(x + p);
        for (unsigned k = 1; k < c; k++) {
            float v = ld(x + k * hw + p);
            if (v > bv) {
                best = k;
                bv = v;
            }
        }
        st(out + p, (float)best);
    }
}

extern "C" __global__ void softmax_f32(float* out, const float* x, unsigned c, u64 hw) { softmax(out, x, c, hw); }
extern "C" __global__ void softmax_f16(half_t* out, const half_t* x, unsigned c, u64 hw) { softmax(out, x, c, hw); }
extern "C" __global__ void argmax_f32(float* out, const float* x, unsigned c, u64 hw) { argmax(out, x, c, hw); }
extern "C" __global__ void argmax_f16(half_t* out, const half_t* x, unsigned c, u64 hw) { argmax(out, x, c, hw); }
