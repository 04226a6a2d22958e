// What the driver (driver.cpp) and the block scheduler (scheduler.cpp) share.
#pragma once

#include <stdint.h>

#include <string>

#include "half.hpp"
#include "registry.hpp"
#include "runtime.hpp"

namespace emu {

struct Launch {
    const KernelEntry* kernel;
    void* args;  // the kernel's packed arguments
    Dim3 grid, block;
    uint64_t shuffle_seed;  // nonzero: run each block's threads in a seeded random order
};

// Run every block of `l`; returns an error message, or "" on success.
std::string run_launch(const Launch& l);

inline float h2f_bits(unsigned bits) { return half_to_float((uint16_t)bits); }

}  // namespace emu
