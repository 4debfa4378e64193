/* mg_ep: expert parallelism on the CPU trainer (see mg_ep.h for the layout and the exchange). */
#include "mg_ep.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------------------------------ */
/* layout                                                                               */

int mg_par_make(const mg_spec *s, int rank, int world, mg_par *p, mg_err *err)
{
    int dp = s->parallel.dp, ep = s->parallel.ep;
    if (world == 1) dp = ep = 1;                   /* one process trains the whole model */
    if (ep == 1 && dp * ep != world) dp = world;   /* plain data parallelism over whatever was launched */
    if (dp * ep != world)
        return mg_err_set(err, MG_EUSER, "%s: parallel = { dp = %d, ep = %d }: needs dp·ep = %d ranks, the job has %d "
                          "(HINT: --procs/--gpus %d, or a spec whose dp·ep is %d)", s->path, s->parallel.dp, ep,
                          s->parallel.dp * ep, world, s->parallel.dp * ep, world);
    if (s->moe.experts % ep)
        return mg_err_set(err, MG_EUSER, "%s: parallel.ep = %d: must divide moe.experts = %d", s->path, ep,
                          s->moe.experts);
    if (ep > 1 && s->train.batch % world)
        return mg_err_set(err, MG_EUSER, "%s: train.batch = %d: must be a multiple of the %d ranks (each trains on "
                          "batch/ranks rows with expert parallelism)", s->path, s->train.batch, world);
    *p = (mg_par){.rank = rank, .world = world, .dp = dp, .ep = ep, .dp_rank = rank / ep, .ep_rank = rank % ep};
    return MG_OK;
}

/* ------------------------------------------------------------------------------------ */
/* the runtime                                                                          */

typedef struct ep_layer {
    int *cnt;          /* [P][2E]: each group rank's counts_all, then its kept counts */
    int *cg;           /* [E] the group's counts_all */
    int R;             /* rows received (the local experts' work) */
    float *xr;         /* [R, d] received rows, expert-major */
    int *idx;          /* [R] local expert of each row */
    int *pos;          /* [R] expert-major row -> row in arrival order */
    float *zs;         /* [T·k, d] expert outputs of this rank's kept slots, slot order */
    mg_ref_cfg lc;     /* the local experts as an mg_ref layer (T = R) */
    mg_ref_fwd lf;
    size_t send[64], recv[64];   /* rows to / from each group rank */
} ep_layer;

struct mg_ep {
    mg_comm *c;
    int P, q, E, El, e0, k, d, ff, F2, S, Tmax, L;
    ep_layer *ly;
    float *wg0;        /* [E/P, d] zero router of the local layer: weight exactly 1 per row */
    float *sbuf, *rbuf;
    double *ysh;       /* [Tmax, d] the shared experts' output (fp64, added before the rounding) */
    float *dxsh;       /* [Tmax, d] the shared experts' dx */
    float *gsup, *gsdn;   /* [S, F2, d], [S, d, ff] the shared experts' weight gradients of a backward */
    double *cbuf;      /* [P][2E] counts through the comm */
    int failed;
    mg_err err;
};

static void *ep_alloc(size_t n, size_t size)
{
    void *p = calloc(n ? n : 1, size);
    if (!p) {
        fprintf(stderr, "mg_ep: out of memory (%zu x %zu bytes)\n", n, size);
        abort();
    }
    return p;
}

int mg_ep_attach(mg_cpu_model *m, mg_comm *c, mg_err *err)
{
    if (m->ep < 2) return MG_OK;
    if (!c || c->world != m->ep || c->rank != m->ep_rank)
        return mg_err_set(err, MG_EINTERNAL, "mg_ep_attach: the comm (rank %d of %d) is not expert shard %d of %d",
                          c ? c->rank : -1, c ? c->world : 0, m->ep_rank, m->ep);
    if (m->ep > 64) return mg_err_set(err, MG_EUSER, "parallel.ep = %d: at most 64", m->ep);
    mg_ep *x = ep_alloc(1, sizeof *x);
    x->c = c, x->P = m->ep, x->q = m->ep_rank, x->E = m->E, x->El = m->E_loc, x->e0 = m->e0, x->k = m->k;
    x->d = m->d, x->ff = m->ff, x->F2 = m->F2, x->S = m->S, x->Tmax = m->bmax * m->T, x->L = m->L;
    long rows = (long)x->P * x->Tmax * x->k;   /* the most any rank can receive */
    x->ly = ep_alloc((size_t)m->L, sizeof *x->ly);
    for (int i = 0; i < m->L; i++) {
        if (!m->layers[i].moe) continue;
        ep_layer *l = &x->ly[i];
        l->cnt = ep_alloc((size_t)x->P * 2 * x->E, sizeof(int));
        l->cg = ep_alloc((size_t)x->E, sizeof(int));
        l->xr = ep_alloc((size_t)rows * x->d, sizeof(float));
        l->idx = ep_alloc((size_t)rows, sizeof(int));
        l->pos = ep_alloc((size_t)rows, sizeof(int));
        l->zs = ep_alloc((size_t)x->Tmax * x->k * x->d, sizeof(float));
    }
    x->wg0 = ep_alloc((size_t)x->El * x->d, sizeof(float));
    x->sbuf = ep_alloc((size_t)rows * x->d, sizeof(float));
    x->rbuf = ep_alloc((size_t)rows * x->d, sizeof(float));
    x->cbuf = ep_alloc((size_t)x->P * 2 * x->E, sizeof(double));
    if (x->S) {   /* replicated like the dense layers: every rank runs them on its own tokens */
        x->ysh = ep_alloc((size_t)x->Tmax * x->d, sizeof(double));
        x->dxsh = ep_alloc((size_t)x->Tmax * x->d, sizeof(float));
        x->gsup = ep_alloc((size_t)x->S * x->F2 * x->d, sizeof(float));
        x->gsdn = ep_alloc((size_t)x->S * x->d * x->ff, sizeof(float));
    }
    m->ep_rt = x;
    return MG_OK;
}

void mg_ep_detach(mg_cpu_model *m)
{
    mg_ep *x = m->ep_rt;
    if (!x) return;
    for (int i = 0; i < x->L; i++) {
        ep_layer *l = &x->ly[i];
        free(l->cnt); free(l->cg); free(l->xr); free(l->idx); free(l->pos); free(l->zs);
        mg_ref_fwd_free(&l->lf);
    }
    free(x->ly); free(x->wg0); free(x->sbuf); free(x->rbuf); free(x->cbuf);
    free(x->ysh); free(x->dxsh); free(x->gsup); free(x->gsdn);
    free(x);
    m->ep_rt = NULL;
}

int mg_ep_error(const mg_ep *x, mg_err *err)
{
    if (!x || !x->failed) return 0;
    if (err) *err = x->err;
    return x->err.code ? x->err.code : MG_EINTERNAL;
}

const int *mg_ep_group_counts(const mg_ep *x, int layer) { return x->ly[layer].cg; }

/* rows[q] rows of d floats to each group rank q (send, back to back) → recv; got[q] rows from each. */
static int exchange(mg_ep *x, const float *send, const size_t *rows, float *recv, size_t *got)
{
    if (x->failed) return -1;
    size_t sc[64], rc[64];
    for (int q = 0; q < x->P; q++) sc[q] = rows[q] * (size_t)x->d;
    size_t cap = (size_t)x->P * x->Tmax * x->k * x->d;
    if (mg_comm_all_to_all_v(x->c, send, sc, recv, rc, cap, MG_COMM_F32, &x->err)) {
        x->failed = 1;
        return -1;
    }
    for (int q = 0; q < x->P; q++) got[q] = rc[q] / (size_t)x->d;
    return 0;
}

/* Arrival order (source rank, then its slots: expert order) ↔ expert-major order (expert,
 * then source rank): l->pos[i] = arrival row of expert-major row i. */
static void regroup_plan(mg_ep *x, ep_layer *l)
{
    int base[64], n = 0;
    for (int s = 0, b = 0; s < x->P; s++) base[s] = b, b += (int)l->recv[s];
    for (int e = 0; e < x->El; e++)
        for (int s = 0; s < x->P; s++) {
            const int *ks = l->cnt + (size_t)s * 2 * x->E + x->E;   /* source s's kept counts */
            int before = 0;
            for (int f = 0; f < e; f++) before += ks[x->e0 + f];
            for (int r = 0; r < ks[x->e0 + e]; r++) {
                l->pos[n] = base[s] + before + r;
                l->idx[n] = e;
                n++;
            }
        }
    l->R = n;
}

static void gather_rows(const float *src, const int *pos, int n, int d, float *dst)
{
    for (int i = 0; i < n; i++) memcpy(dst + (size_t)i * d, src + (size_t)pos[i] * d, sizeof(float) * (size_t)d);
}
static void scatter_rows(const float *src, const int *pos, int n, int d, float *dst)
{
    for (int i = 0; i < n; i++) memcpy(dst + (size_t)pos[i] * d, src + (size_t)i * d, sizeof(float) * (size_t)d);
}

/* This rank's kept slots go to their experts' owners: slots of owner q are one run. */
static void send_rows(const mg_ep *x, const mg_ref_fwd *rf, ep_layer *l)
{
    for (int q = 0; q < x->P; q++) l->send[q] = (size_t)(rf->offsets[(q + 1) * x->El] - rf->offsets[q * x->El]);
}

static mg_ref_weights local_weights(const mg_ep *x, const mg_ref_weights *w)
{
    return (mg_ref_weights){.wg = x->wg0, .w_up = w->w_up, .w_dn = w->w_dn};
}

void mg_ep_forward(mg_ep *x, int li, const mg_ref_cfg *rc, const float *xin, const mg_ref_weights *w,
                   mg_ref_fwd *rf, float *y)
{
    ep_layer *l = &x->ly[li];
    int T = rc->T, k = x->k, d = x->d, E = x->E;
    memset(y, 0, sizeof(float) * (size_t)T * d);
    mg_ref_route(rc, xin, w, rf);
    /* every rank's counts, then the group's counts_all */
    double *mine = x->cbuf + (size_t)x->q * 2 * E;
    for (int e = 0; e < E; e++) mine[e] = rf->counts_all[e], mine[E + e] = rf->counts[e];
    if (x->failed || mg_comm_all_gather(x->c, mine, x->cbuf, 2 * (size_t)E, MG_COMM_F64, &x->err)) {
        x->failed = 1;
        return;
    }
    memset(l->cg, 0, sizeof(int) * (size_t)E);
    for (int s = 0; s < x->P; s++)
        for (int e = 0; e < 2 * E; e++) {
            int v = (int)x->cbuf[(size_t)s * 2 * E + e];
            l->cnt[(size_t)s * 2 * E + e] = v;
            if (e < E) l->cg[e] += v;
        }
    /* this rank's share of the group's aux and z (same routing, the group's statistics) */
    mg_ref_cfg gc = *rc;
    gc.T_stat = x->P * T, gc.counts_stat = l->cg;
    gc.aux_coef *= x->P, gc.z_coef *= x->P;
    mg_ref_route(&gc, xin, w, rf);

    /* dispatch */
    int kept = rf->offsets[E];
    for (int s = 0; s < kept; s++)
        memcpy(x->sbuf + (size_t)s * d, xin + (size_t)(rf->perm[s] / k) * d, sizeof(float) * (size_t)d);
    send_rows(x, rf, l);
    /* the shared experts on this rank's tokens: where the GPU runs them while the rows travel
     * (mg_gpu_ep.c); this exchange blocks, so here it is only the same order */
    if (x->S) mg_ref_shared_forward(rc, xin, w, x->ysh);
    if (exchange(x, x->sbuf, l->send, x->rbuf, l->recv)) return;
    regroup_plan(x, l);
    gather_rows(x->rbuf, l->pos, l->R, d, l->xr);

    /* the local experts */
    mg_ref_fwd_free(&l->lf);
    if (l->R > 0) {
        l->lc = (mg_ref_cfg){.T = l->R, .d = d, .ff = x->ff, .E = x->El, .k = 1, .act = rc->act,
                             .router = MG_ROUTER_SOFTMAX_TOPK, .renormalize = 1};
        mg_ref_fwd_alloc(&l->lc, &l->lf);
        mg_ref_weights lw = local_weights(x, w);
        mg_ref_forward_routed(&l->lc, l->xr, &lw, l->idx, &l->lf);
        scatter_rows(l->lf.y, l->pos, l->R, d, x->sbuf);
    }
    /* results back, combined in j order, then the shared experts (mg_ref_forward's order) */
    size_t got[64];
    if (exchange(x, x->sbuf, l->recv, l->zs, got)) return;
    double *acc = ep_alloc((size_t)d, sizeof(double));
    for (int t = 0; t < T; t++) {
        memset(acc, 0, sizeof(double) * (size_t)d);
        for (int j = 0; j < k; j++) {
            int s = rf->slot_of[(size_t)t * k + j];
            if (s < 0) continue;
            double wt = rf->topk_w[(size_t)t * k + j];
            for (int o = 0; o < d; o++) acc[o] += wt * l->zs[(size_t)s * d + o];
        }
        if (x->S)
            for (int o = 0; o < d; o++) acc[o] += x->ysh[(size_t)t * d + o];
        for (int o = 0; o < d; o++) y[(size_t)t * d + o] = (float)acc[o];
    }
    free(acc);
}

static void vadd(float *restrict y, const float *restrict v, long n)
{
    for (long i = 0; i < n; i++) y[i] += v[i];
}

void mg_ep_backward(mg_ep *x, int li, const mg_ref_cfg *rc, const float *xin, const mg_ref_weights *w,
                    const mg_ref_fwd *rf, const float *dy, float *dx, float *g_router, float *g_up, float *g_dn,
                    float *g_sup, float *g_sdn)
{
    ep_layer *l = &x->ly[li];
    int T = rc->T, k = x->k, d = x->d, E = x->E;
    memset(dx, 0, sizeof(float) * (size_t)T * d);
    if (x->failed) return;
    /* at the source: dw = z·dy, dz = w·dy per kept slot */
    double *dw = ep_alloc((size_t)T * k, sizeof(double));
    for (int s = 0; s < rf->offsets[E]; s++) {
        int tk = rf->perm[s];
        const float *z = l->zs + (size_t)s * d, *g = dy + (size_t)(tk / k) * d;
        double acc = 0, wt = rf->topk_w[tk];
        for (int o = 0; o < d; o++) acc += (double)z[o] * g[o], x->sbuf[(size_t)s * d + o] = (float)(wt * g[o]);
        dw[tk] = acc;
    }
    size_t got[64];
    if (exchange(x, x->sbuf, l->send, x->rbuf, got)) goto out;
    /* at the owner: the local experts' backward on the expert-major rows */
    if (l->R > 0) {
        float *dz = ep_alloc((size_t)l->R * d, sizeof(float));
        gather_rows(x->rbuf, l->pos, l->R, d, dz);
        mg_ref_grads lg;
        mg_ref_grads_alloc(&l->lc, &lg);
        mg_ref_weights lw = local_weights(x, w);
        mg_ref_backward(&l->lc, l->xr, &lw, &l->lf, dz, &lg);
        vadd(g_up, lg.dw_up, (long)x->El * x->F2 * d);
        vadd(g_dn, lg.dw_dn, (long)x->El * d * x->ff);
        scatter_rows(lg.dx, l->pos, l->R, d, x->sbuf);
        mg_ref_grads_free(&lg);
        free(dz);
    }
    /* the shared experts' backward on this rank's tokens, where the GPU runs it beside the return */
    if (x->S) {
        mg_ref_shared_backward(rc, xin, w, dy, x->dxsh, x->gsup, x->gsdn);
        vadd(g_sup, x->gsup, (long)x->S * x->F2 * d);
        vadd(g_sdn, x->gsdn, (long)x->S * d * x->ff);
    }
    if (exchange(x, x->sbuf, l->recv, x->rbuf, got)) goto out;
    /* at the source: the router's part (with the group's aux/z statistics), then the experts' dx */
    mg_ref_cfg gc = *rc;
    gc.T_stat = x->P * T, gc.counts_stat = l->cg;
    gc.aux_coef *= x->P, gc.z_coef *= x->P;
    float *dwg = ep_alloc((size_t)E * d, sizeof(float));
    mg_ref_router_backward(&gc, xin, w, rf, dw, dx, dwg);
    vadd(g_router, dwg, (long)E * d);
    free(dwg);
    for (int s = 0; s < rf->offsets[E]; s++) vadd(dx + (size_t)(rf->perm[s] / k) * d, x->rbuf + (size_t)s * d, d);
    if (x->S) vadd(dx, x->dxsh, (long)T * d);
out:
    free(dw);
}

/* ------------------------------------------------------------------------------------ */
/* checkpoints                                                                          */

/* One MoE layer's expert block of src (n floats per rank) gathered in rank order into dst. */
static int gather_block(mg_comm *c, const float *src, size_t n, float *dst, float *tmp, mg_err *err)
{
    if (mg_comm_all_gather(c, src, tmp, n, MG_COMM_F32, err)) return MG_EUSER;
    if (dst) memcpy(dst, tmp, sizeof(float) * n * (size_t)c->world);
    return 0;
}

int mg_ep_gather_full(const mg_cpu_model *sh, const mg_adamw *o, mg_comm *c, mg_cpu_model *full, mg_adamw *fo,
                      mg_err *err)
{
    if (full) {   /* replicated tensors and biases: this rank's copy */
        for (int j = 0; j < full->n_tensors; j++) {
            const mg_cpu_tensor *t = &full->tensors[j], *u = t->expert ? NULL : mg_cpu_model_find(sh, t->name);
            if (!u) continue;
            memcpy(full->params + t->off, sh->params + u->off, sizeof(float) * (size_t)t->n);
            if (o && fo) {
                memcpy(fo->m + t->off, o->m + u->off, sizeof(float) * (size_t)t->n);
                memcpy(fo->v + t->off, o->v + u->off, sizeof(float) * (size_t)t->n);
            }
        }
        for (int i = 0; i < sh->L; i++)
            if (sh->layers[i].sel_bias)
                memcpy(full->layers[i].sel_bias, sh->layers[i].sel_bias, sizeof(float) * (size_t)sh->E);
        if (fo) fo->step = o->step;
    }
    size_t nup = (size_t)sh->E_loc * sh->F2 * sh->d, ndn = (size_t)sh->E_loc * sh->d * sh->ff;
    float *tmp = malloc(sizeof(float) * (nup > ndn ? nup : ndn) * (size_t)c->world);
    if (!tmp) return mg_err_set(err, MG_EINTERNAL, "mg_ep_gather_full: out of memory");
    int rc = 0;
    for (int i = 0; i < sh->L && !rc; i++) {
        const mg_cpu_layer *l = &sh->layers[i];
        if (!l->moe) continue;
        const mg_cpu_layer *fl = full ? &full->layers[i] : NULL;
        const float *src[3] = {sh->params, o ? o->m : NULL, o ? o->v : NULL};
        float *dst[3] = {full ? full->params : NULL, fo ? fo->m : NULL, fo ? fo->v : NULL};
        for (int b = 0; b < 3 && !rc; b++) {
            if (!src[b]) continue;
            rc = gather_block(c, src[b] + l->w_up, nup, dst[b] ? dst[b] + fl->w_up : NULL, tmp, err);
            if (!rc) rc = gather_block(c, src[b] + l->w_dn, ndn, dst[b] ? dst[b] + fl->w_dn : NULL, tmp, err);
        }
    }
    free(tmp);
    return rc;
}

/* ------------------------------------------------------------------------------------ */
/* trainer glue                                                                         */

int mg_ep_comms(const mg_par *p, mg_comm *world, mg_comm **ep_comm, mg_comm **replicas, mg_err *err)
{
    *ep_comm = *replicas = NULL;
    if (p->ep == 1) return MG_OK;
    int rc = mg_comm_split(world, p->ep_rank, p->dp_rank, replicas, err);   /* the dp replicas of my experts */
    if (!rc && p->dp == 1) *ep_comm = world;
    else if (!rc) rc = mg_comm_split(world, p->dp_rank, p->ep_rank, ep_comm, err);
    return rc;
}

int mg_ep_grad_norm(const mg_cpu_model *m, mg_comm *ep_comm, double *norm, mg_err *err)
{
    double sq[2] = {0, 0};   /* replicated tensors, this rank's experts */
    for (int j = 0; j < m->n_tensors; j++) {
        const mg_cpu_tensor *t = &m->tensors[j];
        const float *g = m->grads + t->off;
        double acc = 0;
        for (long i = 0; i < t->n; i++) acc += (double)g[i] * g[i];
        sq[t->expert] += acc;
    }
    if (ep_comm && mg_comm_all_reduce(ep_comm, &sq[1], &sq[1], 1, MG_COMM_F64, err)) return MG_EUSER;
    *norm = sqrt(sq[0] + sq[1]);
    return MG_OK;
}
