/* mg_tmpl: placeholder filling over embedded templates (see mg_tmpl.h for the syntax). */
#include "mg_tmpl.h"
#include "mg_templates.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const char *mg_tmpl_get(const char *name, size_t *len)
{
    for (int i = 0; i < mg_n_templates; i++)
        if (!strcmp(mg_templates[i].name, name)) {
            if (len) *len = mg_templates[i].len;
            return mg_templates[i].text;
        }
    return NULL;
}

static int is_ident_start(char c) { return isalpha((unsigned char)c) || c == '_'; }
static int is_ident(char c) { return isalnum((unsigned char)c) || c == '_'; }

static int line_of(const char *text, const char *p)
{
    int line = 1;
    for (const char *q = text; q < p; q++) line += *q == '\n';
    return line;
}

static int find_var(const mg_tmpl_var *vars, int n, const char *key, size_t klen)
{
    for (int i = 0; i < n; i++)
        if (strlen(vars[i].key) == klen && !strncmp(vars[i].key, key, klen)) return i;
    return -1;
}

static void known_list(const mg_tmpl_var *vars, int n, char *buf, size_t cap)
{
    buf[0] = 0;
    for (int i = 0; i < n; i++) {
        size_t l = strlen(buf);
        snprintf(buf + l, cap - l, "%s%s", i ? ", " : "", vars[i].key);
    }
    if (!n) snprintf(buf, cap, "none");
}

int mg_tmpl_fill(const char *name, const char *text, size_t len, const mg_tmpl_var *vars,
                 int n_vars, mg_sb *out, mg_err *err)
{
    static const char open[] = "/*$";
    int used[64] = {0};
    if (n_vars > 64) return mg_err_set(err, MG_EINTERNAL, "templates/%s: too many placeholders", name);
    const char *p = text, *end = text + len;
    while (p < end) {
        const char *hit = memmem(p, (size_t)(end - p), open, sizeof open - 1);
        if (!hit) { mg_sb_putn(out, p, (size_t)(end - p)); break; }
        mg_sb_putn(out, p, (size_t)(hit - p));
        const char *key = hit + 3, *k = key;
        while (k < end && is_ident(*k)) k++;
        if (k == key || k + 2 > end || k[0] != '*' || k[1] != '/')
            return mg_err_set(err, MG_EUSER, "templates/%s:%d: malformed placeholder (write /*$key*/ident)",
                              name, line_of(text, hit));
        int v = find_var(vars, n_vars, key, (size_t)(k - key));
        if (v < 0) {
            char known[512];
            known_list(vars, n_vars, known, sizeof known);
            return mg_err_set(err, MG_EUSER, "templates/%s:%d: unknown placeholder '$%.*s' (known: %s)",
                              name, line_of(text, hit), (int)(k - key), key, known);
        }
        const char *id = k + 2, *q = id;
        if (q < end && is_ident_start(*q))
            while (q < end && is_ident(*q)) q++;
        if (q == id)
            return mg_err_set(err, MG_EUSER, "templates/%s:%d: placeholder '$%s' must be followed by an identifier",
                              name, line_of(text, hit), vars[v].key);
        mg_sb_puts(out, vars[v].value);
        used[v] = 1;
        p = q;
    }
    for (int i = 0; i < n_vars; i++)
        if (!used[i])
            return mg_err_set(err, MG_EUSER, "templates/%s: placeholder '$%s' is never used", name, vars[i].key);
    return MG_OK;
}

int mg_tmpl_directive(const char *name, const char *text, size_t len, const char *tag,
                      char words[][32], int max_words, mg_err *err)
{
    char marker[64];
    snprintf(marker, sizeof marker, "// moegen:%s ", tag);
    const char *hit = memmem(text, len, marker, strlen(marker));
    if (!hit) return 0;
    const char *p = hit + strlen(marker), *end = text + len;
    int n = 0;
    while (p < end && *p != '\n') {
        while (p < end && *p == ' ') p++;
        const char *w = p;
        while (p < end && *p != ' ' && *p != '\n') p++;
        if (p == w) continue;
        size_t wl = (size_t)(p - w);
        for (const char *c = w; c < p; c++)
            if (!(islower((unsigned char)*c) || isdigit((unsigned char)*c) || *c == '_')) {
                mg_err_set(err, MG_EUSER, "templates/%s:%d: moegen:%s word '%.*s' must match [a-z0-9_]+",
                           name, line_of(text, hit), tag, (int)wl, w);
                return -1;
            }
        if (n == max_words || wl >= 32) {
            mg_err_set(err, MG_EUSER, "templates/%s:%d: moegen:%s takes at most %d words of < 32 chars",
                       name, line_of(text, hit), tag, max_words);
            return -1;
        }
        memcpy(words[n], w, wl);
        words[n][wl] = 0;
        n++;
    }
    return n;
}
