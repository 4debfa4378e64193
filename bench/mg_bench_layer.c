/* mg_bench_layer: times the generated MoE layer (router + dispatch + expert GEMMs + combine,
 * forward and backward) at bf16 on the four benchmark shapes of the kernels issue.
 *
 * FLOPs counted are the expert GEMMs only, 3·(2·T·k·d·2ff + 2·T·k·ff·d) for fwd+bwd (SwiGLU),
 * the same formula as mg_bench_dense and bench/peer_torch.py, so TFLOP/s compare directly.
 * Data: random (never zeros), x ~ N(0,1), weights ~ U(-1,1)/sqrt(fan_in), a fresh seed per
 * run (printed). Outputs are poisoned before the first run and checked finite after.
 *
 * Usage: mg_bench_layer [--shape NAME] [--runs N] [--warmup N] [--seed S] [--csv FILE] [--rules]
 * Tiles come from the tuning database (moegen tune) for this GPU when it has an entry, else
 * from the generator's rules; --rules forces the rules, for tuned-vs-default comparisons. */
#include "mg_bench_timer.h"
#include "mg_moe.h"
#include "mg_plan.h"
#include "mg_rng.h"
#include "mg_spec.h"
#include "mg_tune_db.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "mg_bench_shapes.h"



/* A device buffer of n bf16 values filled from a host pattern of random values whose
 * period (2^22+3) is prime to every row length, so no two rows are equal. */
static void *rand_dev(long n, double scale, mg_rng *r)
{
    const long P = (1L << 22) + 3;
    long m = n < P ? n : P;
    float *h = malloc(m * sizeof *h);
    uint16_t *hb = malloc(m * sizeof *hb);
    if (!h || !hb || m <= 0) { fprintf(stderr, "mg_bench_layer: out of host memory\n"); exit(2); }
    for (long i = 0; i < m; i++) {
        double v = scale * (2.0 * mg_rng_unif(r) - 1.0);
        if (v == 0) v = scale * 1e-3;
        h[i] = (float)v;
    }
    mg_host_to_dtype(MG_DTYPE_BF16, h, hb, m);
    void *d;
    mg_cuda_check(cudaMalloc(&d, n * 2));
    for (long off = 0; off < n; off += m) {
        long c = n - off < m ? n - off : m;
        mg_cuda_check(cudaMemcpy((char *)d + off * 2, hb, c * 2, cudaMemcpyHostToDevice));
    }
    free(h);
    free(hb);
    return d;
}

typedef struct layer_ctx {
    mg_moe *m;
    mg_moe_weights w;
    mg_moe_grads g;
    void *x, *y, *dy, *dx;
    int T, mode;   /* 0 fwd+bwd, 1 fwd, 2 bwd */
} layer_ctx;

static void run_layer(void *p, cudaStream_t s)
{
    layer_ctx *c = p;
    mg_err err;
    int rc = 0;
    if (c->mode != 2) rc = mg_moe_forward(c->m, s, &c->w, c->x, c->y, c->T, &err);
    if (!rc && c->mode != 1) rc = mg_moe_backward(c->m, s, &c->w, c->x, c->dy, c->dx, &c->g, c->T, &err);
    if (rc) { fprintf(stderr, "mg_bench_layer: %s\n", err.msg); exit(2); }
}

static int all_finite(const void *dev, long n)
{
    uint16_t *h = malloc(n * 2);
    float *f = malloc(n * sizeof *f);
    mg_cuda_check(cudaMemcpy(h, dev, n * 2, cudaMemcpyDeviceToHost));
    mg_host_from_dtype(MG_DTYPE_BF16, h, f, n);
    int ok = 1;
    for (long i = 0; i < n && ok; i++) ok = isfinite(f[i]);
    free(h);
    free(f);
    return ok;
}

/* 1: ignore the tuning database and use the generator's rules (--rules). */
static int use_rules;

static int bench_one(const bench_shape *sh, const mg_bench_opts *bo, unsigned long long seed, FILE *csv)
{
    char lua[1024];
    snprintf(lua, sizeof lua,
             "return { name = 'bench-%s', model = { vocab = 32000, d_model = %d, n_layer = 1, n_head = %d, seq_len = 2048 },"
             " moe = { experts = %d, top_k = %d, d_ff = %d, activation = 'swiglu', router = 'softmax_topk',"
             " renormalize = true, aux_loss = 0.01, z_loss = 0.001 }, dtype = 'bf16' }",
             sh->name, sh->d, sh->d / 128, sh->E, sh->k, sh->ff);
    mg_spec spec;
    mg_plan plan;
    mg_err err;
    /* Tiles: the tuning database's winner for this GPU and T when there is one, else the rules;
     * one "tuning:" line per family says which. */
    struct cudaDeviceProp prop;
    mg_cuda_check(cudaGetDeviceProperties(&prop, 0));
    mg_tune_lookup tl = {.gpu = prop.name, .T = sh->T, .rules_only = use_rules, .log = stdout};
    if (mg_spec_load_string("bench", lua, strlen(lua), &spec, &err) || mg_tune_plan_make(&spec, &tl, &plan, &err)) {
        fprintf(stderr, "mg_bench_layer: %s\n", err.msg);
        return 1;
    }
    layer_ctx c = {.T = sh->T};
    mg_moe_opts mo = {0};
    if (mg_moe_create(&plan, &mo, sh->T, &c.m, &err)) { fprintf(stderr, "mg_bench_layer: %s\n", err.msg); return 1; }
    mg_rng r;
    mg_rng_seed(&r, seed);
    long F2 = 2L * sh->ff, Td = (long)sh->T * sh->d;
    c.w.wg = rand_dev((long)sh->E * sh->d, 1.0 / sqrt(sh->d), &r);
    c.w.w_up = rand_dev((long)sh->E * F2 * sh->d, 1.0 / sqrt(sh->d), &r);
    c.w.w_dn = rand_dev((long)sh->E * sh->d * sh->ff, 1.0 / sqrt(sh->ff), &r);
    c.x = rand_dev(Td, 1.7, &r);
    c.dy = rand_dev(Td, 1.7, &r);
    mg_cuda_check(cudaMalloc(&c.y, Td * 2));
    mg_cuda_check(cudaMalloc(&c.dx, Td * 2));
    mg_cuda_check(cudaMemset(c.y, 0xFF, Td * 2));
    mg_cuda_check(cudaMemset(c.dx, 0xFF, Td * 2));
    mg_cuda_check(cudaMalloc((void **)&c.g.dwg, (long)sh->E * sh->d * 4));
    mg_cuda_check(cudaMalloc((void **)&c.g.dw_up, (long)sh->E * F2 * sh->d * 4));
    mg_cuda_check(cudaMalloc((void **)&c.g.dw_dn, (long)sh->E * sh->d * sh->ff * 4));
    cudaStream_t s;
    mg_cuda_check(cudaStreamCreate(&s));
    double flop = expert_flop(sh);
    const char *modes[] = {"fwd+bwd", "fwd", "bwd"};
    double fb_ms = 0;
    for (int mode = 0; mode < 3; mode++) {
        c.mode = mode;
        if (mode == 2) { c.mode = 1; run_layer(&c, s); c.mode = 2; }  /* bwd needs a fwd first */
        mg_bench_result res = mg_bench_time(run_layer, &c, s, bo);
        double f = mode == 0 ? flop : mode == 1 ? flop / 3 : flop * 2 / 3;
        if (mode == 0) fb_ms = res.median_ms;
        printf("%-12s %-8s T=%-6d d=%-5d ff=%-6d E=%-4d k=%d  median %8.3f ms  min %8.3f  %6.1f TFLOP/s\n", sh->name,
               modes[mode], sh->T, sh->d, sh->ff, sh->E, sh->k, res.median_ms, res.min_ms,
               mg_bench_tflops(f, res.median_ms));
        if (csv)
            fprintf(csv, "%s,%s,%d,%d,%d,%d,%d,%.0f,%d,%.4f,%.4f,%.2f\n", sh->name, modes[mode], sh->T, sh->d, sh->ff,
                    sh->E, sh->k, f, res.runs, res.median_ms, res.min_ms, mg_bench_tflops(f, res.median_ms));
    }
    mg_cuda_check(cudaStreamSynchronize(s));
    int ok = all_finite(c.y, Td) && all_finite(c.dx, Td);
    if (!ok) printf("%-12s ERROR: non-finite values in y or dx\n", sh->name);
    printf("%-12s summary  fwd+bwd %.3f ms = %.1f TFLOP/s (expert GEMMs)\n", sh->name, fb_ms, mg_bench_tflops(flop, fb_ms));
    cudaFree((void *)c.w.wg); cudaFree((void *)c.w.w_up); cudaFree((void *)c.w.w_dn);
    cudaFree(c.x); cudaFree(c.dy); cudaFree(c.y); cudaFree(c.dx);
    cudaFree(c.g.dwg); cudaFree(c.g.dw_up); cudaFree(c.g.dw_dn);
    cudaStreamDestroy(s);
    mg_moe_destroy(c.m);
    return ok ? 0 : 1;
}

int main(int argc, char **argv)
{
    mg_bench_opts bo = mg_bench_defaults();
    bo.runs = 20;
    const char *only = NULL, *csv_path = NULL;
    unsigned long long seed = (unsigned long long)time(NULL);
    for (int i = 1; i < argc; i++) {
        int more = i + 1 < argc;
        if (!strcmp(argv[i], "--shape") && more) only = argv[++i];
        else if (!strcmp(argv[i], "--runs") && more) bo.runs = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--warmup") && more) bo.warmup = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--seed") && more) seed = strtoull(argv[++i], NULL, 10);
        else if (!strcmp(argv[i], "--csv") && more) csv_path = argv[++i];
        else if (!strcmp(argv[i], "--rules")) use_rules = 1;
        else {
            fprintf(stderr, "usage: mg_bench_layer [--shape mixtral|olmoe|finegrained|small] [--runs N] [--warmup N] "
                            "[--seed S] [--csv FILE] [--rules]\n");
            return 1;
        }
    }
    if (!mg_bench_has_device()) { printf("skipped: no CUDA device\n"); return 0; }
    struct cudaDeviceProp p;
    mg_cuda_check(cudaGetDeviceProperties(&p, 0));
    printf("mg_bench_layer: %s, %d SMs, seed %llu, %d runs (median), %d warm-up\n", p.name, p.multiProcessorCount,
           seed, bo.runs, bo.warmup);
    FILE *csv = csv_path ? fopen(csv_path, "w") : NULL;
    if (csv) fprintf(csv, "shape,mode,T,d,ff,E,k,flop,runs,median_ms,min_ms,tflops\n");
    int fails = 0;
    for (int i = 0; i < NSHAPES; i++)
        if (!only || !strcmp(only, SHAPES[i].name)) fails += bench_one(&SHAPES[i], &bo, seed + i, csv);
    if (csv) fclose(csv);
    return fails ? 1 : 0;
}
