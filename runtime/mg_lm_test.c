/* mg_lm_test: `moegen selftest` for the decoder-LM kernels (mg_lm_selftest, see mg_lm.h).
 *
 * For each variant (the spec; odd vocab; GQA and other head dims; fp16; fp32) it builds the
 * families it needs, then per case: random data (rounded to the storage type so the CPU
 * reference sees what the GPU sees), outputs poisoned with 0xFF bytes (NaN), the op run
 * twice (bitwise determinism), the first run compared with runtime/mg_lm_ref.c:
 * ‖got − ref‖/‖ref‖ <= 1e-2 for 16-bit storage, 1e-5 for fp32; integer/bit outputs exact. */
#include "mg_lm.h"
#include "mg_lm_ref.h"
#include "mg_cuda.h"
#include "mg_hash.h"
#include "mg_moe.h"   /* mg_host_to_dtype / mg_host_from_dtype */
#include "mg_rng.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct lt {
    const mg_lm *L;
    int dtype, esz;
    double tol;            /* storage-type tolerance */
    int pass, fail;
    mg_rng rng;
    cudaStream_t st;
    char var[48];
} lt;

/* ------------------------------------------------------------------ rows */
static void row(lt *t, const char *cs, const char *name, double max_abs, double rel, const char *tol, int ok)
{
    char c[160];
    snprintf(c, sizeof c, "lm %.40s %.64s", t->var, cs);
    printf("%-34s %-11s %11.3e %11.3e %9s  %s\n", c, name, max_abs, rel, tol, ok ? "PASS" : "FAIL");
    if (ok) t->pass++; else t->fail++;
}

static int cmp_f(lt *t, const char *cs, const char *name, const float *got, const float *ref, long n, long cols,
                 double tol)
{
    double num = 0, den = 0, max_abs = 0;
    long nonfinite = 0, worst = -1;
    for (long i = 0; i < n; i++) {
        double g = got[i], r = ref[i], d = g - r;
        if (!isfinite(g)) { if (!nonfinite++) worst = i; continue; }
        num += d * d;
        den += r * r;
        if (fabs(d) > max_abs) { max_abs = fabs(d); if (!nonfinite) worst = i; }
    }
    double rel = den > 0 ? sqrt(num / den) : sqrt(num);
    if (nonfinite) rel = max_abs = INFINITY;
    char ts[16];
    snprintf(ts, sizeof ts, "%.0e", tol);
    int ok = rel <= tol;
    row(t, cs, name, max_abs, rel, ts, ok);
    if (!ok) {
        double rms = n ? sqrt(den / (double)n) : 0;
        if (nonfinite) printf("    %ld of %ld values non-finite (poisoned output not written?)\n", nonfinite, n);
        if (worst >= 0) printf("    worst [%ld, %ld]: got %.6g  ref %.6g\n", worst / cols, worst % cols, got[worst], ref[worst]);
        int shown = 0;
        for (long i = 0; i < n && shown < 6; i++) {
            double g = got[i], r = ref[i];
            if (!isfinite(g) || fabs(g - r) > 3 * tol * (rms + fabs(r))) {
                printf("    mismatch [%ld, %ld]: got %.6g  ref %.6g\n", i / cols, i % cols, g, r);
                shown++;
            }
        }
    }
    return ok;
}

static int cmp_exact(lt *t, const char *cs, const char *name, const void *got, const void *ref, long n, int esz,
                     long cols)
{
    long bad = 0, first = -1;
    for (long i = 0; i < n; i++)
        if (memcmp((const char *)got + i * esz, (const char *)ref + i * esz, (size_t)esz)) { if (!bad++) first = i; }
    row(t, cs, name, (double)bad, bad ? 1.0 : 0.0, "exact", !bad);
    if (bad) printf("    %ld of %ld differ, first at [%ld, %ld]\n", bad, n, first / cols, first % cols);
    return !bad;
}

static void det_row(lt *t, const char *cs, const char *what, const void *a, const void *b, size_t bytes)
{
    int same = !bytes || !memcmp(a, b, bytes);
    row(t, cs, "determinism", 0, 0, "bitwise", same);
    if (!same) printf("    second run differs in %s\n", what);
}

/* ------------------------------------------------------------------ host data and device buffers */
static float *hrand(lt *t, long n, double scale)
{
    float *a = malloc(sizeof(float) * (size_t)(n ? n : 1));
    const double k = 2.0 * 1.7320508075688772 * scale;
    for (long i = 0; i < n; i++) a[i] = (float)((mg_rng_unif(&t->rng) - 0.5) * k);
    return a;
}
/* Rounds a to the storage type in place. */
static void hround(lt *t, float *a, long n)
{
    if (t->dtype == MG_DTYPE_FP32 || !n) return;
    void *tmp = malloc((size_t)n * 2);
    mg_host_to_dtype(t->dtype, a, tmp, n);
    mg_host_from_dtype(t->dtype, tmp, a, n);
    free(tmp);
}

#define MAXBUF 24
typedef struct dset { void *p[MAXBUF]; int n; } dset;
static void *dalloc(dset *s, size_t bytes, mg_err *err)
{
    void *p = NULL;
    if (cudaMalloc(&p, bytes ? bytes : 16) != cudaSuccess || s->n == MAXBUF) {
        (void)cudaGetLastError();
        if (p) cudaFree(p);
        mg_err_set(err, MG_EINTERNAL, "selftest: cudaMalloc of %zu bytes failed", bytes);
        return NULL;
    }
    s->p[s->n++] = p;
    return p;
}
static void dfree(dset *s)
{
    for (int i = 0; i < s->n; i++) cudaFree(s->p[i]);
    s->n = 0;
}
/* Uploads host floats as the storage type (or fp32 when f32). */
static int up(lt *t, void *d, const float *h, long n, int f32, mg_err *err)
{
    size_t es = f32 ? 4 : (size_t)t->esz;
    void *tmp = malloc(es * (size_t)(n ? n : 1));
    if (f32) memcpy(tmp, h, 4 * (size_t)n);
    else mg_host_to_dtype(t->dtype, h, tmp, n);
    cudaError_t e = cudaMemcpy(d, tmp, es * (size_t)n, cudaMemcpyHostToDevice);
    free(tmp);
    MG_CUDA_TRY(e, err);
    return MG_OK;
}
static int up_raw(void *d, const void *h, size_t bytes, mg_err *err)
{
    MG_CUDA_TRY(cudaMemcpy(d, h, bytes, cudaMemcpyHostToDevice), err);
    return MG_OK;
}
static int poison(void *d, size_t bytes, mg_err *err)
{
    MG_CUDA_TRY(cudaMemset(d, 0xFF, bytes), err);
    return MG_OK;
}
/* Downloads raw bytes (malloc'd) and, when f != NULL, the values as floats. */
static int down(lt *t, const void *d, long n, int f32, void **raw, float **f, mg_err *err)
{
    size_t es = f32 ? 4 : (size_t)t->esz;
    *raw = malloc(es * (size_t)(n ? n : 1));
    MG_CUDA_TRY(cudaStreamSynchronize(t->st), err);
    MG_CUDA_TRY(cudaMemcpy(*raw, d, es * (size_t)n, cudaMemcpyDeviceToHost), err);
    if (f) {
        *f = malloc(sizeof(float) * (size_t)(n ? n : 1));
        if (f32) memcpy(*f, *raw, 4 * (size_t)n);
        else mg_host_from_dtype(t->dtype, *raw, *f, n);
    }
    return MG_OK;
}
/* Columns [c0, c1) of a [rows, cols] array into a new array. */
static float *cols_of(const float *a, long rows, int cols, int c0, int c1)
{
    float *o = malloc(sizeof(float) * (size_t)(rows * (c1 - c0) + 1));
    for (long r = 0; r < rows; r++) memcpy(o + r * (c1 - c0), a + r * cols + c0, sizeof(float) * (size_t)(c1 - c0));
    return o;
}

#define TRY(x) do { if ((rc = (x))) goto done; } while (0)

/* ------------------------------------------------------------------ attention */
static int t_attn(lt *t, int B, int S, mg_err *err)
{
    const mg_lm_dims *dm = &t->L->dim;
    const int W = (dm->H + 2 * dm->KV) * dm->hd, WO = dm->H * dm->hd, hd = dm->hd;
    const long rows = (long)B * S, nq = rows * W, no = rows * WO, nl = (long)B * dm->H * S;
    char cs[48];
    snprintf(cs, sizeof cs, "attn B=%d S=%d", B, S);
    dset ds = {{0}, 0};
    int rc = MG_OK;
    float *qkv = hrand(t, nq, 1.0), *dout = hrand(t, no, 1.0);
    hround(t, qkv, nq);
    hround(t, dout, no);
    float *o_ref = malloc(sizeof(float) * (size_t)no), *lse_ref = malloc(sizeof(float) * (size_t)nl);
    float *dq_ref = malloc(sizeof(float) * (size_t)nq);
    void *raw[2][3] = {{0}};
    float *o_g = NULL, *lse_g = NULL, *dq_g = NULL;
    void *d_qkv = dalloc(&ds, nq * t->esz, err), *d_o = dalloc(&ds, no * t->esz, err), *d_do = dalloc(&ds, no * t->esz, err);
    float *d_lse = dalloc(&ds, nl * 4, err), *d_D = dalloc(&ds, nl * 4, err);
    void *d_dq = dalloc(&ds, nq * t->esz, err);
    if (!d_qkv || !d_o || !d_do || !d_lse || !d_D || !d_dq) { rc = err->code; goto done; }
    TRY(up(t, d_qkv, qkv, nq, 0, err));
    TRY(up(t, d_do, dout, no, 0, err));
    for (int rep = 0; rep < 2; rep++) {
        TRY(poison(d_o, no * t->esz, err));
        TRY(poison(d_lse, nl * 4, err));
        TRY(poison(d_D, nl * 4, err));
        TRY(poison(d_dq, nq * t->esz, err));
        TRY(mg_lm_attn_fwd(t->L, t->st, d_qkv, d_o, d_lse, B, S, err));
        TRY(mg_lm_attn_bwd(t->L, t->st, d_qkv, d_o, d_do, d_lse, d_D, d_dq, B, S, err));
        TRY(down(t, d_o, no, 0, &raw[rep][0], rep ? NULL : &o_g, err));
        TRY(down(t, d_lse, nl, 1, &raw[rep][1], rep ? NULL : &lse_g, err));
        TRY(down(t, d_dq, nq, 0, &raw[rep][2], rep ? NULL : &dq_g, err));
    }
    mg_lm_ref_attn refa = {B, S, dm->H, dm->KV, hd};
    mg_lm_ref_attn_fwd(&refa, qkv, o_ref, lse_ref);
    mg_lm_ref_attn_bwd(&refa, qkv, dout, dq_ref);
    cmp_f(t, cs, "o", o_g, o_ref, no, WO, t->tol);
    cmp_f(t, cs, "lse", lse_g, lse_ref, nl, S, t->dtype == MG_DTYPE_FP32 ? 1e-5 : 1e-4);
    const char *part[3] = {"dq", "dk", "dv"};
    const int c0[4] = {0, dm->H * hd, (dm->H + dm->KV) * hd, W};
    for (int k = 0; k < 3; k++) {
        float *g = cols_of(dq_g, rows, W, c0[k], c0[k + 1]), *r = cols_of(dq_ref, rows, W, c0[k], c0[k + 1]);
        cmp_f(t, cs, part[k], g, r, rows * (c0[k + 1] - c0[k]), c0[k + 1] - c0[k], t->tol);
        free(g);
        free(r);
    }
    det_row(t, cs, "o", raw[0][0], raw[1][0], (size_t)no * t->esz);
    det_row(t, cs, "lse", raw[0][1], raw[1][1], (size_t)nl * 4);
    det_row(t, cs, "dqkv", raw[0][2], raw[1][2], (size_t)nq * t->esz);
done:
    for (int i = 0; i < 2; i++) for (int j = 0; j < 3; j++) free(raw[i][j]);
    free(qkv); free(dout); free(o_ref); free(lse_ref); free(dq_ref); free(o_g); free(lse_g); free(dq_g);
    dfree(&ds);
    return rc;
}

/* ------------------------------------------------------------------ RoPE */
static int t_rope(lt *t, int B, int S, double theta, mg_err *err)
{
    const mg_lm_dims *dm = &t->L->dim;
    const int W = (dm->H + 2 * dm->KV) * dm->hd;
    const long rows = (long)B * S, n = rows * W, nt = (long)S * (dm->hd / 2);
    char cs[48];
    snprintf(cs, sizeof cs, "rope B=%d S=%d", B, S);
    dset ds = {{0}, 0};
    int rc = MG_OK;
    float *x = hrand(t, n, 1.0), *ref = malloc(sizeof(float) * (size_t)n);
    hround(t, x, n);
    void *raw[2][2] = {{0}};
    float *g[2] = {0};
    void *d_x = dalloc(&ds, n * t->esz, err);
    float *d_cos = dalloc(&ds, nt * 4, err), *d_sin = dalloc(&ds, nt * 4, err);
    if (!d_x || !d_cos || !d_sin) { rc = err->code; goto done; }
    TRY(mg_lm_rope_table(t->L, t->st, d_cos, d_sin, S, err));
    for (int dir = 0; dir < 2; dir++)
        for (int rep = 0; rep < 2; rep++) {
            TRY(up(t, d_x, x, n, 0, err));
            TRY(mg_lm_rope(t->L, t->st, dir, d_x, d_cos, d_sin, B, S, err));
            TRY(down(t, d_x, n, 0, &raw[dir][rep], rep ? NULL : &g[dir], err));
        }
    for (int dir = 0; dir < 2; dir++) {
        memcpy(ref, x, sizeof(float) * (size_t)n);
        mg_lm_ref_rope(ref, (int)rows, S, dm->H, dm->KV, dm->hd, theta, dir);
        const int qk = (dm->H + dm->KV) * dm->hd;
        float *gq = cols_of(g[dir], rows, W, 0, qk), *rq = cols_of(ref, rows, W, 0, qk);
        cmp_f(t, cs, dir ? "bwd q,k" : "fwd q,k", gq, rq, rows * qk, qk, t->tol);
        free(gq); free(rq);
        /* v heads must come back untouched, bit for bit */
        void *x_raw = malloc((size_t)n * t->esz);
        if (t->dtype == MG_DTYPE_FP32) memcpy(x_raw, x, 4 * (size_t)n);
        else mg_host_to_dtype(t->dtype, x, x_raw, n);
        long bad = 0;
        for (long r = 0; r < rows; r++)
            bad += memcmp((char *)raw[dir][0] + (r * W + qk) * t->esz, (char *)x_raw + (r * W + qk) * t->esz,
                          (size_t)(W - qk) * t->esz) != 0;
        row(t, cs, dir ? "bwd v kept" : "fwd v kept", (double)bad, bad ? 1 : 0, "exact", !bad);
        free(x_raw);
        det_row(t, cs, dir ? "bwd" : "fwd", raw[dir][0], raw[dir][1], (size_t)n * t->esz);
    }
done:
    for (int i = 0; i < 2; i++) { free(g[i]); free(raw[i][0]); free(raw[i][1]); }
    free(x); free(ref);
    dfree(&ds);
    return rc;
}

/* ------------------------------------------------------------------ RMSNorm */
static int t_norm(lt *t, int N, double eps, mg_err *err)
{
    const int D = t->L->dim.D;
    const long n = (long)N * D;
    char cs[48];
    snprintf(cs, sizeof cs, "rmsnorm N=%d", N);
    dset ds = {{0}, 0};
    int rc = MG_OK;
    float *x = hrand(t, n, 1.0), *res = hrand(t, n, 1.0), *w = hrand(t, D, 0.2), *dy = hrand(t, n, 1.0),
          *dres = hrand(t, n, 1.0);
    for (int c = 0; c < D; c++) w[c] += 1.0f;
    hround(t, x, n); hround(t, res, n); hround(t, w, D); hround(t, dy, n); hround(t, dres, n);
    float *h = malloc(sizeof(float) * (size_t)n), *y_ref = malloc(sizeof(float) * (size_t)n);
    float *rs_ref = malloc(sizeof(float) * (size_t)N), *dx_ref = malloc(sizeof(float) * (size_t)n);
    float *dw_ref = malloc(sizeof(float) * (size_t)D);
    for (long i = 0; i < n; i++) h[i] = x[i] + res[i];
    hround(t, h, n);
    void *raw[2][6] = {{0}};
    float *f[6] = {0};
    const long nd = mg_lm_ws_norm_dw(t->L, N);
    void *d_x = dalloc(&ds, n * t->esz, err), *d_res = dalloc(&ds, n * t->esz, err), *d_h = dalloc(&ds, n * t->esz, err);
    void *d_w = dalloc(&ds, D * t->esz, err), *d_y = dalloc(&ds, n * t->esz, err), *d_dy = dalloc(&ds, n * t->esz, err);
    void *d_dres = dalloc(&ds, n * t->esz, err), *d_dx = dalloc(&ds, n * t->esz, err);
    float *d_rs = dalloc(&ds, N * 4, err), *d_part = dalloc(&ds, nd * 4, err), *d_dw = dalloc(&ds, D * 4, err);
    if (!d_x || !d_res || !d_h || !d_w || !d_y || !d_dy || !d_dres || !d_dx || !d_rs || !d_part || !d_dw) {
        rc = err->code;
        goto done;
    }
    TRY(up(t, d_x, x, n, 0, err)); TRY(up(t, d_res, res, n, 0, err)); TRY(up(t, d_w, w, D, 0, err));
    TRY(up(t, d_dy, dy, n, 0, err)); TRY(up(t, d_dres, dres, n, 0, err));
    for (int rep = 0; rep < 2; rep++) {
        /* with the residual: h, y, rstd; then the backward with dres */
        TRY(poison(d_h, n * t->esz, err)); TRY(poison(d_y, n * t->esz, err)); TRY(poison(d_rs, N * 4, err));
        TRY(poison(d_dx, n * t->esz, err)); TRY(poison(d_part, nd * 4, err)); TRY(poison(d_dw, D * 4, err));
        TRY(mg_lm_norm_fwd(t->L, t->st, d_x, d_res, d_h, d_w, d_y, d_rs, N, err));
        TRY(mg_lm_norm_bwd(t->L, t->st, d_dy, d_h, d_w, d_rs, d_dres, d_dx, d_part, d_dw, N, err));
        TRY(down(t, d_h, n, 0, &raw[rep][0], rep ? NULL : &f[0], err));
        TRY(down(t, d_y, n, 0, &raw[rep][1], rep ? NULL : &f[1], err));
        TRY(down(t, d_rs, N, 1, &raw[rep][2], rep ? NULL : &f[2], err));
        TRY(down(t, d_dx, n, 0, &raw[rep][3], rep ? NULL : &f[3], err));
        TRY(down(t, d_dw, D, 1, &raw[rep][4], rep ? NULL : &f[4], err));
        /* without: y from x directly */
        TRY(poison(d_y, n * t->esz, err));
        TRY(mg_lm_norm_fwd(t->L, t->st, d_x, NULL, NULL, d_w, d_y, d_rs, N, err));
        TRY(down(t, d_y, n, 0, &raw[rep][5], rep ? NULL : &f[5], err));
    }
    mg_lm_ref_rmsnorm_fwd(h, w, N, D, eps, y_ref, rs_ref);
    cmp_f(t, cs, "h=x+res", f[0], h, n, D, t->tol);
    cmp_f(t, cs, "y", f[1], y_ref, n, D, t->tol);
    cmp_f(t, cs, "rstd", f[2], rs_ref, N, 1, t->dtype == MG_DTYPE_FP32 ? 1e-5 : 1e-4);
    mg_lm_ref_rmsnorm_bwd(dy, h, w, dres, N, D, eps, dx_ref, dw_ref);
    cmp_f(t, cs, "dx", f[3], dx_ref, n, D, t->tol);
    cmp_f(t, cs, "dw", f[4], dw_ref, D, D, t->tol);
    mg_lm_ref_rmsnorm_fwd(x, w, N, D, eps, y_ref, rs_ref);
    cmp_f(t, cs, "y (no res)", f[5], y_ref, n, D, t->tol);
    const size_t sz[6] = {(size_t)n * t->esz, (size_t)n * t->esz, (size_t)N * 4, (size_t)n * t->esz, (size_t)D * 4,
                          (size_t)n * t->esz};
    const char *nm[6] = {"h", "y", "rstd", "dx", "dw", "y (no res)"};
    for (int k = 0; k < 6; k++)
        if (memcmp(raw[0][k], raw[1][k], sz[k])) { det_row(t, cs, nm[k], raw[0][k], raw[1][k], sz[k]); goto done; }
    det_row(t, cs, "", raw[0][0], raw[0][0], 0);
done:
    for (int k = 0; k < 6; k++) { free(f[k]); free(raw[0][k]); free(raw[1][k]); }
    free(x); free(res); free(w); free(dy); free(dres); free(h); free(y_ref); free(rs_ref); free(dx_ref); free(dw_ref);
    dfree(&ds);
    return rc;
}

/* ------------------------------------------------------------------ embedding */
/* one_id: every position holds the same id (runs that fill whole sort chunks) */
static int t_embed(lt *t, int N, int one_id, mg_err *err)
{
    const int V = t->L->dim.V, D = t->L->dim.D;
    const long nw = (long)V * D, no = (long)N * D;
    char cs[48];
    snprintf(cs, sizeof cs, "embed N=%d%s", N, one_id ? " one id" : "");
    dset ds = {{0}, 0};
    int rc = MG_OK;
    /* skewed ids: half from 5 hot ids (long runs across sort chunks), the rest uniform; the
     * first and the last vocab row always occur */
    int *ids = malloc(sizeof(int) * (size_t)N);
    for (int r = 0; r < N; r++) {
        uint64_t u = mg_rng_u64(&t->rng);
        ids[r] = (u & 1) ? (int)((u >> 8) % 5) * (V / 5) : (int)((u >> 8) % (uint64_t)V);
    }
    ids[0] = V - 1;
    if (N > 1) ids[N - 1] = 0;
    for (int r = 0; one_id && r < N; r++) ids[r] = V / 3;
    float *wte = hrand(t, nw, 1.0), *dout = hrand(t, no, 1.0), *acc0 = hrand(t, nw, 1.0);
    hround(t, wte, nw);
    hround(t, dout, no);
    float *ref = malloc(sizeof(float) * (size_t)nw);
    void *raw[2][3] = {{0}};
    float *f[3] = {0};
    void *d_wte = dalloc(&ds, nw * t->esz, err), *d_out = dalloc(&ds, no * t->esz, err), *d_do = dalloc(&ds, no * t->esz, err);
    int *d_ids = dalloc(&ds, N * 4, err), *d_ws = dalloc(&ds, mg_lm_ws_embed_sort(t->L, N) * 4, err);
    float *d_dw = dalloc(&ds, nw * 4, err);
    if (!d_wte || !d_out || !d_do || !d_ids || !d_ws || !d_dw) { rc = err->code; goto done; }
    TRY(up(t, d_wte, wte, nw, 0, err));
    TRY(up(t, d_do, dout, no, 0, err));
    TRY(up_raw(d_ids, ids, (size_t)N * 4, err));
    for (int rep = 0; rep < 2; rep++) {
        TRY(poison(d_out, no * t->esz, err));
        TRY(poison(d_ws, mg_lm_ws_embed_sort(t->L, N) * 4, err));
        TRY(poison(d_dw, nw * 4, err));
        TRY(mg_lm_embed_fwd(t->L, t->st, d_ids, d_wte, d_out, N, err));
        TRY(mg_lm_embed_bwd(t->L, t->st, d_ids, d_do, d_ws, d_dw, 0, N, err));
        TRY(down(t, d_out, no, 0, &raw[rep][0], rep ? NULL : &f[0], err));
        TRY(down(t, d_dw, nw, 1, &raw[rep][1], rep ? NULL : &f[1], err));
        TRY(up(t, d_dw, acc0, nw, 1, err));
        TRY(mg_lm_embed_bwd(t->L, t->st, d_ids, d_do, d_ws, d_dw, 1, N, err));
        TRY(down(t, d_dw, nw, 1, &raw[rep][2], rep ? NULL : &f[2], err));
    }
    {
        float *g = malloc(sizeof(float) * (size_t)no);
        for (int r = 0; r < N; r++) memcpy(g + (long)r * D, wte + (long)ids[r] * D, sizeof(float) * (size_t)D);
        cmp_f(t, cs, "fwd gather", f[0], g, no, D, 0.0);
        free(g);
    }
    mg_lm_ref_embed_bwd(ids, dout, N, V, D, 0, ref);
    cmp_f(t, cs, "dwte", f[1], ref, nw, D, t->dtype == MG_DTYPE_FP32 ? 1e-5 : 1e-5);
    memcpy(ref, acc0, sizeof(float) * (size_t)nw);
    mg_lm_ref_embed_bwd(ids, dout, N, V, D, 1, ref);
    cmp_f(t, cs, "dwte accum", f[2], ref, nw, D, 1e-5);
    det_row(t, cs, "dwte", raw[0][1], raw[1][1], (size_t)nw * 4);
    det_row(t, cs, "dwte accum", raw[0][2], raw[1][2], (size_t)nw * 4);
done:
    for (int k = 0; k < 3; k++) { free(f[k]); free(raw[0][k]); free(raw[1][k]); }
    free(ids); free(wte); free(dout); free(acc0); free(ref);
    dfree(&ds);
    return rc;
}

/* ------------------------------------------------------------------ cross-entropy */
/* pad: ld = V + pad; a multiple of 8 (with V) takes the kernel's 16-byte vector path, e.g. the
 * GPU trainer's ld = V rounded up to 64 */
static int t_xent(lt *t, int N, int pad, mg_err *err)
{
    const int V = t->L->dim.V, ld = V + pad;
    const long n = (long)N * ld;
    char cs[48];
    snprintf(cs, sizeof cs, "xent N=%d ld=V+%d", N, pad);
    dset ds = {{0}, 0};
    int rc = MG_OK;
    float *lg = hrand(t, n, 3.0);
    hround(t, lg, n);
    int *tg = malloc(sizeof(int) * (size_t)(N ? N : 1));
    for (int r = 0; r < N; r++) tg[r] = (int)(mg_rng_u64(&t->rng) % (uint64_t)V);
    if (N) tg[0] = V - 1;
    float *x = cols_of(lg, N, ld, 0, V), *dl_ref = malloc(sizeof(float) * (size_t)N * V + 4);
    float *lr_ref = malloc(sizeof(float) * (size_t)N + 4), loss_ref;
    void *raw[2][3] = {{0}};
    float *f[3] = {0};
    void *d_lg = dalloc(&ds, n * t->esz, err);
    int *d_tg = dalloc(&ds, N * 4, err);
    float *d_lr = dalloc(&ds, N * 4, err), *d_loss = dalloc(&ds, 4, err);
    if (!d_lg || !d_tg || !d_lr || !d_loss) { rc = err->code; goto done; }
    TRY(up_raw(d_tg, tg, (size_t)N * 4, err));
    for (int rep = 0; rep < 2; rep++) {
        TRY(up(t, d_lg, lg, n, 0, err));
        TRY(poison(d_lr, N * 4, err));
        TRY(poison(d_loss, 4, err));
        TRY(mg_lm_xent(t->L, t->st, d_lg, ld, d_tg, d_lr, d_loss, 1.0f / (float)N, N, err));
        TRY(down(t, d_lg, n, 0, &raw[rep][0], rep ? NULL : &f[0], err));
        TRY(down(t, d_lr, N, 1, &raw[rep][1], rep ? NULL : &f[1], err));
        TRY(down(t, d_loss, 1, 1, &raw[rep][2], rep ? NULL : &f[2], err));
    }
    mg_lm_ref_xent(x, tg, N, V, 1.0 / N, lr_ref, &loss_ref, dl_ref);
    cmp_f(t, cs, "loss_row", f[1], lr_ref, N, 1, 1e-5);
    cmp_f(t, cs, "loss", f[2], &loss_ref, 1, 1, 1e-5);
    {
        float *g = cols_of(f[0], N, ld, 0, V);
        cmp_f(t, cs, "dlogits", g, dl_ref, (long)N * V, V, t->tol);
        free(g);
        /* the padding columns get a zero gradient (what a GEMM over ld columns must see) */
        long bad = 0;
        for (long r = 0; r < N; r++)
            for (int c = V; c < ld; c++) bad += f[0][r * ld + c] != 0.0f;
        if (pad) row(t, cs, "pad zeroed", (double)bad, bad ? 1 : 0, "exact", !bad);
    }
    det_row(t, cs, "dlogits", raw[0][0], raw[1][0], (size_t)n * t->esz);
    det_row(t, cs, "loss", raw[0][2], raw[1][2], 4);
done:
    for (int k = 0; k < 3; k++) { free(f[k]); free(raw[0][k]); free(raw[1][k]); }
    free(lg); free(tg); free(x); free(dl_ref); free(lr_ref);
    dfree(&ds);
    return rc;
}

/* ------------------------------------------------------------------ dropout */
/* off: the tensors start off elements into their buffers (off % 8 != 0: the kernel's
 * element-by-element path for pointers that are not 16-byte aligned). */
static int t_dropout(lt *t, long n, double p, int off, mg_err *err)
{
    char cs[48];
    snprintf(cs, sizeof cs, "dropout n=%ld p=%.2g%s", n, p, off ? " unaligned" : "");
    dset ds = {{0}, 0};
    int rc = MG_OK;
    const unsigned long long stream = mg_hash_drop_stream(1234, 77, 1, 5);
    float *x = hrand(t, n, 1.0), *res = hrand(t, n, 1.0), *ref = malloc(sizeof(float) * (size_t)n);
    for (long i = 0; i < n; i++) if (x[i] == 0.0f) x[i] = 0.5f;   /* keep == (grad != 0) below */
    hround(t, x, n);
    hround(t, res, n);
    int *keep = malloc(sizeof(int) * (size_t)n), *kg = malloc(sizeof(int) * (size_t)n);
    void *raw[2][2] = {{0}};
    float *f[2] = {0};
    char *b_x = dalloc(&ds, (n + off) * t->esz, err), *b_res = dalloc(&ds, (n + off) * t->esz, err),
         *b_o = dalloc(&ds, (n + off) * t->esz, err);
    if (!b_x || !b_res || !b_o) { rc = err->code; goto done; }
    void *d_x = b_x + off * t->esz, *d_res = b_res + off * t->esz, *d_o = b_o + off * t->esz;
    TRY(up(t, d_x, x, n, 0, err));
    TRY(up(t, d_res, res, n, 0, err));
    for (int rep = 0; rep < 2; rep++) {
        TRY(poison(d_o, n * t->esz, err));
        TRY(mg_lm_dropout(t->L, t->st, 0, d_x, d_res, d_o, n, p, stream, err));
        TRY(down(t, d_o, n, 0, &raw[rep][0], rep ? NULL : &f[0], err));
        TRY(poison(d_o, n * t->esz, err));
        TRY(mg_lm_dropout(t->L, t->st, 1, d_x, NULL, d_o, n, p, stream, err));
        TRY(down(t, d_o, n, 0, &raw[rep][1], rep ? NULL : &f[1], err));
    }
    mg_lm_ref_dropout(x, res, n, p, stream, ref, keep);
    cmp_f(t, cs, "fwd", f[0], ref, n, n, t->tol);
    mg_lm_ref_dropout(x, NULL, n, p, stream, ref, NULL);
    cmp_f(t, cs, "bwd", f[1], ref, n, n, t->tol);
    long kept = 0;
    for (long i = 0; i < n; i++) { kg[i] = f[1][i] != 0.0f; kept += keep[i]; }
    cmp_exact(t, cs, "mask", kg, keep, n, 4, n);
    printf("    kept %ld of %ld (%.4f, expected %.4f)\n", kept, n, (double)kept / (double)n, 1.0 - p);
    det_row(t, cs, "fwd", raw[0][0], raw[1][0], (size_t)n * t->esz);
done:
    for (int k = 0; k < 2; k++) { free(f[k]); free(raw[0][k]); free(raw[1][k]); }
    free(x); free(res); free(ref); free(keep); free(kg);
    dfree(&ds);
    return rc;
}

/* ------------------------------------------------------------------ AdamW and utilities */
static int t_adamw(lt *t, long n, int decay, mg_err *err)
{
    char cs[48];
    snprintf(cs, sizeof cs, "adamw n=%ld decay=%d", n, decay);
    dset ds = {{0}, 0};
    int rc = MG_OK;
    const mg_lm_adamw_hp hp = {3e-3f, 0.9f, 0.95f, 1e-8f, 0.1f};
    const int step = 7;
    const float gs = 0.5f;
    float *w = hrand(t, n, 1.0), *g = hrand(t, n, 1.0), *m = hrand(t, n, 0.1), *v = hrand(t, n, 0.01);
    for (long i = 0; i < n; i++) v[i] = v[i] * v[i];
    float *wr = malloc(4 * (size_t)n), *mr = malloc(4 * (size_t)n), *vr = malloc(4 * (size_t)n);
    memcpy(wr, w, 4 * (size_t)n); memcpy(mr, m, 4 * (size_t)n); memcpy(vr, v, 4 * (size_t)n);
    void *raw[2][4] = {{0}};
    float *f[4] = {0};
    float *d_w = dalloc(&ds, n * 4, err), *d_g = dalloc(&ds, n * 4, err), *d_m = dalloc(&ds, n * 4, err);
    float *d_v = dalloc(&ds, n * 4, err), *d_gs = dalloc(&ds, 4, err);
    void *d_wc = dalloc(&ds, n * t->esz, err);
    if (!d_w || !d_g || !d_m || !d_v || !d_gs || !d_wc) { rc = err->code; goto done; }
    TRY(up(t, d_g, g, n, 1, err));
    TRY(up(t, d_gs, &gs, 1, 1, err));
    for (int rep = 0; rep < 2; rep++) {
        TRY(up(t, d_w, w, n, 1, err)); TRY(up(t, d_m, m, n, 1, err)); TRY(up(t, d_v, v, n, 1, err));
        TRY(poison(d_wc, n * t->esz, err));
        TRY(mg_lm_adamw(t->L, t->st, d_w, d_g, d_m, d_v, d_wc, d_gs, n, &hp, step, decay, err));
        TRY(down(t, d_w, n, 1, &raw[rep][0], rep ? NULL : &f[0], err));
        TRY(down(t, d_m, n, 1, &raw[rep][1], rep ? NULL : &f[1], err));
        TRY(down(t, d_v, n, 1, &raw[rep][2], rep ? NULL : &f[2], err));
        TRY(down(t, d_wc, n, 0, &raw[rep][3], rep ? NULL : &f[3], err));
    }
    mg_lm_ref_adamw(wr, g, mr, vr, n, gs, hp.lr, hp.beta1, hp.beta2, hp.eps, decay ? hp.wd : 0.0, step);
    /* compare the update w − w0 (relative to the step, not to w) */
    for (long i = 0; i < n; i++) { f[0][i] -= w[i]; wr[i] -= w[i]; }
    cmp_f(t, cs, "w - w0", f[0], wr, n, n, 1e-4);
    cmp_f(t, cs, "m", f[1], mr, n, n, 1e-5);
    cmp_f(t, cs, "v", f[2], vr, n, n, 1e-5);
    for (long i = 0; i < n; i++) wr[i] += w[i];
    hround(t, wr, n);
    cmp_f(t, cs, "w_c", f[3], wr, n, n, t->tol);
    det_row(t, cs, "w", raw[0][0], raw[1][0], (size_t)n * 4);
done:
    for (int k = 0; k < 4; k++) { free(f[k]); free(raw[0][k]); free(raw[1][k]); }
    free(w); free(g); free(m); free(v); free(wr); free(mr); free(vr);
    dfree(&ds);
    return rc;
}

static int t_util(lt *t, long n, mg_err *err)
{
    char cs[48];
    snprintf(cs, sizeof cs, "util n=%ld", n);
    dset ds = {{0}, 0};
    int rc = MG_OK;
    const long n2 = n / 3 + 1;
    float *x = hrand(t, n, 1.0), *x2 = hrand(t, n2, 2.0), sdev = 0.25f;
    void *raw[2][3] = {{0}};
    float *f[3] = {0};
    /* x2 starts one float into its buffer: sumsq's path for x not 16-byte aligned */
    float *d_x = dalloc(&ds, n * 4, err), *b_x2 = dalloc(&ds, (n2 + 1) * 4, err), *d_part = dalloc(&ds, 2 * LM_SUMSQ_BLOCKS * 4, err);
    float *d_out = dalloc(&ds, 8, err), *d_s = dalloc(&ds, 4, err), *d_x2 = b_x2 ? b_x2 + 1 : NULL;
    void *d_y = dalloc(&ds, n * t->esz, err);
    if (!d_x || !b_x2 || !d_part || !d_out || !d_s || !d_y) { rc = err->code; goto done; }
    TRY(up(t, d_x2, x2, n2, 1, err));
    TRY(up(t, d_s, &sdev, 1, 1, err));
    double nrm = sqrt(pow(mg_lm_ref_norm2(x, n), 2) + pow(mg_lm_ref_norm2(x2, n2), 2));
    const float max_norm = (float)(nrm / 2);
    for (int rep = 0; rep < 2; rep++) {
        TRY(up(t, d_x, x, n, 1, err));
        TRY(poison(d_y, n * t->esz, err)); TRY(poison(d_part, 2 * LM_SUMSQ_BLOCKS * 4, err)); TRY(poison(d_out, 8, err));
        TRY(mg_lm_cast(t->L, t->st, d_x, d_y, n, err));
        TRY(mg_lm_sumsq(t->L, t->st, d_x, n, d_part, err));
        TRY(mg_lm_sumsq(t->L, t->st, d_x2, n2, d_part + LM_SUMSQ_BLOCKS, err));
        TRY(mg_lm_gnorm(t->L, t->st, d_part, 2 * LM_SUMSQ_BLOCKS, max_norm, d_out, err));
        TRY(mg_lm_scale(t->L, t->st, d_x, n, 3.0f, d_s, err));
        TRY(down(t, d_y, n, 0, &raw[rep][0], NULL, err));
        TRY(down(t, d_out, 2, 1, &raw[rep][1], rep ? NULL : &f[1], err));
        TRY(down(t, d_x, n, 1, &raw[rep][2], rep ? NULL : &f[2], err));
    }
    {
        void *yr = malloc((size_t)n * t->esz);
        if (t->dtype == MG_DTYPE_FP32) memcpy(yr, x, 4 * (size_t)n);
        else mg_host_to_dtype(t->dtype, x, yr, n);
        cmp_exact(t, cs, "cast", raw[0][0], yr, n, t->esz, n);
        free(yr);
        float ref[2] = {(float)nrm, (float)(max_norm / (nrm + 1e-6))};
        cmp_f(t, cs, "gnorm", &f[1][0], &ref[0], 1, 1, 1e-5);
        cmp_f(t, cs, "clip", &f[1][1], &ref[1], 1, 1, 1e-5);
        float *sr = malloc(4 * (size_t)n);
        for (long i = 0; i < n; i++) sr[i] = x[i] * 3.0f * 0.25f;
        cmp_f(t, cs, "scale", f[2], sr, n, n, 1e-6);
        free(sr);
    }
    det_row(t, cs, "gnorm", raw[0][1], raw[1][1], 8);
done:
    for (int k = 0; k < 3; k++) { free(f[k]); free(raw[0][k]); free(raw[1][k]); }
    free(x); free(x2);
    dfree(&ds);
    return rc;
}

/* ------------------------------------------------------------------ variants */
enum { F_ATTN = 1 << 0, F_ROPE = 1 << 1, F_NORM = 1 << 2, F_EMBED = 1 << 3, F_XENT = 1 << 4, F_DROP = 1 << 5,
       F_ADAMW = 1 << 6, F_UTIL = 1 << 7, F_ALL = 0xff };

static int run_variant(const char *name, const mg_spec *sp, unsigned fams, const char *arch, unsigned long long *seed,
                       int *n_pass, int *n_fail, mg_err *err)
{
    mg_err e2;
    mg_err_clear(&e2);
    if (mg_spec_validate(sp, &e2)) {
        printf("-- lm %s: skipped (%s)\n", name, e2.msg);
        return MG_OK;
    }
    mg_plan plan;
    int rc = mg_plan_make(sp, NULL, &plan, err);
    if (rc) return rc;
    const int hd = sp->model.d_model / sp->model.n_head;
    printf("-- lm %s: %s d=%d heads %d/%d kv hd=%d vocab %d seq %d (%s)\n", name, mg_dtype_names[sp->dtype],
           sp->model.d_model, sp->model.n_head, sp->model.n_kv_head, hd, sp->model.vocab, sp->model.seq_len,
           fams & F_ATTN ? plan.fam[MG_FAM_ATTN].name : (fams & F_XENT ? plan.fam[MG_FAM_XENT].name : ""));
    fflush(stdout);
    mg_lm_opts lo = {.arch = arch, .families = fams};
    mg_lm *L = NULL;
    if ((rc = mg_lm_create(&plan, &lo, &L, err))) return rc;
    lt t;
    memset(&t, 0, sizeof t);
    t.L = L;
    t.dtype = sp->dtype;
    t.esz = mg_dtype_size(sp->dtype);
    t.tol = sp->dtype == MG_DTYPE_FP32 ? 1e-5 : 1e-2;
    t.st = 0;
    snprintf(t.var, sizeof t.var, "%s", name);
    mg_rng_seed(&t.rng, (*seed)++);
    const int S_main = sp->model.seq_len < 256 ? sp->model.seq_len : 256;
    if (fams & F_ATTN) {
        const int cases[][2] = {{1, 1}, {2, S_main}, {3, 77}, {1, 130}};
        for (int i = 0; i < 4 && !rc; i++) { rc = t_attn(&t, cases[i][0], cases[i][1], err); fflush(stdout); }
    }
    if (!rc && (fams & F_ROPE)) rc = t_rope(&t, 2, S_main, sp->model.rope_theta, err);
    if (!rc && (fams & F_ROPE)) rc = t_rope(&t, 3, 77, sp->model.rope_theta, err);
    if (!rc && (fams & F_NORM)) rc = t_norm(&t, 1, sp->model.norm_eps, err);
    if (!rc && (fams & F_NORM)) rc = t_norm(&t, 1337, sp->model.norm_eps, err);
    if (!rc && (fams & F_EMBED)) rc = t_embed(&t, 1, 0, err);
    if (!rc && (fams & F_EMBED)) rc = t_embed(&t, 1337, 0, err);
    if (!rc && (fams & F_EMBED)) rc = t_embed(&t, 700, 1, err);
    const int V = sp->model.vocab, pad64 = (V + 63) / 64 * 64 - V;   /* the trainer's padded vocabulary */
    if (!rc && (fams & F_XENT)) rc = t_xent(&t, 1, 0, err);
    if (!rc && (fams & F_XENT)) rc = t_xent(&t, 67, 0, err);
    if (!rc && (fams & F_XENT)) rc = t_xent(&t, 5, 3, err);
    if (!rc && (fams & F_XENT)) rc = t_xent(&t, 67, pad64 ? pad64 : 64, err);
    double p = sp->train.dropout > 0 ? sp->train.dropout : 0.1;
    if (!rc && (fams & F_DROP)) rc = t_dropout(&t, 1, p, 0, err);
    if (!rc && (fams & F_DROP)) rc = t_dropout(&t, 100003, p, 0, err);
    if (!rc && (fams & F_DROP)) rc = t_dropout(&t, 1003, p, 1, err);
    if (!rc && (fams & F_ADAMW)) rc = t_adamw(&t, 100003, 1, err);
    if (!rc && (fams & F_ADAMW)) rc = t_adamw(&t, 1, 0, err);
    if (!rc && (fams & F_UTIL)) rc = t_util(&t, 1, err);
    if (!rc && (fams & F_UTIL)) rc = t_util(&t, 1000003, err);
    fflush(stdout);
    *n_pass += t.pass;
    *n_fail += t.fail;
    mg_lm_destroy(L);
    return rc;
}

int mg_lm_selftest(const mg_spec *spec, const char *arch, unsigned long long seed, int *n_pass, int *n_fail,
                   mg_err *err)
{
    unsigned long long sd = seed * 7919 + 17;
    mg_spec v = *spec;
    int rc = run_variant("spec", &v, F_ALL, arch, &sd, n_pass, n_fail, err);
    if (!rc) {   /* odd vocab */
        v = *spec;
        v.model.vocab = spec->model.vocab % 2 ? spec->model.vocab : spec->model.vocab - 1;
        rc = run_variant("vocab-odd", &v, F_XENT | F_EMBED, arch, &sd, n_pass, n_fail, err);
    }
    if (!rc) {   /* GQA at the other common head dim */
        v = *spec;
        const int hd = spec->model.d_model / spec->model.n_head, want = hd == 128 ? 64 : 128;
        if (spec->model.d_model % want == 0 && spec->model.d_model / want >= 2) {
            v.model.n_head = spec->model.d_model / want;
            v.model.n_kv_head = v.model.n_head >= 4 ? v.model.n_head / 4 : 1;
            rc = run_variant(want == 128 ? "gqa-hd128" : "gqa-hd64", &v, F_ATTN | F_ROPE, arch, &sd, n_pass, n_fail, err);
        }
    }
    const struct { const char *name; int d, h, kv; } hv[] = {{"hd72", 144, 2, 1}, {"hd256", 512, 2, 1}, {"hd16", 64, 4, 2}};
    for (int i = 0; i < 3 && !rc; i++) {
        v = *spec;
        v.model.d_model = hv[i].d;
        v.model.n_head = hv[i].h;
        v.model.n_kv_head = hv[i].kv;
        rc = run_variant(hv[i].name, &v, F_ATTN | F_ROPE, arch, &sd, n_pass, n_fail, err);
    }
    /* RMSNorm row layouts (lm_params.h LM_NORM_TPR, at 16 bits): d 16 one warp with 2 lanes
     * busy; 2048 a row over 4 warps, 2 rows per CTA; 8192 a row per CTA of 512 (no cross-row
     * dw sum) */
    const int nd[] = {16, 2048, 8192};
    for (int i = 0; i < 3 && !rc; i++) {
        char name[32];
        snprintf(name, sizeof name, "norm-d%d", nd[i]);
        v = *spec;
        v.model.d_model = nd[i];
        v.model.n_head = v.model.n_kv_head = nd[i] / (nd[i] >= 128 ? 128 : 8);
        rc = run_variant(name, &v, F_NORM, arch, &sd, n_pass, n_fail, err);
    }
    if (!rc) {
        v = *spec;
        v.dtype = spec->dtype == MG_DTYPE_FP16 ? MG_DTYPE_BF16 : MG_DTYPE_FP16;
        rc = run_variant(v.dtype == MG_DTYPE_FP16 ? "fp16" : "bf16", &v, F_ATTN | F_NORM | F_XENT, arch, &sd, n_pass,
                         n_fail, err);
    }
    if (!rc && spec->dtype != MG_DTYPE_FP32) {
        v = *spec;
        v.dtype = MG_DTYPE_FP32;
        rc = run_variant("fp32", &v, F_ALL, arch, &sd, n_pass, n_fail, err);
    }
    return rc;
}
