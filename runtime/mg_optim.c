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

void mg_adamw_step(mg_adamw *o, float *params, const float *grads, const mg_cpu_tensor *tensors, int n_tensors,
                   double lr, double beta1, double beta2, double eps, double wd, double gscale)
{
    o->step++;
    double bc1 = 1.0 - pow(beta1, (double)o->step), bc2 = 1.0 - pow(beta2, (double)o->step);
    for (int j = 0; j < n_tensors; j++) {
        const mg_cpu_tensor *t = &tensors[j];
        double decay = t->decay ? 1.0 - lr * wd : 1.0;
        for (long i = t->off; i < t->off + t->n; i++) {
            double g = grads[i] * gscale;
            double m = beta1 * o->m[i] + (1.0 - beta1) * g;
            double v = beta2 * o->v[i] + (1.0 - beta2) * g * g;
            o->m[i] = (float)m;
            o->v[i] = (float)v;
            double p = params[i] * decay;
            params[i] = (float)(p - lr * (m / bc1) / (sqrt(v / bc2) + eps));
        }
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
