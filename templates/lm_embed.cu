/* lm_embed: token embedding gather and its deterministic scatter-add backward.
 *   fwd:  out[r] = wte[ids[r]]
 *   sort: per chunk of LM_EMB_CHUNK positions, the chunk's (id, position) pairs sorted by
 *         id then position (rank by counting within the chunk; no atomics)
 *   bwd:  one warp per vocab row v: binary-searches v in every sorted chunk and sums
 *         dout[r] over its positions r in increasing order; every row of dwte is written
 *         (zeros for ids that do not occur), so the result is bitwise reproducible. */
// moegen:entries fwd sort bwd
// moegen:grid fwd: N x 128
// moegen:grid sort: ceil(N/256) x 256
// moegen:grid bwd: ceil(V/4) x 128
#ifndef MOEGEN_GENERATED
#include "mg_defaults.cuh"
#include "moe_params.h"
#include "mg_common.cuh"
#include "lm_params.h"
#endif

/* fwd. grid: N; block 128. */
extern "C" __global__ void __launch_bounds__(128)
/*$fwd*/lm_embed_fwd(const lm_embed_params p)
{
    const int id = p.ids[blockIdx.x];
    const mg_t *src = (const mg_t *)p.wte + (long long)id * MG_D;
    mg_t *dst = (mg_t *)p.out + (long long)blockIdx.x * MG_D;
    for (int c = threadIdx.x; c < MG_D; c += blockDim.x) dst[c] = src[c];
}

/* sort. grid: ceil(N/LM_EMB_CHUNK); block LM_EMB_CHUNK. */
extern "C" __global__ void __launch_bounds__(LM_EMB_CHUNK)
/*$sort*/lm_embed_sort(const lm_embed_params p)
{
    __shared__ int s_id[LM_EMB_CHUNK];
    const int base = blockIdx.x * LM_EMB_CHUNK, n = min(LM_EMB_CHUNK, p.N - base), t = threadIdx.x;
    if (t < n) s_id[t] = p.ids[base + t];
    __syncthreads();
    if (t >= n) return;
    const int me = s_id[t];
    int rank = 0;
    for (int u = 0; u < n; u++) {
        int o = s_id[u];
        rank += o < me || (o == me && u < t);
    }
    p.sorted[base + rank] = me;
    p.sorted[p.N + base + rank] = base + t;
}

/* bwd. grid: ceil(V / LM_EMB_WARPS); block 32·LM_EMB_WARPS (one warp per vocab row). */
extern "C" __global__ void __launch_bounds__(32 * LM_EMB_WARPS)
/*$bwd*/lm_embed_bwd(const lm_embed_params p)
{
    constexpr int CPL = 8;   /* columns per lane per pass */
    const int v = blockIdx.x * LM_EMB_WARPS + (threadIdx.x >> 5), lane = threadIdx.x & 31;
    if (v >= MG_VOCAB) return;
    const int N = p.N, n_chunks = (N + LM_EMB_CHUNK - 1) / LM_EMB_CHUNK;
    const int *sid = p.sorted, *spos = p.sorted + N;
    const mg_t *dout = (const mg_t *)p.dout;
    float *dst = p.dwte + (long long)v * MG_D;
    for (int c0 = 0; c0 < MG_D; c0 += 32 * CPL) {
        float acc[CPL];
#pragma unroll
        for (int t = 0; t < CPL; t++) {
            int c = c0 + lane + 32 * t;
            acc[t] = p.accumulate && c < MG_D ? dst[c] : 0.0f;
        }
        for (int cb = 0; cb < n_chunks; cb += 32) {
            /* lane's chunk: [lo, hi) of id v (lower and upper bound) */
            int lo = 0, hi = 0, ch = cb + lane;
            if (ch < n_chunks) {
                const int b0 = ch * LM_EMB_CHUNK, n = min(LM_EMB_CHUNK, N - b0);
                int a = 0, z = n;
                while (a < z) { int m = (a + z) >> 1; if (sid[b0 + m] < v) a = m + 1; else z = m; }
                lo = b0 + a;
                z = n;
                while (a < z) { int m = (a + z) >> 1; if (sid[b0 + m] <= v) a = m + 1; else z = m; }
                hi = b0 + a;
            }
            const unsigned any = __ballot_sync(MG_FULL_MASK, hi > lo);
            if (!any) continue;
            for (int j = 0; j < 32; j++) {
                if (!(any >> j & 1)) continue;
                const int l = __shfl_sync(MG_FULL_MASK, lo, j), h = __shfl_sync(MG_FULL_MASK, hi, j);
                for (int k = l; k < h; k++) {
                    const mg_t *src = dout + (long long)spos[k] * MG_D;
#pragma unroll
                    for (int t = 0; t < CPL; t++) {
                        int c = c0 + lane + 32 * t;
                        if (c < MG_D) acc[t] += mg_to_f32(src[c]);
                    }
                }
            }
        }
#pragma unroll
        for (int t = 0; t < CPL; t++) {
            int c = c0 + lane + 32 * t;
            if (c < MG_D) dst[c] = acc[t];
        }
    }
}
