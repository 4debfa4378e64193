/* lm_norm: RMSNorm with the residual add fused in front (pre-norm transformer).
 *   fwd:   h = x + res (rounded to the storage type; skipped without res), rstd = 1/sqrt(mean(h²) + eps),
 *          y = h·rstd·w
 *   bwd:   dx = dres + rstd·(dy∘w − h·rstd²·mean(dy∘w∘h))
 *   dw:    dw_part[k, c] = Σ_{rows r of split k} dy[r,c]·h[r,c]·rstd[r]   (rows in order)
 *   dwsum: dw[c] = Σ_k dw_part[k, c]                                     (splits in order)
 * One block per row for fwd/bwd (fixed-order block sums); all bitwise deterministic. */
// moegen:entries fwd bwd dw dwsum
// moegen:grid fwd: N x 256
// moegen:grid bwd: N x 256
// moegen:grid dw: (ceil(D/256), ceil(N/256)) x 256
// moegen:grid dwsum: ceil(D/256) x 256
#ifndef MOEGEN_GENERATED
#include "mg_defaults.cuh"
#include "moe_params.h"
#include "mg_common.cuh"
#include "lm_params.h"
#endif

/* fwd. grid: N; block LM_NORM_THREADS. */
extern "C" __global__ void __launch_bounds__(LM_NORM_THREADS)
/*$fwd*/lm_norm_fwd(const lm_norm_fwd_params p)
{
    __shared__ float scratch[32];
    const long long base = (long long)blockIdx.x * MG_D;
    const mg_t *x = (const mg_t *)p.x + base, *res = p.res ? (const mg_t *)p.res + base : nullptr;
    mg_t *h = p.h ? (mg_t *)p.h + base : nullptr, *y = (mg_t *)p.y + base;
    const mg_t *w = (const mg_t *)p.w;
    float ss = 0.0f;
    for (int c = threadIdx.x; c < MG_D; c += blockDim.x) {
        float v = mg_to_f32(x[c]);
        if (res) {
            mg_t hv = mg_from_f32<mg_t>(v + mg_to_f32(res[c]));
            v = mg_to_f32(hv);
            if (h) h[c] = hv;   /* each element is read and written by the same thread */
        }
        ss = fmaf(v, v, ss);
    }
    ss = mg_block_sum(ss, scratch);
    const float rs = 1.0f / sqrtf(ss / (float)MG_D + MG_NORM_EPS);
    if (threadIdx.x == 0) p.rstd[blockIdx.x] = rs;
    const mg_t *hv = res ? (h ? (const mg_t *)h : nullptr) : x;
    for (int c = threadIdx.x; c < MG_D; c += blockDim.x) {
        float v = hv ? mg_to_f32(hv[c]) : mg_to_f32(mg_from_f32<mg_t>(mg_to_f32(x[c]) + mg_to_f32(res[c])));
        y[c] = mg_from_f32<mg_t>(v * rs * mg_to_f32(w[c]));
    }
}

/* bwd. grid: N; block LM_NORM_THREADS. */
extern "C" __global__ void __launch_bounds__(LM_NORM_THREADS)
/*$bwd*/lm_norm_bwd(const lm_norm_bwd_params p)
{
    __shared__ float scratch[32];
    const long long base = (long long)blockIdx.x * MG_D;
    const mg_t *dy = (const mg_t *)p.dy + base, *h = (const mg_t *)p.h + base, *w = (const mg_t *)p.w;
    const mg_t *dres = p.dres ? (const mg_t *)p.dres + base : nullptr;
    mg_t *dx = (mg_t *)p.dx + base;
    const float rs = p.rstd[blockIdx.x];
    float acc = 0.0f;
    for (int c = threadIdx.x; c < MG_D; c += blockDim.x)
        acc = fmaf(mg_to_f32(dy[c]) * mg_to_f32(w[c]), mg_to_f32(h[c]), acc);
    acc = mg_block_sum(acc, scratch);
    const float k = acc * rs * rs / (float)MG_D;
    for (int c = threadIdx.x; c < MG_D; c += blockDim.x) {
        float g = rs * (mg_to_f32(dy[c]) * mg_to_f32(w[c]) - mg_to_f32(h[c]) * k);
        if (dres) g += mg_to_f32(dres[c]);
        dx[c] = mg_from_f32<mg_t>(g);
    }
}

/* dw. grid: (ceil(D/256), ceil(N/LM_NORM_DW_ROWS)); block 256: thread = column. */
extern "C" __global__ void __launch_bounds__(256)
/*$dw*/lm_norm_dw(const lm_norm_bwd_params p)
{
    const int c = blockIdx.x * 256 + threadIdx.x;
    if (c >= MG_D) return;
    const int r0 = blockIdx.y * LM_NORM_DW_ROWS, r1 = min(r0 + LM_NORM_DW_ROWS, p.N);
    const mg_t *dy = (const mg_t *)p.dy, *h = (const mg_t *)p.h;
    float acc = 0.0f;
    for (int r = r0; r < r1; r++) {
        long long i = (long long)r * MG_D + c;
        acc = fmaf(mg_to_f32(dy[i]) * mg_to_f32(h[i]), p.rstd[r], acc);
    }
    p.dw_part[(long long)blockIdx.y * MG_D + c] = acc;
}

/* dwsum. grid: ceil(D/256); block 256. */
extern "C" __global__ void __launch_bounds__(256)
/*$dwsum*/lm_norm_dwsum(const lm_norm_bwd_params p)
{
    const int c = blockIdx.x * 256 + threadIdx.x;
    if (c >= MG_D) return;
    const int n_split = (p.N + LM_NORM_DW_ROWS - 1) / LM_NORM_DW_ROWS;
    float acc = 0.0f;
    for (int k = 0; k < n_split; k++) acc += p.dw_part[(long long)k * MG_D + c];
    p.dw[c] = acc;
}
