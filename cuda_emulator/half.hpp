// IEEE binary16 <-> binary32 conversions as the GPU does them: cvt.f32.f16 (exact) and
// cvt.rn.f16.f32 (round to nearest even, overflow to infinity, NaN to the canonical NaN).
#pragma once

#include <stdint.h>
#include <string.h>

namespace emu {

inline float half_to_float(uint16_t h) {
    const uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = (h >> 10) & 0x1f, man = h & 0x3ff;
    uint32_t bits;
    if (exp == 0x1f) {
        bits = sign | 0x7f800000 | (man << 13);  // inf, NaN (payload kept)
    } else if (exp != 0) {
        bits = sign | ((exp + 112) << 23) | (man << 13);
    } else if (man == 0) {
        bits = sign;
    } else {  // subnormal: man * 2^-24, exact in f32
        const float f = (float)man * 5.9604644775390625e-8f;
        memcpy(&bits, &f, sizeof bits);
        bits |= sign;
    }
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

inline uint16_t float_to_half(float f) {
    uint32_t bits;
    memcpy(&bits, &f, sizeof bits);
    const uint32_t sign = (bits >> 16) & 0x8000, abs = bits & 0x7fffffff;
    if (abs > 0x7f800000) return 0x7fff;
    if (abs >= 0x477ff000) return (uint16_t)(sign | 0x7c00);  // rounds to 65536 or more: infinity
    if (abs >= 0x38800000) {                                   // normal in f16 (>= 2^-14)
        const uint32_t mant = abs & 0x7fffff, e = (abs >> 23) - 112;
        uint32_t h = (e << 10) | (mant >> 13);
        const uint32_t rest = mant & 0x1fff;
        if (rest > 0x1000 || (rest == 0x1000 && (h & 1))) h++;  // a carry into the exponent is right
        return (uint16_t)(sign | h);
    }
    if (abs <= 0x33000000) return (uint16_t)sign;  // at most half the smallest subnormal: zero
    // Subnormal in f16: the value in units of 2^-24, rounded to an integer, ties to even.
    const uint32_t e = abs >> 23, mant = (abs & 0x7fffff) | 0x800000, shift = 126 - e;
    uint32_t h = mant >> shift;
    const uint32_t rest = mant & ((1u << shift) - 1), half = 1u << (shift - 1);
    if (rest > half || (rest == half && (h & 1))) h++;
    return (uint16_t)(sign | h);
}

}  // namespace emu
