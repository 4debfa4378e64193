/* mg_tune_gpu: the GPU side of a `moegen tune` sweep, run inside the sweep's worker process:
 * the correctness check of each candidate and its timing (internal to mg_tune). */
#ifndef MG_TUNE_GPU_H
#define MG_TUNE_GPU_H

#include "mg_tune.h"

typedef struct mg_tune_gpu_cfg {
    mg_spec spec;
    mg_family_id fam;     /* the family being tuned; the others keep the rules' tiles */
    int T;
    mg_tune_dist dist;
    char arch[32];
    int runs, warmup;
    unsigned long long seed;
} mg_tune_gpu_cfg;

typedef struct mg_tune_gpu mg_tune_gpu;

/* Host-only: safe in the parent. The CUDA work happens in mg_tune_gpu_init, in the worker. */
mg_tune_gpu *mg_tune_gpu_new(const mg_tune_gpu_cfg *cfg);
void mg_tune_gpu_free(mg_tune_gpu *g);
/* mg_tune_sweep callbacks (ctx = mg_tune_gpu *). */
int mg_tune_gpu_init(void *ctx, char *msg, size_t n);
int mg_tune_gpu_eval(void *ctx, mg_tune_cand *c);

/* Routing of T tokens for a distribution: sel[t*k + j] = expert of token t's j-th choice
 * (distinct per token). Balanced: round robin, exactly T*k/E per expert when E divides
 * T*k; zipf: expert e drawn with probability ~ (e+1)^-1.2; one: every token picks experts
 * 0..k-1 (expert 0 first), so k experts get all T tokens. Pure CPU (tested). */
void mg_tune_route(mg_tune_dist dist, int T, int E, int k, unsigned long long seed, int *sel);

#endif
