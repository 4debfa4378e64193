/* lm_xent: softmax cross-entropy fused with its gradient, in place on the logits.
 *   fwd:  per row r: lse = log Σ_{c<V} exp(x[c]) (max-shifted), loss_row[r] = lse − x[target];
 *         x[c] <- (exp(x[c] − lse) − [c == target])·grad_scale for c < V (in the storage type:
 *         the fp32 gradient never exists in memory), and x[c] <- 0 for V <= c < ld: the padding
 *         columns of a padded vocabulary get a zero gradient, so GEMMs may run over ld columns
 *   loss: loss = Σ_r loss_row[r] / N, in a fixed order
 * fwd is memory-bound (the logits are the largest tensor of the step), so it reads each row
 * from HBM once: one CTA per row; when ld is a whole number of 16-byte vectors (and the rows
 * aligned) each thread loads its first XENT_KR vectors of the row at once into registers and
 * keeps them for the gradient; a vocabulary too large for that streams the rest of the row
 * twice (the second read comes from L2). Otherwise (odd ld) one element at a time, read twice.
 * Each thread keeps an online (max, Σ exp(x − max)) in fp32 over its elements in a fixed order,
 * then the CTA combines them in a fixed order: bitwise deterministic. exp is exp2 of a
 * log2(e)-scaled difference (one MUFU op, no --use_fast_math needed). */
// moegen:entries fwd loss
// moegen:parts mg_vec
// moegen:grid fwd: N x 512
// moegen:grid loss: 1 x 512
#ifndef MOEGEN_GENERATED
#include "mg_defaults.cuh"
#include "moe_params.h"
#include "mg_common.cuh"
#include "lm_params.h"
#include "mg_vec.cuh"
#endif

static constexpr int XENT_T = LM_XENT_THREADS;
static constexpr int XENT_NV = (MG_VOCAB + MG_VEC - 1) / MG_VEC;        /* vectors covering [0, V) */
static constexpr int XENT_KR = (XENT_NV + XENT_T - 1) / XENT_T < LM_XENT_VREGS ? (XENT_NV + XENT_T - 1) / XENT_T
                                                                                : LM_XENT_VREGS;
static constexpr float XENT_L2E = 1.4426950408889634f;                  /* log2(e) */

/* U consecutive logits as loaded: one 16-byte vector (U = MG_VEC) or one element (U = 1). */
template <int U> struct xent_raw { mg_v16 v; };
template <> struct xent_raw<1> { mg_t v; };

template <int U> MG_DEV xent_raw<U> xent_ld(const mg_t *x, int i)
{
    xent_raw<U> r;
    if constexpr (U == 1) r.v = x[i];
    else r.v = mg_v16_ld(x + (long long)i * U);
    return r;
}

/* Unit i as fp32; elements at or past the vocabulary (the tail of the last vector) as −inf. */
template <int U> MG_DEV void xent_get(const xent_raw<U> &r, int i, float (&f)[U])
{
    if constexpr (U == 1) f[0] = mg_to_f32(r.v);
    else {
        mg_v16_unpack(r.v, f);
        if ((i + 1) * U > MG_VOCAB)
#pragma unroll
            for (int e = 0; e < U; e++) if (i * U + e >= MG_VOCAB) f[e] = -mg_inf();
    }
}

template <int U> MG_DEV void xent_put(mg_t *x, int i, const float (&f)[U])
{
    if constexpr (U == 1) x[i] = mg_from_f32<mg_t>(f[0]);
    else mg_v16_st(x + (long long)i * U, mg_v16_pack(f));
}

/* Online softmax denominator of one thread: m = max so far, s = Σ exp(x − m). */
struct xent_acc { float m, s; };

template <int U> MG_DEV void xent_add(xent_acc &a, const float (&f)[U])
{
    float vm = f[0];
#pragma unroll
    for (int e = 1; e < U; e++) vm = fmaxf(vm, f[e]);
    if (vm == -mg_inf()) return;
    if (vm > a.m) { a.s *= exp2f((a.m - vm) * XENT_L2E); a.m = vm; }
#pragma unroll
    for (int e = 0; e < U; e++) a.s += exp2f((f[e] - a.m) * XENT_L2E);
}

/* The gradient of unit i in place of its logits: (p − onehot)·gs, 0 past the vocabulary. */
template <int U> MG_DEV void xent_grad(float (&f)[U], int i, int tgt, float lse, float gs)
{
#pragma unroll
    for (int e = 0; e < U; e++) {
        const int c = i * U + e;
        const float pr = exp2f((f[e] - lse) * XENT_L2E);
        f[e] = c < MG_VOCAB ? (pr - (c == tgt ? 1.0f : 0.0f)) * gs : 0.0f;
    }
}

/* One row. U elements per access; the first KR units of each thread stay in registers. */
template <int U, int KR> MG_DEV void xent_row(const lm_xent_params &p, int r, float *red)
{
    constexpr int NU = (MG_VOCAB + U - 1) / U;   /* units covering [0, V) */
    const int t = threadIdx.x, tgt = p.targets[r];
    mg_t *x = (mg_t *)p.logits + (long long)r * p.ld;
    xent_raw<U> keep[KR > 0 ? KR : 1];
#pragma unroll
    for (int k = 0; k < KR; k++)   /* every load in flight before the first use */
        if (t + k * XENT_T < NU) keep[k] = xent_ld<U>(x, t + k * XENT_T);
    const float xt = t == 0 ? mg_to_f32(x[tgt]) : 0.0f;   /* read before any thread writes */
    /* pass 1: this thread's (max, Σ exp) over its units in order */
    xent_acc a = {-mg_inf(), 0.0f};
#pragma unroll
    for (int k = 0; k < KR; k++) {
        const int i = t + k * XENT_T;
        if (i >= NU) break;
        float f[U];
        xent_get(keep[k], i, f);
        xent_add(a, f);
    }
    for (int i = t + KR * XENT_T; i < NU; i += XENT_T) {
        float f[U];
        xent_get(xent_ld<U>(x, i), i, f);
        xent_add(a, f);
    }
    /* the CTA: max, then each thread's sum rescaled to it and summed in a fixed order */
    const float bm = mg_block_max(a.m, red);
    const float s = mg_block_sum(a.m == -mg_inf() ? 0.0f : a.s * exp2f((a.m - bm) * XENT_L2E), red);
    const float lse = bm + logf(s), gs = p.grad_scale;
    if (t == 0) p.loss_row[r] = lse - xt;
    /* pass 2: the gradient over the same units (each written by the thread that read it) */
#pragma unroll
    for (int k = 0; k < KR; k++) {
        const int i = t + k * XENT_T;
        if (i >= NU) break;
        float f[U];
        xent_get(keep[k], i, f);
        xent_grad(f, i, tgt, lse, gs);
        xent_put(x, i, f);
    }
    for (int i = t + KR * XENT_T; i < NU; i += XENT_T) {
        float f[U];
        xent_get(xent_ld<U>(x, i), i, f);
        xent_grad(f, i, tgt, lse, gs);
        xent_put(x, i, f);
    }
    /* padding columns past the last unit: zero (ld is a multiple of U) */
    const float zero[U] = {};
    for (int i = NU + t; i < p.ld / U; i += XENT_T) xent_put(x, i, zero);
}

/* fwd. grid: N; block LM_XENT_THREADS. */
extern "C" __global__ void __launch_bounds__(LM_XENT_THREADS, 2)
/*$fwd*/lm_xent_fwd(const lm_xent_params p)
{
    __shared__ float red[32];
    if (p.ld % MG_VEC == 0 && mg_aligned16(p.logits)) xent_row<MG_VEC, XENT_KR>(p, blockIdx.x, red);
    else xent_row<1, 0>(p, blockIdx.x, red);
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
