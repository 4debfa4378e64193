/* mg_lm: build of the decoder-LM kernel families and their host launchers (see mg_lm.h). */
#include "mg_lm.h"
#include "mg_cuda.h"
#include "mg_gen.h"
#include "mg_jit.h"
#include "mg_hash.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------------ kernel table */
static const struct { int fam; const char *entry; } lm_defs[MG_LM_K_COUNT] = {
    {MG_FAM_ATTN, "fwd"}, {MG_FAM_ATTN, "bwd_pre"}, {MG_FAM_ATTN, "bwd_dkdv"}, {MG_FAM_ATTN, "bwd_dq"},
    {MG_FAM_ROPE, "table"}, {MG_FAM_ROPE, "fwd"}, {MG_FAM_ROPE, "bwd"},
    {MG_FAM_NORM, "fwd"}, {MG_FAM_NORM, "bwd"}, {MG_FAM_NORM, "dwsum"},
    {MG_FAM_EMBED, "fwd"}, {MG_FAM_EMBED, "sort"}, {MG_FAM_EMBED, "part"}, {MG_FAM_EMBED, "bwd"},
    {MG_FAM_XENT, "fwd"}, {MG_FAM_XENT, "loss"},
    {MG_FAM_DROPOUT, "fwd"}, {MG_FAM_DROPOUT, "bwd"},
    {MG_FAM_ADAMW, "step"},
    {MG_FAM_UTIL, "cast"}, {MG_FAM_UTIL, "sumsq"}, {MG_FAM_UTIL, "gnorm"}, {MG_FAM_UTIL, "scale"},
};

static long long cdiv(long long a, long long b) { return (a + b - 1) / b; }

/* ------------------------------------------------------------------ build */
static int lm_load(mg_lm *L, mg_err *err)
{
    int dev = 0, optin = 0;
    MG_CUDA_TRY(cudaGetDevice(&dev), err);
    MG_CUDA_TRY(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev), err);
    const int hd = L->dim.hd, es = L->dim.esz;
    for (int k = 0; k < MG_LM_K_COUNT; k++) {
        const int f = lm_defs[k].fam - MG_FAM_ATTN;
        if (!L->lib[f]) continue;
        char sym[sizeof L->sym[k]];   /* via a local: source and target both live in *L */
        snprintf(sym, sizeof sym, "%s_%s", L->fam_name[f], lm_defs[k].entry);
        memcpy(L->sym[k], sym, sizeof sym);
        cudaError_t e = cudaLibraryGetKernel(&L->kern[k], L->lib[f], L->sym[k]);
        if (e != cudaSuccess)
            return mg_err_set(err, MG_EINTERNAL, "cudaLibraryGetKernel(%s): %s", L->sym[k], cudaGetErrorString(e));
        size_t sm = k == MG_LM_ATTN_FWD ? (size_t)LM_ATTN_FWD_SMEM(hd, es)
                  : k == MG_LM_ATTN_DQ ? (size_t)LM_ATTN_DQ_SMEM(hd, es)
                  : k == MG_LM_ATTN_DKDV ? (size_t)LM_ATTN_DKDV_SMEM(hd, es) : 0;
        L->smem[k] = sm;
        if (sm > (size_t)optin)
            return mg_err_set(err, MG_EUSER, "%s needs %zu bytes of shared memory, the device allows %d (head_dim %d)",
                              L->sym[k], sm, optin, hd);
        if (sm > 48 * 1024 &&
            (e = cudaFuncSetAttribute((const void *)L->kern[k], cudaFuncAttributeMaxDynamicSharedMemorySize,
                                      (int)sm)) != cudaSuccess)
            return mg_err_set(err, MG_EINTERNAL, "cudaFuncSetAttribute(%s): %s", L->sym[k], cudaGetErrorString(e));
    }
    return MG_OK;
}

int mg_lm_create(const mg_plan *plan, const mg_lm_opts *o, mg_lm **out, mg_err *err)
{
    *out = NULL;
    mg_lm *L = calloc(1, sizeof *L);
    if (!L) return mg_err_set(err, MG_EINTERNAL, "mg_lm_create: out of memory");
    const mg_spec *s = &plan->spec;
    L->dim = (mg_lm_dims){s->model.d_model, s->model.n_head, s->model.n_kv_head, s->model.d_model / s->model.n_head,
                          s->model.vocab, mg_dtype_size(s->dtype)};
    char arch[32];
    int rc = MG_OK;
    if (o && o->arch) snprintf(arch, sizeof arch, "%s", o->arch);
    else {
        int dev = 0;
        cudaError_t e = cudaGetDevice(&dev);
        if (e != cudaSuccess || mg_cuda_arch(dev, arch, sizeof arch)) {
            free(L);
            return mg_err_set(err, MG_EINTERNAL, "cannot read the compute capability of the current device");
        }
    }
    mg_genout gen;
    memset(&gen, 0, sizeof gen);
    if ((rc = mg_gen_sources((mg_plan *)plan, &gen, err))) { free(L); return rc; }
    const unsigned mask = o && o->families ? o->families : ~0u;
    const char *names[MG_LM_FAMILIES], *srcs[MG_LM_FAMILIES];
    size_t lens[MG_LM_FAMILIES];
    int idx[MG_LM_FAMILIES], n = 0;
    for (int f = 0; f < MG_LM_FAMILIES; f++) {
        const mg_family *fam = &plan->fam[MG_FAM_ATTN + f];
        snprintf(L->fam_name[f], sizeof L->fam_name[f], "%s", fam->name);
        if (!(mask >> f & 1)) continue;
        names[n] = fam->name;
        srcs[n] = gen.src[MG_FAM_ATTN + f].text;
        lens[n] = gen.src[MG_FAM_ATTN + f].len;
        idx[n++] = f;
    }
    mg_jit_opts jo = {.arch = arch, .no_cache = o ? o->no_cache : 0};
    mg_jit_result res[MG_LM_FAMILIES];
    memset(res, 0, sizeof res);
    rc = mg_jit_compile_many(n, names, srcs, lens, &jo, o ? o->jobs : 0, res, err);
    mg_genout_free(&gen);
    if (rc) { free(L); return rc; }
    for (int i = 0; i < n && !rc; i++) {
        if (o && o->verbose)
            printf("  %-64s %s %8.1f ms\n", names[i], res[i].cache_hit ? "cached " : "compiled", res[i].compile_ms);
        cudaError_t e = cudaLibraryLoadData(&L->lib[idx[i]], res[i].cubin.data, NULL, NULL, 0, NULL, NULL, 0);
        if (e != cudaSuccess)
            rc = mg_err_set(err, MG_EINTERNAL, "cudaLibraryLoadData(%s, %s): %s", names[i], arch, cudaGetErrorString(e));
    }
    for (int i = 0; i < n; i++) mg_jit_result_free(&res[i]);
    if (!rc) rc = lm_load(L, err);
    if (rc) { mg_lm_destroy(L); return rc; }
    *out = L;
    return MG_OK;
}

void mg_lm_destroy(mg_lm *L)
{
    if (!L) return;
    for (int f = 0; f < MG_LM_FAMILIES; f++)
        if (L->lib[f]) cudaLibraryUnload(L->lib[f]);
    free(L);
}

long long mg_lm_ws_attn_dsum(const mg_lm *L, int B, int S) { return (long long)B * L->dim.H * S; }
long long mg_lm_ws_norm_dw(const mg_lm *L, int N) { return cdiv(N, LM_NORM_DW_ROWS) * L->dim.D; }
/* the sorted ids and positions, rounded up to 16 bytes, then the fp32 run partials */
static long long embed_part_off(int N) { return cdiv(2LL * N, 4) * 4; }
long long mg_lm_ws_embed_sort(const mg_lm *L, int N) { return embed_part_off(N) + (long long)N * L->dim.D; }

/* ------------------------------------------------------------------ launch */
static int lm_launch(const mg_lm *L, int k, long long gx, long long gy, long long gz, int block, cudaStream_t st,
                     void *params, mg_err *err)
{
    if (gx <= 0 || gy <= 0 || gz <= 0) return MG_OK;
    if (!L->kern[k])
        return mg_err_set(err, MG_EINTERNAL, "kernel entry %d (%s) was not built (mg_lm_opts.families)", k,
                          lm_defs[k].entry);
    if (gx > 2147483647LL || gy > 65535 || gz > 65535)
        return mg_err_set(err, MG_EUSER, "launch %s: grid (%lld, %lld, %lld) exceeds the device limits", L->sym[k], gx,
                          gy, gz);
    dim3 grid = {(unsigned)gx, (unsigned)gy, (unsigned)gz}, blk = {(unsigned)block, 1, 1};
    void *args[1] = {params};
    cudaError_t e = cudaLaunchKernel((const void *)L->kern[k], grid, blk, args, L->smem[k], st);
    if (e == cudaSuccess) e = cudaGetLastError();
    if (e != cudaSuccess)
        return mg_err_set(err, MG_EINTERNAL, "launch %s (grid %lld,%lld,%lld block %d smem %zu): %s", L->sym[k], gx,
                          gy, gz, block, L->smem[k], cudaGetErrorString(e));
    return MG_OK;
}
#define LAUNCH(k, gx, gy, gz, block, prm) do { \
        int rc_ = lm_launch(L, (k), (gx), (gy), (gz), (block), st, &(prm), err); \
        if (rc_) return rc_; } while (0)

int mg_lm_attn_fwd(const mg_lm *L, cudaStream_t st, const void *qkv, void *o, float *lse, int B, int S, mg_err *err)
{
    lm_attn_fwd_params p = {qkv, o, lse, B, S};
    LAUNCH(MG_LM_ATTN_FWD, cdiv(S, LM_ATTN_BQ), L->dim.H, B, 32 * LM_ATTN_WARPS, p);
    return MG_OK;
}

int mg_lm_attn_bwd(const mg_lm *L, cudaStream_t st, const void *qkv, const void *o, const void *dout,
                   const float *lse, float *dsum_ws, void *dqkv, int B, int S, mg_err *err)
{
    lm_attn_bwd_params p = {qkv, o, dout, lse, dsum_ws, dqkv, B, S};
    const int H = L->dim.H;
    LAUNCH(MG_LM_ATTN_PRE, cdiv((long long)B * S * H, 4), 1, 1, 128, p);
    LAUNCH(MG_LM_ATTN_DKDV, cdiv(S, LM_ATTN_BKEYS), L->dim.KV * LM_ATTN_NCH(L->dim.hd), B, 32 * LM_ATTN_WARPS, p);
    LAUNCH(MG_LM_ATTN_DQ, cdiv(S, LM_ATTN_BQ), H, B, 32 * LM_ATTN_WARPS, p);
    return MG_OK;
}

int mg_lm_rope_table(const mg_lm *L, cudaStream_t st, float *cos_t, float *sin_t, int S, mg_err *err)
{
    lm_rope_table_params p = {cos_t, sin_t, S};
    LAUNCH(MG_LM_ROPE_TABLE, cdiv((long long)S * (L->dim.hd / 2), LM_ROPE_THREADS), 1, 1, LM_ROPE_THREADS, p);
    return MG_OK;
}

int mg_lm_rope(const mg_lm *L, cudaStream_t st, int backward, void *qkv, const float *cos_t, const float *sin_t,
               int B, int S, mg_err *err)
{
    lm_rope_params p = {qkv, cos_t, sin_t, B * S, S};
    const long long n = (long long)B * S * (L->dim.H + L->dim.KV) * (L->dim.hd / 2 / LM_ROPE_RV(L->dim.hd, L->dim.esz));
    LAUNCH(backward ? MG_LM_ROPE_BWD : MG_LM_ROPE_FWD, cdiv(n, LM_ROPE_THREADS), 1, 1, LM_ROPE_THREADS, p);
    return MG_OK;
}

int mg_lm_norm_fwd(const mg_lm *L, cudaStream_t st, const void *x, const void *res, void *h, const void *w, void *y,
                   float *rstd, int N, mg_err *err)
{
    lm_norm_fwd_params p = {x, res, h, w, y, rstd, N};
    const int D = L->dim.D, es = L->dim.esz;
    LAUNCH(MG_LM_NORM_FWD, cdiv(N, LM_NORM_RPC(D, es)), 1, 1, LM_NORM_CTA(D, es), p);
    return MG_OK;
}

int mg_lm_norm_bwd(const mg_lm *L, cudaStream_t st, const void *dy, const void *h, const void *w, const float *rstd,
                   const void *dres, void *dx, float *dw_part_ws, float *dw, int N, mg_err *err)
{
    lm_norm_bwd_params p = {dy, h, w, rstd, dres, dx, dw_part_ws, dw, N};
    LAUNCH(MG_LM_NORM_BWD, cdiv(N, LM_NORM_DW_ROWS), 1, 1, LM_NORM_CTA(L->dim.D, L->dim.esz), p);   /* + dw partials */
    LAUNCH(MG_LM_NORM_DWSUM, cdiv(L->dim.D, 32), 1, 1, 256, p);
    return MG_OK;
}

int mg_lm_embed_fwd(const mg_lm *L, cudaStream_t st, const int *ids, const void *wte, void *out, int N, mg_err *err)
{
    lm_embed_params p = {ids, wte, out, NULL, NULL, NULL, NULL, 0, N};
    LAUNCH(MG_LM_EMBED_FWD, N, 1, 1, 128, p);
    return MG_OK;
}

int mg_lm_embed_bwd(const mg_lm *L, cudaStream_t st, const int *ids, const void *dout, int *sort_ws, float *dwte,
                    int accumulate, int N, mg_err *err)
{
    lm_embed_params p = {ids, NULL, NULL, dout, sort_ws, (float *)(sort_ws + embed_part_off(N)), dwte, accumulate, N};
    LAUNCH(MG_LM_EMBED_SORT, cdiv(N, LM_EMB_CHUNK), 1, 1, LM_EMB_CHUNK, p);
    LAUNCH(MG_LM_EMBED_PART, cdiv(N, LM_EMB_WARPS), 1, 1, 32 * LM_EMB_WARPS, p);
    LAUNCH(MG_LM_EMBED_BWD, cdiv(L->dim.V, LM_EMB_WARPS), 1, 1, 32 * LM_EMB_WARPS, p);
    return MG_OK;
}

int mg_lm_xent(const mg_lm *L, cudaStream_t st, void *logits, int ld, const int *targets, float *loss_row,
               float *loss, float grad_scale, int N, mg_err *err)
{
    if (ld < L->dim.V) return mg_err_set(err, MG_EUSER, "mg_lm_xent: ld = %d: must be >= vocab = %d", ld, L->dim.V);
    lm_xent_params p = {logits, targets, loss_row, loss, grad_scale, N, ld};
    LAUNCH(MG_LM_XENT_FWD, N, 1, 1, LM_XENT_THREADS, p);
    if (N > 0) LAUNCH(MG_LM_XENT_LOSS, 1, 1, 1, LM_XENT_THREADS, p);
    return MG_OK;
}

int mg_lm_dropout(const mg_lm *L, cudaStream_t st, int backward, const void *x, const void *res, void *out,
                  long long n, double p, unsigned long long stream, mg_err *err)
{
    if (!(p >= 0 && p < 1)) return mg_err_set(err, MG_EUSER, "mg_lm_dropout: p = %g: must be in [0, 1)", p);
    lm_dropout_params prm = {x, backward ? NULL : res, out, stream, mg_hash_drop_threshold(p), mg_hash_drop_scale(p), n};
    const long long nvec = cdiv(n, 16 / L->dim.esz);   /* a thread per 16-byte vector (lm_dropout.cu) */
    LAUNCH(backward ? MG_LM_DROP_BWD : MG_LM_DROP_FWD, cdiv(nvec, LM_DROP_THREADS), 1, 1, LM_DROP_THREADS, prm);
    return MG_OK;
}

int mg_lm_adamw(const mg_lm *L, cudaStream_t st, float *w, const float *g, float *m, float *v, void *w_c,
                const float *gscale, long long n, const mg_lm_adamw_hp *hp, int t, int decay, mg_err *err)
{
    if (t < 1) return mg_err_set(err, MG_EUSER, "mg_lm_adamw: step t = %d: must be >= 1", t);
    lm_adamw_params p = {w, g, m, v, w_c, gscale, hp->lr, hp->beta1, hp->beta2, hp->eps, decay ? hp->wd : 0.0f,
                         (float)(1.0 - pow(hp->beta1, t)), (float)(1.0 - pow(hp->beta2, t)), n};
    LAUNCH(MG_LM_ADAMW_STEP, cdiv(n, LM_ADAMW_THREADS), 1, 1, LM_ADAMW_THREADS, p);
    return MG_OK;
}

int mg_lm_cast(const mg_lm *L, cudaStream_t st, const float *x, void *y, long long n, mg_err *err)
{
    lm_cast_params p = {x, y, n};
    LAUNCH(MG_LM_UTIL_CAST, cdiv(n, LM_UTIL_THREADS), 1, 1, LM_UTIL_THREADS, p);
    return MG_OK;
}

int mg_lm_sumsq(const mg_lm *L, cudaStream_t st, const float *x, long long n, float *part, mg_err *err)
{
    lm_sumsq_params p = {x, part, n};
    LAUNCH(MG_LM_UTIL_SUMSQ, LM_SUMSQ_BLOCKS, 1, 1, LM_UTIL_THREADS, p);
    return MG_OK;
}

int mg_lm_gnorm(const mg_lm *L, cudaStream_t st, const float *part, int n_part, float max_norm, float *out2,
                mg_err *err)
{
    lm_gnorm_params p = {part, out2, max_norm, n_part};
    LAUNCH(MG_LM_UTIL_GNORM, 1, 1, 1, LM_UTIL_THREADS, p);
    return MG_OK;
}

int mg_lm_scale(const mg_lm *L, cudaStream_t st, float *x, long long n, float s, const float *sdev, mg_err *err)
{
    lm_scale_params p = {x, sdev, s, n};
    LAUNCH(MG_LM_UTIL_SCALE, cdiv(n, LM_UTIL_THREADS), 1, 1, LM_UTIL_THREADS, p);
    return MG_OK;
}
