/* mg_tok_word: the word-level tokenizer (PyTorch word_language_model convention, see mg_tok.h). */
#include "mg_tok.h"
#include "mg_tokfile.h"
#include "mg_unicode.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char EOS[] = "<eos>", UNK[] = "<unk>";

/* Called once per word and once per line end (with "<eos>"); nonzero stops the scan. */
typedef int (*word_fn)(void *ctx, const char *w, size_t len);

static int is_space_at(const unsigned char *s, size_t n, size_t i, size_t *len)
{
    unsigned c = s[i];
    *len = 1;
    if (c < 0x80) return (c >= 0x09 && c <= 0x0D) || (c >= 0x1C && c <= 0x20);
    uint32_t cp;
    *len = mg_utf8_next(s + i, n - i, &cp);
    return mg_uni_is_pyspace(cp);
}

/* Python's `for line in open(path)` (universal newlines) + `line.split() + ['<eos>']`. */
static int scan_words(const char *text, size_t n, word_fn fn, void *ctx)
{
    const unsigned char *s = (const unsigned char *)text;
    size_t i = 0, word = 0, line = 0;
    int in_word = 0, rc;
    while (i < n) {
        size_t len;
        if (s[i] == '\n' || s[i] == '\r') {
            if (in_word && (rc = fn(ctx, text + word, i - word))) return rc;
            in_word = 0;
            if ((rc = fn(ctx, EOS, sizeof EOS - 1))) return rc;
            i += (s[i] == '\r' && i + 1 < n && s[i + 1] == '\n') ? 2 : 1;
            line = i;
            continue;
        }
        if (is_space_at(s, n, i, &len)) {
            if (in_word && (rc = fn(ctx, text + word, i - word))) return rc;
            in_word = 0;
        } else if (!in_word) {
            in_word = 1;
            word = i;
        }
        i += len;
    }
    if (in_word && (rc = fn(ctx, text + word, n - word))) return rc;
    if (line < n && (rc = fn(ctx, EOS, sizeof EOS - 1))) return rc;
    return 0;
}

void mg_tok_word_init(mg_tok_word *w)
{
    mg_hmap_init(&w->map);
    w->eos = w->unk = UINT32_MAX;
}

void mg_tok_word_free(mg_tok_word *w)
{
    mg_hmap_free(&w->map);
    mg_tok_word_init(w);
}

static int add_word(void *ctx, const char *s, size_t len)
{
    mg_hmap *m = ctx;
    uint32_t id;
    if (mg_hmap_get(m, s, len, &id)) return 0;
    return mg_hmap_put(m, s, len, (uint32_t)m->n) ? -1 : 0;
}

static int find_specials(mg_tok_word *w, mg_err *err)
{
    /* Unseen words need an id even when the train split never says <unk>. */
    if (!mg_hmap_get(&w->map, UNK, sizeof UNK - 1, &w->unk)) {
        if (add_word(&w->map, UNK, sizeof UNK - 1)) return mg_err_set(err, MG_EINTERNAL, "word vocabulary: out of memory");
        mg_hmap_get(&w->map, UNK, sizeof UNK - 1, &w->unk);
    }
    if (!mg_hmap_get(&w->map, EOS, sizeof EOS - 1, &w->eos)) w->eos = UINT32_MAX;
    return MG_OK;
}

int mg_tok_word_build(mg_tok_word *w, const char *text, size_t n, mg_err *err)
{
    if (scan_words(text, n, add_word, &w->map)) return mg_err_set(err, MG_EINTERNAL, "word vocabulary: out of memory");
    return find_specials(w, err);
}

typedef struct enc_ctx {
    const mg_tok_word *w;
    mg_u32v *out;
    mg_tok_stats st;
} enc_ctx;

static int enc_word(void *ctx, const char *s, size_t len)
{
    enc_ctx *c = ctx;
    uint32_t id;
    c->st.words++;
    if (s == EOS) c->st.lines++;
    if (!mg_hmap_get(&c->w->map, s, len, &id)) {
        id = c->w->unk;
        c->st.unk++;
    }
    c->st.tokens++;
    return mg_u32v_push(c->out, id);
}

int mg_tok_word_encode(const mg_tok_word *w, const char *text, size_t n, mg_u32v *out, mg_tok_stats *st,
                       mg_err *err)
{
    if (w->unk == UINT32_MAX) return mg_err_set(err, MG_EINTERNAL, "word tokenizer: vocabulary not built");
    enc_ctx c = {.w = w, .out = out};
    /* Roughly one token per 5 bytes of English text; reserving avoids most regrowth. */
    if (mg_u32v_reserve(out, out->n + n / 5 + 16) || scan_words(text, n, enc_word, &c))
        return mg_err_set(err, MG_EINTERNAL, "word tokenizer: out of memory");
    if (st) *st = c.st;
    return MG_OK;
}

static int count_word(void *ctx, const char *s, size_t len)
{
    (void)s;
    (void)len;
    ++*(uint64_t *)ctx;
    return 0;
}

uint64_t mg_tok_word_count(const char *text, size_t n)
{
    uint64_t k = 0;
    scan_words(text, n, count_word, &k);
    return k;
}

int mg_tok_word_decode(const mg_tok_word *w, const uint32_t *ids, size_t n, mg_sb *out, mg_err *err)
{
    int line_start = 1;
    for (size_t i = 0; i < n; i++) {
        if (ids[i] >= w->map.n)
            return mg_err_set(err, MG_EUSER, "word tokenizer: id %u at position %zu is outside the vocabulary (%zu words)",
                              ids[i], i, w->map.n);
        if (ids[i] == w->eos) {
            mg_sb_putn(out, "\n", 1);
            line_start = 1;
            continue;
        }
        size_t len;
        const char *s = mg_hmap_key(&w->map, ids[i], &len);
        if (!line_start) mg_sb_putn(out, " ", 1);
        mg_sb_putn(out, s, len);
        line_start = 0;
    }
    return MG_OK;
}

int mg_tok_word_save(const mg_tok_word *w, const char *path, mg_err *err)
{
    mg_sb sb;
    mg_sb_init(&sb);
    for (size_t i = 0; i < w->map.n; i++) {
        size_t len;
        const char *s = mg_hmap_key(&w->map, i, &len);
        mg_sb_putn(&sb, s, len);
        mg_sb_putn(&sb, "\n", 1);
    }
    const void *part = sb.buf;
    int rc = mg_write_atomic(path, &part, &sb.len, 1, err);
    mg_sb_free(&sb);
    return rc;
}

int mg_tok_word_load(mg_tok_word *w, const char *path, mg_err *err)
{
    char *buf;
    size_t n;
    int rc = mg_read_file(path, "rerun: moegen data", &buf, &n, err);
    if (rc) return rc;
    size_t line = 1;
    for (size_t i = 0; i < n; line++) {
        const char *nl = memchr(buf + i, '\n', n - i);
        size_t end = nl ? (size_t)(nl - buf) : n;
        uint32_t id;
        if (end == i || mg_hmap_get(&w->map, buf + i, end - i, &id)) {
            free(buf);
            mg_tok_word_free(w);
            return mg_err_set(err, MG_EUSER, "%s:%zu: %s word (file corrupt; rerun: moegen data)", path, line,
                              end == i ? "empty" : "repeated");
        }
        if (mg_hmap_put(&w->map, buf + i, end - i, (uint32_t)w->map.n)) {
            free(buf);
            mg_tok_word_free(w);
            return mg_err_set(err, MG_EINTERNAL, "%s: out of memory", path);
        }
        i = end + 1;
    }
    free(buf);
    return find_specials(w, err);
}
