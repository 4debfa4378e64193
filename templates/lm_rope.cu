/* lm_rope: rotary position embedding (HF Llama rotate-half convention) in place on the q
 * and k heads of the fused qkv tensor; fp32 math on fp64-built tables.
 *   table: cos_t[s, i] = cos(s·theta^(−2i/hd)), sin_t likewise (fp64, rounded to float)
 *   fwd:   (x_i, x_{i+hd/2}) -> (x_i·c − x_{i+hd/2}·s, x_{i+hd/2}·c + x_i·s)
 *   bwd:   the transpose (rotation by −angle), in place on dqkv
 * Position of row r = r % S. Layouts: templates/lm_params.h. */
// moegen:entries table fwd bwd
// moegen:grid table: ceil(S*hd/2 / 256) x 256
// moegen:grid fwd: ceil(B*S*(H+KV)*(hd/2)/LM_ROPE_RV / 256) x 256
// moegen:grid bwd: ceil(B*S*(H+KV)*(hd/2)/LM_ROPE_RV / 256) x 256
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

/* ROPE_RV elements per access along a half head (lm_params.h: LM_ROPE_RV); rows and heads
 * start 16-byte aligned (hd is a multiple of 8), and so do the table rows. */
static constexpr int ROPE_HALF = MG_HEAD_DIM / 2;
static constexpr int ROPE_RV = LM_ROPE_RV(MG_HEAD_DIM, (int)sizeof(mg_t));
static constexpr int ROPE_CH = ROPE_HALF / ROPE_RV;   /* accesses per half head */
static constexpr int ROPE_NH = MG_N_HEAD + MG_N_KV_HEAD;
static_assert(ROPE_HALF % ROPE_RV == 0, "ROPE_RV divides hd/2");

/* N consecutive T, loaded and stored with the widest aligned accesses (<= 16 bytes each). */
template <class T, int N> struct alignas(N * sizeof(T) < 16 ? N * sizeof(T) : 16) lm_rope_arr { T e[N]; };

template <bool INV> MG_DEV void lm_rope_apply(const lm_rope_params &p)
{
    constexpr int W = (MG_N_HEAD + 2 * MG_N_KV_HEAD) * MG_HEAD_DIM;
    typedef lm_rope_arr<mg_t, ROPE_RV> vec;
    typedef lm_rope_arr<float, ROPE_RV> fvec;
    const long long k = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (k >= (long long)p.rows * ROPE_NH * ROPE_CH) return;
    const int r = (int)(k / (ROPE_NH * ROPE_CH)), rem = (int)(k % (ROPE_NH * ROPE_CH));
    const int head = rem / ROPE_CH, i = rem % ROPE_CH * ROPE_RV, s = r % p.S;
    const long long t = (long long)s * ROPE_HALF + i;
    const fvec ct = *(const fvec *)(p.cos_t + t), st = *(const fvec *)(p.sin_t + t);
    mg_t *x = (mg_t *)p.qkv + (long long)r * W + head * MG_HEAD_DIM + i;
    vec a = *(const vec *)x, b = *(const vec *)(x + ROPE_HALF);
#pragma unroll
    for (int e = 0; e < ROPE_RV; e++) {
        const float c = ct.e[e], sn = INV ? -st.e[e] : st.e[e];
        const float av = mg_to_f32(a.e[e]), bv = mg_to_f32(b.e[e]);
        a.e[e] = mg_from_f32<mg_t>(av * c - bv * sn);
        b.e[e] = mg_from_f32<mg_t>(bv * c + av * sn);
    }
    *(vec *)x = a;
    *(vec *)(x + ROPE_HALF) = b;
}

/* fwd. grid: ceil(B·S·(H+KV)·ROPE_CH / LM_ROPE_THREADS); block LM_ROPE_THREADS: a thread per
 * ROPE_RV pairs of one q or k head of one row. */
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
