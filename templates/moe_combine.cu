/* moe_combine: per-token weighted sums over the token's slots, in fixed j order.
 *   fwd: y[t] = Σ_j w[t,j]·z[slot(t,j)] (kept slots only) + Σ_s z_shared[s][t]
 *   bwd: dz[slot(t,j)] = w[t,j]·dy[t];  dw[t,j] = <dy[t], z[slot(t,j)]> (0 when dropped)
 *   dx:  dx[t] = Σ_j dxs[slot(t,j)] + dxr[t] + Σ_s dx_shared[s][t]
 * One block per token, one thread per chunk of 8 columns (MG_CMB_CHUNK): each slot row is read
 * with 16-byte loads (the z and dxs rows, the largest traffic of the layer's glue, are in the
 * storage type like every peer keeps them: fp32 rows cost bf16 specs 0.4 GB a Mixtral step;
 * the router's dxr stays fp32), and every sum keeps its fixed order in fp32 (bitwise
 * reproducible, no atomics). Blocks of
 * mg_combine_threads(d) = min(256, d/8 rounded up to 32) threads.
 * Rows the caller passes (y, dy, dx) may be unaligned: those take a scalar path. */
// moegen:entries fwd bwd dx
// moegen:parts mg_vec
// moegen:grid fwd: T x min(256, ceil32(d/8))
// moegen:grid bwd: T x min(256, ceil32(d/8))
// moegen:grid dx: T x min(256, ceil32(d/8))
#ifndef MOEGEN_GENERATED
#include "mg_defaults.cuh"
#include "moe_params.h"
#include "mg_common.cuh"
#include "mg_vec.cuh"
#endif

#define MG_COMBINE_THREADS 256
#define MG_CMB_CHUNK 8                    /* columns per thread and step; d % 16 == 0 */
#define MG_CMB_CH (MG_D / MG_CMB_CHUNK)   /* chunks per row */

/* 8 fp32 of a workspace row (fp32, 16-byte aligned: cudaMalloc'd, d % 16 == 0). */
MG_DEV void mg_cmb_ld_f32(const float *r, float (&f)[MG_CMB_CHUNK])
{
    float a[4], b[4];
    mg_v16_f32(mg_v16_ld(r), a);
    mg_v16_f32(mg_v16_ld(r + 4), b);
#pragma unroll
    for (int e = 0; e < 4; e++) f[e] = a[e], f[e + 4] = b[e];
}
/* 8 mg_t of a row as fp32; vec: the row is 16-byte aligned (block-uniform). */
MG_DEV void mg_cmb_ld_t(const mg_t *r, bool vec, float (&f)[MG_CMB_CHUNK])
{
    if (vec) {
#pragma unroll
        for (int h = 0; h < MG_CMB_CHUNK / MG_VEC; h++) {
            float g[MG_VEC];
            mg_v16_unpack(mg_v16_ld(r + h * MG_VEC), g);
#pragma unroll
            for (int e = 0; e < MG_VEC; e++) f[h * MG_VEC + e] = g[e];
        }
    } else {
#pragma unroll
        for (int e = 0; e < MG_CMB_CHUNK; e++) f[e] = mg_to_f32(r[e]);
    }
}
/* 8 fp32 rounded to mg_t into a row; vec as above. */
MG_DEV void mg_cmb_st_t(mg_t *r, bool vec, const float (&f)[MG_CMB_CHUNK])
{
    if (vec) {
#pragma unroll
        for (int h = 0; h < MG_CMB_CHUNK / MG_VEC; h++) {
            float g[MG_VEC];
#pragma unroll
            for (int e = 0; e < MG_VEC; e++) g[e] = f[h * MG_VEC + e];
            mg_v16_st(r + h * MG_VEC, mg_v16_pack(g));
        }
    } else {
#pragma unroll
        for (int e = 0; e < MG_CMB_CHUNK; e++) r[e] = mg_from_f32<mg_t>(f[e]);
    }
}

/* fwd. grid: T; block: mg_combine_threads(d). y[t] = Σ_j w_j·z[slot_j] in j order, then the
 * shared experts in order (the order of mg_ref.c). */
extern "C" __global__ void __launch_bounds__(MG_COMBINE_THREADS)
/*$fwd*/moe_combine_fwd(const moe_combine_fwd_params p)
{
    __shared__ int s_slot[MG_TOPK];
    __shared__ float s_w[MG_TOPK];
    const int t = blockIdx.x;
    for (int j = threadIdx.x; j < MG_TOPK; j += blockDim.x) {
        s_slot[j] = p.slot_of[(long long)t * MG_TOPK + j];
        s_w[j] = p.topk_w[(long long)t * MG_TOPK + j];
    }
    __syncthreads();
    mg_t *y = (mg_t *)p.y + (long long)t * MG_D;
    const bool vec = mg_aligned16(y);
    for (int c = threadIdx.x; c < MG_CMB_CH; c += blockDim.x) {
        const int c0 = c * MG_CMB_CHUNK;
        float acc[MG_CMB_CHUNK], z[MG_CMB_CHUNK];
#pragma unroll
        for (int e = 0; e < MG_CMB_CHUNK; e++) acc[e] = 0.0f;
        for (int j = 0; j < MG_TOPK; j++) {
            const int s = s_slot[j];
            if (s < 0) continue;
            mg_cmb_ld_t((const mg_t *)p.z + (long long)s * MG_D + c0, true, z);
#pragma unroll
            for (int e = 0; e < MG_CMB_CHUNK; e++) acc[e] = fmaf(s_w[j], z[e], acc[e]);
        }
        for (int sh = 0; sh < p.n_shared; sh++) {
            mg_cmb_ld_t((const mg_t *)p.z_shared + ((long long)sh * p.T + t) * MG_D + c0, true, z);
#pragma unroll
            for (int e = 0; e < MG_CMB_CHUNK; e++) acc[e] += z[e];
        }
        mg_cmb_st_t(y + c0, vec, acc);
    }
}

/* bwd. grid: T; block: mg_combine_threads(d). dz[slot_j] = w_j·dy and dw_j = <dy, z[slot_j]>
 * for every j at once: each thread keeps its k partial dot products, then one block
 * reduction of the k values (warp butterflies, then the warps' sums in warp order). */
extern "C" __global__ void __launch_bounds__(MG_COMBINE_THREADS)
/*$bwd*/moe_combine_bwd(const moe_combine_bwd_params p)
{
    __shared__ int s_slot[MG_TOPK];
    __shared__ float s_w[MG_TOPK];
    __shared__ float s_part[MG_COMBINE_THREADS / 32][MG_TOPK];
    const int t = blockIdx.x, lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    for (int j = threadIdx.x; j < MG_TOPK; j += blockDim.x) {
        s_slot[j] = p.slot_of[(long long)t * MG_TOPK + j];
        s_w[j] = p.topk_w[(long long)t * MG_TOPK + j];
    }
    __syncthreads();
    const mg_t *dy = (const mg_t *)p.dy + (long long)t * MG_D;
    mg_t *dz = (mg_t *)p.dz;
    const bool vec = mg_aligned16(dy), vdz = mg_aligned16(dz);
    float part[MG_TOPK];
#pragma unroll
    for (int j = 0; j < MG_TOPK; j++) part[j] = 0.0f;
    for (int c = threadIdx.x; c < MG_CMB_CH; c += blockDim.x) {
        const int c0 = c * MG_CMB_CHUNK;
        float g[MG_CMB_CHUNK], z[MG_CMB_CHUNK], o[MG_CMB_CHUNK];
        mg_cmb_ld_t(dy + c0, vec, g);
#pragma unroll
        for (int j = 0; j < MG_TOPK; j++) {
            const int s = s_slot[j];
            if (s < 0) continue;
            mg_cmb_ld_t((const mg_t *)p.z + (long long)s * MG_D + c0, true, z);
#pragma unroll
            for (int e = 0; e < MG_CMB_CHUNK; e++) {
                part[j] = fmaf(g[e], z[e], part[j]);
                o[e] = s_w[j] * g[e];
            }
            mg_cmb_st_t(dz + (long long)s * MG_D + c0, vdz, o);
        }
    }
#pragma unroll
    for (int j = 0; j < MG_TOPK; j++) {
        const float v = mg_warp_sum(part[j]);
        if (lane == 0) s_part[warp][j] = v;
    }
    __syncthreads();
    for (int j = threadIdx.x; j < MG_TOPK; j += blockDim.x) {
        float v = 0.0f;
        for (int w = 0; w < (int)(blockDim.x >> 5); w++) v += s_part[w][j];
        p.dw[(long long)t * MG_TOPK + j] = s_slot[j] < 0 ? 0.0f : v;
    }
}

/* dx. grid: T; block: mg_combine_threads(d). dx[t] = Σ_j dxs[slot_j] in j order + dxr[t] +
 * the shared experts' dx in order. */
extern "C" __global__ void __launch_bounds__(MG_COMBINE_THREADS)
/*$dx*/moe_combine_dx(const moe_combine_dx_params p)
{
    __shared__ int s_slot[MG_TOPK];
    const int t = blockIdx.x;
    for (int j = threadIdx.x; j < MG_TOPK; j += blockDim.x) s_slot[j] = p.slot_of[(long long)t * MG_TOPK + j];
    __syncthreads();
    mg_t *dx = (mg_t *)p.dx + (long long)t * MG_D;
    const bool vec = mg_aligned16(dx);
    for (int c = threadIdx.x; c < MG_CMB_CH; c += blockDim.x) {
        const int c0 = c * MG_CMB_CHUNK;
        float acc[MG_CMB_CHUNK], v[MG_CMB_CHUNK];
#pragma unroll
        for (int e = 0; e < MG_CMB_CHUNK; e++) acc[e] = 0.0f;
        for (int j = 0; j < MG_TOPK; j++) {
            const int s = s_slot[j];
            if (s < 0) continue;
            mg_cmb_ld_t((const mg_t *)p.dxs + (long long)s * MG_D + c0, true, v);
#pragma unroll
            for (int e = 0; e < MG_CMB_CHUNK; e++) acc[e] += v[e];
        }
        if (p.dxr) {
            mg_cmb_ld_f32(p.dxr + (long long)t * MG_D + c0, v);
#pragma unroll
            for (int e = 0; e < MG_CMB_CHUNK; e++) acc[e] += v[e];
        }
        for (int sh = 0; sh < p.n_shared; sh++) {
            mg_cmb_ld_t((const mg_t *)p.dx_shared + ((long long)sh * p.T + t) * MG_D + c0, true, v);
#pragma unroll
            for (int e = 0; e < MG_CMB_CHUNK; e++) acc[e] += v[e];
        }
        mg_cmb_st_t(dx + c0, vec, acc);
    }
}
