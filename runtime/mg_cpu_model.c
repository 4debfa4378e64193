/* mg_cpu_model: the whole model on the CPU (layout and math in mg_cpu_model.h). */
#include "mg_cpu_model.h"
#include "mg_cpu_ops.h"
#include "mg_ep.h"
#include "mg_rng.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void *model_alloc(size_t n, size_t size)
{
    void *p = calloc(n ? n : 1, size);
    if (!p) {
        fprintf(stderr, "mg_cpu_model: out of memory (%zu x %zu bytes)\n", n, size);
        abort();
    }
    return p;
}
#define FALLOC(n) ((float *)model_alloc((size_t)(n), sizeof(float)))
#define DALLOC(n) ((double *)model_alloc((size_t)(n), sizeof(double)))

int mg_cpu_layer_is_moe(const mg_spec *s, int i)
{
    return s->moe.every > 0 && (i + 1) % s->moe.every == 0;
}

/* ------------------------------------------------------------------------------------ */
/* the tensor table                                                                     */

typedef struct table { mg_cpu_model *m; int cap, gidx; } table;

static long add_tensor(table *tb, int ndim, long s0, long s1, int decay, float std,
                       const char *fmt, ...) __attribute__((format(printf, 7, 8)));
static long add_tensor(table *tb, int ndim, long s0, long s1, int decay, float std,
                       const char *fmt, ...)
{
    mg_cpu_model *m = tb->m;
    if (m->n_tensors == tb->cap) {
        tb->cap = tb->cap ? 2 * tb->cap : 64;
        m->tensors = realloc(m->tensors, sizeof(mg_cpu_tensor) * (size_t)tb->cap);
        if (!m->tensors) { fputs("mg_cpu_model: out of memory\n", stderr); abort(); }
    }
    mg_cpu_tensor *t = &m->tensors[m->n_tensors++];
    memset(t, 0, sizeof *t);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(t->name, sizeof t->name, fmt, ap);
    va_end(ap);
    t->ndim = ndim;
    t->shape[0] = s0;
    t->shape[1] = ndim == 2 ? s1 : 1;
    t->n = s0 * t->shape[1];
    t->off = m->n_params;
    t->decay = decay;
    t->init_std = std;
    t->gidx = tb->gidx++;
    m->n_params += t->n;
    return t->off;
}

/* One expert group (routed or shared): gate+up of each, then down of each, so that the
 * group is mg_ref's [n, F2, d] followed by [n, d, ff]. Only experts [lo, hi) get tensors (an
 * expert shard); the others still count in the global index, so init streams stay put. */
static void add_experts(table *tb, const char *prefix, int layer, int n, int lo, int hi, long *up, long *dn)
{
    mg_cpu_model *m = tb->m;
    float std = 0.02f, std_res = (float)(0.02 / sqrt(2.0 * m->L));
    int glu = mg_act_is_glu((mg_act)m->act), first = m->n_tensors, routed = !strcmp(prefix, "experts");
    for (int e = 0; e < n; e++) {
        if (e < lo || e >= hi) { tb->gidx += glu ? 2 : 1; continue; }
        long o = glu ? add_tensor(tb, 2, m->ff, m->d, 1, std, "model.layers.%d.mlp.%s.%d.gate_proj.weight",
                                  layer, prefix, e) : -1;
        long o2 = add_tensor(tb, 2, m->ff, m->d, 1, std, "model.layers.%d.mlp.%s.%d.up_proj.weight", layer,
                             prefix, e);
        if (e == lo) *up = glu ? o : o2;
    }
    for (int e = 0; e < n; e++) {
        if (e < lo || e >= hi) { tb->gidx++; continue; }
        long o = add_tensor(tb, 2, m->d, m->ff, 1, std_res, "model.layers.%d.mlp.%s.%d.down_proj.weight", layer,
                            prefix, e);
        if (e == lo) *dn = o;
    }
    for (int j = first; j < m->n_tensors; j++) m->tensors[j].expert = routed;
}

static void build_table(mg_cpu_model *m)
{
    table tb = {m, 0, 0};
    float std = 0.02f, std_res = (float)(0.02 / sqrt(2.0 * m->L));
    int glu = mg_act_is_glu((mg_act)m->act);
    m->emb = add_tensor(&tb, 2, m->V, m->d, 1, std, "model.embed_tokens.weight");
    for (int i = 0; i < m->L; i++) {
        mg_cpu_layer *l = &m->layers[i];
        int qw = m->H * m->hd, kw = m->Hkv * m->hd;
        l->ln1 = add_tensor(&tb, 1, m->d, 0, 0, 0, "model.layers.%d.input_layernorm.weight", i);
        l->wq = add_tensor(&tb, 2, qw, m->d, 1, std, "model.layers.%d.self_attn.q_proj.weight", i);
        l->wk = add_tensor(&tb, 2, kw, m->d, 1, std, "model.layers.%d.self_attn.k_proj.weight", i);
        l->wv = add_tensor(&tb, 2, kw, m->d, 1, std, "model.layers.%d.self_attn.v_proj.weight", i);
        l->wo = add_tensor(&tb, 2, m->d, qw, 1, std_res, "model.layers.%d.self_attn.o_proj.weight", i);
        l->ln2 = add_tensor(&tb, 1, m->d, 0, 0, 0, "model.layers.%d.post_attention_layernorm.weight", i);
        if (l->moe) {
            l->router = add_tensor(&tb, 2, m->E, m->d, 1, std, "model.layers.%d.mlp.gate.weight", i);
            add_experts(&tb, "experts", i, m->E, m->e0, m->e0 + m->E_loc, &l->w_up, &l->w_dn);
            l->ws_up = l->ws_dn = -1;
            if (m->S) add_experts(&tb, "shared_experts", i, m->S, 0, m->S, &l->ws_up, &l->ws_dn);
        } else {
            long g = glu ? add_tensor(&tb, 2, m->ffd, m->d, 1, std, "model.layers.%d.mlp.gate_proj.weight", i) : -1;
            long u = add_tensor(&tb, 2, m->ffd, m->d, 1, std, "model.layers.%d.mlp.up_proj.weight", i);
            l->f_up = glu ? g : u;
            l->f_dn = add_tensor(&tb, 2, m->d, m->ffd, 1, std_res, "model.layers.%d.mlp.down_proj.weight", i);
        }
    }
    m->lnf = add_tensor(&tb, 1, m->d, 0, 0, 0, "model.norm.weight");
    m->lm_head = m->spec.model.tie_embeddings ? m->emb
                                              : add_tensor(&tb, 2, m->V, m->d, 1, std, "lm_head.weight");
    m->n_tensors_full = tb.gidx;
}

/* ------------------------------------------------------------------------------------ */
/* create / free / init                                                                 */

int mg_cpu_model_create(mg_cpu_model *m, const mg_spec *s, int bmax, mg_err *err)
{
    return mg_cpu_model_create_shard(m, s, bmax, 1, 0, err);
}

int mg_cpu_model_create_shard(mg_cpu_model *m, const mg_spec *s, int bmax, int ep, int ep_rank, mg_err *err)
{
    memset(m, 0, sizeof *m);
    if (bmax < 1) return mg_err_set(err, MG_EINTERNAL, "mg_cpu_model_create: bmax = %d: must be >= 1", bmax);
    if (ep < 1 || ep_rank < 0 || ep_rank >= ep || s->moe.experts % ep)
        return mg_err_set(err, MG_EINTERNAL, "mg_cpu_model_create: expert shard %d of %d: must divide %d experts",
                          ep_rank, ep, s->moe.experts);
    mg_derived dv;
    mg_spec_derive(s, &dv);
    m->spec = *s;
    m->V = s->model.vocab, m->d = s->model.d_model, m->L = s->model.n_layer;
    m->H = s->model.n_head, m->Hkv = s->model.n_kv_head, m->hd = dv.head_dim, m->T = s->model.seq_len;
    m->E = s->moe.experts, m->k = s->moe.top_k, m->ff = s->moe.d_ff, m->S = s->moe.shared_experts;
    m->act = s->moe.activation;
    m->ffd = dv.d_ff_dense;
    int glu = mg_act_is_glu(s->moe.activation);
    m->F2 = glu ? 2 * m->ff : m->ff;
    m->F2d = glu ? 2 * m->ffd : m->ffd;
    m->bmax = bmax;
    m->ep = ep, m->ep_rank = ep_rank, m->E_loc = m->E / ep, m->e0 = ep_rank * m->E_loc;
    m->layers = model_alloc((size_t)m->L, sizeof(mg_cpu_layer));
    for (int i = 0; i < m->L; i++) m->layers[i].moe = mg_cpu_layer_is_moe(s, i);
    build_table(m);
    m->params = FALLOC(m->n_params);
    m->grads = FALLOC(m->n_params);

    long N = (long)bmax * m->T, d = m->d, qw = (long)m->H * m->hd, kw = (long)m->Hkv * m->hd;
    for (int i = 0; i < m->L; i++) {
        mg_cpu_layer *l = &m->layers[i];
        l->x_in = FALLOC(N * d), l->n1 = FALLOC(N * d), l->x_mid = FALLOC(N * d), l->n2 = FALLOC(N * d);
        l->q = FALLOC(N * qw), l->att = FALLOC(N * qw), l->k = FALLOC(N * kw), l->v = FALLOC(N * kw);
        l->r1 = DALLOC(N), l->r2 = DALLOC(N), l->lse = DALLOC((long)bmax * m->H * m->T);
        if (l->moe) {
            l->rc = (mg_ref_cfg){.T = (int)N, .d = m->d, .ff = m->ff, .E = m->E, .k = m->k, .act = m->act,
                                 .router = s->moe.router, .renormalize = s->moe.renormalize,
                                 .capacity_factor = s->moe.capacity_factor,
                                 .drop_policy = s->moe.drop_policy, .aux_coef = s->moe.aux_loss,
                                 .z_coef = s->moe.z_loss, .n_shared = m->S};
            mg_ref_fwd_alloc(&l->rc, &l->rf);
            if (ep == 1) mg_ref_grads_alloc(&l->rc, &l->rg);   /* a shard's experts: mg_ep's own buffers */
            l->load = model_alloc((size_t)m->E, sizeof(long));
            if (s->moe.bias_update_rate > 0) l->sel_bias = FALLOC(m->E);
        } else {
            l->fa = FALLOC(N * m->F2d), l->fh = FALLOC(N * m->ffd);
        }
    }
    m->x = FALLOC(N * d), m->tmp = FALLOC(N * d), m->nf = FALLOC(N * d), m->logits = FALLOC(N * m->V);
    m->dx = FALLOC(N * d), m->dtmp = FALLOC(N * d), m->dn = FALLOC(N * d);
    m->dq = FALLOC(N * qw), m->datt = FALLOC(N * qw), m->dk = FALLOC(N * kw), m->dv = FALLOC(N * kw);
    m->dfa = FALLOC(N * m->F2d), m->dfh = FALLOC(N * m->ffd);
    m->rf = DALLOC(N);
    m->rope_cos = FALLOC((long)m->T * (m->hd / 2)), m->rope_sin = FALLOC((long)m->T * (m->hd / 2));
    mg_rope_tables(m->rope_cos, m->rope_sin, m->T, m->hd, s->model.rope_theta);
    m->inp = model_alloc((size_t)N, sizeof(int32_t));
    m->tgt = model_alloc((size_t)N, sizeof(int32_t));
    return 0;
}

void mg_cpu_model_free(mg_cpu_model *m)
{
    if (!m->layers) return;
    mg_ep_detach(m);
    for (int i = 0; i < m->L; i++) {
        mg_cpu_layer *l = &m->layers[i];
        free(l->x_in); free(l->n1); free(l->x_mid); free(l->n2); free(l->q); free(l->att);
        free(l->k); free(l->v); free(l->r1); free(l->r2); free(l->lse); free(l->fa); free(l->fh);
        free(l->load); free(l->sel_bias);
        if (l->moe) { mg_ref_fwd_free(&l->rf); mg_ref_grads_free(&l->rg); }
    }
    free(m->layers); free(m->tensors); free(m->params); free(m->grads);
    free(m->x); free(m->tmp); free(m->nf); free(m->logits); free(m->dx); free(m->dtmp); free(m->dn);
    free(m->dq); free(m->datt); free(m->dk); free(m->dv); free(m->dfa); free(m->dfh); free(m->rf);
    free(m->rope_cos); free(m->rope_sin); free(m->inp); free(m->tgt);
    memset(m, 0, sizeof *m);
}

void mg_cpu_model_init_weights(mg_cpu_model *m, uint64_t seed)
{
    for (int j = 0; j < m->n_tensors; j++) {
        const mg_cpu_tensor *t = &m->tensors[j];
        float *p = m->params + t->off;
        if (t->init_std == 0) {
            for (long i = 0; i < t->n; i++) p[i] = 1.0f;
            continue;
        }
        mg_rng r;
        mg_rng_seed(&r, mg_mix64(seed) ^ mg_mix64((uint64_t)t->gidx + 1));
        for (long i = 0; i < t->n; i++) p[i] = (float)(t->init_std * mg_rng_normal(&r));
    }
    for (int i = 0; i < m->L; i++)
        if (m->layers[i].sel_bias) memset(m->layers[i].sel_bias, 0, sizeof(float) * (size_t)m->E);
}

const mg_cpu_tensor *mg_cpu_model_find(const mg_cpu_model *m, const char *name)
{
    for (int j = 0; j < m->n_tensors; j++)
        if (!strcmp(m->tensors[j].name, name)) return &m->tensors[j];
    return NULL;
}

/* ------------------------------------------------------------------------------------ */
/* forward                                                                              */

static void vadd(float *restrict y, const float *restrict x, long n)
{
    for (long i = 0; i < n; i++) y[i] += x[i];
}

static mg_ref_weights moe_weights(const mg_cpu_model *m, const mg_cpu_layer *l)
{
    const float *P = m->params;
    return (mg_ref_weights){.wg = P + l->router, .bias = l->sel_bias, .w_up = P + l->w_up, .w_dn = P + l->w_dn,
                            .ws_up = m->S ? P + l->ws_up : NULL, .ws_dn = m->S ? P + l->ws_dn : NULL};
}

static double drop_p(const mg_cpu_model *m, const mg_cpu_ctx *c) { return c->train ? m->spec.train.dropout : 0; }

static uint64_t drop_stream(const mg_cpu_ctx *c, int layer, int site)
{
    return mg_drop_stream(c->seed, (uint64_t)c->step, (uint64_t)c->micro, (uint64_t)(2 * layer + site));
}

static void layer_fwd(mg_cpu_model *m, int li, int B, const mg_cpu_ctx *c, mg_cpu_out *out)
{
    mg_cpu_layer *l = &m->layers[li];
    const float *P = m->params;
    long N = (long)B * m->T, d = m->d;
    int qw = m->H * m->hd, kw = m->Hkv * m->hd;
    double eps = m->spec.model.norm_eps, p = drop_p(m, c);

    memcpy(l->x_in, m->x, sizeof(float) * (size_t)(N * d));
    mg_rmsnorm_fwd(m->x, P + l->ln1, l->n1, l->r1, N, m->d, eps);
    mg_mm_fwd(l->n1, P + l->wq, l->q, N, m->d, qw);
    mg_mm_fwd(l->n1, P + l->wk, l->k, N, m->d, kw);
    mg_mm_fwd(l->n1, P + l->wv, l->v, N, m->d, kw);
    mg_rope_apply(l->q, B, m->T, m->H, m->hd, m->rope_cos, m->rope_sin, 0);
    mg_rope_apply(l->k, B, m->T, m->Hkv, m->hd, m->rope_cos, m->rope_sin, 0);
    mg_attn_fwd(l->q, l->k, l->v, l->att, l->lse, B, m->T, m->H, m->Hkv, m->hd);
    mg_mm_fwd(l->att, P + l->wo, m->tmp, N, qw, m->d);
    mg_dropout(m->tmp, N * d, p, drop_stream(c, li, 0));
    vadd(m->x, m->tmp, N * d);

    memcpy(l->x_mid, m->x, sizeof(float) * (size_t)(N * d));
    mg_rmsnorm_fwd(m->x, P + l->ln2, l->n2, l->r2, N, m->d, eps);
    if (l->moe) {
        l->rc.T = (int)N;
        l->rc.aux_coef = m->spec.moe.aux_loss * c->scale;
        l->rc.z_coef = m->spec.moe.z_loss * c->scale;
        mg_ref_weights w = moe_weights(m, l);
        if (m->ep_rt) {
            mg_ep_forward(m->ep_rt, li, &l->rc, l->n2, &w, &l->rf, m->tmp);
        } else {
            mg_ref_forward_routed(&l->rc, l->n2, &w, l->force_idx, &l->rf);
            memcpy(m->tmp, l->rf.y, sizeof(float) * (size_t)(N * d));
        }
        out->aux += l->rf.aux;
        out->zloss += l->rf.zloss;
        out->dropped += l->rf.n_dropped;
        if (c->train)   /* this rank's loads (expert parallel too): mg_dp_sum_loads adds up the ranks' */
            for (int e = 0; e < m->E; e++) l->load[e] += l->rf.counts_all[e];
    } else {
        mg_mm_fwd(l->n2, P + l->f_up, l->fa, N, m->d, m->F2d);
        mg_act_fwd(m->act, l->fa, l->fh, N, m->ffd);
        mg_mm_fwd(l->fh, P + l->f_dn, m->tmp, N, m->ffd, m->d);
    }
    mg_dropout(m->tmp, N * d, p, drop_stream(c, li, 1));
    vadd(m->x, m->tmp, N * d);
}

/* ------------------------------------------------------------------------------------ */
/* backward                                                                             */

/* m->dx holds dL/dx at the layer's output; on return, at its input. */
static void layer_bwd(mg_cpu_model *m, int li, int B, const mg_cpu_ctx *c)
{
    mg_cpu_layer *l = &m->layers[li];
    const float *P = m->params;
    float *G = m->grads;
    long N = (long)B * m->T, d = m->d;
    int qw = m->H * m->hd, kw = m->Hkv * m->hd;
    double p = drop_p(m, c);

    /* FFN branch: x_out = x_mid + drop(ffn(n2)) */
    memcpy(m->dtmp, m->dx, sizeof(float) * (size_t)(N * d));
    mg_dropout(m->dtmp, N * d, p, drop_stream(c, li, 1));
    if (l->moe && m->ep_rt) {
        mg_ref_weights w = moe_weights(m, l);
        mg_ep_backward(m->ep_rt, li, &l->rc, l->n2, &w, &l->rf, m->dtmp, m->dn, G + l->router, G + l->w_up,
                       G + l->w_dn, m->S ? G + l->ws_up : NULL, m->S ? G + l->ws_dn : NULL);
    } else if (l->moe) {
        mg_ref_weights w = moe_weights(m, l);
        mg_ref_backward(&l->rc, l->n2, &w, &l->rf, m->dtmp, &l->rg);
        memcpy(m->dn, l->rg.dx, sizeof(float) * (size_t)(N * d));
        vadd(G + l->router, l->rg.dwg, (long)m->E * m->d);
        vadd(G + l->w_up, l->rg.dw_up, (long)m->E * m->F2 * m->d);
        vadd(G + l->w_dn, l->rg.dw_dn, (long)m->E * m->d * m->ff);
        if (m->S) {
            vadd(G + l->ws_up, l->rg.dws_up, (long)m->S * m->F2 * m->d);
            vadd(G + l->ws_dn, l->rg.dws_dn, (long)m->S * m->d * m->ff);
        }
    } else {
        memset(m->dfh, 0, sizeof(float) * (size_t)(N * m->ffd));
        mg_mm_bwd_x(m->dtmp, P + l->f_dn, m->dfh, N, m->ffd, m->d);
        mg_mm_bwd_w(m->dtmp, l->fh, G + l->f_dn, N, m->ffd, m->d);
        mg_act_bwd(m->act, l->fa, m->dfh, m->dfa, N, m->ffd);
        memset(m->dn, 0, sizeof(float) * (size_t)(N * d));
        mg_mm_bwd_x(m->dfa, P + l->f_up, m->dn, N, m->d, m->F2d);
        mg_mm_bwd_w(m->dfa, l->n2, G + l->f_up, N, m->d, m->F2d);
    }
    mg_rmsnorm_bwd(l->x_mid, P + l->ln2, l->r2, m->dn, m->dx, G + l->ln2, N, m->d);

    /* attention branch: x_mid = x_in + drop(o_proj(attn)) */
    memcpy(m->dtmp, m->dx, sizeof(float) * (size_t)(N * d));
    mg_dropout(m->dtmp, N * d, p, drop_stream(c, li, 0));
    memset(m->datt, 0, sizeof(float) * (size_t)(N * qw));
    mg_mm_bwd_x(m->dtmp, P + l->wo, m->datt, N, qw, m->d);
    mg_mm_bwd_w(m->dtmp, l->att, G + l->wo, N, qw, m->d);
    mg_attn_bwd(l->q, l->k, l->v, l->att, l->lse, m->datt, m->dq, m->dk, m->dv, B, m->T, m->H, m->Hkv, m->hd);
    mg_rope_apply(m->dq, B, m->T, m->H, m->hd, m->rope_cos, m->rope_sin, 1);
    mg_rope_apply(m->dk, B, m->T, m->Hkv, m->hd, m->rope_cos, m->rope_sin, 1);
    memset(m->dn, 0, sizeof(float) * (size_t)(N * d));
    mg_mm_bwd_x(m->dq, P + l->wq, m->dn, N, m->d, qw);
    mg_mm_bwd_x(m->dk, P + l->wk, m->dn, N, m->d, kw);
    mg_mm_bwd_x(m->dv, P + l->wv, m->dn, N, m->d, kw);
    mg_mm_bwd_w(m->dq, l->n1, G + l->wq, N, m->d, qw);
    mg_mm_bwd_w(m->dk, l->n1, G + l->wk, N, m->d, kw);
    mg_mm_bwd_w(m->dv, l->n1, G + l->wv, N, m->d, kw);
    mg_rmsnorm_bwd(l->x_in, P + l->ln1, l->r1, m->dn, m->dx, G + l->ln1, N, m->d);
}

/* ------------------------------------------------------------------------------------ */
/* the whole model                                                                      */

void mg_cpu_model_run(mg_cpu_model *m, const int32_t *tokens, int B, const mg_cpu_ctx *ctx,
                      int grad, mg_cpu_out *out)
{
    if (B < 1 || B > m->bmax) {
        fprintf(stderr, "mg_cpu_model_run: B = %d: must be in [1, %d]\n", B, m->bmax);
        abort();
    }
    long N = (long)B * m->T, d = m->d;
    const float *P = m->params;
    memset(out, 0, sizeof *out);
    for (int b = 0; b < B; b++)
        for (int t = 0; t < m->T; t++) {
            long n = (long)b * m->T + t;
            m->inp[n] = tokens[(long)b * (m->T + 1) + t];
            m->tgt[n] = tokens[(long)b * (m->T + 1) + t + 1];
            if (m->inp[n] < 0 || m->inp[n] >= m->V || m->tgt[n] < 0 || m->tgt[n] >= m->V) {
                fprintf(stderr, "mg_cpu_model_run: token %d at [%d, %d]: must be in [0, vocab = %d)\n",
                        m->inp[n] < 0 || m->inp[n] >= m->V ? m->inp[n] : m->tgt[n], b, t, m->V);
                abort();
            }
            memcpy(m->x + n * d, P + m->emb + (long)m->inp[n] * d, sizeof(float) * (size_t)d);
        }
    for (int i = 0; i < m->L; i++) layer_fwd(m, i, B, ctx, out);

    mg_rmsnorm_fwd(m->x, P + m->lnf, m->nf, m->rf, N, m->d, m->spec.model.norm_eps);
    mg_mm_fwd(m->nf, P + m->lm_head, m->logits, N, m->d, m->V);
    out->ce_sum = mg_xent(m->logits, m->tgt, N, m->V, grad ? (float)(ctx->scale / N) : 0.0f);
    out->n_tokens = N;
    if (!grad) return;

    float *G = m->grads;
    memset(m->dn, 0, sizeof(float) * (size_t)(N * d));
    mg_mm_bwd_x(m->logits, P + m->lm_head, m->dn, N, m->d, m->V);
    mg_mm_bwd_w(m->logits, m->nf, G + m->lm_head, N, m->d, m->V);
    memset(m->dx, 0, sizeof(float) * (size_t)(N * d));
    mg_rmsnorm_bwd(m->x, P + m->lnf, m->rf, m->dn, m->dx, G + m->lnf, N, m->d);
    for (int i = m->L - 1; i >= 0; i--) layer_bwd(m, i, B, ctx);
    for (long n = 0; n < N; n++) vadd(G + m->emb + (long)m->inp[n] * d, m->dx + n * d, d);
}

void mg_cpu_model_update_bias(mg_cpu_model *m, double rate)
{
    for (int i = 0; i < m->L; i++) {
        mg_cpu_layer *l = &m->layers[i];
        if (!l->moe) continue;
        if (l->sel_bias && rate > 0) {
            double mean = 0;
            for (int e = 0; e < m->E; e++) mean += (double)l->load[e];
            mean /= m->E;
            for (int e = 0; e < m->E; e++) {
                double diff = mean - (double)l->load[e];
                l->sel_bias[e] += (float)(rate * (diff > 0 ? 1 : diff < 0 ? -1 : 0));
            }
        }
        memset(l->load, 0, sizeof(long) * (size_t)m->E);
    }
}
