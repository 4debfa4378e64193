/* test_cpu_model: the CPU trainer's model: finite-difference gradients of the whole loss
 * w.r.t. every parameter tensor, ops against their definitions, determinism, init, dropout,
 * gradient accumulation. */
#include "mg_test.h"

#include "mg_cpu_model.h"
#include "mg_cpu_ops.h"
#include "mg_rng.h"
#include "mg_spec.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>

static void load_spec(mg_spec *s, const char *text)
{
    mg_err err;
    mg_err_clear(&err);
    if (mg_spec_load_string("test.lua", text, strlen(text), s, &err)) {
        print_error("%s\n", err.msg);
        fail();
    }
}

static void random_tokens(int32_t *tok, long n, int V, uint64_t seed)
{
    mg_rng r;
    mg_rng_seed(&r, seed);
    for (long i = 0; i < n; i++) tok[i] = (int32_t)(mg_rng_u64(&r) % (uint64_t)V);
}

/* Large weights so every gradient is well above the fp32 noise floor of the loss: matrices
 * normal(0, 0.3), norm weights 1 + normal(0, 0.2). */
static void big_init(mg_cpu_model *m, uint64_t seed)
{
    mg_rng r;
    mg_rng_seed(&r, seed);
    for (int j = 0; j < m->n_tensors; j++) {
        const mg_cpu_tensor *t = &m->tensors[j];
        for (long i = 0; i < t->n; i++)
            m->params[t->off + i] = (float)(t->ndim == 1 ? 1.0 + 0.2 * mg_rng_normal(&r) : 0.3 * mg_rng_normal(&r));
    }
}

/* train = 1 turns dropout on; its masks depend only on (seed, step, micro), so every
 * evaluation of the loss sees the same ones and finite differences stay valid. */
static int gc_train;

static double total_loss(mg_cpu_model *m, const int32_t *tok, int B, int grad)
{
    mg_cpu_ctx c = {.train = gc_train, .seed = 1, .step = 3, .micro = 1, .scale = 1.0};
    mg_cpu_out o;
    mg_cpu_model_run(m, tok, B, &c, grad, &o);
    return o.ce_sum / o.n_tokens + o.aux + o.zloss;
}

/* Routing of every MoE layer, concatenated, to detect probes that flip a top-k choice. */
static void routing(const mg_cpu_model *m, int B, int *out)
{
    long TK = (long)B * m->T * m->k, at = 0;
    for (int i = 0; i < m->L; i++)
        if (m->layers[i].moe) {
            memcpy(out + at, m->layers[i].rf.topk_idx, sizeof(int) * (size_t)TK);
            at += TK;
        }
}

/* Central differences at n_probe random entries of every tensor, eps = 1e-2 and 5e-3 combined
 * by Richardson extrapolation, so truncation is O(eps⁴) even where the loss curves strongly
 * (the weights are O(0.3)); the fp32 rounding of the loss, ~1e-7·|L|, contributes ~2e-5
 * absolute. Passes when |num − ana| <= 2e-4 + 2e-3·|ana|. Probes whose perturbation flips
 * any top-k choice are redrawn: the loss is only piecewise smooth in the router. */
static void gradcheck(const char *spec_text, int B, int n_probe)
{
    mg_spec s;
    load_spec(&s, spec_text);
    mg_cpu_model m;
    mg_err err;
    assert_int_equal(mg_cpu_model_create(&m, &s, B, &err), 0);
    big_init(&m, 7);
    long ntok = (long)B * (m.T + 1);
    int32_t *tok = malloc(sizeof(int32_t) * (size_t)ntok);
    random_tokens(tok, ntok, m.V, 11);
    memset(m.grads, 0, sizeof(float) * (size_t)m.n_params);
    total_loss(&m, tok, B, 1);
    long nroute = (long)m.L * B * m.T * m.k;
    int *r0 = calloc((size_t)nroute, sizeof(int)), *r1 = calloc((size_t)nroute, sizeof(int));
    routing(&m, B, r0);

    mg_rng r;
    mg_rng_seed(&r, 99);
    const double eps = 1e-2, atol = 2e-4, rtol = 2e-3;
    double worst = 0;
    int redrawn = 0, checked = 0, failed = 0;
    for (int j = 0; j < m.n_tensors; j++) {
        const mg_cpu_tensor *t = &m.tensors[j];
        for (int p = 0, tries = 0; p < n_probe && tries < 50; tries++) {
            long i = t->off + (long)(mg_rng_u64(&r) % (uint64_t)t->n);
            float keep = m.params[i];
            double dd[2];
            int flip = 0;
            for (int h = 0; h < 2; h++) {   /* D(eps) and D(eps/2) */
                float e = (float)(h ? eps / 2 : eps);
                m.params[i] = keep + e;
                double lp = total_loss(&m, tok, B, 0);
                routing(&m, B, r1);
                flip |= memcmp(r0, r1, sizeof(int) * (size_t)nroute) != 0;
                m.params[i] = keep - e;
                double lm = total_loss(&m, tok, B, 0);
                routing(&m, B, r1);
                flip |= memcmp(r0, r1, sizeof(int) * (size_t)nroute) != 0;
                dd[h] = (lp - lm) / ((double)(keep + e) - (double)(keep - e));
            }
            m.params[i] = keep;
            if (flip) { redrawn++; continue; }
            /* Richardson: the O(eps²) terms of the two central differences cancel */
            double num = (4 * dd[1] - dd[0]) / 3, ana = m.grads[i], e = fabs(num - ana);
            double ratio = e / (atol + rtol * fabs(ana));
            if (ratio > worst) worst = ratio;
            if (getenv("GC_DEBUG") && ratio > 0.2) print_message("  %s[%ld] num %.6e ana %.6e ratio %.3f\n", t->name, i - t->off, num, ana, ratio);
            if (ratio > 1 && failed++ < 5)
                print_error("%s[%ld]: numeric %.6e analytic %.6e (|diff| %.2e)\n", t->name, i - t->off, num, ana, e);
            checked++, p++;
        }
    }
    print_message("gradcheck: %d probes over %d tensors, %d redrawn (routing flipped), worst |diff|/tol %.3f\n",
                  checked, m.n_tensors, redrawn, worst);
    assert_int_equal(failed, 0);
    assert_true(checked >= m.n_tensors * n_probe / 2);
    free(r0); free(r1); free(tok);
    mg_cpu_model_free(&m);
}

#define GC_SPEC(extra_model, extra_moe)                                                                     \
    "return { name = 'gc', model = { vocab = 32, d_model = 16, n_layer = 2, n_head = 2, n_kv_head = 1,"     \
    " seq_len = 8, tie_embeddings = false, d_ff_dense = 32" extra_model " },"                               \
    " moe = { experts = 4, top_k = 2, d_ff = 16, aux_loss = 0.1, z_loss = 0.01, every = 2" extra_moe " },"  \
    " dtype = 'fp32' }"

/* dense layer 0 + MoE layer 1 with a shared expert, GQA, untied head, swiglu */
static void test_gradcheck_swiglu_mixed(void **state)
{
    (void)state;
    gradcheck(GC_SPEC("", ", shared_experts = 1"), 2, 8);
}

/* the same with dropout 0.3 on both residual branches */
static void test_gradcheck_dropout(void **state)
{
    (void)state;
    gc_train = 1;
    gradcheck("return { name = 'gcd', model = { vocab = 32, d_model = 16, n_layer = 2, n_head = 2, n_kv_head = 1,"
              " seq_len = 8, tie_embeddings = false }, moe = { experts = 4, top_k = 2, d_ff = 16, every = 2 },"
              " train = { dropout = 0.3 }, dtype = 'fp32' }", 2, 8);
    gc_train = 0;
}

/* tied embeddings, gelu (non-gated), every layer MoE, sigmoid router with capacity drops */
static void test_gradcheck_gelu_sigmoid_capacity(void **state)
{
    (void)state;
    gradcheck("return { name = 'gc2', model = { vocab = 32, d_model = 16, n_layer = 2, n_head = 2, seq_len = 8 },"
              " moe = { experts = 4, top_k = 2, d_ff = 16, activation = 'gelu', router = 'sigmoid_topk',"
              " capacity_factor = 1.0, aux_loss = 0.1, z_loss = 0.01 }, dtype = 'fp32' }", 2, 8);
}

/* dense model (every = 0), geglu, MHA */
static void test_gradcheck_dense_geglu(void **state)
{
    (void)state;
    gradcheck("return { name = 'gc3', model = { vocab = 32, d_model = 16, n_layer = 1, n_head = 2, seq_len = 8,"
              " tie_embeddings = false }, moe = { experts = 4, top_k = 2, d_ff = 16, activation = 'geglu', every = 0 },"
              " dtype = 'fp32' }", 2, 8);
}


/* Same spec, seed and tokens: bitwise the same loss and gradients, dropout included. */
static void test_deterministic(void **state)
{
    (void)state;
    mg_spec s;
    load_spec(&s, GC_SPEC("", ", shared_experts = 1"));
    s.train.dropout = 0.2;
    mg_cpu_model a, b;
    mg_err err;
    assert_int_equal(mg_cpu_model_create(&a, &s, 2, &err), 0);
    assert_int_equal(mg_cpu_model_create(&b, &s, 2, &err), 0);
    mg_cpu_model_init_weights(&a, 5);
    mg_cpu_model_init_weights(&b, 5);
    assert_memory_equal(a.params, b.params, sizeof(float) * (size_t)a.n_params);
    int32_t tok[2 * 9];
    random_tokens(tok, 18, a.V, 3);
    mg_cpu_ctx c = {.train = 1, .seed = 9, .step = 4, .micro = 0, .scale = 1.0};
    mg_cpu_out oa, ob;
    mg_cpu_model_run(&a, tok, 2, &c, 1, &oa);
    mg_cpu_model_run(&b, tok, 2, &c, 1, &ob);
    assert_memory_equal(&oa.ce_sum, &ob.ce_sum, sizeof(double));
    assert_memory_equal(a.grads, b.grads, sizeof(float) * (size_t)a.n_params);
    /* another step draws other dropout masks */
    c.step = 5;
    mg_cpu_model_run(&b, tok, 2, &c, 0, &ob);
    assert_true(oa.ce_sum != ob.ce_sum);
    mg_cpu_model_free(&a);
    mg_cpu_model_free(&b);
}

/* A dense model without aux losses: one micro-batch of 2 sequences and two micro-batches of
 * 1 at scale 1/2 give the same gradient (up to fp32 summation order). */
static void test_grad_accum_matches_big_batch(void **state)
{
    (void)state;
    mg_spec s;
    load_spec(&s, "return { name = 'ga', model = { vocab = 32, d_model = 16, n_layer = 2, n_head = 2, seq_len = 8 },"
                  " moe = { experts = 4, top_k = 2, d_ff = 16, every = 0 }, dtype = 'fp32' }");
    mg_cpu_model m;
    mg_err err;
    assert_int_equal(mg_cpu_model_create(&m, &s, 2, &err), 0);
    mg_cpu_model_init_weights(&m, 1);
    int32_t tok[18];
    random_tokens(tok, 18, m.V, 8);
    mg_cpu_ctx c = {.seed = 1, .scale = 1.0};
    mg_cpu_out o;
    mg_cpu_model_run(&m, tok, 2, &c, 1, &o);
    float *g1 = malloc(sizeof(float) * (size_t)m.n_params);
    memcpy(g1, m.grads, sizeof(float) * (size_t)m.n_params);
    memset(m.grads, 0, sizeof(float) * (size_t)m.n_params);
    c.scale = 0.5;
    mg_cpu_model_run(&m, tok, 1, &c, 1, &o);
    mg_cpu_model_run(&m, tok + 9, 1, &c, 1, &o);
    assert_true(mg_ref_rel_err(m.grads, g1, m.n_params) < 1e-5);
    free(g1);
    mg_cpu_model_free(&m);
}

/* GPT-2 init: matrices std 0.02, residual projections 0.02/sqrt(2·n_layer), norms 1; the
 * tensor table covers the buffer without gaps and matches mg_spec_derive's count. */
static void test_init_and_table(void **state)
{
    (void)state;
    mg_spec s;
    load_spec(&s, "return { name = 'in', model = { vocab = 512, d_model = 64, n_layer = 2, n_head = 4, n_kv_head = 2,"
                  " seq_len = 8, tie_embeddings = false }, moe = { experts = 4, top_k = 2, d_ff = 64, every = 2,"
                  " shared_experts = 1 }, dtype = 'fp32' }");
    mg_cpu_model m;
    mg_err err;
    assert_int_equal(mg_cpu_model_create(&m, &s, 1, &err), 0);
    mg_cpu_model_init_weights(&m, 1);
    mg_derived dv;
    mg_spec_derive(&s, &dv);
    assert_int_equal(m.n_params, (long)dv.params_total);
    long at = 0;
    for (int j = 0; j < m.n_tensors; j++) {
        const mg_cpu_tensor *t = &m.tensors[j];
        assert_int_equal(t->off, at);
        at += t->n;
        double ss = 0, sum = 0;
        for (long i = 0; i < t->n; i++) ss += (double)m.params[t->off + i] * m.params[t->off + i], sum += m.params[t->off + i];
        if (t->ndim == 1) { assert_true(sum == (double)t->n); continue; }
        double std = sqrt(ss / t->n), want = strstr(t->name, "o_proj") || strstr(t->name, "down_proj") ? 0.01 : 0.02;
        if (fabs(std - want) > 0.15 * want) {
            print_error("%s: std %.5f, want %.5f\n", t->name, std, want);
            fail();
        }
    }
    assert_int_equal(at, m.n_params);
    assert_non_null(mg_cpu_model_find(&m, "model.layers.1.mlp.experts.3.down_proj.weight"));
    assert_non_null(mg_cpu_model_find(&m, "model.layers.1.mlp.shared_experts.0.gate_proj.weight"));
    assert_non_null(mg_cpu_model_find(&m, "model.layers.0.mlp.up_proj.weight"));
    assert_non_null(mg_cpu_model_find(&m, "lm_head.weight"));
    assert_null(mg_cpu_model_find(&m, "model.layers.0.mlp.gate.weight"));
    mg_cpu_model_free(&m);
}

/* Dropout keeps ~(1−p) of the elements scaled by 1/(1−p), and the same stream gives the same
 * mask (so the backward pass reproduces it). RoPE's inverse undoes it, and position 0 is
 * the identity. */
/* Aux-loss-free balancing with the softmax router: a selection bias that sends every token to
 * expert 0 is walked back by mg_cpu_model_update_bias (rate·sign(mean load − load)) until the
 * load spreads over the experts. */
static void test_softmax_bias_balances(void **state)
{
    (void)state;
    mg_spec s;
    load_spec(&s, "return { model = { vocab = 64, d_model = 16, n_layer = 1, n_head = 2, seq_len = 16 },"
                  " moe = { experts = 4, top_k = 1, d_ff = 16, router = 'softmax_topk', bias_update_rate = 0.05 },"
                  " dtype = 'fp32' }");
    mg_cpu_model m;
    mg_err err;
    const int B = 4;
    assert_int_equal(mg_cpu_model_create(&m, &s, B, &err), 0);
    mg_cpu_model_init_weights(&m, 5);
    mg_cpu_layer *l = &m.layers[0];
    assert_true(l->moe && l->sel_bias);
    l->sel_bias[0] = 0.5f;   /* softmax p ≈ 1/4 ± 0.01 at init: the bias decides */
    int32_t tok[4 * 17];
    random_tokens(tok, 4 * 17, 64, 9);
    double cv0 = -1, cv_best = INFINITY;
    for (int step = 0; step < 8; step++) {
        mg_cpu_ctx c = {.train = 1, .seed = 1, .step = step, .micro = 0, .scale = 1.0};
        mg_cpu_out o;
        mg_cpu_model_run(&m, tok, B, &c, 0, &o);
        double mean = 0, var = 0;
        for (int e = 0; e < 4; e++) mean += (double)l->load[e] / 4;
        for (int e = 0; e < 4; e++) var += ((double)l->load[e] - mean) * ((double)l->load[e] - mean) / 4;
        double cv = sqrt(var) / mean, b0 = l->sel_bias[0];
        if (step == 0) {
            cv0 = cv;
            assert_int_equal(l->load[0], B * 16);
        } else {
            cv_best = fmin(cv_best, cv);
        }
        int over = (double)l->load[0] > mean;
        mg_cpu_model_update_bias(&m, 0.05);
        if (over) assert_float_equal(l->sel_bias[0], b0 - 0.05, 1e-6);
        for (int e = 0; e < 4; e++) assert_int_equal(l->load[e], 0);   /* counted afresh each step */
    }
    assert_float_equal(cv0, sqrt(3.0), 1e-12);
    print_message("  load cv %.3f at step 0, best %.3f after\n", cv0, cv_best);
    assert_true(cv_best < 0.5);
    mg_cpu_model_free(&m);
}

static void test_dropout_and_rope(void **state)
{
    (void)state;
    long n = 100000;
    float *x = malloc(sizeof(float) * (size_t)n), *y = malloc(sizeof(float) * (size_t)n);
    for (long i = 0; i < n; i++) x[i] = y[i] = 1.0f;
    uint64_t st = mg_drop_stream(1, 2, 3, 4);
    mg_dropout(x, n, 0.25, st);
    mg_dropout(y, n, 0.25, st);
    assert_memory_equal(x, y, sizeof(float) * (size_t)n);
    long kept = 0;
    for (long i = 0; i < n; i++) {
        assert_true(x[i] == 0.0f || fabsf(x[i] - 1.0f / 0.75f) < 1e-6f);
        kept += x[i] != 0.0f;
    }
    assert_true(fabs(kept / (double)n - 0.75) < 0.01);
    free(x); free(y);

    int T = 5, hd = 8, nh = 2;
    float c[5 * 4], sn[5 * 4], v[5 * 2 * 8], v0[5 * 2 * 8];
    mg_rope_tables(c, sn, T, hd, 10000.0);
    for (int i = 0; i < T * nh * hd; i++) v[i] = v0[i] = (float)(i % 7) - 3.0f;
    mg_rope_apply(v, 1, T, nh, hd, c, sn, 0);
    assert_memory_equal(v, v0, sizeof(float) * (size_t)(nh * hd));   /* t = 0 */
    /* t = 1, head 0, pair (0, 4): angle 1 */
    assert_true(fabsf(v[16] - (float)(v0[16] * cos(1.0) - v0[20] * sin(1.0))) < 1e-5f);
    mg_rope_apply(v, 1, T, nh, hd, c, sn, 1);
    for (int i = 0; i < T * nh * hd; i++) assert_true(fabsf(v[i] - v0[i]) < 1e-5f);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_gradcheck_swiglu_mixed),
        cmocka_unit_test(test_gradcheck_gelu_sigmoid_capacity),
        cmocka_unit_test(test_gradcheck_dense_geglu),
        cmocka_unit_test(test_gradcheck_dropout),
        cmocka_unit_test(test_deterministic),
        cmocka_unit_test(test_grad_accum_matches_big_batch),
        cmocka_unit_test(test_init_and_table),
        cmocka_unit_test(test_dropout_and_rope),
        cmocka_unit_test(test_softmax_bias_balances),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
