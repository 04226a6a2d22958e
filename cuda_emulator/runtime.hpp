// The emulated device's execution model, shared by the driver (driver.cpp) and the host build of
// the kernels (prelude.hpp): which block and thread the running code is, the block barrier, and the
// warp-collective tensor-core instruction.
//
// Every CUDA thread of a block is a fiber on one host thread, so `__shared__` variables can be
// `static thread_local` (one copy per host thread, shared by the fibers of the block it runs) and a
// barrier is a switch back to the block's scheduler. Blocks of one launch run on several host
// threads at once.
#pragma once

namespace emu {

struct Dim3 {
    unsigned x, y, z;
};

struct BlockInfo {
    Dim3 idx, dim, grid;
};

struct Fiber;

// The fiber running on this host thread, and the block it belongs to; set by the scheduler
// before it switches into a fiber.
extern thread_local Fiber* tl_fiber;
extern thread_local BlockInfo tl_block;

Dim3 fiber_thread_idx(const Fiber* f);

// __syncthreads(): returns when every thread of the block that has not exited has arrived.
void sync_block();

// mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 for the calling lane: `a` its four A
// registers, b0/b1 its two B registers, `c` its four accumulators (read, then overwritten by D).
// Returns when all 32 lanes of the warp have issued it (the lanes exchange fragments as the PTX
// ISA lays them out).
void mma_m16n8k16(float* c, const unsigned* a, unsigned b0, unsigned b1);

}  // namespace emu
