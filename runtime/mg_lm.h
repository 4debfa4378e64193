/* mg_lm: the generated decoder-LM kernels other than the MoE layer (attention, RoPE,
 * RMSNorm, embedding, cross-entropy, dropout, AdamW, utilities): build (generate -> NVRTC
 * -> cudaLibraryLoadData) and one host launcher per operation.
 *
 * Launchers take the loaded kernels, device pointers, dims and a stream; they allocate
 * nothing and never read device memory, so a training step can be captured into a CUDA
 * graph. Layouts, formulas and the grid of every kernel: templates/lm_params.h and the
 * templates/lm_*.cu headers. Workspaces the caller provides are named *_ws and sized by
 * the mg_lm_ws_* helpers. Return MG_OK, or MG_EUSER / MG_EINTERNAL with err set. */
#ifndef MG_LM_H
#define MG_LM_H

#include <cuda_runtime_api.h>
#include <stddef.h>
#include "mg_err.h"
#include "mg_plan.h"
#include "lm_params.h"

#ifdef __cplusplus
extern "C" {
#endif

#define MG_LM_FAMILIES (MG_FAM_COUNT - MG_FAM_ATTN)

/* Every kernel entry; kernel k is "<family name>_<entry>". */
enum {
    MG_LM_ATTN_FWD, MG_LM_ATTN_PRE, MG_LM_ATTN_DKDV, MG_LM_ATTN_DQ,
    MG_LM_ROPE_TABLE, MG_LM_ROPE_FWD, MG_LM_ROPE_BWD,
    MG_LM_NORM_FWD, MG_LM_NORM_BWD, MG_LM_NORM_DWSUM,
    MG_LM_EMBED_FWD, MG_LM_EMBED_SORT, MG_LM_EMBED_PART, MG_LM_EMBED_BWD,
    MG_LM_XENT_FWD, MG_LM_XENT_LOSS,
    MG_LM_DROP_FWD, MG_LM_DROP_BWD,
    MG_LM_ADAMW_STEP,
    MG_LM_UTIL_CAST, MG_LM_UTIL_SUMSQ, MG_LM_UTIL_GNORM, MG_LM_UTIL_SCALE,
    MG_LM_K_COUNT
};

typedef struct mg_lm_dims {
    int D, H, KV, hd, V, esz;   /* d_model, heads, kv heads, head_dim, vocab, storage bytes */
} mg_lm_dims;

typedef struct mg_lm {
    mg_lm_dims dim;
    char fam_name[MG_LM_FAMILIES][160];
    cudaLibrary_t lib[MG_LM_FAMILIES];   /* NULL for families not built (opts.families) */
    cudaKernel_t kern[MG_LM_K_COUNT];    /* NULL when its family was not built */
    char sym[MG_LM_K_COUNT][192];
    size_t smem[MG_LM_K_COUNT];          /* dynamic shared memory per launch */
} mg_lm;

typedef struct mg_lm_opts {
    const char *arch;      /* NULL = from the current device */
    int no_cache, jobs, verbose;
    unsigned families;     /* bit (id − MG_FAM_ATTN) per family to build; 0 = all */
} mg_lm_opts;

int mg_lm_create(const mg_plan *plan, const mg_lm_opts *o, mg_lm **out, mg_err *err);
void mg_lm_destroy(mg_lm *L);

/* ---- workspace sizes (elements) */
long long mg_lm_ws_attn_dsum(const mg_lm *L, int B, int S);   /* floats: B·H·S */
long long mg_lm_ws_norm_dw(const mg_lm *L, int N);            /* floats: ceil(N/LM_NORM_DW_ROWS)·D */
long long mg_lm_ws_embed_sort(const mg_lm *L, int N);         /* 4-byte words: 2·N ints (rounded up to 4),
                                                                 then N·D floats */

/* ---- attention: fwd writes o, lse; bwd writes every element of dqkv (uses dsum_ws) */
int mg_lm_attn_fwd(const mg_lm *L, cudaStream_t st, const void *qkv, void *o, float *lse, int B, int S, mg_err *err);
int mg_lm_attn_bwd(const mg_lm *L, cudaStream_t st, const void *qkv, const void *o, const void *dout,
                   const float *lse, float *dsum_ws, void *dqkv, int B, int S, mg_err *err);
/* ---- RoPE: tables once per S (cos_t, sin_t [S, hd/2] floats), then in place on qkv / dqkv */
int mg_lm_rope_table(const mg_lm *L, cudaStream_t st, float *cos_t, float *sin_t, int S, mg_err *err);
int mg_lm_rope(const mg_lm *L, cudaStream_t st, int backward, void *qkv, const float *cos_t, const float *sin_t,
               int B, int S, mg_err *err);
/* ---- RMSNorm (+ residual): h = x + res (res may be NULL, then h may be NULL) */
int mg_lm_norm_fwd(const mg_lm *L, cudaStream_t st, const void *x, const void *res, void *h, const void *w, void *y,
                   float *rstd, int N, mg_err *err);
/* dx = dres + ∂/∂h (dres may be NULL); dw [D] fp32 written. */
int mg_lm_norm_bwd(const mg_lm *L, cudaStream_t st, const void *dy, const void *h, const void *w, const float *rstd,
                   const void *dres, void *dx, float *dw_part_ws, float *dw, int N, mg_err *err);
/* ---- embedding */
int mg_lm_embed_fwd(const mg_lm *L, cudaStream_t st, const int *ids, const void *wte, void *out, int N, mg_err *err);
int mg_lm_embed_bwd(const mg_lm *L, cudaStream_t st, const int *ids, const void *dout, int *sort_ws, float *dwte,
                    int accumulate, int N, mg_err *err);
/* ---- cross-entropy: logits [N, ld] overwritten by the gradient; loss_row [N], loss [1] */
int mg_lm_xent(const mg_lm *L, cudaStream_t st, void *logits, int ld, const int *targets, float *loss_row,
               float *loss, float grad_scale, int N, mg_err *err);
/* ---- dropout: stream = mg_hash_drop_stream(seed, step, micro, site) (templates/mg_hash.h) */
int mg_lm_dropout(const mg_lm *L, cudaStream_t st, int backward, const void *x, const void *res, void *out,
                  long long n, double p, unsigned long long stream, mg_err *err);
/* ---- AdamW step t (>= 1); wd applies only when decay != 0 */
typedef struct mg_lm_adamw_hp { float lr, beta1, beta2, eps, wd; } mg_lm_adamw_hp;
int mg_lm_adamw(const mg_lm *L, cudaStream_t st, float *w, const float *g, float *m, float *v, void *w_c,
                const float *gscale, long long n, const mg_lm_adamw_hp *hp, int t, int decay, mg_err *err);
/* ---- utilities */
int mg_lm_cast(const mg_lm *L, cudaStream_t st, const float *x, void *y, long long n, mg_err *err);
/* part: LM_SUMSQ_BLOCKS floats (give each tensor its own slice, then one gnorm over all) */
int mg_lm_sumsq(const mg_lm *L, cudaStream_t st, const float *x, long long n, float *part, mg_err *err);
int mg_lm_gnorm(const mg_lm *L, cudaStream_t st, const float *part, int n_part, float max_norm, float *out2,
                mg_err *err);
int mg_lm_scale(const mg_lm *L, cudaStream_t st, float *x, long long n, float s, const float *sdev, mg_err *err);

/* `moegen selftest` part: every LM kernel against runtime/mg_lm_ref.c on random data at
 * the spec's dims, odd sizes and variants (GQA, head dims, odd vocab, fp16/fp32), with
 * poisoned outputs and a bitwise determinism check. Prints one row per check; adds to
 * *n_pass / *n_fail. Needs a CUDA device. Returns MG_EINTERNAL when something could not run. */
int mg_lm_selftest(const mg_spec *spec, const char *arch, unsigned long long seed, int *n_pass, int *n_fail,
                   mg_err *err);

#ifdef __cplusplus
}
#endif
#endif
