/* mg_vec: 16-byte vector access for the memory-bound kernels (RMSNorm, dropout, RoPE,
 * combine, grad-norm). One 16-byte load or store per thread and step is what lets these
 * kernels reach HBM bandwidth; 2-byte scalar accesses leave them at a third of it.
 *
 * A template that uses it names it on its "moegen:parts mg_vec" line: the generator
 * inlines it after mg_common.cuh (whose mg_t, mg_to_f32 and mg_from_f32 it needs). Callers
 * pass 16-byte aligned addresses (lm_params.h: buffers are; d_model is a multiple of 16). */
#ifndef MG_VEC_CUH
#define MG_VEC_CUH

/* 16 bytes as four words; alignas lets the compiler emit one LDG.E.128 / STG.E.128. */
struct alignas(16) mg_v16 { unsigned u[4]; };
/* Storage-type elements per 16-byte vector: 8 for bf16/fp16, 4 for fp32. */
static constexpr int MG_VEC = 16 / (int)sizeof(mg_t);

MG_DEV mg_v16 mg_v16_ld(const void *p) { return *(const mg_v16 *)p; }
MG_DEV void mg_v16_st(void *p, const mg_v16 &v) { *(mg_v16 *)p = v; }
MG_DEV mg_v16 mg_v16_zero() { return mg_v16{{0u, 0u, 0u, 0u}}; }
MG_DEV bool mg_aligned16(const void *p) { return ((unsigned long long)p & 15ull) == 0; }

/* Element e of a vector of mg_t as fp32. (Templates so that the branch of the other
 * storage width is discarded, not compiled.) */
template <class T = mg_t> MG_DEV float mg_v16_get(const mg_v16 &v, int e)
{
    if constexpr (sizeof(T) == 4) return __uint_as_float(v.u[e]);
    else {
        const unsigned w = v.u[e >> 1];
        T x;
        x.u = (unsigned short)(e & 1 ? w >> 16 : w & 0xffffu);
        return mg_to_f32(x);
    }
}

/* All MG_VEC elements as fp32. */
MG_DEV void mg_v16_unpack(const mg_v16 &v, float (&f)[MG_VEC])
{
#pragma unroll
    for (int e = 0; e < MG_VEC; e++) f[e] = mg_v16_get(v, e);
}

/* MG_VEC fp32 values rounded to mg_t (mg_from_f32: round to nearest even). */
template <class T = mg_t> MG_DEV mg_v16 mg_v16_pack(const float (&f)[MG_VEC])
{
    mg_v16 r;
    if constexpr (sizeof(T) == 4) {
#pragma unroll
        for (int e = 0; e < 4; e++) r.u[e] = __float_as_uint(f[e]);
    } else {
#pragma unroll
        for (int e = 0; e < 4; e++)
            r.u[e] = (unsigned)mg_from_f32<T>(f[2 * e]).u | (unsigned)mg_from_f32<T>(f[2 * e + 1]).u << 16;
    }
    return r;
}

/* Four fp32 values (fp32 workspaces such as the combine's z, the gradient buffer). */
MG_DEV void mg_v16_f32(const mg_v16 &v, float (&f)[4])
{
#pragma unroll
    for (int e = 0; e < 4; e++) f[e] = __uint_as_float(v.u[e]);
}

#endif
