/* mg_lm_ref: CPU reference of the decoder-LM kernels (templates/lm_*.cu), fp64 accumulation
 * on fp32 inputs, written independently of the kernels for the selftest (mg_lm_selftest).
 * Layouts as templates/lm_params.h: qkv [B·S, (H+2KV)·hd], o [B·S, H·hd], lse [B, H, S]. */
#ifndef MG_LM_REF_H
#define MG_LM_REF_H

#ifdef __cplusplus
extern "C" {
#endif

typedef struct mg_lm_ref_attn { int B, S, H, KV, hd; } mg_lm_ref_attn;

/* Causal attention, scale 1/sqrt(hd); o and lse out. */
void mg_lm_ref_attn_fwd(const mg_lm_ref_attn *a, const float *qkv, float *o, float *lse);
/* Gradients of Σ o·dout w.r.t. qkv (q, k, v parts), recomputing everything in fp64. */
void mg_lm_ref_attn_bwd(const mg_lm_ref_attn *a, const float *qkv, const float *dout, float *dqkv);
/* RoPE in place on the q and k heads of qkv [rows, (H+2KV)·hd] (inverse: rotate by −angle). */
void mg_lm_ref_rope(float *qkv, int rows, int S, int H, int KV, int hd, double theta, int inverse);
/* y = h·rstd·w, rstd = 1/sqrt(mean(h²) + eps). */
void mg_lm_ref_rmsnorm_fwd(const float *h, const float *w, int N, int D, double eps, float *y, float *rstd);
/* dx = (dres or 0) + ∂/∂h;  dw = Σ_rows dy·h·rstd. */
void mg_lm_ref_rmsnorm_bwd(const float *dy, const float *h, const float *w, const float *dres, int N, int D,
                           double eps, float *dx, float *dw);
/* dwte[v] = (accumulate ? dwte[v] : 0) + Σ_{ids[r]=v} dout[r]. */
void mg_lm_ref_embed_bwd(const int *ids, const float *dout, int N, int V, int D, int accumulate, float *dwte);
/* loss_row, mean loss and dlogits = (softmax − onehot)·grad_scale of logits [N, V]. */
void mg_lm_ref_xent(const float *logits, const int *targets, int N, int V, double grad_scale, float *loss_row,
                    float *loss, float *dlogits);
/* out = (res or 0) + dropout(x) with the mask of templates/mg_hash.h; keep[i] = 1 when kept. */
void mg_lm_ref_dropout(const float *x, const float *res, long long n, double p, unsigned long long stream, float *out,
                       int *keep);
/* One AdamW step (formula in templates/lm_params.h) in fp64, in place on w, m, v. */
void mg_lm_ref_adamw(float *w, const float *g, float *m, float *v, long long n, double gscale, double lr, double beta1,
                     double beta2, double eps, double wd, int t);
/* sqrt(Σ x²). */
double mg_lm_ref_norm2(const float *x, long long n);

#ifdef __cplusplus
}
#endif
#endif
