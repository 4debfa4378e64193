/* mg_dp: data parallelism for both trainers (see mg_dp.h). */
#include "mg_dp.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int mg_dp_init(mg_dp *dp, mg_comm *all, mg_comm *replicas, int A, int B, mg_err *err)
{
    memset(dp, 0, sizeof *dp);
    int W = all ? all->world : 1, r = all ? all->rank : 0;
    dp->comm[MG_DP_GROUP_ALL] = all;
    dp->comm[MG_DP_GROUP_REPLICAS] = replicas ? replicas : all;
    dp->rank = r, dp->world = W, dp->A = A, dp->B = B;
    /* expert parallel (the replicas are a subgroup): rows, so that an EP group's ranks run each
     * micro-batch together (mg_ep.h) */
    int ep = replicas && replicas->world < W;
    if (A % W == 0 && !ep) {
        dp->micro_split = 1;
        dp->A_loc = A / W, dp->B_loc = B, dp->a0 = r * (A / W), dp->b0 = 0;
    } else if (B % W == 0) {
        dp->A_loc = A, dp->B_loc = B / W, dp->a0 = 0, dp->b0 = r * (B / W);
    } else {
        return mg_err_set(err, MG_EUSER, "train.batch = %d, train.grad_accum = %d: cannot be split over %d ranks "
                          "(one of them must be a multiple of %d)", B, A, W, W);
    }
    dp->scale = 1.0 / ((double)dp->A_loc * W);
    return 0;
}

void mg_dp_free(mg_dp *dp)
{
    free(dp->b);
    dp->b = NULL;
    dp->n_buckets = 0;
}

void mg_dp_micro(const mg_dp *dp, long step, int i, unsigned long long *batch, int *row0, int *drop_micro)
{
    int a = dp->micro_split ? dp->a0 + i : i;
    *batch = (unsigned long long)step * (unsigned long long)dp->A + (unsigned long long)a;
    *row0 = dp->b0;
    *drop_micro = dp->micro_split ? a : a * dp->world + dp->rank;
}

int mg_dp_param_group(const mg_cpu_model *m, int j)
{
    return m->tensors[j].expert ? MG_DP_GROUP_REPLICAS : MG_DP_GROUP_ALL;
}

/* The stage of the tensor at offset off: its layer, the head or the embedding. */
static int stage_of(const mg_cpu_model *m, long off)
{
    if (off == m->emb) return MG_DP_STAGE_EMBED(m->L);
    if (off >= m->lnf) return MG_DP_STAGE_HEAD(m->L);
    int i = 0;
    while (i + 1 < m->L && off >= m->layers[i + 1].ln1) i++;
    return i;
}

static int backward_rank(int stage, int L)   /* position of a stage in the backward */
{
    return stage == MG_DP_STAGE_HEAD(L) ? 0 : stage == MG_DP_STAGE_EMBED(L) ? L + 1 : L - stage;
}

static int cmp_backward_L;
static int cmp_backward(const void *x, const void *y)
{
    const mg_dp_bucket *a = x, *b = y;
    int ra = backward_rank(a->stage, cmp_backward_L), rb = backward_rank(b->stage, cmp_backward_L);
    if (ra != rb) return ra < rb ? -1 : 1;
    return a->off > b->off ? -1 : a->off < b->off;   /* later tensors of a stage first */
}

int mg_dp_buckets(mg_dp *dp, const mg_cpu_model *m, mg_err *err)
{
    mg_dp_free(dp);
    dp->b = calloc((size_t)m->n_tensors + 1, sizeof *dp->b);
    if (!dp->b) return mg_err_set(err, MG_EINTERNAL, "mg_dp: out of memory");
    for (int j = 0; j < m->n_tensors; j++) {
        const mg_cpu_tensor *t = &m->tensors[j];
        int st = stage_of(m, t->off), g = mg_dp_param_group(m, j);
        mg_dp_bucket *last = dp->n_buckets ? &dp->b[dp->n_buckets - 1] : NULL;
        if (last && last->stage == st && dp->comm[last->group] == dp->comm[g] && last->off + last->n == t->off) {
            last->n += t->n;
            if (g == MG_DP_GROUP_REPLICAS) last->group = g;   /* the same comm either way */
        } else {
            dp->b[dp->n_buckets++] = (mg_dp_bucket){t->off, t->n, g, st};
        }
    }
    cmp_backward_L = m->L;
    qsort(dp->b, (size_t)dp->n_buckets, sizeof *dp->b, cmp_backward);
    return 0;
}

int mg_dp_reduce_grads(mg_dp *dp, float *grads, mg_err *err)
{
    if (!mg_dp_on(dp)) return 0;
    for (int i = 0; i < dp->n_buckets; i++) {
        const mg_dp_bucket *b = &dp->b[i];
        int rc = mg_comm_all_reduce(dp->comm[b->group], grads + b->off, grads + b->off, (size_t)b->n, MG_COMM_F32, err);
        if (rc) return rc;
    }
    return 0;
}

int mg_dp_sum(mg_dp *dp, double *x, int n, mg_err *err)
{
    if (!mg_dp_on(dp) || n <= 0) return 0;
    return mg_comm_all_reduce(dp->comm[MG_DP_GROUP_ALL], x, x, (size_t)n, MG_COMM_F64, err);
}

int mg_dp_sum_loads(mg_dp *dp, mg_cpu_model *m, mg_err *err)
{
    if (!mg_dp_on(dp)) return 0;
    int n = 0;
    for (int i = 0; i < m->L; i++) n += m->layers[i].moe ? m->E : 0;
    if (!n) return 0;
    double *x = malloc(sizeof(double) * (size_t)n);
    if (!x) return mg_err_set(err, MG_EINTERNAL, "mg_dp: out of memory");
    int k = 0;
    for (int i = 0; i < m->L; i++)
        for (int e = 0; m->layers[i].moe && e < m->E; e++) x[k++] = (double)m->layers[i].load[e];
    int rc = mg_dp_sum(dp, x, n, err);
    k = 0;
    for (int i = 0; !rc && i < m->L; i++)
        for (int e = 0; m->layers[i].moe && e < m->E; e++) m->layers[i].load[e] = (long)x[k++];
    free(x);
    return rc;
}

int mg_dp_sum_metrics(mg_dp *dp, mg_metrics *mx, mg_err *err)
{
    if (!mg_dp_on(dp) || mx->n == 0) return 0;
    int E = mx->E, per = 6 + E + E * E, n = mx->n * per;
    double *x = malloc(sizeof(double) * (size_t)n);
    if (!x) return mg_err_set(err, MG_EINTERNAL, "mg_dp: out of memory");
    for (int li = 0; li < mx->n; li++) {
        const mg_metrics_layer *l = &mx->l[li];
        double *p = x + (size_t)li * per;
        p[0] = (double)l->tokens, p[1] = (double)l->dropped, p[2] = l->entropy_sum, p[3] = l->top1_sum;
        p[4] = l->aux, p[5] = l->z;
        for (int e = 0; e < E; e++) p[6 + e] = (double)l->load[e];
        for (int e = 0; e < E * E; e++) p[6 + E + e] = (double)l->coact[e];
    }
    int rc = mg_dp_sum(dp, x, n, err);
    for (int li = 0; !rc && li < mx->n; li++) {
        mg_metrics_layer *l = &mx->l[li];
        const double *p = x + (size_t)li * per;
        l->tokens = (long)p[0], l->dropped = (long)p[1], l->entropy_sum = p[2], l->top1_sum = p[3];
        l->aux = p[4], l->z = p[5];
        for (int e = 0; e < E; e++) l->load[e] = (long)p[6 + e];
        for (int e = 0; e < E * E; e++) l->coact[e] = (long)p[6 + E + e];
    }
    free(x);
    return rc;
}

void mg_dp_fault_hook(int rank, long step)
{
    const char *v = getenv("MOEGEN_FAULT_KILL");
    int r;
    long st;
    if (v && sscanf(v, "%d:%ld", &r, &st) == 2 && r == rank && st == step) {
        fflush(NULL);
        raise(SIGKILL);
    }
}
