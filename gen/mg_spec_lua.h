/* mg_spec_lua: the Lua side of loading a spec: the sandbox that runs the chunk and the reader
 * that turns its table into an mg_spec (private to the mg_spec module). */
#ifndef MG_SPEC_LUA_H
#define MG_SPEC_LUA_H

#include <stddef.h>

#include <lua.h>

#include "mg_err.h"

struct mg_spec;

/* Limits on one spec run. Specs are small tables; anything near these is a bug or an attack.
 * The memory limit leaves room for Lua's own stack limit (about 90 MiB of frames) to be hit
 * first, so runaway recursion reports "stack overflow", not a memory error. */
#define MG_SPEC_MAX_INSTRUCTIONS 10000000L
#define MG_SPEC_MAX_MEMORY (128u << 20)
/* A backstop for work the instruction count does not see: library calls and string compares
 * that run long inside one instruction (sorting or shifting a huge table, comparing 60 MB
 * strings) in a loop. Real specs finish in well under a millisecond. */
#define MG_SPEC_MAX_SECONDS 3

/* Runs `text` as a spec in a fresh sandboxed state. On success returns MG_OK with the
 * spec's table on top of *out's stack; nothing untrusted runs after that, so the caller may
 * read the table freely and must close the state with mg_spec_lua_close. On failure returns
 * MG_EUSER ("path: ...", one line) or MG_EINTERNAL, and *out is NULL. */
int mg_spec_lua_run(const char *path, const char *text, size_t len, lua_State **out, mg_err *err);
void mg_spec_lua_close(lua_State *L);

/* Reads the spec table at `idx` into *s (defaults filled, types and field names checked; the
 * cross-field rules are mg_spec_validate's). Messages name `path`. */
int mg_spec_lua_read(lua_State *L, int idx, const char *path, struct mg_spec *s, mg_err *err);

#endif
