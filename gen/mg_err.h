/* mg_err: one-line error messages carried up the call chain, with an exit class. */
#ifndef MG_ERR_H
#define MG_ERR_H

#include <stdarg.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Exit classes, also the CLI's exit codes. */
enum { MG_OK = 0, MG_EUSER = 1, MG_EINTERNAL = 2 };

typedef struct mg_err {
    int code;        /* MG_OK, MG_EUSER or MG_EINTERNAL */
    char msg[1024];  /* one line, no trailing newline */
} mg_err;

/* Sets err (if non-NULL) and returns code, so callers can `return mg_err_set(...)`. */
int mg_err_set(mg_err *err, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
int mg_err_vset(mg_err *err, int code, const char *fmt, va_list ap);
void mg_err_clear(mg_err *err);

/* Log levels: MG_LOG=debug|info|warn (env), default info. Formatting is skipped when off. */
enum { MG_LOG_DEBUG = 0, MG_LOG_INFO = 1, MG_LOG_WARN = 2 };
int mg_log_enabled(int level);
void mg_log(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
#define MG_DEBUG(...) do { if (mg_log_enabled(MG_LOG_DEBUG)) mg_log(MG_LOG_DEBUG, __VA_ARGS__); } while (0)

#ifdef __cplusplus
}
#endif
#endif
