/* mg_tune_db: the SQLite tuning database (schema and rationale in mg_tune_db.h). */
#include "mg_tune_db.h"
#include "mg_gen.h"
#include "mg_jit.h"

#include <cuda_runtime_api.h>   /* CUDART_VERSION: the runtime this binary was built against */
#include <errno.h>
#include <limits.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define SCHEMA_VERSION "1"

struct mg_tune_db {
    sqlite3 *h;
    char path[PATH_MAX];
};

static const char *const schema_sql =
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);"
    "CREATE TABLE IF NOT EXISTS result ("
    " kernel TEXT NOT NULL, family TEXT NOT NULL, dims TEXT NOT NULL, dtype TEXT NOT NULL,"
    " gpu TEXT NOT NULL, cuda TEXT NOT NULL, moegen TEXT NOT NULL, config TEXT NOT NULL,"
    " status TEXT NOT NULL, reason TEXT, is_default INTEGER, median_ms REAL, min_ms REAL, runs INTEGER,"
    " err REAL, smem INTEGER, regs INTEGER, predicted REAL, created INTEGER,"
    " PRIMARY KEY (kernel, dims, dtype, gpu, cuda, moegen, config));"
    "CREATE TABLE IF NOT EXISTS best ("
    " kernel TEXT NOT NULL, dims TEXT NOT NULL, dtype TEXT NOT NULL, gpu TEXT NOT NULL, cuda TEXT NOT NULL,"
    " moegen TEXT NOT NULL, config TEXT NOT NULL, median_ms REAL, default_config TEXT, default_ms REAL,"
    " created INTEGER, PRIMARY KEY (kernel, dims, dtype, gpu, cuda, moegen));"
    "INSERT OR IGNORE INTO meta (key, value) VALUES ('schema_version', '" SCHEMA_VERSION "');";

int mg_tune_db_default_path(char *buf, size_t n, mg_err *err)
{
    char dir[PATH_MAX - 16];
    int rc = mg_cache_dir(dir, sizeof dir, err);
    if (rc) return rc;
    snprintf(buf, n, "%s/tune.db", dir);
    return MG_OK;
}

/* Runs the checks that tell a usable database from a broken file; "" when usable. */
static void health(sqlite3 *h, char *why, size_t n)
{
    why[0] = 0;
    sqlite3_stmt *st = NULL;
    int rc = sqlite3_prepare_v2(h, "PRAGMA quick_check", -1, &st, NULL);
    if (rc == SQLITE_OK) rc = sqlite3_step(st);
    if (rc != SQLITE_ROW) {
        snprintf(why, n, "%s", sqlite3_errmsg(h));
        sqlite3_finalize(st);
        return;
    }
    const char *r = (const char *)sqlite3_column_text(st, 0);
    if (!r || strcmp(r, "ok")) snprintf(why, n, "quick_check: %s", r ? r : "?");
    sqlite3_finalize(st);
    if (why[0]) return;
    char *msg = NULL;
    if (sqlite3_exec(h, schema_sql, NULL, NULL, &msg) != SQLITE_OK) {
        snprintf(why, n, "%s", msg ? msg : sqlite3_errmsg(h));
        sqlite3_free(msg);
        return;
    }
    if (sqlite3_prepare_v2(h, "SELECT value FROM meta WHERE key = 'schema_version'", -1, &st, NULL) == SQLITE_OK &&
        sqlite3_step(st) == SQLITE_ROW) {
        const char *v = (const char *)sqlite3_column_text(st, 0);
        if (!v || strcmp(v, SCHEMA_VERSION)) snprintf(why, n, "schema version %s, this moegen reads %s", v ? v : "?", SCHEMA_VERSION);
    } else {
        snprintf(why, n, "no schema version: %s", sqlite3_errmsg(h));
    }
    sqlite3_finalize(st);
}

static int open_raw(const char *path, sqlite3 **h)
{
    int rc = sqlite3_open_v2(path, h, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, NULL);
    if (rc == SQLITE_OK) sqlite3_busy_timeout(*h, 10000);   /* the worker and the parent share the file */
    return rc;
}

int mg_tune_db_open(const char *path, mg_tune_db **out, mg_err *err)
{
    *out = NULL;
    mg_tune_db *db = calloc(1, sizeof *db);
    if (!db) return mg_err_set(err, MG_EINTERNAL, "tune db: out of memory");
    if (path) snprintf(db->path, sizeof db->path, "%s", path);
    else if (mg_tune_db_default_path(db->path, sizeof db->path, err)) { free(db); return err->code; }
    char why[512] = "";
    int rc = open_raw(db->path, &db->h);
    if (rc != SQLITE_OK) snprintf(why, sizeof why, "%s", db->h ? sqlite3_errmsg(db->h) : sqlite3_errstr(rc));
    else health(db->h, why, sizeof why);
    if (why[0]) {
        sqlite3_close(db->h);
        db->h = NULL;
        struct stat st;
        if (stat(db->path, &st) != 0) {   /* nothing to move aside: the directory is the problem */
            mg_err_set(err, MG_EUSER, "tune db %s: %s", db->path, why);
            free(db);
            return MG_EUSER;
        }
        char aside[PATH_MAX + 48];
        for (int q = 0; q < 1000; q++) {   /* never overwrite an earlier one */
            snprintf(aside, sizeof aside, "%s.corrupt-%ld%s%.0d", db->path, (long)time(NULL), q ? "-" : "", q);
            if (stat(aside, &st) != 0) break;
        }
        if (rename(db->path, aside) != 0) {
            mg_err_set(err, MG_EUSER, "tune db %s is unusable (%s) and cannot be moved aside: %s", db->path, why,
                       strerror(errno));
            free(db);
            return MG_EUSER;
        }
        char journal[PATH_MAX + 16];
        snprintf(journal, sizeof journal, "%s-journal", db->path);
        unlink(journal);   /* a hot journal of the broken file must not be replayed into the new one */
        fprintf(stderr, "moegen: warning: tuning db %s is unusable (%s): moved aside to %s, starting a new one\n",
                db->path, why, aside);
        rc = open_raw(db->path, &db->h);
        if (rc == SQLITE_OK) health(db->h, why, sizeof why);
        else snprintf(why, sizeof why, "%s", sqlite3_errstr(rc));
        if (rc != SQLITE_OK || why[0]) {
            mg_err_set(err, MG_EUSER, "tune db %s: cannot create: %s", db->path, why);
            sqlite3_close(db->h);
            free(db);
            return MG_EUSER;
        }
    }
    *out = db;
    return MG_OK;
}

void mg_tune_db_close(mg_tune_db *db)
{
    if (!db) return;
    sqlite3_close(db->h);
    free(db);
}

const char *mg_tune_db_path(const mg_tune_db *db) { return db->path; }

void mg_tune_cuda_key(const char *arch, char *buf, size_t n)
{
    char nv[32];
    mg_nvrtc_version(nv, sizeof nv);
    snprintf(buf, n, "cuda %d.%d, nvrtc %s, %s", CUDART_VERSION / 1000, CUDART_VERSION % 1000 / 10, nv,
             arch ? arch : "sm_90a");
}

void mg_tune_kernel_base(const mg_family *f, char *buf, size_t n)
{
    snprintf(buf, n, "%s", f->name);
    if (!f->tile.bm) return;
    char t[48];
    snprintf(t, sizeof t, "_t%dx%dx%d", f->tile.bm, f->tile.bn, f->tile.bk);
    char *p = NULL, *q = buf;
    while ((q = strstr(q, t))) p = q++;   /* the last occurrence: the tile suffix */
    if (p) *p = 0;
}

int mg_tune_db_exec(mg_tune_db *db, const char *sql, mg_err *err)
{
    char *msg = NULL;
    if (sqlite3_exec(db->h, sql, NULL, NULL, &msg) == SQLITE_OK) return MG_OK;
    mg_err_set(err, MG_EINTERNAL, "tune db %s: %s: %s", db->path, sql, msg ? msg : sqlite3_errmsg(db->h));
    sqlite3_free(msg);
    return MG_EINTERNAL;
}

/* ------------------------------------------------------------------ rows */
static int db_fail(mg_tune_db *db, sqlite3_stmt *st, const char *what, mg_err *err)
{
    mg_err_set(err, MG_EINTERNAL, "tune db %s: %s: %s", db->path, what, sqlite3_errmsg(db->h));
    sqlite3_finalize(st);
    return MG_EINTERNAL;
}

static void bind_key(sqlite3_stmt *st, const mg_tune_key *k, int first)
{
    sqlite3_bind_text(st, first, k->kernel, -1, SQLITE_TRANSIENT);
    sqlite3_bind_text(st, first + 1, k->dims, -1, SQLITE_TRANSIENT);
    sqlite3_bind_text(st, first + 2, k->dtype, -1, SQLITE_TRANSIENT);
    sqlite3_bind_text(st, first + 3, k->gpu, -1, SQLITE_TRANSIENT);
    sqlite3_bind_text(st, first + 4, k->cuda, -1, SQLITE_TRANSIENT);
    sqlite3_bind_text(st, first + 5, k->moegen, -1, SQLITE_TRANSIENT);
}

int mg_tune_db_put(mg_tune_db *db, const mg_tune_key *k, const mg_tune_cand *c, mg_err *err)
{
    static const char sql[] =
        "INSERT OR REPLACE INTO result (kernel, dims, dtype, gpu, cuda, moegen, family, config, status, reason,"
        " is_default, median_ms, min_ms, runs, err, smem, regs, predicted, created)"
        " VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19)";
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(db->h, sql, -1, &st, NULL) != SQLITE_OK) return db_fail(db, st, "prepare insert", err);
    char cfg[128];
    mg_tune_tile_str(&c->tile, cfg, sizeof cfg);
    bind_key(st, k, 1);
    sqlite3_bind_text(st, 7, k->family, -1, SQLITE_TRANSIENT);
    sqlite3_bind_text(st, 8, cfg, -1, SQLITE_TRANSIENT);
    sqlite3_bind_text(st, 9, mg_tune_status_names[c->status], -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 10, c->reason, -1, SQLITE_TRANSIENT);
    sqlite3_bind_int(st, 11, c->is_default);
    if (c->status == MG_TUNE_OK) {
        sqlite3_bind_double(st, 12, c->median_ms);
        sqlite3_bind_double(st, 13, c->min_ms);
    }
    sqlite3_bind_int(st, 14, c->runs);
    sqlite3_bind_double(st, 15, c->err);
    sqlite3_bind_int(st, 16, c->smem);
    sqlite3_bind_int(st, 17, c->regs);
    sqlite3_bind_double(st, 18, c->predicted);
    sqlite3_bind_int64(st, 19, (sqlite3_int64)time(NULL));
    /* autocommit: this statement is its own transaction, durable when step returns */
    if (sqlite3_step(st) != SQLITE_DONE) return db_fail(db, st, "insert", err);
    sqlite3_finalize(st);
    return MG_OK;
}

int mg_tune_db_get(mg_tune_db *db, const mg_tune_key *k, const mg_tile *t, mg_tune_cand *c, mg_err *err)
{
    static const char sql[] =
        "SELECT status, reason, median_ms, min_ms, runs, err FROM result WHERE kernel = ?1 AND dims = ?2 AND"
        " dtype = ?3 AND gpu = ?4 AND cuda = ?5 AND moegen = ?6 AND config = ?7";
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(db->h, sql, -1, &st, NULL) != SQLITE_OK) { db_fail(db, st, "prepare select", err); return -1; }
    char cfg[128];
    mg_tune_tile_str(t, cfg, sizeof cfg);
    bind_key(st, k, 1);
    sqlite3_bind_text(st, 7, cfg, -1, SQLITE_TRANSIENT);
    int rc = sqlite3_step(st);
    if (rc == SQLITE_DONE) { sqlite3_finalize(st); return 0; }
    if (rc != SQLITE_ROW) { db_fail(db, st, "select", err); return -1; }
    int s = mg_tune_status_parse((const char *)sqlite3_column_text(st, 0) ? (const char *)sqlite3_column_text(st, 0) : "");
    c->status = s < 0 ? MG_TUNE_PENDING : (mg_tune_status)s;
    const char *r = (const char *)sqlite3_column_text(st, 1);
    snprintf(c->reason, sizeof c->reason, "%s", r ? r : "");
    c->median_ms = sqlite3_column_double(st, 2);
    c->min_ms = sqlite3_column_double(st, 3);
    c->runs = sqlite3_column_int(st, 4);
    c->err = sqlite3_column_double(st, 5);
    sqlite3_finalize(st);
    return 1;
}

int mg_tune_db_count(mg_tune_db *db, const mg_tune_key *k, mg_err *err)
{
    static const char sql[] = "SELECT count(*) FROM result WHERE kernel = ?1 AND dims = ?2 AND dtype = ?3 AND"
                              " gpu = ?4 AND cuda = ?5 AND moegen = ?6";
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(db->h, sql, -1, &st, NULL) != SQLITE_OK) { db_fail(db, st, "prepare count", err); return -1; }
    bind_key(st, k, 1);
    if (sqlite3_step(st) != SQLITE_ROW) { db_fail(db, st, "count", err); return -1; }
    int n = sqlite3_column_int(st, 0);
    sqlite3_finalize(st);
    return n;
}

int mg_tune_db_set_best(mg_tune_db *db, const mg_tune_key *k, const mg_tile *best, double ms, const mg_tile *def,
                        double default_ms, mg_err *err)
{
    static const char sql[] =
        "INSERT OR REPLACE INTO best (kernel, dims, dtype, gpu, cuda, moegen, config, median_ms, default_config,"
        " default_ms, created) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)";
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(db->h, sql, -1, &st, NULL) != SQLITE_OK) return db_fail(db, st, "prepare best", err);
    char cfg[128], dcfg[128];
    mg_tune_tile_str(best, cfg, sizeof cfg);
    mg_tune_tile_str(def, dcfg, sizeof dcfg);
    bind_key(st, k, 1);
    sqlite3_bind_text(st, 7, cfg, -1, SQLITE_TRANSIENT);
    sqlite3_bind_double(st, 8, ms);
    sqlite3_bind_text(st, 9, dcfg, -1, SQLITE_TRANSIENT);
    sqlite3_bind_double(st, 10, default_ms);
    sqlite3_bind_int64(st, 11, (sqlite3_int64)time(NULL));
    if (sqlite3_step(st) != SQLITE_DONE) return db_fail(db, st, "insert best", err);
    sqlite3_finalize(st);
    return MG_OK;
}

/* T from a dims string "T=16384,dist=..." (0 when absent). */
static long dims_T(const char *dims)
{
    const char *p = strstr(dims, "T=");
    return p ? strtol(p + 2, NULL, 10) : 0;
}

int mg_tune_db_find_best(mg_tune_db *db, const mg_tune_key *k, const char *gpu, int T, mg_tile *t, char *gpu_out,
                         size_t gn, char *dims_out, size_t dn, mg_err *err)
{
    static const char sql[] =
        "SELECT config, gpu, dims, created FROM best WHERE kernel = ?1 AND dtype = ?2 AND cuda = ?3 AND"
        " moegen = ?4 AND (?5 IS NULL OR instr(lower(gpu), lower(?5)) > 0) ORDER BY created DESC, rowid DESC";
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(db->h, sql, -1, &st, NULL) != SQLITE_OK) { db_fail(db, st, "prepare best lookup", err); return -1; }
    sqlite3_bind_text(st, 1, k->kernel, -1, SQLITE_TRANSIENT);
    sqlite3_bind_text(st, 2, k->dtype, -1, SQLITE_TRANSIENT);
    sqlite3_bind_text(st, 3, k->cuda, -1, SQLITE_TRANSIENT);
    sqlite3_bind_text(st, 4, k->moegen, -1, SQLITE_TRANSIENT);
    if (gpu) sqlite3_bind_text(st, 5, gpu, -1, SQLITE_TRANSIENT);
    else sqlite3_bind_null(st, 5);
    int found = 0, rc;
    long best_score = 0;
    /* rows come newest first; the newest GPU wins, then the T closest to the one asked for */
    char first_gpu[160] = "";
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        const char *cfg = (const char *)sqlite3_column_text(st, 0), *g = (const char *)sqlite3_column_text(st, 1),
                   *dims = (const char *)sqlite3_column_text(st, 2);
        mg_tile tt;
        if (!cfg || !g || !dims || mg_tune_tile_parse(cfg, &tt)) continue;
        if (!first_gpu[0]) snprintf(first_gpu, sizeof first_gpu, "%s", g);
        if (strcmp(g, first_gpu)) continue;
        long rt = dims_T(dims);
        long score = T > 0 ? -labs(rt - T) : rt;
        if (!found || score > best_score) {
            found = 1;
            best_score = score;
            *t = tt;
            if (gpu_out) snprintf(gpu_out, gn, "%s", g);
            if (dims_out) snprintf(dims_out, dn, "%s", dims);
        }
    }
    if (rc != SQLITE_DONE) { db_fail(db, st, "best lookup", err); return -1; }
    sqlite3_finalize(st);
    return found;
}

/* ------------------------------------------------------------------ consult */
void mg_tune_tiles(const mg_spec *spec, const mg_tune_lookup *o, mg_tile tiles[MG_FAM_COUNT],
                   char from[MG_FAM_COUNT][MG_TUNE_FROM_LEN])
{
    memset(tiles, 0, sizeof(mg_tile) * MG_FAM_COUNT);
    if (from) memset(from, 0, (size_t)MG_FAM_COUNT * MG_TUNE_FROM_LEN);
    mg_tune_lookup def = {0};
    if (!o) o = &def;
    mg_plan plan;
    mg_err err;
    if (o->rules_only || mg_plan_make(spec, NULL, &plan, &err)) return;
    char path[PATH_MAX];
    struct stat st;
    if (mg_tune_db_default_path(path, sizeof path, &err) || stat(path, &st) != 0) return;   /* no db: rules */
    mg_tune_db *db;
    if (mg_tune_db_open(path, &db, &err)) {
        fprintf(stderr, "moegen: warning: %s: using the rules\n", err.msg);
        return;
    }
    for (int i = 0; i < MG_FAM_COUNT; i++) {
        if (!mg_tune_family_tunable((mg_family_id)i)) continue;
        mg_tune_key k;
        memset(&k, 0, sizeof k);
        mg_tune_kernel_base(&plan.fam[i], k.kernel, sizeof k.kernel);
        snprintf(k.dtype, sizeof k.dtype, "%s", mg_dtype_names[spec->dtype]);
        mg_tune_cuda_key(o->arch, k.cuda, sizeof k.cuda);
        snprintf(k.moegen, sizeof k.moegen, "%s", mg_version());
        mg_tile t;
        char gpu[160], dims[128];
        mg_err_clear(&err);
        if (mg_tune_db_find_best(db, &k, o->gpu, o->T, &t, gpu, sizeof gpu, dims, sizeof dims, &err) == 1) {
            tiles[i] = t;
            if (from) snprintf(from[i], MG_TUNE_FROM_LEN, "%s, %s", gpu, dims);
        } else if (err.code) fprintf(stderr, "moegen: warning: %s: using the rules\n", err.msg);
        mg_err_clear(&err);
    }
    mg_tune_db_close(db);
}

int mg_tune_plan_make(const mg_spec *spec, const mg_tune_lookup *o, mg_plan *plan, mg_err *err)
{
    mg_tile tiles[MG_FAM_COUNT];
    char from[MG_FAM_COUNT][MG_TUNE_FROM_LEN];
    mg_tune_tiles(spec, o, tiles, from);
    int rc = mg_plan_make(spec, tiles, plan, err);
    if (rc || !o || !o->log) return rc;
    for (int i = 0; i < plan->n_families; i++)
        if (mg_tune_family_tunable((mg_family_id)i))
            fprintf((FILE *)o->log, "tuning: %s %s from %s%s%s%s\n", mg_family_names[i], plan->fam[i].name,
                    tiles[i].bm ? "tuning db" : "rules", tiles[i].bm ? " (" : "", tiles[i].bm ? from[i] : "",
                    tiles[i].bm ? ")" : "");
    return MG_OK;
}
