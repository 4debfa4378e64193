/* mg_ref: the CPU reference MoE layer (routing, dispatch, expert MLPs, losses, backward),
 * computed in fp64 straight from the math written down in mg_ref.h.
 *
 * Everything inside runs on an fp64 copy of the inputs (ref_model) and fills an fp64
 * state (ref_state); the float API only converts at the edges. Keeping the core in fp64
 * serves two purposes: the oracle's own rounding stays far below any GPU tolerance, and
 * mg_ref_gradcheck (mg_ref_check.c) can take finite differences accurate to ~1e-9.
 */
#include "mg_ref_core.h"

#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------------------------------ */
/* errors and memory                                                                    */

void mg_ref_die(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("mg_ref: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    abort();
}

/* Zeroed memory or a fatal error; a reference that silently ran short would lie. */
void *mg_ref_calloc(size_t n, size_t size)
{
    void *p = calloc(n ? n : 1, size);
    if (!p) mg_ref_die("out of memory (%zu x %zu bytes)", n, size);
    return p;
}

/* Rejects shapes the math in mg_ref.h does not define, naming the caller and the field. */
void mg_ref_check_cfg(const mg_ref_cfg *c, const char *fn)
{
    if (!c) mg_ref_die("%s: cfg is NULL", fn);
    if (c->T < 1 || c->d < 1 || c->ff < 1 || c->E < 1)
        mg_ref_die("%s: T = %d, d = %d, ff = %d, E = %d: all must be >= 1", fn, c->T, c->d,
                   c->ff, c->E);
    if (c->k < 1 || c->k > c->E)
        mg_ref_die("%s: k = %d: must be in [1, E = %d]", fn, c->k, c->E);
    if (c->act < MG_ACT_SWIGLU || c->act > MG_ACT_RELU)
        mg_ref_die("%s: act = %d: unknown activation", fn, c->act);
    if (c->router < MG_ROUTER_SOFTMAX_TOPK || c->router > MG_ROUTER_SWITCH)
        mg_ref_die("%s: router = %d: unknown router", fn, c->router);
    if (c->router == MG_ROUTER_SWITCH && c->k != 1)
        mg_ref_die("%s: router switch: k = %d: must be 1", fn, c->k);
    if (c->n_shared < 0) mg_ref_die("%s: n_shared = %d: must be >= 0", fn, c->n_shared);
    if (!(c->capacity_factor >= 0))
        mg_ref_die("%s: capacity_factor = %g: must be >= 0", fn, c->capacity_factor);
    if (c->drop_policy != MG_DROP_POSITION && c->drop_policy != MG_DROP_PROBABILITY)
        mg_ref_die("%s: drop_policy = %d: unknown policy", fn, c->drop_policy);
}

/* ------------------------------------------------------------------------------------ */
/* scalar activations                                                                   */

static int ref_is_glu(int act) { return act == MG_ACT_SWIGLU || act == MG_ACT_GEGLU; }

int mg_ref_f2(const mg_ref_cfg *c) { return ref_is_glu(c->act) ? 2 * c->ff : c->ff; }

/* Written so that neither branch overflows exp() for large |v|. */
double mg_ref_sigmoid(double v)
{
    if (v >= 0) return 1.0 / (1.0 + exp(-v));
    double e = exp(v);
    return e / (1.0 + e);
}

/* Exact gelu: v·Φ(v); erfc keeps full relative accuracy in the far negative tail. */
static double ref_gelu(double v) { return 0.5 * v * erfc(-v * M_SQRT1_2); }
static double ref_gelu_grad(double v)
{
    return 0.5 * erfc(-v * M_SQRT1_2) + v * exp(-0.5 * v * v) * (0.5 * M_2_SQRTPI * M_SQRT1_2);
}

/* The elementwise function of each activation: silu for swiglu, gelu for geglu/gelu. */
double mg_ref_act(int act, double v)
{
    switch (act) {
    case MG_ACT_SWIGLU: return v * mg_ref_sigmoid(v);
    case MG_ACT_GEGLU:
    case MG_ACT_GELU:   return ref_gelu(v);
    case MG_ACT_RELU:   return v > 0 ? v : 0.0;
    }
    mg_ref_die("mg_ref_act: act = %d: unknown activation", act);
    return 0;
}

double mg_ref_act_grad(int act, double v)
{
    switch (act) {
    case MG_ACT_SWIGLU: { double s = mg_ref_sigmoid(v); return s * (1.0 + v * (1.0 - s)); }
    case MG_ACT_GEGLU:
    case MG_ACT_GELU:   return ref_gelu_grad(v);
    case MG_ACT_RELU:   return v > 0 ? 1.0 : 0.0;
    }
    mg_ref_die("mg_ref_act_grad: act = %d: unknown activation", act);
    return 0;
}

/* ------------------------------------------------------------------------------------ */
/* fp64 model, state and gradients                                                      */

static double *ref_dalloc(long n) { return mg_ref_calloc((size_t)n, sizeof(double)); }
static int *ref_ialloc(long n) { return mg_ref_calloc((size_t)n, sizeof(int)); }

void mg_ref_model_alloc(const mg_ref_cfg *c, mg_ref_model *m)
{
    memset(m, 0, sizeof *m);
    m->c = *c;
    m->F2 = mg_ref_f2(c);
    m->S = c->n_shared;
    m->x = ref_dalloc((long)c->T * c->d);
    m->wg = ref_dalloc((long)c->E * c->d);
    m->bias = ref_dalloc(c->E);
    m->w_up = ref_dalloc((long)c->E * m->F2 * c->d);
    m->w_dn = ref_dalloc((long)c->E * c->d * c->ff);
    m->ws_up = ref_dalloc((long)m->S * m->F2 * c->d);
    m->ws_dn = ref_dalloc((long)m->S * c->d * c->ff);
}

void mg_ref_model_free(mg_ref_model *m)
{
    free(m->x); free(m->wg); free(m->bias); free(m->w_up); free(m->w_dn);
    free(m->ws_up); free(m->ws_dn);
    memset(m, 0, sizeof *m);
}

void mg_ref_state_alloc(const mg_ref_model *m, mg_ref_state *st)
{
    const mg_ref_cfg *c = &m->c;
    long TE = (long)c->T * c->E, TK = (long)c->T * c->k;
    memset(st, 0, sizeof *st);
    st->logits = ref_dalloc(TE);
    st->score = ref_dalloc(TE);
    st->probs = ref_dalloc(TE);
    st->lse = ref_dalloc(c->T);
    st->topk_idx = ref_ialloc(TK);
    st->topk_w = ref_dalloc(TK);
    st->wsum = ref_dalloc(c->T);
    st->counts = ref_ialloc(c->E);
    st->counts_all = ref_ialloc(c->E);
    st->offsets = ref_ialloc(c->E + 1L);
    st->perm = ref_ialloc(TK);
    st->slot_of = ref_ialloc(TK);
    st->a = ref_dalloc(TK * m->F2);
    st->h = ref_dalloc(TK * c->ff);
    st->z = ref_dalloc(TK * c->d);
    st->sa = ref_dalloc((long)c->T * m->S * m->F2);
    st->sh = ref_dalloc((long)c->T * m->S * c->ff);
    st->y = ref_dalloc((long)c->T * c->d);
}

void mg_ref_state_free(mg_ref_state *st)
{
    free(st->logits); free(st->score); free(st->probs); free(st->lse);
    free(st->topk_idx); free(st->topk_w); free(st->wsum);
    free(st->counts); free(st->counts_all); free(st->offsets); free(st->perm); free(st->slot_of);
    free(st->a); free(st->h); free(st->z); free(st->sa); free(st->sh); free(st->y);
    memset(st, 0, sizeof *st);
}

void mg_ref_dgrads_alloc(const mg_ref_model *m, mg_ref_dgrads *g)
{
    const mg_ref_cfg *c = &m->c;
    g->dx = ref_dalloc((long)c->T * c->d);
    g->dwg = ref_dalloc((long)c->E * c->d);
    g->dw_up = ref_dalloc((long)c->E * m->F2 * c->d);
    g->dw_dn = ref_dalloc((long)c->E * c->d * c->ff);
    g->dws_up = ref_dalloc((long)m->S * m->F2 * c->d);
    g->dws_dn = ref_dalloc((long)m->S * c->d * c->ff);
    g->dlogits = ref_dalloc((long)c->T * c->E);
}

void mg_ref_dgrads_free(mg_ref_dgrads *g)
{
    free(g->dx); free(g->dwg); free(g->dw_up); free(g->dw_dn);
    free(g->dws_up); free(g->dws_dn); free(g->dlogits);
    memset(g, 0, sizeof *g);
}

/* ------------------------------------------------------------------------------------ */
/* routing                                                                              */

static void ref_logits(const mg_ref_model *m, mg_ref_state *st)
{
    const mg_ref_cfg *c = &m->c;
    for (int t = 0; t < c->T; t++)
        for (int e = 0; e < c->E; e++) {
            const double *xr = m->x + (long)t * c->d, *wr = m->wg + (long)e * c->d;
            double acc = 0;
            for (int i = 0; i < c->d; i++) acc += xr[i] * wr[i];
            st->logits[(long)t * c->E + e] = acc;
        }
}

/* score: what selection ranks and the weights are taken from (softmax p, or sigmoid s);
 * probs: the p of the aux loss; lse: logsumexp of the logits for the z-loss. */
static void ref_scores(const mg_ref_model *m, mg_ref_state *st)
{
    const mg_ref_cfg *c = &m->c;
    for (int t = 0; t < c->T; t++) {
        const double *l = st->logits + (long)t * c->E;
        double *sc = st->score + (long)t * c->E, *p = st->probs + (long)t * c->E;
        double mx = l[0], sum = 0;
        for (int e = 1; e < c->E; e++) if (l[e] > mx) mx = l[e];
        for (int e = 0; e < c->E; e++) sum += exp(l[e] - mx);
        st->lse[t] = mx + log(sum);
        if (c->router == MG_ROUTER_SIGMOID_TOPK) {
            double ssum = 0;
            for (int e = 0; e < c->E; e++) ssum += sc[e] = mg_ref_sigmoid(l[e]);
            for (int e = 0; e < c->E; e++) p[e] = sc[e] / ssum;
        } else {
            for (int e = 0; e < c->E; e++) p[e] = sc[e] = exp(l[e] - mx) / sum;
        }
    }
}

/* Top-k by score (+ the selection bias, except for switch) in descending order. Only a
 * strictly larger value displaces the current best, so on equal values the lower expert id
 * wins. */
static void ref_select(const mg_ref_model *m, mg_ref_state *st)
{
    const mg_ref_cfg *c = &m->c;
    int use_bias = c->router != MG_ROUTER_SWITCH && m->has_bias;
    char *taken = mg_ref_calloc((size_t)c->E, 1);
    for (int t = 0; t < c->T; t++) {
        const double *sc = st->score + (long)t * c->E;
        memset(taken, 0, (size_t)c->E);
        for (int j = 0; j < c->k; j++) {
            int best = -1;
            double bv = 0;
            for (int e = 0; e < c->E; e++) {
                double v = sc[e] + (use_bias ? m->bias[e] : 0.0);
                if (taken[e] || (best >= 0 && !(v > bv))) continue;
                best = e, bv = v;
            }
            taken[best] = 1;
            st->topk_idx[(long)t * c->k + j] = best;
        }
    }
    free(taken);
}

/* Weights are the raw scores of the chosen experts (never the bias), renormalized over
 * the k choices when asked; switch keeps p itself, as Switch Transformer does. */
static void ref_weights(const mg_ref_model *m, mg_ref_state *st)
{
    const mg_ref_cfg *c = &m->c;
    int renorm = c->renormalize && c->router != MG_ROUTER_SWITCH;
    for (int t = 0; t < c->T; t++) {
        const double *sc = st->score + (long)t * c->E;
        const int *idx = st->topk_idx + (long)t * c->k;
        double *w = st->topk_w + (long)t * c->k, sum = 0;
        for (int j = 0; j < c->k; j++) sum += sc[idx[j]];
        st->wsum[t] = renorm ? sum : 1.0;
        for (int j = 0; j < c->k; j++) w[j] = sc[idx[j]] / st->wsum[t];
    }
}

/* C = ceil(cf·T·k/E), or no limit in dropless mode. Evaluated in double exactly as
 * written; whoever passes C to the GPU must evaluate it the same way, because ceil turns
 * rounding into whole slots (cf = 0.3 with T·k/E = 10 gives 3 in double but 4 with
 * cf = 0.3f in float). */
int mg_ref_capacity(const mg_ref_cfg *c)
{
    if (c->capacity_factor <= 0) return INT_MAX;
    return (int)ceil(c->capacity_factor * ((double)c->T * c->k) / c->E);
}

typedef struct ref_rank { double w; int tk; } ref_rank;

/* Larger weight first; equal weights in assignment order. */
static int ref_rank_cmp(const void *a_, const void *b_)
{
    const ref_rank *a = a_, *b = b_;
    if (a->w != b->w) return a->w > b->w ? -1 : 1;
    return (a->tk > b->tk) - (a->tk < b->tk);
}

/* drop_policy probability: marks slot_of[tk] = -1 for every assignment outside the C
 * largest weights of its expert (the others 0). */
static void ref_drop_by_probability(const mg_ref_cfg *c, mg_ref_state *st, int cap)
{
    int TK = c->T * c->k;
    ref_rank *r = mg_ref_calloc((size_t)TK, sizeof *r);
    for (int e = 0; e < c->E; e++) {
        int n = 0;
        for (int tk = 0; tk < TK; tk++)
            if (st->topk_idx[tk] == e) r[n++] = (ref_rank){st->topk_w[tk], tk};
        if (n > cap) qsort(r, (size_t)n, sizeof *r, ref_rank_cmp);
        for (int i = 0; i < n; i++) st->slot_of[r[i].tk] = i < cap ? 0 : -1;
    }
    free(r);
}

/* Stable counting sort of assignments t·k+j by expert. Walking assignments in (t, j)
 * order both keeps the sort stable and makes "first C per expert" mean token order. */
static void ref_dispatch(const mg_ref_model *m, mg_ref_state *st)
{
    const mg_ref_cfg *c = &m->c;
    int TK = c->T * c->k, cap = mg_ref_capacity(c);
    int by_prob = cap != INT_MAX && c->drop_policy == MG_DROP_PROBABILITY;
    memset(st->counts, 0, sizeof(int) * (size_t)c->E);
    memset(st->counts_all, 0, sizeof(int) * (size_t)c->E);
    st->n_dropped = 0;
    if (by_prob) ref_drop_by_probability(c, st, cap);
    for (int tk = 0; tk < TK; tk++) {
        int e = st->topk_idx[tk];
        st->counts_all[e]++;
        int keep = by_prob ? st->slot_of[tk] == 0 : st->counts[e] < cap;
        if (keep) st->counts[e]++, st->slot_of[tk] = 0;
        else st->slot_of[tk] = -1, st->n_dropped++;
    }
    st->offsets[0] = 0;
    for (int e = 0; e < c->E; e++) st->offsets[e + 1] = st->offsets[e] + st->counts[e];
    int *next = ref_ialloc(c->E);
    memcpy(next, st->offsets, sizeof(int) * (size_t)c->E);
    for (int tk = 0; tk < TK; tk++) {
        if (st->slot_of[tk] < 0) continue;
        int s = next[st->topk_idx[tk]]++;
        st->perm[s] = tk;
        st->slot_of[tk] = s;
    }
    for (int s = st->offsets[c->E]; s < TK; s++) st->perm[s] = -1;
    free(next);
}

/* The batch the aux and z means run over: this call's tokens, or a group's (mg_ref_cfg.T_stat). */
static double ref_stat_T(const mg_ref_cfg *c) { return c->T_stat > 0 ? c->T_stat : c->T; }
static double ref_stat_f(const mg_ref_cfg *c, const mg_ref_state *st, int e)
{
    return (c->counts_stat ? c->counts_stat[e] : st->counts_all[e]) / (ref_stat_T(c) * c->k);
}

static void ref_losses(const mg_ref_model *m, mg_ref_state *st)
{
    const mg_ref_cfg *c = &m->c;
    double aux = 0, z = 0;
    for (int e = 0; e < c->E; e++) {
        double f = ref_stat_f(c, st, e), P = 0;
        for (int t = 0; t < c->T; t++) P += st->probs[(long)t * c->E + e];
        aux += f * (P / ref_stat_T(c));
    }
    for (int t = 0; t < c->T; t++) z += st->lse[t] * st->lse[t];
    st->aux = c->aux_coef * c->E * aux;
    st->zloss = c->z_coef * z / ref_stat_T(c);
    st->entropy_sum = st->top1_sum = 0;
    for (int t = 0; t < c->T; t++) {
        const double *p = st->probs + (long)t * c->E;
        double mx = 0;
        for (int e = 0; e < c->E; e++) {
            if (p[e] > 0) st->entropy_sum -= p[e] * log(p[e]);
            if (p[e] > mx) mx = p[e];
        }
        st->top1_sum += mx;
    }
}

/* ------------------------------------------------------------------------------------ */
/* expert MLPs (one piece of code for routed and shared experts)                        */

/* a = up·xr (F2), h = act(a) (ff), z = dn·h (d). z may be NULL when only a and h matter. */
static void ref_mlp_fwd(const mg_ref_model *m, const double *up, const double *dn,
                        const double *xr, double *a, double *h, double *z)
{
    int d = m->c.d, ff = m->c.ff, glu = ref_is_glu(m->c.act);
    for (int i = 0; i < m->F2; i++) {
        double acc = 0;
        for (int q = 0; q < d; q++) acc += up[(long)i * d + q] * xr[q];
        a[i] = acc;
    }
    for (int i = 0; i < ff; i++) h[i] = mg_ref_act(m->c.act, a[i]) * (glu ? a[ff + i] : 1.0);
    for (int o = 0; o < d; o++) {
        double acc = 0;
        for (int i = 0; i < ff; i++) acc += dn[(long)o * ff + i] * h[i];
        z[o] = acc;
    }
}

/* The shared experts on token t: y (d) += shared_s(x[t]) for s in order; sa [S,F2] and sh [S,ff]
 * get the token's activations (backward needs them), zs (d) is scratch. */
static void ref_shared_fwd(const mg_ref_model *m, int t, double *sa, double *sh, double *zs, double *y)
{
    long upsz = (long)m->F2 * m->c.d, dnsz = (long)m->c.d * m->c.ff;
    for (int q = 0; q < m->S; q++) {
        ref_mlp_fwd(m, m->ws_up + q * upsz, m->ws_dn + q * dnsz, m->x + (long)t * m->c.d, sa + (long)q * m->F2,
                    sh + (long)q * m->c.ff, zs);
        for (int o = 0; o < m->c.d; o++) y[o] += zs[o];
    }
}

static void ref_experts_fwd(const mg_ref_model *m, mg_ref_state *st)
{
    const mg_ref_cfg *c = &m->c;
    long TK = (long)c->T * c->k, upsz = (long)m->F2 * c->d, dnsz = (long)c->d * c->ff;
    memset(st->a, 0, sizeof(double) * (size_t)(TK * m->F2));
    memset(st->h, 0, sizeof(double) * (size_t)(TK * c->ff));
    memset(st->z, 0, sizeof(double) * (size_t)(TK * c->d));
    for (int s = 0; s < st->offsets[c->E]; s++) {
        int tk = st->perm[s], t = tk / c->k, e = st->topk_idx[tk];
        ref_mlp_fwd(m, m->w_up + e * upsz, m->w_dn + e * dnsz, m->x + (long)t * c->d,
                    st->a + (long)s * m->F2, st->h + (long)s * c->ff, st->z + (long)s * c->d);
    }
    double *zs = ref_dalloc(c->d);
    for (int t = 0; t < c->T; t++) {
        double *y = st->y + (long)t * c->d;
        memset(y, 0, sizeof(double) * (size_t)c->d);
        for (int j = 0; j < c->k; j++) {
            long tk = (long)t * c->k + j;
            int s = st->slot_of[tk];
            if (s < 0) continue;
            for (int o = 0; o < c->d; o++) y[o] += st->topk_w[tk] * st->z[(long)s * c->d + o];
        }
        ref_shared_fwd(m, t, st->sa + (long)t * m->S * m->F2, st->sh + (long)t * m->S * c->ff, zs, y);
    }
    free(zs);
}

void mg_ref_forward_d(const mg_ref_model *m, mg_ref_state *st, const int *topk_idx, int full)
{
    ref_logits(m, st);
    ref_scores(m, st);
    if (topk_idx)
        memcpy(st->topk_idx, topk_idx, sizeof(int) * (size_t)m->c.T * (size_t)m->c.k);
    else
        ref_select(m, st);
    ref_weights(m, st);
    ref_dispatch(m, st);
    ref_losses(m, st);
    if (full) ref_experts_fwd(m, st);
}

double mg_ref_loss_d(const mg_ref_model *m, const mg_ref_state *st, const double *dy)
{
    double acc = 0;
    for (long i = 0; i < (long)m->c.T * m->c.d; i++) acc += st->y[i] * dy[i];
    return acc + st->aux + st->zloss;
}

/* ------------------------------------------------------------------------------------ */
/* backward                                                                             */

/* Given dz (d) for one expert application, accumulates dup, ddn and dxr. */
static void ref_mlp_bwd(const mg_ref_model *m, const double *up, const double *dn,
                        const double *xr, const double *a, const double *h, const double *dz,
                        double *dup, double *ddn, double *dxr, double *dh, double *da)
{
    int d = m->c.d, ff = m->c.ff, act = m->c.act;
    for (int i = 0; i < ff; i++) dh[i] = 0;
    for (int o = 0; o < d; o++)
        for (int i = 0; i < ff; i++) {
            ddn[(long)o * ff + i] += dz[o] * h[i];
            dh[i] += dn[(long)o * ff + i] * dz[o];
        }
    for (int i = 0; i < ff; i++) {
        if (ref_is_glu(act)) {
            da[i] = dh[i] * mg_ref_act_grad(act, a[i]) * a[ff + i];
            da[ff + i] = dh[i] * mg_ref_act(act, a[i]);
        } else {
            da[i] = dh[i] * mg_ref_act_grad(act, a[i]);
        }
    }
    for (int i = 0; i < m->F2; i++)
        for (int q = 0; q < d; q++) {
            dup[(long)i * d + q] += da[i] * xr[q];
            dxr[q] += up[(long)i * d + q] * da[i];
        }
}

/* The shared experts' backward on token t (weight 1: dz = dy): adds into dws_up [S,F2,d],
 * dws_dn [S,d,ff] and dxr (d); sa/sh as ref_shared_fwd left them, dh/da scratch. */
static void ref_shared_bwd(const mg_ref_model *m, int t, const double *sa, const double *sh, const double *dyr,
                           double *dws_up, double *dws_dn, double *dxr, double *dh, double *da)
{
    long upsz = (long)m->F2 * m->c.d, dnsz = (long)m->c.d * m->c.ff;
    for (int q = 0; q < m->S; q++)
        ref_mlp_bwd(m, m->ws_up + q * upsz, m->ws_dn + q * dnsz, m->x + (long)t * m->c.d, sa + (long)q * m->F2,
                    sh + (long)q * m->c.ff, dyr, dws_up + q * upsz, dws_dn + q * dnsz, dxr, dh, da);
}

/* Routed experts: fills dw[t·k+j] = z·dy for kept slots (0 for dropped ones). */
static void ref_experts_bwd(const mg_ref_model *m, const mg_ref_state *st, const double *dy,
                            mg_ref_dgrads *g, double *dw)
{
    const mg_ref_cfg *c = &m->c;
    long upsz = (long)m->F2 * c->d, dnsz = (long)c->d * c->ff;
    double *dz = ref_dalloc(c->d), *dh = ref_dalloc(c->ff), *da = ref_dalloc(m->F2);
    memset(dw, 0, sizeof(double) * (size_t)c->T * (size_t)c->k);
    for (int s = 0; s < st->offsets[c->E]; s++) {
        int tk = st->perm[s], t = tk / c->k, e = st->topk_idx[tk];
        const double *dyr = dy + (long)t * c->d, *z = st->z + (long)s * c->d;
        for (int o = 0; o < c->d; o++) dw[tk] += z[o] * dyr[o], dz[o] = st->topk_w[tk] * dyr[o];
        ref_mlp_bwd(m, m->w_up + e * upsz, m->w_dn + e * dnsz, m->x + (long)t * c->d,
                    st->a + (long)s * m->F2, st->h + (long)s * c->ff, dz,
                    g->dw_up + e * upsz, g->dw_dn + e * dnsz, g->dx + (long)t * c->d, dh, da);
    }
    for (int t = 0; t < c->T; t++)
        ref_shared_bwd(m, t, st->sa + (long)t * m->S * m->F2, st->sh + (long)t * m->S * c->ff, dy + (long)t * c->d,
                       g->dws_up, g->dws_dn, g->dx + (long)t * c->d, dh, da);
    free(dz); free(dh); free(da);
}

/* dL/dscore of one token from its routing-weight gradients dw (through renormalization
 * w_j = s_j / Σ s) and from the aux loss, whose dL/dp[t,e] = dp[e] is the same for every
 * token because f is a constant. */
static void ref_dscore(const mg_ref_model *m, const mg_ref_state *st, int t, const double *dw,
                       const double *dp, double *ds)
{
    const mg_ref_cfg *c = &m->c;
    const int *idx = st->topk_idx + (long)t * c->k;
    const double *w = st->topk_w + (long)t * c->k, *sc = st->score + (long)t * c->E;
    const double *p = st->probs + (long)t * c->E;
    double dot = 0, dp_dot_p = 0, ssum = 0;
    int renorm = c->renormalize && c->router != MG_ROUTER_SWITCH;
    for (int e = 0; e < c->E; e++) ds[e] = 0;
    for (int j = 0; j < c->k; j++) dot += dw[j] * w[j];
    for (int j = 0; j < c->k; j++) ds[idx[j]] += renorm ? (dw[j] - dot) / st->wsum[t] : dw[j];
    if (c->router == MG_ROUTER_SIGMOID_TOPK) {
        /* p = s / Σ s */
        for (int e = 0; e < c->E; e++) dp_dot_p += dp[e] * p[e], ssum += sc[e];
        for (int e = 0; e < c->E; e++) ds[e] += (dp[e] - dp_dot_p) / ssum;
    } else {
        for (int e = 0; e < c->E; e++) ds[e] += dp[e];   /* p is the score itself */
    }
}

/* dlogits of one token: score → logits (softmax or sigmoid Jacobian), plus the z-loss. */
static void ref_dlogits_row(const mg_ref_model *m, const mg_ref_state *st, int t,
                            const double *ds, double *dl)
{
    const mg_ref_cfg *c = &m->c;
    const double *sc = st->score + (long)t * c->E, *l = st->logits + (long)t * c->E;
    if (c->router == MG_ROUTER_SIGMOID_TOPK) {
        for (int e = 0; e < c->E; e++) dl[e] = ds[e] * sc[e] * (1.0 - sc[e]);
    } else {
        double dot = 0;
        for (int e = 0; e < c->E; e++) dot += ds[e] * sc[e];
        for (int e = 0; e < c->E; e++) dl[e] = sc[e] * (ds[e] - dot);
    }
    double zc = 2.0 * c->z_coef * st->lse[t] / ref_stat_T(c);
    for (int e = 0; e < c->E; e++) dl[e] += zc * exp(l[e] - st->lse[t]);
}

/* Router: dlogits, then dwg = dlogitsᵀ·x and dx += dlogits·wg. */
static void ref_router_bwd(const mg_ref_model *m, const mg_ref_state *st, const double *dw,
                           mg_ref_dgrads *g)
{
    const mg_ref_cfg *c = &m->c;
    double *ds = ref_dalloc(c->E), *dp = ref_dalloc(c->E);
    for (int e = 0; e < c->E; e++)   /* aux = aux_coef·E·Σ_e f_e·(1/T)·Σ_t p[t,e] */
        dp[e] = c->aux_coef * c->E * ref_stat_f(c, st, e) / ref_stat_T(c);
    for (int t = 0; t < c->T; t++) {
        double *dl = g->dlogits + (long)t * c->E;
        ref_dscore(m, st, t, dw + (long)t * c->k, dp, ds);
        ref_dlogits_row(m, st, t, ds, dl);
        for (int e = 0; e < c->E; e++)
            for (int q = 0; q < c->d; q++) {
                g->dwg[(long)e * c->d + q] += dl[e] * m->x[(long)t * c->d + q];
                g->dx[(long)t * c->d + q] += dl[e] * m->wg[(long)e * c->d + q];
            }
    }
    free(ds);
    free(dp);
}

void mg_ref_backward_d(const mg_ref_model *m, const mg_ref_state *st, const double *dy,
                       mg_ref_dgrads *g)
{
    const mg_ref_cfg *c = &m->c;
    memset(g->dx, 0, sizeof(double) * (size_t)c->T * (size_t)c->d);
    memset(g->dwg, 0, sizeof(double) * (size_t)c->E * (size_t)c->d);
    memset(g->dw_up, 0, sizeof(double) * (size_t)c->E * (size_t)m->F2 * (size_t)c->d);
    memset(g->dw_dn, 0, sizeof(double) * (size_t)c->E * (size_t)c->d * (size_t)c->ff);
    memset(g->dws_up, 0, sizeof(double) * (size_t)m->S * (size_t)m->F2 * (size_t)c->d);
    memset(g->dws_dn, 0, sizeof(double) * (size_t)m->S * (size_t)c->d * (size_t)c->ff);
    double *dw = ref_dalloc((long)c->T * c->k);
    ref_experts_bwd(m, st, dy, g, dw);
    ref_router_bwd(m, st, dw, g);
    free(dw);
}

/* ------------------------------------------------------------------------------------ */
/* the float API                                                                        */

static void ref_f2d(double *dst, const float *src, long n)
{
    for (long i = 0; i < n; i++) dst[i] = src[i];
}
static void ref_d2f(float *dst, const double *src, long n)
{
    for (long i = 0; i < n; i++) dst[i] = (float)src[i];
}

/* An fp64 copy of the float inputs; the expert weights only when the caller needs them. */
static void ref_model_from_float(const mg_ref_cfg *c, const float *x, const mg_ref_weights *w,
                                 int experts, mg_ref_model *m, const char *fn)
{
    mg_ref_check_cfg(c, fn);
    if (!x || !w || !w->wg) mg_ref_die("%s: x, w and w->wg must be non-NULL", fn);
    mg_ref_model_alloc(c, m);
    ref_f2d(m->x, x, (long)c->T * c->d);
    ref_f2d(m->wg, w->wg, (long)c->E * c->d);
    m->has_bias = w->bias != NULL;
    if (w->bias) ref_f2d(m->bias, w->bias, c->E);
    if (!experts) return;
    if (!w->w_up || !w->w_dn) mg_ref_die("%s: w->w_up and w->w_dn must be non-NULL", fn);
    if (m->S && (!w->ws_up || !w->ws_dn))
        mg_ref_die("%s: n_shared = %d but w->ws_up/ws_dn is NULL", fn, m->S);
    ref_f2d(m->w_up, w->w_up, (long)c->E * m->F2 * c->d);
    ref_f2d(m->w_dn, w->w_dn, (long)c->E * c->d * c->ff);
    ref_f2d(m->ws_up, w->ws_up, (long)m->S * m->F2 * c->d);
    ref_f2d(m->ws_dn, w->ws_dn, (long)m->S * c->d * c->ff);
}

void mg_ref_fwd_alloc(const mg_ref_cfg *c, mg_ref_fwd *f)
{
    mg_ref_check_cfg(c, "mg_ref_fwd_alloc");
    long TE = (long)c->T * c->E, TK = (long)c->T * c->k;
    memset(f, 0, sizeof *f);
    f->logits = mg_ref_calloc((size_t)TE, sizeof(float));
    f->probs = mg_ref_calloc((size_t)TE, sizeof(float));
    f->topk_idx = mg_ref_calloc((size_t)TK, sizeof(int));
    f->topk_w = mg_ref_calloc((size_t)TK, sizeof(float));
    f->counts = mg_ref_calloc((size_t)c->E, sizeof(int));
    f->counts_all = mg_ref_calloc((size_t)c->E, sizeof(int));
    f->offsets = mg_ref_calloc((size_t)c->E + 1, sizeof(int));
    f->perm = mg_ref_calloc((size_t)TK, sizeof(int));
    f->slot_of = mg_ref_calloc((size_t)TK, sizeof(int));
    f->a = mg_ref_calloc((size_t)(TK * mg_ref_f2(c)), sizeof(float));
    f->h = mg_ref_calloc((size_t)(TK * c->ff), sizeof(float));
    f->z = mg_ref_calloc((size_t)(TK * c->d), sizeof(float));
    f->y = mg_ref_calloc((size_t)c->T * (size_t)c->d, sizeof(float));
}

void mg_ref_fwd_free(mg_ref_fwd *f)
{
    free(f->logits); free(f->probs); free(f->topk_idx); free(f->topk_w);
    free(f->counts); free(f->counts_all); free(f->offsets); free(f->perm); free(f->slot_of);
    free(f->a); free(f->h); free(f->z); free(f->y);
    memset(f, 0, sizeof *f);
}

void mg_ref_grads_alloc(const mg_ref_cfg *c, mg_ref_grads *g)
{
    mg_ref_check_cfg(c, "mg_ref_grads_alloc");
    long F2 = mg_ref_f2(c), S = c->n_shared;
    memset(g, 0, sizeof *g);
    g->dx = mg_ref_calloc((size_t)c->T * (size_t)c->d, sizeof(float));
    g->dwg = mg_ref_calloc((size_t)c->E * (size_t)c->d, sizeof(float));
    g->dw_up = mg_ref_calloc((size_t)(c->E * F2 * c->d), sizeof(float));
    g->dw_dn = mg_ref_calloc((size_t)c->E * (size_t)c->d * (size_t)c->ff, sizeof(float));
    if (S) {
        g->dws_up = mg_ref_calloc((size_t)(S * F2 * c->d), sizeof(float));
        g->dws_dn = mg_ref_calloc((size_t)(S * c->d * c->ff), sizeof(float));
    }
    g->dlogits = mg_ref_calloc((size_t)c->T * (size_t)c->E, sizeof(float));
}

void mg_ref_grads_free(mg_ref_grads *g)
{
    free(g->dx); free(g->dwg); free(g->dw_up); free(g->dw_dn);
    free(g->dws_up); free(g->dws_dn); free(g->dlogits);
    memset(g, 0, sizeof *g);
}

/* Copies the routing part of the fp64 state (logits..n_dropped, aux, zloss) into f. */
static void ref_copy_route(const mg_ref_cfg *c, const mg_ref_state *st, mg_ref_fwd *f)
{
    long TE = (long)c->T * c->E, TK = (long)c->T * c->k;
    ref_d2f(f->logits, st->logits, TE);
    ref_d2f(f->probs, st->probs, TE);
    memcpy(f->topk_idx, st->topk_idx, sizeof(int) * (size_t)TK);
    ref_d2f(f->topk_w, st->topk_w, TK);
    memcpy(f->counts, st->counts, sizeof(int) * (size_t)c->E);
    memcpy(f->counts_all, st->counts_all, sizeof(int) * (size_t)c->E);
    memcpy(f->offsets, st->offsets, sizeof(int) * ((size_t)c->E + 1));
    memcpy(f->perm, st->perm, sizeof(int) * (size_t)TK);
    memcpy(f->slot_of, st->slot_of, sizeof(int) * (size_t)TK);
    f->n_dropped = st->n_dropped;
    f->aux = st->aux;
    f->zloss = st->zloss;
    f->entropy_sum = st->entropy_sum;
    f->top1_sum = st->top1_sum;
}

void mg_ref_route(const mg_ref_cfg *c, const float *x, const mg_ref_weights *w, mg_ref_fwd *f)
{
    mg_ref_model m;
    mg_ref_state st;
    ref_model_from_float(c, x, w, 0, &m, "mg_ref_route");
    mg_ref_state_alloc(&m, &st);
    mg_ref_forward_d(&m, &st, NULL, 0);
    ref_copy_route(c, &st, f);
    mg_ref_state_free(&st);
    mg_ref_model_free(&m);
}

void mg_ref_forward(const mg_ref_cfg *c, const float *x, const mg_ref_weights *w, mg_ref_fwd *f)
{
    mg_ref_forward_routed(c, x, w, NULL, f);
}

void mg_ref_forward_routed(const mg_ref_cfg *c, const float *x, const mg_ref_weights *w, const int *topk_idx,
                           mg_ref_fwd *f)
{
    mg_ref_model m;
    mg_ref_state st;
    long TK = (long)c->T * c->k;
    ref_model_from_float(c, x, w, 1, &m, "mg_ref_forward");
    mg_ref_state_alloc(&m, &st);
    mg_ref_forward_d(&m, &st, topk_idx, 1);
    ref_copy_route(c, &st, f);
    ref_d2f(f->a, st.a, TK * m.F2);
    ref_d2f(f->h, st.h, TK * c->ff);
    ref_d2f(f->z, st.z, TK * c->d);
    ref_d2f(f->y, st.y, (long)c->T * c->d);
    mg_ref_state_free(&st);
    mg_ref_model_free(&m);
}

/* The saved a/h/z in f are float, so the forward is recomputed in fp64 rather than read
 * back; the routing is taken from f (f->topk_idx), which is what makes f an input. */
void mg_ref_backward(const mg_ref_cfg *c, const float *x, const mg_ref_weights *w,
                     const mg_ref_fwd *f, const float *dy, mg_ref_grads *g)
{
    mg_ref_model m;
    mg_ref_state st;
    mg_ref_dgrads dg;
    if (!f || !dy || !g) mg_ref_die("mg_ref_backward: f, dy and g must be non-NULL");
    ref_model_from_float(c, x, w, 1, &m, "mg_ref_backward");
    if (m.S && (!g->dws_up || !g->dws_dn))
        mg_ref_die("mg_ref_backward: n_shared = %d but g->dws_up/dws_dn is NULL", m.S);
    mg_ref_state_alloc(&m, &st);
    mg_ref_forward_d(&m, &st, f->topk_idx, 1);
    double *dyd = ref_dalloc((long)c->T * c->d);
    ref_f2d(dyd, dy, (long)c->T * c->d);
    mg_ref_dgrads_alloc(&m, &dg);
    mg_ref_backward_d(&m, &st, dyd, &dg);
    ref_d2f(g->dx, dg.dx, (long)c->T * c->d);
    ref_d2f(g->dwg, dg.dwg, (long)c->E * c->d);
    ref_d2f(g->dw_up, dg.dw_up, (long)c->E * m.F2 * c->d);
    ref_d2f(g->dw_dn, dg.dw_dn, (long)c->E * c->d * c->ff);
    if (m.S) {
        ref_d2f(g->dws_up, dg.dws_up, (long)m.S * m.F2 * c->d);
        ref_d2f(g->dws_dn, dg.dws_dn, (long)m.S * c->d * c->ff);
    }
    ref_d2f(g->dlogits, dg.dlogits, (long)c->T * c->E);
    mg_ref_dgrads_free(&dg);
    free(dyd);
    mg_ref_state_free(&st);
    mg_ref_model_free(&m);
}

void mg_ref_router_backward(const mg_ref_cfg *c, const float *x, const mg_ref_weights *w, const mg_ref_fwd *f,
                            const double *dw, float *dx, float *dwg)
{
    mg_ref_model m;
    mg_ref_state st;
    mg_ref_dgrads dg;
    if (!f || !dw || !dx || !dwg) mg_ref_die("mg_ref_router_backward: f, dw, dx and dwg must be non-NULL");
    ref_model_from_float(c, x, w, 0, &m, "mg_ref_router_backward");
    mg_ref_state_alloc(&m, &st);
    mg_ref_forward_d(&m, &st, f->topk_idx, 0);
    mg_ref_dgrads_alloc(&m, &dg);
    ref_router_bwd(&m, &st, dw, &dg);
    ref_d2f(dx, dg.dx, (long)c->T * c->d);
    ref_d2f(dwg, dg.dwg, (long)c->E * c->d);
    mg_ref_dgrads_free(&dg);
    mg_ref_state_free(&st);
    mg_ref_model_free(&m);
}

/* A model of the shared experts alone: x and ws_* in fp64, no router or routed experts (a shard's
 * w_up holds only its own experts, so ref_model_from_float must not read E of them). */
static void ref_shared_model(const mg_ref_cfg *c, const float *x, const mg_ref_weights *w, mg_ref_model *m,
                             const char *fn)
{
    mg_ref_check_cfg(c, fn);
    if (!x || !w || (c->n_shared && (!w->ws_up || !w->ws_dn)))
        mg_ref_die("%s: x, w, w->ws_up and w->ws_dn must be non-NULL (n_shared = %d)", fn, c->n_shared);
    memset(m, 0, sizeof *m);
    m->c = *c;
    m->F2 = mg_ref_f2(c);
    m->S = c->n_shared;
    m->x = ref_dalloc((long)c->T * c->d);
    m->ws_up = ref_dalloc((long)m->S * m->F2 * c->d);
    m->ws_dn = ref_dalloc((long)m->S * c->d * c->ff);
    ref_f2d(m->x, x, (long)c->T * c->d);
    ref_f2d(m->ws_up, w->ws_up, (long)m->S * m->F2 * c->d);
    ref_f2d(m->ws_dn, w->ws_dn, (long)m->S * c->d * c->ff);
}

void mg_ref_shared_forward(const mg_ref_cfg *c, const float *x, const mg_ref_weights *w, double *y)
{
    mg_ref_model m;
    ref_shared_model(c, x, w, &m, "mg_ref_shared_forward");
    double *sa = ref_dalloc((long)m.S * m.F2), *sh = ref_dalloc((long)m.S * c->ff), *zs = ref_dalloc(c->d);
    memset(y, 0, sizeof(double) * (size_t)c->T * (size_t)c->d);
    for (int t = 0; t < c->T; t++) ref_shared_fwd(&m, t, sa, sh, zs, y + (long)t * c->d);
    free(sa); free(sh); free(zs);
    mg_ref_model_free(&m);
}

void mg_ref_shared_backward(const mg_ref_cfg *c, const float *x, const mg_ref_weights *w, const float *dy, float *dx,
                            float *dws_up, float *dws_dn)
{
    mg_ref_model m;
    ref_shared_model(c, x, w, &m, "mg_ref_shared_backward");
    if (!dy || !dx || (m.S && (!dws_up || !dws_dn)))
        mg_ref_die("mg_ref_shared_backward: dy, dx, dws_up and dws_dn must be non-NULL (n_shared = %d)", m.S);
    long up = (long)m.S * m.F2 * c->d, dn = (long)m.S * c->d * c->ff;
    double *sa = ref_dalloc((long)m.S * m.F2), *sh = ref_dalloc((long)m.S * c->ff), *zs = ref_dalloc(c->d);
    double *ys = ref_dalloc(c->d), *dyr = ref_dalloc(c->d), *dxr = ref_dalloc(c->d), *dh = ref_dalloc(c->ff), *da = ref_dalloc(m.F2);
    double *gup = ref_dalloc(up), *gdn = ref_dalloc(dn);
    for (int t = 0; t < c->T; t++) {   /* the token's activations again, then its backward */
        ref_shared_fwd(&m, t, sa, sh, zs, ys);   /* ys: the output, not needed */
        ref_f2d(dyr, dy + (long)t * c->d, c->d);
        memset(dxr, 0, sizeof(double) * (size_t)c->d);
        ref_shared_bwd(&m, t, sa, sh, dyr, gup, gdn, dxr, dh, da);
        ref_d2f(dx + (long)t * c->d, dxr, c->d);
    }
    ref_d2f(dws_up, gup, up);
    ref_d2f(dws_dn, gdn, dn);
    free(sa); free(sh); free(zs); free(ys); free(dyr); free(dxr); free(dh); free(da); free(gup); free(gdn);
    mg_ref_model_free(&m);
}

/* ------------------------------------------------------------------------------------ */
/* comparison                                                                           */

/* A non-finite a is +inf outright: ‖a−b‖ could otherwise be NaN, and NaN < tol is false
 * but NaN > tol is false too, which lets a careless caller pass. */
double mg_ref_rel_err(const float *a, const float *b, long n)
{
    double num = 0, den = 0, na = 0;
    for (long i = 0; i < n; i++) {
        if (!isfinite(a[i])) return INFINITY;
        double diff = (double)a[i] - (double)b[i];
        num += diff * diff;
        den += (double)b[i] * b[i];
        na += (double)a[i] * a[i];
    }
    return den > 0 ? sqrt(num) / sqrt(den) : sqrt(na);
}
