/* mg_gpu_ep: expert parallelism in the GPU trainer (issue 6): the MoE layer of a rank holding E/P
 * experts, the tokens exchanged with NCCL (mg_comm_all_to_all_v on device buffers). The same
 * layout and exchange as the CPU trainer's mg_ep (mg_ep.h), on mg_moe's phases:
 *
 *   forward   mg_moe_route (router, dispatch, losses) on the local tokens; the per-expert kept
 *             counts to the host (E ints) and all-gathered over the group; the kept rows gathered
 *             by perm (slot order = expert order, so one run per owner) and sent, while the shared
 *             experts (replicated, on this rank's tokens) run on the compute stream; the owner copies
 *             the received blocks expert-major (sources in rank order), runs each local expert's
 *             MLP on its rows (mg_moe_expert_fwd: the shared experts' launches), copies the outputs
 *             back to arrival order and returns them into the layer's slot-order z; mg_moe_combine
 *             (with the shared experts' output).
 *   backward  mg_moe_route_bwd (dz per kept slot, router backward); dz rows to the owners;
 *             mg_moe_expert_bwd per local expert (its weight gradients, dx of its rows; an expert
 *             that got no rows has zero gradients); dx rows back into the slot-order dxs, while
 *             the shared experts' backward runs on the compute stream; mg_moe_router_dx (dwg, dx).
 *
 * Unlike the CPU path, the aux/z losses use each rank's own statistics (the router kernels read
 * the local counts): summed over the ranks with the loss weight 1/(A·world) they are the mean of
 * the ranks' aux, not the group's aux (a difference far below bf16 rounding for balanced loads).
 * Each exchange syncs the compute stream first (the send counts are needed on the host anyway).
 * With shared experts, the dispatch (forward) and the dx return (backward) are enqueued on the
 * layer's own stream and the shared experts on the compute stream behind them, so the two run at
 * once (MOEGEN_EP_OVERLAP=0: in series); runtime/DISTRIBUTED.md, "Shared experts on the GPU". */
#ifndef MG_GPU_EP_H
#define MG_GPU_EP_H

#include "mg_comm.h"
#include "mg_cpu_model.h"
#include "mg_err.h"
#include "mg_lm.h"
#include "mg_moe.h"

#include <cuda_runtime_api.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct mg_gpu_ep mg_gpu_ep;

/* For the shard h (h->ep > 1) over ep_comm (size h->ep, rank h->ep_rank, an NCCL comm on this
 * device), micro-batches of up to bmax sequences: compiles the row-gather kernel and allocates
 * the exchange buffers (per MoE layer: the received rows and the local experts' activations). */
int mg_gpu_ep_create(mg_gpu_ep **out, mg_comm *ep_comm, const mg_cpu_model *h, int bmax, mg_err *err);
void mg_gpu_ep_destroy(mg_gpu_ep *x);
/* Host seconds spent in the token exchanges since create: the all-to-all's own time (the "all-to-all
 * share" of a step), the device idle otherwise except for the shared experts. 0 for NULL. */
double mg_gpu_ep_a2a_seconds(const mg_gpu_ep *x);
/* Of those, the seconds hidden behind the shared experts: per overlapped exchange (the dispatch
 * forward, the dx return backward) the exchange's host time, or the shared experts' device time
 * (cudaEventElapsedTime) when they finished first. a2a_s − this is the exposed part. */
double mg_gpu_ep_a2a_hidden_seconds(const mg_gpu_ep *x);

/* The MoE layer `layer` of the shard: w with the full router and the local experts, x [N,d],
 * y [N,d] dtype; ffn is the layer's mg_moe (built for all E experts). */
int mg_gpu_ep_forward(mg_gpu_ep *x, int layer, mg_moe *ffn, cudaStream_t st, const mg_moe_weights *w, const void *xin,
                      void *y, int N, mg_err *err);
/* After mg_gpu_ep_forward on the same layer: dx [N,d] dtype; g->dwg and the local experts'
 * g->dw_up [E/P,F2,d], g->dw_dn [E/P,d,ff] written. */
int mg_gpu_ep_backward(mg_gpu_ep *x, int layer, mg_moe *ffn, cudaStream_t st, const mg_moe_weights *w,
                       const void *xin, const void *dy, void *dx, const mg_moe_grads *g, int N, mg_err *err);

/* The global grad norm from the shard's: total² − local experts² + Σ_group experts², on the
 * device-computed local norm in dnorm[0]; writes the norm and the clip factor (mg_clip_scale)
 * back to dnorm[0..1]. G: the shard's gradients after their reduction. Syncs st. */
int mg_gpu_ep_fix_norm(mg_gpu_ep *x, const mg_lm *lm, cudaStream_t st, const float *G, float *dnorm, double clip,
                       mg_err *err);

#ifdef __cplusplus
}
#endif
#endif
