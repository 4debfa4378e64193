/* mg_spec: a model spec, loaded from a sandboxed Lua file and validated. */
#ifndef MG_SPEC_H
#define MG_SPEC_H

#include "mg_err.h"
#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum { MG_ACT_SWIGLU = 0, MG_ACT_GEGLU = 1, MG_ACT_GELU = 2, MG_ACT_RELU = 3 } mg_act;
typedef enum { MG_ROUTER_SOFTMAX_TOPK = 0, MG_ROUTER_SIGMOID_TOPK = 1, MG_ROUTER_SWITCH = 2 } mg_router;
typedef enum { MG_DTYPE_BF16 = 0, MG_DTYPE_FP16 = 1, MG_DTYPE_FP32 = 2 } mg_dtype;
typedef enum { MG_SCHED_COSINE = 0, MG_SCHED_LINEAR = 1, MG_SCHED_CONSTANT = 2 } mg_sched;
/* Which assignments an over-full expert keeps in capacity mode (mg_ref.h has the rule). */
typedef enum { MG_DROP_POSITION = 0, MG_DROP_PROBABILITY = 1 } mg_drop_policy;

/* Names as written in specs; indexed by the enums above. */
extern const char *const mg_act_names[4];
extern const char *const mg_router_names[3];
extern const char *const mg_dtype_names[3];
extern const char *const mg_sched_names[3];
extern const char *const mg_drop_names[2];

/* Element width in bytes of a dtype. */
int mg_dtype_size(mg_dtype t);
/* 1 when the activation is gated (gate and up projections fused: SwiGLU, GeGLU). */
int mg_act_is_glu(mg_act a);

typedef struct mg_spec {
    char path[512];   /* the file it came from, as given (for messages) */
    char name[64];    /* [A-Za-z0-9_-]+ ; default: file stem */

    struct {
        int vocab, d_model, n_layer, n_head, n_kv_head, seq_len;
        int tie_embeddings;      /* bool */
        double rope_theta;       /* default 10000 */
        double norm_eps;         /* default 1e-5 */
        int d_ff_dense;          /* dense FFN width for non-MoE layers; default = moe.d_ff * moe.top_k */
    } model;

    struct {
        int experts, top_k, d_ff;
        mg_act activation;
        mg_router router;
        int renormalize;         /* bool */
        double capacity_factor;  /* 0 = dropless */
        mg_drop_policy drop_policy;   /* capacity mode: keep by position (default) or probability */
        double aux_loss, z_loss;
        int every;               /* every n-th layer is MoE; 0 = no MoE layer (dense model) */
        int shared_experts;      /* dense experts of width d_ff added to every token */
        double bias_update_rate; /* aux-loss-free balancing (sigmoid/softmax); 0 = off */
    } moe;

    mg_dtype dtype;

    struct {
        char data[512];          /* "wikitext-2", "ptb", "tinyshakespeare" or a path */
        int batch, warmup, steps, seed, grad_accum, eval_every, eval_batches;
        double lr, min_lr, weight_decay, dropout, grad_clip, beta1, beta2;
        mg_sched schedule;
    } train;

    struct { int dp, ep, zero; } parallel;

    struct { int every; } log;   /* routing metrics every N optimizer steps (default 1) */
} mg_spec;

/* Loads and validates a spec file in a sandbox (text chunk, safe base library plus the
 * `moegen` helper module, instruction and memory limits). On error returns MG_EUSER with a
 * one-line message "path: field.path = value: what is allowed", or MG_EINTERNAL. */
int mg_spec_load(const char *path, mg_spec *out, mg_err *err);
/* Same, from an in-memory chunk; `path` names it in messages. */
int mg_spec_load_string(const char *path, const char *text, size_t len, mg_spec *out, mg_err *err);

/* Validates a filled struct (cross-field rules). mg_spec_load calls it. */
int mg_spec_validate(const mg_spec *s, mg_err *err);

/* Derived values. */
typedef struct mg_derived {
    int head_dim;
    int n_moe_layers, n_dense_layers;
    int d_ff_dense;
    double params_total, params_active;       /* counts, not bytes */
    double params_embedding;
    double flops_per_token;                    /* training: 6*active + attention (fwd+bwd) */
    double flops_per_token_fwd;
    /* GPU memory estimate at the spec's batch, bytes */
    double mem_weights, mem_grads, mem_optimizer, mem_activations, mem_total;
} mg_derived;

void mg_spec_derive(const mg_spec *s, mg_derived *d);

struct mg_sb;
/* Appends the canonical text of the spec to out: a Lua chunk returning every field (defaults
 * resolved) in schema order, numbers in shortest round-trip form. Loading it gives the same
 * spec back. The path is not part of it. mg_spec_hash hashes exactly this text. */
void mg_spec_dump(const mg_spec *s, struct mg_sb *out);

/* Stable hex sha256 over a canonical dump of the spec (not the file bytes), for manifests. */
void mg_spec_hash(const mg_spec *s, char hex[65]);

#ifdef __cplusplus
}
#endif
#endif
