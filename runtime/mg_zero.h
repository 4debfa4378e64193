/* mg_zero: ZeRO-1 (parallel.zero = 1) for both trainers (runtime/DISTRIBUTED.md): the data-parallel
 * replicas reduce-scatter their gradients instead of all-reducing them, each rank keeps the AdamW
 * state (m, v, and on the GPU the fp32 master weights) of its shard only, updates its shard, and
 * the updated weights are all-gathered.
 *
 * Layout. Bucket b of mg_dp (n elements at flat offset off, reduced over group g of W ranks, this
 * rank r in it) is cut into W slices of q = floor(n/W) elements, slice r at [off + r·q, off + r·q + q),
 * and a tail of t = n − W·q < W elements at [off + W·q, off + n). Rank r owns slice r; the tail is
 * owned by every rank of the group: all-reduced, updated identically everywhere, never gathered.
 * That is how a size that W does not divide works without padding: each collective moves exact
 * counts in place on the flat buffers (NCCL's in-place rules, mg_comm.h), and nothing reads or
 * writes outside its bucket. The groups are mg_dp's: dense buckets over every rank, routed
 * experts' buckets over their dp replicas (one rank when dp = 1: no sharding, no reduction).
 *
 * The gradients stay in the flat buffer: the reduce-scatter is in place, so after it this rank's
 * slices (and the tails) hold the reduced sums and the rest of the buffer is stale. The shard,
 * this rank's optimizer state (AdamW m, v; on the GPU the fp32 masters of a bf16/fp16 model): the
 * owned slices in bucket order, then the tails this rank counts in the grad norm (it is rank 0 of
 * their group), then the other tails. A run maps a flat range to its place in the shard; the runs
 * whose shard offset is below n_norm are the counted ones, so ‖g‖² is Σ over ranks of their
 * squares (every element of the model exactly once, experts included), one all-reduce of one
 * number over the world.
 *
 * Numerics: the CPU backend's reduce-scatter sums in rank order like its all-reduce, so the reduced
 * gradients and the update are bitwise those of zero = 0; only the grad norm's summation order
 * differs (and through the clip factor, the update when clipping is active). */
#ifndef MG_ZERO_H
#define MG_ZERO_H

#include "mg_cpu_model.h"
#include "mg_dp.h"
#include "mg_err.h"
#include "mg_optim.h"

#ifdef __cplusplus
extern "C" {
#endif

/* A flat range and where it lives in the shard. */
typedef struct mg_zero_run {
    long flat, shard, n;
} mg_zero_run;

/* mg_dp bucket i's cut (same index as dp->b). */
typedef struct mg_zero_part {
    int W, r;          /* its group's ranks and this rank's place in it */
    long q;            /* slice length: floor(n / W) */
    long slice;        /* shard offset of this rank's slice */
    long tail, tail_n; /* shard offset of the tail, its length (< W) */
} mg_zero_part;

typedef struct mg_zero {
    int on;            /* 0: zero = 0, one process, or not initialised (everything here unused) */
    const mg_dp *dp;
    mg_zero_part *p;   /* [dp->n_buckets] */
    int n_runs;
    mg_zero_run *run;  /* shard order: the slices, then the counted tails, then the other tails */
    long n_shard;      /* elements of the shard */
    long n_norm;       /* its first n_norm elements (the runs below it) count in the grad norm */
    long n_full;       /* the model's parameters (the unsharded state's size) */
} mg_zero;

/* The cut of dp's buckets (mg_dp_buckets done) of a model of n_params. With on = 0 (zero = 0, or
 * dp off) z is cleared and stays off. */
int mg_zero_init(mg_zero *z, int on, const mg_dp *dp, long n_params, mg_err *err);
void mg_zero_free(mg_zero *z);

/* Host, blocking, every bucket in mg_dp's order, in place in grads (flat, this rank's local
 * gradients): the slices reduce-scattered (each rank's slice gets the sum), the tails all-reduced. */
int mg_zero_reduce_grads(const mg_zero *z, float *grads, mg_err *err);
/* The same for bucket i alone, enqueued on `stream` (NCCL, device buffers: the GPU trainer calls it
 * as the bucket's backward stage is done; mg_comm_wait waits). Backends without streams block. */
int mg_zero_reduce_bucket_async(const mg_zero *z, int i, float *grads, void *stream, mg_err *err);

/* The global ‖g‖₂ from the shards: local_sq (the squares of the counted runs of the reduced
 * gradients, however computed) summed over the world, one all-reduce of one double.
 * mg_zero_grad_norm computes local_sq on the host in fp64, run by run in index order. */
int mg_zero_norm_from_sq(const mg_zero *z, double local_sq, double *norm, mg_err *err);
int mg_zero_grad_norm(const mg_zero *z, const float *grads, double *norm, mg_err *err);

/* The pieces of the shard that one AdamW call (or kernel launch) covers: each run cut where the
 * weight-decay flag changes between the tensors it spans (tensors: the model's table, in flat
 * order). fn gets the piece's flat offset, shard offset, length and flag; a non-zero return stops. */
typedef int (*mg_zero_piece_fn)(void *ctx, long flat, long shard, long n, int decay, mg_err *err);
int mg_zero_pieces(const mg_zero *z, const mg_cpu_tensor *tensors, int n_tensors, mg_zero_piece_fn fn, void *ctx,
                   mg_err *err);

/* AdamW (mg_adamw_update per piece, o->step incremented) on the shard: params and grads flat (the
 * reduced gradients; only this rank's runs are read and written), o (n = n_shard) in the shard
 * layout; tensors: the model's table (weight-decay flags). */
void mg_zero_adamw_step(const mg_zero *z, mg_adamw *o, float *params, const float *grads, const mg_cpu_tensor *tensors,
                        int n_tensors, double lr, double beta1, double beta2, double eps, double wd, double gscale);

/* Every bucket's slices all-gathered in place in a flat buffer of elements of esz bytes (host
 * F32 parameters, or the GPU's compute weights of any dtype): blocking, or (the _async form)
 * enqueued on `stream` (NCCL; mg_comm_wait on both groups' communicators waits). The tails need
 * no gather: every rank of the group updated them. */
int mg_zero_gather(const mg_zero *z, void *flat, size_t esz, mg_err *err);
int mg_zero_gather_async(const mg_zero *z, void *flat, size_t esz, void *stream, mg_err *err);

/* Shard <-> flat copies of this rank's runs (no communication). */
void mg_zero_to_flat(const mg_zero *z, const float *shard, float *flat);
void mg_zero_to_shard(const mg_zero *z, const float *flat, float *shard);

/* Checkpoints stay in the unsharded format. mg_zero_full_state (collective): full (mg_adamw_init'ed
 * with n_full) gets every rank's moments, gathered like the weights, and the step. mg_zero_take_shard:
 * this rank's part of a full state (a loaded checkpoint, whatever wrote it) into shard (n_shard). */
int mg_zero_full_state(const mg_zero *z, const mg_adamw *shard, mg_adamw *full, mg_err *err);
void mg_zero_take_shard(const mg_zero *z, const mg_adamw *full, mg_adamw *shard);

#ifdef __cplusplus
}
#endif
#endif
