/* lm_embed: token embedding gather and its deterministic scatter-add backward.
 *   fwd:  out[r] = wte[ids[r]]                                   (16-byte vectors)
 *   sort: per chunk of LM_EMB_CHUNK positions, the chunk's (id, position) pairs sorted by
 *         id then position (rank by counting within the chunk; no atomics)
 *   part: one warp per sorted entry; the first entry of each run of one id within a chunk
 *         (its "head" k) writes part[k] = Σ dout[r] over the run's positions r, in increasing
 *         order, fp32. A run is at most LM_EMB_CHUNK rows, so a frequent token's rows are
 *         summed by many warps side by side instead of by one warp in sequence.
 *   bwd:  one warp per vocab row v: finds v's head in every chunk (a lower bound per chunk,
 *         one chunk per lane) and sums the heads' partials in chunk order:
 *         dwte[v] = (accumulate ? dwte[v] + Σ : Σ). Without accumulate every row is written
 *         (zeros for ids that do not occur); with it, rows of absent ids are left as they are
 *         (adding zero), so the gradient of an untouched row costs no memory traffic.
 * Every sum has a fixed order: bitwise reproducible. */
// moegen:entries fwd sort part bwd
// moegen:parts mg_vec
// moegen:grid fwd: N x 128
// moegen:grid sort: ceil(N/256) x 256
// moegen:grid part: ceil(N/4) x 128
// moegen:grid bwd: ceil(V/4) x 128
#ifndef MOEGEN_GENERATED
#include "mg_defaults.cuh"
#include "moe_params.h"
#include "mg_common.cuh"
#include "lm_params.h"
#include "mg_vec.cuh"
#endif

static_assert(MG_D % MG_VEC == 0, "d_model must be a multiple of the 16-byte vector");
static constexpr int EMB_NV = MG_D / MG_VEC;   /* 16-byte vectors of dtype per row */
static constexpr int EMB_NF = MG_D / 4;        /* 16-byte vectors of fp32 per row */
/* part: vectors per lane per column pass (at most 32 fp32 accumulators) */
static constexpr int EMB_PV = (EMB_NV + 31) / 32 < 32 / MG_VEC ? (EMB_NV + 31) / 32 : 32 / MG_VEC;
/* bwd: float4 per lane per column pass (at most 16 accumulators) */
static constexpr int EMB_BV = (EMB_NF + 31) / 32 < 4 ? (EMB_NF + 31) / 32 : 4;

/* fwd. grid: N; block 128. */
extern "C" __global__ void __launch_bounds__(128)
/*$fwd*/lm_embed_fwd(const lm_embed_params p)
{
    const int id = p.ids[blockIdx.x];
    const mg_t *src = (const mg_t *)p.wte + (long long)id * MG_D;
    mg_t *dst = (mg_t *)p.out + (long long)blockIdx.x * MG_D;
    for (int c = threadIdx.x; c < EMB_NV; c += blockDim.x) mg_v16_st(dst + c * MG_VEC, mg_v16_ld(src + c * MG_VEC));
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

/* part. grid: ceil(N / LM_EMB_WARPS); block 32·LM_EMB_WARPS (one warp per sorted entry). */
extern "C" __global__ void __launch_bounds__(32 * LM_EMB_WARPS)
/*$part*/lm_embed_part(const lm_embed_params p)
{
    const int k = blockIdx.x * LM_EMB_WARPS + (threadIdx.x >> 5), lane = threadIdx.x & 31, N = p.N;
    if (k >= N) return;
    const int *sid = p.sorted, *spos = p.sorted + N;
    const int b0 = k / LM_EMB_CHUNK * LM_EMB_CHUNK, end = min(b0 + LM_EMB_CHUNK, N), v = sid[k];
    if (k > b0 && sid[k - 1] == v) return;   /* not the head of its run */
    int e = k + 1;
    while (e < end && sid[e] == v) e++;
    const mg_t *dout = (const mg_t *)p.dout;
    float *dst = p.part + (long long)k * MG_D;
    for (int c0 = 0; c0 < EMB_NV; c0 += 32 * EMB_PV) {
        float acc[EMB_PV][MG_VEC] = {};
#pragma unroll 2
        for (int j = k; j < e; j++) {
            const mg_t *src = dout + (long long)spos[j] * MG_D;
#pragma unroll
            for (int u = 0; u < EMB_PV; u++) {
                const int c = c0 + lane + 32 * u;
                if (c < EMB_NV) {
                    float f[MG_VEC];
                    mg_v16_unpack(mg_v16_ld(src + c * MG_VEC), f);
#pragma unroll
                    for (int q = 0; q < MG_VEC; q++) acc[u][q] += f[q];
                }
            }
        }
#pragma unroll
        for (int u = 0; u < EMB_PV; u++) {
            const int c = c0 + lane + 32 * u;
            if (c < EMB_NV)
#pragma unroll
                for (int q = 0; q < MG_VEC; q += 4) {
                    mg_v16 w;
#pragma unroll
                    for (int z = 0; z < 4; z++) w.u[z] = __float_as_uint(acc[u][q + z]);
                    mg_v16_st(dst + c * MG_VEC + q, w);
                }
        }
    }
}

/* bwd. grid: ceil(V / LM_EMB_WARPS); block 32·LM_EMB_WARPS (one warp per vocab row). */
extern "C" __global__ void __launch_bounds__(32 * LM_EMB_WARPS)
/*$bwd*/lm_embed_bwd(const lm_embed_params p)
{
    const int v = blockIdx.x * LM_EMB_WARPS + (threadIdx.x >> 5), lane = threadIdx.x & 31;
    if (v >= MG_VOCAB) return;
    const int N = p.N, n_chunks = (N + LM_EMB_CHUNK - 1) / LM_EMB_CHUNK;
    const int *sid = p.sorted;
    float *dst = p.dwte + (long long)v * MG_D;
    for (int c0 = 0; c0 < EMB_NF; c0 += 32 * EMB_BV) {
        float acc[EMB_BV][4] = {};
        unsigned any = 0;
        for (int cb = 0; cb < n_chunks; cb += 32) {
            /* lane's chunk: the head of v's run (the lower bound of v), or -1 */
            int head = -1;
            const int ch = cb + lane;
            if (ch < n_chunks) {
                const int b0 = ch * LM_EMB_CHUNK, n = min(LM_EMB_CHUNK, N - b0);
                int a = 0, z = n;
                while (a < z) { int m = (a + z) >> 1; if (sid[b0 + m] < v) a = m + 1; else z = m; }
                if (a < n && sid[b0 + a] == v) head = b0 + a;
            }
            unsigned found = __ballot_sync(MG_FULL_MASK, head >= 0);
            any |= found;
            while (found) {   /* chunks in increasing order */
                const int j = __ffs(found) - 1;
                found &= found - 1;
                const float *src = p.part + (long long)__shfl_sync(MG_FULL_MASK, head, j) * MG_D;
#pragma unroll
                for (int u = 0; u < EMB_BV; u++) {
                    const int c = c0 + lane + 32 * u;
                    if (c < EMB_NF) {
                        float f[4];
                        mg_v16_f32(mg_v16_ld(src + c * 4), f);
#pragma unroll
                        for (int q = 0; q < 4; q++) acc[u][q] += f[q];
                    }
                }
            }
        }
        if (p.accumulate && !any) return;   /* dwte[v] + 0: nothing to write */
#pragma unroll
        for (int u = 0; u < EMB_BV; u++) {
            const int c = c0 + lane + 32 * u;
            if (c >= EMB_NF) continue;
            if (p.accumulate) {
                float f[4];
                mg_v16_f32(mg_v16_ld(dst + c * 4), f);
#pragma unroll
                for (int q = 0; q < 4; q++) acc[u][q] += f[q];
            }
            mg_v16 w;
#pragma unroll
            for (int q = 0; q < 4; q++) w.u[q] = __float_as_uint(acc[u][q]);
            mg_v16_st(dst + c * 4, w);
        }
    }
}
