/* mg_gpu_model: the whole language model on one GPU, forward, backward and the optimizer step:
 * the same model, parameter layout, RNG counters and step math as the CPU trainer
 * (runtime/TRAINING.md, mg_cpu_model.h), on the generated kernels.
 *
 * Parameters: one flat fp32 master buffer P in the CPU model's order (so init, checkpoints and
 * the tensor table are the CPU model's: the host mg_cpu_model is the source of truth at
 * upload/download time), its gradient G, AdamW m/v, and a compute copy Wc in the spec's dtype
 * at the same offsets (Wc = P for fp32). Under ZeRO-1 (mg_gpu_zero.h) M, Vm and, for a bf16/fp16
 * model, P hold this rank's shard only, the gradients are reduce-scattered into a shard buffer and
 * Wc is all-gathered after AdamW. Adjacent tensors are used fused, with no copy:
 *   q_proj, k_proj, v_proj          = one [(H + 2·KV)·hd, d] QKV weight (lm_params.h's W_qkv order)
 *   router, experts' gate/up, down  = mg_moe's wg, w_up [E, F2, d], w_dn [E, d, ff] (+ shared)
 *   dense gate_proj, up_proj, down  = mg_moe's w_up [1, F2d, d], w_dn [1, d, ffd]
 *
 * Per micro-batch of B sequences (N = B·T rows), forward:
 *   x0 = embed(ids)                                                     mg_lm_embed_fwd
 *   layer l:  n1 = rmsnorm(x_l)            qkv = n1·W_qkvᵀ (cuBLASLt)  rope(qkv)  attn → att
 *             x_mid = x_l + drop(att·W_oᵀ)                             mg_lm_dropout (residual fused)
 *             n2 = rmsnorm(x_mid)          f = ffn(n2)                 x_{l+1} = x_mid + drop(f)
 *   logits = rmsnorm(x_L)·headᵀ  [N, ldV]  → fused CE, dlogits in place (scale 1/(A·N))
 * The FFN of an MoE layer is mg_moe built for the spec with aux_loss/A and z_loss/A baked in
 * (the kernels take the coefficients as constants; TRAINING.md scales them by 1/grad_accum).
 * A dense layer is mg_moe built for E = 1, k = 1, d_ff = d_ff_dense, softmax router, no
 * aux/z loss, dropless: softmax over one logit is exactly 1, so y = 1·down(act(up(x))) with
 * the generated (and verified) up/activation/down kernels; the router's gradient is exactly
 * 0 and goes to a scratch buffer. The LM has no separate activation kernel, so this keeps one
 * implementation of each activation.
 *
 * Gradients: micro-batch 0 writes every gradient (GEMM beta 0, norm dw and mg_moe grads
 * written), later micro-batches accumulate (GEMM beta 1; norm dw and MoE grads through a
 * scratch buffer plus an fp32 add). The tied head's gradient is written by the head GEMM and
 * the embedding backward accumulates onto it. Grad norm: util sumsq per 16M-element chunk +
 * one gnorm (deterministic); clip factor stays on the device and feeds AdamW.
 *
 * All work goes on one stream; nothing syncs until mg_gpu_read_stats / the download. */
#ifndef MG_GPU_MODEL_H
#define MG_GPU_MODEL_H

#include "mg_cpu_model.h"
#include "mg_err.h"
#include "mg_optim.h"
#include "mg_spec.h"

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Dense bf16 peak used for MFU: H100 SXM and H200 datasheet, 989 TFLOP/s (no sparsity). */
#define MG_GPU_PEAK_BF16 989.0e12

/* Number of usable CUDA devices (0 with the reason in why when none). */
int mg_gpu_count(char *why, size_t n);

/* Model FLOPs utilization: tok_per_s · flops_per_token (mg_spec_derive: 6·active + attention)
 * / peak (peak <= 0: MG_GPU_PEAK_BF16). */
double mg_gpu_mfu(const mg_spec *s, double tok_per_s, double peak);

/* The fused views of the flat buffer the GPU model relies on; checks that the tensors are
 * where it expects them (q,k,v adjacent; an MoE layer's router, experts, shared experts
 * contiguous; a dense layer's gate/up/down contiguous). CPU-only: tested by test_gpu_layout.
 * Returns MG_OK or MG_EINTERNAL naming the first tensor out of place. */
int mg_gpu_check_layout(const mg_cpu_model *m, mg_err *err);

/* The spec the MoE kernels of layer kind `dense` (0: an MoE layer, 1: a dense layer as E = 1)
 * are generated for: single GPU layout, aux/z divided by grad_accum (MoE) or 0 (dense). */
void mg_gpu_layer_spec(const mg_spec *s, int dense, mg_spec *out);

typedef struct mg_gpu_model mg_gpu_model;

typedef struct mg_gpu_opts {
    const char *arch;   /* NULL: the current device's */
    int verbose;
    double loss_scale;  /* loss weight of one micro-batch, baked into the MoE layers' aux/z coefficients:
                           0 = 1/grad_accum; data parallel: mg_dp.scale */
    const struct mg_zero *zero;   /* ZeRO-1 (mg_zero.h, outlives the model): AdamW state and fp32 master
                                     weights for this rank's shard only; NULL: the whole model */
} mg_gpu_opts;

/* Compiles (through the cache) and allocates for micro-batches of up to bmax sequences of
 * the model host describes; host must outlive g. No upload: call mg_gpu_upload. */
int mg_gpu_create(mg_gpu_model **g, mg_cpu_model *host, int bmax, const mg_gpu_opts *o, mg_err *err);
void mg_gpu_destroy(mg_gpu_model *g);

/* host params (+ selection biases) → device master and compute weights; with o != NULL
 * also the AdamW moments and step. ZeRO-1 (mg_gpu_opts.zero): o is the shard (n = n_shard). */
int mg_gpu_upload(mg_gpu_model *g, const mg_adamw *o, mg_err *err);
/* device → host params, biases and (o != NULL) moments; syncs. ZeRO-1: the params of this rank's
 * runs only (mg_zero_gather on the host completes them) and o the shard. */
int mg_gpu_download(mg_gpu_model *g, mg_adamw *o, mg_err *err);
/* device gradients → out [n_params] (host); syncs. */
int mg_gpu_download_grads(mg_gpu_model *g, float *out, mg_err *err);

/* per_layer[i] (host, [B·T, k]) receives MoE layer i's top-k choices at each forward, for the
 * GPU-vs-CPU check; NULL entries (dense layers) and per_layer = NULL (the default) capture
 * nothing. Valid after the next sync (mg_gpu_read_stats). */
void mg_gpu_capture_routing(mg_gpu_model *g, int *const *per_layer);

/* Enqueues one micro-batch: tokens [B, T+1] host (copied to pinned staging, then async H2D),
 * forward (+ backward when grad: slot 0 writes the gradients, slots > 0 accumulate, i.e. slot is
 * the local micro-batch index; ctx->micro only picks the dropout streams); its statistics go to
 * `slot` (< mg_gpu_slots). */
int mg_gpu_run(mg_gpu_model *g, const int32_t *tokens, int B, const mg_cpu_ctx *ctx, int grad, int slot, mg_err *err);
int mg_gpu_slots(const mg_gpu_model *g);

/* Waits, then sums the statistics of slots [0, n) in order like mg_cpu_out (ce_sum = CE·N,
 * aux/z already scaled); when count_loads, adds each MoE layer's routing loads to
 * host->layers[i].load (for mg_cpu_model_update_bias). */
int mg_gpu_read_stats(mg_gpu_model *g, int n, int count_loads, mg_cpu_out *outs, mg_err *err);

/* After mg_gpu_read_stats: MoE layer i's routing counts [E] (before drops), aux, z and drops
 * in slot; pointers valid until the next read. */
void mg_gpu_layer_stats(const mg_gpu_model *g, int slot, int layer, const int **counts_all, double *aux, double *z,
                        long *dropped);
/* After mg_gpu_read_stats: MoE layer i's router statistics in slot, reduced on the device by
 * the routing kernels: Σ_t −Σ_e p ln p and Σ_t max_e p (for mg_metrics_batch). */
void mg_gpu_layer_router_sums(const mg_gpu_model *g, int slot, int layer, double *entropy_sum, double *top1_sum);

/* Expert co-activation, counted on the device from each MoE layer's top-k choices (no pass over
 * the hidden states): with on != 0, the next mg_gpu_run calls with slot < grad_accum also count
 * mg_metrics_coact's pairs of each MoE layer into [E, E] ints of their slot (kernel mg_gpu_coact,
 * integer atomics: deterministic); 0 stops. The trainer turns it on for log steps only. */
void mg_gpu_count_coact(mg_gpu_model *g, int on);
/* After mg_gpu_read_stats: MoE layer i's co-activation counts [E, E] in slot (for
 * mg_metrics_batch.coact), or NULL when that slot's run did not count them or i is dense;
 * valid until the next read. */
const int *mg_gpu_layer_coact(const mg_gpu_model *g, int slot, int layer);

/* The NVRTC source of the model's own small kernels (mg_gpu_add_f32, mg_gpu_coact), compiled at
 * mg_gpu_create; CPU-side, so test_gpu_layout compiles it without a device. */
const char *mg_gpu_glue_source(size_t *len);

/* Grad norm, clip, AdamW at lr for update t = o->step + 1 (o->step is then incremented,
 * host side only); returns the (unclipped) norm. Syncs to read the norm. */
int mg_gpu_opt_step(mg_gpu_model *g, mg_adamw *o, double lr, double *gnorm, mg_err *err);
/* Data parallel (mg_dp.h, dp outlives g): a side stream and per-bucket events. After
 * mg_gpu_dp_arm, the next backward enqueues each bucket's all-reduce on the side stream as soon
 * as its stage is done, overlapping the rest of the backward; mg_gpu_opt_step makes the compute
 * stream wait for all of them and waits through mg_comm_wait (timeout, NCCL errors → abort).
 * Arm before the last local micro-batch of a step. No-op when dp is off. */
typedef struct mg_dp mg_dp;
int mg_gpu_dp_attach(mg_gpu_model *g, const mg_dp *dp, mg_err *err);
/* Expert parallel (the host model is a shard, h->ep > 1): the MoE layers exchange their tokens with
 * the group over ep_comm (NCCL, this device) and the grad norm adds the group's experts
 * (runtime/mg_gpu_ep.h). No-op for an unsharded model. */
typedef struct mg_comm mg_comm;
/* Host seconds in expert-parallel token exchanges so far (mg_gpu_ep_a2a_seconds); -1 without EP. */
double mg_gpu_a2a_seconds(const mg_gpu_model *g);
/* Of those, the seconds during which the compute stream ran the shared experts beside the exchange
 * (mg_gpu_ep_a2a_hidden_seconds; 0 without shared experts); -1 without EP. */
double mg_gpu_a2a_hidden_seconds(const mg_gpu_model *g);
int mg_gpu_ep_attach(mg_gpu_model *g, mg_comm *ep_comm, mg_err *err);
void mg_gpu_dp_arm(mg_gpu_model *g);
/* After mg_cpu_model_update_bias on the host: the selection biases → device. */
int mg_gpu_upload_bias(mg_gpu_model *g, mg_err *err);

/* Device memory in use on the current device (cudaMemGetInfo total − free), bytes. */
double mg_gpu_mem_used(void);
/* The device's name, for logs. */
void mg_gpu_name(char *buf, size_t n);

#ifdef __cplusplus
}
#endif
#endif
