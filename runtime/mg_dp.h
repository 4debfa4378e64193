/* mg_dp: data parallelism, shared by the CPU and the GPU trainer (runtime/DISTRIBUTED.md):
 * which rows of a step each rank trains on, each parameter's reduction group, the gradient
 * buckets in backward order, and the sums of the statistics rank 0 reports.
 *
 * The step's global batch is what one process trains on: A = train.grad_accum micro-batches of
 * B = train.batch rows, micro-batch a = loader batch step·A + a. Over W ranks:
 *   A % W == 0  micro split: rank r runs the whole micro-batches a ∈ [r·A/W, (r+1)·A/W), each
 *               exactly as one process does (same rows, dropout counters, per-micro-batch aux/z
 *               losses and capacity); only the order of the gradient sums differs.
 *   else        row split (B % W == 0): rank r runs rows [r·B/W, (r+1)·B/W) of every micro-batch;
 *               always with expert parallelism (replicas smaller than the world, mg_ep.h).
 *               CE, z loss and dense layers are the same math; the MoE aux loss and capacity
 *               count per rank's rows (as in other DP trainers), and the dropout counter is
 *               micro = a·W + r (the masks are not one process's).
 * Every local micro-batch has loss weight 1/(A_loc·W), so the gradients summed over the ranks
 * are the gradient of the step's loss. */
#ifndef MG_DP_H
#define MG_DP_H

#include "mg_comm.h"
#include "mg_cpu_model.h"
#include "mg_err.h"
#include "mg_metrics.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Reduction groups: dense parameters over every rank; routed experts' weights over the ranks
 * that hold the same experts (the dp replicas; the same ranks as ALL while ep = 1). */
enum { MG_DP_GROUP_ALL = 0, MG_DP_GROUP_REPLICAS = 1 };

/* Backward stages: layer i = i; MG_DP_STAGE_HEAD(L) = final norm + untied lm_head (first in the
 * backward); MG_DP_STAGE_EMBED(L) = the embedding (last: the tied head adds to it). */
#define MG_DP_STAGE_HEAD(L) (L)
#define MG_DP_STAGE_EMBED(L) ((L) + 1)

typedef struct mg_dp_bucket {
    long off, n;   /* a contiguous range of the flat gradient buffer */
    int group;     /* MG_DP_GROUP_* */
    int stage;     /* whose backward completes it */
} mg_dp_bucket;

typedef struct mg_dp {
    mg_comm *comm[2];       /* per group; NULL: one process (everything here is then a no-op) */
    int rank, world;        /* in comm[ALL] */
    int A, B;               /* the global step: A micro-batches of B rows */
    int A_loc, B_loc;       /* this rank's: A_loc micro-batches of B_loc rows */
    int micro_split;        /* 1: whole micro-batches a0 + i; 0: rows [b0, b0 + B_loc) of every one */
    int a0, b0;
    double scale;           /* loss weight of one local micro-batch: 1/(A_loc·world) */
    int n_buckets;
    mg_dp_bucket *b;        /* in backward order (head, layer L-1 .. 0, embedding) */
} mg_dp;

/* The split of one step over world ranks (world 1: the whole step on this process). all and
 * replicas may be NULL with world 1; replicas NULL means all. MG_EUSER with a one-line reason
 * when neither A nor B divides by world. */
int mg_dp_init(mg_dp *dp, mg_comm *all, mg_comm *replicas, int A, int B, mg_err *err);
void mg_dp_free(mg_dp *dp);
static inline int mg_dp_on(const mg_dp *dp) { return dp->comm[MG_DP_GROUP_ALL] != NULL && dp->world > 1; }

/* Local micro-batch i: the loader batch index of step `step`, the first row to take from it,
 * and the micro-batch counter of the dropout streams (one process's a in a micro split). */
void mg_dp_micro(const mg_dp *dp, long step, int i, unsigned long long *batch, int *row0, int *drop_micro);

/* Reduction group of tensor j: MG_DP_GROUP_REPLICAS for a routed expert's weight
 * (mg_cpu_tensor.expert: model.layers.N.mlp.experts.*), else MG_DP_GROUP_ALL. */
int mg_dp_param_group(const mg_cpu_model *m, int j);

/* Cuts the flat buffer into buckets: runs of adjacent tensors of one stage and one group. */
int mg_dp_buckets(mg_dp *dp, const mg_cpu_model *m, mg_err *err);

/* Host gradients: every bucket summed over its group, blocking, in backward order. */
int mg_dp_reduce_grads(mg_dp *dp, float *grads, mg_err *err);

/* x[0..n) summed over every rank (host doubles; rank order on the CPU backend). */
int mg_dp_sum(mg_dp *dp, double *x, int n, mg_err *err);

/* The routing loads counted since the last bias update (m->layers[i].load) summed over every
 * rank, so that the aux-loss-free bias update sees the global load and stays the same on
 * every rank. */
int mg_dp_sum_loads(mg_dp *dp, mg_cpu_model *m, mg_err *err);

/* The routing metrics window (loads, co-activation, tokens, drops, entropy/top-1 sums, aux, z)
 * summed over every rank; afterwards every rank holds the global window. */
int mg_dp_sum_metrics(mg_dp *dp, mg_metrics *mx, mg_err *err);

/* Fault injection for the tests: with MOEGEN_FAULT_KILL=R:S in the environment, rank R kills
 * itself (SIGKILL) once step S is done (and checkpointed). */
void mg_dp_fault_hook(int rank, long step);

#ifdef __cplusplus
}
#endif
#endif
