/* embed-c: the bundled tiny MoE layer from plain C: forward + backward on random data,
 * checked against moegen's CPU reference (mg_ref). Exits 1 on a mismatch (relative error
 * ||gpu - ref|| / ||ref|| above 1e-2 for any output), 0 when all match or without a GPU.
 *
 * usage: embed-c [--tokens T] [--seed S] [--image sm_80|sm_90a|ptx] */
#include "moe_tiny.h"          /* the bundle's C API */
#include "mg_ref.h"            /* moegen's CPU reference layer (fp64 accumulation) */
#include <cuda_runtime_api.h>  /* device memory; the layer itself needs only the API above */

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CHECK(call) do { cudaError_t e_ = (call); if (e_ != cudaSuccess) { \
        fprintf(stderr, "embed-c: %s:%d: %s: %s\n", __FILE__, __LINE__, #call, cudaGetErrorString(e_)); exit(2); } } while (0)
#define API(call) do { int s_ = (call); if (s_) { \
        fprintf(stderr, "embed-c: %s: %s (%s)\n", #call, moe_tiny_strerror(s_), moe_tiny_last_error(layer)); exit(2); } } while (0)

enum { D = MOE_TINY_D, FF = MOE_TINY_FF, F2 = MOE_TINY_F2, E = MOE_TINY_EXPERTS, K = MOE_TINY_TOPK };

/* bf16 storage, round to nearest even (what the kernels read and write) */
static uint16_t to_bf16(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}
static float from_bf16(uint16_t h)
{
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static uint64_t rng_state;
static double unif(void)   /* splitmix64 in [0, 1) */
{
    uint64_t z = (rng_state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return ((z ^ (z >> 31)) >> 11) * (1.0 / 9007199254740992.0);
}

/* n random values in [-scale, scale), rounded to bf16 so GPU and reference see the same
 * inputs; returns the device copy, the host floats stay in h. */
static void *upload_random(float *h, long n, double scale)
{
    uint16_t *b = malloc((size_t)n * 2);
    void *d;
    for (long i = 0; i < n; i++) {
        b[i] = to_bf16((float)(scale * (2 * unif() - 1)));
        h[i] = from_bf16(b[i]);
    }
    CHECK(cudaMalloc(&d, (size_t)n * 2));
    CHECK(cudaMemcpy(d, b, (size_t)n * 2, cudaMemcpyHostToDevice));
    free(b);
    return d;
}

static void download_bf16(float *h, const void *d, long n)
{
    uint16_t *b = malloc((size_t)n * 2);
    CHECK(cudaMemcpy(b, d, (size_t)n * 2, cudaMemcpyDeviceToHost));
    for (long i = 0; i < n; i++) h[i] = from_bf16(b[i]);
    free(b);
}

/* ||a - b|| / ||b||; prints the first mismatching pair when above tol. */
static int compare(const char *what, const float *gpu, const float *ref, long n, double tol)
{
    double num = 0, den = 0;
    long first = -1;
    for (long i = 0; i < n; i++) {
        double dlt = (double)gpu[i] - ref[i];
        num += dlt * dlt;
        den += (double)ref[i] * ref[i];
        if (first < 0 && !(fabs(dlt) <= 1e-2 * fabs(ref[i]) + 1e-3)) first = i;
    }
    double rel = den > 0 ? sqrt(num / den) : sqrt(num);
    int ok = rel <= tol;   /* also false for NaN */
    printf("  %-10s rel err %.3e  %s\n", what, rel, ok ? "ok" : "MISMATCH");
    if (!ok && first >= 0) printf("             first differing [%ld]: gpu %g ref %g\n", first, gpu[first], ref[first]);
    return ok;
}

int main(int argc, char **argv)
{
    int T = 200;
    unsigned long long seed = 1;
    moe_tiny_config cfg = {-1, NULL, NULL, 0};
    char why[256] = "";
    cfg.errbuf = why, cfg.errbuf_size = sizeof why;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--tokens") && i + 1 < argc) T = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--seed") && i + 1 < argc) seed = strtoull(argv[++i], NULL, 10);
        else if (!strcmp(argv[i], "--image") && i + 1 < argc) cfg.image = argv[++i];
        else { fprintf(stderr, "usage: embed-c [--tokens T] [--seed S] [--image sm_80|sm_90a|ptx]\n"); return 2; }
    }
    if (T < 1) { fprintf(stderr, "embed-c: --tokens must be >= 1\n"); return 2; }

    moe_tiny *layer = NULL;
    int st = moe_tiny_create(&layer, &cfg);
    if (st == MOE_TINY_ENODEVICE) { printf("skipped: no CUDA device\n"); return 0; }
    if (st) { fprintf(stderr, "embed-c: create: %s: %s\n", moe_tiny_strerror(st), why); return 2; }
    printf("embed-c: tiny layer (d=%d ff=%d E=%d k=%d), image %s, T=%d, seed %llu\n", D, FF, E, K,
           moe_tiny_image(layer), T, seed);

    /* inputs and weights */
    rng_state = seed;
    const long nx = (long)T * D, nwg = (long)E * D, nup = (long)E * F2 * D, ndn = (long)E * D * FF;
    float *x = malloc(nx * 4), *dy = malloc(nx * 4), *wg = malloc(nwg * 4), *wup = malloc(nup * 4),
          *wdn = malloc(ndn * 4), *y = malloc(nx * 4), *dx = malloc(nx * 4), *dwg = malloc(nwg * 4),
          *dwup = malloc(nup * 4), *dwdn = malloc(ndn * 4);
    void *d_x = upload_random(x, nx, 1.0), *d_dy = upload_random(dy, nx, 1.0);
    void *d_wg = upload_random(wg, nwg, 1.0 / sqrt(D)), *d_wup = upload_random(wup, nup, 1.0 / sqrt(D));
    void *d_wdn = upload_random(wdn, ndn, 1.0 / sqrt(FF));
    void *d_y, *d_dx, *ws;
    float *d_dwg, *d_dwup, *d_dwdn;
    CHECK(cudaMalloc(&d_y, nx * 2));
    CHECK(cudaMalloc(&d_dx, nx * 2));
    CHECK(cudaMalloc((void **)&d_dwg, nwg * 4));
    CHECK(cudaMalloc((void **)&d_dwup, nup * 4));
    CHECK(cudaMalloc((void **)&d_dwdn, ndn * 4));
    CHECK(cudaMalloc(&ws, moe_tiny_workspace_size(layer, T)));

    /* the layer on the GPU: the caller owns stream and workspace */
    cudaStream_t stream;
    CHECK(cudaStreamCreate(&stream));
    API(moe_tiny_forward(layer, stream, d_x, d_wg, d_wup, d_wdn, d_y, ws, T));
    API(moe_tiny_backward(layer, stream, d_x, d_wg, d_wup, d_wdn, d_dy, d_dx, d_dwg, d_dwup, d_dwdn, ws, T));
    float loss[2];
    CHECK(cudaMemcpyAsync(loss, moe_tiny_losses(layer, ws, T), sizeof loss, cudaMemcpyDeviceToHost, stream));
    CHECK(cudaStreamSynchronize(stream));
    download_bf16(y, d_y, nx);
    download_bf16(dx, d_dx, nx);
    CHECK(cudaMemcpy(dwg, d_dwg, nwg * 4, cudaMemcpyDeviceToHost));
    CHECK(cudaMemcpy(dwup, d_dwup, nup * 4, cudaMemcpyDeviceToHost));
    CHECK(cudaMemcpy(dwdn, d_dwdn, ndn * 4, cudaMemcpyDeviceToHost));

    /* the CPU reference on the same (bf16-rounded) inputs */
    mg_ref_cfg rc = {.T = T, .d = D, .ff = FF, .E = E, .k = K, .act = MOE_TINY_ACTIVATION,
                     .router = MOE_TINY_ROUTER, .renormalize = MOE_TINY_RENORMALIZE,
                     .capacity_factor = MOE_TINY_CAPACITY_FACTOR, .drop_policy = MOE_TINY_DROP_POLICY,
                     .aux_coef = MOE_TINY_AUX_LOSS, .z_coef = MOE_TINY_Z_LOSS};
    mg_ref_weights rw = {wg, NULL, wup, wdn, NULL, NULL};
    mg_ref_fwd rf;
    mg_ref_grads rg;
    mg_ref_fwd_alloc(&rc, &rf);
    mg_ref_grads_alloc(&rc, &rg);
    mg_ref_forward(&rc, x, &rw, &rf);
    mg_ref_backward(&rc, x, &rw, &rf, dy, &rg);
    float ref_loss[2] = {(float)rf.aux, (float)rf.zloss};

    int ok = 1;
    ok &= compare("y", y, rf.y, nx, 1e-2);
    ok &= compare("losses", loss, ref_loss, 2, 1e-2);
    ok &= compare("dx", dx, rg.dx, nx, 1e-2);
    ok &= compare("d_router_w", dwg, rg.dwg, nwg, 1e-2);
    ok &= compare("d_w_up", dwup, rg.dw_up, nup, 1e-2);
    ok &= compare("d_w_down", dwdn, rg.dw_dn, ndn, 1e-2);
    printf("embed-c: %s\n", ok ? "PASS" : "FAIL");

    mg_ref_fwd_free(&rf);
    mg_ref_grads_free(&rg);
    cudaFree(d_x), cudaFree(d_dy), cudaFree(d_wg), cudaFree(d_wup), cudaFree(d_wdn), cudaFree(d_y), cudaFree(d_dx);
    cudaFree(d_dwg), cudaFree(d_dwup), cudaFree(d_dwdn), cudaFree(ws);
    cudaStreamDestroy(stream);
    moe_tiny_destroy(layer);
    free(x), free(dy), free(wg), free(wup), free(wdn), free(y), free(dx), free(dwg), free(dwup), free(dwdn);
    return ok ? 0 : 1;
}
