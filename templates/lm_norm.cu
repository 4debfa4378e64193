/* lm_norm: RMSNorm with the residual add fused in front (pre-norm transformer).
 *   fwd:   h = x + res (rounded to the storage type; skipped without res), rstd = 1/sqrt(mean(h²) + eps),
 *          y = h·rstd·w
 *   bwd:   dx = dres + rstd·(dy∘w − h·rstd²·mean(dy∘w∘h)), and
 *          dw_part[k, c] = Σ_{rows r of CTA k} dy[r,c]·h[r,c]·rstd[r]   (fixed order)
 *   dwsum: dw[c] = Σ_k dw_part[k, c]                                    (splits in order)
 * Memory-bound: LM_NORM_TPR threads per row (one warp up to d = 512 at 16 bits) hold the row in
 * registers as 16-byte vectors, so every byte is read once and the row reduction needs no
 * shared memory; bwd computes the weight gradient from the dy and h it already holds. All
 * sums run in a fixed order: bitwise deterministic. */
// moegen:entries fwd bwd dwsum
// moegen:parts mg_vec
// moegen:grid fwd: ceil(N/LM_NORM_RPC) x LM_NORM_CTA
// moegen:grid bwd: ceil(N/LM_NORM_DW_ROWS) x LM_NORM_CTA
// moegen:grid dwsum: ceil(D/32) x 256
#ifndef MOEGEN_GENERATED
#include "mg_defaults.cuh"
#include "moe_params.h"
#include "mg_common.cuh"
#include "lm_params.h"
#include "mg_vec.cuh"
#endif

static constexpr int NORM_NV = MG_D / MG_VEC;   /* d_model is a multiple of 16: no tail */
static constexpr int NORM_TPR = LM_NORM_TPR(MG_D, (int)sizeof(mg_t));
static constexpr int NORM_CTA = LM_NORM_CTA(MG_D, (int)sizeof(mg_t));
static constexpr int NORM_RPC = LM_NORM_RPC(MG_D, (int)sizeof(mg_t));
static constexpr int NORM_VPT = (NORM_NV + NORM_TPR - 1) / NORM_TPR;   /* vectors per thread */
static_assert(MG_D % MG_VEC == 0, "d_model must be a multiple of the 16-byte vector");
static_assert(LM_NORM_DW_ROWS % NORM_RPC == 0, "a bwd CTA covers whole steps of rows");

/* Sum over the NORM_TPR threads of this thread's row, in a fixed order; all of them get it.
 * Every thread of the CTA must call it (it synchronizes when a row spans several warps). */
MG_DEV float lm_norm_row_sum(float v, float *scratch)
{
    v = mg_warp_sum(v);
    if constexpr (NORM_TPR == 32) {
        return v;
    } else {
        constexpr int WPR = NORM_TPR / 32;
        const int warp = threadIdx.x >> 5, first = warp / WPR * WPR;
        __syncthreads();                   /* scratch may still be read by a previous call */
        if ((threadIdx.x & 31) == 0) scratch[warp] = v;
        __syncthreads();
        float s = 0.0f;
        for (int i = 0; i < WPR; i++) s += scratch[first + i];
        return s;
    }
}

/* fwd. grid: ceil(N / NORM_RPC); block NORM_CTA. */
extern "C" __global__ void __launch_bounds__(NORM_CTA)
/*$fwd*/lm_norm_fwd(const lm_norm_fwd_params p)
{
    __shared__ float scratch[32];
    const int g = threadIdx.x % NORM_TPR, row = blockIdx.x * NORM_RPC + threadIdx.x / NORM_TPR;
    const bool on = row < p.N;
    const long long base = (long long)row * MG_D;
    mg_v16 hv[NORM_VPT];
#pragma unroll
    for (int j = 0; j < NORM_VPT; j++) {
        const int v = g + j * NORM_TPR;
        hv[j] = mg_v16_zero();
        if (!on || v >= NORM_NV) continue;
        const long long o = base + (long long)v * MG_VEC;
        hv[j] = mg_v16_ld((const mg_t *)p.x + o);
        if (p.res) {   /* h = x + res rounded to the storage type: the norm sees what is stored */
            float a[MG_VEC], b[MG_VEC];
            mg_v16_unpack(hv[j], a);
            mg_v16_unpack(mg_v16_ld((const mg_t *)p.res + o), b);
#pragma unroll
            for (int e = 0; e < MG_VEC; e++) a[e] += b[e];
            hv[j] = mg_v16_pack(a);
            if (p.h) mg_v16_st((mg_t *)p.h + o, hv[j]);   /* same thread read it: h may alias x or res */
        }
    }
    float ss = 0.0f;
#pragma unroll
    for (int j = 0; j < NORM_VPT; j++) {
        float f[MG_VEC];
        mg_v16_unpack(hv[j], f);
#pragma unroll
        for (int e = 0; e < MG_VEC; e++) ss = fmaf(f[e], f[e], ss);
    }
    ss = lm_norm_row_sum(ss, scratch);
    const float rs = 1.0f / sqrtf(ss / (float)MG_D + MG_NORM_EPS);
    if (on && g == 0) p.rstd[row] = rs;
#pragma unroll
    for (int j = 0; j < NORM_VPT; j++) {
        const int v = g + j * NORM_TPR;
        if (!on || v >= NORM_NV) continue;
        float f[MG_VEC], w[MG_VEC];
        mg_v16_unpack(hv[j], f);
        mg_v16_unpack(mg_v16_ld((const mg_t *)p.w + v * MG_VEC), w);
#pragma unroll
        for (int e = 0; e < MG_VEC; e++) f[e] = f[e] * rs * w[e];
        mg_v16_st((mg_t *)p.y + base + (long long)v * MG_VEC, mg_v16_pack(f));
    }
}

/* Writes this CTA's weight-gradient partial (NORM_VPT x MG_VEC columns per thread, one row
 * group each) as dw_part[blockIdx.x]: the groups' sums added in group order. */
template <int RPC = NORM_RPC>   /* a template: the shared array exists only where RPC > 1 */
MG_DEV void lm_norm_dw_store(const lm_norm_bwd_params &p, const float (&dw)[NORM_VPT][MG_VEC], int g, int grp)
{
    float *part = p.dw_part + (long long)blockIdx.x * MG_D;
    if constexpr (RPC == 1) {
#pragma unroll
        for (int j = 0; j < NORM_VPT; j++) {
            const int v = g + j * NORM_TPR;
            if (v >= NORM_NV) continue;
#pragma unroll
            for (int q = 0; q < MG_VEC / 4; q++)
                mg_v16_st(part + v * MG_VEC + 4 * q,
                          mg_v16{{__float_as_uint(dw[j][4 * q]), __float_as_uint(dw[j][4 * q + 1]),
                                  __float_as_uint(dw[j][4 * q + 2]), __float_as_uint(dw[j][4 * q + 3])}});
        }
    } else {
        __shared__ float red[RPC * MG_D];   /* <= 16 KB: RPC·NORM_NV <= 512 where RPC > 1 */
#pragma unroll
        for (int j = 0; j < NORM_VPT; j++) {
            const int v = g + j * NORM_TPR;
            if (v >= NORM_NV) continue;
#pragma unroll
            for (int e = 0; e < MG_VEC; e++) red[grp * MG_D + v * MG_VEC + e] = dw[j][e];
        }
        __syncthreads();
        for (int c = threadIdx.x; c < MG_D; c += NORM_CTA) {
            float s = red[c];
#pragma unroll
            for (int q = 1; q < RPC; q++) s += red[q * MG_D + c];
            part[c] = s;
        }
    }
}

/* bwd. grid: ceil(N / LM_NORM_DW_ROWS); block NORM_CTA: NORM_RPC rows per step. */
extern "C" __global__ void __launch_bounds__(NORM_CTA)
/*$bwd*/lm_norm_bwd(const lm_norm_bwd_params p)
{
    __shared__ float scratch[32];
    const int g = threadIdx.x % NORM_TPR, grp = threadIdx.x / NORM_TPR;
    const int r0 = blockIdx.x * LM_NORM_DW_ROWS;
    mg_v16 wv[NORM_VPT];
    float dw[NORM_VPT][MG_VEC];
#pragma unroll
    for (int j = 0; j < NORM_VPT; j++) {
        const int v = g + j * NORM_TPR;
        wv[j] = v < NORM_NV ? mg_v16_ld((const mg_t *)p.w + v * MG_VEC) : mg_v16_zero();
#pragma unroll
        for (int e = 0; e < MG_VEC; e++) dw[j][e] = 0.0f;
    }
    for (int r = r0; r < r0 + LM_NORM_DW_ROWS && r < p.N; r += NORM_RPC) {   /* CTA-uniform bounds */
        const int row = r + grp;
        const bool on = row < p.N;
        const long long base = (long long)row * MG_D;
        mg_v16 dyv[NORM_VPT], hv[NORM_VPT], drv[NORM_VPT];
#pragma unroll
        for (int j = 0; j < NORM_VPT; j++) {
            const int v = g + j * NORM_TPR;
            const bool ok = on && v < NORM_NV;
            const long long o = base + (long long)v * MG_VEC;
            dyv[j] = ok ? mg_v16_ld((const mg_t *)p.dy + o) : mg_v16_zero();
            hv[j] = ok ? mg_v16_ld((const mg_t *)p.h + o) : mg_v16_zero();
            drv[j] = ok && p.dres ? mg_v16_ld((const mg_t *)p.dres + o) : mg_v16_zero();
        }
        const float rs = on ? p.rstd[row] : 0.0f;
        float acc = 0.0f;
#pragma unroll
        for (int j = 0; j < NORM_VPT; j++) {
            float dy[MG_VEC], h[MG_VEC], w[MG_VEC];
            mg_v16_unpack(dyv[j], dy); mg_v16_unpack(hv[j], h); mg_v16_unpack(wv[j], w);
#pragma unroll
            for (int e = 0; e < MG_VEC; e++) acc = fmaf(dy[e] * w[e], h[e], acc);
        }
        acc = lm_norm_row_sum(acc, scratch);
        const float k = acc * rs * rs / (float)MG_D;
#pragma unroll
        for (int j = 0; j < NORM_VPT; j++) {
            const int v = g + j * NORM_TPR;
            if (!on || v >= NORM_NV) continue;
            float dy[MG_VEC], h[MG_VEC], w[MG_VEC], dx[MG_VEC];
            mg_v16_unpack(dyv[j], dy); mg_v16_unpack(hv[j], h); mg_v16_unpack(wv[j], w); mg_v16_unpack(drv[j], dx);
#pragma unroll
            for (int e = 0; e < MG_VEC; e++) {
                const float gr = rs * (dy[e] * w[e] - h[e] * k);
                dx[e] = p.dres ? gr + dx[e] : gr;
                dw[j][e] = fmaf(dy[e] * h[e], rs, dw[j][e]);
            }
            /* dx may alias dres: this thread read that vector above */
            mg_v16_st((mg_t *)p.dx + base + (long long)v * MG_VEC, mg_v16_pack(dx));
        }
    }
    lm_norm_dw_store(p, dw, g, grp);
}

/* dwsum. grid: ceil(D/32); block 256: 8 threads of 4 columns x 32 split lanes, each lane
 * summing splits k ≡ lane (mod 32) in order, then the lanes in order. */
extern "C" __global__ void __launch_bounds__(256)
/*$dwsum*/lm_norm_dwsum(const lm_norm_bwd_params p)
{
    __shared__ float red[32][33];
    const int cv = threadIdx.x % 8, kl = threadIdx.x / 8, c0 = blockIdx.x * 32 + cv * 4;
    const int n_split = (p.N + LM_NORM_DW_ROWS - 1) / LM_NORM_DW_ROWS;
    float a[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    if (c0 < MG_D) {   /* d % 16 == 0: the 4 columns are in or out together */
#pragma unroll 4
        for (int k = kl; k < n_split; k += 32) {
            float f[4];
            mg_v16_f32(mg_v16_ld(p.dw_part + (long long)k * MG_D + c0), f);
#pragma unroll
            for (int e = 0; e < 4; e++) a[e] += f[e];
        }
    }
#pragma unroll
    for (int e = 0; e < 4; e++) red[kl][cv * 4 + e] = a[e];
    __syncthreads();
    const int c = blockIdx.x * 32 + threadIdx.x;
    if (threadIdx.x < 32 && c < MG_D) {
        float s = 0.0f;
        for (int i = 0; i < 32; i++) s += red[i][threadIdx.x];
        p.dw[c] = s;
    }
}
