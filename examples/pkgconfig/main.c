/* moe-runtime: libmoegen as an installed library. Loads a spec, plans and generates the
 * kernels (works without a GPU), then compiles them with NVRTC and runs forward + backward
 * of the layer on random data, checking the outputs are finite.
 *
 * usage: moe-runtime SPEC.lua [--tokens T] */
#include <moegen/moegen.h>

#include <cuda_runtime_api.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define TRY(call) do { if (call) { fprintf(stderr, "moe-runtime: %s\n", err.msg); return 1; } } while (0)
#define CUDA(call) do { cudaError_t e_ = (call); if (e_ != cudaSuccess) { \
        fprintf(stderr, "moe-runtime: %s: %s\n", #call, cudaGetErrorString(e_)); return 2; } } while (0)

static double unif(unsigned *seed)   /* LCG in [0, 1): enough for test data */
{
    *seed = *seed * 1664525u + 1013904223u;
    return (*seed >> 8) * (1.0 / 16777216.0);
}

/* n random values in [-s, s) stored in the spec's dtype on the device. */
static void *random_dev(int dtype, long n, double s, unsigned *seed)
{
    float *h = malloc((size_t)n * 4);
    void *st = malloc((size_t)n * 4), *d = NULL;
    for (long i = 0; i < n; i++) h[i] = (float)(s * (2.0 * unif(seed) - 1.0));
    mg_host_to_dtype(dtype, h, st, n);
    size_t bytes = (size_t)n * (size_t)mg_dtype_size(dtype);
    if (cudaMalloc(&d, bytes) == cudaSuccess) cudaMemcpy(d, st, bytes, cudaMemcpyHostToDevice);
    free(h), free(st);
    return d;
}

int main(int argc, char **argv)
{
    const char *path = NULL;
    int T = 256;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--tokens") && i + 1 < argc) T = atoi(argv[++i]);
        else if (!path) path = argv[i];
        else { fprintf(stderr, "usage: moe-runtime SPEC.lua [--tokens T]\n"); return 1; }
    }
    if (!path || T < 1) { fprintf(stderr, "usage: moe-runtime SPEC.lua [--tokens T]\n"); return 1; }

    mg_err err;
    mg_spec spec;
    mg_plan plan;
    mg_genout gen;
    mg_err_clear(&err);
    TRY(mg_spec_load(path, &spec, &err));
    TRY(mg_plan_make(&spec, NULL, &plan, &err));
    TRY(mg_gen_sources(&plan, &gen, &err));
    size_t bytes = 0;
    for (int i = 0; i < gen.n_src; i++) bytes += gen.src[i].len;
    printf("moe-runtime: moegen %s, spec %s: %d kernel families, %zu bytes of CUDA\n", mg_version(), spec.name,
           gen.n_src, bytes);
    mg_genout_free(&gen);

    int n_dev = 0;
    if (cudaGetDeviceCount(&n_dev) != cudaSuccess || n_dev == 0) {
        printf("skipped: no CUDA device\n");
        return 0;
    }
    mg_moe *m;
    TRY(mg_moe_create(&plan, NULL, T, &m, &err));   /* NVRTC (cached) + load */
    const int dt = spec.dtype, d = spec.model.d_model, ff = spec.moe.d_ff, E = spec.moe.experts;
    const int S = spec.moe.shared_experts, f2 = ff * (mg_act_is_glu(spec.moe.activation) ? 2 : 1);
    unsigned seed = 1;
    mg_moe_weights w = {random_dev(dt, (long)E * d, 1 / sqrt(d), &seed), NULL,
                        random_dev(dt, (long)E * f2 * d, 1 / sqrt(d), &seed),
                        random_dev(dt, (long)E * d * ff, 1 / sqrt(ff), &seed),
                        S ? random_dev(dt, (long)S * f2 * d, 1 / sqrt(d), &seed) : NULL,
                        S ? random_dev(dt, (long)S * d * ff, 1 / sqrt(ff), &seed) : NULL};
    void *x = random_dev(dt, (long)T * d, 1, &seed), *dy = random_dev(dt, (long)T * d, 1, &seed), *y, *dx;
    mg_moe_grads g = {0};
    const size_t es = (size_t)mg_dtype_size(dt);
    CUDA(cudaMalloc(&y, (size_t)T * d * es));
    CUDA(cudaMalloc(&dx, (size_t)T * d * es));
    CUDA(cudaMalloc((void **)&g.dwg, (size_t)E * d * 4));
    CUDA(cudaMalloc((void **)&g.dw_up, (size_t)E * f2 * d * 4));
    CUDA(cudaMalloc((void **)&g.dw_dn, (size_t)E * d * ff * 4));
    if (S) {
        CUDA(cudaMalloc((void **)&g.dws_up, (size_t)S * f2 * d * 4));
        CUDA(cudaMalloc((void **)&g.dws_dn, (size_t)S * d * ff * 4));
    }
    TRY(mg_moe_forward(m, NULL, &w, x, y, T, &err));
    TRY(mg_moe_backward(m, NULL, &w, x, dy, dx, &g, T, &err));
    mg_moe_state st;
    mg_moe_get_state(m, &st);
    float loss[2];
    void *hy = malloc((size_t)T * d * es);
    float *fy = malloc((size_t)T * d * 4);
    CUDA(cudaMemcpy(loss, st.loss, sizeof loss, cudaMemcpyDeviceToHost));
    CUDA(cudaMemcpy(hy, dx, (size_t)T * d * es, cudaMemcpyDeviceToHost));
    mg_host_from_dtype(dt, hy, fy, (long)T * d);
    int finite = isfinite(loss[0]) && isfinite(loss[1]);
    for (long i = 0; i < (long)T * d; i++) finite = finite && isfinite(fy[i]);
    printf("moe-runtime: T=%d aux %.5f zloss %.5f, dx finite: %s\n", T, loss[0], loss[1], finite ? "PASS" : "FAIL");
    free(hy), free(fy);
    mg_moe_destroy(m);
    return finite ? 0 : 1;
}
