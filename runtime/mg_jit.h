/* mg_jit: NVRTC compilation of generated sources into cubins, through an on-disk cache.
 *
 * Cache: $MOEGEN_CACHE_DIR (default ~/.cache/moegen). Key = sha256 over the source, the
 * options, the arch, the NVRTC version and the moegen version. Entries are written to a
 * temp file and renamed into place; each carries a checksum, and a corrupt entry is
 * reported at debug level and rebuilt. Concurrent compilers of the same kernel both win. */
#ifndef MG_JIT_H
#define MG_JIT_H

#include "mg_err.h"
#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct mg_blob {
    void *data;
    size_t size;
} mg_blob;
void mg_blob_free(mg_blob *b);

typedef struct mg_jit_opts {
    const char *arch;          /* "sm_90a" (default), "sm_90", "sm_80"; a virtual "compute_80"
                                * yields PTX (NUL-terminated) in result.cubin instead */
    const char *const *extra;  /* extra NVRTC options, may be NULL */
    int n_extra;
    int no_cache;              /* 1: always compile, never read or write the cache */
    int verbose_ptxas;         /* 1: add --ptxas-options=-v and keep the log in *log
                                * (always compiles, since only a compile makes the report;
                                * the entry is still written, under the same key) */
} mg_jit_opts;

typedef struct mg_jit_result {
    mg_blob cubin;
    int cache_hit;             /* 1 when served from the cache */
    double compile_ms;         /* wall time of this call */
    char *log;                 /* NVRTC log (malloc'd, may be NULL) */
    char key[65];              /* cache key, hex */
} mg_jit_result;
void mg_jit_result_free(mg_jit_result *r);

/* Compiles one source (name is used for the program name, dumps and messages). On an NVRTC
 * failure returns MG_EUSER and prints to stderr the log, the options and the path of the
 * dumped source. On any failure *res is left empty: nothing to free. */
int mg_jit_compile(const char *name, const char *src, size_t len, const mg_jit_opts *o,
                   mg_jit_result *res, mg_err *err);

/* Compiles n sources in parallel, up to `jobs` threads (0 = one per online core). Results
 * land in res[i]; returns the first error in input order. Every source is attempted, so
 * each failure prints its log; on failure all res[i] are released: nothing to free. */
int mg_jit_compile_many(int n, const char *const *names, const char *const *srcs,
                        const size_t *lens, const mg_jit_opts *o, int jobs,
                        mg_jit_result *res, mg_err *err);

/* The cache directory in use (creates it). */
int mg_cache_dir(char *buf, size_t n, mg_err *err);
/* moegen cache ls: one line per entry (key, size, age, name) to FILE*; returns count. */
int mg_cache_ls(void *file, mg_err *err);
/* moegen cache clear: removes every entry; returns count removed or -1. */
int mg_cache_clear(mg_err *err);

/* "13.0" */
void mg_nvrtc_version(char *buf, size_t n);

#ifdef __cplusplus
}
#endif
#endif
