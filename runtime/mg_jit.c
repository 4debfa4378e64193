/* mg_jit: NVRTC compilation of generated sources into cubins, through the on-disk cache. */
#include "mg_jit.h"
#include "mg_cache.h"

#include <nvrtc.h>

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define MG_JIT_DEFAULT_ARCH "sm_90a"
enum { MG_JIT_BASE_OPTS = 3, MG_JIT_ARCH_MAX = 32, MG_JIT_ENV_DEFS = 8 };

/* ---------------------------------------------------------------------------------------
 * Small helpers */

void mg_blob_free(mg_blob *b)
{
    if (!b) return;
    free(b->data);
    b->data = NULL;
    b->size = 0;
}

void mg_jit_result_free(mg_jit_result *r)
{
    if (!r) return;
    mg_blob_free(&r->cubin);
    free(r->log);
    memset(r, 0, sizeof *r);
}

static double now_ms(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e3 + t.tv_nsec / 1e6;
}

/* nvrtcVersion is cheap, but the hit path asks for it on every call; ask once. */
static int nv_major, nv_minor;
static pthread_once_t nv_once = PTHREAD_ONCE_INIT;
static void nv_query(void)
{
    if (nvrtcVersion(&nv_major, &nv_minor) != NVRTC_SUCCESS) nv_major = nv_minor = 0;
}

void mg_nvrtc_version(char *buf, size_t n)
{
    pthread_once(&nv_once, nv_query);
    snprintf(buf, n, "%d.%d", nv_major, nv_minor);
}

/* ---------------------------------------------------------------------------------------
 * Options: few and fixed, so the same spec always yields the same cubin and cache key.
 * No --use_fast_math: CPU references check kernels against exact math. */

typedef struct jit_opts {
    char arch_opt[64];
    char env_defs[512];   /* MOEGEN_JIT_DEFINES, split in place */
    const char **v;   /* malloc'd; points at arch_opt, literals and the caller's extras */
    int n;            /* options that change the binary (the cache key covers these) */
    int n_all;        /* n plus --ptxas-options=-v, which only adds to the log */
} jit_opts;

static int opts_build(jit_opts *jo, const mg_jit_opts *o, const char *arch, mg_err *err)
{
    int n_extra = o && o->extra ? o->n_extra : 0;
    if (n_extra < 0) return mg_err_set(err, MG_EINTERNAL, "jit: n_extra = %d < 0", n_extra);
    if (strlen(arch) > MG_JIT_ARCH_MAX || !*arch)
        return mg_err_set(err, MG_EUSER, "jit: arch '%s': expected e.g. sm_90a", arch);
    snprintf(jo->arch_opt, sizeof jo->arch_opt, "--gpu-architecture=%s", arch);
    jo->v = malloc(sizeof *jo->v * (size_t)(MG_JIT_BASE_OPTS + n_extra + MG_JIT_ENV_DEFS + 3));   /* + bwd, cluster, -v */
    if (!jo->v) return mg_err_set(err, MG_EINTERNAL, "jit: out of memory");
    int k = 0;
    jo->v[k++] = jo->arch_opt;
    jo->v[k++] = "-std=c++17";
    jo->v[k++] = "-default-device";
    for (int i = 0; i < n_extra; i++) jo->v[k++] = o->extra[i];
    /* Development hook: env MOEGEN_JIT_DEFINES="-DNAME=V ..." (up to 8 -D options) reaches
     * every kernel, e.g. the Hopper GEMM's device knobs in templates/moe_params.h. They are
     * options like the others, so the cache key covers them. */
    const char *env = getenv("MOEGEN_JIT_DEFINES");
    if (env && *env) {
        if (strlen(env) >= sizeof jo->env_defs) {
            free(jo->v);
            jo->v = NULL;   /* (the caller frees jo->v too) */
            return mg_err_set(err, MG_EUSER, "MOEGEN_JIT_DEFINES: longer than %zu characters",
                              sizeof jo->env_defs - 1);
        }
        strcpy(jo->env_defs, env);
        int nd = 0;
        for (char *save = NULL, *tok = strtok_r(jo->env_defs, " \t", &save); tok; tok = strtok_r(NULL, " \t", &save)) {
            if (strncmp(tok, "-D", 2) != 0 || !tok[2] || ++nd > MG_JIT_ENV_DEFS) {
                free(jo->v);
                jo->v = NULL;   /* (the caller frees jo->v too) */
                return mg_err_set(err, MG_EUSER, "MOEGEN_JIT_DEFINES = '%s': expected up to %d -DNAME[=VALUE] words",
                                  env, MG_JIT_ENV_DEFS);
            }
            jo->v[k++] = tok;
        }
    }
    /* env MOEGEN_WG_BWD (the launcher's choice of the Hopper path for dgrad/wgrad,
     * runtime/mg_launch.c) also picks what the bwd entries are compiled for: with the Hopper
     * path they run under its (384, 1) launch bounds, which cost the mma.sync path half its
     * occupancy (templates/mg_wgmma.cuh). Unset: the source's default, MG_WG_BWD. */
    const char *bwd = getenv("MOEGEN_WG_BWD");
    if (bwd && *bwd) jo->v[k++] = atoi(bwd) != 0 ? "-DMG_WG_BWD=1" : "-DMG_WG_BWD=0";
    /* env MOEGEN_WG_CLUSTER=2: the row GEMMs in CTA pairs (templates/mg_wgmma.cuh); the
     * launcher reads the same variable and launches them in clusters of 2 */
    const char *cl = getenv("MOEGEN_WG_CLUSTER");
    if (cl && *cl && atoi(cl) == 2) jo->v[k++] = "-DMG_WG_CLUSTER=2";
    jo->n = k;
    if (o && o->verbose_ptxas) jo->v[k++] = "--ptxas-options=-v";
    jo->n_all = k;
    return MG_OK;
}

static void opts_print(FILE *fp, const jit_opts *jo)
{
    for (int i = 0; i < jo->n_all; i++) fprintf(fp, "%s%s", i ? " " : "", jo->v[i]);
}

/* ---------------------------------------------------------------------------------------
 * Failure reporting */

/* Writes the failing source to <cachedir>/failed/<name>.cu so it can be fed to nvcc by hand.
 * Returns 0 with the path in buf, or -1 with the reason in buf. */
static int dump_source(const char *name, const char *src, size_t len, char *buf, size_t n)
{
    char dir[PATH_MAX - 300], safe[256];
    mg_err e;
    size_t i = 0;
    /* The name becomes a file name: keep it to characters no shell or path can misread. */
    for (; name[i] && i + 1 < sizeof safe; i++) {
        char c = name[i];
        int ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                 c == '_' || c == '-' || c == '.';
        safe[i] = ok ? c : '_';
    }
    safe[i] = 0;
    if (mg_cache_dir(dir, sizeof dir, &e)) {
        snprintf(buf, n, "not dumped: %s", e.msg);
        return -1;
    }
    snprintf(buf, n, "%s/failed", dir);
    if (mg_mkdir_p(buf, &e)) {
        snprintf(buf, n, "not dumped: %s", e.msg);
        return -1;
    }
    snprintf(buf, n, "%s/failed/%s.cu", dir, safe);
    FILE *fp = fopen(buf, "wb");
    if (!fp || fwrite(src, 1, len, fp) != len || fclose(fp)) {
        int en = errno;
        if (fp) fclose(fp);
        snprintf(buf, n, "not dumped: %s", strerror(en));
        return -1;
    }
    return 0;
}

static int report_failure(const char *name, const char *src, size_t len, const jit_opts *jo,
                          const char *log, nvrtcResult rc, mg_err *err)
{
    char where[PATH_MAX + 64];
    dump_source(name, src, len, where, sizeof where);
    /* Parallel compiles fail together; keep each report in one piece. */
    flockfile(stderr);
    fprintf(stderr, "moegen: nvrtc: compiling %s failed: %s\n", name, nvrtcGetErrorString(rc));
    fprintf(stderr, "---- nvrtc log ----\n%s%s", log && *log ? log : "(empty)\n",
            log && *log && log[strlen(log) - 1] != '\n' ? "\n" : "");
    fprintf(stderr, "---- options: ");
    opts_print(stderr, jo);
    fprintf(stderr, "\n---- source: %s\n", where);
    funlockfile(stderr);
    return mg_err_set(err, MG_EUSER, "nvrtc: compiling %s failed (see log above; source dumped to %s)",
                      name, where);
}

/* ---------------------------------------------------------------------------------------
 * NVRTC */

static char *program_log(nvrtcProgram p)
{
    size_t n = 0;
    if (nvrtcGetProgramLogSize(p, &n) != NVRTC_SUCCESS || n <= 1) return NULL;
    char *log = malloc(n);
    if (log && nvrtcGetProgramLog(p, log) != NVRTC_SUCCESS) { free(log); log = NULL; }
    return log;
}

/* A virtual arch (compute_XX) yields PTX, NUL included, which cudaLibraryLoadData JITs. */
static int program_ptx(nvrtcProgram p, const char *name, mg_blob *out, mg_err *err)
{
    size_t n = 0;
    if (nvrtcGetPTXSize(p, &n) != NVRTC_SUCCESS || n == 0)
        return mg_err_set(err, MG_EINTERNAL, "nvrtc: %s: no PTX produced", name);
    if (!(out->data = malloc(n))) return mg_err_set(err, MG_EINTERNAL, "jit: out of memory");
    if (nvrtcGetPTX(p, out->data) != NVRTC_SUCCESS) {
        mg_blob_free(out);
        return mg_err_set(err, MG_EINTERNAL, "nvrtc: %s: nvrtcGetPTX failed", name);
    }
    out->size = n;
    return MG_OK;
}

static int program_cubin(nvrtcProgram p, const char *name, mg_blob *out, mg_err *err)
{
    size_t n = 0;
    if (nvrtcGetCUBINSize(p, &n) != NVRTC_SUCCESS || n == 0)
        return mg_err_set(err, MG_EUSER, "nvrtc: %s: no cubin produced (the arch must be a real "
                          "sm_XX, not a virtual compute_XX)", name);
    if (!(out->data = malloc(n))) return mg_err_set(err, MG_EINTERNAL, "jit: out of memory");
    if (nvrtcGetCUBIN(p, out->data) != NVRTC_SUCCESS) {
        mg_blob_free(out);
        return mg_err_set(err, MG_EINTERNAL, "nvrtc: %s: nvrtcGetCUBIN failed", name);
    }
    out->size = n;
    return MG_OK;
}

/* Compiles with NVRTC into res->cubin and res->log. */
static int nvrtc_build(const char *name, const char *src, size_t len, const jit_opts *jo,
                       mg_jit_result *res, mg_err *err)
{
    char prog_name[300];
    nvrtcProgram p;
    /* NVRTC wants a NUL-terminated source; the caller's may be a slice of a larger buffer. */
    char *text = malloc(len + 1);
    if (!text) return mg_err_set(err, MG_EINTERNAL, "jit: out of memory");
    memcpy(text, src, len);
    text[len] = 0;
    snprintf(prog_name, sizeof prog_name, "%s.cu", name);
    nvrtcResult rc = nvrtcCreateProgram(&p, text, prog_name, 0, NULL, NULL);
    if (rc != NVRTC_SUCCESS) {
        free(text);
        return mg_err_set(err, MG_EINTERNAL, "nvrtc: %s: create program: %s", name,
                          nvrtcGetErrorString(rc));
    }
    rc = nvrtcCompileProgram(p, jo->n_all, jo->v);
    res->log = program_log(p);   /* before looking at rc: the log explains a failure */
    int ptx = strstr(jo->arch_opt, "=compute_") != NULL;
    int ret = rc != NVRTC_SUCCESS ? report_failure(name, src, len, jo, res->log, rc, err)
              : ptx               ? program_ptx(p, name, &res->cubin, err)
                                  : program_cubin(p, name, &res->cubin, err);
    nvrtcDestroyProgram(&p);
    free(text);
    return ret;
}

/* ---------------------------------------------------------------------------------------
 * Compile through the cache */

/* A cache that cannot be written costs speed, not correctness: warn and go on. */
static void cache_store(const char *dir, const char *name, const mg_jit_result *res)
{
    mg_err e;
    if (mg_cache_put(dir, res->key, name, &res->cubin, &e))
        mg_log(MG_LOG_WARN, "%s (compiled %s anyway)", e.msg, name);
}

static int compile_cached(const char *name, const char *src, size_t len, const mg_jit_opts *o,
                          const jit_opts *jo, const char *arch, mg_jit_result *res, mg_err *err)
{
    char dir[PATH_MAX];
    int use_cache = !(o && o->no_cache);
    int rc = mg_cache_key(src, len, arch, jo->v, jo->n, res->key, err);
    if (!rc && use_cache) rc = mg_cache_dir(dir, sizeof dir, err);
    if (rc) return rc;
    /* verbose_ptxas asks for ptxas's report, which only a real compile produces. */
    if (use_cache && !(o && o->verbose_ptxas) && mg_cache_get(dir, res->key, &res->cubin)) {
        res->cache_hit = 1;
        return MG_OK;
    }
    if ((rc = nvrtc_build(name, src, len, jo, res, err))) return rc;
    if (use_cache) cache_store(dir, name, res);
    return MG_OK;
}

int mg_jit_compile(const char *name, const char *src, size_t len, const mg_jit_opts *o,
                   mg_jit_result *res, mg_err *err)
{
    double t0 = now_ms();
    const char *arch = o && o->arch && *o->arch ? o->arch : MG_JIT_DEFAULT_ARCH;
    jit_opts jo = {0};
    memset(res, 0, sizeof *res);
    if (!name || !*name || !src)
        return mg_err_set(err, MG_EINTERNAL, "jit: compile needs a name and a source");
    int rc = opts_build(&jo, o, arch, err);
    if (!rc) rc = compile_cached(name, src, len, o, &jo, arch, res, err);
    free(jo.v);
    if (rc) {
        mg_jit_result_free(res);   /* a failed call leaves nothing for the caller to free */
        return rc;
    }
    res->compile_ms = now_ms() - t0;
    return MG_OK;
}

/* ---------------------------------------------------------------------------------------
 * Parallel compile: workers pull indices from one atomic counter, so a slow kernel never
 * holds up the queue behind it, and each result lands in its input slot. */

typedef struct many_ctx {
    int n;
    const char *const *names, *const *srcs;
    const size_t *lens;
    const mg_jit_opts *o;
    mg_jit_result *res;
    mg_err *errs;
    atomic_int next;
} many_ctx;

static void *many_worker(void *arg)
{
    many_ctx *c = arg;
    for (int i; (i = atomic_fetch_add(&c->next, 1)) < c->n;) {
        mg_err_clear(&c->errs[i]);
        mg_jit_compile(c->names[i], c->srcs[i], c->lens[i], c->o, &c->res[i], &c->errs[i]);
    }
    return NULL;
}

static int many_jobs(int jobs, int n)
{
    if (jobs <= 0) {
        long cores = sysconf(_SC_NPROCESSORS_ONLN);
        jobs = cores > 0 ? (int)cores : 1;
    }
    return jobs < n ? jobs : n;
}

/* Runs the workers: jobs-1 threads plus the calling thread, so a failed pthread_create
 * only means fewer helpers, never a failed compile. */
static void many_run(many_ctx *c, int jobs)
{
    pthread_t *t = malloc(sizeof *t * (size_t)(jobs > 1 ? jobs - 1 : 1));
    int started = 0;
    for (int k = 0; t && k < jobs - 1; k++)
        if (pthread_create(&t[started], NULL, many_worker, c) == 0) started++;
    many_worker(c);
    for (int k = 0; k < started; k++) pthread_join(t[k], NULL);
    free(t);
}

int mg_jit_compile_many(int n, const char *const *names, const char *const *srcs,
                        const size_t *lens, const mg_jit_opts *o, int jobs,
                        mg_jit_result *res, mg_err *err)
{
    if (n <= 0) return MG_OK;
    many_ctx c = {.n = n, .names = names, .srcs = srcs, .lens = lens, .o = o, .res = res};
    atomic_init(&c.next, 0);
    if (!(c.errs = calloc((size_t)n, sizeof *c.errs)))
        return mg_err_set(err, MG_EINTERNAL, "jit: out of memory");
    many_run(&c, many_jobs(jobs, n));
    /* "First" in input order, not in time, so the reported error is reproducible. */
    int rc = MG_OK;
    for (int i = 0; i < n && !rc; i++)
        if (c.errs[i].code) {
            rc = c.errs[i].code;
            if (err) *err = c.errs[i];
        }
    if (rc)
        for (int i = 0; i < n; i++) mg_jit_result_free(&res[i]);
    free(c.errs);
    return rc;
}
