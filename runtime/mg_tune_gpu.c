/* mg_tune_gpu: check and time one candidate configuration of a family on the GPU. */
#include "mg_tune_gpu.h"
#include "mg_cuda.h"
#include "mg_moe.h"
#include "mg_rng.h"
#include "mg_selftest.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_ROT 8
#define CPU_REF_WORK 6e9                     /* multiply-adds of the CPU reference, once per worker */
#define CPU_REF_BYTES (8.0 * (1 << 30))      /* its memory (fp64 weights + gradients + copies) */

struct mg_tune_gpu {
    mg_tune_gpu_cfg cfg;
    int d, ff, f2, E, k, S, esz, T_max;
    cudaStream_t stream;
    mg_check *check;
    char check_desc[96];
    /* timing data: n_rot input sets (and weight sets when the weights fit L2 several times) */
    int n_rot, n_wrot;
    void *x[MAX_ROT], *dy[MAX_ROT], *y, *dx;
    mg_moe_weights w[MAX_ROT];
    mg_moe_grads g;
};

const char *const mg_tune_dist_names[3] = {"balanced", "zipf", "one"};

/* ------------------------------------------------------------------ routing */
void mg_tune_route(mg_tune_dist dist, int T, int E, int k, unsigned long long seed, int *sel)
{
    mg_rng r;
    mg_rng_seed(&r, seed);
    double cdf[1024], z = 0;
    int En = E < 1024 ? E : 1024;
    for (int e = 0; e < En; e++) cdf[e] = (z += pow(e + 1.0, -1.2));
    for (int t = 0; t < T; t++) {
        int *s = sel + (long)t * k;
        for (int j = 0; j < k; j++) {
            if (dist == MG_DIST_ONE) { s[j] = j; continue; }
            if (dist == MG_DIST_BALANCED) { s[j] = (int)(((long)t * k + j) % E); continue; }
            int e = -1;
            for (int tries = 0; tries < 64 && e < 0; tries++) {   /* zipf, distinct per token */
                double u = mg_rng_unif(&r) * z;
                int c = 0;
                while (c < En - 1 && cdf[c] < u) c++;
                e = c;
                for (int q = 0; q < j; q++)
                    if (s[q] == c) e = -1;
            }
            for (int c = 0; e < 0 && c < E; c++) {   /* crowded: the first expert not taken */
                int taken = 0;
                for (int q = 0; q < j; q++) taken |= s[q] == c;
                if (!taken) e = c;
            }
            s[j] = e;
        }
    }
}

/* ------------------------------------------------------------------ data */
mg_tune_gpu *mg_tune_gpu_new(const mg_tune_gpu_cfg *cfg)
{
    mg_tune_gpu *g = calloc(1, sizeof *g);
    if (!g) return NULL;
    g->cfg = *cfg;
    const mg_spec *s = &cfg->spec;
    g->d = s->model.d_model;
    g->ff = s->moe.d_ff;
    g->f2 = g->ff * (mg_act_is_glu(s->moe.activation) ? 2 : 1);
    g->E = s->moe.experts;
    g->k = s->moe.top_k;
    g->S = s->moe.shared_experts;
    g->esz = mg_dtype_size(s->dtype);
    return g;
}

void mg_tune_gpu_free(mg_tune_gpu *g) { free(g); }   /* device memory dies with the worker */

static int dev_alloc(void **p, size_t bytes, char *msg, size_t n)
{
    cudaError_t e = cudaMalloc(p, bytes ? bytes : 1);
    if (e != cudaSuccess) {
        snprintf(msg, n, "cudaMalloc(%.1f MiB): %s", bytes / 1048576.0, cudaGetErrorString(e));
        return -1;
    }
    return 0;
}

/* n values of the spec's dtype, uniform in ±scale, from a host pattern of a prime-ish
 * period (2^22+3) repeated: distinct rows, no per-element host work for big weights. */
static int fill_pattern(void *dst, long n, int dtype, int esz, double scale, mg_rng *r, char *msg, size_t mn)
{
    if (n <= 0) return 0;
    const long P = (1L << 22) + 3, m = n < P ? n : P;
    float *h = malloc(sizeof *h * (size_t)m);
    void *hb = malloc((size_t)m * (size_t)esz);
    if (!h || !hb) { free(h); free(hb); snprintf(msg, mn, "out of host memory"); return -1; }
    for (long i = 0; i < m; i++) h[i] = (float)(scale * (2.0 * mg_rng_unif(r) - 1.0));
    mg_host_to_dtype(dtype, h, hb, m);
    cudaError_t e = cudaSuccess;
    for (long off = 0; off < n && e == cudaSuccess; off += m) {
        long c = n - off < m ? n - off : m;
        e = cudaMemcpy((char *)dst + off * esz, hb, (size_t)c * (size_t)esz, cudaMemcpyHostToDevice);
    }
    free(h);
    free(hb);
    if (e != cudaSuccess) { snprintf(msg, mn, "upload: %s", cudaGetErrorString(e)); return -1; }
    return 0;
}

/* x [T,d] and the router weight wg [E,d] so that token t picks exactly sel[t*k..]: feature
 * e of a token is 4 - 0.25·j when expert e is its j-th choice, else 0; wg has 2 on its
 * diagonal over the first E features and small noise elsewhere, so the chosen logits sit
 * ~4 above the rest. Needs d >= 2E; otherwise routing stays random (crafted = 0). */
static int upload_inputs(mg_tune_gpu *g, int set, mg_rng *r, int *crafted, char *msg, size_t mn)
{
    const int T = g->T_max, d = g->d, E = g->E, k = g->k, dt = g->cfg.spec.dtype;
    const long n = (long)T * d;
    float *h = malloc(sizeof *h * (size_t)n);
    int *sel = malloc(sizeof *sel * (size_t)T * (size_t)k);
    void *hb = malloc((size_t)n * (size_t)g->esz);
    if (!h || !sel || !hb) { free(h); free(sel); free(hb); snprintf(msg, mn, "out of host memory"); return -1; }
    for (long i = 0; i < n; i++) h[i] = (float)(1.7 * (2.0 * mg_rng_unif(r) - 1.0));
    *crafted = d >= 2 * E;
    if (*crafted) {
        mg_tune_route(g->cfg.dist, T, E, k, g->cfg.seed + 101u * (unsigned)set, sel);
        for (int t = 0; t < T; t++) {
            float *row = h + (long)t * d;
            for (int e = 0; e < E; e++) row[e] = 0.0f;
            for (int j = 0; j < k; j++) row[sel[(long)t * k + j]] = 4.0f - 0.25f * (float)j;
        }
    }
    mg_host_to_dtype(dt, h, hb, n);
    cudaError_t e = cudaMemcpy(g->x[set], hb, (size_t)n * (size_t)g->esz, cudaMemcpyHostToDevice);
    free(h);
    free(sel);
    free(hb);
    if (e != cudaSuccess) { snprintf(msg, mn, "upload x: %s", cudaGetErrorString(e)); return -1; }
    return fill_pattern(g->dy[set], n, dt, g->esz, 1.7, r, msg, mn);
}

static int upload_router(mg_tune_gpu *g, void *wg, int crafted, mg_rng *r, char *msg, size_t mn)
{
    const int d = g->d, E = g->E;
    float *h = malloc(sizeof *h * (size_t)E * (size_t)d);
    void *hb = malloc((size_t)E * (size_t)d * (size_t)g->esz);
    if (!h || !hb) { free(h); free(hb); snprintf(msg, mn, "out of host memory"); return -1; }
    for (long i = 0; i < (long)E * d; i++) h[i] = (float)((crafted ? 0.02 : 1.0) / sqrt(d) * (2.0 * mg_rng_unif(r) - 1.0));
    if (crafted)
        for (int e = 0; e < E; e++) {
            for (int i = 0; i < E; i++) h[(long)e * d + i] = 0.0f;
            h[(long)e * d + e] = 2.0f;
        }
    mg_host_to_dtype(g->cfg.spec.dtype, h, hb, (long)E * d);
    cudaError_t e = cudaMemcpy(wg, hb, (size_t)E * (size_t)d * (size_t)g->esz, cudaMemcpyHostToDevice);
    free(h);
    free(hb);
    if (e != cudaSuccess) { snprintf(msg, mn, "upload wg: %s", cudaGetErrorString(e)); return -1; }
    return 0;
}

/* CPU-reference multiply-adds per token (as in mg_selftest) and the reference's bytes. */
static double ref_work_per_token(const mg_tune_gpu *g)
{
    return 3.0 * ((g->k + g->S) * ((double)g->d * g->f2 + (double)g->ff * g->d) + (double)g->E * g->d);
}
static double ref_bytes(const mg_tune_gpu *g)
{
    return 40.0 * (g->E + g->S) * ((double)g->f2 * g->d + (double)g->d * g->ff);
}

int mg_tune_gpu_init(void *ctx, char *msg, size_t mn)
{
    mg_tune_gpu *g = ctx;
    const mg_spec *sp = &g->cfg.spec;
    mg_err err;
    mg_err_clear(&err);
    if (cudaSetDevice(0) != cudaSuccess || cudaStreamCreate(&g->stream) != cudaSuccess) {
        snprintf(msg, mn, "no usable CUDA device: %s", cudaGetErrorString(cudaGetLastError()));
        return -1;
    }
    /* the check: the CPU reference when affordable, else the rules' config on the GPU */
    const double wpt = ref_work_per_token(g);
    int T_cpu = (int)fmin(256.0, fmax(16.0, 2e9 / wpt));
    int cpu = wpt * T_cpu <= CPU_REF_WORK && ref_bytes(g) <= CPU_REF_BYTES;
    int T_chk = cpu ? T_cpu : (g->cfg.T < 2048 ? g->cfg.T : 2048);
    g->T_max = g->cfg.T > T_chk ? g->cfg.T : T_chk;
    mg_moe *ref = NULL;
    if (!cpu) {
        mg_plan plan;
        mg_moe_opts mo = {.arch = g->cfg.arch};
        if (mg_plan_make(sp, NULL, &plan, &err) || mg_moe_create(&plan, &mo, T_chk, &ref, &err)) {
            snprintf(msg, mn, "rules' layer: %.200s", err.msg);
            return -1;
        }
    }
    int rc = mg_check_make(sp, T_chk, 0, g->cfg.seed, ref, &g->check, &err);
    mg_moe_destroy(ref);
    if (rc) { snprintf(msg, mn, "check data: %.200s", err.msg); return -1; }
    snprintf(g->check_desc, sizeof g->check_desc, "checked vs %s at T=%d",
             cpu ? "the CPU reference" : "the rules' config on the GPU", T_chk);

    /* timing data */
    int l2 = 0, dev = 0;
    cudaGetDevice(&dev);
    cudaDeviceGetAttribute(&l2, cudaDevAttrL2CacheSize, dev);
    const size_t es = (size_t)g->esz, T = (size_t)g->T_max, d = (size_t)g->d, E = (size_t)g->E;
    const size_t n_up = E * g->f2 * d, n_dn = E * d * g->ff, S = (size_t)g->S;
    const double in_bytes = 2.0 * T * d * es, w_bytes = (double)(n_up + n_dn + S * (g->f2 * d + d * g->ff)) * es;
    g->n_rot = (int)fmin(MAX_ROT, fmax(2, ceil(2.0 * l2 / in_bytes)));
    g->n_wrot = w_bytes < 2.0 * l2 ? (int)fmin(MAX_ROT, ceil(2.0 * l2 / w_bytes)) : 1;
    mg_rng r;
    mg_rng_seed(&r, g->cfg.seed ^ 0x7475u);
    int crafted = 0;
    for (int i = 0; i < g->n_rot; i++) {
        if (dev_alloc(&g->x[i], T * d * es, msg, mn) || dev_alloc(&g->dy[i], T * d * es, msg, mn)) return -1;
        if (upload_inputs(g, i, &r, &crafted, msg, mn)) return -1;
    }
    for (int i = 0; i < g->n_wrot; i++) {
        mg_moe_weights *w = &g->w[i];
        void *wg, *up, *dn, *sup = NULL, *sdn = NULL;
        if (dev_alloc(&wg, E * d * es, msg, mn) || dev_alloc(&up, n_up * es, msg, mn) || dev_alloc(&dn, n_dn * es, msg, mn))
            return -1;
        if (S && (dev_alloc(&sup, S * g->f2 * d * es, msg, mn) || dev_alloc(&sdn, S * d * g->ff * es, msg, mn))) return -1;
        if (upload_router(g, wg, crafted, &r, msg, mn) ||
            fill_pattern(up, (long)n_up, sp->dtype, g->esz, 1.0 / sqrt((double)d), &r, msg, mn) ||
            fill_pattern(dn, (long)n_dn, sp->dtype, g->esz, 1.0 / sqrt((double)g->ff), &r, msg, mn))
            return -1;
        if (S && (fill_pattern(sup, (long)(S * g->f2 * d), sp->dtype, g->esz, 1.0 / sqrt((double)d), &r, msg, mn) ||
                  fill_pattern(sdn, (long)(S * d * g->ff), sp->dtype, g->esz, 1.0 / sqrt((double)g->ff), &r, msg, mn)))
            return -1;
        *w = (mg_moe_weights){wg, NULL, up, dn, sup, sdn};
    }
    for (int i = g->n_wrot; i < MAX_ROT; i++) g->w[i] = g->w[0];
    if (dev_alloc(&g->y, T * d * es, msg, mn) || dev_alloc(&g->dx, T * d * es, msg, mn) ||
        dev_alloc((void **)&g->g.dwg, E * d * 4, msg, mn) || dev_alloc((void **)&g->g.dw_up, n_up * 4, msg, mn) ||
        dev_alloc((void **)&g->g.dw_dn, n_dn * 4, msg, mn))
        return -1;
    if (S && (dev_alloc((void **)&g->g.dws_up, S * g->f2 * d * 4, msg, mn) ||
              dev_alloc((void **)&g->g.dws_dn, S * d * g->ff * 4, msg, mn)))
        return -1;
    if (!crafted && g->cfg.dist != MG_DIST_BALANCED)
        fprintf(stderr, "moegen: tune: d_model %d < 2 x experts %d: routing is random, not %s\n", g->d, g->E,
                mg_tune_dist_names[g->cfg.dist]);
    return 0;
}

/* ------------------------------------------------------------------ one candidate */
static int run_once(mg_tune_gpu *g, mg_moe *m, int i, mg_err *err)
{
    int s = i % g->n_rot;
    const mg_moe_weights *w = &g->w[i % g->n_wrot];
    int rc = mg_moe_forward(m, g->stream, w, g->x[s], g->y, g->cfg.T, err);
    if (!rc) rc = mg_moe_backward(m, g->stream, w, g->x[s], g->dy[s], g->dx, &g->g, g->cfg.T, err);
    return rc;
}

static int cmp_f(const void *a, const void *b)
{
    float x = *(const float *)a, y = *(const float *)b;
    return (x > y) - (x < y);
}

/* Warm-up, then `runs` event-bracketed runs enqueued back to back; median and min. */
static int time_layer(mg_tune_gpu *g, mg_moe *m, double *med, double *mn, mg_err *err)
{
    const int runs = g->cfg.runs;
    cudaEvent_t ev[2 * 64];
    float ms[64];
    int rc = MG_OK;
    for (int i = 0; i < g->cfg.warmup && !rc; i++) rc = run_once(g, m, i, err);
    if (rc) return rc;
    MG_CUDA_TRY(cudaStreamSynchronize(g->stream), err);
    for (int i = 0; i < 2 * runs; i++) MG_CUDA_TRY(cudaEventCreate(&ev[i]), err);
    for (int i = 0; i < runs && !rc; i++) {
        cudaEventRecord(ev[2 * i], g->stream);
        rc = run_once(g, m, i, err);
        cudaEventRecord(ev[2 * i + 1], g->stream);
    }
    cudaError_t e = cudaEventSynchronize(ev[2 * runs - 1]);
    for (int i = 0; i < runs && !rc && e == cudaSuccess; i++) e = cudaEventElapsedTime(&ms[i], ev[2 * i], ev[2 * i + 1]);
    for (int i = 0; i < 2 * runs; i++) cudaEventDestroy(ev[i]);
    if (rc) return rc;
    MG_CUDA_TRY(e, err);
    qsort(ms, (size_t)runs, sizeof *ms, cmp_f);
    *med = runs % 2 ? ms[runs / 2] : 0.5 * ((double)ms[runs / 2 - 1] + ms[runs / 2]);
    *mn = ms[0];
    return MG_OK;
}

/* 1 when the context is broken (a sticky error: the worker must be replaced). */
static int context_broken(void)
{
    cudaError_t e = cudaDeviceSynchronize();
    if (e == cudaSuccess) e = cudaGetLastError();
    return e != cudaSuccess;
}

int mg_tune_gpu_eval(void *ctx, mg_tune_cand *c)
{
    mg_tune_gpu *g = ctx;
    mg_err err;
    mg_err_clear(&err);
    mg_tile tiles[MG_FAM_COUNT];
    memset(tiles, 0, sizeof tiles);
    tiles[g->cfg.fam] = c->tile;
    mg_plan plan;
    mg_moe *m = NULL;
    mg_moe_opts mo = {.arch = g->cfg.arch, .jobs = 1};
    if (mg_plan_make(&g->cfg.spec, tiles, &plan, &err) || mg_moe_create(&plan, &mo, g->T_max, &m, &err)) {
        c->status = strstr(err.msg, "NVRTC") || strstr(err.msg, "nvrtc") ? MG_TUNE_COMPILE_ERROR : MG_TUNE_LAUNCH_ERROR;
        snprintf(c->reason, sizeof c->reason, "create: %.240s", err.msg);
        return context_broken();
    }
    int n_fail = 0;
    char what[160] = "";
    int rc = mg_check_run(g->check, m, 1, &n_fail, what, sizeof what, &err);
    if (rc) {
        c->status = MG_TUNE_LAUNCH_ERROR;
        snprintf(c->reason, sizeof c->reason, "check run: %.230s", err.msg);
    } else if (n_fail) {
        c->status = MG_TUNE_WRONG;
        snprintf(c->reason, sizeof c->reason, "%d checks failed, first %.120s (%.90s)", n_fail, what, g->check_desc);
    } else if ((rc = time_layer(g, m, &c->median_ms, &c->min_ms, &err))) {
        c->status = MG_TUNE_LAUNCH_ERROR;
        snprintf(c->reason, sizeof c->reason, "timing: %.240s", err.msg);
    } else {
        c->status = MG_TUNE_OK;
        c->runs = g->cfg.runs;
        snprintf(c->reason, sizeof c->reason, "%s; %d input sets, %d weight sets rotated", g->check_desc, g->n_rot,
                 g->n_wrot);
    }
    int broken = c->status != MG_TUNE_OK && c->status != MG_TUNE_WRONG && context_broken();
    if (!broken) mg_moe_destroy(m);
    return broken;
}
