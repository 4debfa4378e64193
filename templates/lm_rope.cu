/* lm_rope: rotary position embedding (HF Llama rotate-half convention) in place on the q
 * and k heads of the fused qkv tensor; fp32 math on fp64-built tables.
 *   table: cos_t[s, i] = cos(s·theta^(−2i/hd)), sin_t likewise (fp64, rounded to float)
 *   fwd:   (x_i, x_{i+hd/2}) -> (x_i·c − x_{i+hd/2}·s, x_{i+hd/2}·c + x_i·s)
 *   bwd:   the transpose (rotation by −angle), in place on dqkv
 * Position of row r = r % S. Layouts: templates/lm_params.h. */
// moegen:entries table fwd bwd
// moegen:grid table: ceil(S*hd/2 / 256) x 256
// moegen:grid fwd: (B*S, ceil((H+KV)*hd/2 / 256)) x 256
// moegen:grid bwd: (B*S, ceil((H+KV)*hd/2 / 256)) x 256
#ifndef MOEGEN_GENERATED
#include "mg_defaults.cuh"
#include "moe_params.h"
#include "mg_common.cuh"
#include "lm_params.h"
#endif

static_assert(MG_HEAD_DIM % 2 == 0, "RoPE needs an even head_dim");

/* table. grid: ceil(S·hd/2 / LM_ROPE_THREADS); block LM_ROPE_THREADS. */
extern "C" __global__ void __launch_bounds__(LM_ROPE_THREADS)
/*$table*/lm_rope_table(const lm_rope_table_params p)
{
    constexpr int HALF = MG_HEAD_DIM / 2;
    const long long k = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (k >= (long long)p.S * HALF) return;
    const int s = (int)(k / HALF), i = (int)(k % HALF);
    const double ang = (double)s * pow(MG_ROPE_THETA, -2.0 * i / MG_HEAD_DIM);
    p.cos_t[k] = (float)cos(ang);
    p.sin_t[k] = (float)sin(ang);
}

template <bool INV> MG_DEV void lm_rope_apply(const lm_rope_params &p)
{
    constexpr int HALF = MG_HEAD_DIM / 2, NH = MG_N_HEAD + MG_N_KV_HEAD;
    constexpr int W = (MG_N_HEAD + 2 * MG_N_KV_HEAD) * MG_HEAD_DIM;
    const int k = blockIdx.y * blockDim.x + threadIdx.x, r = blockIdx.x;
    if (k >= NH * HALF || r >= p.rows) return;
    const int head = k / HALF, i = k % HALF, s = r % p.S;
    const float c = p.cos_t[(long long)s * HALF + i], sn = INV ? -p.sin_t[(long long)s * HALF + i]
                                                                : p.sin_t[(long long)s * HALF + i];
    mg_t *x = (mg_t *)p.qkv + (long long)r * W + head * MG_HEAD_DIM;
    const float a = mg_to_f32(x[i]), b = mg_to_f32(x[i + HALF]);
    x[i] = mg_from_f32<mg_t>(a * c - b * sn);
    x[i + HALF] = mg_from_f32<mg_t>(b * c + a * sn);
}

/* fwd. grid: (B·S, ceil((H+KV)·hd/2 / LM_ROPE_THREADS)); block LM_ROPE_THREADS. */
extern "C" __global__ void __launch_bounds__(LM_ROPE_THREADS)
/*$fwd*/lm_rope_fwd(const lm_rope_params p)
{
    lm_rope_apply<false>(p);
}

/* bwd: the same grid, on dqkv. */
extern "C" __global__ void __launch_bounds__(LM_ROPE_THREADS)
/*$bwd*/lm_rope_bwd(const lm_rope_params p)
{
    lm_rope_apply<true>(p);
}
