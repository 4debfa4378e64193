/* mg_tmpl: the embedded CUDA templates and their placeholder filling.
 *
 * A placeholder is written `/ *$key* /ident` (without the spaces): a comment naming the key, immediately
 * followed by the identifier it replaces. The template therefore stays valid CUDA (the
 * identifier is a working default), and the generator swaps both for the value. An unknown
 * key, a key given but never used, or a placeholder without an identifier after it is an
 * error that names the template line. */
#ifndef MG_TMPL_H
#define MG_TMPL_H

#include "mg_err.h"
#include "mg_sb.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct mg_tmpl_var {
    const char *key;
    const char *value;
} mg_tmpl_var;

/* The embedded template called name ("moe_up.cu"), or NULL. *len receives its size. */
const char *mg_tmpl_get(const char *name, size_t *len);

/* Appends text with placeholders replaced to out. name is used in messages
 * ("templates/<name>:<line>: ..."). Returns MG_EUSER on a template error. */
int mg_tmpl_fill(const char *name, const char *text, size_t len, const mg_tmpl_var *vars,
                 int n_vars, mg_sb *out, mg_err *err);

/* Reads the "// moegen:<tag> a b c" line (e.g. tag "entries") into words; returns the
 * count, 0 when absent, or -1 with err set when malformed (too many, bad characters). */
int mg_tmpl_directive(const char *name, const char *text, size_t len, const char *tag,
                      char words[][32], int max_words, mg_err *err);

#ifdef __cplusplus
}
#endif
#endif
