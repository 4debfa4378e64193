/* lm_util: small fp32 utilities of the trainer.
 *   cast:  y = dtype(x)
 *   sumsq: part[b] = Σ x² over the elements block b visits (grid-stride over 16-byte vectors,
 *          fixed grid of LM_SUMSQ_BLOCKS blocks: the same n gives the same partials, bitwise)
 *   gnorm: norm = sqrt(Σ part) in a fixed order; clip = min(1, max_norm/(norm + 1e-6))
 *   scale: x = x·s·(*sdev) */
// moegen:entries cast sumsq gnorm scale
// moegen:parts mg_vec
// moegen:grid cast: ceil(n/256) x 256
// moegen:grid sumsq: LM_SUMSQ_BLOCKS x 256
// moegen:grid gnorm: 1 x 256
// moegen:grid scale: ceil(n/256) x 256
#ifndef MOEGEN_GENERATED
#include "mg_defaults.cuh"
#include "moe_params.h"
#include "mg_common.cuh"
#include "lm_params.h"
#include "mg_vec.cuh"
#endif

/* cast. grid: ceil(n / LM_UTIL_THREADS); block LM_UTIL_THREADS. */
extern "C" __global__ void __launch_bounds__(LM_UTIL_THREADS)
/*$cast*/lm_util_cast(const lm_cast_params p)
{
    const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < p.n) ((mg_t *)p.y)[i] = mg_from_f32<mg_t>(p.x[i]);
}

/* sumsq. grid: LM_SUMSQ_BLOCKS; block LM_UTIL_THREADS. 16-byte loads, four in flight per
 * thread (the partial is a fixed function of n and the alignment of x, hence bitwise
 * repeatable): thread t sums vectors t, t + G, t + 2G, ... (G threads in all) into four
 * accumulators in turn, added in order at the end; the n % 4 tail goes to thread 0. */
extern "C" __global__ void __launch_bounds__(LM_UTIL_THREADS)
/*$sumsq*/lm_util_sumsq(const lm_sumsq_params p)
{
    __shared__ float scratch[32];
    const long long G = (long long)gridDim.x * blockDim.x, t = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    const bool vec = mg_aligned16(p.x);
    const long long nv = vec ? p.n / 4 : 0;
    float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    long long v = t;
    for (; v + 3 * G < nv; v += 4 * G) {   /* four independent loads before the first use */
        mg_v16 q[4];
#pragma unroll
        for (int u = 0; u < 4; u++) q[u] = mg_v16_ld(p.x + 4 * (v + u * G));
#pragma unroll
        for (int u = 0; u < 4; u++) {
            float f[4];
            mg_v16_f32(q[u], f);
#pragma unroll
            for (int e = 0; e < 4; e++) acc[u] = fmaf(f[e], f[e], acc[u]);
        }
    }
#pragma unroll
    for (int u = 0; u < 3; u++) {          /* at most three vectors left */
        if (v + u * G >= nv) break;
        float f[4];
        mg_v16_f32(mg_v16_ld(p.x + 4 * (v + u * G)), f);
#pragma unroll
        for (int e = 0; e < 4; e++) acc[u] = fmaf(f[e], f[e], acc[u]);
    }
    for (long long i = 4 * nv + t; i < p.n; i += G) acc[0] = fmaf(p.x[i], p.x[i], acc[0]);   /* tail, or all if unaligned */
    float s = (acc[0] + acc[1]) + (acc[2] + acc[3]);
    s = mg_block_sum(s, scratch);
    if (threadIdx.x == 0) p.part[blockIdx.x] = s;
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
