// Host prelude: stands in for kernels/common.cuh when a kernels/<family>.cu file is compiled by the
// host C++ compiler for the emulated device. It gives the kernels the CUDA C they use (built-in
// indices, __shared__, __syncthreads, the _rn arithmetic intrinsics) and the same API common.cuh
// gives them on a GPU (half_t, h2f/f2h, ld/st, FOR_EACH_INDEX, Frag, mma_16816), with host
// implementations of what is inline PTX there.
//
// Compiled with -ffp-contract=off: `a * b + c` rounds twice, as NVRTC's --fmad=false does, and
// __fmaf_rn is the correctly rounded fmaf, so f32 kernels compute what they compute on a GPU.
#pragma once

#include <math.h>
#include <stdint.h>
#include <string.h>

#include "half.hpp"
#include "registry.hpp"
#include "runtime.hpp"

#define __global__
#define __device__
#define __forceinline__ inline __attribute__((always_inline))
#define __launch_bounds__(...)
#define __restrict__ __restrict
// One copy per host thread: the fibers of the block running on it share it, as a block shares
// shared memory.
#define __shared__ static thread_local

#define threadIdx (::emu::fiber_thread_idx(::emu::tl_fiber))
#define blockIdx (::emu::tl_block.idx)
#define blockDim (::emu::tl_block.dim)
#define gridDim (::emu::tl_block.grid)

inline void __syncthreads() { ::emu::sync_block(); }

inline float __fmaf_rn(float a, float b, float c) { return fmaf(a, b, c); }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline float __int_as_float(unsigned bits) {
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

typedef unsigned short half_t;
typedef unsigned long long u64;

inline float h2f(half_t h) { return ::emu::half_to_float(h); }
inline half_t f2h(float f) { return ::emu::float_to_half(f); }

__device__ __forceinline__ float ld(const float* p) { return *p; }
__device__ __forceinline__ float ld(const half_t* p) { return h2f(*p); }
__device__ __forceinline__ void st(float* p, float v) { *p = v; }
__device__ __forceinline__ void st(half_t* p, float v) { *p = f2h(v); }

#define FOR_EACH_INDEX(i, n) \
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < (n); i += (u64)gridDim.x * blockDim.x)

struct alignas(16) Frag {
    unsigned r[4];
};

inline void mma_16816(float* c, const Frag& a, unsigned b0, unsigned b1) { ::emu::mma_m16n8k16(c, a.r, b0, b1); }

// The kernels write `__shared__ alignas(16) T name[n]`, which after the __shared__ expansion puts a
// standard attribute among the decl-specifiers; the GNU spelling may stand there.
#define alignas(n) __attribute__((aligned(n)))
