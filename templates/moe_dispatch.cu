/* moe_dispatch: stable counting sort of the T·k assignments by expert, on the device.
 *   select: drop policy "probability" in capacity mode only: per expert the key of its C-th
 *          best assignment (radix select over key = weight bits · 2³² + ~i, so larger weight
 *          first and, on equal weights, the earlier assignment); an assignment is kept iff its
 *          key is >= its expert's threshold (0 = keep all)
 *   count: per-chunk histograms (a chunk = MG_DISPATCH_CHUNK consecutive assignments, walked
 *          in order by one warp; under "probability" only the kept ones)
 *   scan:  per-expert totals (counts_all), capacity drops, counts, offsets, n_dropped, the
 *          per-chunk bases (exclusive scan over chunks, in place) and the m-tile offset
 *          tables for the up and down grouped GEMMs
 *   place: rank of each assignment within its expert = chunk base + rank within the chunk
 *          (match_any + running per-expert counters, in (t, j) order); slots past the
 *          capacity are dropped (slot_of = -1)
 * Integer-only, so deterministic; the host never reads counts (graph-capturable). */
// moegen:entries select count scan place
// moegen:grid select: E x 256, only in capacity mode with drop policy probability
// moegen:grid count: ceil(ceil(T*k/MG_DISPATCH_CHUNK)/MG_DISPATCH_WARPS) x 32*MG_DISPATCH_WARPS
// moegen:grid scan: 1 x 256
// moegen:grid place: as count
#ifndef MOEGEN_GENERATED
#include "mg_defaults.cuh"
#include "moe_params.h"
#include "mg_common.cuh"
#endif

/* Drop policy "probability" in capacity mode (capacity >= 0): the ranking key of assignment
 * i, and whether it is kept (key >= the select kernel's threshold of its expert). */
static constexpr bool MG_DROP_BY_PROB = MG_CAPACITY && MG_DROP_POLICY == 1;
MG_DEV unsigned long long mg_drop_key(const moe_dispatch_params &p, int i)
{
    return (unsigned long long)__float_as_uint(p.topk_w[i]) << 32 | (unsigned)(0xFFFFFFFFu - (unsigned)i);
}
MG_DEV bool mg_drop_kept(const moe_dispatch_params &p, int i, int e)
{
    return !MG_DROP_BY_PROB || p.capacity < 0 || mg_drop_key(p, i) >= p.thr[e];
}

/* select. grid: E (block e: expert e); block: 256. Finds the C-th largest key of expert e's
 * assignments digit by digit (8 passes of 8 bits, each a shared histogram over the
 * assignments that match the digits found so far); integer-only, so deterministic. Also
 * writes counts_all[e] (scan then counts only the kept assignments). */
extern "C" __global__ void __launch_bounds__(256)
/*$select*/moe_dispatch_select(const moe_dispatch_params p)
{
    __shared__ int hist[256];
    __shared__ int s_n, s_rank;
    __shared__ unsigned long long s_prefix;
    const int e = blockIdx.x, n = p.T * MG_TOPK;
    if (threadIdx.x == 0) s_n = 0, s_prefix = 0, s_rank = p.capacity;   /* 1-based rank C */
    __syncthreads();
    int mine = 0;
    for (int i = threadIdx.x; i < n; i += blockDim.x) mine += p.topk_idx[i] == e;
    if (mine) atomicAdd(&s_n, mine);
    __syncthreads();
    if (s_n <= p.capacity) {   /* not over-full: keep everything */
        if (threadIdx.x == 0) p.thr[e] = 0, p.counts_all[e] = s_n;
        return;
    }
    unsigned long long mask = 0;
    for (int shift = 56; shift >= 0; shift -= 8) {
        hist[threadIdx.x] = 0;
        __syncthreads();
        const unsigned long long prefix = s_prefix;
        for (int i = threadIdx.x; i < n; i += blockDim.x) {
            if (p.topk_idx[i] != e) continue;
            const unsigned long long key = mg_drop_key(p, i);
            if ((key & mask) == prefix) atomicAdd(&hist[(key >> shift) & 255], 1);
        }
        __syncthreads();
        if (threadIdx.x == 0) {   /* the digit holding the rank-th largest, from the top */
            int r = s_rank, dg = 255;
            while (hist[dg] < r) r -= hist[dg--];
            s_rank = r;
            s_prefix = prefix | (unsigned long long)dg << shift;
        }
        __syncthreads();
        mask |= 255ull << shift;
    }
    if (threadIdx.x == 0) p.thr[e] = s_prefix, p.counts_all[e] = s_n;
}

/* Walks chunk c of the assignments in order, 32 at a time; for each valid assignment calls
 * f(i, e, rank) with rank = its rank among the chunk's assignments of expert e so far.
 * Under drop policy "probability" dropped assignments are skipped (not valid).
 * cnt: the warp's shared counters [MG_E], zeroed here; on return cnt[e] = chunk count. */
template <class F> MG_DEV void mg_walk_chunk(const moe_dispatch_params &p, int n, int c, int *cnt, F f)
{
    const int lane = threadIdx.x & 31;
    for (int e = lane; e < MG_E; e += 32) cnt[e] = 0;
    __syncwarp();
    const int base = c * MG_DISPATCH_CHUNK;
    for (int sub = 0; sub < MG_DISPATCH_CHUNK; sub += 32) {
        const int i = base + sub + lane;
        int e = i < n ? p.topk_idx[i] : -1;
        if (e >= 0 && !mg_drop_kept(p, i, e)) e = -1;
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
    mg_walk_chunk(p, n, c, s_cnt[w], [](int, int, int) {});
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
    /* by probability the histograms counted the kept assignments only; select wrote the total */
    const bool by_prob = MG_DROP_BY_PROB && p.capacity >= 0;
    const int kept = by_prob ? all : (p.capacity >= 0 && all > p.capacity) ? p.capacity : all;
    if (by_prob && e < MG_E) all = p.counts_all[e];
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
    if (MG_DROP_BY_PROB && p.capacity >= 0) {   /* the walk skips dropped assignments */
        const int lane = threadIdx.x & 31, end = min(n, (c + 1) * MG_DISPATCH_CHUNK);
        for (int i = c * MG_DISPATCH_CHUNK + lane; i < end; i += 32)
            if (!mg_drop_kept(p, i, p.topk_idx[i])) p.slot_of[i] = -1;
    }
    mg_walk_chunk(p, n, c, s_cnt[w], [&](int i, int e, int rank) {
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
