/* mg_spec_validate: the value and cross-field rules a spec must meet before anything is
 * generated from it. Each rule fails with "path: field = value: what is allowed". */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "mg_spec.h"
#include "mg_spec_schema.h"

/* Bounds that keep derived sizes and kernel index math well inside 32 bits. */
#define MAX_VOCAB   (1 << 24)
#define MAX_D_MODEL 65536
#define MAX_D_FF    262144
#define MAX_LAYERS  1024
#define MAX_SEQ     (1 << 20)
#define MAX_EXPERTS 256
#define MAX_HEAD_DIM 256
#define MAX_SHARED  64
/* The kernels load 16 elements per vector access along d_model and d_ff. */
#define VEC_WIDTH 16
/* Attention tiles head_dim in steps of 8 (and rotary embedding needs it even). */
#define HEAD_DIM_STEP 8

typedef struct check {
    const mg_spec *s;
    mg_err *err;
} check;

static int fail(check *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int fail(check *c, const char *fmt, ...)
{
    char msg[768];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return mg_err_set(c->err, MG_EUSER, "%s: %s", c->s->path, msg);
}

/* ---------------------------------------------------------------- generic rules */

static int int_in(check *c, const char *field, int v, int lo, int hi)
{
    if (v >= lo && v <= hi) return MG_OK;
    return fail(c, "%s = %d: must be in [%d, %d]", field, v, lo, hi);
}

static int int_min(check *c, const char *field, int v, int lo)
{
    return v >= lo ? MG_OK : fail(c, "%s = %d: must be >= %d", field, v, lo);
}

/* A width the kernels vectorize along: d_model, d_ff, d_ff_dense. */
static int vec_dim(check *c, const char *field, int v, int max)
{
    int rc = int_in(c, field, v, VEC_WIDTH, max);
    if (rc == MG_OK && v % VEC_WIDTH)
        rc = fail(c, "%s = %d: must be a multiple of %d (kernel vector width)", field, v, VEC_WIDTH);
    return rc;
}

static int num_min(check *c, const char *field, double v, double lo)
{
    if (isfinite(v) && v >= lo) return MG_OK;
    return fail(c, "%s = %g: must be >= %g", field, v, lo);
}

static int num_positive(check *c, const char *field, double v)
{
    return isfinite(v) && v > 0 ? MG_OK : fail(c, "%s = %g: must be > 0", field, v);
}

/* [0, 1): probabilities and decay rates where 1 would stop learning. */
static int num_unit(check *c, const char *field, double v)
{
    return v >= 0 && v < 1 ? MG_OK : fail(c, "%s = %g: must be in [0, 1)", field, v);
}

static int boolean(check *c, const char *field, int v)
{
    return v == 0 || v == 1 ? MG_OK : fail(c, "%s = %d: must be a boolean (true or false)", field, v);
}

static int enum_in(check *c, const char *field, int v, const char *const *names, int n)
{
    if (v >= 0 && v < n) return MG_OK;
    char all[256] = "";
    size_t o = 0;
    for (int i = 0; i < n; i++) o += snprintf(all + o, sizeof all - o, "%s%s", i ? ", " : "", names[i]);
    return fail(c, "%s = %d: must be one of %s", field, v, all);
}

static int name_ok(const char *name)
{
    size_t n = strlen(name);
    if (n == 0 || n > 63) return 0;
    for (const char *p = name; *p; p++)
        if (!(*p >= 'a' && *p <= 'z') && !(*p >= 'A' && *p <= 'Z') && !(*p >= '0' && *p <= '9') &&
            *p != '_' && *p != '-')
            return 0;
    return 1;
}

/* ---------------------------------------------------------------- sections */

static int check_name(check *c)
{
    if (!memchr(c->s->name, 0, sizeof c->s->name) || !name_ok(c->s->name))
        return fail(c, "name = \"%.63s\": %s", c->s->name, MG_SPEC_NAME_RULE);
    return MG_OK;
}

static int check_heads(check *c)
{
    const mg_spec *s = c->s;
    int rc = int_in(c, "model.n_head", s->model.n_head, 1, s->model.d_model);
    if (rc) return rc;
    if (s->model.d_model % s->model.n_head)
        return fail(c, "model.n_head = %d: must divide model.d_model = %d", s->model.n_head,
                    s->model.d_model);
    int hd = s->model.d_model / s->model.n_head;
    if (hd % HEAD_DIM_STEP)
        return fail(c, "model.n_head = %d: head_dim = model.d_model / model.n_head = %d: must be a "
                    "multiple of %d", s->model.n_head, hd, HEAD_DIM_STEP);
    if (hd > MAX_HEAD_DIM)
        return fail(c, "model.n_head = %d: head_dim = model.d_model / model.n_head = %d: must be "
                    "at most %d", s->model.n_head, hd, MAX_HEAD_DIM);
    if ((rc = int_in(c, "model.n_kv_head", s->model.n_kv_head, 1, s->model.n_head))) return rc;
    if (s->model.n_head % s->model.n_kv_head)
        return fail(c, "model.n_kv_head = %d: must divide model.n_head = %d", s->model.n_kv_head,
                    s->model.n_head);
    return MG_OK;
}

static int check_model(check *c)
{
    const mg_spec *s = c->s;
    int rc;
    if ((rc = int_in(c, "model.vocab", s->model.vocab, 2, MAX_VOCAB))) return rc;
    if ((rc = vec_dim(c, "model.d_model", s->model.d_model, MAX_D_MODEL))) return rc;
    if ((rc = int_in(c, "model.n_layer", s->model.n_layer, 1, MAX_LAYERS))) return rc;
    if ((rc = check_heads(c))) return rc;
    if ((rc = int_in(c, "model.seq_len", s->model.seq_len, 1, MAX_SEQ))) return rc;
    if ((rc = boolean(c, "model.tie_embeddings", s->model.tie_embeddings))) return rc;
    if ((rc = num_positive(c, "model.rope_theta", s->model.rope_theta))) return rc;
    if (!(s->model.norm_eps > 0 && s->model.norm_eps < 1))
        return fail(c, "model.norm_eps = %g: must be in (0, 1)", s->model.norm_eps);
    return MG_OK;
}

static int check_router(check *c)
{
    const mg_spec *s = c->s;
    int rc = enum_in(c, "moe.router", (int)s->moe.router, mg_router_names, 3);
    if (rc == MG_OK && s->moe.router == MG_ROUTER_SWITCH && s->moe.top_k != 1)
        rc = fail(c, "moe.top_k = %d: must be 1 with moe.router = \"switch\"", s->moe.top_k);
    return rc;
}

static int check_moe(check *c)
{
    const mg_spec *s = c->s;
    int rc;
    if ((rc = int_in(c, "moe.experts", s->moe.experts, 1, MAX_EXPERTS))) return rc;
    if (s->moe.top_k < 1 || s->moe.top_k > s->moe.experts)
        return fail(c, "moe.top_k = %d: must be in [1, moe.experts = %d]", s->moe.top_k,
                    s->moe.experts);
    if ((rc = vec_dim(c, "moe.d_ff", s->moe.d_ff, MAX_D_FF))) return rc;
    if ((rc = enum_in(c, "moe.activation", (int)s->moe.activation, mg_act_names, 4))) return rc;
    if ((rc = check_router(c))) return rc;
    if ((rc = boolean(c, "moe.renormalize", s->moe.renormalize))) return rc;
    if ((rc = num_min(c, "moe.capacity_factor", s->moe.capacity_factor, 0))) return rc;
    if ((rc = enum_in(c, "moe.drop_policy", (int)s->moe.drop_policy, mg_drop_names, 2))) return rc;
    if ((rc = num_min(c, "moe.aux_loss", s->moe.aux_loss, 0))) return rc;
    if ((rc = num_min(c, "moe.z_loss", s->moe.z_loss, 0))) return rc;
    if (s->moe.every < 0 || s->moe.every > s->model.n_layer)
        return fail(c, "moe.every = %d: must be in [0, model.n_layer = %d] (0 = no MoE layer)",
                    s->moe.every, s->model.n_layer);
    if ((rc = int_in(c, "moe.shared_experts", s->moe.shared_experts, 0, MAX_SHARED))) return rc;
    if ((rc = num_min(c, "moe.bias_update_rate", s->moe.bias_update_rate, 0))) return rc;
    /* Checked after moe: its default is derived from moe.d_ff and moe.top_k. */
    return vec_dim(c, "model.d_ff_dense", s->model.d_ff_dense, MAX_D_FF);
}

static int check_train(check *c)
{
    const mg_spec *s = c->s;
    int rc;
    if (!memchr(s->train.data, 0, sizeof s->train.data) || !s->train.data[0])
        return fail(c, "train.data = \"\": must be a data set name or a path");
    if ((rc = int_min(c, "train.batch", s->train.batch, 1))) return rc;
    if ((rc = num_positive(c, "train.lr", s->train.lr))) return rc;
    if (!(s->train.min_lr >= 0 && s->train.min_lr <= s->train.lr))
        return fail(c, "train.min_lr = %g: must be in [0, train.lr = %g]", s->train.min_lr,
                    s->train.lr);
    if ((rc = int_min(c, "train.steps", s->train.steps, 1))) return rc;
    if (s->train.warmup < 0 || s->train.warmup > s->train.steps)
        return fail(c, "train.warmup = %d: must be in [0, train.steps = %d]", s->train.warmup,
                    s->train.steps);
    if ((rc = enum_in(c, "train.schedule", (int)s->train.schedule, mg_sched_names, 3))) return rc;
    if ((rc = num_min(c, "train.weight_decay", s->train.weight_decay, 0))) return rc;
    if ((rc = num_min(c, "train.grad_clip", s->train.grad_clip, 0))) return rc;
    if ((rc = num_unit(c, "train.beta1", s->train.beta1))) return rc;
    if ((rc = num_unit(c, "train.beta2", s->train.beta2))) return rc;
    if ((rc = num_unit(c, "train.dropout", s->train.dropout))) return rc;
    if ((rc = int_min(c, "train.grad_accum", s->train.grad_accum, 1))) return rc;
    if ((rc = int_min(c, "train.eval_every", s->train.eval_every, 1))) return rc;
    if ((rc = int_min(c, "train.eval_batches", s->train.eval_batches, 1))) return rc;
    return int_min(c, "train.seed", s->train.seed, 0);
}

static int check_parallel(check *c)
{
    const mg_spec *s = c->s;
    int rc;
    if ((rc = int_min(c, "parallel.dp", s->parallel.dp, 1))) return rc;
    if ((rc = int_min(c, "parallel.ep", s->parallel.ep, 1))) return rc;
    if (s->moe.experts % s->parallel.ep)
        return fail(c, "parallel.ep = %d: must divide moe.experts = %d", s->parallel.ep,
                    s->moe.experts);
    if (s->parallel.zero != 0 && s->parallel.zero != 1)
        return fail(c, "parallel.zero = %d: must be 0 or 1", s->parallel.zero);
    return MG_OK;
}

int mg_spec_validate(const mg_spec *s, mg_err *err)
{
    check c = {s, err};
    int rc;
    if ((rc = check_name(&c))) return rc;
    if ((rc = check_model(&c))) return rc;
    if ((rc = check_moe(&c))) return rc;
    if ((rc = enum_in(&c, "dtype", (int)s->dtype, mg_dtype_names, 3))) return rc;
    if ((rc = check_train(&c))) return rc;
    if ((rc = check_parallel(&c))) return rc;
    return int_min(&c, "log.every", s->log.every, 1);
}
