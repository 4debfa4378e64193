/* mg_ref: the CPU reference MoE layer, forward and backward, fp64 accumulation.
 *
 * It is written from the math below, independently of the GPU templates, and is the
 * oracle that `moegen selftest` compares every generated kernel against.
 *
 * Shapes (row-major, all float):
 *   x     [T, d]            input tokens
 *   wg    [E, d]            router weight; logits = x · wgᵀ
 *   bias  [E] or NULL       selection-only bias (softmax_topk, sigmoid_topk; DeepSeek-V3's
 *                           aux-loss-free balancing); never in the weights, no gradient
 *   w_up  [E, F2, d]        F2 = 2·ff for GLU activations (rows [0,ff) gate, [ff,2ff) up), else ff
 *   w_dn  [E, d, ff]
 *   ws_up [S, F2, d], ws_dn [S, d, ff]   shared experts (S = n_shared), applied to every token
 *   y     [T, d]
 *
 * Routing:
 *   softmax_topk: p = softmax(logits); pick the k largest p + bias (ties: lower expert id
 *                 first); w = p[sel]; renormalize → w /= Σw.
 *   sigmoid_topk: s = sigmoid(logits); pick the k largest s + bias (ties: lower id);
 *                 w = s[sel]; renormalize → w /= Σw. For the aux loss p = s / Σ_e s.
 *   switch:       softmax, k = 1, w = p[sel] (renormalize and bias are ignored).
 *   Slot j of token t is its j-th choice, in descending score order.
 * Dispatch: assignments (t, j) are stably sorted by expert, ties in (t, j) order.
 *   capacity mode (capacity_factor > 0): expert e keeps C = ceil(cf·T·k/E) of its
 *   assignments; the rest are dropped (contribute nothing, counted). drop_policy position:
 *   the first C in that order; probability: the C with the largest weight w[t,j] (ties: the
 *   earlier t·k+j). Kept slots stay in (t, j) order either way.
 *   counts[e] = kept assignments, offsets = exclusive scan of counts (offsets[E] = kept total).
 *   perm[slot] = t·k + j for kept slot positions 0..offsets[E]-1; slot_of[t·k+j] = slot or -1.
 * Expert e on token row xr: a = xr · w_upᵀ (F2); h = act(a) where
 *   swiglu: silu(a_gate)·a_up; geglu: gelu(a_gate)·a_up; gelu: gelu(a); relu: max(a,0);
 *   gelu is the exact erf form. z = h · w_dnᵀ (d).
 * y[t] = Σ_j w[t,j]·z(t,j) over kept slots in j order + Σ_s shared_s(x[t]).
 * Losses (returned separately, not added to y):
 *   aux   = aux_coef · E · Σ_e f_e·P_e, f_e = (assignments to e before drops)/(T·k),
 *           P_e = mean_t p[t,e]; f is treated as a constant in the backward pass.
 *   zloss = z_coef · mean_t (logsumexp_e logits[t,e])².
 * Router statistics (monitoring only, no gradient), over the aux-loss p:
 *   entropy_sum = Σ_t −Σ_e p ln p,  top1_sum = Σ_t max_e p.
 * Backward: given dy [T,d], computes gradients of  L = Σ y·dy + aux + zloss
 *   with respect to x, wg, w_up, w_dn, ws_up, ws_dn (bias gets none).
 */
#ifndef MG_REF_H
#define MG_REF_H

#ifdef __cplusplus
extern "C" {
#endif

typedef struct mg_ref_cfg {
    int T, d, ff, E, k;
    int act;              /* mg_act */
    int router;           /* mg_router */
    int renormalize;
    double capacity_factor;   /* 0 = dropless */
    int drop_policy;          /* mg_drop_policy: which assignments capacity keeps */
    double aux_coef, z_coef;
    int n_shared;
    /* Expert parallelism (mg_ep): the aux and z means run over a batch spread across ranks.
     * T_stat > 0: the tokens of that batch (else T); counts_stat: its counts_all [E] (else this
     * call's). aux = aux_coef·E·Σ_e f_e·(Σ_t p[t,e])/T_stat with f_e = counts_stat[e]/(T_stat·k),
     * zloss = z_coef·Σ_t lse²/T_stat: this call's share of the batch's losses. */
    int T_stat;
    const int *counts_stat;
} mg_ref_cfg;

typedef struct mg_ref_weights {
    const float *wg, *bias, *w_up, *w_dn, *ws_up, *ws_dn;   /* bias/ws_* may be NULL */
} mg_ref_weights;

/* Forward outputs and the state the backward pass needs. Allocated by mg_ref_alloc. */
typedef struct mg_ref_fwd {
    float *logits;      /* [T,E] */
    float *probs;       /* [T,E] p used for aux (softmax, or normalized sigmoid) */
    int   *topk_idx;    /* [T,k] */
    float *topk_w;      /* [T,k] routing weights after renormalization */
    int   *counts;      /* [E] kept assignments per expert */
    int   *counts_all;  /* [E] assignments per expert before drops */
    int   *offsets;     /* [E+1] */
    int   *perm;        /* [T*k] slot -> t*k+j (first offsets[E] valid) */
    int   *slot_of;     /* [T*k] t*k+j -> slot or -1 if dropped */
    int    n_dropped;
    float *a;           /* [T*k, F2] pre-activation per slot (slot order) */
    float *h;           /* [T*k, ff] activation output per slot */
    float *z;           /* [T*k, d]  expert output per slot, before the routing weight */
    float *y;           /* [T,d] */
    double aux, zloss;
    double entropy_sum, top1_sum;
} mg_ref_fwd;

typedef struct mg_ref_grads {
    float *dx;     /* [T,d] */
    float *dwg;    /* [E,d] */
    float *dw_up;  /* [E,F2,d] */
    float *dw_dn;  /* [E,d,ff] */
    float *dws_up; /* [S,F2,d] or NULL when S = 0 */
    float *dws_dn; /* [S,d,ff] or NULL */
    float *dlogits;/* [T,E] gradient reaching the router logits (weights + aux + z) */
} mg_ref_grads;

int  mg_ref_f2(const mg_ref_cfg *c);   /* F2 */
void mg_ref_fwd_alloc(const mg_ref_cfg *c, mg_ref_fwd *f);
void mg_ref_fwd_free(mg_ref_fwd *f);
void mg_ref_grads_alloc(const mg_ref_cfg *c, mg_ref_grads *g);
void mg_ref_grads_free(mg_ref_grads *g);

/* Routing and dispatch only (fills logits..n_dropped). */
void mg_ref_route(const mg_ref_cfg *c, const float *x, const mg_ref_weights *w, mg_ref_fwd *f);
/* Full forward (calls mg_ref_route). */
void mg_ref_forward(const mg_ref_cfg *c, const float *x, const mg_ref_weights *w, mg_ref_fwd *f);
/* The same with the top-k choices given ([T,k], slot order) instead of selected: the weights,
 * dispatch and losses follow from them. A GPU-vs-CPU check replays the GPU's routing with it,
 * so that a near-tie that rounding broke the other way is not reported as a kernel error. */
void mg_ref_forward_routed(const mg_ref_cfg *c, const float *x, const mg_ref_weights *w, const int *topk_idx,
                           mg_ref_fwd *f);
/* Backward; f must come from mg_ref_forward on the same inputs. */
void mg_ref_backward(const mg_ref_cfg *c, const float *x, const mg_ref_weights *w,
                     const mg_ref_fwd *f, const float *dy, mg_ref_grads *g);

/* The router's part of the backward pass alone, for a layer whose experts run elsewhere
 * (mg_ep): dw [T,k] = dL/d(routing weight) of each slot (0 for dropped ones); writes
 * dwg [E,d] and dx [T,d] = the router's share of dL/dx (logits, aux and z losses).
 * f must come from mg_ref_route on the same c, x and w. */
void mg_ref_router_backward(const mg_ref_cfg *c, const float *x, const mg_ref_weights *w, const mg_ref_fwd *f,
                            const double *dw, float *dx, float *dwg);

/* The shared experts alone, for a layer whose routed experts run elsewhere (mg_ep: every rank runs
 * them on its own tokens). Read c->T, d, ff, act, n_shared, x and w->ws_up/ws_dn only.
 * Forward: y [T,d] = Σ_s shared_s(x[t]) in fp64, so that the caller adds it to the routed sum before
 * the one rounding, as mg_ref_forward does. Backward (weight 1: dz = dy): dx [T,d] = the shared
 * experts' share of dL/dx, dws_up [S,F2,d] and dws_dn [S,d,ff] written. */
void mg_ref_shared_forward(const mg_ref_cfg *c, const float *x, const mg_ref_weights *w, double *y);
void mg_ref_shared_backward(const mg_ref_cfg *c, const float *x, const mg_ref_weights *w, const float *dy, float *dx,
                            float *dws_up, float *dws_dn);

/* Scalar helpers shared by tests (exact erf gelu, silu and their derivatives). */
double mg_ref_act(int act, double v);
double mg_ref_act_grad(int act, double v);

/* Finite-difference check of mg_ref_backward on random inputs drawn from seed: perturbs
 * n_probe random entries of each of x, wg, w_up, w_dn (and ws_* when present) by central
 * differences in fp64 and returns the largest relative error found (|num−ana| / max(|num|,
 * |ana|, 1e-6)); routing is kept fixed across the perturbation (probes that flip a top-k
 * choice are redrawn). */
double mg_ref_gradcheck(const mg_ref_cfg *c, unsigned long long seed, int n_probe);

/* ‖a − b‖ / ‖b‖ over n floats (returns +inf if any NaN/inf in a). */
double mg_ref_rel_err(const float *a, const float *b, long n);

#ifdef __cplusplus
}
#endif
#endif
