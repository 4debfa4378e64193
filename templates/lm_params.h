/* lm_params: parameter structs and launch constants of the decoder-LM kernel families
 * (templates/lm_*.cu: attention, RoPE, RMSNorm, embedding, cross-entropy, dropout, AdamW,
 * utilities). Shared verbatim by the generated CUDA sources and the C runtime
 * (runtime/mg_lm.c): valid C11 and C++, no includes. One struct by value per kernel.
 *
 * Conventions: "dtype" buffers hold the spec's storage type (bf16/fp16 as 16-bit words, or
 * fp32); float means fp32 whatever the dtype. Row-major everywhere. Tokens are rows
 * r = b·S + s (batch b, position s within the sequence). Buffers must be 16-byte aligned
 * (cudaMalloc is). Widths: D = d_model, H = n_head, KV = n_kv_head, hd = head_dim,
 * W_qkv = (H + 2·KV)·hd: the fused QKV projection's output [B·S, W_qkv] holds the q heads at
 * columns [h·hd, (h+1)·hd), then the k heads at (H + g)·hd, then the v heads at
 * (H + KV + g)·hd. Query head h reads kv head g = h / (H / KV). */
#ifndef LM_PARAMS_H
#define LM_PARAMS_H

/* ---------------------------------------------------------------- attention */
#define LM_ATTN_WARPS 4
#define LM_ATTN_BQ 64                               /* query rows per block of fwd, dq (4 warps x 16) */
#define LM_ATTN_BKV(hd) ((hd) <= 128 ? 64 : 32)     /* keys per step of fwd, dq */
#define LM_ATTN_BKEYS 64                            /* keys per block of dkdv (4 warps x 16) */
#define LM_ATTN_BQB 32                              /* queries per step of dkdv */
#define LM_ATTN_NCH(hd) ((hd) <= 128 ? 1 : 2)       /* dkdv column chunks (register budget) */
#define LM_ATTN_HC(hd) ((((hd) + LM_ATTN_NCH(hd) - 1) / LM_ATTN_NCH(hd) + 7) / 8 * 8)
#define LM_ATTN_HDP(hd) (((hd) + 15) / 16 * 16)     /* head dim padded to the mma k step */
#define LM_ATTN_LD(hd) (LM_ATTN_HDP(hd) + 8)        /* shared-memory row stride (elements) */
/* Dynamic shared memory per entry (0 for fp32 storage: the FFMA path uses none). */
#define LM_ATTN_FWD_SMEM(hd, esz) \
    ((esz) == 4 ? 0 : (LM_ATTN_BQ + 4 * LM_ATTN_BKV(hd)) * LM_ATTN_LD(hd) * (esz))
#define LM_ATTN_DQ_SMEM(hd, esz) \
    ((esz) == 4 ? 0 : (2 * LM_ATTN_BQ + 4 * LM_ATTN_BKV(hd)) * LM_ATTN_LD(hd) * (esz))
#define LM_ATTN_DKDV_SMEM(hd, esz) \
    ((esz) == 4 ? 0 : (2 * LM_ATTN_BKEYS + 4 * LM_ATTN_BQB) * LM_ATTN_LD(hd) * (esz) + 4 * LM_ATTN_BQB * 4)

/* Causal self-attention, softmax scale 1/sqrt(hd). */
typedef struct lm_attn_fwd_params {
    const void *qkv;      /* [B·S, W_qkv] dtype (RoPE applied to q and k) */
    void *o;              /* [B·S, H·hd] dtype */
    float *lse;           /* [B, H, S] log Σ_j exp(scale·q·k_j): natural log */
    int B, S;
} lm_attn_fwd_params;

/* Backward (every entry takes this struct): bwd_pre, then bwd_dkdv and bwd_dq (any order). */
typedef struct lm_attn_bwd_params {
    const void *qkv;      /* [B·S, W_qkv] dtype, as given to fwd */
    const void *o;        /* [B·S, H·hd] dtype, fwd output */
    const void *dout;     /* [B·S, H·hd] dtype */
    const float *lse;     /* [B, H, S] from fwd */
    float *dsum;          /* [B, H, S] workspace: D = rowsum(dO∘O), written by bwd_pre */
    void *dqkv;           /* [B·S, W_qkv] dtype, every element written (q part by dq, k and v by dkdv) */
    int B, S;
} lm_attn_bwd_params;

/* ---------------------------------------------------------------- RoPE */
#define LM_ROPE_THREADS 256
/* Elements a fwd/bwd thread rotates per half head: the widest access of 16, 8, 4 bytes
 * dividing hd/2 (hd = 72 at 16 bits: hd/2 = 36, 8-byte accesses of 4 elements), else 1. */
#define LM_ROPE_RV(hd, esz) ((hd) / 2 % (16 / (esz)) == 0 ? 16 / (esz) : (hd) / 2 % (8 / (esz)) == 0 ? 8 / (esz) \
                           : (hd) / 2 % (4 / (esz)) == 0 ? 4 / (esz) : 1)
/* cos/sin tables [S, hd/2]: angle = s·theta^(−2i/hd), computed in fp64, rounded to float. */
typedef struct lm_rope_table_params {
    float *cos_t, *sin_t; /* [S, hd/2] */
    int S;
} lm_rope_table_params;
/* In place on the q and k heads of qkv (fwd rotates by +angle, bwd on dqkv by −angle);
 * v heads untouched. Pair (i, i + hd/2): x_i·c − x_{i+hd/2}·s, x_{i+hd/2}·c + x_i·s. */
typedef struct lm_rope_params {
    void *qkv;            /* [B·S, W_qkv] dtype */
    const float *cos_t, *sin_t;   /* [≥S, hd/2] from table */
    int rows, S;          /* rows = B·S; position of row r = r % S */
} lm_rope_params;

/* ---------------------------------------------------------------- RMSNorm */
#define LM_NORM_THREADS 256   /* CTA size, unless one row needs more threads */
#define LM_NORM_DW_ROWS 64    /* rows per bwd CTA = rows per dw partial */
/* A row is LM_NORM_NV 16-byte vectors, held in registers by LM_NORM_TPR threads (at most 2
 * vectors each, so that bwd's dw accumulators fit: one warp, a shuffle-only reduction, up to
 * d = 512 at 16 bits). A CTA of LM_NORM_CTA threads takes LM_NORM_RPC rows per step. Host
 * launchers and kernels share these. */
#define LM_NORM_NV(d, esz) ((d) * (esz) / 16)
#define LM_NORM_TPR(d, esz) (LM_NORM_NV(d, esz) <= 64 ? 32 : LM_NORM_NV(d, esz) <= 128 ? 64 \
                           : LM_NORM_NV(d, esz) <= 256 ? 128 : LM_NORM_NV(d, esz) <= 512 ? 256 \
                           : LM_NORM_NV(d, esz) <= 1024 ? 512 : 1024)
#define LM_NORM_CTA(d, esz) (LM_NORM_TPR(d, esz) < LM_NORM_THREADS ? LM_NORM_THREADS : LM_NORM_TPR(d, esz))
#define LM_NORM_RPC(d, esz) (LM_NORM_CTA(d, esz) / LM_NORM_TPR(d, esz))
/* h = x (+ res);  y = h·rsqrt(mean(h²) + eps)·w */
typedef struct lm_norm_fwd_params {
    const void *x;        /* [N, D] dtype */
    const void *res;      /* [N, D] dtype or NULL */
    void *h;              /* [N, D] dtype: x + res (rounded), written when res != NULL; may alias x or res */
    const void *w;        /* [D] dtype */
    void *y;              /* [N, D] dtype */
    float *rstd;          /* [N] */
    int N;
} lm_norm_fwd_params;
/* bwd: dx = dres + ∂L/∂h, and the partial Σ_rows dy·h·rstd of its LM_NORM_DW_ROWS rows;
 * dwsum: dw = Σ partials in order. */
typedef struct lm_norm_bwd_params {
    const void *dy;       /* [N, D] dtype */
    const void *h;        /* [N, D] dtype: the norm's input */
    const void *w;        /* [D] dtype */
    const float *rstd;    /* [N] from fwd */
    const void *dres;     /* [N, D] dtype or NULL: gradient through the residual stream */
    void *dx;             /* [N, D] dtype; may alias dres */
    float *dw_part;       /* [ceil(N / LM_NORM_DW_ROWS), D] workspace */
    float *dw;            /* [D] written (not accumulated) */
    int N;
} lm_norm_bwd_params;

/* ---------------------------------------------------------------- embedding */
#define LM_EMB_CHUNK 256      /* positions per sort chunk */
#define LM_EMB_WARPS 4        /* sorted entries (part) or vocab rows (bwd) per block, one warp each */
typedef struct lm_embed_params {
    const int *ids;       /* [N] token ids in [0, V) */
    const void *wte;      /* [V, D] dtype (fwd) */
    void *out;            /* [N, D] dtype (fwd) */
    const void *dout;     /* [N, D] dtype (bwd) */
    int *sorted;          /* [2·N] workspace (sort → part, bwd): per chunk of LM_EMB_CHUNK positions,
                             the ids ([0,N)) then the positions ([N,2N)) sorted by (id, position) */
    float *part;          /* [N, D] workspace (part → bwd), 16-byte aligned: row k = the sum of the run of
                             equal ids that starts at sorted entry k (only run heads are written) */
    float *dwte;          /* [V, D] (accumulate ? dwte : 0) + Σ_{ids[r]=v} dout[r]; rows of absent ids
                             are left untouched when accumulating */
    int accumulate;       /* 1: add to dwte (e.g. after the tied LM head's weight gradient) */
    int N;
} lm_embed_params;

/* ---------------------------------------------------------------- cross-entropy */
#define LM_XENT_THREADS 512
#define LM_XENT_VREGS 8       /* 16-byte vectors of a row each fwd thread keeps in registers (2 CTAs/SM) */
typedef struct lm_xent_params {
    void *logits;         /* [N, ld] dtype, first V columns used: overwritten by (softmax − onehot)·grad_scale;
                             columns [V, ld) (a padded vocabulary) are set to 0 */
    const int *targets;   /* [N] in [0, V) */
    float *loss_row;      /* [N] logsumexp − logit[target] */
    float *loss;          /* [1] (loss entry) mean of loss_row over the N rows */
    float grad_scale;     /* usually 1/N */
    int N, ld;            /* ld: row stride of logits in elements (>= V) */
} lm_xent_params;

/* ---------------------------------------------------------------- dropout */
#define LM_DROP_THREADS 256
/* fwd: out[i] = res[i] + keep(i)·x[i]·scale (res NULL: no residual); bwd: out[i] = keep(i)·x[i]·scale.
 * keep(i) and the constants: templates/mg_hash.h. */
typedef struct lm_dropout_params {
    const void *x;        /* [n] dtype: the branch (fwd) or the gradient of out (bwd) */
    const void *res;      /* [n] dtype or NULL */
    void *out;            /* [n] dtype; may alias res or x */
    unsigned long long stream;   /* mg_hash_drop_stream(seed, step, micro, site) */
    unsigned thr;         /* mg_hash_drop_threshold(p) */
    float scale;          /* mg_hash_drop_scale(p) */
    long long n;
} lm_dropout_params;

/* ---------------------------------------------------------------- AdamW */
#define LM_ADAMW_THREADS 256
/* PyTorch AdamW (decoupled decay), fp32, per element:
 *   g = g·gscale;  w = w·(1 − lr·wd);  m = beta1·m + (1 − beta1)·g;  v = beta2·v + (1 − beta2)·g²;
 *   w = w − (lr / bc1)·m / (sqrt(v) / sqrt(bc2) + eps);  w_c = dtype(w). */
typedef struct lm_adamw_params {
    float *w;             /* [n] fp32 master weights */
    const float *g;       /* [n] fp32 gradient */
    float *m, *v;         /* [n] fp32 moments */
    void *w_c;            /* [n] dtype compute copy, or NULL */
    const float *gscale;  /* [1] device multiplier of g (e.g. util gnorm's clip factor) or NULL = 1 */
    float lr, beta1, beta2, eps;
    float wd;             /* weight decay; 0 for tensors the decay flag excludes */
    float bc1, bc2;       /* 1 − beta1^t, 1 − beta2^t for step t >= 1 */
    long long n;
} lm_adamw_params;

/* ---------------------------------------------------------------- utilities */
#define LM_UTIL_THREADS 256
#define LM_SUMSQ_BLOCKS 256   /* partials written by one sumsq launch */
typedef struct lm_cast_params {
    const float *x;       /* [n] fp32 */
    void *y;              /* [n] dtype */
    long long n;
} lm_cast_params;
typedef struct lm_sumsq_params {
    const float *x;       /* [n] fp32 */
    float *part;          /* [LM_SUMSQ_BLOCKS] partial sums of squares */
    long long n;
} lm_sumsq_params;
/* norm = sqrt(Σ part[0..n_part)) in order; clip = min(1, max_norm / (norm + 1e-6)) (1 when
 * max_norm <= 0), PyTorch's clip_grad_norm_. */
typedef struct lm_gnorm_params {
    const float *part;    /* [n_part] (several sumsq launches side by side) */
    float *out;           /* [2] norm, clip factor */
    float max_norm;
    int n_part;
} lm_gnorm_params;
/* x = x·s·(sdev ? *sdev : 1) */
typedef struct lm_scale_params {
    float *x;             /* [n] fp32 in place */
    const float *sdev;    /* [1] or NULL */
    float s;
    long long n;
} lm_scale_params;

#endif
