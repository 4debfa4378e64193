/* lm_util: small fp32 utilities of the trainer.
 *   cast:  y = dtype(x)
 *   sumsq: part[b] = Σ x² over the elements block b visits (grid-stride, fixed grid of
 *          LM_SUMSQ_BLOCKS blocks: the same n gives the same partials, bitwise)
 *   gnorm: norm = sqrt(Σ part) in a fixed order; clip = min(1, max_norm/(norm + 1e-6))
 *   scale: x = x·s·(*sdev) */
// moegen:entries cast sumsq gnorm scale
// moegen:grid cast: ceil(n/256) x 256
// moegen:grid sumsq: LM_SUMSQ_BLOCKS x 256
// moegen:grid gnorm: 1 x 256
// moegen:grid scale: ceil(n/256) x 256
#ifndef MOEGEN_GENERATED
#include "mg_defaults.cuh"
#include "moe_params.h"
#include "mg_common.cuh"
#include "lm_params.h"
#endif

/* cast. grid: ceil(n / LM_UTIL_THREADS); block LM_UTIL_THREADS. */
extern "C" __global__ void __launch_bounds__(LM_UTIL_THREADS)
/*$cast*/lm_util_cast(const lm_cast_params p)
{
    const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < p.n) ((mg_t *)p.y)[i] = mg_from_f32<mg_t>(p.x[i]);
}

/* sumsq. grid: LM_SUMSQ_BLOCKS; block LM_UTIL_THREADS. */
extern "C" __global__ void __launch_bounds__(LM_UTIL_THREADS)
/*$sumsq*/lm_util_sumsq(const lm_sumsq_params p)
{
    __shared__ float scratch[32];
    float acc = 0.0f;
    const long long stride = (long long)gridDim.x * blockDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < p.n; i += stride)
        acc = fmaf(p.x[i], p.x[i], acc);
    acc = mg_block_sum(acc, scratch);
    if (threadIdx.x == 0) p.part[blockIdx.x] = acc;
}

/* gnorm. grid: 1; block LM_UTIL_THREADS. */
extern "C" __global__ void __launch_bounds__(LM_UTIL_THREADS)
/*$gnorm*/lm_util_gnorm(const lm_gnorm_params p)
{
    __shared__ float scratch[32];
    float acc = 0.0f;
    for (int i = threadIdx.x; i < p.n_part; i += blockDim.x) acc += p.part[i];
    acc = mg_block_sum(acc, scratch);
    if (threadIdx.x == 0) {
        const float norm = sqrtf(acc);
        p.out[0] = norm;
        p.out[1] = p.max_norm > 0.0f ? fminf(1.0f, p.max_norm / (norm + 1e-6f)) : 1.0f;
    }
}

/* scale. grid: ceil(n / LM_UTIL_THREADS); block LM_UTIL_THREADS. */
extern "C" __global__ void __launch_bounds__(LM_UTIL_THREADS)
/*$scale*/lm_util_scale(const lm_scale_params p)
{
    const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < p.n) p.x[i] *= p.s * (p.sdev ? p.sdev[0] : 1.0f);
}
