/* mg_spec_derive: numbers that follow from a spec: layer split, parameter counts, FLOPs per
 * token and a GPU memory estimate. specs/README.md gives the same formulas for people. */
#include <string.h>

#include "mg_spec.h"

/* Parameter counts of the pieces of one layer. */
typedef struct layer_params {
    double attention, norms, router, expert, dense_ffn;
} layer_params;

/* Width of the up projection's output: gated activations fuse gate and up, twice d_ff. */
static double up_width(mg_act a, int d_ff)
{
    return mg_act_is_glu(a) ? 2.0 * d_ff : d_ff;
}

static layer_params count_layer(const mg_spec *s, int head_dim)
{
    double d = s->model.d_model, q = (double)s->model.n_head * head_dim,
           kv = (double)s->model.n_kv_head * head_dim, ff = s->moe.d_ff, ffd = s->model.d_ff_dense;
    layer_params p;
    p.attention = d * q + 2 * d * kv + q * d;  /* Wq, Wk and Wv, Wo */
    p.norms = 2 * d;                           /* pre-attention and pre-FFN norm gains */
    p.router = (double)s->moe.experts * d;
    p.expert = up_width(s->moe.activation, s->moe.d_ff) * d + d * ff; /* up(+gate), down */
    p.dense_ffn = up_width(s->moe.activation, s->model.d_ff_dense) * d + d * ffd;
    return p;
}

/* Activation elements kept per token for the backward pass, per attention block (plus norms),
 * dense FFN and MoE FFN. Attention is taken as flash-style: no score matrix, one softmax
 * statistic per head. */
static double act_attention(const mg_spec *s, int head_dim)
{
    double d = s->model.d_model, q = (double)s->model.n_head * head_dim,
           kv = (double)s->model.n_kv_head * head_dim;
    /* x, norm1 out, q, k, v, attention out, softmax stats, residual, norm2 out */
    return d + d + q + 2 * kv + q + s->model.n_head + d + d;
}

static double act_dense_ffn(const mg_spec *s)
{
    return up_width(s->moe.activation, s->model.d_ff_dense) + s->model.d_ff_dense;
}

static double act_moe_ffn(const mg_spec *s)
{
    double f = up_width(s->moe.activation, s->moe.d_ff) + s->moe.d_ff;
    /* router logits; per routed copy: gathered input, up out, activation out; shared experts */
    return s->moe.experts + s->moe.top_k * (s->model.d_model + f) + s->moe.shared_experts * f;
}

static void derive_params(const mg_spec *s, mg_derived *d)
{
    layer_params p = count_layer(s, d->head_dim);
    double dm = s->model.d_model, V = s->model.vocab, L = s->model.n_layer;
    double moe_total = p.router + (s->moe.experts + s->moe.shared_experts) * p.expert;
    double moe_active = p.router + (s->moe.top_k + s->moe.shared_experts) * p.expert;
    double common = L * (p.attention + p.norms) + dm + d->n_dense_layers * p.dense_ffn;

    d->params_embedding = V * dm * (s->model.tie_embeddings ? 1 : 2);
    d->params_total = d->params_embedding + common + d->n_moe_layers * moe_total;
    d->params_active = d->params_embedding + common + d->n_moe_layers * moe_active;
}

/* Training FLOPs per token: 6 per active weight (2 forward, 4 backward), the LM head's
 * matmul even when tied, and causal attention: 12*L*T*d halved by the mask. */
static void derive_flops(const mg_spec *s, mg_derived *d)
{
    double dm = s->model.d_model;
    double weights = d->params_active - d->params_embedding + (double)s->model.vocab * dm;
    double attention = 6.0 * s->model.n_layer * s->model.seq_len * dm;
    d->flops_per_token = 6 * weights + attention;
    d->flops_per_token_fwd = d->flops_per_token / 3;
}

/* One replica, no sharding (dp = ep = 1): bytes at the spec's micro-batch (train.batch). */
static void derive_memory(const mg_spec *s, mg_derived *d)
{
    double bytes = mg_dtype_size(s->dtype);
    double master = bytes < 4 ? 4 : 0; /* fp32 master copy when training in 16 bits */
    double tokens = (double)s->train.batch * s->model.seq_len;
    double per_token = s->model.n_layer * act_attention(s, d->head_dim) +
                       d->n_dense_layers * act_dense_ffn(s) + d->n_moe_layers * act_moe_ffn(s) +
                       s->model.d_model; /* final norm out */

    d->mem_weights = d->params_total * (bytes + master);
    d->mem_grads = d->params_total * 4;
    d->mem_optimizer = d->params_total * 8; /* AdamW m and v in fp32 */
    d->mem_activations = tokens * (per_token * bytes + 4.0 * s->model.vocab); /* fp32 logits */
    d->mem_total = d->mem_weights + d->mem_grads + d->mem_optimizer + d->mem_activations;
}

void mg_spec_derive(const mg_spec *s, mg_derived *d)
{
    memset(d, 0, sizeof *d);
    if (s->model.n_head <= 0) return; /* not validated: nothing sensible to derive */
    d->head_dim = s->model.d_model / s->model.n_head;
    /* Layer i (0-based) is MoE iff every > 0 and (i + 1) % every == 0. */
    d->n_moe_layers = s->moe.every > 0 ? s->model.n_layer / s->moe.every : 0;
    d->n_dense_layers = s->model.n_layer - d->n_moe_layers;
    d->d_ff_dense = s->model.d_ff_dense;
    derive_params(s, d);
    derive_flops(s, d);
    derive_memory(s, d);
}
