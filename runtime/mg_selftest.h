/* mg_selftest: `moegen selftest spec.lua`: the CPU reference's finite-difference checks, then
 * every generated kernel of the spec (and of edge-case variants of it) against the CPU
 * reference on random data, plus a bitwise determinism check. Prints one table row per
 * check; the GPU part prints "skipped: no CUDA device" when there is none. */
#ifndef MG_SELFTEST_H
#define MG_SELFTEST_H

#include "mg_err.h"
#include "mg_spec.h"

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

#ifdef __cplusplus
}
#endif
#endif
