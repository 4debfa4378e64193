/* mg_sha: sha256 through OpenSSL's EVP interface (never a hand-written sha256). */
#include "mg_sha.h"

#include <openssl/evp.h>
#include <stdint.h>

int mg_sha_init(mg_sha *s)
{
    EVP_MD_CTX *c = EVP_MD_CTX_new();
    s->ctx = c;
    if (!c) return -1;
    if (EVP_DigestInit_ex(c, EVP_sha256(), NULL) != 1) {
        EVP_MD_CTX_free(c);
        s->ctx = NULL;
        return -1;
    }
    return 0;
}

void mg_sha_update(mg_sha *s, const void *p, size_t n)
{
    /* A failed init left ctx NULL; mg_sha_final reports it, so updates just skip. */
    if (s->ctx && n) EVP_DigestUpdate(s->ctx, p, n);
}

void mg_sha_field(mg_sha *s, const void *p, size_t n)
{
    unsigned char len[8];
    uint64_t v = n;
    for (int i = 0; i < 8; i++) len[i] = (unsigned char)(v >> (8 * i));
    mg_sha_update(s, len, sizeof len);
    mg_sha_update(s, p, n);
}

int mg_sha_final(mg_sha *s, unsigned char out[MG_SHA_LEN])
{
    unsigned int n = 0;
    int ok = s->ctx && EVP_DigestFinal_ex(s->ctx, out, &n) == 1 && n == MG_SHA_LEN;
    EVP_MD_CTX_free(s->ctx);
    s->ctx = NULL;
    return ok ? 0 : -1;
}

int mg_sha256(const void *p, size_t n, unsigned char out[MG_SHA_LEN])
{
    mg_sha s;
    if (mg_sha_init(&s)) return -1;
    mg_sha_update(&s, p, n);
    return mg_sha_final(&s, out);
}

void mg_sha_hex(const unsigned char d[MG_SHA_LEN], char hex[MG_SHA_HEX])
{
    static const char digits[] = "0123456789abcdef";
    for (int i = 0; i < MG_SHA_LEN; i++) {
        hex[2 * i] = digits[d[i] >> 4];
        hex[2 * i + 1] = digits[d[i] & 15];
    }
    hex[2 * MG_SHA_LEN] = 0;
}
