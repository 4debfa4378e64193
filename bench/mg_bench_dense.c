/* mg_bench_dense: the cuBLASLt ceiling for an MoE layer's expert GEMMs ("dense same-FLOP chain").
 *
 * For each bench shape, every one of the T·k routed rows is sent to one big expert, and the
 * six GEMMs of a SwiGLU expert MLP's forward and backward run back to back through mg_blas
 * (bf16 in, fp32 accumulate, bf16 out; weight gradients fp32 out). With M = T·k (row-major,
 * W1 [2ff,d] and W2 [d,ff] in nn.Linear layout):
 *
 *   fwd.up        H [M,2ff] = X [M,d]    · W1ᵀ          2·M·d·2ff
 *   fwd.down      Y [M,d]   = A [M,ff]   · W2ᵀ          2·M·ff·d
 *   bwd.down.dX   dA[M,ff]  = dY[M,d]    · W2           2·M·d·ff
 *   bwd.down.dW   dW2[d,ff] = dYᵀ        · A            2·M·d·ff
 *   bwd.up.dX     dX[M,d]   = dH[M,2ff]  · W1           2·M·2ff·d
 *   bwd.up.dW     dW1[2ff,d]= dHᵀ        · X            2·M·2ff·d
 *
 * Total = 3·(2·T·k·d·2ff + 2·T·k·ff·d), the expert-GEMM FLOPs of a fwd+bwd MoE layer. A
 * generated layer that reaches this time does its grouped GEMMs as well as one dense GEMM of
 * the same size, with routing, permutation and SwiGLU for free. The card's two ceilings are
 * printed too: device-to-device copy bandwidth and a square 8192³ bf16 GEMM.
 *
 * Usage: mg_bench_dense [--csv FILE] [--runs N] [--warmup N] [--shape NAME] [--flush]
 * With no CUDA device it prints "skipped: no CUDA device" and exits 0. */

/* ---- includes ---------------------------------------------------------------------------- */
#include "mg_blas.h"          /* mg_blas_gemm, mg_cublas_check, mg_cuda_check */
#include "mg_rng.h"           /* deterministic random data */
#include "mg_bench_timer.h"   /* mg_bench_time: events, warm-up, median */

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define SEED 1234

/* ---- shapes ------------------------------------------------------------------------------ */

#include "mg_bench_shapes.h"

/* ---- device buffers with random bf16 data ------------------------------------------------ */

static uint16_t f32_to_bf16(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    u += 0x7fffu + ((u >> 16) & 1u);   /* round to nearest even; data is finite */
    return (uint16_t)(u >> 16);
}

static void *dev_alloc(size_t bytes)
{
    void *p = NULL;
    mg_cuda_check(cudaMalloc(&p, bytes));
    return p;
}

/* Fills n bf16 values with N(0,1)·scale. A random block of PERIOD values (an odd length, so
 * rows never repeat in step) is uploaded and then doubled on the device: fast for GiB buffers,
 * and never zeros (zeros would flatter the tensor cores' power draw). */
#define PERIOD ((1u << 20) + 7u)
static void fill_bf16(void *dst, size_t n, float scale, mg_rng *r)
{
    if (n == 0) return;
    size_t first = n < PERIOD ? n : PERIOD;
    uint16_t *h = calloc(first, sizeof *h);
    if (!h) { fprintf(stderr, "mg_bench_dense: out of host memory\n"); exit(EXIT_FAILURE); }
    for (size_t i = 0; i < first; i++) {
        uint16_t v = f32_to_bf16((float)mg_rng_normal(r) * scale);
        h[i] = (v & 0x7fffu) ? v : 0x3c00u;   /* no ±0: 2^-7 instead */
    }
    mg_cuda_check(cudaMemcpy(dst, h, first * sizeof *h, cudaMemcpyHostToDevice));
    free(h);
    for (size_t done = first; done < n;) {
        size_t c = done < n - done ? done : n - done;
        mg_cuda_check(cudaMemcpy((uint16_t *)dst + done, dst, c * sizeof(uint16_t),
                                 cudaMemcpyDeviceToDevice));
        done += c;
    }
}

/* ---- one GEMM of a chain, and timing callbacks ------------------------------------------- */

typedef struct gemm_op {
    const char *name;
    int ta, tb, m, n, k;
    const void *A; int lda;
    const void *B; int ldb;
    void *C; int ldc;
    mg_blas_type type;
} gemm_op;

static double gemm_flop(const gemm_op *g) { return 2.0 * g->m * (double)g->n * g->k; }

typedef struct chain_ctx {
    mg_blas *blas;
    const gemm_op *ops;
    int n;
} chain_ctx;

static void run_chain(void *p, cudaStream_t s)
{
    chain_ctx *c = p;
    mg_err e = {0};
    for (int i = 0; i < c->n; i++) {
        const gemm_op *g = &c->ops[i];
        mg_blas_ok(mg_blas_gemm(c->blas, s, g->ta, g->tb, g->m, g->n, g->k, 1.f, g->A, g->lda,
                                g->B, g->ldb, 0.f, g->C, g->ldc, g->type, &e), &e);
    }
}

typedef struct copy_ctx {
    void *dst;
    const void *src;
    size_t bytes;
} copy_ctx;

static void run_copy(void *p, cudaStream_t s)
{
    copy_ctx *c = p;
    mg_cuda_check(cudaMemcpyAsync(c->dst, c->src, c->bytes, cudaMemcpyDeviceToDevice, s));
}

/* ---- output: a human table on stdout, CSV rows to --csv FILE or at the end of stdout ----- */

typedef struct csv_row {
    char kind[16], name[48];
    int T, d, ff, E, k;
    double flop, bytes;
    int runs;
    double median_ms, min_ms, tflops, gbs;
} csv_row;

#define MAX_ROWS 64
static csv_row g_rows[MAX_ROWS];
static int g_nrows;

static void add_row(const char *kind, const char *name, const bench_shape *s, double flop,
                    double bytes, const mg_bench_result *r)
{
    if (g_nrows == MAX_ROWS) return;
    csv_row *w = &g_rows[g_nrows++];
    memset(w, 0, sizeof *w);
    snprintf(w->kind, sizeof w->kind, "%s", kind);
    snprintf(w->name, sizeof w->name, "%s", name);
    if (s) { w->T = s->T; w->d = s->d; w->ff = s->ff; w->E = s->E; w->k = s->k; }
    w->flop = flop;
    w->bytes = bytes;
    w->runs = r->runs;
    w->median_ms = r->median_ms;
    w->min_ms = r->min_ms;
    w->tflops = flop > 0 ? mg_bench_tflops(flop, r->median_ms) : 0;
    w->gbs = bytes > 0 ? mg_bench_gbs(bytes, r->median_ms) : 0;
}

static void write_csv(FILE *f, const char *device)
{
    fprintf(f, "device,kind,name,T,d,ff,E,k,flop,bytes,runs,median_ms,min_ms,tflops,gbs\n");
    for (int i = 0; i < g_nrows; i++) {
        const csv_row *w = &g_rows[i];
        fprintf(f, "%s,%s,%s,%d,%d,%d,%d,%d,%.0f,%.0f,%d,%.4f,%.4f,%.2f,%.1f\n", device, w->kind,
                w->name, w->T, w->d, w->ff, w->E, w->k, w->flop, w->bytes, w->runs, w->median_ms,
                w->min_ms, w->tflops, w->gbs);
    }
}

/* ---- the benchmarks ---------------------------------------------------------------------- */

static void bench_copy(cudaStream_t s, const mg_bench_opts *o)
{
    size_t bytes = (size_t)1 << 30;
    copy_ctx c = {dev_alloc(bytes), dev_alloc(bytes), bytes};
    mg_rng r;
    mg_rng_seed(&r, SEED);
    fill_bf16((void *)c.src, bytes / 2, 1.f, &r);
    mg_bench_result res = mg_bench_time(run_copy, &c, s, o);
    /* A copy reads and writes every byte: HBM traffic is 2× the size copied. */
    double traffic = 2.0 * (double)bytes;
    printf("d2d copy      1 GiB       %8.3f ms   %7.1f GB/s read+write (%.1f GB/s copied)\n",
           res.median_ms, mg_bench_gbs(traffic, res.median_ms),
           mg_bench_gbs((double)bytes, res.median_ms));
    add_row("ceiling", "d2d_copy_rw", NULL, 0, traffic, &res);
    mg_cuda_check(cudaFree(c.dst));
    mg_cuda_check(cudaFree((void *)c.src));
}

static void bench_square(mg_blas *blas, cudaStream_t s, const mg_bench_opts *o)
{
    const int N = 8192;
    size_t n2 = (size_t)N * N;
    void *A = dev_alloc(n2 * 2), *B = dev_alloc(n2 * 2), *C = dev_alloc(n2 * 2);
    mg_rng r;
    mg_rng_seed(&r, SEED + 1);
    fill_bf16(A, n2, 1.f, &r);
    fill_bf16(B, n2, 1.f, &r);
    /* C = A · Bᵀ, both operands K-contiguous (the layout of a linear layer). */
    gemm_op g = {"gemm8192", 0, 1, N, N, N, A, N, B, N, C, N, MG_BLAS_BF16};
    chain_ctx c = {blas, &g, 1};
    mg_bench_result res = mg_bench_time(run_chain, &c, s, o);
    printf("bf16 gemm     8192³       %8.3f ms   %7.1f TFLOP/s\n", res.median_ms,
           mg_bench_tflops(gemm_flop(&g), res.median_ms));
    add_row("ceiling", "gemm_bf16_8192", NULL, gemm_flop(&g), 0, &res);
    mg_cuda_check(cudaFree(A));
    mg_cuda_check(cudaFree(B));
    mg_cuda_check(cudaFree(C));
}

static void bench_shape_chain(mg_blas *blas, cudaStream_t s, const bench_shape *sh,
                              const mg_bench_opts *o)
{
    const int M = sh->T * sh->k, d = sh->d, ff = sh->ff, f2 = 2 * sh->ff;
    const size_t Md = (size_t)M * d, Mf = (size_t)M * ff, Mf2 = (size_t)M * f2;
    const size_t W1n = (size_t)f2 * d, W2n = (size_t)d * ff;

    void *X = dev_alloc(Md * 2), *W1 = dev_alloc(W1n * 2), *H = dev_alloc(Mf2 * 2);
    void *A = dev_alloc(Mf * 2), *W2 = dev_alloc(W2n * 2), *Y = dev_alloc(Md * 2);
    void *dY = dev_alloc(Md * 2), *dA = dev_alloc(Mf * 2), *dH = dev_alloc(Mf2 * 2);
    void *dX = dev_alloc(Md * 2), *dW1 = dev_alloc(W1n * 4), *dW2 = dev_alloc(W2n * 4);

    /* Unit-variance activations and 1/√fan_in weights keep every output well inside bf16. */
    mg_rng r;
    mg_rng_seed(&r, SEED + 2);
    fill_bf16(X, Md, 1.f, &r);
    fill_bf16(A, Mf, 1.f, &r);
    fill_bf16(dY, Md, 1.f, &r);
    fill_bf16(dH, Mf2, 1.f, &r);
    fill_bf16(W1, W1n, 1.f / sqrtf((float)d), &r);
    fill_bf16(W2, W2n, 1.f / sqrtf((float)ff), &r);

    const gemm_op ops[6] = {
        {"fwd.up", 0, 1, M, f2, d, X, d, W1, d, H, f2, MG_BLAS_BF16},
        {"fwd.down", 0, 1, M, d, ff, A, ff, W2, ff, Y, d, MG_BLAS_BF16},
        {"bwd.down.dX", 0, 0, M, ff, d, dY, d, W2, ff, dA, ff, MG_BLAS_BF16},
        {"bwd.down.dW", 1, 0, d, ff, M, dY, d, A, ff, dW2, ff, MG_BLAS_BF16_F32},
        {"bwd.up.dX", 0, 0, M, d, f2, dH, f2, W1, d, dX, d, MG_BLAS_BF16},
        {"bwd.up.dW", 1, 0, f2, d, M, dH, f2, X, d, dW1, d, MG_BLAS_BF16_F32},
    };
    double flop = 0;
    for (int i = 0; i < 6; i++) flop += gemm_flop(&ops[i]);
    if (flop != expert_flop(sh)) {
        fprintf(stderr, "mg_bench_dense: %s: chain FLOPs %.0f != formula %.0f (bug)\n", sh->name,
                flop, expert_flop(sh));
        exit(EXIT_FAILURE);
    }

    chain_ctx all = {blas, ops, 6};
    mg_bench_result res = mg_bench_time(run_chain, &all, s, o);
    printf("\n%-12s T=%d d=%d ff=%d E=%d k=%d  (M = T·k = %d)\n", sh->name, sh->T, sh->d, sh->ff,
           sh->E, sh->k, M);
    printf("  %-12s %-22s %9.3f ms  %7.1f TFLOP/s  (%.2f TFLOP)\n", "chain", "6 GEMMs fwd+bwd",
           res.median_ms, mg_bench_tflops(flop, res.median_ms), flop / 1e12);
    add_row("chain", sh->name, sh, flop, 0, &res);

    for (int i = 0; i < 6; i++) {
        chain_ctx one = {blas, &ops[i], 1};
        mg_bench_result ri = mg_bench_time(run_chain, &one, s, o);
        char dims[32], name[48];
        snprintf(dims, sizeof dims, "%dx%dx%d %c%c", ops[i].m, ops[i].n, ops[i].k,
                 ops[i].ta ? 'T' : 'N', ops[i].tb ? 'T' : 'N');
        printf("  %-12s %-22s %9.3f ms  %7.1f TFLOP/s\n", ops[i].name, dims, ri.median_ms,
               mg_bench_tflops(gemm_flop(&ops[i]), ri.median_ms));
        snprintf(name, sizeof name, "%s.%s", sh->name, ops[i].name);
        add_row("gemm", name, sh, gemm_flop(&ops[i]), 0, &ri);
    }

    void *bufs[] = {X, W1, H, A, W2, Y, dY, dA, dH, dX, dW1, dW2};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) mg_cuda_check(cudaFree(bufs[i]));
}

/* ---- main -------------------------------------------------------------------------------- */

static void usage(FILE *f)
{
    fprintf(f,
            "usage: mg_bench_dense [--csv FILE] [--runs N] [--warmup N] [--shape NAME] [--flush]\n"
            "  times the cuBLASLt dense same-FLOP chain (6 GEMMs of fwd+bwd) per MoE shape,\n"
            "  plus the card's ceilings (d2d copy bandwidth, 8192³ bf16 GEMM).\n"
            "  --csv FILE   write the CSV rows to FILE (default: at the end of stdout)\n"
            "  --runs N     timed runs per measurement, median reported (default 25)\n"
            "  --warmup N   untimed runs first (default 5)\n"
            "  --shape NAME only this shape: mixtral, olmoe, finegrained, small\n"
            "  --flush      flush L2 (memset 2x L2 size) before every timed run\n"
            "example: build/bench/mg_bench_dense --csv bench/results/dense-h100.csv\n");
}

int main(int argc, char **argv)
{
    const char *csv_path = NULL, *only = NULL;
    mg_bench_opts o = mg_bench_defaults();
    int flush = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        int more = i + 1 < argc;
        if (!strcmp(a, "--csv") && more) csv_path = argv[++i];
        else if (!strcmp(a, "--runs") && more) o.runs = atoi(argv[++i]);
        else if (!strcmp(a, "--warmup") && more) o.warmup = atoi(argv[++i]);
        else if (!strcmp(a, "--shape") && more) only = argv[++i];
        else if (!strcmp(a, "--flush")) flush = 1;
        else if (!strcmp(a, "--help") || !strcmp(a, "-h")) { usage(stdout); return 0; }
        else { fprintf(stderr, "mg_bench_dense: bad argument '%s'\n", a); usage(stderr); return 1; }
    }
    if (o.runs < 1 || o.warmup < 0) {
        fprintf(stderr, "mg_bench_dense: --runs must be >= 1 and --warmup >= 0\n");
        return 1;
    }
    int shape_found = !only;
    for (int i = 0; only && i < NSHAPES; i++) shape_found |= !strcmp(only, SHAPES[i].name);
    if (!shape_found) {
        fprintf(stderr, "mg_bench_dense: --shape %s: unknown (mixtral, olmoe, finegrained, small)\n",
                only);
        return 1;
    }
    if (!mg_bench_has_device()) {
        printf("skipped: no CUDA device\n");
        return 0;
    }

    int dev = 0;
    struct cudaDeviceProp prop;
    mg_cuda_check(cudaGetDevice(&dev));
    mg_cuda_check(cudaGetDeviceProperties(&prop, dev));
    char device[sizeof prop.name];
    snprintf(device, sizeof device, "%s", prop.name);
    for (char *p = device; *p; p++)
        if (*p == ',') *p = ' ';
    if (flush) o.flush_bytes = 2 * mg_bench_l2_bytes();

    printf("mg_bench_dense: %s (sm_%d%d, %d SMs), cuBLASLt %zu, seed %d, median of %d runs "
           "after %d warm-ups%s\n",
           device, prop.major, prop.minor, prop.multiProcessorCount, cublasLtGetVersion(), SEED,
           o.runs, o.warmup, flush ? ", L2 flushed" : "");

    cudaStream_t s;
    mg_cuda_check(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
    mg_blas *blas;
    mg_err e = {0};
    mg_blas_ok(mg_blas_create(&blas, 0, &e), &e);

    printf("\nceilings\n");
    bench_copy(s, &o);
    bench_square(blas, s, &o);
    for (int i = 0; i < NSHAPES; i++)
        if (!only || !strcmp(only, SHAPES[i].name)) bench_shape_chain(blas, s, &SHAPES[i], &o);

    mg_blas_stats st;
    mg_blas_get_stats(blas, &st);
    printf("\nmg_blas cache: %d entries, %ld hits, %ld misses, %ld evictions\n", st.entries,
           st.hits, st.misses, st.evictions);

    if (csv_path) {
        FILE *f = fopen(csv_path, "w");
        if (!f) {
            fprintf(stderr, "mg_bench_dense: cannot write %s (HINT: mkdir -p bench/results)\n",
                    csv_path);
            return 1;
        }
        write_csv(f, device);
        if (fclose(f)) { fprintf(stderr, "mg_bench_dense: error writing %s\n", csv_path); return 1; }
        printf("csv: %s\n", csv_path);
    } else {
        printf("\n");
        write_csv(stdout, device);
    }

    mg_blas_destroy(blas);
    mg_cuda_check(cudaStreamDestroy(s));
    return 0;
}
