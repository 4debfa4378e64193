/* mg_blas: cuBLASLt GEMMs with a per-shape cache of descriptors and heuristic algorithms. */
#include "mg_blas.h"

#include <stdarg.h>
#include <stdint.h>
#include <string.h>

/* ------------------------------------------------------------------------------------------ */
/* types */

typedef struct blas_type_info {
    const char *name;
    cudaDataType_t in, out;
    size_t in_size, out_size;
} blas_type_info;

static const blas_type_info TYPES[MG_BLAS_NTYPES] = {
    [MG_BLAS_BF16]     = {"bf16", CUDA_R_16BF, CUDA_R_16BF, 2, 2},
    [MG_BLAS_BF16_F32] = {"bf16->f32", CUDA_R_16BF, CUDA_R_32F, 2, 4},
    [MG_BLAS_F16]      = {"f16", CUDA_R_16F, CUDA_R_16F, 2, 2},
    [MG_BLAS_F16_F32]  = {"f16->f32", CUDA_R_16F, CUDA_R_32F, 2, 4},
    [MG_BLAS_F32]      = {"f32", CUDA_R_32F, CUDA_R_32F, 4, 4},
};

static int type_ok(mg_blas_type t) { return (int)t >= 0 && t < MG_BLAS_NTYPES; }

const char *mg_blas_type_name(mg_blas_type t) { return type_ok(t) ? TYPES[t].name : "?"; }
size_t mg_blas_in_size(mg_blas_type t) { return type_ok(t) ? TYPES[t].in_size : 0; }
size_t mg_blas_out_size(mg_blas_type t) { return type_ok(t) ? TYPES[t].out_size : 0; }

/* ------------------------------------------------------------------------------------------ */
/* the handle and its cache */

#define CACHE_CAP 64

/* Everything the heuristic's answer depends on, in column-major (cuBLAS) terms. All ints, so
 * the struct has no padding and memcmp is a valid comparison. */
typedef struct blas_key {
    int ta, tb, m, n, k, lda, ldb, ldc, type, align_a, align_b, align_c;
} blas_key;

typedef struct blas_entry {
    blas_key key;
    cublasLtMatmulDesc_t op;
    cublasLtMatrixLayout_t la, lb, lc;
    cublasLtMatmulAlgo_t algo;
} blas_entry;

struct mg_blas {
    cublasLtHandle_t lt;
    void *ws;
    size_t ws_size;
    blas_entry cache[CACHE_CAP];
    int n;            /* entries in use */
    int next_evict;   /* round-robin victim once full */
    long hits, misses, evictions;
};

/* ------------------------------------------------------------------------------------------ */
/* errors: one line, naming the failing call with file and line */

static int blas_error(mg_err *err, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int blas_error(mg_err *err, int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    if (err) {
        mg_err_vset(err, code, fmt, ap);
    } else {
        fputs("mg_blas: ", stderr);
        vfprintf(stderr, fmt, ap);
        fputc('\n', stderr);
    }
    va_end(ap);
    return code;
}

/* Runs a cuBLASLt call; on failure records it and jumps to the function's `fail` label. */
#define LT_TRY(call)                                                                          \
    do {                                                                                      \
        cublasStatus_t st_ = (call);                                                          \
        if (st_ != CUBLAS_STATUS_SUCCESS) {                                                   \
            rc = blas_error(err, MG_EINTERNAL, "%s:%d: %s: %s (%s)", __FILE__, __LINE__,      \
                            #call, cublasLtGetStatusName(st_), cublasLtGetStatusString(st_)); \
            goto fail;                                                                        \
        }                                                                                     \
    } while (0)

#define CUDA_TRY(call)                                                                        \
    do {                                                                                      \
        cudaError_t ce_ = (call);                                                             \
        if (ce_ != cudaSuccess) {                                                             \
            rc = blas_error(err, MG_EINTERNAL, "%s:%d: %s: %s (%s)", __FILE__, __LINE__,      \
                            #call, cudaGetErrorName(ce_), cudaGetErrorString(ce_));           \
            goto fail;                                                                        \
        }                                                                                     \
    } while (0)

/* ------------------------------------------------------------------------------------------ */
/* create / destroy */

int mg_blas_create(mg_blas **out, size_t workspace_bytes, mg_err *err)
{
    int rc = MG_OK;
    *out = NULL;
    mg_blas *h = calloc(1, sizeof *h);
    if (!h) return blas_error(err, MG_EINTERNAL, "mg_blas_create: out of host memory");
    h->ws_size = workspace_bytes ? workspace_bytes : MG_BLAS_DEFAULT_WORKSPACE;
    LT_TRY(cublasLtCreate(&h->lt));
    CUDA_TRY(cudaMalloc(&h->ws, h->ws_size));
    *out = h;
    return MG_OK;
fail:
    mg_blas_destroy(h);
    return rc;
}

static void entry_free(blas_entry *e)
{
    /* Destroy calls cannot fail on valid descriptors; NULLs come from a half-built entry. */
    if (e->op) cublasLtMatmulDescDestroy(e->op);
    if (e->la) cublasLtMatrixLayoutDestroy(e->la);
    if (e->lb) cublasLtMatrixLayoutDestroy(e->lb);
    if (e->lc) cublasLtMatrixLayoutDestroy(e->lc);
    memset(e, 0, sizeof *e);
}

void mg_blas_destroy(mg_blas *h)
{
    if (!h) return;
    for (int i = 0; i < h->n; i++) entry_free(&h->cache[i]);
    if (h->ws) cudaFree(h->ws);
    if (h->lt) cublasLtDestroy(h->lt);
    free(h);
}

void mg_blas_get_stats(const mg_blas *h, mg_blas_stats *st)
{
    st->hits = h->hits;
    st->misses = h->misses;
    st->evictions = h->evictions;
    st->entries = h->n;
    st->capacity = CACHE_CAP;
}

/* ------------------------------------------------------------------------------------------ */
/* plan: descriptors + heuristic for one key */

/* Largest power of two dividing the address, capped at 256 (cuBLASLt's maximum preference). */
static int ptr_align(const void *p)
{
    uintptr_t a = (uintptr_t)p;
    int al = 1;
    while (al < 256 && (a & (uintptr_t)al) == 0) al <<= 1;
    return al;
}

static int entry_build(mg_blas *h, const blas_key *key, blas_entry *e, mg_err *err)
{
    int rc = MG_OK;
    const blas_type_info *ti = &TYPES[key->type];
    cublasLtMatmulPreference_t pref = NULL;
    memset(e, 0, sizeof *e);
    e->key = *key;

    cublasOperation_t opa = key->ta ? CUBLAS_OP_T : CUBLAS_OP_N;
    cublasOperation_t opb = key->tb ? CUBLAS_OP_T : CUBLAS_OP_N;
    LT_TRY(cublasLtMatmulDescCreate(&e->op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    LT_TRY(cublasLtMatmulDescSetAttribute(e->op, CUBLASLT_MATMUL_DESC_TRANSA, &opa, sizeof opa));
    LT_TRY(cublasLtMatmulDescSetAttribute(e->op, CUBLASLT_MATMUL_DESC_TRANSB, &opb, sizeof opb));

    /* Column-major layouts of the matrices as stored. */
    LT_TRY(cublasLtMatrixLayoutCreate(&e->la, ti->in, key->ta ? key->k : key->m,
                                      key->ta ? key->m : key->k, key->lda));
    LT_TRY(cublasLtMatrixLayoutCreate(&e->lb, ti->in, key->tb ? key->n : key->k,
                                      key->tb ? key->k : key->n, key->ldb));
    LT_TRY(cublasLtMatrixLayoutCreate(&e->lc, ti->out, key->m, key->n, key->ldc));

    uint64_t ws = h->ws_size;
    uint32_t al_a = (uint32_t)key->align_a, al_b = (uint32_t)key->align_b,
             al_c = (uint32_t)key->align_c;
    LT_TRY(cublasLtMatmulPreferenceCreate(&pref));
    LT_TRY(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                                                &ws, sizeof ws));
    LT_TRY(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES,
                                                &al_a, sizeof al_a));
    LT_TRY(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
                                                &al_b, sizeof al_b));
    LT_TRY(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES,
                                                &al_c, sizeof al_c));
    LT_TRY(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES,
                                                &al_c, sizeof al_c));

    cublasLtMatmulHeuristicResult_t res[8];
    int got = 0;
    cublasStatus_t st = cublasLtMatmulAlgoGetHeuristic(h->lt, e->op, e->la, e->lb, e->lc, e->lc,
                                                       pref, 8, res, &got);
    int pick = -1;
    if (st == CUBLAS_STATUS_SUCCESS)
        for (int i = 0; i < got && pick < 0; i++)
            if (res[i].state == CUBLAS_STATUS_SUCCESS && res[i].workspaceSize <= h->ws_size)
                pick = i;
    if (pick < 0) {
        rc = blas_error(err, MG_EINTERNAL,
                        "%s:%d: cublasLtMatmulAlgoGetHeuristic: no algorithm (%s) for %s "
                        "column-major m=%d n=%d k=%d op=%c%c lda=%d ldb=%d ldc=%d align=%d/%d/%d "
                        "workspace=%zu",
                        __FILE__, __LINE__, cublasLtGetStatusName(st), ti->name, key->m, key->n,
                        key->k, key->ta ? 'T' : 'N', key->tb ? 'T' : 'N', key->lda, key->ldb,
                        key->ldc, key->align_a, key->align_b, key->align_c, h->ws_size);
        goto fail;
    }
    e->algo = res[pick].algo;
    cublasLtMatmulPreferenceDestroy(pref);
    return MG_OK;
fail:
    if (pref) cublasLtMatmulPreferenceDestroy(pref);
    entry_free(e);
    return rc;
}

/* The cached entry for key, building it on a miss. */
static int cache_get(mg_blas *h, const blas_key *key, blas_entry **out, mg_err *err)
{
    for (int i = 0; i < h->n; i++)
        if (!memcmp(&h->cache[i].key, key, sizeof *key)) {
            h->hits++;
            *out = &h->cache[i];
            return MG_OK;
        }
    h->misses++;
    int slot;
    if (h->n < CACHE_CAP) {
        slot = h->n;
    } else {
        slot = h->next_evict;
        h->next_evict = (h->next_evict + 1) % CACHE_CAP;
        entry_free(&h->cache[slot]);
        h->evictions++;
    }
    int rc = entry_build(h, key, &h->cache[slot], err);
    if (rc) {
        /* Keep the array dense: an evicted-and-failed slot takes the last entry. */
        if (slot < h->n) {
            h->cache[slot] = h->cache[h->n - 1];
            memset(&h->cache[h->n - 1], 0, sizeof h->cache[0]);
            h->n--;
        }
        return rc;
    }
    if (slot == h->n) h->n++;
    *out = &h->cache[slot];
    return MG_OK;
}

/* ------------------------------------------------------------------------------------------ */
/* GEMM */

static int check_args(const char *fn, mg_blas *h, int ta, int tb, int m, int n, int k, int lda,
                      int need_lda, int ldb, int need_ldb, int ldc, int need_ldc, float beta,
                      mg_blas_type type, mg_err *err)
{
    if (!h) return blas_error(err, MG_EUSER, "%s: handle is NULL (call mg_blas_create first)", fn);
    if (!type_ok(type)) return blas_error(err, MG_EUSER, "%s: type = %d: unknown", fn, (int)type);
    if ((ta != 0 && ta != 1) || (tb != 0 && tb != 1))
        return blas_error(err, MG_EUSER, "%s: transa = %d, transb = %d: must be 0 or 1", fn, ta, tb);
    if (m < 0 || n < 0 || k < 0)
        return blas_error(err, MG_EUSER, "%s: m = %d, n = %d, k = %d: must be >= 0", fn, m, n, k);
    if (k == 0 && beta != 0.f && beta != 1.f)
        return blas_error(err, MG_EUSER, "%s: k = 0 with beta = %g: only beta 0 or 1 supported",
                          fn, (double)beta);
    if (m == 0 || n == 0) return MG_OK;
    if (k > 0 && (lda < need_lda || lda < 1))
        return blas_error(err, MG_EUSER, "%s: lda = %d: must be >= %d", fn, lda, need_lda);
    if (k > 0 && (ldb < need_ldb || ldb < 1))
        return blas_error(err, MG_EUSER, "%s: ldb = %d: must be >= %d", fn, ldb, need_ldb);
    if (ldc < need_ldc)
        return blas_error(err, MG_EUSER, "%s: ldc = %d: must be >= %d", fn, ldc, need_ldc);
    return MG_OK;
}

/* Column-major core; arguments already validated. */
static int gemm_cm(mg_blas *h, cudaStream_t stream, int ta, int tb, int m, int n, int k,
                   float alpha, const void *A, int lda, const void *B, int ldb, float beta,
                   void *C, int ldc, mg_blas_type type, mg_err *err)
{
    int rc = MG_OK;
    if (m == 0 || n == 0) return MG_OK;
    if (!C) return blas_error(err, MG_EUSER, "mg_blas_gemm: C is NULL");
    if (k == 0) {
        /* Empty contraction (an expert with no tokens): C = beta·C, beta ∈ {0, 1}. */
        if (beta == 0.f) {
            size_t es = TYPES[type].out_size;
            CUDA_TRY(cudaMemset2DAsync(C, (size_t)ldc * es, 0, (size_t)m * es, (size_t)n, stream));
        }
        return MG_OK;
    }
    if (!A || !B) return blas_error(err, MG_EUSER, "mg_blas_gemm: A or B is NULL");

    blas_key key = {ta, tb, m, n, k, lda, ldb, ldc, (int)type,
                    ptr_align(A), ptr_align(B), ptr_align(C)};
    blas_entry *e;
    if ((rc = cache_get(h, &key, &e, err))) return rc;
    LT_TRY(cublasLtMatmul(h->lt, e->op, &alpha, A, e->la, B, e->lb, &beta, C, e->lc, C, e->lc,
                          &e->algo, h->ws, h->ws_size, stream));
    return MG_OK;
fail:
    return rc;
}

int mg_blas_gemm_cm(mg_blas *h, cudaStream_t stream, int transa, int transb, int m, int n, int k,
                    float alpha, const void *A, int lda, const void *B, int ldb, float beta,
                    void *C, int ldc, mg_blas_type type, mg_err *err)
{
    int rc = check_args("mg_blas_gemm_cm", h, transa, transb, m, n, k, lda, transa ? k : m, ldb,
                        transb ? n : k, ldc, m, beta, type, err);
    if (rc) return rc;
    return gemm_cm(h, stream, transa, transb, m, n, k, alpha, A, lda, B, ldb, beta, C, ldc, type,
                   err);
}

int mg_blas_gemm(mg_blas *h, cudaStream_t stream, int transa, int transb, int m, int n, int k,
                 float alpha, const void *A, int lda, const void *B, int ldb, float beta, void *C,
                 int ldc, mg_blas_type type, mg_err *err)
{
    int rc = check_args("mg_blas_gemm", h, transa, transb, m, n, k, lda, transa ? m : k, ldb,
                        transb ? k : n, ldc, n, beta, type, err);
    if (rc) return rc;
    /* Row-major C = op(A)·op(B) is column-major Cᵀ = op(B)ᵀ·op(A)ᵀ: swap operands and sizes. */
    return gemm_cm(h, stream, transb, transa, n, m, k, alpha, B, ldb, A, lda, beta, C, ldc, type,
                   err);
}
