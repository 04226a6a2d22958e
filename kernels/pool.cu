// MaxPool 2x2 stride 2. Twin: src/cpu/pool.rs. The four taps are combined in the twin's order;
// a maximum picks one of its inputs, so both precisions are exact.

template <typename T>
__device__ void max_pool2(T* out, const T* x, unsigned h, unsigned w, u64 n) {
    unsigned oh = h / 2, ow = w / 2;
    FOR_EACH_INDEX(i, n) {
        u64 c = i / ((u64)oh * ow);
        unsigned r = (unsigned)(i % ((u64)oh * ow));
        unsigned oy = r / ow, ox = r % ow;
        const T* r0 = x + (c * h + 2 * oy) * w + 2 * ox;
        const T* r1 = r0 + w;
        float m = fmaxf(fmaxf(fmaxf(ld(r0), ld(r0 + 1)), ld(r1)), ld(r1 + 1));
        st(out + i, m);
    }
}

extern "C" __global__ void max_pool2_f32(float* out, const float* x, unsigned h, unsigned w, u64 n) {
    max_pool2(out, x, h, w, n);
}
extern "C" __global__ void max_pool2_f16(half_t* out, const half_t* x, unsigned h, unsigned w, u64 n) {
    max_pool2(out, x, h, w, n);
}
