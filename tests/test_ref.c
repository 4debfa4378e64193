/* test_ref: the CPU reference MoE layer (mg_ref) against finite differences, hand-computed
 * cases and the routing/dispatch rules written in mg_ref.h. */
#include "mg_test.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "mg_ref.h"
#include "mg_rng.h"
#include "mg_spec.h"

/* Bound on mg_ref_gradcheck's largest relative error. The five-point fp64 differences
 * measure ~5e-8 on these shapes; an analytic mistake (a dropped factor, a missing term)
 * shows up as O(1), so 1e-5 separates the two with room for other compilers and libms. */
#define GRADCHECK_TOL 1e-5
#define N_PROBE 16

static const char *const act_name[] = { "swiglu", "geglu", "gelu", "relu" };
static const char *const router_name[] = { "softmax_topk", "sigmoid_topk", "switch" };

static mg_ref_cfg cfg(int T, int d, int ff, int E, int k, int act, int router, double cf,
                      int n_shared)
{
    mg_ref_cfg c = { .T = T, .d = d, .ff = ff, .E = E, .k = k, .act = act, .router = router,
                     .renormalize = 1, .capacity_factor = cf, .aux_coef = 0.1, .z_coef = 0.05,
                     .n_shared = n_shared };
    return c;
}

/* ---------------------------------------------------------------------------------- */
/* random float inputs for the float API                                              */

typedef struct tmodel {
    mg_ref_cfg c;
    float *x, *wg, *bias, *w_up, *w_dn, *ws_up, *ws_dn;
    mg_ref_weights w;
} tmodel;

static float *tm_normal(mg_rng *r, long n, double scale)
{
    float *v = calloc((size_t)(n ? n : 1), sizeof(float));
    assert_non_null(v);
    for (long i = 0; i < n; i++) v[i] = (float)(scale * mg_rng_normal(r));
    return v;
}

static void tm_init(tmodel *m, const mg_ref_cfg *c, unsigned long long seed, int with_bias)
{
    mg_rng r;
    long F2 = mg_ref_f2(c), S = c->n_shared;
    mg_rng_seed(&r, seed);
    m->c = *c;
    m->x = tm_normal(&r, (long)c->T * c->d, 1.0);
    m->wg = tm_normal(&r, (long)c->E * c->d, 1.0 / sqrt(c->d));
    m->bias = with_bias ? tm_normal(&r, c->E, 0.5) : NULL;
    m->w_up = tm_normal(&r, c->E * F2 * c->d, 1.0 / sqrt(c->d));
    m->w_dn = tm_normal(&r, (long)c->E * c->d * c->ff, 1.0 / sqrt(c->ff));
    m->ws_up = S ? tm_normal(&r, S * F2 * c->d, 1.0 / sqrt(c->d)) : NULL;
    m->ws_dn = S ? tm_normal(&r, S * c->d * c->ff, 1.0 / sqrt(c->ff)) : NULL;
    m->w = (mg_ref_weights){ m->wg, m->bias, m->w_up, m->w_dn, m->ws_up, m->ws_dn };
}

static void tm_free(tmodel *m)
{
    free(m->x); free(m->wg); free(m->bias); free(m->w_up); free(m->w_dn);
    free(m->ws_up); free(m->ws_dn);
}

/* ---------------------------------------------------------------------------------- */
/* gradcheck                                                                          */

static double run_gradcheck(const mg_ref_cfg *c, unsigned long long seed, const char *what)
{
    double err = mg_ref_gradcheck(c, seed, N_PROBE);
    printf("  gradcheck %-12s %-6s cf %.2f S %d T %2d E %d k %d renorm %d: %.2e\n",
           router_name[c->router], act_name[c->act], c->capacity_factor, c->n_shared, c->T,
           c->E, c->k, c->renormalize, err);
    if (!(err < GRADCHECK_TOL)) {
        print_error("gradcheck %s: max rel err %.3e >= %.0e\n", what, err, GRADCHECK_TOL);
        fail();
    }
    return err;
}

/* Every activation × router × {dropless, capacity 1.0}, with aux and z-loss on and a
 * shared expert in half of the cases. */
static void test_gradcheck_matrix(void **state)
{
    (void)state;
    double worst = 0;
    for (int act = 0; act < 4; act++)
        for (int rt = 0; rt < 3; rt++)
            for (int cap = 0; cap < 2; cap++) {
                mg_ref_cfg c = cfg(13, 16, 8, 4, rt == MG_ROUTER_SWITCH ? 1 : 2, act, rt,
                                   cap ? 1.0 : 0.0, (act + rt + cap) % 2);
                worst = fmax(worst, run_gradcheck(&c, 100 + act * 6 + rt * 2 + cap, "matrix"));
            }
    printf("  gradcheck matrix worst: %.2e (bound %.0e)\n", worst, GRADCHECK_TOL);
}

/* Degenerate shapes: one expert, k = E, one token, no renormalization, heavy drops. */
static void test_gradcheck_edges(void **state)
{
    (void)state;
    for (int act = 0; act < 4; act++)
        for (int rt = 0; rt < 3; rt++) {
            int k1 = 1, kE = rt == MG_ROUTER_SWITCH ? 1 : 4;
            mg_ref_cfg one_expert = cfg(13, 16, 8, 1, 1, act, rt, 0, 1);
            mg_ref_cfg k_is_e = cfg(13, 16, 8, 4, kE, act, rt, 1.0, 0);
            mg_ref_cfg one_token = cfg(1, 16, 8, 4, kE == 4 ? 2 : k1, act, rt, 1.0, 1);
            mg_ref_cfg no_renorm = cfg(13, 16, 8, 4, kE == 4 ? 2 : k1, act, rt, 0, 0);
            mg_ref_cfg drops = cfg(13, 16, 8, 4, kE == 4 ? 2 : k1, act, rt, 0.5, 1);
            no_renorm.renormalize = 0;
            run_gradcheck(&one_expert, 7, "E = 1");
            run_gradcheck(&k_is_e, 8, "k = E");
            run_gradcheck(&one_token, 9, "T = 1");
            run_gradcheck(&no_renorm, 10, "renormalize = 0");
            run_gradcheck(&drops, 11, "capacity 0.5");
        }
}

/* The aux and z-loss gradients on their own (dy = 0), through the float API: dlogits
 * must match central differences of the returned aux + zloss in wg. */
static void test_backward_aux_z_only(void **state)
{
    (void)state;
    for (int rt = 0; rt < 3; rt++) {
        mg_ref_cfg c = cfg(13, 16, 8, 4, rt == MG_ROUTER_SWITCH ? 1 : 2, MG_ACT_SWIGLU, rt, 1.0, 0);
        tmodel m;
        mg_ref_fwd f, fp, fm;
        mg_ref_grads g;
        tm_init(&m, &c, 40 + rt, rt == MG_ROUTER_SIGMOID_TOPK);
        mg_ref_fwd_alloc(&c, &f); mg_ref_fwd_alloc(&c, &fp); mg_ref_fwd_alloc(&c, &fm);
        mg_ref_grads_alloc(&c, &g);
        float *dy = calloc((size_t)c.T * c.d, sizeof(float));
        int checked = 0;
        mg_ref_forward(&c, m.x, &m.w, &f);
        mg_ref_backward(&c, m.x, &m.w, &f, dy, &g);
        for (int i = 0; i < c.E * c.d; i += 5) {
            float v = m.wg[i], vp = v + 1e-2f, vm = v - 1e-2f;
            m.wg[i] = vp; mg_ref_forward(&c, m.x, &m.w, &fp);
            m.wg[i] = vm; mg_ref_forward(&c, m.x, &m.w, &fm);
            m.wg[i] = v;
            if (memcmp(fp.topk_idx, f.topk_idx, sizeof(int) * c.T * c.k) ||
                memcmp(fm.topk_idx, f.topk_idx, sizeof(int) * c.T * c.k)) continue;
            double num = ((fp.aux + fp.zloss) - (fm.aux + fm.zloss)) / ((double)vp - vm);
            double ana = g.dwg[i];
            if (fabs(num - ana) > 1e-5 + 1e-3 * fabs(num)) {
                print_error("%s: dwg[%d] from aux+z: fd %.8e, backward %.8e\n",
                            router_name[rt], i, num, ana);
                fail();
            }
            checked++;
        }
        assert_true(checked >= 8);   /* not vacuous: most probes keep their routing */
        free(dy);
        mg_ref_grads_free(&g);
        mg_ref_fwd_free(&f); mg_ref_fwd_free(&fp); mg_ref_fwd_free(&fm);
        tm_free(&m);
    }
}

/* L = Σ y·dy + aux + zloss through the float API (the sum in double). */
static double float_api_loss(tmodel *m, const float *dy, mg_ref_fwd *f)
{
    double L = 0;
    mg_ref_forward(&m->c, m->x, &m->w, f);
    for (int i = 0; i < m->c.T * m->c.d; i++) L += (double)f->y[i] * dy[i];
    return L + f->aux + f->zloss;
}

static float dyadic(float v) { return ldexpf(roundf(ldexpf(v, 12)), -12); }

/* Every gradient the float API returns, against five-point differences of the float API's
 * own forward. Inputs are multiples of 2^-12 and the step is 2^-7, so every perturbed
 * value is exact in float; what limits the check is the float rounding of y (~5e-5 after
 * dividing by the step), so the tolerance is loose: it is here to catch wiring (a wrong
 * copy, a missing tensor), while mg_ref_gradcheck pins the math down in fp64. */
static void test_backward_float_api_fd(void **state)
{
    (void)state;
    for (int rt = 0; rt < 3; rt++) {
        mg_ref_cfg c = cfg(13, 16, 8, 4, rt == MG_ROUTER_SWITCH ? 1 : 2, MG_ACT_GEGLU, rt, 1.0, 1);
        tmodel m;
        mg_ref_fwd f, fq;
        mg_ref_grads g;
        mg_rng r;
        tm_init(&m, &c, 50 + rt, rt == MG_ROUTER_SIGMOID_TOPK);
        mg_rng_seed(&r, 51);
        long F2 = mg_ref_f2(&c);
        struct { const char *name; float *p, *g; long n; } t[] = {
            { "x", m.x, NULL, (long)c.T * c.d }, { "wg", m.wg, NULL, (long)c.E * c.d },
            { "w_up", m.w_up, NULL, c.E * F2 * c.d },
            { "w_dn", m.w_dn, NULL, (long)c.E * c.d * c.ff },
            { "ws_up", m.ws_up, NULL, F2 * c.d }, { "ws_dn", m.ws_dn, NULL, (long)c.d * c.ff },
        };
        for (size_t k = 0; k < 6; k++)
            for (long i = 0; i < t[k].n; i++) t[k].p[i] = dyadic(t[k].p[i]);
        float *dy = tm_normal(&r, (long)c.T * c.d, 1.0);
        mg_ref_fwd_alloc(&c, &f); mg_ref_fwd_alloc(&c, &fq);
        mg_ref_grads_alloc(&c, &g);
        mg_ref_forward(&c, m.x, &m.w, &f);
        mg_ref_backward(&c, m.x, &m.w, &f, dy, &g);
        t[0].g = g.dx; t[1].g = g.dwg; t[2].g = g.dw_up; t[3].g = g.dw_dn;
        t[4].g = g.dws_up; t[5].g = g.dws_dn;
        for (size_t k = 0; k < 6; k++) {
            int checked = 0;
            for (int probe = 0; probe < 8; probe++) {
                long i = (long)(mg_rng_u64(&r) % (unsigned long long)t[k].n);
                const float h = 0x1p-7f, v = t[k].p[i];
                const float off[4] = { h, -h, 2 * h, -2 * h };
                double L[4];
                int same = 1;
                for (int q = 0; q < 4; q++) {
                    t[k].p[i] = v + off[q];
                    L[q] = float_api_loss(&m, dy, &fq);
                    same = same && !memcmp(fq.slot_of, f.slot_of, sizeof(int) * c.T * c.k)
                                && !memcmp(fq.topk_idx, f.topk_idx, sizeof(int) * c.T * c.k);
                }
                t[k].p[i] = v;
                if (!same) continue;
                double num = (8 * (L[0] - L[1]) - (L[2] - L[3])) / (12.0 * h), ana = t[k].g[i];
                if (fabs(num - ana) > 5e-4 + 2e-3 * fabs(ana)) {
                    print_error("%s: d%s[%ld]: fd %.6e, backward %.6e\n", router_name[rt],
                                t[k].name, i, num, ana);
                    fail();
                }
                checked++;
            }
            assert_true(checked >= 4);
        }
        free(dy);
        mg_ref_grads_free(&g);
        mg_ref_fwd_free(&f); mg_ref_fwd_free(&fq);
        tm_free(&m);
    }
}

/* ---------------------------------------------------------------------------------- */
/* routing                                                                            */

/* d = 1 and x = 1 make the logits equal wg exactly, so ties can be written down. */
static void route_d1(mg_ref_cfg *c, const float *wg, const float *bias, mg_ref_fwd *f)
{
    float *x = malloc(sizeof(float) * c->T);
    for (int t = 0; t < c->T; t++) x[t] = 1.0f;
    mg_ref_weights w = { wg, bias, NULL, NULL, NULL, NULL };
    mg_ref_fwd_alloc(c, f);
    mg_ref_route(c, x, &w, f);
    free(x);
}

static void test_route_ties_lower_id(void **state)
{
    (void)state;
    const float all_equal[4] = { 0.5f, 0.5f, 0.5f, 0.5f };
    const float pair_equal[4] = { 1.0f, 3.0f, 3.0f, 0.0f };
    for (int rt = 0; rt < 2; rt++) {
        mg_ref_cfg c = cfg(2, 1, 1, 4, 2, MG_ACT_RELU, rt, 0, 0);
        mg_ref_fwd f;
        route_d1(&c, all_equal, NULL, &f);
        assert_int_equal(f.topk_idx[0], 0);
        assert_int_equal(f.topk_idx[1], 1);
        mg_ref_fwd_free(&f);
        route_d1(&c, pair_equal, NULL, &f);
        assert_int_equal(f.topk_idx[0], 1);
        assert_int_equal(f.topk_idx[1], 2);
        assert_true(f.topk_w[0] == f.topk_w[1]);
        mg_ref_fwd_free(&f);
    }
    /* a bias that makes two sigmoid selection scores tie exactly: s + b = 0.5 + 0.25 */
    const float wg[4] = { 0.0f, 0.0f, 0.0f, 0.0f };
    const float bias[4] = { 0.0f, 0.25f, 0.0f, 0.25f };
    mg_ref_cfg c = cfg(1, 1, 1, 4, 1, MG_ACT_RELU, MG_ROUTER_SIGMOID_TOPK, 0, 0);
    mg_ref_fwd f;
    route_d1(&c, wg, bias, &f);
    assert_int_equal(f.topk_idx[0], 1);
    mg_ref_fwd_free(&f);
}

static void test_route_switch_top1(void **state)
{
    (void)state;
    mg_ref_cfg c = cfg(23, 8, 4, 5, 1, MG_ACT_RELU, MG_ROUTER_SWITCH, 0, 0);
    tmodel m;
    mg_ref_fwd f;
    tm_init(&m, &c, 3, 0);
    mg_ref_fwd_alloc(&c, &f);
    mg_ref_route(&c, m.x, &m.w, &f);   /* renormalize = 1 must be ignored */
    for (int t = 0; t < c.T; t++) {
        const float *p = f.probs + t * c.E;
        int best = 0;
        for (int e = 1; e < c.E; e++) if (p[e] > p[best]) best = e;
        assert_int_equal(f.topk_idx[t], best);
        assert_float_equal(f.topk_w[t], p[best], 1e-7);
        assert_true(f.topk_w[t] < 1.0f);
    }
    mg_ref_fwd_free(&f);
    tm_free(&m);
}

/* The bias moves the selection but the weights stay sigmoid(logit) of the chosen ones. */
static void test_route_sigmoid_bias(void **state)
{
    (void)state;
    const float wg[4] = { 2.0f, 1.0f, 0.0f, -1.0f };
    const float bias[4] = { 0.0f, 0.0f, 0.0f, 5.0f };
    for (int renorm = 0; renorm < 2; renorm++) {
        mg_ref_cfg c = cfg(1, 1, 1, 4, 2, MG_ACT_RELU, MG_ROUTER_SIGMOID_TOPK, 0, 0);
        mg_ref_fwd plain, biased;
        c.renormalize = renorm;
        route_d1(&c, wg, NULL, &plain);
        route_d1(&c, wg, bias, &biased);
        assert_int_equal(plain.topk_idx[0], 0);
        assert_int_equal(plain.topk_idx[1], 1);
        assert_int_equal(biased.topk_idx[0], 3);
        assert_int_equal(biased.topk_idx[1], 0);
        double s3 = 1 / (1 + exp(1.0)), s0 = 1 / (1 + exp(-2.0));
        double div = renorm ? s3 + s0 : 1.0;
        assert_float_equal(biased.topk_w[0], s3 / div, 1e-7);
        assert_float_equal(biased.topk_w[1], s0 / div, 1e-7);
        /* the aux p is normalized sigmoid, also bias-free */
        for (int e = 0; e < 4; e++) assert_float_equal(biased.probs[e], plain.probs[e], 0);
        mg_ref_fwd_free(&plain);
        mg_ref_fwd_free(&biased);
    }
}

/* What selection ranks: p, or sigmoid(logit) + bias. */
static double sel_score(const mg_ref_fwd *f, const tmodel *m, int t, int e)
{
    int E = m->c.E;
    if (m->c.router != MG_ROUTER_SIGMOID_TOPK) return f->probs[t * E + e];
    return 1 / (1 + exp(-(double)f->logits[t * E + e])) + (m->bias ? m->bias[e] : 0);
}

static void test_route_renormalized_sum_to_one(void **state)
{
    (void)state;
    for (int rt = 0; rt < 2; rt++)
        for (int renorm = 0; renorm < 2; renorm++) {
            mg_ref_cfg c = cfg(31, 8, 4, 6, 3, MG_ACT_RELU, rt, 0, 0);
            tmodel m;
            mg_ref_fwd f;
            c.renormalize = renorm;
            tm_init(&m, &c, 5 + rt, rt == MG_ROUTER_SIGMOID_TOPK);
            mg_ref_fwd_alloc(&c, &f);
            mg_ref_route(&c, m.x, &m.w, &f);
            for (int t = 0; t < c.T; t++) {
                double sum = 0, psum = 0;
                for (int j = 0; j < c.k; j++) sum += f.topk_w[t * c.k + j];
                for (int e = 0; e < c.E; e++) psum += f.probs[t * c.E + e];
                assert_float_equal(psum, 1.0, 1e-6);
                if (renorm) assert_float_equal(sum, 1.0, 1e-6);
                else assert_true(sum < 1.0 + (rt == MG_ROUTER_SIGMOID_TOPK ? c.k : 0));
                /* slot j is the j-th choice: selection scores descend (up to float
                 * rounding of the saved logits/probs) */
                for (int j = 1; j < c.k; j++) {
                    int a = f.topk_idx[t * c.k + j - 1], b = f.topk_idx[t * c.k + j];
                    assert_true(sel_score(&f, &m, t, a) >= sel_score(&f, &m, t, b) - 1e-6);
                }
            }
            mg_ref_fwd_free(&f);
            tm_free(&m);
        }
}

/* ---------------------------------------------------------------------------------- */
/* dispatch                                                                           */

/* Checks every documented invariant of counts/offsets/perm/slot_of/n_dropped. */
static void check_dispatch(const mg_ref_cfg *c, const mg_ref_fwd *f)
{
    int TK = c->T * c->k, cap = c->capacity_factor > 0
        ? (int)ceil(c->capacity_factor * c->T * c->k / c->E) : TK;
    int total_all = 0, kept = 0;
    int *seen = calloc((size_t)c->E, sizeof(int));
    assert_int_equal(f->offsets[0], 0);
    for (int e = 0; e < c->E; e++) {
        assert_int_equal(f->counts[e], f->counts_all[e] < cap ? f->counts_all[e] : cap);
        assert_int_equal(f->offsets[e + 1], f->offsets[e] + f->counts[e]);
        total_all += f->counts_all[e];
    }
    assert_int_equal(total_all, TK);
    assert_int_equal(f->n_dropped, TK - f->offsets[c->E]);
    /* walking assignments in (t, j) order, the first cap of each expert are kept, and
     * they take consecutive slots of that expert's segment: a stable sort */
    for (int tk = 0; tk < TK; tk++) {
        int e = f->topk_idx[tk], s = f->slot_of[tk];
        if (seen[e] < cap) {
            assert_int_equal(s, f->offsets[e] + seen[e]);
            assert_int_equal(f->perm[s], tk);
            kept++;
        } else {
            assert_int_equal(s, -1);
        }
        seen[e]++;
    }
    assert_int_equal(kept, f->offsets[c->E]);
    free(seen);
}

/* wg chosen so expert `target` has the largest logit for every token (x > 0). */
static void route_all_to(mg_ref_cfg *c, int target, mg_ref_fwd *f)
{
    float *x = malloc(sizeof(float) * c->T * c->d), *wg = calloc((size_t)c->E * c->d, 4);
    for (int i = 0; i < c->T * c->d; i++) x[i] = 1.0f + 0.01f * i;
    for (int i = 0; i < c->d; i++) wg[target * c->d + i] = 1.0f;
    mg_ref_weights w = { wg, NULL, NULL, NULL, NULL, NULL };
    mg_ref_fwd_alloc(c, f);
    mg_ref_route(c, x, &w, f);
    free(x); free(wg);
}

static void test_dispatch_all_to_one_expert(void **state)
{
    (void)state;
    mg_ref_cfg c = cfg(13, 4, 4, 4, 1, MG_ACT_RELU, MG_ROUTER_SOFTMAX_TOPK, 0, 0);
    mg_ref_fwd f;
    route_all_to(&c, 2, &f);
    const int counts[4] = { 0, 0, 13, 0 }, offsets[5] = { 0, 0, 0, 13, 13 };
    for (int e = 0; e < 4; e++) assert_int_equal(f.counts[e], counts[e]);
    for (int e = 0; e < 5; e++) assert_int_equal(f.offsets[e], offsets[e]);
    for (int t = 0; t < c.T; t++) assert_int_equal(f.perm[t], t), assert_int_equal(f.slot_of[t], t);
    assert_int_equal(f.n_dropped, 0);
    check_dispatch(&c, &f);
    mg_ref_fwd_free(&f);
}

/* All 13 tokens on expert 0 with C = ceil(13/4) = 4: tokens 0..3 kept, 4..12 dropped. */
static void test_dispatch_capacity_drops_later_tokens(void **state)
{
    (void)state;
    mg_ref_cfg c = cfg(13, 4, 4, 4, 1, MG_ACT_RELU, MG_ROUTER_SOFTMAX_TOPK, 1.0, 0);
    mg_ref_fwd f;
    route_all_to(&c, 0, &f);
    assert_int_equal(f.counts_all[0], 13);
    assert_int_equal(f.counts[0], 4);
    assert_int_equal(f.n_dropped, 9);
    assert_int_equal(f.offsets[4], 4);
    for (int t = 0; t < c.T; t++) assert_int_equal(f.slot_of[t], t < 4 ? t : -1);
    for (int s = 0; s < 4; s++) assert_int_equal(f.perm[s], s);
    check_dispatch(&c, &f);
    mg_ref_fwd_free(&f);

    /* k = 2: every token picks experts 0 and 1 (in that order); C = ceil(26/4) = 7 */
    mg_ref_cfg c2 = cfg(13, 1, 4, 4, 2, MG_ACT_RELU, MG_ROUTER_SOFTMAX_TOPK, 1.0, 0);
    const float wg[4] = { 2.0f, 1.0f, 0.0f, -1.0f };
    route_d1(&c2, wg, NULL, &f);
    assert_int_equal(f.counts[0], 7);
    assert_int_equal(f.counts[1], 7);
    assert_int_equal(f.counts[2], 0);
    assert_int_equal(f.n_dropped, 12);
    for (int t = 0; t < c2.T; t++) {
        assert_int_equal(f.slot_of[2 * t], t < 7 ? t : -1);
        assert_int_equal(f.slot_of[2 * t + 1], t < 7 ? 7 + t : -1);
    }
    check_dispatch(&c2, &f);
    mg_ref_fwd_free(&f);
}

static void test_dispatch_random_consistent(void **state)
{
    (void)state;
    const double cfs[] = { 0.0, 0.5, 1.0, 1.25 };
    for (int i = 0; i < 4; i++)
        for (int rt = 0; rt < 3; rt++) {
            mg_ref_cfg c = cfg(37, 8, 4, 5, rt == MG_ROUTER_SWITCH ? 1 : 2, MG_ACT_RELU, rt,
                               cfs[i], 0);
            tmodel m;
            mg_ref_fwd f;
            tm_init(&m, &c, 60 + i, rt == MG_ROUTER_SIGMOID_TOPK);
            mg_ref_fwd_alloc(&c, &f);
            mg_ref_route(&c, m.x, &m.w, &f);
            check_dispatch(&c, &f);
            if (cfs[i] == 0.5) assert_true(f.n_dropped > 0);
            mg_ref_fwd_free(&f);
            tm_free(&m);
        }
}

/* ---------------------------------------------------------------------------------- */
/* forward                                                                            */

/* E = 2, k = 1, d = 2, ff = 2, relu, written out by hand:
 *   wg = I, x0 = (2, 1) → logits (2, 1) → expert 0;  x1 = (-1, 1) → (-1, 1) → expert 1.
 *   expert 0: up = [[1,0],[0,-1]]  → a = (2, -1), h = (2, 0),  dn = [[1,2],[3,4]]  → z = (2, 6)
 *   expert 1: up = [[-1,1],[.5,1]] → a = (2, .5), h = (2, .5), dn = [[1,-2],[0,1]] → z = (1, .5)
 *   shared:   up = dn = I          → relu(x): (2, 1) and (0, 1)
 * With renormalize the weight of a single choice is 1; without it, it is p = σ(1), σ(2). */
static void test_forward_hand_computed(void **state)
{
    (void)state;
    const float x[4] = { 2, 1, -1, 1 }, wg[4] = { 1, 0, 0, 1 };
    const float up[8] = { 1, 0, 0, -1, -1, 1, 0.5f, 1 }, dn[8] = { 1, 2, 3, 4, 1, -2, 0, 1 };
    const float eye[4] = { 1, 0, 0, 1 };
    const double s1 = 1 / (1 + exp(-1.0)), s2 = 1 / (1 + exp(-2.0));
    for (int variant = 0; variant < 3; variant++) {
        int renorm = variant != 1, shared = variant == 2;
        mg_ref_cfg c = cfg(2, 2, 2, 2, 1, MG_ACT_RELU, MG_ROUTER_SOFTMAX_TOPK, 0, shared);
        c.renormalize = renorm;
        c.aux_coef = 0.01;
        c.z_coef = 0.001;
        mg_ref_weights w = { wg, NULL, up, dn, shared ? eye : NULL, shared ? eye : NULL };
        mg_ref_fwd f;
        mg_ref_fwd_alloc(&c, &f);
        mg_ref_forward(&c, x, &w, &f);
        double w0 = renorm ? 1 : s1, w1 = renorm ? 1 : s2;
        double y[4] = { w0 * 2, w0 * 6, w1 * 1, w1 * 0.5 };
        if (shared) y[0] += 2, y[1] += 1, y[3] += 1;
        for (int i = 0; i < 4; i++) assert_float_equal(f.y[i], y[i], 1e-6);
        assert_int_equal(f.topk_idx[0], 0);
        assert_int_equal(f.topk_idx[1], 1);
        assert_float_equal(f.topk_w[0], w0, 1e-7);
        assert_float_equal(f.probs[0], s1, 1e-7);
        assert_float_equal(f.probs[3], s2, 1e-7);
        const float h[4] = { 2, 0, 2, 0.5f }, z[4] = { 2, 6, 1, 0.5f };
        for (int i = 0; i < 4; i++) assert_float_equal(f.h[i], h[i], 0);
        for (int i = 0; i < 4; i++) assert_float_equal(f.z[i], z[i], 0);
        /* f = (1/2, 1/2) and Σ_e P_e = 1, so aux = aux_coef·E·(1/2) = aux_coef */
        assert_float_equal(f.aux, 0.01, 1e-15);
        double lse0 = 2 + log1p(exp(-1.0)), lse1 = 1 + log1p(exp(-2.0));
        assert_float_equal(f.zloss, 0.001 * (lse0 * lse0 + lse1 * lse1) / 2, 1e-15);
        mg_ref_fwd_free(&f);
    }
}

/* softmax_topk with a selection bias, by hand: wg = I, x = (ln 5, ln 3, ln 2), so
 * p = (0.5, 0.3, 0.2). Without a bias top-2 is {0, 1}; bias (0, 0, 0.15) ranks by
 * p + bias = (0.5, 0.3, 0.35) → {0, 2}; bias (0, 0, 0.4) → (0.5, 0.3, 0.6) → {2, 0}. The
 * weights are the renormalized un-biased p of the chosen experts, and the layer equals the
 * same routing replayed without a bias (the bias reaches nothing but the choice). switch
 * ignores the bias. Also the router statistics: entropy −Σ p ln p and top-1 = max p. */
static void test_softmax_bias_selection_hand(void **state)
{
    (void)state;
    const float x[3] = { (float)log(5.0), (float)log(3.0), (float)log(2.0) };
    const float wg[9] = { 1, 0, 0, 0, 1, 0, 0, 0, 1 };
    const float no_bias[3] = { 0, 0, 0 }, b1[3] = { 0, 0, 0.15f }, b2[3] = { 0, 0, 0.4f };
    const struct { const float *bias; int idx[2]; double w[2]; } cases[] = {
        { NULL, { 0, 1 }, { 0.5 / 0.8, 0.3 / 0.8 } },
        { no_bias, { 0, 1 }, { 0.5 / 0.8, 0.3 / 0.8 } },
        { b1, { 0, 2 }, { 0.5 / 0.7, 0.2 / 0.7 } },
        { b2, { 2, 0 }, { 0.2 / 0.7, 0.5 / 0.7 } },
    };
    mg_ref_cfg c = cfg(1, 3, 4, 3, 2, MG_ACT_SWIGLU, MG_ROUTER_SOFTMAX_TOPK, 0, 0);
    tmodel m;
    tm_init(&m, &c, 5, 0);
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        mg_ref_weights w = { wg, cases[i].bias, m.w_up, m.w_dn, NULL, NULL };
        mg_ref_weights w0 = { wg, NULL, m.w_up, m.w_dn, NULL, NULL };
        mg_ref_fwd f, r;
        mg_ref_grads g, gr;
        float dy[3] = { 0.3f, -1.0f, 0.7f };
        mg_ref_fwd_alloc(&c, &f);
        mg_ref_fwd_alloc(&c, &r);
        mg_ref_grads_alloc(&c, &g);
        mg_ref_grads_alloc(&c, &gr);
        mg_ref_forward(&c, x, &w, &f);
        for (int j = 0; j < 2; j++) {
            assert_int_equal(f.topk_idx[j], cases[i].idx[j]);
            assert_float_equal(f.topk_w[j], cases[i].w[j], 1e-6);
        }
        assert_float_equal(f.probs[2], 0.2, 1e-6);
        assert_float_equal(f.entropy_sum, -(0.5 * log(0.5) + 0.3 * log(0.3) + 0.2 * log(0.2)), 1e-6);
        assert_float_equal(f.top1_sum, 0.5, 1e-6);
        mg_ref_backward(&c, x, &w, &f, dy, &g);
        mg_ref_forward_routed(&c, x, &w0, f.topk_idx, &r);
        mg_ref_backward(&c, x, &w0, &r, dy, &gr);
        assert_memory_equal(f.y, r.y, sizeof f.y[0] * 3);
        assert_memory_equal(f.topk_w, r.topk_w, sizeof f.topk_w[0] * 2);
        assert_memory_equal(g.dwg, gr.dwg, sizeof g.dwg[0] * 9);
        assert_memory_equal(g.dx, gr.dx, sizeof g.dx[0] * 3);
        mg_ref_grads_free(&g);
        mg_ref_grads_free(&gr);
        mg_ref_fwd_free(&f);
        mg_ref_fwd_free(&r);
    }
    mg_ref_cfg cs = cfg(1, 3, 4, 3, 1, MG_ACT_SWIGLU, MG_ROUTER_SWITCH, 0, 0);
    mg_ref_weights w = { wg, b2, m.w_up, m.w_dn, NULL, NULL };
    mg_ref_fwd f;
    mg_ref_fwd_alloc(&cs, &f);
    mg_ref_route(&cs, x, &w, &f);
    assert_int_equal(f.topk_idx[0], 0);
    assert_float_equal(f.topk_w[0], 0.5, 1e-6);
    mg_ref_fwd_free(&f);
    tm_free(&m);
}

/* drop_policy probability, by hand: E = 2, k = 1, no renormalization (w = p), C =
 * ceil(1.0·4·1/2) = 2. wg = I and x_t = (a_t, 0) with a = (1, 3, 2, 2): every token picks
 * expert 0 with p = σ(a), so it holds 4 for 2 places. By position tokens 0, 1 stay; by
 * probability token 1 (σ(3)) and, of the tie σ(2), the earlier token 2. Kept slots are in
 * token order either way. */
static void test_drop_probability_hand(void **state)
{
    (void)state;
    const float x[8] = { 1, 0, 3, 0, 2, 0, 2, 0 }, wg[4] = { 1, 0, 0, 1 };
    const int slot_pos[4] = { 0, 1, -1, -1 }, slot_prob[4] = { -1, 0, 1, -1 };
    const int perm_pos[2] = { 0, 1 }, perm_prob[2] = { 1, 2 };
    mg_ref_cfg c = cfg(4, 2, 4, 2, 1, MG_ACT_RELU, MG_ROUTER_SOFTMAX_TOPK, 1.0, 0);
    c.renormalize = 0;
    tmodel m;
    tm_init(&m, &c, 6, 0);
    for (int policy = 0; policy < 2; policy++) {
        c.drop_policy = policy ? MG_DROP_PROBABILITY : MG_DROP_POSITION;
        mg_ref_weights w = { wg, NULL, m.w_up, m.w_dn, NULL, NULL };
        mg_ref_fwd f;
        mg_ref_fwd_alloc(&c, &f);
        mg_ref_forward(&c, x, &w, &f);
        for (int t = 0; t < 4; t++) assert_int_equal(f.topk_idx[t], 0);
        assert_memory_equal(f.slot_of, policy ? slot_prob : slot_pos, sizeof slot_pos);
        assert_memory_equal(f.perm, policy ? perm_prob : perm_pos, sizeof perm_pos);
        assert_int_equal(f.counts[0], 2);
        assert_int_equal(f.counts[1], 0);
        assert_int_equal(f.counts_all[0], 4);
        assert_int_equal(f.offsets[2], 2);
        assert_int_equal(f.n_dropped, 2);
        for (int t = 0; t < 4; t++) {
            int dropped = (policy ? slot_prob : slot_pos)[t] < 0;
            for (int i = 0; i < c.d; i++) if (dropped) assert_float_equal(f.y[t * c.d + i], 0, 0);
        }
        mg_ref_fwd_free(&f);
    }
    tm_free(&m);
}

/* Capacity by probability keeps, per expert, exactly the C heaviest assignments (random
 * routing, several experts over-full), and its gradients check like position's do. */
static void test_drop_probability_random(void **state)
{
    (void)state;
    mg_ref_cfg c = cfg(40, 8, 8, 4, 2, MG_ACT_GELU, MG_ROUTER_SOFTMAX_TOPK, 0.75, 0);
    c.drop_policy = MG_DROP_PROBABILITY;
    tmodel m;
    mg_ref_fwd f;
    tm_init(&m, &c, 91, 0);
    mg_ref_fwd_alloc(&c, &f);
    mg_ref_route(&c, m.x, &m.w, &f);
    int cap = (int)ceil(0.75 * 40 * 2 / 4), over = 0;
    for (int e = 0; e < c.E; e++) {
        over += f.counts_all[e] > cap;
        assert_int_equal(f.counts[e], f.counts_all[e] < cap ? f.counts_all[e] : cap);
        float lo = INFINITY, hi = -INFINITY;
        for (int i = 0; i < c.T * c.k; i++) {
            if (f.topk_idx[i] != e) continue;
            if (f.slot_of[i] >= 0) lo = fminf(lo, f.topk_w[i]);
            else hi = fmaxf(hi, f.topk_w[i]);
        }
        assert_true(hi <= lo);
    }
    assert_true(over >= 1);
    for (int s = 1; s < f.offsets[c.E]; s++)   /* kept slots: by expert, then token order */
        assert_true(f.topk_idx[f.perm[s - 1]] < f.topk_idx[f.perm[s]] || f.perm[s - 1] < f.perm[s]);
    mg_ref_fwd_free(&f);
    tm_free(&m);
    double e = mg_ref_gradcheck(&c, 92, 8);
    assert_true(e <= GRADCHECK_TOL);
}

/* mg_ref_route fills exactly what the full forward fills for routing. */
static void test_route_matches_forward(void **state)
{
    (void)state;
    mg_ref_cfg c = cfg(13, 16, 8, 4, 2, MG_ACT_GEGLU, MG_ROUTER_SIGMOID_TOPK, 1.0, 1);
    tmodel m;
    mg_ref_fwd a, b;
    tm_init(&m, &c, 77, 1);
    mg_ref_fwd_alloc(&c, &a);
    mg_ref_fwd_alloc(&c, &b);
    mg_ref_route(&c, m.x, &m.w, &a);
    mg_ref_forward(&c, m.x, &m.w, &b);
    assert_memory_equal(a.logits, b.logits, sizeof(float) * c.T * c.E);
    assert_memory_equal(a.topk_idx, b.topk_idx, sizeof(int) * c.T * c.k);
    assert_memory_equal(a.topk_w, b.topk_w, sizeof(float) * c.T * c.k);
    assert_memory_equal(a.slot_of, b.slot_of, sizeof(int) * c.T * c.k);
    assert_memory_equal(a.perm, b.perm, sizeof(int) * c.T * c.k);
    assert_int_equal(a.n_dropped, b.n_dropped);
    assert_true(a.aux == b.aux && a.zloss == b.zloss);
    mg_ref_fwd_free(&a);
    mg_ref_fwd_free(&b);
    tm_free(&m);
}

/* A replayed routing (mg_ref_forward_routed) that equals the selection reproduces the forward
 * bitwise; a different one changes exactly the tokens it touches, with the weights the given
 * experts' renormalized probabilities. */
static void test_forward_routed_replay(void **state)
{
    (void)state;
    mg_ref_cfg c = cfg(11, 16, 8, 4, 2, MG_ACT_SWIGLU, MG_ROUTER_SOFTMAX_TOPK, 0, 1);
    tmodel m;
    mg_ref_fwd a, b;
    tm_init(&m, &c, 78, 0);
    mg_ref_fwd_alloc(&c, &a);
    mg_ref_fwd_alloc(&c, &b);
    mg_ref_forward(&c, m.x, &m.w, &a);
    int idx[11 * 2];
    memcpy(idx, a.topk_idx, sizeof idx);
    mg_ref_forward_routed(&c, m.x, &m.w, idx, &b);
    assert_memory_equal(a.y, b.y, sizeof(float) * c.T * c.d);
    assert_true(a.aux == b.aux);
    int e = 0;   /* token 3's second choice → an expert it did not choose */
    while (e == idx[3 * 2] || e == idx[3 * 2 + 1]) e++;
    idx[3 * 2 + 1] = e;
    mg_ref_forward_routed(&c, m.x, &m.w, idx, &b);
    assert_int_equal(b.topk_idx[3 * 2 + 1], e);
    double p0 = b.probs[3 * c.E + idx[3 * 2]], p1 = b.probs[3 * c.E + e];
    assert_float_equal(b.topk_w[3 * 2 + 1], p1 / (p0 + p1), 1e-6);
    for (int t = 0; t < c.T; t++) {
        int diff = memcmp(a.y + t * c.d, b.y + t * c.d, sizeof(float) * c.d) != 0;
        assert_int_equal(diff, t == 3);
    }
    mg_ref_fwd_free(&a);
    mg_ref_fwd_free(&b);
    tm_free(&m);
}

/* Dropped assignments contribute nothing and receive nothing: with dy only on the rows
 * of dropped tokens (k = 1, renormalized, so the weight is the constant 1; no aux/z),
 * y of those rows is 0 and every gradient is 0. */
static void test_dropped_slots_no_grad(void **state)
{
    (void)state;
    mg_ref_cfg c = cfg(13, 4, 4, 4, 1, MG_ACT_SWIGLU, MG_ROUTER_SOFTMAX_TOPK, 1.0, 0);
    c.aux_coef = c.z_coef = 0;
    tmodel m;
    mg_ref_fwd f;
    mg_ref_grads g;
    tm_init(&m, &c, 90, 0);
    for (int i = 0; i < c.T * c.d; i++) m.x[i] = 1.0f + 0.01f * i;
    for (int i = 0; i < c.E * c.d; i++) m.wg[i] = i < c.d ? 1.0f : 0.0f;   /* all → expert 0 */
    mg_ref_fwd_alloc(&c, &f);
    mg_ref_grads_alloc(&c, &g);
    mg_ref_forward(&c, m.x, &m.w, &f);
    assert_int_equal(f.n_dropped, 9);
    float *dy = calloc((size_t)c.T * c.d, sizeof(float));
    for (int t = 4; t < c.T; t++)
        for (int i = 0; i < c.d; i++) {
            assert_float_equal(f.y[t * c.d + i], 0, 0);
            dy[t * c.d + i] = 1.0f;
        }
    mg_ref_backward(&c, m.x, &m.w, &f, dy, &g);
    for (int i = 0; i < c.T * c.d; i++) assert_float_equal(g.dx[i], 0, 0);
    for (int i = 0; i < c.E * c.d; i++) assert_float_equal(g.dwg[i], 0, 0);
    for (int i = 0; i < c.E * mg_ref_f2(&c) * c.d; i++) assert_float_equal(g.dw_up[i], 0, 0);
    for (int i = 0; i < c.E * c.d * c.ff; i++) assert_float_equal(g.dw_dn[i], 0, 0);
    free(dy);
    mg_ref_grads_free(&g);
    mg_ref_fwd_free(&f);
    tm_free(&m);
}

/* ---------------------------------------------------------------------------------- */
/* scalar helpers                                                                     */

static void test_act_values_and_grads(void **state)
{
    (void)state;
    assert_float_equal(mg_ref_act(MG_ACT_GELU, 1.0), 0.8413447460685429, 1e-15);
    assert_float_equal(mg_ref_act(MG_ACT_GEGLU, -1.0), -0.15865525393145707, 1e-15);
    assert_float_equal(mg_ref_act(MG_ACT_SWIGLU, 1.0), 0.7310585786300049, 1e-15);
    assert_float_equal(mg_ref_act(MG_ACT_RELU, -2.0), 0.0, 0);
    assert_float_equal(mg_ref_act(MG_ACT_GELU, -40.0), 0.0, 1e-300);
    assert_float_equal(mg_ref_act(MG_ACT_SWIGLU, -800.0), 0.0, 1e-300);
    const double pts[] = { -3.1, -0.7, 0.2, 1.3, 4.2 };
    for (int act = 0; act < 4; act++)
        for (int i = 0; i < 5; i++) {
            double v = pts[i], h = 1e-5;
            double num = (mg_ref_act(act, v + h) - mg_ref_act(act, v - h)) / (2 * h);
            assert_float_equal(mg_ref_act_grad(act, v), num, 1e-8);
        }
}

static void test_rel_err_edges(void **state)
{
    (void)state;
    const float b[3] = { 3, 4, 0 }, same[3] = { 3, 4, 0 }, off[3] = { 3, 4, 5 };
    const float zero[3] = { 0, 0, 0 };
    float bad[3] = { 3, 4, 0 };
    assert_float_equal(mg_ref_rel_err(same, b, 3), 0, 0);
    assert_float_equal(mg_ref_rel_err(off, b, 3), 1.0, 1e-15);
    assert_float_equal(mg_ref_rel_err(b, zero, 3), 5.0, 1e-15);   /* ‖b‖ = 0 → ‖a‖ */
    assert_float_equal(mg_ref_rel_err(zero, zero, 3), 0, 0);
    bad[1] = NAN;
    assert_true(isinf(mg_ref_rel_err(bad, b, 3)) && mg_ref_rel_err(bad, b, 3) > 0);
    bad[1] = -INFINITY;
    assert_true(isinf(mg_ref_rel_err(bad, b, 3)) && mg_ref_rel_err(bad, b, 3) > 0);
    assert_float_equal(mg_ref_rel_err(b, b, 0), 0, 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_act_values_and_grads),
        cmocka_unit_test(test_rel_err_edges),
        cmocka_unit_test(test_route_ties_lower_id),
        cmocka_unit_test(test_route_switch_top1),
        cmocka_unit_test(test_route_sigmoid_bias),
        cmocka_unit_test(test_route_renormalized_sum_to_one),
        cmocka_unit_test(test_softmax_bias_selection_hand),
        cmocka_unit_test(test_drop_probability_hand),
        cmocka_unit_test(test_drop_probability_random),
        cmocka_unit_test(test_route_matches_forward),
        cmocka_unit_test(test_forward_routed_replay),
        cmocka_unit_test(test_dispatch_all_to_one_expert),
        cmocka_unit_test(test_dispatch_capacity_drops_later_tokens),
        cmocka_unit_test(test_dispatch_random_consistent),
        cmocka_unit_test(test_forward_hand_computed),
        cmocka_unit_test(test_dropped_slots_no_grad),
        cmocka_unit_test(test_backward_aux_z_only),
        cmocka_unit_test(test_backward_float_api_fd),
        cmocka_unit_test(test_gradcheck_matrix),
        cmocka_unit_test(test_gradcheck_edges),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
