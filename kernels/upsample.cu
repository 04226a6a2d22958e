// x2 up-sampling, nearest and bilinear with align_corners=False. Twin: src/cpu/upsample.rs.
// The source positions and weights follow PyTorch's formula in f32, evaluated in the twin's
// order without FMA, so f32 results equal the twin's bit for bit. Which weights apply depends only
// on an output position's parity and the map edge, so tiles reproduce the whole image.

// (i0, i1, l0, l1) along one axis of length n for output index o.
__device__ __forceinline__ void source(unsigned o, unsigned n, unsigned& i0, unsigned& i1, float& l0, float& l1) {
    float real = fmaxf(__fsub_rn(__fmul_rn(__fadd_rn((float)o, 0.5f), 0.5f), 0.5f), 0.0f);
    i0 = (unsigned)real;
    i1 = i0 + 1 < n ? i0 + 1 : i0;
    l1 = __fsub_rn(real, (float)i0);
    l0 = __fsub_rn(1.0f, l1);
}

template <typename T>
__device__ void upsample2(T* out, const T* x, unsigned h, unsigned w, int bilinear, u64 n) {
    unsigned oh = 2 * h, ow = 2 * w;
    FOR_EACH_INDEX(i, n) {
        u64 c = i / ((u64)oh * ow);
        unsigned r = (unsigned)(i % ((u64)oh * ow));
        unsigned oy = r / ow, ox = r % ow;
        const T* plane = x + c * h * w;
        if (!bilinear) {
            st(out + i, ld(plane + (oy / 2) * w + ox / 2));
            continue;
        }
        unsigned y0, y1, x0, x1;
        float ly0, ly1, lx0, lx1;
        source(oy, h, y0, y1, ly0, ly1);
        source(ox, w, x0, x1, lx0, lx1);
        float a = __fadd_rn(__fmul_rn(lx0, ld(plane + y0 * w + x0)), __fmul_rn(lx1, ld(plane + y0 * w + x1)));
        float b = __fadd_rn(__fmul_rn(lx0, ld(plane + y1 * w + x0)), __fmul_rn(lx1, ld(plane + y1 * w + x1)));
        st(out + i, __fadd_rn(__fmul_rn(ly0, a), __fmul_rn(ly1, b)));
    }
}

extern "C" __global__ void upsample2_f32(float* out, const float* x, unsigned h, unsigned w, int bilinear, u64 n) {
    upsample2(out, x, h, w, bilinear, n);
}
extern "C" __global__ void upsample2_f16(half_t* out, const half_t* x, unsigned h, unsigned w, int bilinear,
                                         u64 n) {
    upsample2(out, x, h, w, bilinear, n);
}
