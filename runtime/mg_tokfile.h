/* mg_tokfile: token files, the output of `moegen data` and the input of the loader.
 *
 * Layout (little-endian, 128-byte header, then the tokens):
 *     0  char[8]  magic "MGTOK1\0\0"
 *     8  u32      version (1)
 *    12  u32      header bytes (128)
 *    16  u32      vocabulary size; every token is below it
 *    20  u32      token width in bytes: 2 (vocab <= 65536) or 4
 *    24  u64      token count
 *    32  u64      word-level token count of the same text (words + one <eos> per line), for
 *                 per-word perplexity; 0 = unknown
 *    40  u64      words mapped to <unk> because the vocabulary lacks them (word level)
 *    48  u8[32]   sha256 over header bytes [0,48) and [80,128), then the tokens
 *    80  char[16] tokenizer id, NUL-padded: "word" or "gpt2"
 *    96  char[32] corpus as given to `moegen data --corpus` (empty if longer), for hints
 *   128  tokens (uint16 or uint32)
 * Files are written to a temp file, fsync'ed and renamed into place, so a reader never sees a
 * half-written file. Reading maps the file and checks magic, version, size and checksum. */
#ifndef MG_TOKFILE_H
#define MG_TOKFILE_H

#include "mg_err.h"
#include "mg_file.h"  /* mg_write_atomic, used by the tokenizers too */

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

enum { MG_TOKFILE_VERSION = 1, MG_TOKFILE_HDR = 128 };
#define MG_TOKFILE_MAGIC "MGTOK1\0\0"

typedef struct mg_tokfile_info {
    uint32_t vocab;
    uint32_t width;       /* 2 or 4; chosen by the writer from vocab */
    uint64_t n_tokens;    /* set by the writer */
    uint64_t n_words;     /* 0 = unknown */
    uint64_t n_unk;
    char tokenizer[16];
    char corpus[32];
} mg_tokfile_info;

typedef struct mg_tokfile {
    mg_tokfile_info info;
    const void *tokens;   /* into the mapping */
    void *map;
    size_t map_len;
} mg_tokfile;

/* Writes tokens[0..n) atomically. Fails (internal error) if a token is >= info->vocab. */
int mg_tokfile_write(const char *path, const mg_tokfile_info *info, const uint32_t *tokens, size_t n,
                     mg_err *err);
/* Maps and verifies path. hint (may be NULL) says how to make a missing file; a corrupt file
 * whose header is readable gets "rerun: moegen data --corpus C --tokenizer T -o DIR". */
int mg_tokfile_open(const char *path, const char *hint, mg_tokfile *tf, mg_err *err);
void mg_tokfile_close(mg_tokfile *tf);

static inline uint32_t mg_tokfile_at(const mg_tokfile *tf, uint64_t i)
{
    return tf->info.width == 2 ? ((const uint16_t *)tf->tokens)[i] : ((const uint32_t *)tf->tokens)[i];
}


#ifdef __cplusplus
}
#endif
#endif
