/* mg_ep: expert parallelism (issue 6): the job's layout (dp × ep ranks) and the MoE layer of the
 * CPU trainer with its experts sharded over the ep ranks of a group.
 *
 * Layout: world = dp·ep, rank = dp_rank·ep + ep_rank, so an EP group is ep consecutive ranks
 * (one host's GPUs first). Every rank trains on its own rows of each micro-batch: rank r gets
 * rows [r·B/world, (r+1)·B/world) of the global batch B = train.batch, so the rows of an EP group
 * are contiguous and in rank order. Rank ep_rank holds experts [ep_rank·E/ep, (ep_rank+1)·E/ep)
 * of every MoE layer (mg_cpu_model_create_shard); everything else is replicated.
 *
 * One MoE layer on rank q of a group of P (T local tokens, top-k):
 *   route    the full, replicated router on the local tokens (mg_ref_route: top-k, weights,
 *            the stable expert sort and capacity, which counts per rank's tokens);
 *   counts   all-gather of every rank's per-expert counts (before and after drops); the
 *            group's counts_all give the aux loss its f_e, and each rank's aux/z is its share
 *            of the group's (mg_ref_cfg.T_stat/counts_stat): summed over the group they equal
 *            one rank routing all the group's tokens;
 *   dispatch the kept slots are expert-sorted, so the rows for owner q' are one run; they go
 *            out with one all_to_all_v (F32 rows of d);
 *   experts  the received rows, regrouped expert-major (source ranks in order inside an expert:
 *            the group's token order), run through the local experts as an mg_ref layer of
 *            E/P experts, k = 1, weight exactly 1 (zero router, renormalized);
 *   shared   the shared experts (moe.shared_experts > 0) are replicated like the dense layers:
 *            every rank runs them on its own T tokens (mg_ref_shared_forward, between the
 *            dispatch and the exchange, the GPU's order: there they run while the rows travel);
 *   return   outputs go back on the reverse all_to_all_v; the source rank combines
 *            y[t] = Σ_j w[t,j]·z(t,j) in j order + the shared experts' output (fp64, one rounding).
 * Backward mirrors it: dw[t,j] = z·dy and dz = w·dy at the source; dz rows go to the owners,
 * which run the local experts' backward (weight grads of their experts, dx of the rows); the
 * shared experts' backward runs on every rank's own tokens before the return; dx rows come back
 * and are added to the router's dx (mg_ref_router_backward, with the group's stats), then the
 * shared experts' dx.
 *
 * Gradients: a rank's CE is seeded with 1/(A·N_global) (ctx.scale = 1/(A·world)), so the sum
 * over ranks of a replicated tensor's gradient is the one-rank gradient; an expert's gradient on
 * its owner already covers its group's tokens and is summed over the dp replicas only
 * (mg_cpu_tensor.expert). The shared experts are not mg_cpu_tensor.expert: summed over every rank,
 * kept whole in every shard, copied from group rank 0 into a checkpoint like any dense tensor. */
#ifndef MG_EP_H
#define MG_EP_H

#include "mg_comm.h"
#include "mg_cpu_model.h"
#include "mg_err.h"
#include "mg_optim.h"
#include "mg_spec.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct mg_par {
    int rank, world;
    int dp, ep;              /* world = dp·ep */
    int dp_rank, ep_rank;    /* rank = dp_rank·ep + ep_rank */
} mg_par;

/* The layout of rank `rank` of `world` for spec s: parallel.dp·parallel.ep when that is world;
 * with parallel.ep = 1 any world is data parallel (dp = world). Errors (one line, naming the
 * spec field): ep·dp ≠ world; with ep > 1 a batch not divisible by world.
 * One process (world 1) always trains the whole model (dp = ep = 1), whatever the spec says. */
int mg_par_make(const mg_spec *s, int rank, int world, mg_par *p, mg_err *err);

typedef struct mg_ep mg_ep;

/* The EP runtime of model m (a shard: m->ep > 1) over ep_comm, the communicator of m's EP group
 * (size m->ep, rank m->ep_rank); sets m->ep_rt. mg_ep_detach frees it. */
int mg_ep_attach(mg_cpu_model *m, mg_comm *ep_comm, mg_err *err);
void mg_ep_detach(mg_cpu_model *m);

/* The first communication error since attach (0: none). After an error the layers stop
 * communicating and produce zeros; the trainer checks this after every forward/backward. */
int mg_ep_error(const mg_ep *x, mg_err *err);

/* The group's counts_all [E] of MoE layer `layer` at its last forward (every rank holds them). */
const int *mg_ep_group_counts(const mg_ep *x, int layer);

/* Forward of MoE layer `layer`: rc as for mg_ref (T = local tokens, E = all experts, the
 * coefficients as this rank's loss weight gives them), xin [T,d], w: the router, selection
 * bias and shared experts in full, w_up/w_dn the local experts. Fills rf (routing, this rank's share of aux/z) and
 * y [T,d]. Collective over the group. */
void mg_ep_forward(mg_ep *x, int layer, const mg_ref_cfg *rc, const float *xin, const mg_ref_weights *w,
                   mg_ref_fwd *rf, float *y);
/* Backward after mg_ep_forward on the same inputs: dx [T,d] written; the router's gradient
 * added into g_router [E,d], the local experts' into g_up [E/P,F2,d] and g_dn [E/P,d,ff], the
 * shared experts' (rc->n_shared > 0; else NULL) into g_sup [S,F2,d] and g_sdn [S,d,ff]. */
void mg_ep_backward(mg_ep *x, int layer, const mg_ref_cfg *rc, const float *xin, const mg_ref_weights *w,
                    const mg_ref_fwd *rf, const float *dy, float *dx, float *g_router, float *g_up, float *g_dn,
                    float *g_sup, float *g_sdn);

/* The communicators of layout p out of the world's (collective; ep = 1: both NULL): ep_comm the
 * EP group (the world itself when dp = 1), replicas the ranks holding the same experts (one rank
 * when dp = 1: its expert gradients need no sum). Close what is not the world. */
int mg_ep_comms(const mg_par *p, mg_comm *world, mg_comm **ep_comm, mg_comm **replicas, mg_err *err);

/* ‖grad‖₂ of the whole model from a shard: replicated tensors once, the experts summed over the
 * EP group (collective on ep_comm; after the gradient reduction). */
int mg_ep_grad_norm(const mg_cpu_model *m, mg_comm *ep_comm, double *norm, mg_err *err);

/* Checkpoints stay the one-file format of a one-rank run. Collective over the EP group:
 * rank 0 of the group gets, in full (created with mg_cpu_model_create, any bmax), every
 * parameter, selection bias and (o, fo non-NULL) AdamW moment and step, the experts gathered
 * from their owners; other ranks pass full = fo = NULL. Loading needs no gather: a shard loads
 * its own tensors by name out of the full file (mg_ckpt_load), whatever ep wrote it. */
int mg_ep_gather_full(const mg_cpu_model *shard, const mg_adamw *o, mg_comm *ep_comm, mg_cpu_model *full,
                      mg_adamw *fo, mg_err *err);

#ifdef __cplusplus
}
#endif
#endif
