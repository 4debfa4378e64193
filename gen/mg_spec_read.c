/* mg_spec_read: turns the table a spec returned into an mg_spec, field by field, following
 * mg_spec_schema: unknown names, wrong types and missing required fields are reported here. */
#include <ctype.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#include <lauxlib.h>

#include "mg_spec.h"
#include "mg_spec_lua.h"
#include "mg_spec_schema.h"

/* Suggest a known name only when it is this close (edits) to what was written. */
#define MG_SPEC_SUGGEST_MAX 3

typedef struct reader {
    lua_State *L;
    const char *path;
    mg_spec *s;
    mg_err *err;
    unsigned missing; /* bit (1 << mg_spec_def) per dependent default still to fill */
} reader;

/* ---------------------------------------------------------------- messages */

static void field_path(char *out, size_t n, const char *prefix, const char *name)
{
    if (prefix && *prefix) snprintf(out, n, "%s.%s", prefix, name);
    else snprintf(out, n, "%s", name);
}

/* The value at idx as a reader would write it in the spec; strings quoted and shortened. */
static void value_text(lua_State *L, int idx, char *out, size_t n)
{
    switch (lua_type(L, idx)) {
    case LUA_TNUMBER:
        if (lua_isinteger(L, idx)) snprintf(out, n, "%lld", (long long)lua_tointeger(L, idx));
        else snprintf(out, n, "%.14g", lua_tonumber(L, idx));
        return;
    case LUA_TBOOLEAN: snprintf(out, n, "%s", lua_toboolean(L, idx) ? "true" : "false"); return;
    case LUA_TTABLE: snprintf(out, n, "{...}"); return;
    case LUA_TSTRING: break;
    default: snprintf(out, n, "%s", luaL_typename(L, idx)); return;
    }
    size_t len, o = 0;
    const char *s = lua_tolstring(L, idx, &len);
    const size_t show = 40;
    out[o++] = '"';
    for (size_t i = 0; i < len && i < show && o + 8 < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '"' || c == '\\') o += snprintf(out + o, n - o, "\\%c", c);
        else if (c < 32 || c == 127) o += snprintf(out + o, n - o, "\\%d", c);
        else out[o++] = (char)c;
    }
    snprintf(out + o, n - o, "%s\"", len > show ? "..." : "");
}

/* "path: field = value: what" for the value at idx. */
static int bad_value(reader *r, const char *field, int idx, const char *what)
{
    char v[128];
    value_text(r->L, idx, v, sizeof v);
    return mg_err_set(r->err, MG_EUSER, "%s: %s = %s: %s", r->path, field, v, what);
}

/* ---------------------------------------------------------------- unknown fields */

/* Levenshtein distance, case-insensitive: a typo and a wrong case both count as near. */
static int edit_distance(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b);
    if (la > 64 || lb > 64) return 99;
    int row[65];
    for (size_t j = 0; j <= lb; j++) row[j] = (int)j;
    for (size_t i = 1; i <= la; i++) {
        int diag = row[0];
        row[0] = (int)i;
        for (size_t j = 1; j <= lb; j++) {
            int up = row[j];
            int cost = tolower((unsigned char)a[i - 1]) != tolower((unsigned char)b[j - 1]);
            int best = diag + cost;
            if (up + 1 < best) best = up + 1;
            if (row[j - 1] + 1 < best) best = row[j - 1] + 1;
            row[j] = best;
            diag = up;
        }
    }
    return row[lb];
}

static const mg_spec_field *find_field(const mg_spec_field *fields, const char *name)
{
    for (; fields->name; fields++)
        if (!strcmp(fields->name, name)) return fields;
    return NULL;
}

/* The known name closest to `key`, or NULL when none is near enough to be a likely typo. */
static const char *closest_name(const mg_spec_field *fields, const char *key)
{
    const char *best = NULL;
    int best_d = MG_SPEC_SUGGEST_MAX + 1;
    for (; fields->name; fields++) {
        int d = edit_distance(key, fields->name);
        if (d < best_d && d < (int)strlen(fields->name)) {
            best = fields->name;
            best_d = d;
        }
    }
    return best;
}

static int report_unknown(reader *r, const mg_spec_field *fields, const char *prefix,
                          const char *key)
{
    char field[160];
    field_path(field, sizeof field, prefix, key);
    const char *near = closest_name(fields, key);
    if (near)
        return mg_err_set(r->err, MG_EUSER, "%s: %s: unknown field (did you mean '%s'?)",
                          r->path, field, near);
    char known[512] = "";
    size_t o = 0;
    for (const mg_spec_field *f = fields; f->name && o < sizeof known; f++)
        o += snprintf(known + o, sizeof known - o, "%s%s", f == fields ? "" : ", ", f->name);
    return mg_err_set(r->err, MG_EUSER, "%s: %s: unknown field (known fields: %s)", r->path,
                      field, known);
}

/* Fails on the first key of the table at idx that the schema does not know. Of several
 * unknown names the alphabetically first is reported, so the message does not depend on
 * Lua's hash order. */
static int check_unknown(reader *r, int idx, const mg_spec_field *fields, const char *prefix)
{
    lua_State *L = r->L;
    const char *worst = NULL;
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        if (lua_type(L, -2) != LUA_TSTRING) {
            char k[64], field[160];
            if (lua_isinteger(L, -2)) snprintf(k, sizeof k, "[%lld]", (long long)lua_tointeger(L, -2));
            else if (lua_type(L, -2) == LUA_TNUMBER) snprintf(k, sizeof k, "[%.14g]", lua_tonumber(L, -2));
            else snprintf(k, sizeof k, "[%s]", luaL_typename(L, -2));
            snprintf(field, sizeof field, "%s%s", prefix ? prefix : "", k);
            int rc = bad_value(r, field, -1, "unknown field (spec fields are named: write name = value)");
            lua_pop(L, 2);
            return rc;
        }
        const char *key = lua_tostring(L, -2); /* anchored by the table while it holds the key */
        if (!find_field(fields, key) && (!worst || strcmp(key, worst) < 0)) worst = key;
        lua_pop(L, 1);
    }
    return worst ? report_unknown(r, fields, prefix, worst) : MG_OK;
}

/* ---------------------------------------------------------------- one field */

static void *slot(reader *r, const mg_spec_field *f) { return (char *)r->s + f->off; }

static int read_int(reader *r, const mg_spec_field *f, const char *field, int idx)
{
    lua_State *L = r->L;
    if (lua_type(L, idx) != LUA_TNUMBER) return bad_value(r, field, idx, "must be an integer");
    /* Computed values are often floats (2^10 is 1024.0): accept any integral number. */
    double v = lua_isinteger(L, idx) ? (double)lua_tointeger(L, idx) : lua_tonumber(L, idx);
    if (!isfinite(v) || floor(v) != v) return bad_value(r, field, idx, "must be an integer");
    if (v < INT_MIN || v > INT_MAX)
        return bad_value(r, field, idx, "must be an integer in [-2147483648, 2147483647]");
    *(int *)slot(r, f) = (int)v;
    return MG_OK;
}

static int read_num(reader *r, const mg_spec_field *f, const char *field, int idx)
{
    if (lua_type(r->L, idx) != LUA_TNUMBER) return bad_value(r, field, idx, "must be a number");
    double v = lua_tonumber(r->L, idx);
    if (!isfinite(v)) return bad_value(r, field, idx, "must be a finite number");
    *(double *)slot(r, f) = v;
    return MG_OK;
}

static int read_bool(reader *r, const mg_spec_field *f, const char *field, int idx)
{
    if (lua_type(r->L, idx) != LUA_TBOOLEAN)
        return bad_value(r, field, idx, "must be a boolean (true or false)");
    *(int *)slot(r, f) = lua_toboolean(r->L, idx);
    return MG_OK;
}

static int read_str(reader *r, const mg_spec_field *f, const char *field, int idx)
{
    if (lua_type(r->L, idx) != LUA_TSTRING) return bad_value(r, field, idx, "must be a string");
    size_t len;
    const char *v = lua_tolstring(r->L, idx, &len);
    if (strlen(v) != len) return bad_value(r, field, idx, "must not contain NUL bytes");
    if (len >= f->size) {
        char what[96];
        if (f->def_kind == MG_SPEC_DEF_NAME) snprintf(what, sizeof what, "%s", MG_SPEC_NAME_RULE);
        else snprintf(what, sizeof what, "must be at most %zu characters", f->size - 1);
        return bad_value(r, field, idx, what);
    }
    memcpy(slot(r, f), v, len + 1);
    return MG_OK;
}

static int read_enum(reader *r, const mg_spec_field *f, const char *field, int idx)
{
    if (lua_type(r->L, idx) == LUA_TSTRING) {
        const char *v = lua_tostring(r->L, idx);
        for (int i = 0; i < f->n_names; i++)
            if (!strcmp(v, f->names[i])) {
                *(int *)slot(r, f) = i;
                return MG_OK;
            }
    }
    char what[256] = "must be one of ";
    size_t o = strlen(what);
    for (int i = 0; i < f->n_names; i++)
        o += snprintf(what + o, sizeof what - o, "%s%s", i ? ", " : "", f->names[i]);
    return bad_value(r, field, idx, what);
}

/* Missing field: its default, a note to fill it from other fields later, or an error. */
static int apply_default(reader *r, const mg_spec_field *f, const char *field)
{
    switch (f->def_kind) {
    case MG_SPEC_DEF_REQUIRED:
        return mg_err_set(r->err, MG_EUSER, "%s: %s: required field is missing", r->path, field);
    case MG_SPEC_DEF_PLAIN: break;
    default:
        r->missing |= 1u << f->def_kind;
        return MG_OK;
    }
    switch (f->kind) {
    case MG_SPEC_INT: case MG_SPEC_BOOL: case MG_SPEC_ENUM: *(int *)slot(r, f) = (int)f->def; break;
    case MG_SPEC_NUM: *(double *)slot(r, f) = f->def; break;
    case MG_SPEC_STR: snprintf(slot(r, f), f->size, "%s", f->def_str); break;
    case MG_SPEC_TABLE: break;
    }
    return MG_OK;
}

static int read_fields(reader *r, int idx, const mg_spec_field *fields, const char *prefix);

static int read_one(reader *r, const mg_spec_field *f, const char *field, int idx)
{
    switch (f->kind) {
    case MG_SPEC_INT: return read_int(r, f, field, idx);
    case MG_SPEC_NUM: return read_num(r, f, field, idx);
    case MG_SPEC_BOOL: return read_bool(r, f, field, idx);
    case MG_SPEC_STR: return read_str(r, f, field, idx);
    case MG_SPEC_ENUM: return read_enum(r, f, field, idx);
    case MG_SPEC_TABLE:
        if (!lua_istable(r->L, idx)) return bad_value(r, field, idx, "must be a table");
        return read_fields(r, lua_absindex(r->L, idx), f->sub, field);
    }
    return mg_err_set(r->err, MG_EINTERNAL, "%s: %s: bad schema kind", r->path, field);
}

/* Checks the names at every level before any value, so a misspelt field is reported as a
 * typo rather than as the required field it fails to fill. */
static int check_names(reader *r, int idx, const mg_spec_field *fields, const char *prefix)
{
    int rc = check_unknown(r, idx, fields, prefix);
    for (const mg_spec_field *f = fields; rc == MG_OK && f->name; f++) {
        if (f->kind != MG_SPEC_TABLE) continue;
        char field[160];
        field_path(field, sizeof field, prefix, f->name);
        lua_pushstring(r->L, f->name);
        lua_rawget(r->L, idx);
        if (lua_istable(r->L, -1)) rc = check_names(r, lua_absindex(r->L, -1), f->sub, field);
        lua_pop(r->L, 1);
    }
    return rc;
}

/* Reads every field of the schema level `fields` from the table at idx (absolute). */
static int read_fields(reader *r, int idx, const mg_spec_field *fields, const char *prefix)
{
    int rc = MG_OK;
    for (const mg_spec_field *f = fields; rc == MG_OK && f->name; f++) {
        char field[160];
        field_path(field, sizeof field, prefix, f->name);
        lua_pushstring(r->L, f->name);
        lua_rawget(r->L, idx);
        if (!lua_isnil(r->L, -1)) rc = read_one(r, f, field, -1);
        else if (f->kind == MG_SPEC_TABLE && f->def_kind != MG_SPEC_DEF_REQUIRED) {
            lua_newtable(r->L); /* an absent optional table reads as {}: all defaults */
            rc = read_one(r, f, field, -1);
            lua_pop(r->L, 1);
        } else rc = apply_default(r, f, field);
        lua_pop(r->L, 1);
    }
    return rc;
}

/* ---------------------------------------------------------------- dependent defaults */

/* The file name without directory and extension: "specs/wt2-moe8.lua" -> "wt2-moe8". */
static int name_from_path(reader *r)
{
    const char *base = strrchr(r->path, '/');
    base = base ? base + 1 : r->path;
    const char *dot = strrchr(base, '.');
    size_t n = dot && dot != base ? (size_t)(dot - base) : strlen(base);
    if (n >= sizeof r->s->name)
        return mg_err_set(r->err, MG_EUSER, "%s: name: missing, and the file name is too long "
                          "to stand in for it: set name (%s)", r->path, MG_SPEC_NAME_RULE);
    memcpy(r->s->name, base, n);
    r->s->name[n] = 0;
    return MG_OK;
}

static int fill_dependent(reader *r)
{
    mg_spec *s = r->s;
    if (r->missing & (1u << MG_SPEC_DEF_N_KV_HEAD)) s->model.n_kv_head = s->model.n_head;
    if (r->missing & (1u << MG_SPEC_DEF_D_FF_DENSE)) {
        /* FLOP-matched: a dense FFN as wide as the k experts a token visits. */
        long long w = (long long)s->moe.d_ff * s->moe.top_k;
        s->model.d_ff_dense = w > INT_MAX ? INT_MAX : w < INT_MIN ? INT_MIN : (int)w;
    }
    if (r->missing & (1u << MG_SPEC_DEF_MIN_LR)) s->train.min_lr = s->train.lr / 10;
    if (r->missing & (1u << MG_SPEC_DEF_NAME)) return name_from_path(r);
    return MG_OK;
}

int mg_spec_lua_read(lua_State *L, int idx, const char *path, mg_spec *s, mg_err *err)
{
    reader r = {L, path, s, err, 0};
    memset(s, 0, sizeof *s);
    snprintf(s->path, sizeof s->path, "%s", path);
    idx = lua_absindex(L, idx);
    int rc = check_names(&r, idx, mg_spec_schema, NULL);
    if (rc == MG_OK) rc = read_fields(&r, idx, mg_spec_schema, NULL);
    return rc == MG_OK ? fill_dependent(&r) : rc;
}
