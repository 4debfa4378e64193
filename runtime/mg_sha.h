/* mg_sha: sha256 through OpenSSL's EVP interface, streaming or one-shot, hex or raw. */
#ifndef MG_SHA_H
#define MG_SHA_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

enum { MG_SHA_LEN = 32, MG_SHA_HEX = 65 };   /* raw bytes; hex chars + NUL */

/* Streaming context. The EVP context is opaque, so we only hold a pointer to it. */
typedef struct mg_sha {
    void *ctx;   /* EVP_MD_CTX *, NULL after a failed init */
} mg_sha;

/* Returns 0, or -1 when OpenSSL could not allocate (the context is then unusable). */
int mg_sha_init(mg_sha *s);
void mg_sha_update(mg_sha *s, const void *p, size_t n);
/* Feeds the length first, then the bytes, so ("ab","c") and ("a","bc") hash differently. */
void mg_sha_field(mg_sha *s, const void *p, size_t n);
/* Finishes and frees the context; out gets MG_SHA_LEN bytes. Returns 0 or -1. */
int mg_sha_final(mg_sha *s, unsigned char out[MG_SHA_LEN]);

/* One-shot digest of a buffer. Returns 0 or -1. */
int mg_sha256(const void *p, size_t n, unsigned char out[MG_SHA_LEN]);
/* Lower-case hex of a raw digest into hex[MG_SHA_HEX]. */
void mg_sha_hex(const unsigned char d[MG_SHA_LEN], char hex[MG_SHA_HEX]);

#ifdef __cplusplus
}
#endif
#endif
