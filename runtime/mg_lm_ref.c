/* mg_lm_ref: fp64 CPU reference of the decoder-LM kernels (see mg_lm_ref.h). */
#include "mg_lm_ref.h"
#include "mg_hash.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static double dot(const float *a, const float *b, int n)
{
    double s = 0;
    for (int i = 0; i < n; i++) s += (double)a[i] * b[i];
    return s;
}

/* Probabilities of row i of head h (keys 0..i) into p; returns nothing, p[j] in fp64. */
static void attn_probs(const mg_lm_ref_attn *a, const float *qkv, int b, int h, int i, double *p)
{
    const int W = (a->H + 2 * a->KV) * a->hd, g = h / (a->H / a->KV);
    const double scale = 1.0 / sqrt((double)a->hd);
    const float *q = qkv + ((long)b * a->S + i) * W + (long)h * a->hd;
    double mx = -INFINITY, sum = 0;
    for (int j = 0; j <= i; j++) {
        p[j] = scale * dot(q, qkv + ((long)b * a->S + j) * W + (long)(a->H + g) * a->hd, a->hd);
        if (p[j] > mx) mx = p[j];
    }
    for (int j = 0; j <= i; j++) sum += p[j] = exp(p[j] - mx);
    for (int j = 0; j <= i; j++) p[j] /= sum;
    p[a->S] = mx + log(sum);   /* lse in the slot after the row */
}

void mg_lm_ref_attn_fwd(const mg_lm_ref_attn *a, const float *qkv, float *o, float *lse)
{
    const int W = (a->H + 2 * a->KV) * a->hd, WO = a->H * a->hd, hd = a->hd;
    double *p = malloc(sizeof(double) * (size_t)(a->S + 1)), *acc = malloc(sizeof(double) * (size_t)hd);
    for (int b = 0; b < a->B; b++)
        for (int h = 0; h < a->H; h++) {
            const int g = h / (a->H / a->KV);
            for (int i = 0; i < a->S; i++) {
                attn_probs(a, qkv, b, h, i, p);
                memset(acc, 0, sizeof(double) * (size_t)hd);
                for (int j = 0; j <= i; j++) {
                    const float *v = qkv + ((long)b * a->S + j) * W + (long)(a->H + a->KV + g) * hd;
                    for (int c = 0; c < hd; c++) acc[c] += p[j] * v[c];
                }
                for (int c = 0; c < hd; c++) o[((long)b * a->S + i) * WO + (long)h * hd + c] = (float)acc[c];
                lse[((long)b * a->H + h) * a->S + i] = (float)p[a->S];
            }
        }
    free(p);
    free(acc);
}

void mg_lm_ref_attn_bwd(const mg_lm_ref_attn *a, const float *qkv, const float *dout, float *dqkv)
{
    const int W = (a->H + 2 * a->KV) * a->hd, WO = a->H * a->hd, hd = a->hd, S = a->S;
    const double scale = 1.0 / sqrt((double)hd);
    const long nq = (long)a->B * S * W;
    double *d = calloc((size_t)nq, sizeof(double));
    double *p = malloc(sizeof(double) * (size_t)(S + 1)), *dp = malloc(sizeof(double) * (size_t)S);
    for (int b = 0; b < a->B; b++)
        for (int h = 0; h < a->H; h++) {
            const int g = h / (a->H / a->KV);
            for (int i = 0; i < S; i++) {
                attn_probs(a, qkv, b, h, i, p);
                const float *go = dout + ((long)b * S + i) * WO + (long)h * hd;
                const float *q = qkv + ((long)b * S + i) * W + (long)h * hd;
                double D = 0;
                for (int j = 0; j <= i; j++) {
                    dp[j] = dot(go, qkv + ((long)b * S + j) * W + (long)(a->H + a->KV + g) * hd, hd);
                    D += p[j] * dp[j];
                }
                double *dq = d + ((long)b * S + i) * W + (long)h * hd;
                for (int j = 0; j <= i; j++) {
                    const long rj = ((long)b * S + j) * W;
                    const float *k = qkv + rj + (long)(a->H + g) * hd;
                    double *dk = d + rj + (long)(a->H + g) * hd, *dv = d + rj + (long)(a->H + a->KV + g) * hd;
                    const double ds = p[j] * (dp[j] - D) * scale;
                    for (int c = 0; c < hd; c++) {
                        dq[c] += ds * k[c];
                        dk[c] += ds * q[c];
                        dv[c] += p[j] * go[c];
                    }
                }
            }
        }
    for (long i = 0; i < nq; i++) dqkv[i] = (float)d[i];
    free(d);
    free(p);
    free(dp);
}

void mg_lm_ref_rope(float *qkv, int rows, int S, int H, int KV, int hd, double theta, int inverse)
{
    const int W = (H + 2 * KV) * hd, half = hd / 2;
    for (int r = 0; r < rows; r++) {
        const int s = r % S;
        for (int head = 0; head < H + KV; head++) {
            float *x = qkv + (long)r * W + (long)head * hd;
            for (int i = 0; i < half; i++) {
                double ang = s * pow(theta, -2.0 * i / hd), c = cos(ang), sn = inverse ? -sin(ang) : sin(ang);
                double a = x[i], b = x[i + half];
                x[i] = (float)(a * c - b * sn);
                x[i + half] = (float)(b * c + a * sn);
            }
        }
    }
}

void mg_lm_ref_rmsnorm_fwd(const float *h, const float *w, int N, int D, double eps, float *y, float *rstd)
{
    for (int r = 0; r < N; r++) {
        const float *x = h + (long)r * D;
        double rs = 1.0 / sqrt(dot(x, x, D) / D + eps);
        rstd[r] = (float)rs;
        for (int c = 0; c < D; c++) y[(long)r * D + c] = (float)(x[c] * rs * w[c]);
    }
}

void mg_lm_ref_rmsnorm_bwd(const float *dy, const float *h, const float *w, const float *dres, int N, int D,
                           double eps, float *dx, float *dw)
{
    double *dwa = calloc((size_t)D, sizeof(double));
    for (int r = 0; r < N; r++) {
        const float *x = h + (long)r * D, *g = dy + (long)r * D;
        const double rs = 1.0 / sqrt(dot(x, x, D) / D + eps);
        double c = 0;
        for (int i = 0; i < D; i++) {
            c += (double)g[i] * w[i] * x[i];
            dwa[i] += (double)g[i] * x[i] * rs;
        }
        c /= D;
        for (int i = 0; i < D; i++)
            dx[(long)r * D + i] = (float)(rs * ((double)g[i] * w[i] - x[i] * rs * rs * c) +
                                          (dres ? dres[(long)r * D + i] : 0.0));
    }
    for (int i = 0; i < D; i++) dw[i] = (float)dwa[i];
    free(dwa);
}

void mg_lm_ref_embed_bwd(const int *ids, const float *dout, int N, int V, int D, int accumulate, float *dwte)
{
    double *acc = calloc((size_t)V * D, sizeof(double));
    for (int r = 0; r < N; r++)
        for (int c = 0; c < D; c++) acc[(long)ids[r] * D + c] += dout[(long)r * D + c];
    for (long i = 0; i < (long)V * D; i++) dwte[i] = (float)(acc[i] + (accumulate ? dwte[i] : 0.0));
    free(acc);
}

void mg_lm_ref_xent(const float *logits, const int *targets, int N, int V, double grad_scale, float *loss_row,
                    float *loss, float *dlogits)
{
    double total = 0;
    for (int r = 0; r < N; r++) {
        const float *x = logits + (long)r * V;
        double mx = -INFINITY, s = 0;
        for (int c = 0; c < V; c++) if (x[c] > mx) mx = x[c];
        for (int c = 0; c < V; c++) s += exp(x[c] - mx);
        const double lse = mx + log(s);
        loss_row[r] = (float)(lse - x[targets[r]]);
        total += lse - x[targets[r]];
        for (int c = 0; c < V; c++)
            dlogits[(long)r * V + c] = (float)((exp(x[c] - lse) - (c == targets[r])) * grad_scale);
    }
    *loss = (float)(N ? total / N : 0);
}

void mg_lm_ref_dropout(const float *x, const float *res, long long n, double p, unsigned long long stream, float *out,
                       int *keep)
{
    const unsigned thr = mg_hash_drop_threshold(p);
    const double scale = 1.0 / (1.0 - p);
    for (long long i = 0; i < n; i++) {
        int k = mg_hash_drop_u24(stream, (mg_hash_u64)i) >= thr;
        /* the definition: u·2^-24 >= p */
        if (k != ((double)mg_hash_drop_u24(stream, (mg_hash_u64)i) * (1.0 / 16777216.0) >= p)) abort();
        if (keep) keep[i] = k;
        out[i] = (float)((res ? res[i] : 0.0) + (k ? x[i] * scale : 0.0));
    }
}

void mg_lm_ref_adamw(float *w, const float *g, float *m, float *v, long long n, double gscale, double lr, double beta1,
                     double beta2, double eps, double wd, int t)
{
    const double bc1 = 1.0 - pow(beta1, t), bc2 = 1.0 - pow(beta2, t);
    for (long long i = 0; i < n; i++) {
        double gi = g[i] * gscale, wi = w[i] * (1.0 - lr * wd);
        double mi = beta1 * m[i] + (1.0 - beta1) * gi, vi = beta2 * v[i] + (1.0 - beta2) * gi * gi;
        wi -= lr / bc1 * mi / (sqrt(vi) / sqrt(bc2) + eps);
        w[i] = (float)wi;
        m[i] = (float)mi;
        v[i] = (float)vi;
    }
}

double mg_lm_ref_norm2(const float *x, long long n)
{
    double s = 0;
    for (long long i = 0; i < n; i++) s += (double)x[i] * x[i];
    return sqrt(s);
}
