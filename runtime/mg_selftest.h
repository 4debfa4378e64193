/* mg_selftest: `moegen selftest spec.lua`: the CPU reference's finite-difference checks, then
 * every generated kernel of the spec (and of edge-case variants of it) against the CPU
 * reference on random data, plus a bitwise determinism check. Prints one table row per
 * check; the GPU part prints "skipped: no CUDA device" when there is none. */
#ifndef MG_SELFTEST_H
#define MG_SELFTEST_H

#include "mg_err.h"
#include "mg_spec.h"
#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct mg_selftest_opts {
    unsigned long long seed;   /* data seed (printed; rerun with --seed to reproduce) */
    const char *arch;          /* NVRTC arch, NULL = from the device */
    double budget;             /* CPU-reference work per case in multiply-adds; 0 = default
                                  (3e9, or $MOEGEN_SELFTEST_BUDGET) */
    int verbose;               /* 1: per-family compile lines */
} mg_selftest_opts;

/* Returns 0 when every check passed (or the GPU part was skipped), MG_EUSER when a check
 * failed, MG_EINTERNAL (with err set) when something could not run. */
int mg_selftest(const mg_spec *spec, const mg_selftest_opts *o, mg_err *err);

/* One check case, reusable across layers (moegen tune checks every candidate with one).
 * mg_check_make draws random data of spec sp at T tokens (mode 0 random, 1 every token to
 * expert 0, 2 the upper experts idle), uploads it and computes the expected outputs: the
 * CPU reference mg_ref when ref is NULL, else what the layer `ref` computes on the same
 * data (a cross-check of one configuration against another, for dims too large for the
 * CPU reference). Needs a CUDA device. */
typedef struct mg_check mg_check;
struct mg_moe;
int mg_check_make(const mg_spec *sp, int T, int mode, unsigned long long seed, struct mg_moe *ref,
                  mg_check **out, mg_err *err);
/* Poisons and runs layer m (forward + backward) on the case, compares every output with
 * the expected one (selftest tolerances). quiet = 0 prints the selftest's table rows.
 * Sets *n_fail (0 = all passed) and `what` to the first failure ("dw_up: max_abs ... rel_err
 * ... > tol 1e-02"); returns MG_EINTERNAL with err set when the run itself failed. */
int mg_check_run(mg_check *c, struct mg_moe *m, int quiet, int *n_fail, char *what, size_t n, mg_err *err);
void mg_check_free(mg_check *c);

#ifdef __cplusplus
}
#endif
#endif
