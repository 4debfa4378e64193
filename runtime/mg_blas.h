/* mg_blas: a small cuBLASLt wrapper for the dense GEMMs of the trainer and the benchmarks.
 *
 * Convention (the one thing to remember): mg_blas_gemm is ROW-MAJOR, like the rest of moegen.
 *
 *     C[m,n] = alpha · op(A)[m,k] · op(B)[k,n] + beta · C[m,n]
 *
 *   A is stored row-major as [m,k] with row stride lda  (transa = 0), or as [k,m] (transa = 1);
 *   B is stored row-major as [k,n] with row stride ldb  (transb = 0), or as [n,k] (transb = 1);
 *   C is stored row-major as [m,n] with row stride ldc.
 *   Leading dimensions are in elements and are the row strides of the matrices as stored:
 *   lda >= (transa ? m : k), ldb >= (transb ? k : n), ldc >= n.
 *
 *   A linear layer y = x · Wᵀ with x [T,d] and W [f,d] (nn.Linear layout) is therefore
 *     mg_blas_gemm(h, s, 0, 1, T, f, d, 1.f, x, d, W, d, 0.f, y, f, MG_BLAS_BF16, err);
 *   and its weight gradient dW[f,d] = dyᵀ · x is
 *     mg_blas_gemm(h, s, 1, 0, f, d, T, 1.f, dy, f, x, d, 0.f, dW, d, MG_BLAS_BF16_F32, err);
 *
 * mg_blas_gemm_cm is the same call in cuBLAS's own column-major convention, for code ported
 * from cuBLAS. Internally the row-major call is the column-major one on the transposes:
 * Cᵀ = op(B)ᵀ · op(A)ᵀ, i.e. operands swapped, flags kept.
 *
 * Types: inputs bf16 or fp16 accumulate in fp32 (CUBLAS_COMPUTE_32F); C is bf16/fp16 or fp32.
 * MG_BLAS_F32 is plain fp32 (CUBLAS_COMPUTE_32F, never TF32). alpha and beta are host floats.
 *
 * Algorithms come from cublasLtMatmulAlgoGetHeuristic, asked once per (row-major shape, lds,
 * transposes, type, pointer alignments) and kept in a small per-handle cache together with the
 * descriptors, so a training step pays the heuristic only on its first iteration.
 *
 * Threads and streams: a handle is not thread-safe, and all its GEMMs share one workspace.
 * Give each thread, and each stream whose GEMMs may overlap another's, its own handle.
 * Uses the CUDA runtime API only (never libcuda). */
#ifndef MG_BLAS_H
#define MG_BLAS_H

#include "mg_err.h"
#include <cublasLt.h>
#include <cuda_runtime.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Input and output types of one GEMM; accumulation is always fp32. */
typedef enum mg_blas_type {
    MG_BLAS_BF16 = 0,    /* A, B, C bf16 */
    MG_BLAS_BF16_F32,    /* A, B bf16; C fp32 (weight gradients, master-weight updates) */
    MG_BLAS_F16,         /* A, B, C fp16 */
    MG_BLAS_F16_F32,     /* A, B fp16; C fp32 */
    MG_BLAS_F32,         /* A, B, C fp32, no TF32 */
    MG_BLAS_NTYPES
} mg_blas_type;

/* "bf16", "bf16->f32", ... for logs and benchmark tables. */
const char *mg_blas_type_name(mg_blas_type t);
/* Bytes per element of A/B and of C. */
size_t mg_blas_in_size(mg_blas_type t);
size_t mg_blas_out_size(mg_blas_type t);

typedef struct mg_blas mg_blas;

#define MG_BLAS_DEFAULT_WORKSPACE ((size_t)32 << 20) /* 32 MiB, enough for Hopper's split-K */

/* Creates a handle on the current device with a workspace of workspace_bytes (0 = 32 MiB). */
int mg_blas_create(mg_blas **out, size_t workspace_bytes, mg_err *err);
/* Frees the handle, its workspace and its cached descriptors. NULL is a no-op. Call it only
 * when no GEMM of this handle is still in flight (it does not synchronize). */
void mg_blas_destroy(mg_blas *h);

/* Row-major GEMM as documented above. transa/transb are 0 or 1. m == 0 or n == 0 is a no-op;
 * k == 0 sets C = beta·C for beta ∈ {0, 1} (an empty expert) and is an error otherwise.
 * Returns MG_OK, MG_EUSER for bad arguments, MG_EINTERNAL for a cuBLAS/CUDA failure (the
 * message names the call, file and line). err may be NULL: the message then goes to stderr. */
int mg_blas_gemm(mg_blas *h, cudaStream_t stream, int transa, int transb, int m, int n, int k,
                 float alpha, const void *A, int lda, const void *B, int ldb, float beta,
                 void *C, int ldc, mg_blas_type type, mg_err *err);

/* The same GEMM in cuBLAS's column-major convention: C is [m,n] column-major with column
 * stride ldc, op(A) is [m,k], op(B) is [k,n]. */
int mg_blas_gemm_cm(mg_blas *h, cudaStream_t stream, int transa, int transb, int m, int n, int k,
                    float alpha, const void *A, int lda, const void *B, int ldb, float beta,
                    void *C, int ldc, mg_blas_type type, mg_err *err);

/* Cache statistics, for tests and benchmarks. */
typedef struct mg_blas_stats {
    long hits, misses, evictions;
    int entries, capacity;
} mg_blas_stats;
void mg_blas_get_stats(const mg_blas *h, mg_blas_stats *st);

/* Fatal checkers for programs (benchmarks, the trainer's main): print the failing call with
 * file and line, then exit. The library itself never exits; it returns an mg_err. */
#define mg_cublas_check(call)                                                                 \
    do {                                                                                      \
        cublasStatus_t mg_st_ = (call);                                                       \
        if (mg_st_ != CUBLAS_STATUS_SUCCESS) {                                                \
            fprintf(stderr, "[cuBLAS ERROR] %s:%d: %s: %s (%s)\n", __FILE__, __LINE__, #call, \
                    cublasLtGetStatusName(mg_st_), cublasLtGetStatusString(mg_st_));          \
            exit(EXIT_FAILURE);                                                               \
        }                                                                                     \
    } while (0)

#ifndef mg_cuda_check
#define mg_cuda_check(call)                                                                   \
    do {                                                                                      \
        cudaError_t mg_ce_ = (call);                                                          \
        if (mg_ce_ != cudaSuccess) {                                                          \
            fprintf(stderr, "[CUDA ERROR] %s:%d: %s: %s (%s)\n", __FILE__, __LINE__, #call,   \
                    cudaGetErrorName(mg_ce_), cudaGetErrorString(mg_ce_));                    \
            exit(EXIT_FAILURE);                                                               \
        }                                                                                     \
    } while (0)
#endif

/* Fatal form of an mg_blas call that returned an mg_err: `mg_blas_ok(mg_blas_gemm(..., &e), &e)`. */
#define mg_blas_ok(rc, errp)                                                                  \
    do {                                                                                      \
        if ((rc) != MG_OK) {                                                                  \
            fprintf(stderr, "[mg_blas ERROR] %s:%d: %s\n", __FILE__, __LINE__, (errp)->msg);  \
            exit(EXIT_FAILURE);                                                               \
        }                                                                                     \
    } while (0)

#ifdef __cplusplus
}
#endif
#endif
