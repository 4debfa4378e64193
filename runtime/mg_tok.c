/* mg_tok: what both tokenizers share: the id array and reading a whole input file. */
#include "mg_tok.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

int mg_u32v_reserve(mg_u32v *a, size_t n)
{
    if (n <= a->cap) return 0;
    size_t c = a->cap ? a->cap : 1024;
    while (c < n) c *= 2;
    uint32_t *v = realloc(a->v, c * sizeof *v);
    if (!v) return -1;
    a->v = v;
    a->cap = c;
    return 0;
}

int mg_u32v_push(mg_u32v *a, uint32_t x)
{
    if (a->n == a->cap && mg_u32v_reserve(a, a->n + 1)) return -1;
    a->v[a->n++] = x;
    return 0;
}

void mg_u32v_free(mg_u32v *a)
{
    free(a->v);
    memset(a, 0, sizeof *a);
}

int mg_read_file(const char *path, const char *hint, char **buf, size_t *n, mg_err *err)
{
    *buf = NULL;
    *n = 0;
    const char *l = hint ? " (" : "", *h = hint ? hint : "", *r = hint ? ")" : "";
    FILE *f = fopen(path, "rb");
    if (!f) return mg_err_set(err, MG_EUSER, "%s: cannot open: %s%s%s%s", path, strerror(errno), l, h, r);
    struct stat st;
    if (fstat(fileno(f), &st) || !S_ISREG(st.st_mode)) {
        fclose(f);
        return mg_err_set(err, MG_EUSER, "%s: not a regular file%s%s%s", path, l, h, r);
    }
    char *b = malloc((size_t)st.st_size + 1);
    if (!b) {
        fclose(f);
        return mg_err_set(err, MG_EINTERNAL, "%s: out of memory reading %lld bytes", path, (long long)st.st_size);
    }
    size_t got = fread(b, 1, (size_t)st.st_size, f);
    int bad = ferror(f) || got != (size_t)st.st_size;
    fclose(f);
    if (bad) {
        free(b);
        return mg_err_set(err, MG_EUSER, "%s: read failed (%zu of %lld bytes)", path, got, (long long)st.st_size);
    }
    b[got] = 0;
    *buf = b;
    *n = got;
    return MG_OK;
}
