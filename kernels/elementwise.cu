// Per-channel scale and shift (inference batch norm) with optional ReLU, and plain ReLU.
// Twin: src/cpu/elementwise.rs. One thread per element; `x * s + b` is a multiply then an add
// (no FMA), as on the CPU, so f32 results equal the twin's bit for bit. The `_inplace` entry points
// are the same arithmetic over one buffer (the arena executor's in-place steps): each thread reads
// its element before writing it, so `out == x` is safe.

template <typename T>
__device__ void scale_shift(T* out, const T* x, const float* scale, const float* shift, int relu, u64 hw, u64 n) {
    FOR_EACH_INDEX(i, n) {
        u64 c = i / hw;
        float y = __fadd_rn(__fmul_rn(ld(x + i), scale[c]), shift[c]);
        st(out + i, relu ? fmaxf(y, 0.0f) : y);
    }
}

template <typename T>
__device__ void relu(T* out, const T* x, u64 n) {
    FOR_EACH_INDEX(i, n) { st(out + i, fmaxf(ld(x + i), 0.0f)); }
}

extern "C" __global__ void scale_shift_f32(float* out, const float* x, const float* scale, const float* shift,
                                           int relu, u64 hw, u64 n) {
    scale_shift(out, x, scale, shift, relu, hw, n);
}
extern "C" __global__ void scale_shift_f16(half_t* out, const half_t* x, const float* scale, const float* shift,
                                           int relu, u64 hw, u64 n) {
    scale_shift(out, x, scale, shift, relu, hw, n);
}
extern "C" __global__ void relu_f32(float* out, const float* x, u64 n) { relu(out, x, n); }
extern "C" __global__ void relu_f16(half_t* out, const half_t* x, u64 n) { relu(out, x, n); }
extern "C" __global__ void scale_shift_inplace_f32(float* x, const float* scale, const float* shift, int relu, u64 hw,
                                                   u64 n) {
    scale_shift(x, x, scale, shift, relu, hw, n);
}
extern "C" __global__ void scale_shift_inplace_f16(half_t* x, const float* scale, const float* shift, int relu,
                                                   u64 hw, u64 n) {
    scale_shift(x, x, scale, shift, relu, hw, n);
}
extern "C" __global__ void relu_inplace_f32(float* x, u64 n) { relu(x, x, n); }
extern "C" __global__ void relu_inplace_f16(half_t* x, u64 n) { relu(x, x, n); }
