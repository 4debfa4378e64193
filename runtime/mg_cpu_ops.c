/* mg_cpu_ops: forward and backward of every op of the CPU trainer (see mg_cpu_ops.h). */
#include "mg_cpu_ops.h"
#include "mg_ref.h"    /* mg_ref_act, mg_ref_act_grad: one definition of each activation */
#include "mg_spec.h"   /* mg_act_is_glu */

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void *ops_alloc(size_t n, size_t size)
{
    void *p = calloc(n ? n : 1, size);
    if (!p) {
        fprintf(stderr, "mg_cpu_ops: out of memory (%zu x %zu bytes)\n", n, size);
        abort();
    }
    return p;
}

/* ------------------------------------------------------------------------------------ */
/* matmuls                                                                              */

/* y[0..n) += a·x[0..n); written in blocks of 8 so the compiler vectorizes it at -O2. */
static inline void axpy(float *restrict y, float a, const float *restrict x, int n)
{
    int i = 0;
    for (; i + 8 <= n; i += 8) {
        y[i + 0] += a * x[i + 0]; y[i + 1] += a * x[i + 1];
        y[i + 2] += a * x[i + 2]; y[i + 3] += a * x[i + 3];
        y[i + 4] += a * x[i + 4]; y[i + 5] += a * x[i + 5];
        y[i + 6] += a * x[i + 6]; y[i + 7] += a * x[i + 7];
    }
    for (; i < n; i++) y[i] += a * x[i];
}

/* Through a transposed copy of w, each output row becomes a sum of axpys: the inner loop
 * runs over independent outputs, so it vectorizes without reassociating any sum. */
void mg_mm_fwd(const float *x, const float *w, float *y, long n, int in, int out)
{
    float *wt = ops_alloc((size_t)in * (size_t)out, sizeof(float));
    for (int o = 0; o < out; o++)
        for (int i = 0; i < in; i++) wt[(long)i * out + o] = w[(long)o * in + i];
    for (long r = 0; r < n; r++) {
        float *yr = y + r * out;
        const float *xr = x + r * in;
        memset(yr, 0, sizeof(float) * (size_t)out);
        for (int i = 0; i < in; i++)
            if (xr[i] != 0.0f) axpy(yr, xr[i], wt + (long)i * out, out);
    }
    free(wt);
}

void mg_mm_bwd_x(const float *dy, const float *w, float *dx, long n, int in, int out)
{
    for (long r = 0; r < n; r++) {
        const float *g = dy + r * out;
        for (int o = 0; o < out; o++)
            if (g[o] != 0.0f) axpy(dx + r * in, g[o], w + (long)o * in, in);
    }
}

void mg_mm_bwd_w(const float *dy, const float *x, float *dw, long n, int in, int out)
{
    for (int o = 0; o < out; o++)
        for (long r = 0; r < n; r++) {
            float g = dy[r * out + o];
            if (g != 0.0f) axpy(dw + (long)o * in, g, x + r * in, in);
        }
}

/* ------------------------------------------------------------------------------------ */
/* RMSNorm                                                                              */

void mg_rmsnorm_fwd(const float *x, const float *w, float *y, double *rstd, long n, int d, double eps)
{
    for (long r = 0; r < n; r++) {
        const float *xr = x + r * d;
        double ss = 0;
        for (int i = 0; i < d; i++) ss += (double)xr[i] * xr[i];
        double rs = 1.0 / sqrt(ss / d + eps);
        rstd[r] = rs;
        for (int i = 0; i < d; i++) y[r * d + i] = (float)(xr[i] * rs * w[i]);
    }
}

void mg_rmsnorm_bwd(const float *x, const float *w, const double *rstd, const float *dy,
                    float *dx, float *dw, long n, int d)
{
    double *dwa = ops_alloc((size_t)d, sizeof(double));
    for (long r = 0; r < n; r++) {
        const float *xr = x + r * d, *g = dy + r * d;
        double rs = rstd[r], c = 0;
        for (int i = 0; i < d; i++) {
            double xh = xr[i] * rs;
            dwa[i] += g[i] * xh;
            c += g[i] * (double)w[i] * xh;
        }
        c /= d;
        for (int i = 0; i < d; i++)
            dx[r * d + i] += (float)(rs * (g[i] * (double)w[i] - xr[i] * rs * c));
    }
    for (int i = 0; i < d; i++) dw[i] += (float)dwa[i];
    free(dwa);
}

/* ------------------------------------------------------------------------------------ */
/* RoPE                                                                                 */

void mg_rope_tables(float *cos_t, float *sin_t, int T, int hd, double theta)
{
    int half = hd / 2;
    for (int t = 0; t < T; t++)
        for (int i = 0; i < half; i++) {
            double ang = t * pow(theta, -2.0 * i / hd);
            cos_t[(long)t * half + i] = (float)cos(ang);
            sin_t[(long)t * half + i] = (float)sin(ang);
        }
}

void mg_rope_apply(float *x, int B, int T, int nh, int hd, const float *cos_t, const float *sin_t,
                   int inverse)
{
    int half = hd / 2;
    float sg = inverse ? -1.0f : 1.0f;
    for (long bt = 0; bt < (long)B * T; bt++) {
        int t = (int)(bt % T);
        const float *c = cos_t + (long)t * half, *s = sin_t + (long)t * half;
        for (int h = 0; h < nh; h++) {
            float *v = x + (bt * nh + h) * hd;
            for (int i = 0; i < half; i++) {
                float a = v[i], b = v[i + half], si = sg * s[i];
                v[i] = a * c[i] - b * si;
                v[i + half] = b * c[i] + a * si;
            }
        }
    }
}

/* ------------------------------------------------------------------------------------ */
/* causal attention                                                                     */

static double dotd(const float *a, const float *b, int n)
{
    double acc = 0;
    for (int i = 0; i < n; i++) acc += (double)a[i] * b[i];
    return acc;
}

void mg_attn_fwd(const float *q, const float *k, const float *v, float *o, double *lse,
                 int B, int T, int H, int Hkv, int hd)
{
    int qw = H * hd, kw = Hkv * hd, grp = H / Hkv;
    double scale = 1.0 / sqrt((double)hd);
    double *s = ops_alloc((size_t)T, sizeof(double)), *acc = ops_alloc((size_t)hd, sizeof(double));
    for (int b = 0; b < B; b++)
        for (int h = 0; h < H; h++) {
            int kh = h / grp;
            for (int i = 0; i < T; i++) {
                const float *qi = q + ((long)b * T + i) * qw + h * hd;
                double mx = -INFINITY, sum = 0;
                for (int j = 0; j <= i; j++) {
                    s[j] = scale * dotd(qi, k + ((long)b * T + j) * kw + kh * hd, hd);
                    if (s[j] > mx) mx = s[j];
                }
                for (int j = 0; j <= i; j++) sum += s[j] = exp(s[j] - mx);
                memset(acc, 0, sizeof(double) * (size_t)hd);
                for (int j = 0; j <= i; j++) {
                    const float *vj = v + ((long)b * T + j) * kw + kh * hd;
                    for (int c = 0; c < hd; c++) acc[c] += s[j] * vj[c];
                }
                float *oi = o + ((long)b * T + i) * qw + h * hd;
                for (int c = 0; c < hd; c++) oi[c] = (float)(acc[c] / sum);
                lse[((long)b * H + h) * T + i] = mx + log(sum);
            }
        }
    free(s);
    free(acc);
}

/* Probabilities are recomputed from the saved lse; dk and dv of one kv head gather over
 * its query heads in fp64 before they are rounded once. */
void mg_attn_bwd(const float *q, const float *k, const float *v, const float *o,
                 const double *lse, const float *dout, float *dq, float *dk, float *dv,
                 int B, int T, int H, int Hkv, int hd)
{
    (void)o;
    int qw = H * hd, kw = Hkv * hd, grp = H / Hkv;
    double scale = 1.0 / sqrt((double)hd);
    double *p = ops_alloc((size_t)T, sizeof(double)), *ds = ops_alloc((size_t)T, sizeof(double));
    double *dqa = ops_alloc((size_t)hd, sizeof(double));
    double *dka = ops_alloc((size_t)T * hd, sizeof(double)), *dva = ops_alloc((size_t)T * hd, sizeof(double));
    for (int b = 0; b < B; b++)
        for (int kh = 0; kh < Hkv; kh++) {
            memset(dka, 0, sizeof(double) * (size_t)T * hd);
            memset(dva, 0, sizeof(double) * (size_t)T * hd);
            for (int h = kh * grp; h < (kh + 1) * grp; h++)
                for (int i = 0; i < T; i++) {
                    long qi_off = ((long)b * T + i) * qw + h * hd;
                    const float *qi = q + qi_off, *gi = dout + qi_off;
                    double L = lse[((long)b * H + h) * T + i], D = 0;
                    for (int j = 0; j <= i; j++) {
                        long kj = ((long)b * T + j) * kw + kh * hd;
                        p[j] = exp(scale * dotd(qi, k + kj, hd) - L);
                        ds[j] = dotd(gi, v + kj, hd);   /* dP */
                        D += p[j] * ds[j];
                    }
                    memset(dqa, 0, sizeof(double) * (size_t)hd);
                    for (int j = 0; j <= i; j++) {
                        const float *kj = k + ((long)b * T + j) * kw + kh * hd;
                        double g = p[j] * (ds[j] - D) * scale;
                        for (int c = 0; c < hd; c++) {
                            dqa[c] += g * kj[c];
                            dka[(long)j * hd + c] += g * qi[c];
                            dva[(long)j * hd + c] += p[j] * gi[c];
                        }
                    }
                    for (int c = 0; c < hd; c++) dq[qi_off + c] = (float)dqa[c];
                }
            for (int j = 0; j < T; j++)
                for (int c = 0; c < hd; c++) {
                    long off = ((long)b * T + j) * kw + kh * hd + c;
                    dk[off] = (float)dka[(long)j * hd + c];
                    dv[off] = (float)dva[(long)j * hd + c];
                }
        }
    free(p); free(ds); free(dqa); free(dka); free(dva);
}

/* ------------------------------------------------------------------------------------ */
/* FFN activation                                                                       */

void mg_act_fwd(int act, const float *a, float *h, long n, int ff)
{
    int glu = mg_act_is_glu((mg_act)act), F2 = glu ? 2 * ff : ff;
    for (long r = 0; r < n; r++) {
        const float *ar = a + r * F2;
        for (int i = 0; i < ff; i++)
            h[r * ff + i] = (float)(mg_ref_act(act, ar[i]) * (glu ? (double)ar[ff + i] : 1.0));
    }
}

void mg_act_bwd(int act, const float *a, const float *dh, float *da, long n, int ff)
{
    int glu = mg_act_is_glu((mg_act)act), F2 = glu ? 2 * ff : ff;
    for (long r = 0; r < n; r++) {
        const float *ar = a + r * F2;
        float *dr = da + r * F2;
        for (int i = 0; i < ff; i++) {
            double g = dh[r * ff + i];
            if (glu) {
                dr[i] = (float)(g * mg_ref_act_grad(act, ar[i]) * ar[ff + i]);
                dr[ff + i] = (float)(g * mg_ref_act(act, ar[i]));
            } else {
                dr[i] = (float)(g * mg_ref_act_grad(act, ar[i]));
            }
        }
    }
}

/* ------------------------------------------------------------------------------------ */
/* cross-entropy                                                                        */

double mg_xent(float *logits, const int32_t *targets, long n, int V, float dscale)
{
    double total = 0;
    for (long r = 0; r < n; r++) {
        float *l = logits + r * V;
        float mx = l[0];
        for (int j = 1; j < V; j++) if (l[j] > mx) mx = l[j];
        double sum = 0;
        for (int j = 0; j < V; j++) sum += exp((double)l[j] - mx);
        double lse = mx + log(sum);
        total += lse - l[targets[r]];
        if (dscale != 0.0f) {
            for (int j = 0; j < V; j++) l[j] = (float)(exp((double)l[j] - lse) * dscale);
            l[targets[r]] -= dscale;
        }
    }
    return total;
}

/* ------------------------------------------------------------------------------------ */
/* dropout                                                                              */

void mg_dropout(float *x, long n, double p, uint64_t stream)
{
    if (p <= 0) return;
    float keep_scale = (float)(1.0 / (1.0 - p));
    for (long i = 0; i < n; i++) {
        double u = (double)(mg_mix64(stream ^ (uint64_t)i) >> 40) * (1.0 / 16777216.0);
        x[i] = u >= p ? x[i] * keep_scale : 0.0f;
    }
}
