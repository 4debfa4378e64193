/* mg_bench_bundle: a bundle's forward/backward against the same kernels inside moegen.
 *
 * Links libmoegen and a bundle of the same spec (the Makefile generates it: build/bench/
 * moe_<id>/). Both sides load the same cubin for the device (mg_moe compiles it with NVRTC,
 * the bundle embeds it), run on the same random data, and must give bitwise-identical y, dx
 * and weight gradients; then forward and backward are timed alternately (rounds of
 * mg_bench_time medians) and the bundle must be within --tol (default 2%) of moegen.
 *
 * Build: make bench   (BUNDLE_SPEC=specs/wt2-moe8.lua by default; the spec may not have
 *        shared experts or a router bias)
 * usage: mg_bench_bundle [--tokens T] [--runs N] [--rounds R] [--tol 0.02] [--seed S] */
#include "mg_bench_timer.h"
#include "mg_moe.h"
#include "mg_plan.h"
#include "mg_rng.h"
#include "mg_spec.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#if !defined(MOE_ID) || !defined(MOE_UID) || !defined(MOE_SPEC)
#error "build with -DMOE_ID=<id> -DMOE_UID=<ID> -DMOE_SPEC=\"specs/x.lua\" and the bundle's directory on -I (make bench)"
#endif
#define MOE_CAT_(a, b) a##b
#define MOE_CAT(a, b) MOE_CAT_(a, b)
#define MOE_STR_(a) #a
#define MOE_STR(a) MOE_STR_(a)
#define BFN(f) MOE_CAT(MOE_CAT(moe_, MOE_ID), _##f)
#define BDEF(c) MOE_CAT(MOE_CAT(MOE_, MOE_UID), _##c)
#include MOE_STR(MOE_CAT(moe_, MOE_ID).h)
#if BDEF(SHARED) || BDEF(ROUTER_BIAS)
#error "mg_bench_bundle takes a spec without shared experts or router bias"
#endif
typedef MOE_CAT(moe_, MOE_ID) bundle_t;

typedef struct ctx {
    mg_moe *m;
    bundle_t *b;
    mg_moe_weights w;
    mg_moe_grads g;
    void *x, *dy, *y, *dx, *ws;
    int T, which, mode;   /* which: 0 moegen, 1 bundle; mode: 0 fwd, 1 bwd */
} ctx;

static void run(void *p, cudaStream_t s)
{
    ctx *c = p;
    mg_err err;
    int rc;
    if (c->which == 0)
        rc = c->mode == 0 ? mg_moe_forward(c->m, s, &c->w, c->x, c->y, c->T, &err)
                          : mg_moe_backward(c->m, s, &c->w, c->x, c->dy, c->dx, &c->g, c->T, &err);
    else
        rc = c->mode == 0 ? BFN(forward)(c->b, s, c->x, c->w.wg, c->w.w_up, c->w.w_dn, c->y, c->ws, c->T)
                          : BFN(backward)(c->b, s, c->x, c->w.wg, c->w.w_up, c->w.w_dn, c->dy, c->dx, c->g.dwg,
                                          c->g.dw_up, c->g.dw_dn, c->ws, c->T);
    if (rc) {
        fprintf(stderr, "mg_bench_bundle: %s: %s\n", c->which ? "bundle" : "moegen",
                c->which ? BFN(last_error)(c->b) : err.msg);
        exit(2);
    }
}

static void *rand_dev(int dtype, long n, double scale, mg_rng *r)
{
    float *h = malloc((size_t)n * 4);
    void *st = malloc((size_t)n * 4), *d;
    for (long i = 0; i < n; i++) h[i] = (float)(scale * (2.0 * mg_rng_unif(r) - 1.0));
    mg_host_to_dtype(dtype, h, st, n);
    mg_cuda_check(cudaMalloc(&d, (size_t)n * mg_dtype_size(dtype)));
    mg_cuda_check(cudaMemcpy(d, st, (size_t)n * mg_dtype_size(dtype), cudaMemcpyHostToDevice));
    free(h), free(st);
    return d;
}

/* One pass of both sides on the same inputs; returns 1 when every output is bitwise equal. */
typedef struct outs { void *y, *dx; float *dwg, *dwup, *dwdn; } outs;
static void *to_host(const void *d, size_t n)
{
    void *h = malloc(n);
    mg_cuda_check(cudaMemcpy(h, d, n, cudaMemcpyDeviceToHost));
    return h;
}
static int same(const char *what, const void *a, const void *b, size_t n)
{
    size_t i = 0;
    const unsigned char *p = a, *q = b;
    while (i < n && p[i] == q[i]) i++;
    printf("  %-8s %s\n", what, i == n ? "bitwise identical" : "DIFFERENT");
    if (i < n) printf("           first differing byte %zu of %zu\n", i, n);
    return i == n;
}

int main(int argc, char **argv)
{
    int T = 0, rounds = 5;
    double tol = 0.02;
    unsigned long long seed = 1;
    mg_bench_opts bo = mg_bench_defaults();
    bo.runs = 30;
    for (int i = 1; i < argc; i++) {
        int more = i + 1 < argc;
        if (!strcmp(argv[i], "--tokens") && more) T = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--runs") && more) bo.runs = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--rounds") && more) rounds = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--tol") && more) tol = atof(argv[++i]);
        else if (!strcmp(argv[i], "--seed") && more) seed = strtoull(argv[++i], NULL, 10);
        else {
            fprintf(stderr, "usage: mg_bench_bundle [--tokens T] [--runs N] [--rounds R] [--tol F] [--seed S]\n");
            return 1;
        }
    }
    mg_spec spec;
    mg_plan plan;
    mg_err err;
    if (mg_spec_load(MOE_SPEC, &spec, &err) || mg_plan_make(&spec, NULL, &plan, &err)) {
        fprintf(stderr, "mg_bench_bundle: %s\n", err.msg);
        return 1;
    }
    if (strcmp(plan.spec_hash, BDEF(SPEC_SHA256))) {
        fprintf(stderr, "mg_bench_bundle: the bundle was made from another version of %s: make bench\n", MOE_SPEC);
        return 1;
    }
    if (!mg_bench_has_device()) { printf("skipped: no CUDA device\n"); return 0; }
    if (T <= 0) T = spec.train.batch * spec.model.seq_len;

    ctx c = {.T = T};
    if (mg_moe_create(&plan, NULL, T, &c.m, &err)) { fprintf(stderr, "mg_bench_bundle: %s\n", err.msg); return 1; }
    char why[256] = "";
    MOE_CAT(MOE_CAT(moe_, MOE_ID), _config) cfg = {-1, NULL, why, sizeof why};
    int st = BFN(create)(&c.b, &cfg);
    if (st) { fprintf(stderr, "mg_bench_bundle: bundle create: %s: %s\n", BFN(strerror)(st), why); return 1; }
    struct cudaDeviceProp p;
    mg_cuda_check(cudaGetDeviceProperties(&p, 0));
    printf("mg_bench_bundle: %s (%s), %s T=%d, bundle image %s, %d runs x %d rounds, tol %.1f%%\n", p.name,
           MOE_SPEC, spec.name, T, BFN(image)(c.b), bo.runs, rounds, 100 * tol);

    const int dt = spec.dtype, d = spec.model.d_model, ff = spec.moe.d_ff, E = spec.moe.experts;
    const int f2 = ff * (mg_act_is_glu(spec.moe.activation) ? 2 : 1);
    const size_t es = (size_t)mg_dtype_size(dt), ny = (size_t)T * d * es;
    mg_rng r;
    mg_rng_seed(&r, seed);
    c.w.wg = rand_dev(dt, (long)E * d, 1 / sqrt(d), &r);
    c.w.w_up = rand_dev(dt, (long)E * f2 * d, 1 / sqrt(d), &r);
    c.w.w_dn = rand_dev(dt, (long)E * d * ff, 1 / sqrt(ff), &r);
    c.x = rand_dev(dt, (long)T * d, 1.0, &r);
    c.dy = rand_dev(dt, (long)T * d, 1.0, &r);
    const size_t nwg = (size_t)E * d * 4, nup = (size_t)E * f2 * d * 4, ndn = (size_t)E * d * ff * 4;
    mg_cuda_check(cudaMalloc(&c.y, ny));
    mg_cuda_check(cudaMalloc(&c.dx, ny));
    mg_cuda_check(cudaMalloc((void **)&c.g.dwg, nwg));
    mg_cuda_check(cudaMalloc((void **)&c.g.dw_up, nup));
    mg_cuda_check(cudaMalloc((void **)&c.g.dw_dn, ndn));
    mg_cuda_check(cudaMalloc(&c.ws, BFN(workspace_size)(c.b, T)));
    cudaStream_t s;
    mg_cuda_check(cudaStreamCreate(&s));

    /* same kernels, same inputs: same bits */
    outs o[2];
    for (int which = 0; which < 2; which++) {
        c.which = which;
        c.mode = 0, run(&c, s);
        c.mode = 1, run(&c, s);
        mg_cuda_check(cudaStreamSynchronize(s));
        o[which] = (outs){to_host(c.y, ny), to_host(c.dx, ny), to_host(c.g.dwg, nwg), to_host(c.g.dw_up, nup),
                          to_host(c.g.dw_dn, ndn)};
    }
    int ok = same("y", o[0].y, o[1].y, ny) & same("dx", o[0].dx, o[1].dx, ny) &
             same("d_wg", o[0].dwg, o[1].dwg, nwg) & same("d_w_up", o[0].dwup, o[1].dwup, nup) &
             same("d_w_down", o[0].dwdn, o[1].dwdn, ndn);

    /* alternate sides and modes each round; keep the best median of each */
    double best[2][2] = {{1e30, 1e30}, {1e30, 1e30}};
    for (int k = 0; k < rounds; k++)
        for (int mode = 0; mode < 2; mode++)
            for (int w = 0; w < 2; w++) {
                c.which = (k & 1) ? 1 - w : w, c.mode = mode;
                mg_bench_result res = mg_bench_time(run, &c, s, &bo);
                if (res.median_ms < best[c.which][mode]) best[c.which][mode] = res.median_ms;
            }
    const char *names[2] = {"forward", "backward"};
    for (int mode = 0; mode < 2; mode++) {
        double ratio = best[1][mode] / best[0][mode];
        int in = ratio <= 1 + tol;
        ok &= in;
        printf("  %-8s moegen %8.4f ms  bundle %8.4f ms  bundle/moegen %.4f  %s\n", names[mode], best[0][mode],
               best[1][mode], ratio, in ? "ok" : "SLOWER than tolerance");
    }
    printf("mg_bench_bundle: %s\n", ok ? "PASS" : "FAIL");
    for (int w = 0; w < 2; w++) free(o[w].y), free(o[w].dx), free(o[w].dwg), free(o[w].dwup), free(o[w].dwdn);
    cudaFree((void *)c.w.wg), cudaFree((void *)c.w.w_up), cudaFree((void *)c.w.w_dn), cudaFree(c.x), cudaFree(c.dy);
    cudaFree(c.y), cudaFree(c.dx), cudaFree(c.g.dwg), cudaFree(c.g.dw_up), cudaFree(c.g.dw_dn), cudaFree(c.ws);
    cudaStreamDestroy(s);
    BFN(destroy)(c.b);
    mg_moe_destroy(c.m);
    return ok ? 0 : 1;
}
