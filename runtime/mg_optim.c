/* mg_optim: AdamW, gradient clipping and the learning-rate schedule (see mg_optim.h). */
#include "mg_optim.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void mg_adamw_init(mg_adamw *o, long n)
{
    memset(o, 0, sizeof *o);
    o->n = n;
    o->m = calloc((size_t)(n ? n : 1), sizeof(float));
    o->v = calloc((size_t)(n ? n : 1), sizeof(float));
    if (!o->m || !o->v) {
        fprintf(stderr, "mg_adamw_init: out of memory (%ld parameters)\n", n);
        abort();
    }
}

void mg_adamw_free(mg_adamw *o)
{
    free(o->m);
    free(o->v);
    memset(o, 0, sizeof *o);
}

mg_adamw_hp mg_adamw_hp_at(long t, double lr, double beta1, double beta2, double eps, double wd, double gscale)
{
    return (mg_adamw_hp){lr, beta1, beta2, eps, wd, gscale, 1.0 - pow(beta1, (double)t), 1.0 - pow(beta2, (double)t)};
}

void mg_adamw_update(float *p, const float *g, float *m, float *v, long n, int decay, const mg_adamw_hp *h)
{
    double dec = decay ? 1.0 - h->lr * h->wd : 1.0;
    for (long i = 0; i < n; i++) {
        double gi = g[i] * h->gscale;
        double mi = h->beta1 * m[i] + (1.0 - h->beta1) * gi;
        double vi = h->beta2 * v[i] + (1.0 - h->beta2) * gi * gi;
        m[i] = (float)mi;
        v[i] = (float)vi;
        double pi = p[i] * dec;
        p[i] = (float)(pi - h->lr * (mi / h->bc1) / (sqrt(vi / h->bc2) + h->eps));
    }
}

void mg_adamw_step(mg_adamw *o, float *params, const float *grads, const mg_cpu_tensor *tensors, int n_tensors,
                   double lr, double beta1, double beta2, double eps, double wd, double gscale)
{
    o->step++;
    mg_adamw_hp h = mg_adamw_hp_at(o->step, lr, beta1, beta2, eps, wd, gscale);
    for (int j = 0; j < n_tensors; j++) {
        const mg_cpu_tensor *t = &tensors[j];
        mg_adamw_update(params + t->off, grads + t->off, o->m + t->off, o->v + t->off, t->n, t->decay, &h);
    }
}

double mg_grad_norm(const float *g, long n)
{
    double ss = 0;
    for (long i = 0; i < n; i++) ss += (double)g[i] * g[i];
    return sqrt(ss);
}

double mg_clip_scale(double norm, double clip)
{
    if (clip <= 0) return 1.0;
    double c = clip / (norm + 1e-6);
    return c < 1.0 ? c : 1.0;
}

double mg_lr_at(const mg_spec *s, long step)
{
    double lr = s->train.lr, lo = s->train.min_lr;
    long warm = s->train.warmup, total = s->train.steps;
    if (step < warm) return lr * (double)(step + 1) / (double)warm;
    long span = total - warm > 1 ? total - warm : 1;
    double p = (double)(step - warm) / (double)span;
    if (p < 0) p = 0;
    if (p > 1) p = 1;
    switch (s->train.schedule) {
    case MG_SCHED_COSINE: return lo + (lr - lo) * 0.5 * (1.0 + cos(M_PI * p));
    case MG_SCHED_LINEAR: return lr - (lr - lo) * p;
    case MG_SCHED_CONSTANT: return lr;
    }
    return lr;
}
