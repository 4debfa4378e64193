/* mg_bench_timer: time GPU work with CUDA events: warm-up, N timed runs, median (header-only).
 *
 * Usage: put the work in a callback that only enqueues on the given stream, then
 *
 *     static void run_layer(void *ctx, cudaStream_t s) { layer_fwd_bwd(ctx, s); }
 *     mg_bench_opts o = mg_bench_defaults();          // 5 warm-ups, 25 runs, no L2 flush
 *     mg_bench_result r = mg_bench_time(run_layer, &layer, stream, &o);
 *     printf("%.3f ms  %.1f TFLOP/s\n", r.median_ms, mg_bench_tflops(flop, r.median_ms));
 *
 * Each run is bracketed by its own start/stop event pair on `stream`; runs are enqueued back
 * to back (no host sync between them, so launch latency hides as in training) and the host
 * waits once at the end. The callback may sync the host itself (a PyTorch-style eager loop
 * does): the events still measure GPU time from start to stop. With flush_bytes > 0 a buffer
 * of that size is memset before every run, outside the events, to start each run with a cold
 * L2 (use 2× the L2 size; mg_bench_l2_bytes() tells it).
 *
 * Errors are fatal (benchmarks): the failing call is printed with file and line. */
#ifndef MG_BENCH_TIMER_H
#define MG_BENCH_TIMER_H

#include <cuda_runtime.h>
#include <stdio.h>
#include <stdlib.h>

#ifndef mg_cuda_check
#define mg_cuda_check(call)                                                                   \
    do {                                                                                      \
        cudaError_t mg_ce_ = (call);                                                          \
        if (mg_ce_ != cudaSuccess) {                                                          \
            fprintf(stderr, "[CUDA ERROR] %s:%d: %s: %s (%s)\n", __FILE__, __LINE__, #call,   \
                    cudaGetErrorName(mg_ce_), cudaGetErrorString(mg_ce_));                    \
            exit(EXIT_FAILURE);                                                               \
        }                                                                                     \
    } while (0)
#endif

typedef void (*mg_bench_fn)(void *ctx, cudaStream_t stream);

typedef struct mg_bench_opts {
    int warmup;          /* untimed calls first (JIT, heuristics, clocks ramp up) */
    int runs;            /* timed calls; the median is reported */
    size_t flush_bytes;  /* > 0: memset this many bytes before each run to flush L2 */
} mg_bench_opts;

typedef struct mg_bench_result {
    double median_ms, min_ms, max_ms, mean_ms;
    int runs;
} mg_bench_result;

static inline mg_bench_opts mg_bench_defaults(void)
{
    mg_bench_opts o = {5, 25, 0};
    return o;
}

/* 1 when a CUDA device is usable, 0 otherwise (no device, no driver): callers print
 * "skipped: no CUDA device" and exit 0. Clears the sticky error the probe leaves behind. */
static inline int mg_bench_has_device(void)
{
    int n = 0;
    cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess) {
        (void)cudaGetLastError();
        return 0;
    }
    return n > 0;
}

static inline size_t mg_bench_l2_bytes(void)
{
    int dev = 0, l2 = 0;
    mg_cuda_check(cudaGetDevice(&dev));
    mg_cuda_check(cudaDeviceGetAttribute(&l2, cudaDevAttrL2CacheSize, dev));
    return (size_t)l2;
}

static inline double mg_bench_tflops(double flop, double ms) { return flop / (ms * 1e-3) / 1e12; }
static inline double mg_bench_gbs(double bytes, double ms) { return bytes / (ms * 1e-3) / 1e9; }

static inline int mg_bench_cmp_f_(const void *a, const void *b)
{
    float x = *(const float *)a, y = *(const float *)b;
    return (x > y) - (x < y);
}

/* Median of v[0..n) (sorts v in place); n >= 1. */
static inline double mg_bench_median(float *v, int n)
{
    qsort(v, (size_t)n, sizeof *v, mg_bench_cmp_f_);
    return n % 2 ? v[n / 2] : 0.5 * ((double)v[n / 2 - 1] + v[n / 2]);
}

static inline mg_bench_result mg_bench_time(mg_bench_fn fn, void *ctx, cudaStream_t stream,
                                            const mg_bench_opts *o)
{
    mg_bench_opts d = mg_bench_defaults();
    if (!o) o = &d;
    int runs = o->runs > 0 ? o->runs : 1;
    void *flush = NULL;
    if (o->flush_bytes) mg_cuda_check(cudaMalloc(&flush, o->flush_bytes));

    for (int i = 0; i < o->warmup; i++) {
        fn(ctx, stream);
        mg_cuda_check(cudaGetLastError());
    }
    mg_cuda_check(cudaStreamSynchronize(stream));

    cudaEvent_t *ev = malloc(sizeof *ev * 2 * (size_t)runs);
    float *ms = malloc(sizeof *ms * (size_t)runs);
    if (!ev || !ms) {
        fprintf(stderr, "[mg_bench] %s:%d: out of host memory\n", __FILE__, __LINE__);
        exit(EXIT_FAILURE);
    }
    for (int i = 0; i < 2 * runs; i++) mg_cuda_check(cudaEventCreate(&ev[i]));
    for (int i = 0; i < runs; i++) {
        if (flush) mg_cuda_check(cudaMemsetAsync(flush, i & 0xff, o->flush_bytes, stream));
        mg_cuda_check(cudaEventRecord(ev[2 * i], stream));
        fn(ctx, stream);
        mg_cuda_check(cudaGetLastError());
        mg_cuda_check(cudaEventRecord(ev[2 * i + 1], stream));
    }
    mg_cuda_check(cudaEventSynchronize(ev[2 * runs - 1]));

    mg_bench_result r = {0, 0, 0, 0, runs};
    double sum = 0;
    for (int i = 0; i < runs; i++) {
        mg_cuda_check(cudaEventElapsedTime(&ms[i], ev[2 * i], ev[2 * i + 1]));
        sum += ms[i];
    }
    r.mean_ms = sum / runs;
    r.median_ms = mg_bench_median(ms, runs);
    r.min_ms = ms[0];
    r.max_ms = ms[runs - 1];
    for (int i = 0; i < 2 * runs; i++) mg_cuda_check(cudaEventDestroy(ev[i]));
    free(ev);
    free(ms);
    if (flush) mg_cuda_check(cudaFree(flush));
    return r;
}

#endif
