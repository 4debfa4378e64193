/* mg_loader: batches of token windows from a token file, drawn by seed, with the next batch
 * prepared by a background thread into pinned host memory (when CUDA is present).
 *
 * A batch is B rows of T+1 consecutive tokens, [B, T+1] row-major: inputs are row[0..T),
 * targets row[1..T]. Which windows batch k holds depends only on (seed, k) and the file:
 *   MG_LOADER_RANDOM  row b starts at mix(seed, k, b) mod (n - T): any offset, with
 *                     replacement. Epochs seen = tokens seen / n.
 *   MG_LOADER_EPOCH   the file is cut into W = (n - 1) / T windows starting at multiples of
 *                     T; each epoch visits all W once, in an order shuffled by (seed, epoch)
 *                     (Fisher-Yates over splitmix64). Row b of batch k is window number
 *                     k·B + b of that endless sequence, so batches run across epoch ends.
 * Because a batch is a pure function of its index, the position to save for a resume is
 * just the number of batches handed out (mg_loader_pos), and a resumed run sees exactly the
 * batches an uninterrupted one would. Tokens seen count the predicted tokens, B·T a batch. */
#ifndef MG_LOADER_H
#define MG_LOADER_H

#include "mg_err.h"
#include "mg_tokfile.h"

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum { MG_LOADER_RANDOM = 0, MG_LOADER_EPOCH = 1 } mg_loader_order;

typedef struct mg_loader_opts {
    int batch;                /* B >= 1 */
    int seq_len;              /* T >= 1 */
    uint64_t seed;
    mg_loader_order order;
    int sync;                 /* 1: no background thread, next() fills the batch itself */
    int no_pinned;            /* 1: plain malloc even when a CUDA device is present */
    const char *name;         /* the file's path, for messages (may be NULL) */
} mg_loader_opts;

/* What a checkpoint saves: plain integers. The configuration fields let seek refuse a
 * position taken with another seed, shape, order or file. */
typedef struct mg_loader_pos {
    uint64_t batch;           /* batches handed out */
    uint64_t seed;
    uint64_t n_tokens;
    uint32_t B, T, order, reserved;
} mg_loader_pos;

typedef struct mg_batch {
    const int32_t *tok;       /* [B, T+1]; valid until the next mg_loader_next/seek/close */
    uint64_t index;           /* batch number k */
    int B, T;
} mg_batch;

typedef struct mg_loader mg_loader;

int mg_loader_open(mg_loader **out, const mg_tokfile *tf, const mg_loader_opts *o, mg_err *err);
/* Hands out the next batch (waiting for the prefetch thread if it is not ready yet). */
int mg_loader_next(mg_loader *L, mg_batch *b, mg_err *err);
/* Batches handed out so far, as tokens and as (fractional) epochs. */
void mg_loader_seen(const mg_loader *L, uint64_t *tokens, double *epochs);
void mg_loader_tell(const mg_loader *L, mg_loader_pos *pos);
/* Continues from pos (taken by mg_loader_tell, possibly in another process). */
int mg_loader_seek(mg_loader *L, const mg_loader_pos *pos, mg_err *err);
/* 1 when batches live in pinned (cudaHostAlloc) memory. */
int mg_loader_pinned(const mg_loader *L);
void mg_loader_close(mg_loader *L);

/* Batch k of this configuration into out[B*(T+1)], without touching the loader's state
 * (what mg_loader_next returns as batch k). */
int mg_loader_batch_at(const mg_loader *L, uint64_t k, int32_t *out, mg_err *err);

#ifdef __cplusplus
}
#endif
#endif
