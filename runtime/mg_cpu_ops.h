/* mg_cpu_ops: the CPU trainer's ops, each a forward and a backward; fp32 storage, fp64
 * accumulation in norms, softmax, attention and losses.
 *
 * Layouts (row-major): activations [n, width]; a weight W [out, in] as in PyTorch's
 * nn.Linear, so a projection is y = x·Wᵀ. Attention tensors are [B·T, heads·hd] with head h
 * at columns [h·hd, (h+1)·hd). Matmuls accumulate in fp32 in a fixed order (ascending
 * inner index), which keeps them bitwise deterministic.
 */
#ifndef MG_CPU_OPS_H
#define MG_CPU_OPS_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---- matmuls ------------------------------------------------------------------------ */
/* y[n,out] = x[n,in]·w[out,in]ᵀ (overwrites y). */
void mg_mm_fwd(const float *x, const float *w, float *y, long n, int in, int out);
/* dx[n,in] += dy[n,out]·w[out,in]. */
void mg_mm_bwd_x(const float *dy, const float *w, float *dx, long n, int in, int out);
/* dw[out,in] += dy[n,out]ᵀ·x[n,in]. */
void mg_mm_bwd_w(const float *dy, const float *x, float *dw, long n, int in, int out);

/* ---- RMSNorm: y = x / sqrt(mean(x²) + eps) · w  (HF Llama) ----------------------------- */
void mg_rmsnorm_fwd(const float *x, const float *w, float *y, double *rstd, long n, int d, double eps);
/* dx += ∂, dw += ∂ (dw accumulated in fp64 over the rows, then added). */
void mg_rmsnorm_bwd(const float *x, const float *w, const double *rstd, const float *dy,
                    float *dx, float *dw, long n, int d);

/* ---- RoPE, rotate-half convention (HF Llama/Mixtral) ----------------------------------
 * For a head vector v of width hd, half = hd/2, pair (i, i+half), f_i = theta^(-2i/hd),
 * angle = pos·f_i (pos = position in the sequence, 0-based):
 *   v'[i] = v[i]·cos − v[i+half]·sin,  v'[i+half] = v[i+half]·cos + v[i]·sin.
 * Tables are [T, half], computed in fp64 and rounded to float. */
void mg_rope_tables(float *cos_t, float *sin_t, int T, int hd, double theta);
/* In place on x [B·T, nh·hd]; inverse = 1 rotates by −angle (the backward pass). */
void mg_rope_apply(float *x, int B, int T, int nh, int hd, const float *cos_t, const float *sin_t,
                   int inverse);

/* ---- causal attention with GQA ---------------------------------------------------------
 * q [B·T, H·hd], k, v [B·T, Hkv·hd]; query head h reads kv head h / (H/Hkv) (HF repeat_kv).
 * o [B·T, H·hd]; lse [B, H, T] the softmax log-normalizer of each row (natural log, of the
 * scaled scores), which is all the backward pass needs to recompute the probabilities. */
void mg_attn_fwd(const float *q, const float *k, const float *v, float *o, double *lse,
                 int B, int T, int H, int Hkv, int hd);
/* Given do, overwrites dq, dk, dv. */
void mg_attn_bwd(const float *q, const float *k, const float *v, const float *o,
                 const double *lse, const float *dout, float *dq, float *dk, float *dv,
                 int B, int T, int H, int Hkv, int hd);

/* ---- FFN activation (mg_act), a [n, F2] → h [n, ff] ----------------------------------
 * Gated (swiglu, geglu): F2 = 2·ff, h = act(a[:, :ff])·a[:, ff:]; else F2 = ff, h = act(a).
 * Same functions as mg_ref (exact erf gelu). */
void mg_act_fwd(int act, const float *a, float *h, long n, int ff);
void mg_act_bwd(int act, const float *a, const float *dh, float *da, long n, int ff);

/* ---- softmax cross-entropy, fused ----------------------------------------------------
 * Returns Σ_rows (logsumexp(row) − row[target]) in fp64. With dscale != 0 the logits are
 * overwritten by the gradient (softmax − onehot)·dscale. */
double mg_xent(float *logits, const int32_t *targets, long n, int V, float dscale);

/* ---- dropout (inverted), counter-based -------------------------------------------------
 * The stream of one site is mg_drop_stream(seed, step, micro, site) with site = 2·layer +
 * (0 attention output, 1 FFN output). Element i of the [B·T, d] tensor is kept iff
 * (mix64(stream ^ i) >> 40)·2⁻²⁴ ≥ p, and kept values are scaled by 1/(1−p). The backward
 * pass applies the same mask to the gradient, so it never needs storing. */
static inline uint64_t mg_mix64(uint64_t z)
{
    z += 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}
static inline uint64_t mg_drop_stream(uint64_t seed, uint64_t step, uint64_t micro, uint64_t site)
{
    return mg_mix64(mg_mix64(mg_mix64(mg_mix64(seed) ^ step) ^ micro) ^ site);
}
/* In place on x [n]; forward and backward are the same call. p = 0 does nothing. */
void mg_dropout(float *x, long n, double p, uint64_t stream);

#ifdef __cplusplus
}
#endif
#endif
