/* mg_cpu_data: the CPU trainer's token source: train/valid token arrays and how batches are
 * drawn from them.
 *
 * train.data resolves as
 *   a directory with train.tok + valid.tok   `moegen data` token files (mg_tokfile); model.vocab
 *                                            must cover the file's vocabulary
 * else text, tokenized built-in at byte level: token = byte value (vocabulary 256, so
 * model.vocab must be >= 256):
 *   "tinyshakespeare"  DATA/tinyshakespeare/input.txt, first 90% of the bytes train, rest valid
 *   "wikitext-2"       DATA/wikitext-2/wiki.{train,valid}.tokens
 *   "ptb"              DATA/ptb/ptb.{train,valid}.txt
 *   a directory        DIR/train.txt + DIR/valid.txt
 *   a file             split 90/10 like tinyshakespeare
 * with DATA from mg_data_dir ($MOEGEN_DATA_DIR, else ../shared/data, else /work/shared/data).
 *
 * Batches are windows of T+1 tokens. Training batch k (the trainer's k = step·grad_accum +
 * micro) is mg_loader's batch k in MG_LOADER_RANDOM order with the spec's seed, batch and
 * seq_len, for bytes and token files alike: a pure function of k, so a resumed run draws
 * exactly what an uninterrupted one would. Validation uses W = n_batches·B fixed windows
 * spread evenly: window w starts at w·floor((n_val − T − 1)/W).
 */
#ifndef MG_CPU_DATA_H
#define MG_CPU_DATA_H

#include "mg_err.h"
#include "mg_loader.h"
#include "mg_spec.h"

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct mg_cpu_data {
    int32_t *train, *val;
    long n_train, n_val;
    int vocab;             /* vocabulary the tokens need (256 for bytes) */
    mg_tokfile train_view; /* the train tokens seen as a token file (width 4), for the loader */
    mg_loader *loader;     /* train batches; NULL for an eval-only source */
    char desc[2048];       /* for the log: tokenizer, files, counts */
} mg_cpu_data;

/* Opens the spec's train.data; checks vocab and that both splits hold a window. */
int mg_cpu_data_open(const mg_spec *s, mg_cpu_data *d, mg_err *err);
/* One file as a validation split only (moegen eval --data FILE): a .tok token file, else bytes. */
int mg_cpu_data_open_eval(const char *path, const mg_spec *s, mg_cpu_data *d, mg_err *err);
void mg_cpu_data_free(mg_cpu_data *d);

/* Training batch k into out [B, T+1]. */
int mg_cpu_data_train_batch(const mg_cpu_data *d, uint64_t k, int32_t *out, mg_err *err);
/* Batch j of n_batches validation batches; out: [B, T+1]. */
void mg_cpu_data_val_batch(const mg_cpu_data *d, int j, int n_batches, int B, int T, int32_t *out);

#ifdef __cplusplus
}
#endif
#endif
