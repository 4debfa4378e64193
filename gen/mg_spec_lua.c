/* mg_spec_lua: runs a spec chunk in a sandbox: text only, a safe library, bounded time and memory. */
#include "mg_spec_lua.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <lauxlib.h>
#include <lualib.h>

#ifndef MG_VERSION
#define MG_VERSION "0.0.0"
#endif

/* Instructions between two hook calls. Small, because one instruction can be a costly library
 * call and the clock is only read here; a hook call costs tens of nanoseconds. */
#define MG_SPEC_HOOK_EVERY 100

/* Per-state bookkeeping, reached through the allocator's user data. */
typedef struct mg_spec_box {
    size_t used, limit;
    long instructions;
    double deadline;   /* monotonic seconds */
    int out_of_time;   /* sticky: once set, no pcall inside the spec may swallow it */
    int over_clock;    /* it was the time limit, not the instruction count */
    int out_of_memory; /* an allocation was refused because of the limit */
} mg_spec_box;

static mg_spec_box *box_of(lua_State *L)
{
    void *ud = NULL;
    lua_getallocf(L, &ud);
    return ud;
}

/* lua_Alloc with a byte budget. Refusing makes Lua raise "not enough memory" (after an
 * emergency collection), which surfaces as LUA_ERRMEM from the spec run. */
static void *box_alloc(void *ud, void *ptr, size_t osize, size_t nsize)
{
    mg_spec_box *b = ud;
    size_t old = ptr ? osize : 0;
    if (nsize == 0) {
        free(ptr);
        b->used -= old;
        return NULL;
    }
    if (nsize > old && nsize - old > b->limit - b->used) {
        b->out_of_memory = 1;
        return NULL;
    }
    void *p = realloc(ptr, nsize);
    if (p) b->used = b->used - old + nsize;
    return p;
}

static double now_seconds(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static void box_hook(lua_State *L, lua_Debug *ar)
{
    (void)ar;
    mg_spec_box *b = box_of(L);
    b->instructions += MG_SPEC_HOOK_EVERY;
    if (!b->out_of_time && now_seconds() > b->deadline) b->over_clock = 1;
    if (b->instructions > MG_SPEC_MAX_INSTRUCTIONS || b->over_clock) {
        b->out_of_time = 1;
        luaL_error(L, "spec ran too long");
    }
}

/* The sandbox's pcall. Unlike the real one it re-raises once the instruction or time limit
 * is hit, so `while true do pcall(loop) end` cannot outlive the limits. */
static int box_pcall(lua_State *L)
{
    luaL_checkany(L, 1);
    int status = lua_pcall(L, lua_gettop(L) - 1, LUA_MULTRET, 0);
    if (box_of(L)->out_of_time) return lua_error(L);
    lua_pushboolean(L, status == LUA_OK);
    lua_insert(L, 1);
    return lua_gettop(L);
}

/* Copies the named fields of the table at `src` into a new table left on the stack. */
static void copy_fields(lua_State *L, int src, const char *const *names)
{
    lua_newtable(L);
    for (; *names; names++) {
        lua_getfield(L, src, *names);
        lua_setfield(L, -2, *names);
    }
}

/* string without dump (it exposes bytecode) and without the pattern functions (find, match,
 * gmatch, gsub): their backtracking runs inside one C call, out of the instruction hook's
 * reach, so a crafted pattern could run for hours. rep stays; the memory limit bounds it. */
static const char *const safe_string[] = {
    "byte", "char", "format", "len", "lower", "upper", "rep", "reverse", "sub",
    "pack", "packsize", "unpack", NULL};
static const char *const safe_table[] = {
    "concat", "insert", "move", "pack", "remove", "sort", "unpack", NULL};
/* random is seeded with a constant below and randomseed is left out, so a spec that draws
 * random numbers still gives the same table every time. */
static const char *const safe_math[] = {
    "abs", "ceil", "cos", "deg", "exp", "floor", "fmod", "huge", "log", "max", "maxinteger",
    "min", "mininteger", "modf", "pi", "rad", "random", "sin", "sqrt", "tan", "tointeger",
    "type", "ult", NULL};
static const char *const safe_base[] = {
    "assert", "error", "ipairs", "next", "pairs", "select", "tonumber", "tostring", "type", NULL};

/* The `moegen` helper module, in Lua: deep merge and the built-in bases. It only uses the
 * locals handed to it, so the spec cannot reach anything through it. */
static const char moegen_module[] =
    "local pairs, type, error, select, tostring = ...\n"
    "local function copy(v)\n"
    "  if type(v) ~= 'table' then return v end\n"
    "  local r = {}\n"
    "  for k, x in pairs(v) do r[k] = copy(x) end\n"
    "  return r\n"
    "end\n"
    "local function merge(base, over)\n"
    "  local r = copy(base)\n"
    "  for k, v in pairs(over) do\n"
    "    if type(v) == 'table' and type(r[k]) == 'table' then r[k] = merge(r[k], v)\n"
    "    else r[k] = copy(v) end\n"
    "  end\n"
    "  return r\n"
    "end\n"
    "local M = {}\n"
    "function M.extend(base, ...)\n"
    "  if type(base) ~= 'table' then\n"
    "    error('moegen.extend: argument 1 must be a table (got ' .. type(base) .. ')', 2)\n"
    "  end\n"
    "  local r = copy(base)\n"
    "  for i = 1, select('#', ...) do\n"
    "    local o = select(i, ...)\n"
    "    if type(o) ~= 'table' then\n"
    "      error('moegen.extend: argument ' .. (i + 1) .. ' must be a table (got ' .. type(o) .. ')', 2)\n"
    "    end\n"
    "    r = merge(r, o)\n"
    "  end\n"
    "  return r\n"
    "end\n"
    /* Keep in step with specs/tiny.lua; test_spec checks that both hash the same. */
    "local bases = {\n"
    "  tiny = function() return {\n"
    "    name = 'tiny',\n"
    "    model = { vocab = 512, d_model = 64, n_layer = 2, n_head = 4, seq_len = 64, tie_embeddings = true },\n"
    "    moe = { experts = 4, top_k = 2, d_ff = 64, activation = 'swiglu', router = 'softmax_topk' },\n"
    "    dtype = 'bf16',\n"
    "    train = { data = 'wikitext-2', batch = 8, lr = 1e-3, warmup = 10, steps = 200,\n"
    "              eval_every = 50, eval_batches = 4, seed = 1 },\n"
    "  } end,\n"
    "}\n"
    "function M.base(name)\n"
    "  local b = bases[name]\n"
    "  if not b then error(\"moegen.base: unknown base '\" .. tostring(name) .. \"' (known: tiny)\", 2) end\n"
    "  return b()\n"
    "end\n"
    "return M\n";

/* Builds the `moegen` table from moegen_module, leaving it on the stack. env is the index of
 * the sandbox environment, whose safe functions the module receives. */
static int push_moegen(lua_State *L, int env)
{
    if (luaL_loadbufferx(L, moegen_module, sizeof moegen_module - 1, "=moegen", "t") != LUA_OK)
        return 0;
    static const char *const args[] = {"pairs", "type", "error", "select", "tostring"};
    for (int i = 0; i < 5; i++) lua_getfield(L, env, args[i]);
    if (lua_pcall(L, 5, 1, 0) != LUA_OK) return 0;
    lua_pushstring(L, MG_VERSION);
    lua_setfield(L, -2, "version");
    return 1;
}

/* Opens the real libraries into L's registry and builds the sandbox environment from copies
 * of their safe parts. Leaves the environment table on the stack. Returns 0 on failure. */
static int push_env(lua_State *L)
{
    luaL_requiref(L, "_G", luaopen_base, 1);
    luaL_requiref(L, "string", luaopen_string, 0);
    luaL_requiref(L, "table", luaopen_table, 0);
    luaL_requiref(L, "math", luaopen_math, 0);
    int g = lua_absindex(L, -4), str = g + 1, tab = g + 2, math = g + 3;

    lua_getfield(L, math, "randomseed");
    lua_pushinteger(L, 1);
    lua_call(L, 1, 0);

    copy_fields(L, g, safe_base);
    int env = lua_gettop(L);
    lua_pushcfunction(L, box_pcall);
    lua_setfield(L, env, "pcall");
    copy_fields(L, str, safe_string);
    /* ("x"):rep and friends look methods up through the string metatable; point it at the
     * safe copy so it cannot hand out string.dump. */
    lua_pushliteral(L, "");
    lua_getmetatable(L, -1);
    lua_pushvalue(L, -3);
    lua_setfield(L, -2, "__index");
    lua_pop(L, 2);
    lua_setfield(L, env, "string");
    copy_fields(L, tab, safe_table);
    lua_setfield(L, env, "table");
    copy_fields(L, math, safe_math);
    lua_setfield(L, env, "math");
    if (!push_moegen(L, env)) return 0;
    lua_setfield(L, env, "moegen");

    lua_replace(L, g);
    lua_settop(L, g);
    return 1;
}

/* Rewrites Lua's message into "path: ..." / "path:line: ...". Chunks run under the short
 * name "spec" so long paths are not cut to LUA_IDSIZE in positions. */
static int report_lua_error(lua_State *L, const char *path, mg_err *err)
{
    if (lua_type(L, -1) != LUA_TSTRING && lua_type(L, -1) != LUA_TNUMBER)
        return mg_err_set(err, MG_EUSER, "%s: spec raised an error with a %s value", path,
                          luaL_typename(L, -1));
    const char *msg = lua_tostring(L, -1);
    if (!strncmp(msg, "spec:", 5) && msg[5] >= '0' && msg[5] <= '9')
        return mg_err_set(err, MG_EUSER, "%s:%s", path, msg + 5);
    return mg_err_set(err, MG_EUSER, "%s: %s", path, msg);
}

static int report_run_error(lua_State *L, int status, const char *path, mg_err *err)
{
    mg_spec_box *b = box_of(L);
    if (b->over_clock)
        return mg_err_set(err, MG_EUSER, "%s: spec ran too long (time limit %d s)", path,
                          MG_SPEC_MAX_SECONDS);
    if (b->out_of_time)
        return mg_err_set(err, MG_EUSER, "%s: spec ran too long (instruction limit %ld)", path,
                          (long)MG_SPEC_MAX_INSTRUCTIONS);
    if (status == LUA_ERRMEM && b->out_of_memory)
        return mg_err_set(err, MG_EUSER, "%s: spec used too much memory (limit %u MiB)", path,
                          MG_SPEC_MAX_MEMORY >> 20);
    if (status == LUA_ERRMEM)
        return mg_err_set(err, MG_EINTERNAL, "%s: out of memory while running the spec", path);
    return report_lua_error(L, path, err);
}

static int is_binary_chunk(const char *text, size_t len)
{
    return len > 0 && text[0] == LUA_SIGNATURE[0];
}

int mg_spec_lua_run(const char *path, const char *text, size_t len, lua_State **out, mg_err *err)
{
    *out = NULL;
    if (is_binary_chunk(text, len))
        return mg_err_set(err, MG_EUSER, "%s: binary (precompiled) chunks are refused: a spec "
                          "must be Lua source text", path);
    mg_spec_box *b = calloc(1, sizeof *b);
    if (!b) return mg_err_set(err, MG_EINTERNAL, "%s: out of memory", path);
    b->limit = MG_SPEC_MAX_MEMORY;
    lua_State *L = lua_newstate(box_alloc, b);
    if (!L) {
        free(b);
        return mg_err_set(err, MG_EINTERNAL, "%s: cannot create a Lua state", path);
    }
    if (!push_env(L)) {
        mg_err_set(err, MG_EINTERNAL, "%s: cannot build the spec sandbox: %s", path,
                   lua_isstring(L, -1) ? lua_tostring(L, -1) : "?");
        mg_spec_lua_close(L);
        return MG_EINTERNAL;
    }
    int status = luaL_loadbufferx(L, text, len, "=spec", "t");
    if (status == LUA_OK) {
        lua_pushvalue(L, -2);
        lua_setupvalue(L, -2, 1); /* the chunk's only upvalue is _ENV */
        b->instructions = 0;
        b->deadline = now_seconds() + MG_SPEC_MAX_SECONDS;
        lua_sethook(L, box_hook, LUA_MASKCOUNT, MG_SPEC_HOOK_EVERY);
        status = lua_pcall(L, 0, 1, 0);
        lua_sethook(L, NULL, 0, 0);
    }
    /* The spec is done running: lift the limit so reading its table cannot fail midway. */
    b->limit = (size_t)-1;
    if (status != LUA_OK) {
        int rc = report_run_error(L, status, path, err);
        mg_spec_lua_close(L);
        return rc;
    }
    if (!lua_istable(L, -1)) {
        mg_err_set(err, MG_EUSER, "%s: spec must return a table (got %s)", path,
                   luaL_typename(L, -1));
        mg_spec_lua_close(L);
        return MG_EUSER;
    }
    *out = L;
    return MG_OK;
}

void mg_spec_lua_close(lua_State *L)
{
    if (!L) return;
    mg_spec_box *b = box_of(L);
    lua_close(L);
    free(b);
}
