/* mg_sb: a growable string with printf-append, the code emitter's workhorse. */
#ifndef MG_SB_H
#define MG_SB_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct mg_sb {
    char *buf;   /* always NUL-terminated once anything was appended */
    size_t len;
    size_t cap;
} mg_sb;

void mg_sb_init(mg_sb *sb);
void mg_sb_free(mg_sb *sb);
void mg_sb_putn(mg_sb *sb, const char *s, size_t n);
void mg_sb_puts(mg_sb *sb, const char *s);
void mg_sb_printf(mg_sb *sb, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Hands the buffer to the caller (free() it) and resets sb. */
char *mg_sb_take(mg_sb *sb);

#ifdef __cplusplus
}
#endif
#endif
