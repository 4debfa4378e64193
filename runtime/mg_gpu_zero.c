/* mg_gpu_zero: ZeRO-1 on the GPU model's buffers (see mg_gpu_zero.h). Checked on 2x H100 by
 * bench/dist_2gpu.sh zero (bench/results/2026-11-26-s4). */
#include "mg_gpu_zero.h"
#include "mg_cuda.h"
#include "mg_optim.h"     /* mg_clip_scale */

long mg_gpu_zero_norm_chunks(const mg_zero *z, long long chunk)
{
    long c = 0;
    for (int k = 0; k < z->n_runs && z->run[k].shard < z->n_norm; k++) c += (long)((z->run[k].n + chunk - 1) / chunk);
    return c;
}

/* The global norm from the shard: the squares of this rank's counted runs of G on the device, one
 * all-reduce over the world on the host, the norm and clip factor back into b->dnorm. */
static int shard_norm(const mg_zero *z, const mg_gpu_zero_bufs *b, cudaStream_t st, double clip, double *gnorm,
                      mg_err *err)
{
    int rc, c = 0;
    for (int k = 0; k < z->n_runs && z->run[k].shard < z->n_norm; k++) {
        const mg_zero_run *u = &z->run[k];
        for (long long o = 0; o < u->n; o += b->chunk, c++) {
            long long n = u->n - o < b->chunk ? u->n - o : b->chunk;
            if ((rc = mg_lm_sumsq(b->lm, st, b->G + u->flat + o, n, b->part + (size_t)c * LM_SUMSQ_BLOCKS, err)))
                return rc;
        }
    }
    if ((rc = mg_lm_gnorm(b->lm, st, b->part, c * LM_SUMSQ_BLOCKS, 0.f, b->dnorm, err))) return rc;
    float local = 0;
    MG_CUDA_TRY(cudaMemcpyAsync(&local, b->dnorm, sizeof local, cudaMemcpyDeviceToHost, st), err);
    MG_CUDA_TRY(cudaStreamSynchronize(st), err);
    double norm;
    if ((rc = mg_zero_norm_from_sq(z, (double)local * local, &norm, err))) return rc;
    float dn[2] = {(float)norm, (float)mg_clip_scale(norm, clip)};
    MG_CUDA_TRY(cudaMemcpyAsync(b->dnorm, dn, sizeof dn, cudaMemcpyHostToDevice, st), err);
    MG_CUDA_TRY(cudaStreamSynchronize(st), err);   /* dn lives on this stack */
    *gnorm = norm;
    return MG_OK;
}

typedef struct gpu_step {
    const mg_gpu_zero_bufs *b;
    cudaStream_t st;
    const mg_lm_adamw_hp *hp;
    int t;
} gpu_step;

/* One AdamW launch on a piece of the shard (mg_zero_pieces): the master weights at their shard
 * place (fp32 models: their flat place, where they are the compute weights too), the gradient read
 * and the compute copy written at their flat places. */
static int gpu_piece(void *ctx, long flat, long shard, long n, int decay, mg_err *err)
{
    const gpu_step *c = ctx;
    const mg_gpu_zero_bufs *b = c->b;
    float *w = b->master_flat ? b->P + flat : b->P + shard;
    void *wc = b->master_flat ? NULL : (char *)b->Wc + (size_t)flat * (size_t)b->esz;
    return mg_lm_adamw(b->lm, c->st, w, b->G + flat, b->M + shard, b->V + shard, wc, b->dnorm + 1, n, c->hp, c->t,
                       decay, err);
}

int mg_gpu_zero_step(const mg_zero *z, const mg_gpu_zero_bufs *b, cudaStream_t st, const mg_lm_adamw_hp *hp, int t,
                     double clip, double *gnorm, mg_err *err)
{
    int rc;
    gpu_step c = {b, st, hp, t};
    if ((rc = shard_norm(z, b, st, clip, gnorm, err)) ||
        (rc = mg_zero_pieces(z, b->h->tensors, b->h->n_tensors, gpu_piece, &c, err)) ||
        (rc = mg_zero_gather_async(z, b->Wc, (size_t)b->esz, st, err)))
        return rc;
    size_t esz = (size_t)b->esz;
    MG_CUDA_TRY(cudaMemcpyAsync(b->Hc, (char *)b->Wc + (size_t)b->h->lm_head * esz, (size_t)b->h->V * b->h->d * esz,
                                cudaMemcpyDeviceToDevice, st), err);
    return MG_OK;
}

int mg_gpu_zero_master_from_flat(const mg_zero *z, const mg_gpu_zero_bufs *b, const float *flat, cudaStream_t st,
                                 mg_err *err)
{
    for (int k = 0; !b->master_flat && k < z->n_runs; k++) {   /* on st: the backward that reuses flat comes after */
        const mg_zero_run *u = &z->run[k];
        MG_CUDA_TRY(cudaMemcpyAsync(b->P + u->shard, flat + u->flat, (size_t)u->n * 4, cudaMemcpyDeviceToDevice, st), err);
    }
    return MG_OK;
}

int mg_gpu_zero_master_to_host(const mg_zero *z, const mg_gpu_zero_bufs *b, float *host_params, mg_err *err)
{
    if (b->master_flat) {
        MG_CUDA_TRY(cudaMemcpy(host_params, b->P, (size_t)z->n_full * 4, cudaMemcpyDeviceToHost), err);
        return MG_OK;
    }
    for (int k = 0; k < z->n_runs; k++) {
        const mg_zero_run *u = &z->run[k];
        MG_CUDA_TRY(cudaMemcpy(host_params + u->flat, b->P + u->shard, (size_t)u->n * 4, cudaMemcpyDeviceToHost), err);
    }
    return MG_OK;
}
