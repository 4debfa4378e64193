/* mg_spec_dump: the canonical text of a spec (a loadable Lua chunk) and its sha256. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>

#include "mg_sb.h"
#include "mg_spec.h"
#include "mg_spec_schema.h"

/* Shortest "%.Ng" that reads back as the same double, so the text stays readable (0.001,
 * not 0.0010000000000000000208) yet loses nothing. */
static void put_number(mg_sb *out, double v)
{
    char buf[40];
    for (int prec = 15; prec <= 17; prec++) {
        snprintf(buf, sizeof buf, "%.*g", prec, v);
        if (strtod(buf, NULL) == v) break;
    }
    mg_sb_puts(out, buf);
}

/* A Lua string literal; control bytes as three-digit escapes so a following digit is safe. */
static void put_string(mg_sb *out, const char *s)
{
    mg_sb_putn(out, "\"", 1);
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\') mg_sb_printf(out, "\\%c", c);
        else if (c < 32 || c == 127) mg_sb_printf(out, "\\%03d", c);
        else mg_sb_putn(out, s, 1);
    }
    mg_sb_putn(out, "\"", 1);
}

static void put_fields(mg_sb *out, const mg_spec *s, const mg_spec_field *fields, int depth)
{
    for (const mg_spec_field *f = fields; f->name; f++) {
        const void *p = (const char *)s + f->off;
        mg_sb_printf(out, "%*s%s = ", 2 * depth, "", f->name);
        switch (f->kind) {
        case MG_SPEC_INT: mg_sb_printf(out, "%d", *(const int *)p); break;
        case MG_SPEC_NUM: put_number(out, *(const double *)p); break;
        case MG_SPEC_BOOL: mg_sb_puts(out, *(const int *)p ? "true" : "false"); break;
        case MG_SPEC_STR: put_string(out, (const char *)p); break;
        case MG_SPEC_ENUM: {
            int v = *(const int *)p;
            put_string(out, v >= 0 && v < f->n_names ? f->names[v] : "?");
            break;
        }
        case MG_SPEC_TABLE:
            mg_sb_puts(out, "{\n");
            put_fields(out, s, f->sub, depth + 1);
            mg_sb_printf(out, "%*s}", 2 * depth, "");
            break;
        }
        mg_sb_puts(out, ",\n");
    }
}

void mg_spec_dump(const mg_spec *s, mg_sb *out)
{
    mg_sb_puts(out, "return {\n");
    put_fields(out, s, mg_spec_schema, 1);
    mg_sb_puts(out, "}\n");
}

void mg_spec_hash(const mg_spec *s, char hex[65])
{
    mg_sb text;
    mg_sb_init(&text);
    mg_spec_dump(s, &text);
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int n = 0;
    if (!EVP_Digest(text.buf, text.len, md, &n, EVP_sha256(), NULL) || n != 32) {
        /* Only on a broken libcrypto; an all-zero hash is never a real one. */
        memset(md, 0, sizeof md);
    }
    mg_sb_free(&text);
    for (int i = 0; i < 32; i++) snprintf(hex + 2 * i, 3, "%02x", md[i]);
}
