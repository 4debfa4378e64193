/* lm_adamw: one AdamW step over fp32 master weights (formula: templates/lm_params.h,
 * lm_adamw_params), writing the storage-type compute copy. Elementwise, deterministic. */
// moegen:entries step
// moegen:grid step: ceil(n/256) x 256
#ifndef MOEGEN_GENERATED
#include "mg_defaults.cuh"
#include "moe_params.h"
#include "mg_common.cuh"
#include "lm_params.h"
#endif

/* step. grid: ceil(n / LM_ADAMW_THREADS); block LM_ADAMW_THREADS. */
extern "C" __global__ void __launch_bounds__(LM_ADAMW_THREADS)
/*$step*/lm_adamw_step(const lm_adamw_params p)
{
    const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= p.n) return;
    const float g = p.g[i] * (p.gscale ? p.gscale[0] : 1.0f);
    float w = p.w[i] * (1.0f - p.lr * p.wd);
    const float m = p.beta1 * p.m[i] + (1.0f - p.beta1) * g;
    const float v = p.beta2 * p.v[i] + (1.0f - p.beta2) * g * g;
    w -= (p.lr / p.bc1) * m / (sqrtf(v) / sqrtf(p.bc2) + p.eps);
    p.m[i] = m;
    p.v[i] = v;
    p.w[i] = w;
    if (p.w_c) ((mg_t *)p.w_c)[i] = mg_from_f32<mg_t>(w);
}
