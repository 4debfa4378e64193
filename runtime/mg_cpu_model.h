/* mg_cpu_model: the whole MoE language model on the CPU, forward and backward; the oracle
 * of the GPU trainer and what CI trains.
 *
 * Model (pre-norm, Llama/Mixtral style), for a micro-batch of B sequences of T tokens:
 *   x = embed[tok]
 *   per layer i:  x += drop(o_proj(attn(rope(q_proj(n1)), rope(k_proj(n1)), v_proj(n1))))
 *                 x += drop(ffn(n2))           n1 = rmsnorm(x, ln1), n2 = rmsnorm(x, ln2)
 *                 ffn = MoE (mg_ref, over all B·T tokens at once) iff moe.every > 0 and
 *                 (i+1) % every == 0, else a dense FFN of width d_ff_dense, same activation
 *   logits = rmsnorm(x, norm)·lm_headᵀ (lm_head = embed when tied)
 *   loss = mean_tokens CE + Σ_moe-layers (aux + zloss)
 *
 * Parameters live in one flat fp32 buffer (grads, AdamW m and v use the same layout). It is
 * cut into tensors with HF names, in this order:
 *   model.embed_tokens.weight                           [V, d]
 *   per layer N: model.layers.N.
 *     input_layernorm.weight                            [d]
 *     self_attn.q_proj.weight                           [H·hd, d]
 *     self_attn.k_proj.weight, self_attn.v_proj.weight  [Hkv·hd, d]
 *     self_attn.o_proj.weight                           [d, H·hd]
 *     post_attention_layernorm.weight                   [d]
 *     MoE:   mlp.gate.weight (router)                   [E, d]
 *            mlp.experts.e.gate_proj.weight, .up_proj.weight  [ff, d]   for e = 0..E-1
 *            mlp.experts.e.down_proj.weight             [d, ff]          for e = 0..E-1
 *            mlp.shared_experts.s.{gate_proj,up_proj}, then .down_proj   as the experts
 *     dense: mlp.gate_proj.weight, mlp.up_proj.weight   [ffd, d];  mlp.down_proj.weight [d, ffd]
 *   model.norm.weight                                   [d]
 *   lm_head.weight                                      [V, d]   only when untied
 * Non-gated activations (gelu, relu) have no gate_proj. Because gate_proj and up_proj of one
 * expert are adjacent, the experts of a layer form exactly mg_ref's w_up [E, F2, d] (gate
 * rows first) and w_dn [E, d, ff]: the flat buffer is what mg_ref reads, no copies.
 *
 * Init (GPT-2): every matrix normal(0, 0.02), the residual output projections (o_proj and
 * every down_proj) normal(0, 0.02/sqrt(2·n_layer)); norm weights 1. Tensor j draws from
 * mg_rng seeded with mix64(seed) ^ mix64(j + 1), in row-major order.
 */
#ifndef MG_CPU_MODEL_H
#define MG_CPU_MODEL_H

#include "mg_err.h"
#include "mg_ref.h"
#include "mg_spec.h"

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct mg_cpu_tensor {
    char name[96];
    int ndim;
    long shape[2];
    long off, n;       /* element offset in the flat buffer, element count */
    int decay;         /* AdamW weight decay applies (2-D weights, not norms) */
    float init_std;    /* 0: init to ones (norms) */
    int gidx;          /* index in the full model's table (its init stream; = its own index unsharded) */
    int expert;        /* a routed expert's weight: sharded over the ep ranks, reduced over its dp replicas */
} mg_cpu_tensor;

/* What one layer keeps between forward and backward, plus its parameter offsets. */
typedef struct mg_cpu_layer {
    int moe;
    long ln1, wq, wk, wv, wo, ln2;        /* offsets into params */
    long router, w_up, w_dn, ws_up, ws_dn;  /* MoE layers */
    long f_up, f_dn;                      /* dense layers */
    float *sel_bias;                      /* [E] aux-loss-free selection bias (NULL: off) */
    long *load;                           /* [E] assignments per expert since the last reset */
    const int *force_idx;                 /* [N,k] routing to replay instead of selecting (NULL: select) */
    float *x_in, *n1, *q, *k, *v, *att, *x_mid, *n2, *fa, *fh;
    double *r1, *r2, *lse;
    mg_ref_cfg rc;
    mg_ref_fwd rf;
    mg_ref_grads rg;
} mg_cpu_layer;

typedef struct mg_cpu_model {
    mg_spec spec;
    int V, d, L, H, Hkv, hd, T, E, k, ff, F2, ffd, F2d, S, act;
    int bmax;                             /* largest micro-batch the workspace holds */
    int ep, ep_rank, E_loc, e0;           /* expert shard: experts [e0, e0 + E_loc) of E (ep = 1: all) */
    int n_tensors_full;                   /* tensors of the unsharded model (checkpoints hold them all) */
    struct mg_ep *ep_rt;                  /* expert-parallel runtime (mg_ep.h), NULL on one rank */
    long n_params;
    float *params, *grads;
    int n_tensors;
    mg_cpu_tensor *tensors;
    long emb, lnf, lm_head;               /* lm_head == emb when tied */
    mg_cpu_layer *layers;
    /* workspace */
    float *x, *tmp, *nf, *logits, *dx, *dtmp, *dn, *dq, *dk, *dv, *datt, *dfa, *dfh;
    double *rf;
    float *rope_cos, *rope_sin;
    int32_t *inp, *tgt;
} mg_cpu_model;

/* How one forward (and backward) runs. */
typedef struct mg_cpu_ctx {
    int train;          /* 1: dropout on, routing loads counted */
    uint64_t seed;
    long step;          /* optimizer step (0-based) and micro-batch: the dropout streams */
    int micro;
    double scale;       /* loss weight of this micro-batch: 1/grad_accum (1 for eval) */
} mg_cpu_ctx;

typedef struct mg_cpu_out {
    double ce_sum;      /* Σ over tokens of CE (not scaled) */
    long n_tokens;
    double aux, zloss;  /* Σ over MoE layers, already times ctx.scale */
    long dropped;       /* capacity drops over MoE layers */
} mg_cpu_out;

/* Builds the tensor table and allocates parameters, grads and a workspace for micro-batches
 * of up to bmax sequences. Weights are zero until mg_cpu_model_init_weights. */
int  mg_cpu_model_create(mg_cpu_model *m, const mg_spec *s, int bmax, mg_err *err);
/* The same for expert shard ep_rank of ep (E % ep == 0): the table holds the routed experts
 * [ep_rank·E/ep, (ep_rank+1)·E/ep) of each MoE layer (global names and init streams) and every
 * other tensor; w_up/w_dn point at the first local expert. The MoE layers run through m->ep_rt
 * (mg_ep_attach) when ep > 1. */
int  mg_cpu_model_create_shard(mg_cpu_model *m, const mg_spec *s, int bmax, int ep, int ep_rank, mg_err *err);
void mg_cpu_model_free(mg_cpu_model *m);
void mg_cpu_model_init_weights(mg_cpu_model *m, uint64_t seed);
const mg_cpu_tensor *mg_cpu_model_find(const mg_cpu_model *m, const char *name);

/* tokens: [B, T+1] windows (inputs are the first T, targets the last T). With grad = 1
 * the gradient of ctx.scale·(mean CE + aux + zloss) is added into m->grads. */
void mg_cpu_model_run(mg_cpu_model *m, const int32_t *tokens, int B, const mg_cpu_ctx *ctx,
                      int grad, mg_cpu_out *out);

/* Aux-loss-free balancing (DeepSeek-V3): sel_bias[e] += rate·sign(mean load − load[e]) from
 * the loads counted since the last call, then resets them. No-op when the bias is off. */
void mg_cpu_model_update_bias(mg_cpu_model *m, double rate);

/* 1 when layer i (0-based) is an MoE layer. */
int mg_cpu_layer_is_moe(const mg_spec *s, int i);

#ifdef __cplusplus
}
#endif
#endif
