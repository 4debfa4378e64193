/* mg_optim: AdamW with fp32 master weights and state, global-norm clipping, the LR schedule.
 *
 * Update of element i at step t (1-based), PyTorch AdamW order:
 *   g = grad·clip_scale;  m = β1·m + (1−β1)·g;  v = β2·v + (1−β2)·g²
 *   θ = θ·(1 − lr·wd)            (decoupled; only tensors with decay = 1)
 *   θ = θ − lr·(m/(1−β1ᵗ)) / (sqrt(v/(1−β2ᵗ)) + eps)
 * computed in fp64 per element and stored back as fp32. Weight decay (nanoGPT's rule):
 * every 2-D weight (embeddings, attention, router, experts, dense FFN, LM head), never the
 * norm weights.
 */
#ifndef MG_OPTIM_H
#define MG_OPTIM_H

#include "mg_cpu_model.h"
#include "mg_spec.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct mg_adamw {
    long n;
    float *m, *v;      /* same layout as the parameters */
    long step;         /* updates done so far */
} mg_adamw;

void mg_adamw_init(mg_adamw *o, long n);
void mg_adamw_free(mg_adamw *o);

/* The constants of update t: hyperparameters, the clip factor gscale, and the bias corrections
 * bc1 = 1 − β1ᵗ, bc2 = 1 − β2ᵗ (mg_adamw_hp_at). */
typedef struct mg_adamw_hp {
    double lr, beta1, beta2, eps, wd, gscale, bc1, bc2;
} mg_adamw_hp;
mg_adamw_hp mg_adamw_hp_at(long t, double lr, double beta1, double beta2, double eps, double wd, double gscale);

/* The update of n consecutive elements of one tensor (decay: its weight-decay flag): p, g, m and
 * v point at the same element; what mg_adamw_step does per tensor, so a ZeRO-1 shard (mg_zero.h)
 * whose m and v live elsewhere than p gets the same bits. */
void mg_adamw_update(float *p, const float *g, float *m, float *v, long n, int decay, const mg_adamw_hp *h);

/* One update of all tensors; grads are multiplied by gscale (the clip factor) on the fly. */
void mg_adamw_step(mg_adamw *o, float *params, const float *grads, const mg_cpu_tensor *tensors, int n_tensors,
                   double lr, double beta1, double beta2, double eps, double wd, double gscale);

/* ‖g‖₂ over n floats, accumulated in fp64 in index order. */
double mg_grad_norm(const float *g, long n);
/* PyTorch clip_grad_norm_: min(1, clip / (norm + 1e-6)); clip = 0 turns clipping off. */
double mg_clip_scale(double norm, double clip);

/* Learning rate of optimizer step s (0-based):
 *   s < warmup:  lr·(s+1)/warmup
 *   else p = (s − warmup)/max(1, steps − warmup), clamped to [0, 1]:
 *     cosine:   min_lr + (lr − min_lr)·(1 + cos(π·p))/2
 *     linear:   lr − (lr − min_lr)·p
 *     constant: lr */
double mg_lr_at(const mg_spec *s, long step);

#ifdef __cplusplus
}
#endif
#endif
