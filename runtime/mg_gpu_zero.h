/* mg_gpu_zero: ZeRO-1 in the GPU trainer: mg_zero.h's layout on the GPU model's device buffers
 * (mg_gpu_model.c owns them and calls these). Written and compiled on a host without GPUs: not yet
 * run (runtime/DISTRIBUTED.md).
 *
 * Per step, on top of mg_gpu_model's bucketed overlap:
 *   backward   as each stage's backward is enqueued, its buckets are reduce-scattered in place in
 *              G on the side stream (this rank's slice gets the sum) and their tails all-reduced
 *              (mg_zero_reduce_bucket_async, called by mg_gpu_model.c with the same events and
 *              stream as the all-reduce of zero = 0: it overlaps the rest of the backward the same
 *              way; no gradient buffer beyond G);
 *   norm       the squares of the counted runs of G on the device (util sumsq per run and chunk +
 *              gnorm, as zero = 0 over all of G), read back, summed over the world with one
 *              all-reduce of one double, the clip factor computed on the host and written back;
 *   AdamW      the generated kernel on each piece of the shard (mg_zero_pieces: runs cut where the
 *              weight-decay flag changes): the fp32 master weights (the shard's own buffer for
 *              bf16/fp16 models; the flat weights of an fp32 model, which are its compute
 *              weights), m and v in the shard, the gradient and the compute copy at their flat
 *              places in G and Wc: the same kernel and cast that refresh the compute copy under
 *              zero = 0;
 *   gather     the slices of Wc all-gathered in place (bytes: bf16 moves 2 bytes per parameter) on
 *              the compute stream, then the LM head's padded compute copy Hc refreshed from Wc's
 *              head slot (one device copy: zero = 0 has AdamW write Hc directly, which a gather into
 *              Wc cannot). */
#ifndef MG_GPU_ZERO_H
#define MG_GPU_ZERO_H

#include "mg_cpu_model.h"
#include "mg_err.h"
#include "mg_lm.h"
#include "mg_zero.h"

#include <cuda_runtime_api.h>

#ifdef __cplusplus
extern "C" {
#endif

/* The GPU model's buffers that ZeRO-1 touches. */
typedef struct mg_gpu_zero_bufs {
    const mg_cpu_model *h;  /* tensor table (decay flags), lm_head, V, d */
    const mg_lm *lm;
    float *G;               /* flat gradients, reduced in this rank's runs */
    float *M, *V;           /* [n_shard]: AdamW moments */
    float *P;               /* fp32 master weights: [n_shard] (master_flat 0) or the flat weights (1) */
    int master_flat;        /* 1: an fp32 model, P is also the compute copy (P == Wc) */
    void *Wc;               /* flat compute weights, esz bytes each (their head slot included) */
    int esz;
    void *Hc;               /* the LM head's compute copy (mg_gpu_model.c head_c) */
    float *part;            /* sumsq partials: mg_gpu_zero_norm_chunks · LM_SUMSQ_BLOCKS floats at least */
    long long chunk;
    float *dnorm;           /* [2]: norm, clip factor (what the AdamW kernel scales by) */
} mg_gpu_zero_bufs;

/* sumsq launches of the norm: every counted run in chunks of at most `chunk` elements. */
long mg_gpu_zero_norm_chunks(const mg_zero *z, long long chunk);

/* Norm, clip, AdamW update t (>= 1) on the shard, gather of the compute weights and the head's
 * copy, all on st after the reductions (the caller makes st wait for cs). Syncs st once, to read
 * the local norm; returns with the gathers enqueued (mg_comm_wait on the groups' communicators).
 * *gnorm: the global, unclipped norm. */
int mg_gpu_zero_step(const mg_zero *z, const mg_gpu_zero_bufs *b, cudaStream_t st, const mg_lm_adamw_hp *hp, int t,
                     double clip, double *gnorm, mg_err *err);

/* Upload: the flat fp32 weights already on the device in flat → this rank's runs of the master
 * shard, enqueued on st (a no-op for master_flat). Download: the master shard's runs →
 * host_params (flat; the rest is the trainer's gather, mg_zero_gather); master_flat: the whole
 * flat weights; blocking (call it with the device idle). */
int mg_gpu_zero_master_from_flat(const mg_zero *z, const mg_gpu_zero_bufs *b, const float *flat, cudaStream_t st,
                                 mg_err *err);
int mg_gpu_zero_master_to_host(const mg_zero *z, const mg_gpu_zero_bufs *b, float *host_params, mg_err *err);

#ifdef __cplusplus
}
#endif
#endif
