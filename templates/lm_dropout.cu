/* lm_dropout: inverted dropout with a counter-based mask (templates/mg_hash.h), fused with
 * the residual add; the backward recomputes the mask, nothing is stored.
 *   fwd: out[i] = res[i] + (keep(i) ? x[i]·scale : 0)      (res NULL: no residual)
 *   bwd: out[i] = keep(i) ? x[i]·scale : 0                 (x = ∂L/∂out; ∂L/∂res = ∂L/∂out) */
// moegen:entries fwd bwd
// moegen:grid fwd: ceil(n/256) x 256
// moegen:grid bwd: ceil(n/256) x 256
#ifndef MOEGEN_GENERATED
#include "mg_defaults.cuh"
#include "moe_params.h"
#include "mg_common.cuh"
#include "lm_params.h"
#include "mg_hash.h"
#endif

MG_DEV float lm_drop(const lm_dropout_params &p, long long i, float v)
{
    return mg_hash_drop_u24(p.stream, (mg_hash_u64)i) >= p.thr ? v * p.scale : 0.0f;
}

/* fwd. grid: ceil(n / LM_DROP_THREADS); block LM_DROP_THREADS. */
extern "C" __global__ void __launch_bounds__(LM_DROP_THREADS)
/*$fwd*/lm_dropout_fwd(const lm_dropout_params p)
{
    const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= p.n) return;
    float v = lm_drop(p, i, mg_to_f32(((const mg_t *)p.x)[i]));
    if (p.res) v += mg_to_f32(((const mg_t *)p.res)[i]);
    ((mg_t *)p.out)[i] = mg_from_f32<mg_t>(v);
}

/* bwd. grid: ceil(n / LM_DROP_THREADS); block LM_DROP_THREADS. */
extern "C" __global__ void __launch_bounds__(LM_DROP_THREADS)
/*$bwd*/lm_dropout_bwd(const lm_dropout_params p)
{
    const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= p.n) return;
    ((mg_t *)p.out)[i] = mg_from_f32<mg_t>(lm_drop(p, i, mg_to_f32(((const mg_t *)p.x)[i])));
}
