/* mg_tune_space: the configuration space of each tunable kernel family, and the rules that
 * prune it before anything is compiled (`moegen tune`, steps 1 and 2).
 *
 * The space is the cartesian product of one table, mg_tune_knobs: one row per mg_tile field
 * with the values the templates accept (the static_asserts of mg_gemm in
 * templates/mg_common.cuh). A new knob is one new row (plus its mg_tile field); enumeration,
 * config strings, parsing, the CSV and the database all walk the table.
 *
 * Pruning, each with its reason: the template's own layout rules (warp tile multiple of
 * 16x16, FFMA thread layout), shared memory per block (MG_GEMM_SMEM_BYTES of
 * templates/moe_params.h, the formula the host launches with, plus the static row tables)
 * against the device's opt-in limit, a register estimate against 255 per thread, and
 * alignment with the dims (a tile at least twice the dimension it covers does the work of
 * the half-size tile plus padding). Pure CPU code: tests/test_tune.c covers it. */
#ifndef MG_TUNE_SPACE_H
#define MG_TUNE_SPACE_H

#include "mg_plan.h"
#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

/* One knob: an int field of mg_tile and the values the templates accept. */
typedef struct mg_tune_knob {
    const char *name;   /* as in config strings: "bm" */
    size_t offset;      /* offsetof(mg_tile, field) */
    int n_values;
    int values[8];
} mg_tune_knob;
extern const mg_tune_knob mg_tune_knobs[];
extern const int mg_tune_n_knobs;

int mg_tune_knob_get(const mg_tile *t, int knob);
void mg_tune_knob_set(mg_tile *t, int knob, int v);
/* "bm=128,bn=64,bk=32,stages=3,warps=8" (every knob, table order). */
void mg_tune_tile_str(const mg_tile *t, char *buf, size_t n);
/* Parses a config string; every knob must be present. Returns 0, or -1. */
int mg_tune_tile_parse(const char *s, mg_tile *t);
int mg_tune_tile_eq(const mg_tile *a, const mg_tile *b);

/* The tunable families (those with a tile): up, down. */
int mg_tune_family_tunable(mg_family_id id);

/* The limits pruning needs; from the device (mg_tune_hw_probe in mg_tune.h) or, without a
 * GPU, the defaults of an arch. */
typedef struct mg_tune_hw {
    char name[128];          /* "NVIDIA H100 80GB HBM3" */
    int sms, cc_major, cc_minor;
    int smem_optin;          /* shared memory per block, opt-in maximum (bytes) */
    int smem_per_sm;         /* bytes */
    int regs_per_sm;         /* 32-bit registers */
    int max_threads_per_sm;
    int l2_bytes;
} mg_tune_hw;
/* H100 SXM for sm_90/sm_90a, A100 for sm_80; 'assumed' in the name. */
void mg_tune_hw_default(const char *arch, mg_tune_hw *hw);

/* The problem a family's GEMMs solve, at T tokens. */
typedef struct mg_tune_dims {
    int d, ff, f2, E, k, T, esz, glu;
} mg_tune_dims;
void mg_tune_dims_of(const mg_spec *s, int T, mg_tune_dims *dm);

typedef enum {
    MG_TUNE_PENDING = 0,   /* not evaluated yet */
    MG_TUNE_OK,            /* compiled, correct, timed */
    MG_TUNE_PRUNED,        /* breaks a hardware or template rule: never compiled */
    MG_TUNE_BUDGET,        /* not reached within --budget */
    MG_TUNE_COMPILE_ERROR,
    MG_TUNE_LAUNCH_ERROR,  /* creation or a launch failed */
    MG_TUNE_WRONG,         /* results differ from the reference */
    MG_TUNE_TIMEOUT,       /* the worker did not finish it in time (killed) */
    MG_TUNE_CRASH,         /* the worker died on it */
    MG_TUNE_DUPLICATE,     /* compiles to the same binary as a config ranked before it: not timed */
    MG_TUNE_NSTATUS
} mg_tune_status;
extern const char *const mg_tune_status_names[MG_TUNE_NSTATUS];   /* "pending", "ok", ... */
int mg_tune_status_parse(const char *s);                          /* -1 when unknown */

/* One configuration of one family and what became of it. */
typedef struct mg_tune_cand {
    mg_tile tile;
    int is_default;          /* the generator's rule for these dims */
    mg_tune_status status;
    char reason[256];        /* why it was rejected, or notes */
    int smem;                /* bytes per block: max over the family's entries, dynamic + static */
    int regs;                /* registers per thread, estimate */
    int blocks_per_sm;       /* occupancy estimate from smem, registers and threads */
    double predicted;        /* cost model, relative units (lower is faster) */
    double median_ms, min_ms;
    int runs;
    double err;              /* worst relative error of the correctness check */
} mg_tune_cand;

/* Checks one tile against every rule; returns 1 when it may be compiled, else 0 with the
 * reason. Fills smem, regs and blocks_per_sm of c either way. */
int mg_tune_prune(const mg_tune_dims *dm, mg_family_id fam, const mg_tune_hw *hw, mg_tune_cand *c);

/* The space of family fam: every knob combination in table order (plus the rule's tile
 * when the table lacks it), each pruned or pending, the rule's tile marked is_default, and
 * the cost model filled in. *out is malloc'd. Returns the count, or -1 on OOM. */
int mg_tune_enumerate(const mg_spec *spec, mg_family_id fam, int T, const mg_tune_hw *hw, mg_tune_cand **out);

/* Predicted time of the family's three GEMMs (fwd, dgrad, wgrad) with tile t, balanced
 * routing: per GEMM, waves of tiles over the SMs times a per-tile time from the tile's
 * arithmetic intensity, pipeline depth and occupancy. Only ranks candidates when the budget
 * cannot time them all; the measurements decide. */
double mg_tune_cost_model(const mg_tune_dims *dm, mg_family_id fam, const mg_tune_hw *hw, const mg_tile *t);

/* Orders the pending candidates for timing: the default first, then by predicted cost;
 * keeps the first `keep` pending ones (keep < 0: all) and marks the others MG_TUNE_BUDGET.
 * Returns the number kept. Pruned entries keep their place after the pending ones. */
int mg_tune_rank(mg_tune_cand *c, int n, int keep);

/* The winner: the fastest MG_TUNE_OK candidate, except that the default stays when the
 * fastest beats it by less than `margin` (0.01 = 1%, timing noise). Never a rejected one.
 * *def (may be NULL) gets the default's entry, or NULL when it is not OK. NULL when nothing
 * is OK. */
const mg_tune_cand *mg_tune_pick(const mg_tune_cand *c, int n, double margin, const mg_tune_cand **def);

#ifdef __cplusplus
}
#endif
#endif
