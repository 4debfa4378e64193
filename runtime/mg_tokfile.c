/* mg_tokfile: writing token files atomically, mapping and verifying them (layout: mg_tokfile.h). */
#include "mg_tokfile.h"
#include "mg_sha.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

/* The tokens are used in place from the mapping, so the host must match the file. */
#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "mg_tokfile maps little-endian token files in place; this host is not little-endian"
#endif

/* ---------------------------------------------------------------------------------------
 * Writing */

static void put32(unsigned char *p, uint32_t v) { for (int i = 0; i < 4; i++) p[i] = (unsigned char)(v >> 8 * i); }
static void put64(unsigned char *p, uint64_t v) { for (int i = 0; i < 8; i++) p[i] = (unsigned char)(v >> 8 * i); }
static uint32_t get32(const unsigned char *p) { uint32_t v = 0; for (int i = 3; i >= 0; i--) v = v << 8 | p[i]; return v; }
static uint64_t get64(const unsigned char *p) { uint64_t v = 0; for (int i = 7; i >= 0; i--) v = v << 8 | p[i]; return v; }

/* The checksum covers the header (minus the checksum field) and the tokens. */
static int checksum(const unsigned char *hdr, const void *tok, size_t bytes, unsigned char out[MG_SHA_LEN])
{
    mg_sha s;
    if (mg_sha_init(&s)) return -1;
    mg_sha_update(&s, hdr, 48);
    mg_sha_update(&s, hdr + 80, MG_TOKFILE_HDR - 80);
    mg_sha_update(&s, tok, bytes);
    return mg_sha_final(&s, out);
}

int mg_tokfile_write(const char *path, const mg_tokfile_info *info, const uint32_t *tokens, size_t n, mg_err *err)
{
    if (!info->vocab) return mg_err_set(err, MG_EINTERNAL, "%s: vocabulary size 0", path);
    uint32_t width = info->vocab <= 65536 ? 2 : 4;
    for (size_t i = 0; i < n; i++)
        if (tokens[i] >= info->vocab)
            return mg_err_set(err, MG_EINTERNAL, "%s: token %u at %zu is outside the vocabulary (%u)", path,
                              tokens[i], i, info->vocab);
    size_t bytes = n * width;
    const void *payload = tokens;
    uint16_t *narrow = NULL;
    if (width == 2 && n) {
        if (!(narrow = malloc(bytes))) return mg_err_set(err, MG_EINTERNAL, "%s: out of memory", path);
        for (size_t i = 0; i < n; i++) narrow[i] = (uint16_t)tokens[i];
        payload = narrow;
    }
    unsigned char hdr[MG_TOKFILE_HDR];
    memset(hdr, 0, sizeof hdr);
    memcpy(hdr, MG_TOKFILE_MAGIC, 8);
    put32(hdr + 8, MG_TOKFILE_VERSION);
    put32(hdr + 12, MG_TOKFILE_HDR);
    put32(hdr + 16, info->vocab);
    put32(hdr + 20, width);
    put64(hdr + 24, n);
    put64(hdr + 32, info->n_words);
    put64(hdr + 40, info->n_unk);
    memcpy(hdr + 80, info->tokenizer, strnlen(info->tokenizer, 15));
    if (strlen(info->corpus) < 32) memcpy(hdr + 96, info->corpus, strlen(info->corpus));
    int rc;
    if (checksum(hdr, payload, bytes, hdr + 48)) {
        rc = mg_err_set(err, MG_EINTERNAL, "%s: sha256 failed", path);
    } else {
        const void *parts[2] = {hdr, payload};
        size_t lens[2] = {sizeof hdr, bytes};
        rc = mg_write_atomic(path, parts, lens, bytes ? 2 : 1, err);
    }
    free(narrow);
    return rc;
}

/* ---------------------------------------------------------------------------------------
 * Reading */

/* "rerun: moegen data --corpus C --tokenizer T -o DIR" from a readable header. */
static void rerun_hint(const char *path, const unsigned char *hdr, char *buf, size_t n)
{
    char tokz[17] = {0}, corpus[33] = {0}, dir[PATH_MAX];
    memcpy(tokz, hdr + 80, 16);
    memcpy(corpus, hdr + 96, 32);
    const char *slash = strrchr(path, '/');
    if (slash) snprintf(dir, sizeof dir, "%.*s", (int)(slash - path), path);
    else snprintf(dir, sizeof dir, ".");
    snprintf(buf, n, "rerun: moegen data --corpus %s%s%s -o %s", corpus[0] ? corpus : "NAME",
             tokz[0] ? " --tokenizer " : "", tokz, dir);
}

int mg_tokfile_open(const char *path, const char *hint, mg_tokfile *tf, mg_err *err)
{
    memset(tf, 0, sizeof *tf);
    if (!hint) hint = "make it with: moegen data --corpus NAME";
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return mg_err_set(err, MG_EUSER, "%s: cannot open: %s (%s)", path, strerror(errno), hint);
    struct stat st;
    if (fstat(fd, &st) || !S_ISREG(st.st_mode)) {
        close(fd);
        return mg_err_set(err, MG_EUSER, "%s: not a regular file (%s)", path, hint);
    }
    size_t size = (size_t)st.st_size;
    if (size < MG_TOKFILE_HDR) {
        close(fd);
        return mg_err_set(err, MG_EUSER, "%s: truncated: %zu bytes, less than the %d-byte header (%s)", path, size,
                          MG_TOKFILE_HDR, hint);
    }
    void *map = mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0);
    int e = errno;
    close(fd);
    if (map == MAP_FAILED) return mg_err_set(err, MG_EUSER, "%s: cannot map: %s", path, strerror(e));
    const unsigned char *h = map;
    char rerun[PATH_MAX + 128];
    rerun_hint(path, h, rerun, sizeof rerun);
    int rc = MG_OK;
    uint32_t version = get32(h + 8), hdr = get32(h + 12), vocab = get32(h + 16), width = get32(h + 20);
    uint64_t n = get64(h + 24);
    unsigned char sum[MG_SHA_LEN];
    if (memcmp(h, MG_TOKFILE_MAGIC, 8))
        rc = mg_err_set(err, MG_EUSER, "%s: not a moegen token file (bad magic; %s)", path, hint);
    else if (version != MG_TOKFILE_VERSION)
        rc = mg_err_set(err, MG_EUSER, "%s: token file version %u, this moegen reads version %d (%s)", path, version,
                        MG_TOKFILE_VERSION, rerun);
    else if (hdr != MG_TOKFILE_HDR || (width != 2 && width != 4) || !vocab || (width == 2 && vocab > 65536))
        rc = mg_err_set(err, MG_EUSER, "%s: corrupt header (header %u bytes, token width %u, vocab %u; %s)", path,
                        hdr, width, vocab, rerun);
    else if (n > (size - MG_TOKFILE_HDR) / width || size != MG_TOKFILE_HDR + n * width)
        rc = mg_err_set(err, MG_EUSER, "%s: %zu bytes, the header says %d + %llu tokens x %u bytes "
                        "(file corrupt or truncated; %s)", path, size, MG_TOKFILE_HDR, (unsigned long long)n, width,
                        rerun);
    else if (checksum(h, h + MG_TOKFILE_HDR, size - MG_TOKFILE_HDR, sum))
        rc = mg_err_set(err, MG_EINTERNAL, "%s: sha256 failed", path);
    else if (memcmp(sum, h + 48, MG_SHA_LEN))
        rc = mg_err_set(err, MG_EUSER, "%s: checksum mismatch (file corrupt or truncated; %s)", path, rerun);
    if (rc) {
        munmap(map, size);
        return rc;
    }
    tf->info.vocab = vocab;
    tf->info.width = width;
    tf->info.n_tokens = n;
    tf->info.n_words = get64(h + 32);
    tf->info.n_unk = get64(h + 40);
    memcpy(tf->info.tokenizer, h + 80, 15);
    memcpy(tf->info.corpus, h + 96, 31);
    tf->map = map;
    tf->map_len = size;
    tf->tokens = h + MG_TOKFILE_HDR;
    return MG_OK;
}

void mg_tokfile_close(mg_tokfile *tf)
{
    if (tf->map) munmap(tf->map, tf->map_len);
    memset(tf, 0, sizeof *tf);
}
