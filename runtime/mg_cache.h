/* mg_cache: internals of the on-disk cubin cache, shared by mg_jit.c and the tests.
 * The public face (mg_cache_dir, mg_cache_ls, mg_cache_clear) is declared in mg_jit.h.
 *
 * Entry file <dir>/<key[0:2]>/<key>.cubin, all integers little-endian:
 *   "MGCUBIN1" | u64 payload size | sha256(payload) [32] | u32 name length | name | payload
 * The file size must match the header exactly, so a truncated entry is caught before the
 * checksum is even computed. */
#ifndef MG_CACHE_H
#define MG_CACHE_H

#include "mg_jit.h"
#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

#define MG_CACHE_MAGIC "MGCUBIN1"
enum { MG_CACHE_HDR = 8 + 8 + 32 + 4,   /* fixed part of the header, before the name */
       MG_CACHE_NAME_MAX = 1024 };

/* sha256 hex over everything that changes the binary: the source, each option, the arch,
 * the NVRTC version and MG_VERSION. Needs no NVRTC program, so a hit never builds one. */
int mg_cache_key(const char *src, size_t len, const char *arch, const char *const *opts,
                 int n_opts, char key[65], mg_err *err);

/* Path of the entry for key into buf. Returns 0, or MG_EUSER when it does not fit. */
int mg_cache_entry_path(const char *dir, const char *key, char *buf, size_t n, mg_err *err);

/* Looks key up: 1 = hit (out filled, caller frees), 0 = miss. A corrupt or truncated entry
 * is a miss, reported at debug level; the caller's rewrite then replaces it. */
int mg_cache_get(const char *dir, const char *key, mg_blob *out);

/* Stores an entry through mkstemp + fsync + rename, so concurrent writers of the same key
 * all succeed and a reader never sees a half-written file. */
int mg_cache_put(const char *dir, const char *key, const char *name, const mg_blob *b,
                 mg_err *err);

/* mkdir -p with mode 0755. */
int mg_mkdir_p(const char *path, mg_err *err);

#ifdef __cplusplus
}
#endif
#endif
