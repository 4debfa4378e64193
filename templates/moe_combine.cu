/* moe_combine: per-token weighted sums over the token's slots, in fixed j order.
 *   fwd: y[t] = Σ_j w[t,j]·z[slot(t,j)] (kept slots only) + Σ_s z_shared[s][t]
 *   bwd: dz[slot(t,j)] = w[t,j]·dy[t];  dw[t,j] = <dy[t], z[slot(t,j)]> (0 when dropped)
 *   dx:  dx[t] = Σ_j dxs[slot(t,j)] + dxr[t] + Σ_s dx_shared[s][t]
 * One block per token; all sums in a fixed order (bitwise reproducible, no atomics). */
// moegen:entries fwd bwd dx
// moegen:grid fwd: T x 256
// moegen:grid bwd: T x 256
// moegen:grid dx: T x 256
#ifndef MOEGEN_GENERATED
#include "mg_defaults.cuh"
#include "moe_params.h"
#include "mg_common.cuh"
#endif

#define MG_COMBINE_THREADS 256

/* fwd. grid: T; block: MG_COMBINE_THREADS. */
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
    mg_t *y = (mg_t *)p.y;
    for (int c = threadIdx.x; c < MG_D; c += blockDim.x) {
        float acc = 0.0f;
        for (int j = 0; j < MG_TOPK; j++) {
            int s = s_slot[j];
            if (s >= 0) acc = fmaf(s_w[j], p.z[(long long)s * MG_D + c], acc);
        }
        for (int sh = 0; sh < p.n_shared; sh++)
            acc += p.z_shared[((long long)sh * p.T + t) * MG_D + c];
        mg_st(y, (long long)t * MG_D + c, acc);
    }
}

/* bwd. grid: T; block: MG_COMBINE_THREADS. */
extern "C" __global__ void __launch_bounds__(MG_COMBINE_THREADS)
/*$bwd*/moe_combine_bwd(const moe_combine_bwd_params p)
{
    __shared__ float scratch[32];
    const int t = blockIdx.x;
    const mg_t *dy = (const mg_t *)p.dy + (long long)t * MG_D;
    mg_t *dz = (mg_t *)p.dz;
    for (int j = 0; j < MG_TOPK; j++) {
        const long long i = (long long)t * MG_TOPK + j;
        const int s = p.slot_of[i];          /* block-uniform */
        if (s < 0) {
            if (threadIdx.x == 0) p.dw[i] = 0.0f;
            continue;
        }
        const float w = p.topk_w[i];
        const float *z = p.z + (long long)s * MG_D;
        float part = 0.0f;
        for (int c = threadIdx.x; c < MG_D; c += blockDim.x) {
            float g = mg_to_f32(dy[c]);
            part = fmaf(g, z[c], part);
            mg_st(dz, (long long)s * MG_D + c, w * g);
        }
        part = mg_block_sum(part, scratch);
        if (threadIdx.x == 0) p.dw[i] = part;
    }
}

/* dx. grid: T; block: MG_COMBINE_THREADS. */
extern "C" __global__ void __launch_bounds__(MG_COMBINE_THREADS)
/*$dx*/moe_combine_dx(const moe_combine_dx_params p)
{
    __shared__ int s_slot[MG_TOPK];
    const int t = blockIdx.x;
    for (int j = threadIdx.x; j < MG_TOPK; j += blockDim.x) s_slot[j] = p.slot_of[(long long)t * MG_TOPK + j];
    __syncthreads();
    mg_t *dx = (mg_t *)p.dx;
    for (int c = threadIdx.x; c < MG_D; c += blockDim.x) {
        float acc = 0.0f;
        for (int j = 0; j < MG_TOPK; j++) {
            int s = s_slot[j];
            if (s >= 0) acc += p.dxs[(long long)s * MG_D + c];
        }
        if (p.dxr) acc += p.dxr[(long long)t * MG_D + c];
        for (int sh = 0; sh < p.n_shared; sh++)
            acc += p.dx_shared[((long long)sh * p.T + t) * MG_D + c];
        mg_st(dx, (long long)t * MG_D + c, acc);
    }
}
