/* mg_sb: growable string. Allocation failure is fatal: an emitter cannot recover from it. */
#include "mg_sb.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void mg_sb_init(mg_sb *sb) { sb->buf = NULL; sb->len = sb->cap = 0; }

void mg_sb_free(mg_sb *sb) { free(sb->buf); mg_sb_init(sb); }

static void sb_reserve(mg_sb *sb, size_t extra)
{
    if (sb->len + extra + 1 <= sb->cap) return;
    size_t cap = sb->cap ? sb->cap : 256;
    while (cap < sb->len + extra + 1) cap *= 2;
    char *p = realloc(sb->buf, cap);
    if (!p) { fputs("moegen: out of memory\n", stderr); abort(); }
    sb->buf = p;
    sb->cap = cap;
}

void mg_sb_putn(mg_sb *sb, const char *s, size_t n)
{
    sb_reserve(sb, n);
    memcpy(sb->buf + sb->len, s, n);
    sb->len += n;
    sb->buf[sb->len] = 0;
}

void mg_sb_puts(mg_sb *sb, const char *s) { mg_sb_putn(sb, s, strlen(s)); }

void mg_sb_printf(mg_sb *sb, const char *fmt, ...)
{
    char small[256];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(small, sizeof small, fmt, ap);
    va_end(ap);
    if (n < 0) return;
    if ((size_t)n < sizeof small) { mg_sb_putn(sb, small, (size_t)n); return; }
    sb_reserve(sb, (size_t)n);
    va_start(ap, fmt);
    vsnprintf(sb->buf + sb->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    sb->len += (size_t)n;
}

char *mg_sb_take(mg_sb *sb)
{
    if (!sb->buf) sb_reserve(sb, 0), sb->buf[0] = 0;
    char *p = sb->buf;
    mg_sb_init(sb);
    return p;
}
