/* mg_tok: the tokenizers of `moegen data`: word-level (WikiText/PTB convention) and GPT-2
 * byte-level BPE. Both turn a byte string into uint32 token ids and back. */
#ifndef MG_TOK_H
#define MG_TOK_H

#include "mg_err.h"
#include "mg_hmap.h"
#include "mg_sb.h"

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* A growable array of token ids. */
typedef struct mg_u32v {
    uint32_t *v;
    size_t n, cap;
} mg_u32v;

/* Returns 0, or -1 when out of memory. */
int mg_u32v_push(mg_u32v *a, uint32_t x);
int mg_u32v_reserve(mg_u32v *a, size_t n);
void mg_u32v_free(mg_u32v *a);

/* Reads a whole file into a NUL-terminated malloc'd buffer (*n excludes the NUL). Errors name
 * the file; hint (may be NULL) is appended in parentheses, e.g. how to get the file. */
int mg_read_file(const char *path, const char *hint, char **buf, size_t *n, mg_err *err);

/* ---------------------------------------------------------------------------------------
 * Word level: the convention of PyTorch's word_language_model (data.py), under which
 * WikiText-2 train has 2,088,628 tokens and a 33,278-word vocabulary.
 *   - Lines end at \n, \r\n or \r (Python's universal newlines); every line, empty ones
 *     included, yields its words and then "<eos>". A last line without a newline counts too.
 *   - Words are the runs between whitespace as Python's str.split() sees it (isspace).
 *   - The vocabulary is built from the train split in first-occurrence order, "<eos>" taking
 *     its place at the end of the first line. "<unk>" is an ordinary word; when the train
 *     split never contains it, it is appended last, so unseen words always have an id.
 *   - Encoding another split maps words missing from the vocabulary to "<unk>". */

typedef struct mg_tok_word {
    mg_hmap map;     /* word -> id; entry i is the word with id i */
    uint32_t eos, unk;
} mg_tok_word;

typedef struct mg_tok_stats {
    uint64_t tokens;  /* ids written */
    uint64_t lines;   /* = the number of <eos> (word level) */
    uint64_t words;   /* word-level tokens: words + one <eos> per line (per-word perplexity) */
    uint64_t unk;     /* words not in the vocabulary, written as <unk> (word level) */
} mg_tok_stats;

void mg_tok_word_init(mg_tok_word *w);
void mg_tok_word_free(mg_tok_word *w);
/* Builds the vocabulary from text (the train split); w must be freshly initialised. */
int mg_tok_word_build(mg_tok_word *w, const char *text, size_t n, mg_err *err);
/* Appends the ids of text to out; st (optional) gets the counts of this call. */
int mg_tok_word_encode(const mg_tok_word *w, const char *text, size_t n, mg_u32v *out, mg_tok_stats *st,
                       mg_err *err);
/* Words joined by one space, each <eos> written as a newline. */
int mg_tok_word_decode(const mg_tok_word *w, const uint32_t *ids, size_t n, mg_sb *out, mg_err *err);
static inline uint32_t mg_tok_word_vocab(const mg_tok_word *w) { return (uint32_t)w->map.n; }
/* The vocabulary file: one word per line, line i (from 0) is id i. */
int mg_tok_word_save(const mg_tok_word *w, const char *path, mg_err *err);
int mg_tok_word_load(mg_tok_word *w, const char *path, mg_err *err);
/* Counts word-level tokens (words + one <eos> per line) without a vocabulary. */
uint64_t mg_tok_word_count(const char *text, size_t n);

/* ---------------------------------------------------------------------------------------
 * GPT-2 byte-level BPE, loaded from encoder.json + vocab.bpe (HF's vocab.json + merges.txt).
 * Text is split by GPT-2's pre-tokenization regex
 *     's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
 * (hand-written, Unicode tables from mg_unicode), each piece's bytes become byte tokens and
 * are merged by rank. "<|endoftext|>" in the text is plain text, not the special token.
 * Bytes that are not valid UTF-8 are punctuation to the regex; byte-level BPE is lossless,
 * so decode(encode(s)) == s for every byte string. */

typedef struct mg_tok_bpe {
    uint32_t vocab;           /* 50257 for GPT-2 */
    uint32_t eot;             /* id of <|endoftext|>, or UINT32_MAX */
    uint32_t byte_tok[256];   /* id of each single byte */
    char *bytes;              /* raw bytes of every token, concatenated */
    size_t *off;              /* token i is bytes[off[i] .. off[i+1]) */
    mg_hmap rank;             /* (left id, right id) as 8 bytes -> merge rank */
    uint32_t *merged;         /* rank -> id of the merged token */
    uint32_t n_merges;
    mg_hmap cache;            /* piece bytes -> index into cache_ids: [count, ids...] */
    mg_u32v cache_ids;
    mg_u32v work;             /* scratch symbols */
} mg_tok_bpe;

int mg_tok_bpe_load(mg_tok_bpe *b, const char *encoder_json, const char *vocab_bpe, mg_err *err);
void mg_tok_bpe_free(mg_tok_bpe *b);
/* Appends the ids of text to out (not thread-safe: it fills b's cache). */
int mg_tok_bpe_encode(mg_tok_bpe *b, const char *text, size_t n, mg_u32v *out, mg_err *err);
int mg_tok_bpe_decode(const mg_tok_bpe *b, const uint32_t *ids, size_t n, mg_sb *out, mg_err *err);
/* The vocabulary file: line i is token i in GPT-2's printable byte-level form (as in
 * encoder.json: a space is "Ġ", a newline "Ċ"), so every token fits on one line. */
int mg_tok_bpe_save_vocab(const mg_tok_bpe *b, const char *path, mg_err *err);
/* The end of the pre-tokenizer piece that starts at s[i] (i < n). */
size_t mg_gpt2_piece_end(const unsigned char *s, size_t n, size_t i);

#ifdef __cplusplus
}
#endif
#endif
