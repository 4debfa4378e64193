/* mg_tok_bpe: GPT-2 byte-level BPE: loading encoder.json + vocab.bpe, the pre-tokenizer,
 * merging by rank with a per-piece cache, and decoding. */
#include "mg_tok.h"
#include "mg_tokfile.h"
#include "mg_unicode.h"

#include <jansson.h>
#include <stdlib.h>
#include <string.h>

/* Pieces longer than this are merged but not cached (they are rare and rarely repeat). */
enum { CACHE_PIECE_MAX = 128, CACHE_IDS_MAX = 1 << 23 };

/* ---------------------------------------------------------------------------------------
 * The pre-tokenizer: GPT-2's regex, one alternative at a time, in the regex's order. */

static size_t cp_at(const unsigned char *s, size_t n, size_t i, uint32_t *cp)
{
    if (s[i] < 0x80) { *cp = s[i]; return 1; }
    return mg_utf8_next(s + i, n - i, cp);
}

static int is_other(uint32_t cp) { return !mg_uni_is_space(cp) && !mg_uni_is_letter(cp) && !mg_uni_is_number(cp); }

/* End of a run of code points in class, from i; i itself if there is none. */
static size_t run_of(const unsigned char *s, size_t n, size_t i, int (*cls)(uint32_t))
{
    while (i < n) {
        uint32_t cp;
        size_t len = cp_at(s, n, i, &cp);
        if (!cls(cp)) break;
        i += len;
    }
    return i;
}

size_t mg_gpt2_piece_end(const unsigned char *s, size_t n, size_t i)
{
    /* 's|'t|'re|'ve|'m|'ll|'d */
    if (s[i] == '\'' && i + 1 < n) {
        unsigned char a = s[i + 1], b = i + 2 < n ? s[i + 2] : 0;
        if (a == 's' || a == 't' || a == 'm' || a == 'd') return i + 2;
        if ((a == 'r' && b == 'e') || (a == 'v' && b == 'e') || (a == 'l' && b == 'l')) return i + 3;
    }
    /*  ?\p{L}+ |  ?\p{N}+ |  ?[^\s\p{L}\p{N}]+  */
    static int (*const cls[3])(uint32_t) = {mg_uni_is_letter, mg_uni_is_number, is_other};
    size_t j = i + (s[i] == ' ');
    for (int k = 0; k < 3 && j < n; k++) {
        size_t e = run_of(s, n, j, cls[k]);
        if (e > j) return e;
    }
    /* \s+(?!\S) | \s+ : a whitespace run gives back its last character when a non-space
     * follows, so that character can lead the next piece (" word"). */
    size_t e = i, last = i;
    while (e < n) {
        uint32_t cp;
        size_t len = cp_at(s, n, e, &cp);
        if (!mg_uni_is_space(cp)) break;
        last = e;
        e += len;
    }
    if (e == n || last == i) return e;
    return last;
}

/* ---------------------------------------------------------------------------------------
 * Loading */

/* GPT-2's bytes_to_unicode(): printable Latin-1 bytes stand for themselves, the other 68
 * bytes for U+0100.. in byte order, so every token is a printable string. */
static void byte_to_unicode(uint32_t b2u[256])
{
    uint32_t next = 256;
    for (uint32_t b = 0; b < 256; b++) {
        int printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
        b2u[b] = printable ? b : next++;
    }
}

static size_t utf8_put(uint32_t cp, char *out)
{
    if (cp < 0x80) { out[0] = (char)cp; return 1; }
    if (cp < 0x800) { out[0] = (char)(0xC0 | cp >> 6); out[1] = (char)(0x80 | (cp & 0x3F)); return 2; }
    out[0] = (char)(0xE0 | cp >> 12);
    out[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
    out[2] = (char)(0x80 | (cp & 0x3F));
    return 3;
}

static const char *const BPE_HINT = "compare it with SHA256SUMS in the data directory";

static int load_encoder(mg_tok_bpe *b, const char *path, mg_hmap *str2id, mg_err *err)
{
    json_error_t je;
    json_t *root = json_load_file(path, 0, &je);
    if (!root) {
        if (je.line < 0) return mg_err_set(err, MG_EUSER, "%s: %s", path, je.text);
        return mg_err_set(err, MG_EUSER, "%s:%d: JSON error: %s (%s)", path, je.line, je.text, BPE_HINT);
    }
    if (!json_is_object(root) || !json_object_size(root)) {
        json_decref(root);
        return mg_err_set(err, MG_EUSER, "%s: expected a JSON object of token -> id (%s)", path, BPE_HINT);
    }
    size_t n = json_object_size(root);
    uint32_t u2b[324];
    uint32_t b2u[256];
    byte_to_unicode(b2u);
    for (uint32_t i = 0; i < 324; i++) u2b[i] = UINT32_MAX;
    for (uint32_t i = 0; i < 256; i++) u2b[b2u[i]] = i;
    /* Every token's raw bytes, in id order: first gather (id, bytes) then lay them out. */
    char **tok = calloc(n, sizeof *tok);
    size_t *len = calloc(n, sizeof *len);
    int rc = (!tok || !len) ? mg_err_set(err, MG_EINTERNAL, "%s: out of memory", path) : MG_OK;
    const char *key;
    json_t *val;
    json_object_foreach(root, key, val) {
        if (rc) break;
        json_int_t id = json_is_integer(val) ? json_integer_value(val) : -1;
        if (id < 0 || (size_t)id >= n || tok[id]) {
            rc = mg_err_set(err, MG_EUSER, "%s: token \"%s\": id must be a unique integer in [0, %zu) (%s)", path, key,
                            n, BPE_HINT);
            break;
        }
        size_t klen = strlen(key), k = 0;
        if (!(tok[id] = malloc(klen + 1))) { rc = mg_err_set(err, MG_EINTERNAL, "%s: out of memory", path); break; }
        for (size_t i = 0; i < klen;) {
            uint32_t cp;
            i += mg_utf8_next((const unsigned char *)key + i, klen - i, &cp);
            if (cp >= 324 || u2b[cp] == UINT32_MAX) {
                rc = mg_err_set(err, MG_EUSER, "%s: token \"%s\" (id %lld) is not byte-level BPE (%s)", path, key,
                                (long long)id, BPE_HINT);
                break;
            }
            tok[id][k++] = (char)u2b[cp];
        }
        tok[id][k] = 0;
        len[id] = k;
        if (!rc && mg_hmap_put(str2id, key, klen, (uint32_t)id)) rc = mg_err_set(err, MG_EINTERNAL, "out of memory");
    }
    json_decref(root);
    size_t total = 0;
    for (size_t i = 0; !rc && i < n; i++) total += len[i];
    if (!rc && (!(b->bytes = malloc(total + 1)) || !(b->off = malloc((n + 1) * sizeof *b->off))))
        rc = mg_err_set(err, MG_EINTERNAL, "%s: out of memory", path);
    for (size_t i = 0, o = 0; !rc && i < n; i++) {
        b->off[i] = o;
        memcpy(b->bytes + o, tok[i], len[i]);
        o += len[i];
        b->off[i + 1] = o;
    }
    for (size_t i = 0; tok && i < n; i++) free(tok[i]);
    free(tok);
    free(len);
    if (rc) return rc;
    b->vocab = (uint32_t)n;
    for (uint32_t i = 0; i < 256; i++) {
        char s[4];
        size_t sl = utf8_put(b2u[i], s);
        if (!mg_hmap_get(str2id, s, sl, &b->byte_tok[i]))
            return mg_err_set(err, MG_EUSER, "%s: no token for byte 0x%02X (%s)", path, i, BPE_HINT);
    }
    if (!mg_hmap_get(str2id, "<|endoftext|>", 13, &b->eot)) b->eot = UINT32_MAX;
    return MG_OK;
}

static int load_merges(mg_tok_bpe *b, const char *path, const mg_hmap *str2id, mg_err *err)
{
    char *buf;
    size_t n;
    int rc = mg_read_file(path, BPE_HINT, &buf, &n, err);
    if (rc) return rc;
    size_t lines = 1;
    for (size_t i = 0; i < n; i++) lines += buf[i] == '\n';
    if (!(b->merged = malloc(lines * sizeof *b->merged))) {
        free(buf);
        return mg_err_set(err, MG_EINTERNAL, "%s: out of memory", path);
    }
    char *cat = malloc(n + 1);
    size_t line = 0;
    for (size_t i = 0; !rc && i < n;) {
        line++;
        char *s = buf + i, *nl = memchr(s, '\n', n - i);
        size_t end = nl ? (size_t)(nl - buf) : n;
        i = end + 1;
        size_t len = (size_t)(buf + end - s);
        if (len && s[len - 1] == '\r') len--;
        if (!len || (line == 1 && !strncmp(s, "#version", 8))) continue;
        char *sp = memchr(s, ' ', len);
        uint32_t l, r, m, rank = b->n_merges;
        if (!cat) { rc = mg_err_set(err, MG_EINTERNAL, "%s: out of memory", path); break; }
        if (!sp || sp == s || sp + 1 == s + len || memchr(sp + 1, ' ', (size_t)(s + len - sp - 1))) {
            rc = mg_err_set(err, MG_EUSER, "%s:%zu: expected two tokens separated by one space (%s)", path, line,
                            BPE_HINT);
            break;
        }
        size_t ll = (size_t)(sp - s), rl = len - ll - 1;
        memcpy(cat, s, ll);
        memcpy(cat + ll, sp + 1, rl);
        if (!mg_hmap_get(str2id, s, ll, &l) || !mg_hmap_get(str2id, sp + 1, rl, &r) ||
            !mg_hmap_get(str2id, cat, ll + rl, &m)) {
            rc = mg_err_set(err, MG_EUSER, "%s:%zu: merge \"%.*s\" names a token missing from encoder.json (%s)", path,
                            line, (int)len, s, BPE_HINT);
            break;
        }
        uint32_t key[2] = {l, r}, old;
        if (mg_hmap_get(&b->rank, key, sizeof key, &old)) continue;  /* the first rank wins */
        if (mg_hmap_put(&b->rank, key, sizeof key, rank)) rc = mg_err_set(err, MG_EINTERNAL, "%s: out of memory", path);
        b->merged[b->n_merges++] = m;
    }
    free(cat);
    free(buf);
    return rc;
}

int mg_tok_bpe_load(mg_tok_bpe *b, const char *encoder_json, const char *vocab_bpe, mg_err *err)
{
    memset(b, 0, sizeof *b);
    mg_hmap_init(&b->rank);
    mg_hmap_init(&b->cache);
    mg_hmap str2id;
    mg_hmap_init(&str2id);
    int rc = load_encoder(b, encoder_json, &str2id, err);
    if (!rc) rc = load_merges(b, vocab_bpe, &str2id, err);
    mg_hmap_free(&str2id);
    if (rc) mg_tok_bpe_free(b);
    return rc;
}

void mg_tok_bpe_free(mg_tok_bpe *b)
{
    free(b->bytes);
    free(b->off);
    free(b->merged);
    mg_hmap_free(&b->rank);
    mg_hmap_free(&b->cache);
    mg_u32v_free(&b->cache_ids);
    mg_u32v_free(&b->work);
    memset(b, 0, sizeof *b);
}

/* ---------------------------------------------------------------------------------------
 * Encoding */

static uint32_t pair_rank(const mg_tok_bpe *b, uint32_t l, uint32_t r)
{
    uint32_t key[2] = {l, r}, rank;
    return mg_hmap_get(&b->rank, key, sizeof key, &rank) ? rank : UINT32_MAX;
}

/* Merges the piece's byte tokens in b->work (symbols + ranks of adjacent pairs), lowest rank
 * first, every occurrence of that pair left to right, as GPT-2's bpe() does. A merged token
 * only ever takes part in later (higher-rank) merges, so one pass per rank is exact. */
static int merge_piece(mg_tok_bpe *b, const unsigned char *p, size_t m)
{
    /* work holds 3 arrays of m: symbols, ranks of (sym[i], sym[i+1]), "changed" flags. */
    b->work.n = 0;
    if (mg_u32v_reserve(&b->work, 3 * m)) return -1;
    uint32_t *sym = b->work.v, *rank = sym + m, *chg = rank + m;
    size_t k = m;
    for (size_t i = 0; i < m; i++) sym[i] = b->byte_tok[p[i]];
    for (size_t i = 0; i + 1 < k; i++) rank[i] = pair_rank(b, sym[i], sym[i + 1]);
    while (k > 1) {
        uint32_t best = UINT32_MAX;
        for (size_t i = 0; i + 1 < k; i++)
            if (rank[i] < best) best = rank[i];
        if (best == UINT32_MAX) break;
        size_t j = 0;
        for (size_t i = 0; i < k; j++) {
            if (i + 1 < k && rank[i] == best) {
                sym[j] = b->merged[best];
                chg[j] = 1;
                i += 2;
            } else {
                sym[j] = sym[i];
                /* rank[i] still describes (sym[i], sym[i+1]) if neither side merged. */
                rank[j] = rank[i];
                chg[j] = 0;
                i += 1;
            }
        }
        k = j;
        for (size_t i = 0; i + 1 < k; i++)
            if (chg[i] || chg[i + 1]) rank[i] = pair_rank(b, sym[i], sym[i + 1]);
    }
    b->work.n = k;
    return 0;
}

static int encode_piece(mg_tok_bpe *b, const unsigned char *p, size_t m, mg_u32v *out)
{
    uint32_t at;
    if (m <= CACHE_PIECE_MAX && mg_hmap_get(&b->cache, p, m, &at)) {
        const uint32_t *c = b->cache_ids.v + at;
        if (mg_u32v_reserve(out, out->n + c[0])) return -1;
        memcpy(out->v + out->n, c + 1, c[0] * sizeof *c);
        out->n += c[0];
        return 0;
    }
    if (merge_piece(b, p, m)) return -1;
    size_t k = b->work.n;
    if (mg_u32v_reserve(out, out->n + k)) return -1;
    memcpy(out->v + out->n, b->work.v, k * sizeof *out->v);
    out->n += k;
    if (m > CACHE_PIECE_MAX) return 0;
    if (b->cache_ids.n + k + 1 > CACHE_IDS_MAX) {
        mg_hmap_clear(&b->cache);
        b->cache_ids.n = 0;
    }
    at = (uint32_t)b->cache_ids.n;
    if (mg_u32v_reserve(&b->cache_ids, at + k + 1)) return -1;
    b->cache_ids.v[at] = (uint32_t)k;
    memcpy(b->cache_ids.v + at + 1, b->work.v, k * sizeof *out->v);
    b->cache_ids.n += k + 1;
    return mg_hmap_put(&b->cache, p, m, at);
}

int mg_tok_bpe_encode(mg_tok_bpe *b, const char *text, size_t n, mg_u32v *out, mg_err *err)
{
    const unsigned char *s = (const unsigned char *)text;
    for (size_t i = 0; i < n;) {
        size_t e = mg_gpt2_piece_end(s, n, i);
        if (encode_piece(b, s + i, e - i, out)) return mg_err_set(err, MG_EINTERNAL, "gpt2 tokenizer: out of memory");
        i = e;
    }
    return MG_OK;
}

int mg_tok_bpe_decode(const mg_tok_bpe *b, const uint32_t *ids, size_t n, mg_sb *out, mg_err *err)
{
    for (size_t i = 0; i < n; i++) {
        if (ids[i] >= b->vocab)
            return mg_err_set(err, MG_EUSER, "gpt2 tokenizer: id %u at position %zu is outside the vocabulary (%u)",
                              ids[i], i, b->vocab);
        mg_sb_putn(out, b->bytes + b->off[ids[i]], b->off[ids[i] + 1] - b->off[ids[i]]);
    }
    return MG_OK;
}

int mg_tok_bpe_save_vocab(const mg_tok_bpe *b, const char *path, mg_err *err)
{
    uint32_t b2u[256];
    byte_to_unicode(b2u);
    mg_sb sb;
    mg_sb_init(&sb);
    for (uint32_t i = 0; i < b->vocab; i++) {
        for (size_t j = b->off[i]; j < b->off[i + 1]; j++) {
            char u[4];
            mg_sb_putn(&sb, u, utf8_put(b2u[(unsigned char)b->bytes[j]], u));
        }
        mg_sb_putn(&sb, "\n", 1);
    }
    const void *part = sb.buf;
    int rc = mg_write_atomic(path, &part, &sb.len, 1, err);
    mg_sb_free(&sb);
    return rc;
}
