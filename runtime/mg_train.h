/* mg_train: the CPU training loop: data → micro-batches → AdamW step → eval → metrics and
 * checkpoints; resume continues bitwise as if never stopped.
 *
 * Step s (0-based) runs train.grad_accum micro-batches of train.batch windows; micro-batch a
 * carries loss weight 1/grad_accum, so the step's loss is the mean over its micro-batches of
 * (mean-token CE + aux + zloss), and exactly grad_accum·batch·seq_len tokens are trained on.
 * Then: global grad norm (fp64) → clip → AdamW at mg_lr_at(s) → aux-loss-free bias update.
 * After step s+1 is done, when (s+1) % eval_every == 0 or it is the last step: validation
 * loss over eval_batches fixed batches, a checkpoint, and the best-so-far bookkeeping.
 *
 * RUN_DIR/metrics.jsonl gets one JSON object per step:
 *   {"step", "loss", "ce", "aux", "z", "lr", "grad_norm", "tokens", "tokens_total", "dropped",
 *    "elapsed_s", "tok_per_s"[, "val_loss", "val_ppl"][, "moe": [...]]}
 * loss/ce/aux/z/lr/grad_norm printed with 17 significant digits, so two runs compare exactly.
 * "moe" (every log_every steps and the last; models with MoE layers) holds each MoE layer's
 * routing metrics over the steps since the previous one (mg_metrics.h). The same scalars, the
 * per-expert load histograms and, at eval steps, a load heatmap image go to the TensorBoard
 * event file RUN_DIR/tb/events.out.tfevents.<time>.<host> (mg_tb.h).
 */
#ifndef MG_TRAIN_H
#define MG_TRAIN_H

#include "mg_cpu_data.h"
#include "mg_cpu_model.h"
#include "mg_err.h"
#include "mg_spec.h"

#include <stdio.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct mg_train_opts {
    const char *run_dir;   /* NULL: the resumed checkpoint's run dir, else runs/<spec name> */
    const char *resume;    /* NULL, a run dir (newest checkpoint) or a checkpoint dir */
    long stop_after;       /* 0: train.steps; else stop once this many steps are done (the
                              schedule still spans train.steps, so a later --resume continues it) */
    int keep;              /* checkpoints kept besides the best; 0 = 3 */
    int quiet;             /* no progress line */
    int log_every;         /* routing metrics every N steps; 0 = the spec's log.every */
    int no_metrics;        /* no routing metrics and no TensorBoard file (overhead baseline) */
    FILE *log;             /* progress and notes; NULL = stderr */
    int gpu;               /* 1: train on the GPU (mg_gpu_model), same loop, files and math */
    int no_save;           /* 1: no checkpoints (benchmarks of models too big to save quickly) */
    struct mg_comm *comm;  /* NULL: one process; else data parallel over its ranks (mg_dp.h): rank 0
                              writes metrics, checkpoints and the progress line */
} mg_train_opts;

typedef struct mg_train_result {
    long steps_done;
    double last_loss, last_val;   /* NAN when none */
    double train_s, metrics_s;    /* wall time of the steps, and of it in routing metrics + TensorBoard */
    char run_dir[1600];
} mg_train_result;

/* spec may be NULL when resuming (the checkpoint's spec is used); when both are given
 * their hashes must match. */
int mg_train(const mg_spec *spec, const mg_train_opts *o, mg_train_result *res, mg_err *err);

/* Mean CE per token of the model on n_batches validation batches of B windows. */
double mg_train_val_loss(mg_cpu_model *m, const mg_cpu_data *d, int n_batches, int B);

/* moegen eval: loads CKPT (a checkpoint or run dir) and reports the mean CE per token over
 * the non-overlapping seq_len windows of data_path (NULL: the spec's validation split). */
int mg_train_eval(const char *ckpt, const char *data_path, double *loss, long *tokens, mg_err *err);

#ifdef __cplusplus
}
#endif
#endif
