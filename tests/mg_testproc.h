/* mg_testproc: run a shell command in tests, capturing its output and exit code. */
#ifndef MG_TESTPROC_H
#define MG_TESTPROC_H
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

typedef struct mg_proc { int code; char out[16384]; } mg_proc;

/* Runs `sh -c cmd 2>&1`; code is the exit status (or 128+signal). */
static inline void mg_run(mg_proc *p, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static inline void mg_run(mg_proc *p, const char *fmt, ...)
{
    char cmd[4096];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cmd, sizeof cmd, fmt, ap);
    va_end(ap);
    char full[4200];
    snprintf(full, sizeof full, "(%s) 2>&1", cmd);
    FILE *f = popen(full, "r");
    size_t n = f ? fread(p->out, 1, sizeof p->out - 1, f) : 0;
    p->out[n] = 0;
    int st = f ? pclose(f) : -1;
    p->code = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + (WIFSIGNALED(st) ? WTERMSIG(st) : 0);
}

/* A suite's scratch directory: "/tmp/mg_<tag>_XXXXXX" made into buf; 0 on success. */
static inline int mg_test_tmpdir(char *buf, size_t n, const char *tag)
{
    snprintf(buf, n, "/tmp/mg_%s_XXXXXX", tag);
    return mkdtemp(buf) ? 0 : -1;
}

/* Removes a scratch directory and everything in it. */
static inline void mg_test_rmtree(const char *dir)
{
    mg_proc p;
    mg_run(&p, "rm -rf '%s'", dir);
}

/* 1 when tiny-shakespeare is where the trainer looks for it ($MOEGEN_DATA_DIR, else ../shared/data,
 * else /work/shared/data); else prints the suite's skip line and returns 0. */
static inline int mg_test_have_data(void)
{
    const char *env = getenv("MOEGEN_DATA_DIR");
    char p[1100];
    struct stat sb;
    snprintf(p, sizeof p, "%s/tinyshakespeare/input.txt", env && *env ? env : "../shared/data");
    if (!stat(p, &sb)) return 1;
    if (!env && !stat("/work/shared/data/tinyshakespeare/input.txt", &sb)) return 1;
    printf("skipped: no tinyshakespeare/input.txt (set MOEGEN_DATA_DIR)\n");
    return 0;
}

/* The moegen binary under test ($MOEGEN, default build/moegen). */
static inline const char *mg_bin(void)
{
    const char *b = getenv("MOEGEN");
    return b ? b : "build/moegen";
}
#endif
