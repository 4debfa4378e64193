/* mg_zero: ZeRO-1 shards of the optimizer state (see mg_zero.h). */
#include "mg_zero.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static mg_comm *group_comm(const mg_zero *z, int i) { return z->dp->comm[z->dp->b[i].group]; }

int mg_zero_init(mg_zero *z, int on, const mg_dp *dp, long n_params, mg_err *err)
{
    memset(z, 0, sizeof *z);
    if (!on || !mg_dp_on(dp)) return MG_OK;
    int nb = dp->n_buckets;
    z->dp = dp;
    z->n_full = n_params;
    z->p = calloc((size_t)nb + 1, sizeof *z->p);
    z->run = calloc(2 * (size_t)nb + 1, sizeof *z->run);
    if (!z->p || !z->run) {
        mg_zero_free(z);
        return mg_err_set(err, MG_EINTERNAL, "mg_zero: out of memory");
    }
    z->on = 1;
    long s = 0;
    for (int i = 0; i < nb; i++) {   /* the slices */
        const mg_dp_bucket *b = &dp->b[i];
        mg_zero_part *p = &z->p[i];
        p->W = group_comm(z, i)->world, p->r = group_comm(z, i)->rank;
        p->q = b->n / p->W, p->tail_n = b->n - p->q * p->W, p->slice = s;
        if (p->q) z->run[z->n_runs++] = (mg_zero_run){b->off + p->r * p->q, s, p->q};
        s += p->q;
    }
    for (int pass = 0; pass < 2; pass++) {   /* the tails: counted in the norm here (group rank 0) first */
        for (int i = 0; i < nb; i++) {
            mg_zero_part *p = &z->p[i];
            if (!p->tail_n || (p->r == 0) != (pass == 0)) continue;
            p->tail = s;
            z->run[z->n_runs++] = (mg_zero_run){dp->b[i].off + p->q * p->W, s, p->tail_n};
            s += p->tail_n;
        }
        if (pass == 0) z->n_norm = s;
    }
    z->n_shard = s;
    return MG_OK;
}

void mg_zero_free(mg_zero *z)
{
    free(z->p);
    free(z->run);
    memset(z, 0, sizeof *z);
}

/* Bucket i in place: the slices' sum into this rank's own slice, the tail's into the tail. */
static int reduce_bucket(const mg_zero *z, int i, float *grads, void *stream, int async, mg_err *err)
{
    const mg_dp_bucket *b = &z->dp->b[i];
    const mg_zero_part *p = &z->p[i];
    mg_comm *c = group_comm(z, i);
    float *in = grads + b->off, *mine = in + p->r * p->q, *tail = in + p->q * p->W;
    int rc = 0;
    if (p->q)
        rc = async ? mg_comm_reduce_scatter_async(c, in, mine, (size_t)p->q, MG_COMM_F32, stream, err)
                   : mg_comm_reduce_scatter(c, in, mine, (size_t)p->q, MG_COMM_F32, err);
    if (!rc && p->tail_n)
        rc = async ? mg_comm_all_reduce_async(c, tail, tail, (size_t)p->tail_n, MG_COMM_F32, stream, err)
                   : mg_comm_all_reduce(c, tail, tail, (size_t)p->tail_n, MG_COMM_F32, err);
    return rc;
}

int mg_zero_reduce_bucket_async(const mg_zero *z, int i, float *grads, void *stream, mg_err *err)
{
    return reduce_bucket(z, i, grads, stream, 1, err);
}

int mg_zero_reduce_grads(const mg_zero *z, float *grads, mg_err *err)
{
    for (int i = 0; z->on && i < z->dp->n_buckets; i++) {
        int rc = reduce_bucket(z, i, grads, NULL, 0, err);
        if (rc) return rc;
    }
    return MG_OK;
}

int mg_zero_norm_from_sq(const mg_zero *z, double local_sq, double *norm, mg_err *err)
{
    double sq = local_sq;
    int rc = mg_comm_all_reduce(z->dp->comm[MG_DP_GROUP_ALL], &sq, &sq, 1, MG_COMM_F64, err);
    *norm = rc ? NAN : sqrt(sq);
    return rc;
}

int mg_zero_grad_norm(const mg_zero *z, const float *grads, double *norm, mg_err *err)
{
    double sq = 0;
    for (int k = 0; k < z->n_runs && z->run[k].shard < z->n_norm; k++)
        for (long i = z->run[k].flat; i < z->run[k].flat + z->run[k].n; i++) sq += (double)grads[i] * grads[i];
    return mg_zero_norm_from_sq(z, sq, norm, err);
}

int mg_zero_pieces(const mg_zero *z, const mg_cpu_tensor *tensors, int n_tensors, mg_zero_piece_fn fn, void *ctx,
                   mg_err *err)
{
    for (int k = 0; k < z->n_runs; k++) {
        const mg_zero_run *u = &z->run[k];
        long pa = 0, pe = 0;   /* the piece being built: flat [pa, pe) */
        int pd = -1, rc;
        for (int j = 0; j < n_tensors; j++) {   /* the table is in flat order */
            const mg_cpu_tensor *t = &tensors[j];
            long a = u->flat > t->off ? u->flat : t->off;
            long e = u->flat + u->n < t->off + t->n ? u->flat + u->n : t->off + t->n;
            if (a >= e) continue;
            if (pd == t->decay && pe == a) {
                pe = e;
                continue;
            }
            if (pd >= 0 && (rc = fn(ctx, pa, u->shard + (pa - u->flat), pe - pa, pd, err))) return rc;
            pa = a, pe = e, pd = t->decay;
        }
        if (pd >= 0 && (rc = fn(ctx, pa, u->shard + (pa - u->flat), pe - pa, pd, err))) return rc;
    }
    return MG_OK;
}

typedef struct cpu_step {
    mg_adamw *o;
    float *params;
    const float *grads;
    mg_adamw_hp h;
} cpu_step;

static int cpu_piece(void *ctx, long flat, long shard, long n, int decay, mg_err *err)
{
    (void)err;
    cpu_step *c = ctx;
    mg_adamw_update(c->params + flat, c->grads + flat, c->o->m + shard, c->o->v + shard, n, decay, &c->h);
    return MG_OK;
}

void mg_zero_adamw_step(const mg_zero *z, mg_adamw *o, float *params, const float *grads, const mg_cpu_tensor *tensors,
                        int n_tensors, double lr, double beta1, double beta2, double eps, double wd, double gscale)
{
    o->step++;
    cpu_step c = {o, params, grads, mg_adamw_hp_at(o->step, lr, beta1, beta2, eps, wd, gscale)};
    (void)mg_zero_pieces(z, tensors, n_tensors, cpu_piece, &c, NULL);
}

static int gather(const mg_zero *z, void *flat, size_t esz, void *stream, int async, mg_err *err)
{
    unsigned char *base = flat;
    for (int i = 0; z->on && i < z->dp->n_buckets; i++) {
        const mg_zero_part *p = &z->p[i];
        if (!p->q || p->W == 1) continue;
        unsigned char *out = base + (size_t)z->dp->b[i].off * esz, *in = out + (size_t)(p->r * p->q) * esz;
        size_t nb = (size_t)p->q * esz;
        mg_comm *c = group_comm(z, i);
        int rc = async ? mg_comm_all_gather_async(c, in, out, nb, MG_COMM_BYTE, stream, err)
                       : mg_comm_all_gather(c, in, out, nb, MG_COMM_BYTE, err);
        if (rc) return rc;
    }
    return MG_OK;
}

int mg_zero_gather(const mg_zero *z, void *flat, size_t esz, mg_err *err) { return gather(z, flat, esz, NULL, 0, err); }

int mg_zero_gather_async(const mg_zero *z, void *flat, size_t esz, void *stream, mg_err *err)
{
    return gather(z, flat, esz, stream, 1, err);
}

void mg_zero_to_flat(const mg_zero *z, const float *shard, float *flat)
{
    for (int k = 0; k < z->n_runs; k++)
        memcpy(flat + z->run[k].flat, shard + z->run[k].shard, sizeof(float) * (size_t)z->run[k].n);
}

void mg_zero_to_shard(const mg_zero *z, const float *flat, float *shard)
{
    for (int k = 0; k < z->n_runs; k++)
        memcpy(shard + z->run[k].shard, flat + z->run[k].flat, sizeof(float) * (size_t)z->run[k].n);
}

int mg_zero_full_state(const mg_zero *z, const mg_adamw *shard, mg_adamw *full, mg_err *err)
{
    mg_zero_to_flat(z, shard->m, full->m);
    mg_zero_to_flat(z, shard->v, full->v);
    full->step = shard->step;
    int rc = mg_zero_gather(z, full->m, sizeof(float), err);
    return rc ? rc : mg_zero_gather(z, full->v, sizeof(float), err);
}

void mg_zero_take_shard(const mg_zero *z, const mg_adamw *full, mg_adamw *shard)
{
    mg_zero_to_shard(z, full->m, shard->m);
    mg_zero_to_shard(z, full->v, shard->v);
    shard->step = full->step;
}
