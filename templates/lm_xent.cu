/* lm_xent: softmax cross-entropy fused with its gradient, in place on the logits.
 *   fwd:  per row r: m = max, lse = m + log Σ exp(x − m), loss_row[r] = lse − x[target];
 *         x[c] <- (exp(x[c] − lse) − [c == target])·grad_scale  (the storage type: the
 *         fp32 gradient never exists in memory)
 *   loss: loss = Σ_r loss_row[r] / N, in a fixed order
 * One block per row; any V (odd, not a multiple of anything): scalar 16-bit accesses. */
// moegen:entries fwd loss
// moegen:grid fwd: N x 512
// moegen:grid loss: 1 x 512
#ifndef MOEGEN_GENERATED
#include "mg_defaults.cuh"
#include "moe_params.h"
#include "mg_common.cuh"
#include "lm_params.h"
#endif

/* fwd. grid: N; block LM_XENT_THREADS. */
extern "C" __global__ void __launch_bounds__(LM_XENT_THREADS)
/*$fwd*/lm_xent_fwd(const lm_xent_params p)
{
    __shared__ float scratch[32];
    __shared__ float s_max[32];
    constexpr int V = MG_VOCAB;
    const int r = blockIdx.x, tgt = p.targets[r];
    mg_t *x = (mg_t *)p.logits + (long long)r * p.ld;
    /* pass 1: per-thread online max / sum of exp */
    float m = -mg_inf(), s = 0.0f, xt = 0.0f;
    for (int c = threadIdx.x; c < V; c += blockDim.x) {
        float v = mg_to_f32(x[c]);
        if (c == tgt) xt = v;
        if (v > m) { s = s * expf(m - v) + 1.0f; m = v; }
        else s += expf(v - m);
    }
    /* block max, then rescale each thread's sum to it and sum in a fixed order */
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    float wm = mg_warp_max(m);
    if (lane == 0) s_max[warp] = wm;
    __syncthreads();
    float bm = lane < nw ? s_max[lane] : -mg_inf();
    bm = mg_warp_max(bm);
    s = m == -mg_inf() ? 0.0f : s * expf(m - bm);
    s = mg_block_sum(s, scratch);
    xt = mg_block_sum(xt, scratch);   /* only the owner of tgt contributes */
    const float lse = bm + logf(s);
    if (threadIdx.x == 0) p.loss_row[r] = lse - xt;
    /* pass 2: gradient in place (each element read and written by the same thread) */
    const float gs = p.grad_scale;
    for (int c = threadIdx.x; c < V; c += blockDim.x) {
        float pr = expf(mg_to_f32(x[c]) - lse);
        x[c] = mg_from_f32<mg_t>((pr - (c == tgt ? 1.0f : 0.0f)) * gs);
    }
}

/* loss. grid: 1; block LM_XENT_THREADS. */
extern "C" __global__ void __launch_bounds__(LM_XENT_THREADS)
/*$loss*/lm_xent_loss(const lm_xent_params p)
{
    __shared__ float scratch[32];
    float acc = 0.0f;
    for (int r = threadIdx.x; r < p.N; r += blockDim.x) acc += p.loss_row[r];
    acc = mg_block_sum(acc, scratch);
    if (threadIdx.x == 0) p.loss[0] = acc / (float)p.N;
}
