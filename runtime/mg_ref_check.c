/* mg_ref_check: finite-difference check of the fp64 reference backward (mg_ref_gradcheck).
 *
 * Random inputs are drawn in fp64, the analytic gradients come from mg_ref_backward_d,
 * and each probe compares one entry against a central difference of the full fp64 loss
 * L = Σ y·dy + aux + zloss. Selection is piecewise constant, so a probe whose
 * perturbation moves any top-k choice or drop decision (or, for relu, crosses a kink)
 * measures a jump rather than a derivative; such probes are redrawn.
 */
#include "mg_ref_core.h"
#include "mg_rng.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Step of the five-point difference below. Its truncation error grows like h⁴ and the
 * rounding noise of L (≈ 1e-15 absolute for L of order 10) like 1/h; on the O(1) inputs
 * drawn below 1e-3 puts both near 1e-12, and the measured errors at ~5e-8. */
#define REF_FD_STEP 1e-3
/* Draws per probe before giving up on placing it away from a routing boundary. */
#define REF_FD_TRIES 64

static void ref_fill_normal(mg_rng *r, double *v, long n, double scale)
{
    for (long i = 0; i < n; i++) v[i] = scale * mg_rng_normal(r);
}

/* Inputs of unit-scale activations: logits, pre-activations and outputs all O(1). */
static void ref_draw_model(mg_rng *r, mg_ref_model *m)
{
    const mg_ref_cfg *c = &m->c;
    double sd = 1.0 / sqrt(c->d), sf = 1.0 / sqrt(c->ff);
    ref_fill_normal(r, m->x, (long)c->T * c->d, 1.0);
    ref_fill_normal(r, m->wg, (long)c->E * c->d, sd);
    m->has_bias = c->router != MG_ROUTER_SWITCH;   /* selection only: must get no gradient */
    if (m->has_bias) ref_fill_normal(r, m->bias, c->E, 0.5);   /* large enough to reorder */
    ref_fill_normal(r, m->w_up, (long)c->E * m->F2 * c->d, sd);
    ref_fill_normal(r, m->w_dn, (long)c->E * c->d * c->ff, sf);
    ref_fill_normal(r, m->ws_up, (long)m->S * m->F2 * c->d, sd);
    ref_fill_normal(r, m->ws_dn, (long)m->S * c->d * c->ff, sf);
}

/* 1 when st routes exactly like base: same choices, same drops, and (relu) the same
 * sign of every pre-activation, i.e. the loss is smooth between the two points. */
static int ref_same_branch(const mg_ref_model *m, const mg_ref_state *base,
                           const mg_ref_state *st)
{
    const mg_ref_cfg *c = &m->c;
    size_t TK = (size_t)c->T * (size_t)c->k;
    if (memcmp(base->topk_idx, st->topk_idx, TK * sizeof(int))) return 0;
    if (memcmp(base->slot_of, st->slot_of, TK * sizeof(int))) return 0;
    if (c->act != MG_ACT_RELU) return 1;
    for (long i = 0; i < (long)TK * m->F2; i++)
        if ((base->a[i] > 0) != (st->a[i] > 0)) return 0;
    for (long i = 0; i < (long)c->T * m->S * m->F2; i++)
        if ((base->sa[i] > 0) != (st->sa[i] > 0)) return 0;
    return 1;
}

/* L with *p set to v; returns whether the routing still matches base. */
static int ref_loss_at(const mg_ref_model *m, double *p, double v, const double *dy,
                       const mg_ref_state *base, mg_ref_state *st, double *loss)
{
    *p = v;
    mg_ref_forward_d(m, st, NULL, 1);
    *loss = mg_ref_loss_d(m, st, dy);
    return ref_same_branch(m, base, st);
}

/* Five-point central difference of L in *p:
 *   L'(v) ≈ [8(L(v+h) − L(v−h)) − (L(v+2h) − L(v−2h))] / 12h,  error O(h⁴).
 * The fourth order lets h be large (1e-3), which divides the loss's rounding noise
 * (~1e-15) by 1e-3 instead of 1e-6: a plain two-point difference with its O(h²) error
 * bottoms out near 1e-10 absolute, i.e. 1e-5 relative on the small gradients of lightly
 * used experts. Returns 0, leaving *p as it was, when a point lands on another branch. */
static int ref_central_diff(const mg_ref_model *m, double *p, const double *dy,
                            const mg_ref_state *base, mg_ref_state *st, double *out)
{
    double v = *p, h = REF_FD_STEP * fmax(1.0, fabs(v)), l[4] = { 0, 0, 0, 0 };
    const double off[4] = { h, -h, 2 * h, -2 * h };
    int ok = 1;
    for (int i = 0; i < 4 && ok; i++) ok = ref_loss_at(m, p, v + off[i], dy, base, st, &l[i]);
    *p = v;
    *out = (8.0 * (l[0] - l[1]) - (l[2] - l[3])) / (12.0 * h);
    return ok;
}

static double ref_rel(double num, double ana)
{
    return fabs(num - ana) / fmax(fmax(fabs(num), fabs(ana)), 1e-6);
}

/* Largest relative error over n_probe probes of one tensor. A probe that finds no smooth
 * spot in REF_FD_TRIES draws makes the result +inf: a check that measured nothing must
 * not read as a pass. */
static double ref_check_tensor(const mg_ref_model *m, double *param, const double *grad,
                               long n, const char *name, const double *dy,
                               const mg_ref_state *base, mg_ref_state *st, mg_rng *r,
                               int n_probe)
{
    double worst = 0, num;
    for (int p = 0; p < n_probe && n > 0; p++) {
        int tries = 0;
        for (; tries < REF_FD_TRIES; tries++) {
            long i = (long)(mg_rng_u64(r) % (unsigned long long)n);
            if (!ref_central_diff(m, param + i, dy, base, st, &num)) continue;
            worst = fmax(worst, ref_rel(num, grad[i]));
            break;
        }
        if (tries == REF_FD_TRIES) {
            fprintf(stderr, "mg_ref_gradcheck: %s: every one of %d probes crossed a routing "
                    "or relu boundary\n", name, REF_FD_TRIES);
            return INFINITY;
        }
    }
    return worst;
}

double mg_ref_gradcheck(const mg_ref_cfg *c, unsigned long long seed, int n_probe)
{
    mg_ref_model m;
    mg_ref_state base, st;
    mg_ref_dgrads g;
    mg_rng r;
    mg_ref_check_cfg(c, "mg_ref_gradcheck");
    mg_rng_seed(&r, seed);
    mg_ref_model_alloc(c, &m);
    ref_draw_model(&r, &m);
    double *dy = mg_ref_calloc((size_t)c->T * (size_t)c->d, sizeof(double));
    ref_fill_normal(&r, dy, (long)c->T * c->d, 1.0);

    mg_ref_state_alloc(&m, &base);
    mg_ref_state_alloc(&m, &st);
    mg_ref_dgrads_alloc(&m, &g);
    mg_ref_forward_d(&m, &base, NULL, 1);
    mg_ref_backward_d(&m, &base, dy, &g);

    long F2 = m.F2, S = m.S;
    struct { const char *name; double *p, *g; long n; } t[] = {
        { "x", m.x, g.dx, (long)c->T * c->d },
        { "wg", m.wg, g.dwg, (long)c->E * c->d },
        { "w_up", m.w_up, g.dw_up, c->E * F2 * c->d },
        { "w_dn", m.w_dn, g.dw_dn, (long)c->E * c->d * c->ff },
        { "ws_up", m.ws_up, g.dws_up, S * F2 * c->d },
        { "ws_dn", m.ws_dn, g.dws_dn, S * c->d * c->ff },
    };
    double worst = 0;
    for (size_t i = 0; i < sizeof t / sizeof t[0]; i++)
        worst = fmax(worst, ref_check_tensor(&m, t[i].p, t[i].g, t[i].n, t[i].name, dy,
                                             &base, &st, &r, n_probe));

    mg_ref_dgrads_free(&g);
    mg_ref_state_free(&st);
    mg_ref_state_free(&base);
    free(dy);
    mg_ref_model_free(&m);
    return worst;
}
