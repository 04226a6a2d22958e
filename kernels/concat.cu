// Concatenation over channels. Twin: src/cpu/concat.rs. In CHW layout each input is one
// contiguous run of the output, so the op is a copy of each input to its channel offset.

template <typename T>
__device__ void copy_into(T* out, u64 offset, const T* x, u64 n) {
    FOR_EACH_INDEX(i, n) { out[offset + i] = x[i]; }
}

extern "C" __global__ void copy_into_f32(float* out, u64 offset, const float* x, u64 n) {
    copy_into(out, offset, x, n);
}
extern "C" __global__ void copy_into_f16(half_t* out, u64 offset, const half_t* x, u64 n) {
    copy_into(out, offset, x, n);
}
