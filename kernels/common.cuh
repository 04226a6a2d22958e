// Shared by every kernels/<family>.cu: the Rust side prepends this text before compiling, so the
// kernels need no include path and no CUDA headers (f16 conversions are inline PTX).
//
// Every line of inline PTX the kernels use is here, and nowhere else: the emulated device
// (cuda_emulator/) compiles the same kernels/<family>.cu files for the host with its own
// prelude.hpp in place of this file, which implements each of these functions on the host.
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

// One mma.sync.m16n8k16 tensor-core instruction: f16 A (row-major, 4 registers of 2 halves) times
// f16 B (column-major, 2 registers) plus f32 C, into C. Warp-collective: all 32 lanes issue it
// together, each holding its fragments in the PTX ISA's layout.
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
