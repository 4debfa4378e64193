/* mg_spec_schema: every spec field with its type, place in mg_spec and default.
 * specs/README.md documents the same table for people; keep the two in step. */
#include "mg_spec_schema.h"

#include <stddef.h>

#include "mg_spec.h"

/* Enum fields are written through an int lvalue. */
_Static_assert(sizeof(mg_act) == sizeof(int) && sizeof(mg_router) == sizeof(int) &&
               sizeof(mg_dtype) == sizeof(int) && sizeof(mg_sched) == sizeof(int) &&
               sizeof(mg_drop_policy) == sizeof(int),
               "spec enums must be int-sized");

#define OFF(f) offsetof(mg_spec, f)
#define INT(n, f, d)   {n, MG_SPEC_INT, OFF(f), 0, MG_SPEC_DEF_PLAIN, d, NULL, NULL, 0, NULL}
#define NUM(n, f, d)   {n, MG_SPEC_NUM, OFF(f), 0, MG_SPEC_DEF_PLAIN, d, NULL, NULL, 0, NULL}
#define BOOL(n, f, d)  {n, MG_SPEC_BOOL, OFF(f), 0, MG_SPEC_DEF_PLAIN, d, NULL, NULL, 0, NULL}
#define REQ(n, f)      {n, MG_SPEC_INT, OFF(f), 0, MG_SPEC_DEF_REQUIRED, 0, NULL, NULL, 0, NULL}
#define DEP(n, k, f, d){n, k, OFF(f), 0, d, 0, NULL, NULL, 0, NULL}
#define ENUM(n, f, tab, d) \
    {n, MG_SPEC_ENUM, OFF(f), 0, MG_SPEC_DEF_PLAIN, d, NULL, tab, sizeof tab / sizeof *tab, NULL}
#define STR(n, f, dk, d) {n, MG_SPEC_STR, OFF(f), sizeof(((mg_spec *)0)->f), dk, 0, d, NULL, 0, NULL}
#define TABLE(n, sub, dk) {n, MG_SPEC_TABLE, 0, 0, dk, 0, NULL, NULL, 0, sub}
#define END {NULL, 0, 0, 0, 0, 0, NULL, NULL, 0, NULL}

static const mg_spec_field model_fields[] = {
    REQ("vocab", model.vocab),
    REQ("d_model", model.d_model),
    REQ("n_layer", model.n_layer),
    REQ("n_head", model.n_head),
    DEP("n_kv_head", MG_SPEC_INT, model.n_kv_head, MG_SPEC_DEF_N_KV_HEAD),
    REQ("seq_len", model.seq_len),
    BOOL("tie_embeddings", model.tie_embeddings, 1),
    NUM("rope_theta", model.rope_theta, 10000),
    NUM("norm_eps", model.norm_eps, 1e-5),
    DEP("d_ff_dense", MG_SPEC_INT, model.d_ff_dense, MG_SPEC_DEF_D_FF_DENSE),
    END,
};

static const mg_spec_field moe_fields[] = {
    REQ("experts", moe.experts),
    REQ("top_k", moe.top_k),
    REQ("d_ff", moe.d_ff),
    ENUM("activation", moe.activation, mg_act_names, MG_ACT_SWIGLU),
    ENUM("router", moe.router, mg_router_names, MG_ROUTER_SOFTMAX_TOPK),
    BOOL("renormalize", moe.renormalize, 1),
    NUM("capacity_factor", moe.capacity_factor, 0),
    ENUM("drop_policy", moe.drop_policy, mg_drop_names, MG_DROP_POSITION),
    NUM("aux_loss", moe.aux_loss, 0.01),
    NUM("z_loss", moe.z_loss, 0.001),
    INT("every", moe.every, 1),
    INT("shared_experts", moe.shared_experts, 0),
    NUM("bias_update_rate", moe.bias_update_rate, 0),
    END,
};

static const mg_spec_field train_fields[] = {
    STR("data", train.data, MG_SPEC_DEF_PLAIN, "wikitext-2"),
    INT("batch", train.batch, 32),
    NUM("lr", train.lr, 1e-3),
    DEP("min_lr", MG_SPEC_NUM, train.min_lr, MG_SPEC_DEF_MIN_LR),
    INT("warmup", train.warmup, 100),
    ENUM("schedule", train.schedule, mg_sched_names, MG_SCHED_COSINE),
    INT("steps", train.steps, 1000),
    NUM("weight_decay", train.weight_decay, 0.1),
    NUM("grad_clip", train.grad_clip, 1.0),
    NUM("beta1", train.beta1, 0.9),
    NUM("beta2", train.beta2, 0.95),
    NUM("dropout", train.dropout, 0),
    INT("grad_accum", train.grad_accum, 1),
    INT("eval_every", train.eval_every, 200),
    INT("eval_batches", train.eval_batches, 20),
    INT("seed", train.seed, 1),
    END,
};

static const mg_spec_field parallel_fields[] = {
    INT("dp", parallel.dp, 1),
    INT("ep", parallel.ep, 1),
    INT("zero", parallel.zero, 0),
    END,
};

static const mg_spec_field log_fields[] = {
    INT("every", log.every, 1),
    END,
};

/* Optional tables default to empty, which gives every field its default. */
const mg_spec_field mg_spec_schema[] = {
    STR("name", name, MG_SPEC_DEF_NAME, NULL),
    TABLE("model", model_fields, MG_SPEC_DEF_REQUIRED),
    TABLE("moe", moe_fields, MG_SPEC_DEF_REQUIRED),
    ENUM("dtype", dtype, mg_dtype_names, MG_DTYPE_BF16),
    TABLE("train", train_fields, MG_SPEC_DEF_PLAIN),
    TABLE("parallel", parallel_fields, MG_SPEC_DEF_PLAIN),
    TABLE("log", log_fields, MG_SPEC_DEF_PLAIN),
    END,
};
