/* moe_dispatch: stable counting sort of the T·k assignments by expert, on the device.
 *   count: per-chunk histograms (a chunk = MG_DISPATCH_CHUNK consecutive assignments, walked
 *          in order by one warp)
 *   scan:  per-expert totals (counts_all), capacity drops, counts, offsets, n_dropped, the
 *          per-chunk bases (exclusive scan over chunks, in place) and the m-tile offset
 *          tables for the up and down grouped GEMMs
 *   place: rank of each assignment within its expert = chunk base + rank within the chunk
 *          (match_any + running per-expert counters, in (t, j) order); slots past the
 *          capacity are dropped (slot_of = -1)
 * Integer-only, so deterministic; the host never reads counts (graph-capturable). */
// moegen:entries count scan place
// moegen:grid count: ceil(ceil(T*k/MG_DISPATCH_CHUNK)/MG_DISPATCH_WARPS) x 32*MG_DISPATCH_WARPS
// moegen:grid scan: 1 x 256
// moegen:grid place: as count
#ifndef MOEGEN_GENERATED
#include "mg_defaults.cuh"
#include "moe_params.h"
#include "mg_common.cuh"
#endif

/* Walks chunk c of the assignments in order, 32 at a time; for each valid assignment calls
 * f(i, e, rank) with rank = its rank among the chunk's assignments of expert e so far.
 * cnt: the warp's shared counters [MG_E], zeroed here; on return cnt[e] = chunk count. */
template <class F> MG_DEV void mg_walk_chunk(const int *topk_idx, int n, int c, int *cnt, F f)
{
    const int lane = threadIdx.x & 31;
    for (int e = lane; e < MG_E; e += 32) cnt[e] = 0;
    __syncwarp();
    const int base = c * MG_DISPATCH_CHUNK;
    for (int sub = 0; sub < MG_DISPATCH_CHUNK; sub += 32) {
        const int i = base + sub + lane;
        const int e = i < n ? topk_idx[i] : -1;
        const unsigned same = __match_any_sync(MG_FULL_MASK, e);
        const int rank = __popc(same & ((1u << lane) - 1u));
        const int prev = e >= 0 ? cnt[e] : 0;
        __syncwarp();
        if (e >= 0) {
            if (rank == 0) cnt[e] = prev + __popc(same);
            f(i, e, prev + rank);
        }
        __syncwarp();
    }
}

/* count. grid: ceil(n_chunks / MG_DISPATCH_WARPS), n_chunks = ceil(T*k / MG_DISPATCH_CHUNK);
 * block: 32*MG_DISPATCH_WARPS (one warp per chunk). Writes hist[c, :] (all E entries). */
extern "C" __global__ void __launch_bounds__(32 * MG_DISPATCH_WARPS)
/*$count*/moe_dispatch_count(const moe_dispatch_params p)
{
    __shared__ int s_cnt[MG_DISPATCH_WARPS][MG_E];
    const int w = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int n = p.T * MG_TOPK;
    const int n_chunks = (n + MG_DISPATCH_CHUNK - 1) / MG_DISPATCH_CHUNK;
    const int c = blockIdx.x * MG_DISPATCH_WARPS + w;
    if (c >= n_chunks) return;
    mg_walk_chunk(p.topk_idx, n, c, s_cnt[w], [](int, int, int) {});
    __syncwarp();
    for (int e = lane; e < MG_E; e += 32) p.hist[(long long)c * MG_E + e] = s_cnt[w][e];
}

/* Exclusive scan of v over the block (blockDim.x == 256, one value per thread); returns the
 * exclusive prefix and sets *total. */
MG_DEV int mg_block_exscan256(int v, int *s, int *total)
{
    const int tid = threadIdx.x;
    s[tid] = v;
    __syncthreads();
    for (int o = 1; o < 256; o <<= 1) {
        int add = tid >= o ? s[tid - o] : 0;
        __syncthreads();
        s[tid] += add;
        __syncthreads();
    }
    int incl = s[tid];
    *total = s[255];
    __syncthreads();
    return incl - v;
}

/* scan. grid: 1; block: 256 (thread e owns expert e; E <= 256). */
extern "C" __global__ void __launch_bounds__(256)
/*$scan*/moe_dispatch_scan(const moe_dispatch_params p)
{
    __shared__ int s[256];
    const int e = threadIdx.x;
    const int n = p.T * MG_TOPK;
    const int n_chunks = (n + MG_DISPATCH_CHUNK - 1) / MG_DISPATCH_CHUNK;
    int all = 0;
    if (e < MG_E) {
        for (int c = 0; c < n_chunks; c++) {
            long long i = (long long)c * MG_E + e;
            int h = p.hist[i];
            p.hist[i] = all;
            all += h;
        }
    }
    const int kept = (p.capacity >= 0 && all > p.capacity) ? p.capacity : all;
    int total, dropped_total;
    const int off = mg_block_exscan256(kept, s, &total);
    const int tu = e < MG_E ? (kept + p.tile_m_up - 1) / p.tile_m_up : 0;
    const int td = e < MG_E ? (kept + p.tile_m_dn - 1) / p.tile_m_dn : 0;
    int tu_total, td_total;
    const int tu_off = mg_block_exscan256(tu, s, &tu_total);
    const int td_off = mg_block_exscan256(td, s, &td_total);
    mg_block_exscan256(all - kept, s, &dropped_total);
    if (e < MG_E) {
        p.counts_all[e] = all;
        p.counts[e] = kept;
        p.offsets[e] = off;
        p.tile_off_up[e] = tu_off;
        p.tile_off_dn[e] = td_off;
    }
    if (e == 0) {
        p.offsets[MG_E] = total;
        p.tile_off_up[MG_E] = tu_total;
        p.tile_off_dn[MG_E] = td_total;
        p.n_dropped[0] = dropped_total;
    }
}

/* place. grid and block as count. */
extern "C" __global__ void __launch_bounds__(32 * MG_DISPATCH_WARPS)
/*$place*/moe_dispatch_place(const moe_dispatch_params p)
{
    __shared__ int s_cnt[MG_DISPATCH_WARPS][MG_E];
    const int w = threadIdx.x >> 5;
    const int n = p.T * MG_TOPK;
    const int n_chunks = (n + MG_DISPATCH_CHUNK - 1) / MG_DISPATCH_CHUNK;
    const int c = blockIdx.x * MG_DISPATCH_WARPS + w;
    if (c >= n_chunks) return;
    const int *base = p.hist + (long long)c * MG_E;
    mg_walk_chunk(p.topk_idx, n, c, s_cnt[w], [&](int i, int e, int rank) {
        int r = base[e] + rank;
        if (p.capacity < 0 || r < p.capacity) {
            int slot = p.offsets[e] + r;
            p.perm[slot] = i;
            p.slot_of[i] = slot;
        } else {
            p.slot_of[i] = -1;
        }
    });
}
