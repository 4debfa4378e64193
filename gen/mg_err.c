/* mg_err: error records and leveled logging to stderr. */
#include "mg_err.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int mg_err_vset(mg_err *err, int code, const char *fmt, va_list ap)
{
    if (err) {
        err->code = code;
        vsnprintf(err->msg, sizeof err->msg, fmt, ap);
        /* Keep the one-line promise even if a caller passed a newline through. */
        for (char *p = err->msg; *p; p++)
            if (*p == '\n') *p = ' ';
    }
    return code;
}

int mg_err_set(mg_err *err, int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    mg_err_vset(err, code, fmt, ap);
    va_end(ap);
    return code;
}

void mg_err_clear(mg_err *err)
{
    if (err) { err->code = MG_OK; err->msg[0] = 0; }
}

static int log_threshold(void)
{
    static int level = -1;
    if (level < 0) {
        const char *s = getenv("MG_LOG");
        level = MG_LOG_INFO;
        if (s && !strcmp(s, "debug")) level = MG_LOG_DEBUG;
        if (s && !strcmp(s, "warn")) level = MG_LOG_WARN;
    }
    return level;
}

int mg_log_enabled(int level) { return level >= log_threshold(); }

void mg_log(int level, const char *fmt, ...)
{
    static const char *names[] = {"debug", "info", "warn"};
    if (!mg_log_enabled(level)) return;
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "moegen: %s: ", names[level]);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}
