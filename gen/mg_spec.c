/* mg_spec: loading a spec file: sandboxed run, read, validate; plus the enum name tables. */
#include "mg_spec.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mg_spec_lua.h"

/* Specs are a screenful of Lua; a file this big is not a spec. */
#define MG_SPEC_MAX_FILE (1u << 20)

const char *const mg_act_names[4] = {"swiglu", "geglu", "gelu", "relu"};
const char *const mg_router_names[3] = {"softmax_topk", "sigmoid_topk", "switch"};
const char *const mg_dtype_names[3] = {"bf16", "fp16", "fp32"};
const char *const mg_sched_names[3] = {"cosine", "linear", "constant"};
const char *const mg_drop_names[2] = {"position", "probability"};

int mg_dtype_size(mg_dtype t)
{
    return t == MG_DTYPE_FP32 ? 4 : 2;
}

int mg_act_is_glu(mg_act a)
{
    return a == MG_ACT_SWIGLU || a == MG_ACT_GEGLU;
}

int mg_spec_load_string(const char *path, const char *text, size_t len, mg_spec *out, mg_err *err)
{
    lua_State *L;
    int rc = mg_spec_lua_run(path, text, len, &L, err);
    if (rc != MG_OK) return rc;
    rc = mg_spec_lua_read(L, -1, path, out, err);
    mg_spec_lua_close(L);
    return rc == MG_OK ? mg_spec_validate(out, err) : rc;
}

/* Reads the whole file into a NUL-terminated buffer (free() it). */
static int read_file(const char *path, char **text, size_t *len, mg_err *err)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return mg_err_set(err, MG_EUSER, "%s: cannot open spec: %s (HINT: shipped specs are in "
                          "specs/, e.g. specs/tiny.lua)", path, strerror(errno));
    char *buf = malloc(MG_SPEC_MAX_FILE + 1);
    size_t n = buf ? fread(buf, 1, MG_SPEC_MAX_FILE + 1, f) : 0;
    int failed = buf && ferror(f);
    fclose(f);
    if (!buf) return mg_err_set(err, MG_EINTERNAL, "%s: out of memory", path);
    if (failed) {
        free(buf);
        return mg_err_set(err, MG_EUSER, "%s: cannot read spec", path);
    }
    if (n > MG_SPEC_MAX_FILE) {
        free(buf);
        return mg_err_set(err, MG_EUSER, "%s: spec file is larger than %u KiB; specs are small "
                          "Lua tables", path, MG_SPEC_MAX_FILE >> 10);
    }
    buf[n] = 0;
    *text = buf;
    *len = n;
    return MG_OK;
}

int mg_spec_load(const char *path, mg_spec *out, mg_err *err)
{
    char *text = NULL;
    size_t len = 0;
    int rc = read_file(path, &text, &len, err);
    if (rc != MG_OK) return rc;
    rc = mg_spec_load_string(path, text, len, out, err);
    free(text);
    return rc;
}
