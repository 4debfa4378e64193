/* mg_cache: the on-disk cubin cache: where it lives, its keys, checked entries, ls and clear. */
#include "mg_cache.h"
#include "mg_file.h"
#include "mg_sha.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#ifndef MG_VERSION
#error "MG_VERSION must be defined by the build (the Makefile passes -DMG_VERSION)"
#endif

/* ---------------------------------------------------------------------------------------
 * Directory */

int mg_mkdir_p(const char *path, mg_err *err)
{
    struct stat st;
    char buf[PATH_MAX];
    /* The common case is an existing directory: one stat, no mkdir calls. */
    if (stat(path, &st) == 0 && S_ISDIR(st.st_mode)) return MG_OK;
    if (snprintf(buf, sizeof buf, "%s", path) >= (int)sizeof buf)
        return mg_err_set(err, MG_EUSER, "cache: path too long: %s", path);
    for (char *p = buf + 1; ; p++) {
        if (*p != '/' && *p != 0) continue;
        char c = *p;
        *p = 0;
        if (mkdir(buf, 0755) != 0 && errno != EEXIST)
            return mg_err_set(err, MG_EUSER, "cache: cannot create %s: %s", buf, strerror(errno));
        *p = c;
        if (!c) break;
    }
    if (stat(path, &st) != 0 || !S_ISDIR(st.st_mode))
        return mg_err_set(err, MG_EUSER, "cache: %s exists but is not a directory", path);
    return MG_OK;
}

int mg_cache_dir(char *buf, size_t n, mg_err *err)
{
    const char *env = getenv("MOEGEN_CACHE_DIR");
    const char *home = getenv("HOME");
    int w;
    if (env && *env)
        w = snprintf(buf, n, "%s", env);
    else if (home && *home)
        w = snprintf(buf, n, "%s/.cache/moegen", home);
    else
        return mg_err_set(err, MG_EUSER,
                          "cache: neither MOEGEN_CACHE_DIR nor HOME is set "
                          "(HINT: export MOEGEN_CACHE_DIR=/some/writable/dir)");
    if (w < 0 || (size_t)w >= n)
        return mg_err_set(err, MG_EUSER, "cache: directory path too long");
    return mg_mkdir_p(buf, err);
}

int mg_cache_entry_path(const char *dir, const char *key, char *buf, size_t n, mg_err *err)
{
    int w = snprintf(buf, n, "%s/%.2s/%s.cubin", dir, key, key);
    if (w < 0 || (size_t)w >= n)
        return mg_err_set(err, MG_EUSER, "cache: entry path too long under %s", dir);
    return MG_OK;
}

/* ---------------------------------------------------------------------------------------
 * Key */

int mg_cache_key(const char *src, size_t len, const char *arch, const char *const *opts,
                 int n_opts, char key[65], mg_err *err)
{
    static const char domain[] = "moegen-cubin-key-v1";
    char nv[32];
    unsigned char d[MG_SHA_LEN];
    mg_sha s;
    mg_nvrtc_version(nv, sizeof nv);
    if (mg_sha_init(&s))
        return mg_err_set(err, MG_EINTERNAL, "cache: sha256 init failed (out of memory?)");
    /* Every field is length-prefixed, so no two different inputs share a byte stream. */
    mg_sha_field(&s, domain, sizeof domain - 1);
    mg_sha_field(&s, MG_VERSION, strlen(MG_VERSION));
    mg_sha_field(&s, nv, strlen(nv));
    mg_sha_field(&s, arch, strlen(arch));
    mg_sha_field(&s, &n_opts, sizeof n_opts);
    for (int i = 0; i < n_opts; i++) mg_sha_field(&s, opts[i], strlen(opts[i]));
    mg_sha_field(&s, src, len);
    if (mg_sha_final(&s, d))
        return mg_err_set(err, MG_EINTERNAL, "cache: sha256 failed");
    mg_sha_hex(d, key);
    return MG_OK;
}

/* ---------------------------------------------------------------------------------------
 * Entry encoding */

static void put_le(unsigned char *p, uint64_t v, int bytes)
{
    for (int i = 0; i < bytes; i++) p[i] = (unsigned char)(v >> (8 * i));
}

static uint64_t get_le(const unsigned char *p, int bytes)
{
    uint64_t v = 0;
    for (int i = bytes - 1; i >= 0; i--) v = (v << 8) | p[i];
    return v;
}

/* Header for (name, payload) into hdr (MG_CACHE_HDR + MG_CACHE_NAME_MAX bytes); returns
 * its length, or 0 when the checksum could not be computed. */
static size_t entry_header(unsigned char *hdr, const char *name, const mg_blob *b)
{
    size_t nl = strlen(name);
    if (nl > MG_CACHE_NAME_MAX) nl = MG_CACHE_NAME_MAX;   /* the name only labels ls lines */
    memcpy(hdr, MG_CACHE_MAGIC, 8);
    put_le(hdr + 8, b->size, 8);
    if (mg_sha256(b->data, b->size, hdr + 16)) return 0;
    put_le(hdr + 48, nl, 4);
    memcpy(hdr + MG_CACHE_HDR, name, nl);
    return MG_CACHE_HDR + nl;
}

/* What a parsed header says; a pointer into the file buffer, not a copy. */
typedef struct entry_view {
    uint64_t size;
    const unsigned char *sum;
    const char *name;
    size_t name_len;
    const unsigned char *payload;
} entry_view;

/* Checks the header against the file length; returns NULL or why it is corrupt. */
static const char *entry_parse(const unsigned char *f, size_t n, entry_view *v)
{
    if (n < MG_CACHE_HDR) return "shorter than the header";
    if (memcmp(f, MG_CACHE_MAGIC, 8)) return "bad magic";
    v->size = get_le(f + 8, 8);
    v->sum = f + 16;
    v->name_len = get_le(f + 48, 4);
    if (v->name_len > MG_CACHE_NAME_MAX) return "name length out of range";
    v->name = (const char *)f + MG_CACHE_HDR;
    if (v->size > n || MG_CACHE_HDR + v->name_len + v->size != n)
        return "payload size does not match the file size (truncated?)";
    v->payload = f + MG_CACHE_HDR + v->name_len;
    return NULL;
}

/* ---------------------------------------------------------------------------------------
 * Files */

/* Reads a whole regular file; returns 0, or -1 with errno set. */
static int read_file(const char *path, unsigned char **out, size_t *n)
{
    struct stat st;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return -1;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        errno = EINVAL;
        return -1;
    }
    size_t want = (size_t)st.st_size, got = 0;
    unsigned char *buf = malloc(want ? want : 1);
    while (buf && got < want) {
        ssize_t r = read(fd, buf + got, want - got);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) break;   /* shrunk under us: the parse below will call it truncated */
        got += (size_t)r;
    }
    close(fd);
    if (!buf) { errno = ENOMEM; return -1; }
    *out = buf;
    *n = got;
    return 0;
}

/* ---------------------------------------------------------------------------------------
 * Get and put */

int mg_cache_get(const char *dir, const char *key, mg_blob *out)
{
    char path[PATH_MAX];
    unsigned char *f, sum[MG_SHA_LEN];
    size_t n;
    entry_view v;
    if (mg_cache_entry_path(dir, key, path, sizeof path, NULL)) return 0;
    if (read_file(path, &f, &n)) {
        if (errno != ENOENT) MG_DEBUG("cache: cannot read %s: %s; rebuilding", path, strerror(errno));
        return 0;
    }
    const char *why = entry_parse(f, n, &v);
    if (!why && mg_sha256(v.payload, v.size, sum)) why = "checksum could not be computed";
    if (!why && memcmp(sum, v.sum, MG_SHA_LEN)) why = "payload checksum mismatch";
    if (!why && !(out->data = malloc(v.size ? v.size : 1))) why = "out of memory";
    if (why) {
        MG_DEBUG("cache: corrupt entry %s: %s; rebuilding", path, why);
        free(f);
        return 0;
    }
    memcpy(out->data, v.payload, v.size);
    out->size = v.size;
    free(f);
    return 1;
}

int mg_cache_put(const char *dir, const char *key, const char *name, const mg_blob *b,
                 mg_err *err)
{
    char sub[PATH_MAX], final[PATH_MAX];
    unsigned char hdr[MG_CACHE_HDR + MG_CACHE_NAME_MAX];
    if (snprintf(sub, sizeof sub, "%s/%.2s", dir, key) >= (int)sizeof sub)
        return mg_err_set(err, MG_EUSER, "cache: path too long under %s", dir);
    int rc = mg_mkdir_p(sub, err);
    if (rc) return rc;
    if ((rc = mg_cache_entry_path(dir, key, final, sizeof final, err))) return rc;
    size_t hl = entry_header(hdr, name, b);
    if (!hl) return mg_err_set(err, MG_EINTERNAL, "cache: sha256 failed");
    /* Concurrent writers of one key each rename a complete file into place: the last wins,
     * with identical bytes. */
    const void *parts[2] = {hdr, b->data};
    size_t lens[2] = {hl, b->size};
    return mg_write_atomic(final, parts, lens, 2, err);
}

/* ---------------------------------------------------------------------------------------
 * ls and clear: walk <dir>/<xx>/ in sorted order, so the output is reproducible. */

static int is_shard(const struct dirent *d)
{
    const char *s = d->d_name;
    return strlen(s) == 2 && strspn(s, "0123456789abcdef") == 2;
}

static int is_entry(const char *s)
{
    size_t n = strlen(s);
    return n == 64 + 6 && strspn(s, "0123456789abcdef") == 64 && !strcmp(s + 64, ".cubin");
}

static int is_temp(const char *s)
{
    return strstr(s, ".cubin.tmp.") != NULL;
}

static void format_age(char *buf, size_t n, time_t mtime)
{
    long s = (long)(time(NULL) - mtime);
    if (s < 0) s = 0;
    if (s < 120) snprintf(buf, n, "%lds", s);
    else if (s < 2 * 3600) snprintf(buf, n, "%ldm", s / 60);
    else if (s < 2 * 86400) snprintf(buf, n, "%ldh", s / 3600);
    else snprintf(buf, n, "%ldd", s / 86400);
}

/* One ls line: key (16 hex), payload size, age, kernel name. A corrupt entry still gets a
 * line, marked, so `ls` shows what `clear` would remove. */
static void ls_line(FILE *fp, const char *path, const char *fname)
{
    unsigned char *f = NULL;
    size_t n = 0;
    entry_view v;
    struct stat st;
    char age[32] = "?";
    if (stat(path, &st) == 0) format_age(age, sizeof age, st.st_mtime);
    if (read_file(path, &f, &n) == 0 && !entry_parse(f, n, &v))
        fprintf(fp, "%.16s %10llu %6s %.*s\n", fname, (unsigned long long)v.size, age,
                (int)v.name_len, v.name);
    else
        fprintf(fp, "%.16s %10llu %6s (corrupt)\n", fname, (unsigned long long)n, age);
    free(f);
}

/* Calls fn on every file in every shard of dir; returns the number of calls that returned
 * 1, or -1 with err set. */
typedef int (*walk_fn)(const char *path, const char *fname, void *ctx);

static int walk_shard(const char *shard, walk_fn fn, void *ctx)
{
    struct dirent **ents;
    char path[PATH_MAX];
    int count = 0, m = scandir(shard, &ents, NULL, alphasort);
    for (int j = 0; j < m; j++) {
        if (snprintf(path, sizeof path, "%s/%s", shard, ents[j]->d_name) < (int)sizeof path)
            count += fn(path, ents[j]->d_name, ctx);
        free(ents[j]);
    }
    if (m >= 0) free(ents);
    return count;
}

static int cache_walk(walk_fn fn, void *ctx, int rm_shards, mg_err *err)
{
    char dir[PATH_MAX], shard[PATH_MAX + 4];
    struct dirent **shards;
    int rc = mg_cache_dir(dir, sizeof dir, err);
    if (rc) return -1;
    int m = scandir(dir, &shards, is_shard, alphasort);
    if (m < 0) {
        mg_err_set(err, MG_EUSER, "cache: cannot list %s: %s", dir, strerror(errno));
        return -1;
    }
    int count = 0;
    for (int i = 0; i < m; i++) {
        snprintf(shard, sizeof shard, "%s/%.2s", dir, shards[i]->d_name);
        count += walk_shard(shard, fn, ctx);
        if (rm_shards) rmdir(shard);   /* fails harmlessly when something else is inside */
        free(shards[i]);
    }
    free(shards);
    return count;
}

static int ls_one(const char *path, const char *fname, void *ctx)
{
    if (!is_entry(fname)) return 0;
    ls_line(ctx, path, fname);
    return 1;
}

static int clear_one(const char *path, const char *fname, void *ctx)
{
    (void)ctx;
    if (is_entry(fname)) return unlink(path) == 0;
    /* A temp file is what a killed writer left behind; it is never an entry, so not counted. */
    if (is_temp(fname)) unlink(path);
    return 0;
}

int mg_cache_ls(void *file, mg_err *err)
{
    return cache_walk(ls_one, file ? file : stdout, 0, err);
}

int mg_cache_clear(mg_err *err)
{
    return cache_walk(clear_one, NULL, 1, err);
}
