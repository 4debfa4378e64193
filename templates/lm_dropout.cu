/* lm_dropout: inverted dropout with a counter-based mask (templates/mg_hash.h), fused with
 * the residual add; the backward recomputes the mask, nothing is stored.
 *   fwd: out[i] = res[i] + (keep(i) ? x[i]·scale : 0)      (res NULL: no residual)
 *   bwd: out[i] = keep(i) ? x[i]·scale : 0                 (x = ∂L/∂out; ∂L/∂res = ∂L/∂out)
 * Thread t owns elements [t·MG_VEC, t·MG_VEC + MG_VEC): one 16-byte vector per tensor when
 * the vector is whole and the pointers are 16-byte aligned, else element by element (the
 * tail of an n that is not a multiple of MG_VEC). The mask of element i depends on i only. */
// moegen:entries fwd bwd
// moegen:parts mg_vec
// moegen:grid fwd: ceil(ceil(n/MG_VEC)/256) x 256
// moegen:grid bwd: ceil(ceil(n/MG_VEC)/256) x 256
#ifndef MOEGEN_GENERATED
#include "mg_defaults.cuh"
#include "moe_params.h"
#include "mg_common.cuh"
#include "lm_params.h"
#include "mg_hash.h"
#include "mg_vec.cuh"
#endif

MG_DEV float lm_drop(const lm_dropout_params &p, long long i, float v)
{
    return mg_hash_drop_u24(p.stream, (mg_hash_u64)i) >= p.thr ? v * p.scale : 0.0f;
}

/* Both entries: out = (res +) drop(x) over this thread's elements. */
template <bool RES> MG_DEV void lm_dropout_apply(const lm_dropout_params &p)
{
    const long long i0 = ((long long)blockIdx.x * blockDim.x + threadIdx.x) * MG_VEC;
    if (i0 >= p.n) return;
    const bool vec = i0 + MG_VEC <= p.n && mg_aligned16(p.x) && mg_aligned16(p.out) && (!RES || mg_aligned16(p.res));
    if (vec) {
        float x[MG_VEC], r[MG_VEC];
        mg_v16_unpack(mg_v16_ld((const mg_t *)p.x + i0), x);
        if (RES) mg_v16_unpack(mg_v16_ld((const mg_t *)p.res + i0), r);
#pragma unroll
        for (int e = 0; e < MG_VEC; e++) {
            x[e] = lm_drop(p, i0 + e, x[e]);
            if (RES) x[e] += r[e];
        }
        mg_v16_st((mg_t *)p.out + i0, mg_v16_pack(x));   /* out may alias x or res: read above */
        return;
    }
    for (long long i = i0; i < i0 + MG_VEC && i < p.n; i++) {
        float v = lm_drop(p, i, mg_to_f32(((const mg_t *)p.x)[i]));
        if (RES) v += mg_to_f32(((const mg_t *)p.res)[i]);
        ((mg_t *)p.out)[i] = mg_from_f32<mg_t>(v);
    }
}

/* fwd. grid: ceil(ceil(n / MG_VEC) / LM_DROP_THREADS); block LM_DROP_THREADS. */
extern "C" __global__ void __launch_bounds__(LM_DROP_THREADS)
/*$fwd*/lm_dropout_fwd(const lm_dropout_params p)
{
    if (p.res) lm_dropout_apply<true>(p);
    else lm_dropout_apply<false>(p);
}

/* bwd: the same grid; res is ignored. */
extern "C" __global__ void __launch_bounds__(LM_DROP_THREADS)
/*$bwd*/lm_dropout_bwd(const lm_dropout_params p)
{
    lm_dropout_apply<false>(p);
}
