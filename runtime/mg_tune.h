/* mg_tune: `moegen tune`: finds the fastest correct configuration of each tunable kernel
 * family for a spec on this GPU, and records every result in the tuning database.
 *
 * Per spec, token count and family (up, down):
 *   1. enumerate the space (mg_tune_space: one knob table) and prune it (hardware, template
 *      and alignment rules, each with its reason);
 *   2. resume: configurations with a finished row in the database are not run again;
 *   3. rank the rest (rules' config first, then by the cost model) and cut to what fits in
 *      the budget;
 *   4. compile the survivors with NVRTC in parallel (mg_jit_compile_many, into the JIT cache);
 *   5. in a worker process: check each against the reference (mg_check: the CPU reference
 *      on random data when the dims allow, else the rules' config on the GPU), then time the
 *      layer's forward + backward (warm-up, median of N CUDA-event timings, input sets
 *      rotated so they exceed the L2, routing crafted for the requested distribution);
 *      every result is committed to the database as it completes;
 *   6. keep the fastest (the rules' config unless beaten by more than 1%).
 * The worker is a child process, so a configuration that crashes, hangs or poisons the CUDA
 * context costs one row ("crash", "timeout", "launch_error"), not the sweep: the parent
 * records it and starts a new worker, which skips the finished rows. The parent never
 * touches CUDA (a forked child could not use it after), and probes the device in a child. */
#ifndef MG_TUNE_H
#define MG_TUNE_H

#include "mg_err.h"
#include "mg_tune_db.h"
#include "mg_tune_space.h"
#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum { MG_DIST_BALANCED = 0, MG_DIST_ZIPF = 1, MG_DIST_ONE = 2 } mg_tune_dist;
extern const char *const mg_tune_dist_names[3];   /* "balanced", "zipf", "one" */

#define MG_TUNE_MAX_TOKENS 16
typedef struct mg_tune_opts {
    unsigned fam_mask;        /* bit per mg_family_id; 0 = every tunable family */
    int n_tokens;             /* 0 = the spec's train.batch x model.seq_len */
    int tokens[MG_TUNE_MAX_TOKENS];
    double budget_s;          /* wall clock for one spec's whole sweep; 0 = 270 s */
    int jobs;                 /* parallel NVRTC compiles; 0 = one per core */
    mg_tune_dist dist;
    const char *arch;         /* NULL = from the device */
    const char *db_path;      /* NULL = $MOEGEN_CACHE_DIR/tune.db */
    const char *out_dir;      /* tune.csv and tune.html; NULL = out/<spec>/ (out/tune/ for several specs) */
    int runs, warmup;         /* timed runs (median) and warm-ups; 0 = 10 and 3 */
    double timeout_s;         /* per configuration; 0 = 120 s */
    unsigned long long seed;
} mg_tune_opts;

/* Tunes every spec in paths. Returns 0 when every sweep ran (or the GPU part was skipped:
 * "skipped: no CUDA device" after the enumeration summary), else an mg_err code. */
int mg_tune_specs(int n, const char *const *paths, const mg_tune_opts *o, mg_err *err);

/* The device's limits and identity, probed in a child process (so this process stays free
 * to fork CUDA workers). Returns 1 with hw filled, 0 when there is no usable device (why
 * says so). arch receives the NVRTC arch of the device. */
int mg_tune_hw_probe(mg_tune_hw *hw, char *arch, size_t an, char *why, size_t wn);

/* ------------------------------------------------------------------ the sweep engine
 * Generic over the evaluation so the CPU test suite can drive it with fake evaluators. */
typedef struct mg_tune_sweep {
    const char *db_path;
    const mg_tune_key *key;
    mg_tune_cand *c;          /* candidates in run order; PENDING ones are evaluated */
    int n;
    /* In the worker process: once before the first evaluation (0 = ready; else msg says why
     * and every remaining candidate fails with it), then per candidate. eval returns 1 when
     * the worker must be replaced after this result (the CUDA context is unusable). */
    int (*init)(void *ctx, char *msg, size_t n);
    int (*eval)(void *ctx, mg_tune_cand *c);
    void *ctx;
    double timeout_s;         /* per candidate (init gets 5x) */
    double deadline;          /* CLOCK_MONOTONIC seconds; past it, the rest become "budget"; 0 = none */
    int progress;             /* 1: progress bar on stderr */
    const char *label;
} mg_tune_sweep;

/* Stores the non-pending candidates' rows, loads finished rows of pending ones from the
 * database (resume), then evaluates the rest in worker processes, committing each result.
 * Returns the number of candidates evaluated in this call, or -1 with err set. */
int mg_tune_sweep_run(mg_tune_sweep *s, mg_err *err);

/* `moegen tune ...` (argv after the verb): parses, runs, prints; returns the exit code. */
int mg_tune_cli(int argc, char **argv);

/* CLOCK_MONOTONIC in seconds. */
double mg_tune_now(void);

#ifdef __cplusplus
}
#endif
#endif
