/* mg_tune_db: the tuning database: every measured (or rejected) configuration per kernel,
 * dims, dtype, GPU and toolchain, and the winner of each sweep; and the lookup that `gen`,
 * `compile` and layer creation use to pick tiles (the DB's winner, else the generator's
 * rules).
 *
 * One SQLite file: $MOEGEN_CACHE_DIR/tune.db (default ~/.cache/moegen/tune.db). SQLite
 * rather than a text file because each result row is committed in its own transaction:
 * an interrupted sweep (crash, kill, timeout) leaves every finished row and never a half
 * one, so a rerun resumes where it stopped; the sweep's worker process and the parent (and
 * two concurrent sweeps) write the same file safely through SQLite's locking; and
 * `PRAGMA quick_check` detects a corrupt file, which is then moved aside with a warning.
 * Linked statically (Debian's libsqlite3-dev), like jansson.
 *
 * Schema (version 1):
 *   CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);  -- schema_version = 1
 *   CREATE TABLE result (             -- one row per configuration tried
 *     kernel TEXT, family TEXT,       -- family name without tile fields; "up" / "down"
 *     dims TEXT, dtype TEXT,          -- "T=16384,dist=balanced"; "bf16"
 *     gpu TEXT, cuda TEXT, moegen TEXT, -- "NVIDIA H100 80GB HBM3 (132 SMs)"; "cuda 13.0, nvrtc 13.0, sm_90a"; "0.1.0"
 *     config TEXT,                    -- "bm=128,bn=128,bk=32,stages=3,warps=8"
 *     status TEXT, reason TEXT,       -- ok|pruned|budget|compile_error|launch_error|wrong|timeout|crash; why
 *     is_default INTEGER, median_ms REAL, min_ms REAL, runs INTEGER, err REAL,
 *     smem INTEGER, regs INTEGER, predicted REAL, created INTEGER,   -- unix seconds
 *     PRIMARY KEY (kernel, dims, dtype, gpu, cuda, moegen, config));
 *   CREATE TABLE best (               -- the winner of a finished sweep
 *     kernel, dims, dtype, gpu, cuda, moegen TEXT, config TEXT, median_ms REAL,
 *     default_config TEXT, default_ms REAL, created INTEGER,
 *     PRIMARY KEY (kernel, dims, dtype, gpu, cuda, moegen)); */
#ifndef MG_TUNE_DB_H
#define MG_TUNE_DB_H

#include "mg_err.h"
#include "mg_plan.h"
#include "mg_tune_space.h"
#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct mg_tune_db mg_tune_db;

typedef struct mg_tune_key {
    char kernel[160];   /* family name without tile fields */
    char family[16];
    char dims[128];
    char dtype[8];
    char gpu[160];
    char cuda[64];
    char moegen[32];
} mg_tune_key;

/* "<cache dir>/tune.db" into buf. */
int mg_tune_db_default_path(char *buf, size_t n, mg_err *err);
/* Opens (creating) the database at path (NULL = the default). A file that is not a valid
 * database of this schema is moved aside to "<path>.corrupt-<unix time>" with a warning on
 * stderr, and a new one is started. */
int mg_tune_db_open(const char *path, mg_tune_db **out, mg_err *err);
void mg_tune_db_close(mg_tune_db *db);
const char *mg_tune_db_path(const mg_tune_db *db);

/* The toolchain part of the key: "cuda X.Y, nvrtc X.Y, <arch>". */
void mg_tune_cuda_key(const char *arch, char *buf, size_t n);
/* A family's procedural name without its tile fields (everything from "_t<bm>x" on). */
void mg_tune_kernel_base(const mg_family *f, char *buf, size_t n);

/* Stores c's result under key k (replacing an earlier row of the same config), committed
 * before it returns. */
int mg_tune_db_put(mg_tune_db *db, const mg_tune_key *k, const mg_tune_cand *c, mg_err *err);
/* A stored row of config t: 1 (c's status, reason and measurements filled), 0 none, or -1. */
int mg_tune_db_get(mg_tune_db *db, const mg_tune_key *k, const mg_tile *t, mg_tune_cand *c, mg_err *err);
/* Runs "BEGIN" / "COMMIT" (batches of rows that need no per-row durability, such as the
 * pruned configurations of a sweep). */
int mg_tune_db_exec(mg_tune_db *db, const char *sql, mg_err *err);
/* Rows stored under k. */
int mg_tune_db_count(mg_tune_db *db, const mg_tune_key *k, mg_err *err);
/* Records the winner of a sweep. */
int mg_tune_db_set_best(mg_tune_db *db, const mg_tune_key *k, const mg_tile *best, double ms,
                        const mg_tile *def, double default_ms, mg_err *err);

/* The winner for a kernel: rows matching kernel, dtype, cuda and moegen; gpu a substring of
 * the stored GPU (NULL = any); T the token count to match (nearest tuned T, 0 = the largest);
 * ties go to the newest. Returns 1 (t, and gpu_out/dims_out when non-NULL, filled), 0 none,
 * -1 error. */
int mg_tune_db_find_best(mg_tune_db *db, const mg_tune_key *k, const char *gpu, int T, mg_tile *t,
                         char *gpu_out, size_t gn, char *dims_out, size_t dn, mg_err *err);

/* ------------------------------------------------------------------ consult */
typedef struct mg_tune_lookup {
    const char *gpu;    /* substring of the GPU name, e.g. "H100"; NULL = the newest entry, any GPU */
    const char *arch;   /* part of the key; NULL = "sm_90a" */
    int T;              /* tokens to match; 0 = the largest tuned T */
    int rules_only;     /* 1: skip the database */
    void *log;          /* FILE* for "tuning: <family> <name> from tuning db|from rules", NULL = quiet */
} mg_tune_lookup;

/* Fills tiles[] (indexed by family; bm == 0 = rules) from the database for every tunable
 * family of spec, and from[] (may be NULL) with "<gpu>, <dims>" of each entry used. Never
 * fails: no database, no entry or a broken file all mean rules. */
#define MG_TUNE_FROM_LEN 320
void mg_tune_tiles(const mg_spec *spec, const mg_tune_lookup *o, mg_tile tiles[MG_FAM_COUNT],
                   char from[MG_FAM_COUNT][MG_TUNE_FROM_LEN]);
/* mg_plan_make with the tiles of mg_tune_tiles, printing one "tuning:" line per tunable
 * family to o->log. The layer path (mg_moe_create) takes the plan this returns. */
int mg_tune_plan_make(const mg_spec *spec, const mg_tune_lookup *o, mg_plan *plan, mg_err *err);

#ifdef __cplusplus
}
#endif
#endif
