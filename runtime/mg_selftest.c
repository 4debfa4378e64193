/* mg_selftest: CPU reference checks, then every generated kernel against the CPU reference.
 *
 * CPU part: finite-difference gradcheck of mg_ref on small configs with the spec's router
 * and activation. GPU part (skipped without a device): the spec's own dims at a few token
 * counts (1, 7, a main T sized to the CPU budget, 4097 when affordable), then variants made
 * by copying the spec (top_k = experts, one expert, capacity overflow by position and by
 * probability, shared expert, a softmax selection bias), each
 * with data modes that route every token to expert 0 or leave experts without tokens.
 * Every run poisons the layer's workspace and outputs (0xFF bytes = NaN) first, compares
 * against mg_ref on the dtype-rounded inputs, runs twice to check bitwise determinism, and a
 * third time captured into a CUDA graph and replayed (same bits required). */
#include "mg_selftest.h"
#include "mg_cuda.h"
#include "mg_gpu_check.h"
#include "mg_moe.h"
#include "mg_lm.h"
#include "mg_plan.h"
#include "mg_ref.h"
#include "mg_rng.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define ST_DEFAULT_BUDGET 3e9   /* CPU-reference multiply-adds per case */
#define ST_MAX_T 4097

enum { MODE_RANDOM = 0, MODE_DOMINANT = 1, MODE_DEAD = 2 };
static const char *const mode_names[] = {"random", "all->e0", "dead-experts"};

/* quiet: count only (moegen tune); first: the first failure, one line. */
typedef struct st_stats { int pass, fail, skip, quiet; char first[160]; } st_stats;

/* ------------------------------------------------------------------ checks and printing */
static void print_header(void)
{
    printf("%-34s %-11s %11s %11s %9s  %s\n", "case", "check", "max_abs", "rel_err", "tol", "result");
}

static void result_row(st_stats *s, const char *cs, const char *name, double max_abs, double rel, const char *tol,
                       int pass)
{
    if (!s->quiet)
        printf("%-34s %-11s %11.3e %11.3e %9s  %s\n", cs, name, max_abs, rel, tol, pass ? "PASS" : "FAIL");
    if (!pass && !s->fail)
        snprintf(s->first, sizeof s->first, "%s: max_abs %.3g rel_err %.3g > tol %s", name, max_abs, rel, tol);
    if (pass) s->pass++; else s->fail++;
}

/* ‖got − ref‖ / max(‖ref‖, floor) (‖got‖ when both are zero); non-finite got fails. cols names
 * the mismatches as [row, col]. floor: the size of the terms ref is a cancelled sum of (0: none). */
static int check_float_floor(st_stats *s, const char *cs, const char *name, const float *got, const float *ref,
                             long n, long cols, double tol, double floor)
{
    double num = 0, den = 0, max_abs = 0;
    long nonfinite = 0;
    for (long i = 0; i < n; i++) {
        double g = got[i], r = ref[i], d = g - r;
        if (!isfinite(g)) { nonfinite++; continue; }
        num += d * d;
        den += r * r;
        if (fabs(d) > max_abs) max_abs = fabs(d);
    }
    double dn = fmax(sqrt(den), floor), rel = dn > 0 ? sqrt(num) / dn : sqrt(num);
    if (nonfinite) rel = max_abs = INFINITY;
    char ts[32];
    snprintf(ts, sizeof ts, "%.0e", tol);
    int pass = rel <= tol;
    result_row(s, cs, name, max_abs, rel, ts, pass);
    if (!pass && !s->quiet) {
        double rms = n ? sqrt(den / (double)n) : 0;
        int shown = 0;
        if (nonfinite) printf("    %ld non-finite values\n", nonfinite);
        for (long i = 0; i < n && shown < 5; i++) {
            double g = got[i], r = ref[i];
            if (!isfinite(g) || fabs(g - r) > tol * rms + tol * fabs(r)) {
                printf("    mismatch [%ld, %ld]: got %.6g  ref %.6g\n", i / cols, i % cols, g, r);
                shown++;
            }
        }
    }
    return pass;
}

static int check_float(st_stats *s, const char *cs, const char *name, const float *got, const float *ref, long n,
                       long cols, double tol)
{
    return check_float_floor(s, cs, name, got, ref, n, cols, tol, 0);
}

static int check_int(st_stats *s, const char *cs, const char *name, const int *got, const int *ref, long n, long cols)
{
    long bad = 0;
    for (long i = 0; i < n; i++) bad += got[i] != ref[i];
    result_row(s, cs, name, (double)bad, bad ? 1.0 : 0.0, "exact", !bad);
    if (bad && !s->quiet) {
        printf("    %ld of %ld differ\n", bad, n);
        int shown = 0;
        for (long i = 0; i < n && shown < 5; i++)
            if (got[i] != ref[i]) {
                printf("    mismatch [%ld, %ld]: got %d  ref %d\n", i / cols, i % cols, got[i], ref[i]);
                shown++;
            }
    }
    return !bad;
}

/* ------------------------------------------------------------------ CPU part */
static int cpu_gradchecks(const mg_spec *sp, unsigned long long seed, st_stats *s)
{
    mg_ref_cfg c = {0};
    c.T = 6;
    c.d = 16;
    c.ff = 16;
    c.E = sp->moe.experts < 4 ? sp->moe.experts : 4;
    c.k = sp->moe.top_k < c.E ? sp->moe.top_k : c.E;
    if (sp->moe.router == MG_ROUTER_SWITCH) c.k = 1;
    c.act = sp->moe.activation;
    c.router = sp->moe.router;
    c.renormalize = sp->moe.renormalize;
    c.aux_coef = sp->moe.aux_loss > 0 ? sp->moe.aux_loss : 0.01;
    c.z_coef = sp->moe.z_loss > 0 ? sp->moe.z_loss : 0.001;
    c.n_shared = sp->moe.shared_experts > 0 ? 1 : 0;
    c.drop_policy = sp->moe.drop_policy;
    int ok = 1;
    for (int v = 0; v < 2; v++) {
        c.capacity_factor = v ? (sp->moe.capacity_factor > 0 ? sp->moe.capacity_factor : 1.0) : 0.0;
        double e = mg_ref_gradcheck(&c, seed + (unsigned long long)v, 6);
        char cs[64];
        snprintf(cs, sizeof cs, "cpu gradcheck %s cf=%.2g", mg_act_names[c.act], c.capacity_factor);
        char name[16];
        snprintf(name, sizeof name, "%s", mg_router_names[c.router]);
        name[10] = 0;
        int pass = isfinite(e) && e <= 1e-5;
        result_row(s, cs, name, e, e, "1e-05", pass);
        ok &= pass;
    }
    return ok;
}

/* ------------------------------------------------------------------ data */
typedef struct st_data {
    mg_ref_cfg c;
    int f2, dtype, esz, n_near_ties;
    float *x, *wg, *bias, *w_up, *w_dn, *ws_up, *ws_dn, *dy;   /* dtype-rounded */
} st_data;

static void round_dtype(int dtype, float *a, long n)
{
    if (dtype == MG_DTYPE_FP32 || !n) return;
    unsigned short *tmp = malloc((size_t)n * 2);
    mg_host_to_dtype(dtype, a, tmp, n);
    mg_host_from_dtype(dtype, tmp, a, n);
    free(tmp);
}

/* Uniform with unit variance times scale (cheaper than normals for big weights). */
static void fill_unif(mg_rng *r, float *a, long n, double scale)
{
    const double k = 2.0 * 1.7320508075688772 * scale;
    for (long i = 0; i < n; i++) a[i] = (float)((mg_rng_unif(r) - 0.5) * k);
}

/* True when token t's top-(k+1) scores (in selection order) have a gap too small for the
 * GPU's fp32 logits to be sure to order them as the fp64 reference does. A selection bias
 * (sigmoid, or softmax with one) ranks by score + bias, so the softmax p is needed then. */
static int near_tie(const st_data *D, int t)
{
    const mg_ref_cfg *c = &D->c;
    double sc[256];
    int used[256];
    for (int e = 0; e < c->E; e++) {
        double l = 0;
        for (int i = 0; i < c->d; i++) l += (double)D->x[(long)t * c->d + i] * D->wg[(long)e * c->d + i];
        sc[e] = c->router == MG_ROUTER_SIGMOID_TOPK ? 1.0 / (1.0 + exp(-l)) + (D->bias ? D->bias[e] : 0.0) : l;
        used[e] = 0;
    }
    if (c->router == MG_ROUTER_SOFTMAX_TOPK && D->bias) {   /* p + bias */
        double mx = sc[0], sum = 0;
        for (int e = 1; e < c->E; e++) mx = sc[e] > mx ? sc[e] : mx;
        for (int e = 0; e < c->E; e++) sum += exp(sc[e] - mx);
        for (int e = 0; e < c->E; e++) sc[e] = exp(sc[e] - mx) / sum + D->bias[e];
    }
    const double thr = c->router == MG_ROUTER_SIGMOID_TOPK || D->bias ? 1e-4 : 1e-3;
    int n = c->k + 1 < c->E ? c->k + 1 : c->E;
    double prev = 0;
    for (int j = 0; j < n; j++) {
        int b = -1;
        for (int e = 0; e < c->E; e++)
            if (!used[e] && (b < 0 || sc[e] > sc[b])) b = e;
        used[b] = 1;
        if (j && prev - sc[b] < thr) return 1;
        prev = sc[b];
    }
    return 0;
}

static void data_free(st_data *D)
{
    free(D->x); free(D->wg); free(D->bias); free(D->w_up); free(D->w_dn);
    free(D->ws_up); free(D->ws_dn); free(D->dy);
    memset(D, 0, sizeof *D);
}

static int data_make(st_data *D, const mg_spec *sp, int T, int mode, unsigned long long seed)
{
    memset(D, 0, sizeof *D);
    mg_ref_cfg *c = &D->c;
    c->T = T;
    c->d = sp->model.d_model;
    c->ff = sp->moe.d_ff;
    c->E = sp->moe.experts;
    c->k = sp->moe.top_k;
    c->act = sp->moe.activation;
    c->router = sp->moe.router;
    c->renormalize = sp->moe.renormalize;
    c->capacity_factor = sp->moe.capacity_factor;
    c->drop_policy = sp->moe.drop_policy;
    c->aux_coef = sp->moe.aux_loss;
    c->z_coef = sp->moe.z_loss;
    c->n_shared = sp->moe.shared_experts;
    D->f2 = mg_ref_f2(c);
    D->dtype = sp->dtype;
    D->esz = mg_dtype_size(sp->dtype);
    const long d = c->d, ff = c->ff, f2 = D->f2, E = c->E, S = c->n_shared;
    D->x = malloc(sizeof(float) * (size_t)T * d);
    D->dy = malloc(sizeof(float) * (size_t)T * d);
    D->wg = malloc(sizeof(float) * (size_t)(E * d));
    D->w_up = malloc(sizeof(float) * (size_t)(E * f2 * d));
    D->w_dn = malloc(sizeof(float) * (size_t)(E * d * ff));
    if (S) {
        D->ws_up = malloc(sizeof(float) * (size_t)(S * f2 * d));
        D->ws_dn = malloc(sizeof(float) * (size_t)(S * d * ff));
    }
    if (c->router == MG_ROUTER_SIGMOID_TOPK || (c->router == MG_ROUTER_SOFTMAX_TOPK && sp->moe.bias_update_rate > 0))
        D->bias = malloc(sizeof(float) * (size_t)E);
    if (!D->x || !D->dy || !D->wg || !D->w_up || !D->w_dn || (S && (!D->ws_up || !D->ws_dn))) {
        data_free(D);
        return -1;
    }
    mg_rng r;
    mg_rng_seed(&r, seed);
    fill_unif(&r, D->x, (long)T * d, 1.0);
    fill_unif(&r, D->dy, (long)T * d, 1.0);
    fill_unif(&r, D->wg, E * d, 1.0 / sqrt((double)d));
    fill_unif(&r, D->w_up, E * f2 * d, 1.0 / sqrt((double)d));
    fill_unif(&r, D->w_dn, E * d * ff, 1.0 / sqrt((double)ff));
    if (S) {
        fill_unif(&r, D->ws_up, S * f2 * d, 1.0 / sqrt((double)d));
        fill_unif(&r, D->ws_dn, S * d * ff, 1.0 / sqrt((double)ff));
    }
    if (D->bias) fill_unif(&r, D->bias, E, 0.01);
    /* Routing modes: a constant feature x[:,0] = 3 with wg[:,0] = +5 for expert 0 (every
     * token picks it first), or -5 for the upper experts (they get no tokens). */
    if (mode != MODE_RANDOM) {
        int alive = c->k + 1 > (int)E / 2 ? c->k + 1 : (int)E / 2;
        for (int t = 0; t < T; t++) D->x[(long)t * d] = 3.0f;
        for (long e = 0; e < E; e++)
            D->wg[e * d] = mode == MODE_DOMINANT ? (e == 0 ? 5.0f : 0.0f) : (e >= alive ? -5.0f : 0.0f);
    }
    round_dtype(D->dtype, D->x, (long)T * d);
    round_dtype(D->dtype, D->dy, (long)T * d);
    round_dtype(D->dtype, D->wg, E * d);
    round_dtype(D->dtype, D->w_up, E * f2 * d);
    round_dtype(D->dtype, D->w_dn, E * d * ff);
    if (S) {
        round_dtype(D->dtype, D->ws_up, S * f2 * d);
        round_dtype(D->dtype, D->ws_dn, S * d * ff);
    }
    /* Redraw tokens whose routing is a near tie, so index comparisons are meaningful. */
    for (int t = 0; t < T; t++) {
        int tries = 0;
        while (near_tie(D, t) && tries++ < 20) {
            float *row = D->x + (long)t * d;
            int from = mode != MODE_RANDOM ? 1 : 0;
            fill_unif(&r, row + from, d - from, 1.0);
            round_dtype(D->dtype, row + from, d - from);
        }
        if (near_tie(D, t)) D->n_near_ties++;
    }
    return 0;
}

/* ------------------------------------------------------------------ GPU buffers and runs */
typedef struct st_dev {
    void *x, *wg, *w_up, *w_dn, *ws_up, *ws_dn, *dy, *y, *dx;
    float *bias, *dwg, *dw_up, *dw_dn, *dws_up, *dws_dn;
    size_t n_x, n_wg, n_up, n_dn, n_sup, n_sdn;
} st_dev;

typedef struct st_out {
    float *y, *dx, *dwg, *dw_up, *dw_dn, *dws_up, *dws_dn, *topk_w, *dlogits;
    float loss[4];   /* aux, zloss, Σ_t router entropy, Σ_t top-1 probability */
    int *topk_idx, *counts, *counts_all, *offsets, *perm, *slot_of, n_dropped;
} st_out;

static void dev_free(st_dev *g)
{
    void *p[] = {g->x, g->wg, g->w_up, g->w_dn, g->ws_up, g->ws_dn, g->dy, g->y, g->dx,
                 g->bias, g->dwg, g->dw_up, g->dw_dn, g->dws_up, g->dws_dn};
    for (size_t i = 0; i < sizeof p / sizeof *p; i++)
        if (p[i]) cudaFree(p[i]);
    memset(g, 0, sizeof *g);
}

static int upload(void **dst, const float *src, size_t n, int dtype, int esz, mg_err *err)
{
    if (!n || !src) return MG_OK;
    MG_CUDA_TRY(cudaMalloc(dst, n * (size_t)esz), err);
    void *tmp = malloc(n * (size_t)esz);
    if (!tmp) return mg_err_set(err, MG_EINTERNAL, "selftest: out of memory");
    mg_host_to_dtype(dtype, src, tmp, (long)n);
    cudaError_t e = cudaMemcpy(*dst, tmp, n * (size_t)esz, cudaMemcpyHostToDevice);
    free(tmp);
    MG_CUDA_TRY(e, err);
    return MG_OK;
}

static int dev_make(st_dev *g, const st_data *D, mg_err *err)
{
    memset(g, 0, sizeof *g);
    const mg_ref_cfg *c = &D->c;
    const size_t T = (size_t)c->T, d = (size_t)c->d, ff = (size_t)c->ff, f2 = (size_t)D->f2, E = (size_t)c->E,
                 S = (size_t)c->n_shared;
    g->n_x = T * d; g->n_wg = E * d; g->n_up = E * f2 * d; g->n_dn = E * d * ff;
    g->n_sup = S * f2 * d; g->n_sdn = S * d * ff;
    int rc;
    if ((rc = upload(&g->x, D->x, g->n_x, D->dtype, D->esz, err))) return rc;
    if ((rc = upload(&g->dy, D->dy, g->n_x, D->dtype, D->esz, err))) return rc;
    if ((rc = upload(&g->wg, D->wg, g->n_wg, D->dtype, D->esz, err))) return rc;
    if ((rc = upload(&g->w_up, D->w_up, g->n_up, D->dtype, D->esz, err))) return rc;
    if ((rc = upload(&g->w_dn, D->w_dn, g->n_dn, D->dtype, D->esz, err))) return rc;
    if ((rc = upload(&g->ws_up, D->ws_up, g->n_sup, D->dtype, D->esz, err))) return rc;
    if ((rc = upload(&g->ws_dn, D->ws_dn, g->n_sdn, D->dtype, D->esz, err))) return rc;
    if (D->bias) {
        MG_CUDA_TRY(cudaMalloc((void **)&g->bias, E * 4), err);
        MG_CUDA_TRY(cudaMemcpy(g->bias, D->bias, E * 4, cudaMemcpyHostToDevice), err);
    }
    MG_CUDA_TRY(cudaMalloc(&g->y, g->n_x * (size_t)D->esz), err);
    MG_CUDA_TRY(cudaMalloc(&g->dx, g->n_x * (size_t)D->esz), err);
    MG_CUDA_TRY(cudaMalloc((void **)&g->dwg, g->n_wg * 4), err);
    MG_CUDA_TRY(cudaMalloc((void **)&g->dw_up, g->n_up * 4), err);
    MG_CUDA_TRY(cudaMalloc((void **)&g->dw_dn, g->n_dn * 4), err);
    if (S) {
        MG_CUDA_TRY(cudaMalloc((void **)&g->dws_up, g->n_sup * 4), err);
        MG_CUDA_TRY(cudaMalloc((void **)&g->dws_dn, g->n_sdn * 4), err);
    }
    return MG_OK;
}

static void out_free(st_out *o)
{
    free(o->y); free(o->dx); free(o->dwg); free(o->dw_up); free(o->dw_dn); free(o->dws_up); free(o->dws_dn);
    free(o->topk_w); free(o->dlogits); free(o->topk_idx); free(o->counts); free(o->counts_all);
    free(o->offsets); free(o->perm); free(o->slot_of);
    memset(o, 0, sizeof *o);
}

static int fetch(void *dst, const void *src, size_t bytes, mg_err *err)
{
    if (!bytes) return MG_OK;
    MG_CUDA_TRY(cudaMemcpy(dst, src, bytes, cudaMemcpyDeviceToHost), err);
    return MG_OK;
}

static int fetch_dtype(float **dst, const void *src, size_t n, int dtype, int esz, mg_err *err)
{
    void *tmp = malloc(n * (size_t)esz);
    *dst = malloc(n * sizeof(float));
    if (!tmp || !*dst) { free(tmp); return mg_err_set(err, MG_EINTERNAL, "selftest: out of memory"); }
    int rc = fetch(tmp, src, n * (size_t)esz, err);
    if (!rc) mg_host_from_dtype(dtype, tmp, *dst, (long)n);
    free(tmp);
    return rc;
}

static void *xmalloc(size_t n) { return malloc(n ? n : 1); }

/* Forward + backward on stream st; with graph = 1 they are captured into a CUDA graph first
 * and the graph is launched, which proves the layer is capturable: no host reads of device
 * values, no allocation, no synchronizing calls between launches. */
static int fwd_bwd(mg_moe *m, cudaStream_t st, const mg_moe_weights *w, const mg_moe_grads *gr, const st_dev *g,
                   int T, int graph, mg_err *err)
{
    if (!graph) {
        int rc = mg_moe_forward(m, st, w, g->x, g->y, T, err);
        return rc ? rc : mg_moe_backward(m, st, w, g->x, g->dy, g->dx, gr, T, err);
    }
    cudaGraph_t G = NULL;
    cudaGraphExec_t X = NULL;
    MG_CUDA_TRY(cudaStreamBeginCapture(st, cudaStreamCaptureModeThreadLocal), err);
    int rc = mg_moe_forward(m, st, w, g->x, g->y, T, err);
    if (!rc) rc = mg_moe_backward(m, st, w, g->x, g->dy, g->dx, gr, T, err);
    cudaError_t e = cudaStreamEndCapture(st, &G);
    if (!rc && e != cudaSuccess)
        rc = mg_err_set(err, MG_EINTERNAL, "graph capture: %s", cudaGetErrorString(e));
    if (!rc && (e = cudaGraphInstantiate(&X, G, 0)) != cudaSuccess)
        rc = mg_err_set(err, MG_EINTERNAL, "graph instantiate: %s", cudaGetErrorString(e));
    if (!rc && (e = cudaGraphLaunch(X, st)) != cudaSuccess)
        rc = mg_err_set(err, MG_EINTERNAL, "graph launch: %s", cudaGetErrorString(e));
    if (X) cudaGraphExecDestroy(X);
    if (G) cudaGraphDestroy(G);
    return rc;
}

/* Poison, forward, backward (eagerly, or as a replayed CUDA graph), fetch everything. */
static int gpu_run(mg_moe *m, const st_data *D, const st_dev *g, st_out *o, int graph, mg_err *err)
{
    const mg_ref_cfg *c = &D->c;
    const size_t T = (size_t)c->T, E = (size_t)c->E, TK = T * (size_t)c->k;
    int rc;
    memset(o, 0, sizeof *o);
    if ((rc = mg_moe_poison(m, 0, err))) return rc;
    MG_CUDA_TRY(cudaMemset(g->y, 0xFF, g->n_x * (size_t)D->esz), err);
    MG_CUDA_TRY(cudaMemset(g->dx, 0xFF, g->n_x * (size_t)D->esz), err);
    MG_CUDA_TRY(cudaMemset(g->dwg, 0xFF, g->n_wg * 4), err);
    MG_CUDA_TRY(cudaMemset(g->dw_up, 0xFF, g->n_up * 4), err);
    MG_CUDA_TRY(cudaMemset(g->dw_dn, 0xFF, g->n_dn * 4), err);
    if (g->dws_up) MG_CUDA_TRY(cudaMemset(g->dws_up, 0xFF, g->n_sup * 4), err);
    if (g->dws_dn) MG_CUDA_TRY(cudaMemset(g->dws_dn, 0xFF, g->n_sdn * 4), err);

    mg_moe_weights w = {g->wg, g->bias, g->w_up, g->w_dn, g->ws_up, g->ws_dn};
    mg_moe_grads gr = {g->dwg, g->dw_up, g->dw_dn, g->dws_up, g->dws_dn};
    cudaStream_t st = 0;
    if (graph) MG_CUDA_TRY(cudaStreamCreate(&st), err);   /* the legacy stream cannot be captured */
    rc = fwd_bwd(m, st, &w, &gr, g, (int)T, graph, err);
    if (graph) {
        cudaStreamSynchronize(st);
        cudaStreamDestroy(st);
    }
    if (rc) return rc;
    MG_CUDA_TRY(cudaDeviceSynchronize(), err);

    mg_moe_state s;
    mg_moe_get_state(m, &s);
    o->dwg = xmalloc(g->n_wg * 4); o->dw_up = xmalloc(g->n_up * 4); o->dw_dn = xmalloc(g->n_dn * 4);
    o->dws_up = xmalloc(g->n_sup * 4); o->dws_dn = xmalloc(g->n_sdn * 4);
    o->topk_w = xmalloc(TK * 4); o->dlogits = xmalloc(T * E * 4); o->topk_idx = xmalloc(TK * 4);
    o->counts = xmalloc(E * 4); o->counts_all = xmalloc(E * 4); o->offsets = xmalloc((E + 1) * 4);
    o->perm = xmalloc(TK * 4); o->slot_of = xmalloc(TK * 4);
    if ((rc = fetch_dtype(&o->y, g->y, g->n_x, D->dtype, D->esz, err))) return rc;
    if ((rc = fetch_dtype(&o->dx, g->dx, g->n_x, D->dtype, D->esz, err))) return rc;
    if ((rc = fetch(o->dwg, g->dwg, g->n_wg * 4, err))) return rc;
    if ((rc = fetch(o->dw_up, g->dw_up, g->n_up * 4, err))) return rc;
    if ((rc = fetch(o->dw_dn, g->dw_dn, g->n_dn * 4, err))) return rc;
    if ((rc = fetch(o->dws_up, g->dws_up, g->n_sup * 4, err))) return rc;
    if ((rc = fetch(o->dws_dn, g->dws_dn, g->n_sdn * 4, err))) return rc;
    if ((rc = fetch(o->topk_w, s.topk_w, TK * 4, err))) return rc;
    if ((rc = fetch(o->dlogits, s.dlogits, T * E * 4, err))) return rc;
    if ((rc = fetch(o->topk_idx, s.topk_idx, TK * 4, err))) return rc;
    if ((rc = fetch(o->counts, s.counts, E * 4, err))) return rc;
    if ((rc = fetch(o->counts_all, s.counts_all, E * 4, err))) return rc;
    if ((rc = fetch(o->offsets, s.offsets, (E + 1) * 4, err))) return rc;
    if ((rc = fetch(o->perm, s.perm, TK * 4, err))) return rc;
    if ((rc = fetch(o->slot_of, s.slot_of, TK * 4, err))) return rc;
    if ((rc = fetch(&o->n_dropped, s.n_dropped, 4, err))) return rc;
    if ((rc = fetch(o->loss, s.loss, sizeof o->loss, err))) return rc;
    return MG_OK;
}

static int same_bytes(const void *a, const void *b, size_t n) { return n == 0 || !memcmp(a, b, n); }

static int outputs_identical(const st_out *a, const st_out *b, const st_dev *g, const st_data *D, char *what,
                             size_t n)
{
    const size_t T = (size_t)D->c.T, E = (size_t)D->c.E, TK = T * (size_t)D->c.k;
    struct { const char *name; const void *pa, *pb; size_t bytes; } t[] = {
        {"y", a->y, b->y, g->n_x * 4}, {"dx", a->dx, b->dx, g->n_x * 4}, {"dwg", a->dwg, b->dwg, g->n_wg * 4},
        {"dw_up", a->dw_up, b->dw_up, g->n_up * 4}, {"dw_dn", a->dw_dn, b->dw_dn, g->n_dn * 4},
        {"dws_up", a->dws_up, b->dws_up, g->n_sup * 4}, {"dws_dn", a->dws_dn, b->dws_dn, g->n_sdn * 4},
        {"topk_w", a->topk_w, b->topk_w, TK * 4}, {"dlogits", a->dlogits, b->dlogits, T * E * 4},
        {"topk_idx", a->topk_idx, b->topk_idx, TK * 4}, {"offsets", a->offsets, b->offsets, (E + 1) * 4},
        {"perm", a->perm, b->perm, TK * 4}, {"slot_of", a->slot_of, b->slot_of, TK * 4},
        {"loss", a->loss, b->loss, sizeof a->loss},
    };
    for (size_t i = 0; i < sizeof t / sizeof *t; i++)
        if (!same_bytes(t[i].pa, t[i].pb, t[i].bytes)) { snprintf(what, n, "%s", t[i].name); return 0; }
    return 1;
}

/* ------------------------------------------------------------------ one case */
/* Data, device buffers and expected outputs of one case. exp points either into the CPU
 * reference (rf, rg) or at outputs of a trusted layer (gexp). */
struct mg_check {
    mg_spec spec;
    int T, mode, have_ref;
    char cs[64];
    st_data D;
    st_dev g;
    mg_ref_fwd rf;
    mg_ref_grads rg;
    st_out gexp;   /* from a reference layer (have_ref == 0) */
    st_out exp;    /* view: the expected outputs (owns nothing) */
};

void mg_check_free(mg_check *c)
{
    if (!c) return;
    if (c->have_ref) {
        mg_ref_fwd_free(&c->rf);
        mg_ref_grads_free(&c->rg);
    }
    out_free(&c->gexp);
    dev_free(&c->g);
    data_free(&c->D);
    free(c);
}

int mg_check_make(const mg_spec *sp, int T, int mode, unsigned long long seed, mg_moe *ref, mg_check **out,
                  mg_err *err)
{
    *out = NULL;
    mg_check *c = calloc(1, sizeof *c);
    if (!c) return mg_err_set(err, MG_EINTERNAL, "check: out of memory");
    c->spec = *sp;
    c->T = T;
    c->mode = mode;
    snprintf(c->cs, sizeof c->cs, "T=%d %s", T, mode_names[mode]);
    if (data_make(&c->D, sp, T, mode, seed)) { free(c); return mg_err_set(err, MG_EINTERNAL, "check: out of memory (data)"); }
    int rc = dev_make(&c->g, &c->D, err);
    if (!rc && ref) rc = gpu_run(ref, &c->D, &c->g, &c->gexp, 0, err);
    if (rc) { mg_check_free(c); return rc; }
    st_out *e = &c->exp;
    if (ref) {
        *e = c->gexp;
    } else {
        const mg_ref_cfg *rc_ = &c->D.c;
        mg_ref_weights rw = {c->D.wg, c->D.bias, c->D.w_up, c->D.w_dn, c->D.ws_up, c->D.ws_dn};
        mg_ref_fwd_alloc(rc_, &c->rf);
        mg_ref_grads_alloc(rc_, &c->rg);
        c->have_ref = 1;
        mg_ref_forward(rc_, c->D.x, &rw, &c->rf);
        mg_ref_backward(rc_, c->D.x, &rw, &c->rf, c->D.dy, &c->rg);
        e->y = c->rf.y; e->dx = c->rg.dx; e->dwg = c->rg.dwg; e->dw_up = c->rg.dw_up; e->dw_dn = c->rg.dw_dn;
        e->dws_up = c->rg.dws_up; e->dws_dn = c->rg.dws_dn; e->topk_w = c->rf.topk_w; e->dlogits = c->rg.dlogits;
        e->topk_idx = c->rf.topk_idx; e->counts = c->rf.counts; e->counts_all = c->rf.counts_all;
        e->offsets = c->rf.offsets; e->perm = c->rf.perm; e->slot_of = c->rf.slot_of; e->n_dropped = c->rf.n_dropped;
        e->loss[0] = (float)c->rf.aux;
        e->loss[1] = (float)c->rf.zloss;
        e->loss[2] = (float)c->rf.entropy_sum;
        e->loss[3] = (float)c->rf.top1_sum;
    }
    *out = c;
    return MG_OK;
}

/* Router entropy or top-1 sum over T tokens, checked as a per-token mean to an absolute
 * tolerance: a sum of near-zero entropies (every token sure of its expert) has no useful
 * relative error. */
static void check_mean(st_stats *s, const char *cs, const char *name, float got, float ref, int T, double tol)
{
    double d = fabs((double)got - ref) / T;
    char ts[32];
    snprintf(ts, sizeof ts, "%.0e", tol);
    result_row(s, cs, name, isfinite(got) ? d : INFINITY, isfinite(got) ? d : INFINITY, ts, isfinite(got) && d <= tol);
}

/* Drop policy probability: over-full experts whose weakest kept and strongest dropped weights
 * (reference) are closer than fp32 can resolve, so the GPU may keep the other one. */
static int near_drop_ties(const st_data *D, const st_out *r)
{
    const mg_ref_cfg *c = &D->c;
    int n = 0;
    if (!(c->capacity_factor > 0) || c->drop_policy != MG_DROP_PROBABILITY) return 0;
    for (int e = 0; e < c->E; e++) {
        double lo = INFINITY, hi = -INFINITY;
        for (long i = 0; i < (long)c->T * c->k; i++) {
            if (r->topk_idx[i] != e) continue;
            if (r->slot_of[i] >= 0) lo = fmin(lo, r->topk_w[i]);
            else hi = fmax(hi, r->topk_w[i]);
        }
        n += hi > -INFINITY && lo - hi < 1e-5;
    }
    return n;
}

/* The router-logit gradient of token t is p⊙(g − Σ_j w_j g_j) plus the aux/z terms, with
 * g_j = dy_t·z_tj. When a token's chosen experts give similar g the difference cancels, and g_j
 * itself is a dot product that may cancel: the rounding of h and z in bf16 (2^-9 relative an
 * element) errs g_j by up to 2^-9·Σ_i |dy_ti·z_tji|, the dot product's own scale, which a small
 * |g_j| does not shrink. So dlogits (and dwg = dlogitsᵀx) are measured against the terms at that
 * scale, ‖w_j·Σ_i |dy_ti·z_tji|‖ over the kept slots, when that is larger than the result itself;
 * 0 when there is no CPU reference (its z is needed). With |g_j| in its place (before session 10),
 * one token's check failed whenever its g happened to be small (tiny, seed 21, T = 1: 1.56e-2
 * against 1e-2 once z was stored in bf16; mixtral-8x7b, seed 27, with z in fp32). A wrong kernel
 * still errs at the size of the terms themselves, ~100x the bound. */
static double dlogits_floor(const mg_check *ck)
{
    if (!ck->have_ref) return 0;
    const mg_ref_cfg *c = &ck->D.c;
    double acc = 0;
    for (long t = 0; t < c->T; t++)
        for (int j = 0; j < c->k; j++) {
            int sl = ck->rf.slot_of[t * c->k + j];
            if (sl < 0) continue;
            double g = 0;
            for (long i = 0; i < c->d; i++) g += fabs((double)ck->D.dy[t * c->d + i] * ck->rf.z[(long)sl * c->d + i]);
            double v = ck->rf.topk_w[t * c->k + j] * g;
            acc += v * v;
        }
    return sqrt(acc);
}

static double max_row_norm(const float *x, long T, long d)
{
    double m = 0;
    for (long t = 0; t < T; t++) {
        double a = 0;
        for (long i = 0; i < d; i++) a += (double)x[t * d + i] * x[t * d + i];
        m = fmax(m, sqrt(a));
    }
    return m;
}

/* Every output of o against the expected ones: one row each into s. */
static void check_compare(const mg_check *ck, const st_out *o, const char *cs, st_stats *s)
{
    const st_data *D = &ck->D;
    const mg_ref_cfg *c = &D->c;
    const st_out *r = &ck->exp;
    const double tol = D->dtype == MG_DTYPE_FP32 ? 1e-5 : 1e-2, tol_route = 1e-5;
    const long T = c->T, TK = T * c->k, E = c->E, d = c->d, ff = c->ff, f2 = D->f2, S = c->n_shared;
    if (!s->quiet) {
        int zero_experts = 0;
        for (long e = 0; e < E; e++) zero_experts += r->counts[e] == 0;
        printf("-- %s: %d slots kept, %d dropped, %d experts without tokens%s\n", cs, r->offsets[E], r->n_dropped,
               zero_experts, D->n_near_ties ? "" : ", no near ties");
        if (D->n_near_ties)
            printf("   note: %d tokens keep a near tie in their top-%d scores after redraws: an index mismatch "
                   "there is a rounding tie-break, not a kernel bug\n", D->n_near_ties, c->k + 1);
        int ndt = near_drop_ties(D, r);
        if (ndt)
            printf("   note: %d experts have kept and dropped weights within 1e-5 (drop policy probability): a "
                   "slot_of mismatch there is a rounding tie-break, not a kernel bug\n", ndt);
    }
    int idx_ok = check_int(s, cs, "topk_idx", o->topk_idx, r->topk_idx, TK, c->k);
    check_float(s, cs, "topk_w", o->topk_w, r->topk_w, TK, c->k, tol_route);
    check_int(s, cs, "counts_all", o->counts_all, r->counts_all, E, E);
    check_int(s, cs, "counts", o->counts, r->counts, E, E);
    check_int(s, cs, "offsets", o->offsets, r->offsets, E + 1, E + 1);
    check_int(s, cs, "n_dropped", &o->n_dropped, &r->n_dropped, 1, 1);
    if (o->offsets[E] == r->offsets[E]) check_int(s, cs, "perm", o->perm, r->perm, r->offsets[E], r->offsets[E] ? r->offsets[E] : 1);
    check_int(s, cs, "slot_of", o->slot_of, r->slot_of, TK, c->k);
    check_float(s, cs, "aux", &o->loss[0], &r->loss[0], 1, 1, tol_route);
    check_float(s, cs, "zloss", &o->loss[1], &r->loss[1], 1, 1, tol_route);
    check_mean(s, cs, "entropy", o->loss[2], r->loss[2], c->T, tol_route);
    check_mean(s, cs, "top1", o->loss[3], r->loss[3], c->T, tol_route);
    if (!idx_ok && D->n_near_ties && !s->quiet) printf("    (routing differs where near ties remain: see the note above)\n");
    check_float(s, cs, "y", o->y, r->y, T * d, d, tol);
    const double fl = dlogits_floor(ck);
    check_float_floor(s, cs, "dlogits", o->dlogits, r->dlogits, T * E, E, tol, fl);
    check_float(s, cs, "dx", o->dx, r->dx, T * d, d, tol);
    check_float_floor(s, cs, "dwg", o->dwg, r->dwg, E * d, d, tol, fl * max_row_norm(D->x, T, d));
    check_float(s, cs, "dw_up", o->dw_up, r->dw_up, E * f2 * d, d, tol);
    check_float(s, cs, "dw_dn", o->dw_dn, r->dw_dn, E * d * ff, ff, tol);
    if (S) {
        check_float(s, cs, "dws_up", o->dws_up, r->dws_up, S * f2 * d, d, tol);
        check_float(s, cs, "dws_dn", o->dws_dn, r->dws_dn, S * d * ff, ff, tol);
    }
}

int mg_check_run(mg_check *c, mg_moe *m, int quiet, int *n_fail, char *what, size_t n, mg_err *err)
{
    st_out o;
    st_stats s = {0, 0, 0, quiet, ""};
    int rc = gpu_run(m, &c->D, &c->g, &o, 0, err);
    if (!rc) check_compare(c, &o, c->cs[0] ? c->cs : "check", &s);
    out_free(&o);
    if (rc) return rc;
    *n_fail = s.fail;
    if (what && n) snprintf(what, n, "%s", s.first);
    return MG_OK;
}

static int run_case(mg_moe *m, const mg_spec *sp, const char *vname, int T, int mode, unsigned long long seed,
                    st_stats *s, mg_err *err)
{
    char cs[64];
    snprintf(cs, sizeof cs, "%s T=%d %s", vname, T, mode_names[mode]);
    mg_check *ck;
    int rc = mg_check_make(sp, T, mode, seed, NULL, &ck, err);
    if (rc) return rc;
    st_out o1, o2, o3;
    memset(&o2, 0, sizeof o2);
    memset(&o3, 0, sizeof o3);
    rc = gpu_run(m, &ck->D, &ck->g, &o1, 0, err);
    if (!rc) rc = gpu_run(m, &ck->D, &ck->g, &o2, 0, err);
    if (!rc) {
        check_compare(ck, &o1, cs, s);
        char what[32] = "";
        int same = outputs_identical(&o1, &o2, &ck->g, &ck->D, what, sizeof what);
        result_row(s, cs, "determinism", 0, 0, "bitwise", same);
        if (!same) printf("    second run differs in %s\n", what);
        /* The same step captured into a CUDA graph and replayed must give the same bits. */
        mg_err gerr;
        mg_err_clear(&gerr);
        int grc = gpu_run(m, &ck->D, &ck->g, &o3, 1, &gerr);
        same = !grc && outputs_identical(&o1, &o3, &ck->g, &ck->D, what, sizeof what);
        result_row(s, cs, "cuda graph", 0, 0, "bitwise", same);
        if (grc) printf("    %s\n", gerr.msg);
        else if (!same) printf("    graph replay differs in %s\n", what);
        cudaGetLastError();   /* a failed capture must not poison the next case */
    }
    out_free(&o1);
    out_free(&o2);
    out_free(&o3);
    mg_check_free(ck);
    return rc;
}

/* ------------------------------------------------------------------ variants */
/* CPU reference multiply-adds per token (forward + backward ~ 3x the expert GEMMs). */
static double ref_work_per_token(const mg_spec *sp)
{
    double d = sp->model.d_model, ff = sp->moe.d_ff, f2 = ff * (mg_act_is_glu(sp->moe.activation) ? 2 : 1);
    return 3.0 * ((sp->moe.top_k + sp->moe.shared_experts) * (d * f2 + ff * d) + sp->moe.experts * d);
}

static int clamp_i(double v, int lo, int hi) { return v < lo ? lo : v > hi ? hi : (int)v; }

typedef struct st_variant {
    char name[32];
    mg_spec spec;
    int n_T, T[4];
    int modes;   /* bit mask of MODE_* */
} st_variant;

static int run_variant(const st_variant *v, const mg_selftest_opts *o, unsigned long long *seed, st_stats *s,
                       mg_err *err)
{
    mg_err e2;
    mg_err_clear(&e2);
    if (mg_spec_validate(&v->spec, &e2)) {
        printf("-- %s: skipped (%s)\n", v->name, e2.msg);
        s->skip++;
        return MG_OK;
    }
    mg_plan plan;
    int rc = mg_plan_make(&v->spec, NULL, &plan, err);
    if (rc) return rc;
    int maxT = 1;
    for (int i = 0; i < v->n_T; i++) if (v->T[i] > maxT) maxT = v->T[i];
    mg_moe_opts mo = {.arch = o->arch, .verbose = o->verbose};
    mg_moe *m = NULL;
    printf("-- %s: E=%d k=%d d=%d ff=%d %s %s %s shared=%d cf=%g, tiles up %dx%dx%d/s%d/w%d down %dx%dx%d/s%d/w%d\n",
           v->name, v->spec.moe.experts, v->spec.moe.top_k, v->spec.model.d_model, v->spec.moe.d_ff,
           mg_act_names[v->spec.moe.activation], mg_router_names[v->spec.moe.router], mg_dtype_names[v->spec.dtype],
           v->spec.moe.shared_experts, v->spec.moe.capacity_factor, plan.fam[MG_FAM_UP].tile.bm,
           plan.fam[MG_FAM_UP].tile.bn, plan.fam[MG_FAM_UP].tile.bk, plan.fam[MG_FAM_UP].tile.stages,
           plan.fam[MG_FAM_UP].tile.warps, plan.fam[MG_FAM_DOWN].tile.bm, plan.fam[MG_FAM_DOWN].tile.bn,
           plan.fam[MG_FAM_DOWN].tile.bk, plan.fam[MG_FAM_DOWN].tile.stages, plan.fam[MG_FAM_DOWN].tile.warps);
    fflush(stdout);
    if ((rc = mg_moe_create(&plan, &mo, maxT, &m, err))) return rc;
    for (int i = 0; i < v->n_T && !rc; i++)
        for (int mode = 0; mode < 3 && !rc; mode++) {
            if (!(v->modes >> mode & 1)) continue;
            /* edge T values run the random mode only */
            if (mode != MODE_RANDOM && v->T[i] < 16) continue;
            rc = run_case(m, &v->spec, v->name, v->T[i], mode, (*seed)++, s, err);
            fflush(stdout);
        }
    mg_moe_destroy(m);
    return rc;
}

/* Variants test one layer on one GPU: cap the dims, and drop the spec's parallel layout
 * (an ep that divides the spec's experts need not divide a variant's). */
static void shrink_dims(mg_spec *sp)
{
    if (sp->model.d_model > 512) {
        sp->model.d_model = 512;
        /* the heads must still divide d (bench-small's 6 heads do not divide 512) */
        if (512 % sp->model.n_head || sp->model.n_head % sp->model.n_kv_head)
            sp->model.n_head = sp->model.n_kv_head = 8;
    }
    if (sp->moe.d_ff > 512) sp->moe.d_ff = 512;
    sp->parallel.dp = sp->parallel.ep = 1;
    sp->parallel.zero = 0;
}

/* Expert weight elements of a spec (up + down, all experts). */
static double expert_weights(const mg_spec *sp)
{
    double f2 = sp->moe.d_ff * (mg_act_is_glu(sp->moe.activation) ? 2.0 : 1.0);
    return (double)sp->moe.experts * sp->model.d_model * (f2 + sp->moe.d_ff);
}

/* The GPU trainer's LM head over a padded vocabulary: one --check-step (GPU gradients against
 * the CPU trainer's) of a small model of the spec's kind with vocab 509, which the trainer pads
 * to 512 columns (zero head rows, zero xent gradient), untied then tied, in two micro-batches
 * (the head's weight gradient accumulates; the tied embedding's scatter adds to it). */
static int head_checks(const mg_spec *spec, st_stats *s, mg_err *err)
{
    for (int tied = 0; tied < 2; tied++) {
        mg_spec v = *spec;
        v.model.vocab = 509, v.model.d_model = 64, v.model.n_layer = 2, v.model.seq_len = 32;
        v.model.n_head = 4, v.model.n_kv_head = spec->model.n_kv_head < spec->model.n_head ? 2 : 4;
        v.model.tie_embeddings = tied;
        if (v.model.d_ff_dense > 0) v.model.d_ff_dense = 128;
        v.moe.d_ff = 64;
        v.train.batch = 4, v.train.grad_accum = 2;
        v.parallel.dp = v.parallel.ep = 1, v.parallel.zero = 0;
        mg_err e2;
        mg_err_clear(&e2);
        if (mg_spec_validate(&v, &e2)) {
            printf("-- lm head (vocab 509, %s): skipped (%s)\n", tied ? "tied" : "untied", e2.msg);
            s->skip++;
            continue;
        }
        printf("-- lm head: vocab 509 padded to 512, %s, grad_accum 2\n", tied ? "tied" : "untied");
        fflush(stdout);
        int nf = 0, rc = mg_gpu_check_step(&v, NULL, stdout, &nf, err);
        if (rc) return rc;
        if (nf) s->fail++; else s->pass++;
    }
    return MG_OK;
}

int mg_selftest(const mg_spec *spec, const mg_selftest_opts *o, mg_err *err)
{
    mg_selftest_opts def;
    if (!o) { memset(&def, 0, sizeof def); o = &def; }
    double budget = o->budget > 0 ? o->budget : ST_DEFAULT_BUDGET;
    const char *env = getenv("MOEGEN_SELFTEST_BUDGET");
    if (o->budget <= 0 && env && atof(env) > 0) budget = atof(env);
    st_stats s;
    memset(&s, 0, sizeof s);
    printf("moegen selftest: spec '%s' (%s), seed %llu\n", spec->name, spec->path, o->seed);
    print_header();
    cpu_gradchecks(spec, o->seed, &s);

    char why[256] = "";
    if (mg_cuda_device_count(why, sizeof why) == 0) {
        printf("skipped: no CUDA device\n");
        printf("selftest: %d passed, %d failed (CPU part only)\n", s.pass, s.fail);
        return s.fail ? MG_EUSER : MG_OK;
    }
    struct cudaDeviceProp prop;
    int dev = 0;
    MG_CUDA_TRY(cudaGetDevice(&dev), err);
    MG_CUDA_TRY(cudaGetDeviceProperties(&prop, dev), err);
    char arch[32];
    if (o->arch) snprintf(arch, sizeof arch, "%s", o->arch);
    else mg_cuda_arch(dev, arch, sizeof arch);
    printf("gpu: %s (sm_%d%d, kernels for %s), CPU budget %.2g multiply-adds per case\n", prop.name, prop.major,
           prop.minor, arch, budget);

    unsigned long long seed = o->seed;
    st_variant v;
    int rc = MG_OK;

    /* MOEGEN_SELFTEST_PART=lm|moe runs one part only (default both) */
    const char *part = getenv("MOEGEN_SELFTEST_PART");
    const int do_moe = !part || strcmp(part, "lm"), do_lm = !part || strcmp(part, "moe");
    if (!do_moe) goto lm_part;

    /* 1. the spec's own dims */
    memset(&v, 0, sizeof v);
    snprintf(v.name, sizeof v.name, "spec");
    v.spec = *spec;
    double wpt = ref_work_per_token(spec);
    int T_main = clamp_i(budget / wpt, 32, 4096);
    v.T[v.n_T++] = 1;
    v.T[v.n_T++] = 7;
    v.T[v.n_T++] = T_main;
    if (T_main == 4096 || wpt * ST_MAX_T <= 4 * budget) v.T[v.n_T++] = ST_MAX_T;
    else printf("-- spec: T=%d skipped (CPU reference too slow at these dims; raise MOEGEN_SELFTEST_BUDGET)\n",
                ST_MAX_T);
    v.modes = 1 << MODE_RANDOM | 1 << MODE_DOMINANT | 1 << MODE_DEAD;
    /* Each case redraws and references every expert weight in fp64 on one core: at Mixtral
     * size (~1.4e9 weights) that is ~30 s a case. The routing modes are what the capped-dims
     * variants below cover; at full size one random routing per T checks the tiling. */
    if (expert_weights(spec) > 3e8) {
        v.modes = 1 << MODE_RANDOM;
        printf("-- spec: %.2g expert weights: spec dims run random routing only (routing modes run on the "
               "capped-dims variants)\n", expert_weights(spec));
    }
    rc = run_variant(&v, o, &seed, &s, err);

    /* 2. top_k = experts (small E so every expert is in every token's list) */
    if (!rc) {
        memset(&v, 0, sizeof v);
        snprintf(v.name, sizeof v.name, "topk=E");
        v.spec = *spec;
        shrink_dims(&v.spec);
        if (v.spec.moe.experts > 8) v.spec.moe.experts = 8;
        if (v.spec.moe.router == MG_ROUTER_SWITCH) v.spec.moe.router = MG_ROUTER_SOFTMAX_TOPK;
        v.spec.moe.top_k = v.spec.moe.experts;
        v.T[v.n_T++] = 7;
        v.T[v.n_T++] = clamp_i(budget / ref_work_per_token(&v.spec), 16, 512);
        v.modes = 1 << MODE_RANDOM | 1 << MODE_DOMINANT;
        rc = run_variant(&v, o, &seed, &s, err);
    }
    /* 3. one expert */
    if (!rc) {
        memset(&v, 0, sizeof v);
        snprintf(v.name, sizeof v.name, "E=1");
        v.spec = *spec;
        shrink_dims(&v.spec);
        v.spec.moe.experts = 1;
        v.spec.moe.top_k = 1;
        v.T[v.n_T++] = 7;
        v.T[v.n_T++] = clamp_i(budget / ref_work_per_token(&v.spec), 16, 512);
        v.modes = 1 << MODE_RANDOM;
        rc = run_variant(&v, o, &seed, &s, err);
    }
    /* 4. capacity overflow: everything to expert 0 with a capacity factor */
    if (!rc) {
        memset(&v, 0, sizeof v);
        snprintf(v.name, sizeof v.name, "capacity");
        v.spec = *spec;
        shrink_dims(&v.spec);
        if (!(v.spec.moe.capacity_factor > 0)) v.spec.moe.capacity_factor = 1.0;
        v.spec.moe.drop_policy = MG_DROP_POSITION;
        v.T[v.n_T++] = 7;
        v.T[v.n_T++] = clamp_i(budget / ref_work_per_token(&v.spec), 16, 512);
        v.modes = 1 << MODE_RANDOM | 1 << MODE_DOMINANT | 1 << MODE_DEAD;
        rc = run_variant(&v, o, &seed, &s, err);
    }
    /* 4b. the same overflow dropped by probability. No all->e0 mode: there every weight of
     * expert 0 is 1 − O(1e-7) and fp32 cannot rank them as the fp64 reference does; the
     * dead-experts mode overflows the live experts about twofold instead. */
    if (!rc) {
        memset(&v, 0, sizeof v);
        snprintf(v.name, sizeof v.name, "capacity-prob");
        v.spec = *spec;
        shrink_dims(&v.spec);
        if (!(v.spec.moe.capacity_factor > 0)) v.spec.moe.capacity_factor = 1.0;
        v.spec.moe.drop_policy = MG_DROP_PROBABILITY;
        v.T[v.n_T++] = 7;
        v.T[v.n_T++] = clamp_i(budget / ref_work_per_token(&v.spec), 16, 512);
        v.modes = 1 << MODE_RANDOM | 1 << MODE_DEAD;
        rc = run_variant(&v, o, &seed, &s, err);
    }
    /* 5. a shared expert (when the spec has none) */
    if (!rc && spec->moe.shared_experts == 0) {
        memset(&v, 0, sizeof v);
        snprintf(v.name, sizeof v.name, "shared=1");
        v.spec = *spec;
        shrink_dims(&v.spec);
        v.spec.moe.shared_experts = 1;
        v.T[v.n_T++] = 7;
        v.T[v.n_T++] = clamp_i(budget / ref_work_per_token(&v.spec), 16, 512);
        v.modes = 1 << MODE_RANDOM;
        rc = run_variant(&v, o, &seed, &s, err);
    }
    /* 5b. a softmax selection bias (aux-loss-free balancing) when the spec trains none */
    if (!rc && spec->moe.router == MG_ROUTER_SOFTMAX_TOPK && !(spec->moe.bias_update_rate > 0)) {
        memset(&v, 0, sizeof v);
        snprintf(v.name, sizeof v.name, "softmax-bias");
        v.spec = *spec;
        shrink_dims(&v.spec);
        v.spec.moe.bias_update_rate = 1e-3;   /* only makes data_make draw a bias */
        v.T[v.n_T++] = 7;
        v.T[v.n_T++] = clamp_i(budget / ref_work_per_token(&v.spec), 16, 512);
        v.modes = 1 << MODE_RANDOM;
        rc = run_variant(&v, o, &seed, &s, err);
    }
lm_part:
    /* 6. the decoder-LM kernels (attention, RoPE, norms, embedding, loss, dropout, AdamW, utilities) */
    if (!rc && do_lm) rc = mg_lm_selftest(spec, o->arch, o->seed, &s.pass, &s.fail, err);
    /* 7. the GPU trainer's padded LM head, against the CPU trainer */
    if (!rc && do_lm) rc = head_checks(spec, &s, err);
    if (rc) {
        printf("selftest: stopped: %s\n", err->msg);
        return rc;
    }
    printf("selftest: %d passed, %d failed, %d skipped\n", s.pass, s.fail, s.skip);
    return s.fail ? MG_EUSER : MG_OK;
}
