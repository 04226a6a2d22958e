// Shared by every kernels/<family>.cu: the Rust side prepends this text before compiling, so the
// kernels need no include path and no CUDA headers (f16 conversions are inline PTX).
//
// Storage types: `float` (--precision f32) and `half_t` (--precision f16: IEEE binary16 bits,
// arithmetic always in f32). Compiled with --fmad=false: no multiply-add contraction anywhere, so
// `a * b + c` rounds twice exactly as the CPU twins do.

typedef unsigned short half_t;
typedef unsigned long long u64;

__device__ __forceinline__ float h2f(half_t h) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
}

__device__ __forceinline__ half_t f2h(float f) {
    half_t h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
    return h;
}

__device__ __forceinline__ float ld(const float* p) { return *p; }
__device__ __forceinline__ float ld(const half_t* p) { return h2f(*p); }
__device__ __forceinline__ void st(float* p, float v) { *p = v; }
__device__ __forceinline__ void st(half_t* p, float v) { *p = f2h(v); }

// Grid-stride loop over [0, n) with 64-bit indices (activations can exceed 2^31 elements).
#define FOR_EACH_INDEX(i, n) \
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < (n); i += (u64)gridDim.x * blockDim.x)
