/* mg_ckpt: training checkpoints: one directory per checkpoint, written atomically.
 *
 *   RUN_DIR/ckpt-000200/model.safetensors      parameters, HF names (mg_cpu_model.h), F32;
 *                                              + model.layers.N.mlp.gate.e_score_correction_bias
 *                                              when aux-loss-free balancing is on
 *   RUN_DIR/ckpt-000200/optimizer.safetensors  exp_avg.<name>, exp_avg_sq.<name> (AdamW m, v);
 *                                              __metadata__.step = updates done
 *   RUN_DIR/ckpt-000200/state.json             step, tokens, RNG counters, data position,
 *                                              val/best loss, spec (mg_spec_dump) + hash, version
 *   RUN_DIR/best -> ckpt-XXXXXX                symlink to the best-on-validation checkpoint
 *
 * A checkpoint is built in RUN_DIR/.tmp-ckpt-*, every file and the directory fsync'ed, then
 * renamed into place; the last `keep` checkpoints plus the best survive. Every load error
 * is one line naming the file.
 */
#ifndef MG_CKPT_H
#define MG_CKPT_H

#include "mg_cpu_model.h"
#include "mg_err.h"
#include "mg_optim.h"

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct mg_ckpt_state {
    long step;            /* optimizer steps done */
    long tokens;          /* training tokens consumed */
    uint64_t seed;        /* RNG: all randomness is counter-based on (seed, step, micro, ...) */
    long data_pos;        /* train batches drawn so far (mg_loader_pos.batch) */
    double val_loss;      /* at this step (NAN when not evaluated) */
    double best_val;      /* best validation loss so far and its step (-1: none) */
    long best_step;
    char spec_hash[65];
    char *spec_text;      /* canonical spec (mg_spec_dump); malloc'd by mg_ckpt_read_state */
} mg_ckpt_state;

/* Writes RUN_DIR/ckpt-<step> and prunes old ones; keep >= 1. */
int mg_ckpt_save(const char *run_dir, const mg_cpu_model *m, const mg_adamw *o, const mg_ckpt_state *st, int keep,
                 mg_err *err);

/* Resolves DIR to a checkpoint directory: DIR itself when it holds state.json, else the
 * newest ckpt-* inside it. */
int mg_ckpt_resolve(const char *dir, char *out, size_t n, mg_err *err);
/* Reads CKPT/state.json; the spec comes back in st->spec (loaded from its text, hash checked). */
int mg_ckpt_read_state(const char *ckpt, mg_ckpt_state *st, mg_spec *spec, mg_err *err);
void mg_ckpt_state_free(mg_ckpt_state *st);
/* Loads the parameters (and, when o != NULL, the optimizer state) into a model created
 * from the checkpoint's spec. Every tensor must be there with its shape; extras are errors. */
int mg_ckpt_load(const char *ckpt, mg_cpu_model *m, mg_adamw *o, mg_err *err);

/* Writes only model.safetensors (F32 or BF16) to path, for export. */
int mg_ckpt_write_model(const char *path, const mg_cpu_model *m, int bf16, mg_err *err);

#ifdef __cplusplus
}
#endif
#endif
