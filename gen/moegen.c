/* moegen: the command-line tool, a thin client of libmoegen.
 *
 * Verbs: check, gen, compile, selftest, cache, devices, data, train, eval, report, watch, analyze; `moegen spec.lua` runs check + gen +
 * compile. Exit codes: 0 success, 1 user error, 2 internal error. */
#include "mg_cmd_data.h"
#include "mg_cmd_train.h"
#include "mg_bundle.h"
#include "mg_err.h"
#include "mg_gen.h"
#include "mg_jit.h"
#include "mg_plan.h"
#include "mg_report.h"
#include "mg_selftest.h"
#include "mg_tune.h"
#include "mg_spec.h"

#include <cuda_runtime.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* ---- options ------------------------------------------------------------------------ */

typedef struct cli_opts {
    const char *spec;      /* positional */
    const char *outdir;    /* -o */
    const char *arch;      /* --arch (gen --bundle: a comma list) */
    int bundle;            /* gen --bundle */
    int jobs;              /* --jobs */
    int no_cache;          /* --no-cache */
    int verbose;           /* -v: ptxas resource usage */
    unsigned long long seed;
    int have_seed;
    const char *sub;       /* cache ls|clear */
    const char *gpu;       /* --gpu NAME: whose tuning db entries gen/compile use */
    int rules;             /* --rules: ignore the tuning db */
} cli_opts;

static const char *const usage_main =
    "usage: moegen <verb> [options] spec.lua\n"
    "       moegen spec.lua            check, gen and compile in one go\n"
    "\n"
    "verbs:\n"
    "  check SPEC                      validate a spec and print its plan (dims, params, FLOPs, memory, kernels)\n"
    "  gen SPEC [-o DIR]               write the CUDA sources, C header and manifest.json (default out/<name>/)\n"
    "  gen SPEC --bundle [--arch A,B] [-o DIR]\n"
    "                                  a standalone bundle: cubins + PTX embedded in a C loader and API (default out/<name>-bundle/)\n"
    "  compile SPEC [--arch A] [-o DIR] [--jobs N] [--no-cache] [-v]\n"
    "                                  gen + NVRTC-compile every kernel family into cubins (arch sm_90a|sm_90|sm_80)\n"
    "  selftest SPEC [--seed N] [--arch A|compute_80] check every kernel against the CPU reference (GPU part skipped without a GPU)\n"
    "  cache ls|clear                  list or empty the JIT cache ($MOEGEN_CACHE_DIR, default ~/.cache/moegen)\n"
    "  devices                         list CUDA devices (exit 1 when there are none)\n"
    "  tune SPEC... [--tokens T,..] [--budget S]\n"
    "                                  find the fastest correct kernel configs on this GPU, remember them (tune --help)\n"
    "  check/gen/compile take --gpu NAME (use that GPU's tuning db entries) or --rules (ignore the db)\n"
    "  data --corpus NAME|PATH [--tokenizer word|gpt2] [-o DIR]\n"
    "                                  tokenize a corpus into train/valid token files + vocab (see data --help)\n"
    "  train SPEC --device cpu [--steps N] [--run-dir DIR] [--resume DIR]\n"
    "                                  train the model (CPU trainer; metrics.jsonl, checkpoints; see train --help)\n"
    "  eval CKPT [--data FILE]         loss and perplexity of a checkpoint\n"
    "  report RUN_DIR... [-o FILE]     one self-contained HTML report of runs (curves, expert load, co-activation)\n"
    "  watch RUN_DIR [--once]          live terminal view of a training run\n"
    "  analyze CKPT --data FILE        expert specialization of a checkpoint (JSON, --html)\n"
    "\n"
    "options: --help (also after a verb), --version\n"
    "example: moegen compile specs/wt2-moe8.lua --arch sm_90a\n";

static int user_error(const char *fmt, const char *a)
{
    fprintf(stderr, "moegen: ");
    fprintf(stderr, fmt, a);
    fprintf(stderr, "\n");
    return MG_EUSER;
}

static int verb_help(const char *verb)
{
    static const struct { const char *verb, *text; } helps[] = {
        {"check", "usage: moegen check SPEC\n  Validates SPEC and prints the plan: every dimension, total and active\n"
                  "  parameters, FLOPs per token, a GPU memory estimate and the kernels to generate.\n"},
        {"gen", "usage: moegen gen SPEC [-o DIR]\n  Writes one .cu per kernel family, moe_<name>.h and manifest.json into DIR\n"
                "  (default out/<name>/), atomically: a failed run leaves nothing behind.\n"
                "usage: moegen gen SPEC --bundle [--arch sm_80,sm_90a] [-o DIR] [--jobs N] [--no-cache]\n"
                "  Writes a directory that builds and runs without moegen, Lua or NVRTC (default out/<name>-bundle/):\n"
                "  moe_<name>.h (C API), moe_<name>.c (loader; cubins per arch + compute_80 PTX embedded),\n"
                "  moe_<name>.mk and CMakeLists.txt. Consumers compile moe_<name>.c and link -lcudart.\n"
                "example: moegen gen specs/tiny.lua --bundle -o build/moe_tiny\n"},
        {"compile", "usage: moegen compile SPEC [--arch sm_90a|sm_90|sm_80] [-o DIR] [--jobs N] [--no-cache] [-v]\n"
                    "  Generates and compiles every kernel family with NVRTC (in parallel, through the JIT cache)\n"
                    "  and writes the sources and <family>.<arch>.cubin into DIR. -v prints ptxas resource usage.\n"},
        {"selftest", "usage: moegen selftest SPEC [--seed N]\n  Runs the CPU reference checks (finite differences), then every generated\n"
                     "  kernel on fresh random data against the reference, on the spec's dims and edge cases.\n"
                     "  Without a GPU it prints 'skipped: no CUDA device' for the GPU part.\n"},
        {"cache", "usage: moegen cache ls|clear\n  Lists or removes the cached cubins in $MOEGEN_CACHE_DIR (default ~/.cache/moegen).\n"},
        {"devices", "usage: moegen devices\n  Lists CUDA devices; exits 1 when there is none.\n"},
    };
    for (size_t i = 0; i < sizeof helps / sizeof *helps; i++)
        if (!strcmp(helps[i].verb, verb)) { fputs(helps[i].text, stdout); return 0; }
    fputs(usage_main, stdout);
    return 0;
}

static int parse_int(const char *flag, const char *v, long lo, long hi, long *out)
{
    char *end;
    long x = strtol(v, &end, 10);
    if (!*v || *end || x < lo || x > hi) {
        fprintf(stderr, "moegen: %s = '%s': must be an integer in [%ld, %ld]\n", flag, v, lo, hi);
        return MG_EUSER;
    }
    *out = x;
    return 0;
}

static int parse_opts(const char *verb, int argc, char **argv, cli_opts *o)
{
    memset(o, 0, sizeof *o);
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        const char *next = i + 1 < argc ? argv[i + 1] : NULL;
        long v;
        if (!strcmp(a, "-o") || !strcmp(a, "--arch") || !strcmp(a, "--jobs") || !strcmp(a, "--seed") ||
            !strcmp(a, "--gpu")) {
            if (!next) return user_error("%s needs a value", a);
            i++;
            if (!strcmp(a, "-o")) o->outdir = next;
            else if (!strcmp(a, "--gpu")) o->gpu = next;
            else if (!strcmp(a, "--arch")) {
                /* selftest also takes compute_80: PTX that the driver JIT-compiles, which runs the
                 * mma.sync (sm_80) path on a Hopper card */
                int ptx_ok = !strcmp(verb, "selftest") && !strcmp(next, "compute_80");
                if (strcmp(next, "sm_90a") && strcmp(next, "sm_90") && strcmp(next, "sm_80") && !strchr(next, ',') &&
                    !ptx_ok)
                    return user_error(!strcmp(verb, "selftest")
                                          ? "--arch = '%s': must be one of sm_90a, sm_90, sm_80, compute_80"
                                          : "--arch = '%s': must be one of sm_90a, sm_90, sm_80", next);
                o->arch = next;
            } else if (!strcmp(a, "--jobs")) {
                if (parse_int("--jobs", next, 1, 256, &v)) return MG_EUSER;
                o->jobs = (int)v;
            } else {
                char *end;
                o->seed = strtoull(next, &end, 10);
                if (!*next || *end) return user_error("--seed = '%s': must be a non-negative integer", next);
                o->have_seed = 1;
            }
        } else if (!strcmp(a, "--no-cache")) o->no_cache = 1;
        else if (!strcmp(a, "--rules")) o->rules = 1;
        else if (!strcmp(a, "--bundle") && !strcmp(verb, "gen")) o->bundle = 1;
        else if (!strcmp(a, "-v")) o->verbose = 1;
        else if (a[0] == '-' && a[1]) {
            fprintf(stderr, "moegen: %s: unknown option '%s' (see moegen %s --help)\n", verb, a, verb);
            return MG_EUSER;
        } else if (!o->spec) o->spec = a;
        else if (!strcmp(verb, "cache") && !o->sub) o->sub = a;
        else return user_error("unexpected argument '%s'", a);
    }
    return 0;
}

/* ---- shared steps -------------------------------------------------------------------- */

static int report(const mg_err *err)
{
    fprintf(stderr, "moegen: %s\n", err->msg);
    return err->code ? err->code : MG_EINTERNAL;
}

static int load_plan(const cli_opts *o, const char *verb, mg_plan *plan)
{
    if (!o->spec) {
        fprintf(stderr, "moegen: %s: missing spec file (usage: moegen %s SPEC)\n", verb, verb);
        return MG_EUSER;
    }
    mg_spec spec;
    mg_err err;
    mg_err_clear(&err);
    if (mg_spec_load(o->spec, &spec, &err)) return report(&err);
    /* Tiles from the tuning db (moegen tune), else the rules. gen and compile never touch the
     * GPU (they run on build machines too): the entry is the one tuned on --gpu NAME, else the
     * newest for the spec's kernels; each tunable family prints which it used. */
    mg_tune_lookup tl = {.gpu = o->gpu, .arch = o->arch, .rules_only = o->rules,
                         .log = strcmp(verb, "gen") && strcmp(verb, "compile") ? NULL : stdout};
    if (mg_tune_plan_make(&spec, &tl, plan, &err)) return report(&err);
    return 0;
}

static void default_outdir(const mg_plan *plan, const cli_opts *o, char *buf, size_t n)
{
    if (o->outdir) snprintf(buf, n, "%s", o->outdir);
    else snprintf(buf, n, "out/%s", plan->spec.name);
}

static double now_ms(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e3 + t.tv_nsec / 1e6;
}

/* ---- verbs --------------------------------------------------------------------------- */

static int cmd_check(const cli_opts *o)
{
    mg_plan plan;
    int rc = load_plan(o, "check", &plan);
    if (rc) return rc;
    mg_plan_print(&plan, stdout);
    return 0;
}

static int cmd_gen(const cli_opts *o, int quiet)
{
    mg_plan plan;
    int rc = load_plan(o, "gen", &plan);
    if (rc) return rc;
    mg_genout out;
    mg_err err;
    mg_err_clear(&err);
    char dir[1024];
    default_outdir(&plan, o, dir, sizeof dir);
    if (mg_gen_sources(&plan, &out, &err) || mg_gen_write(&out, dir, &err)) {
        mg_genout_free(&out);
        return report(&err);
    }
    if (!quiet) printf("gen: wrote %d kernel sources, %s and manifest.json to %s/\n", out.n_src, out.header.file, dir);
    mg_genout_free(&out);
    return 0;
}

static int cmd_bundle(const cli_opts *o)
{
    mg_plan plan;
    int rc = load_plan(o, "gen", &plan);
    if (rc) return rc;
    char dir[1024];
    if (o->outdir) snprintf(dir, sizeof dir, "%s", o->outdir);
    else snprintf(dir, sizeof dir, "out/%s-bundle", plan.spec.name);
    mg_bundle_opts bo = {.archs = o->arch, .jobs = o->jobs, .no_cache = o->no_cache};
    mg_err err;
    mg_err_clear(&err);
    double t0 = now_ms();
    if (mg_bundle_write(&plan, &bo, dir, &err)) return report(&err);
    printf("gen: bundle for %s (%s + %s PTX) in %s/ (%.0f ms); build it with %s/moe_*.mk or CMakeLists.txt\n",
           plan.spec.name, o->arch ? o->arch : MG_BUNDLE_DEFAULT_ARCHS, MG_BUNDLE_PTX_ARCH, dir, now_ms() - t0, dir);
    return 0;
}

static int cmd_compile(const cli_opts *o, int quiet)
{
    mg_plan plan;
    int rc = load_plan(o, "compile", &plan);
    if (rc) return rc;
    mg_genout out;
    mg_err err;
    mg_err_clear(&err);
    if (mg_gen_sources(&plan, &out, &err)) return report(&err);

    const char *names[MG_FAM_COUNT], *srcs[MG_FAM_COUNT];
    size_t lens[MG_FAM_COUNT];
    for (int i = 0; i < out.n_src; i++) {
        names[i] = plan.fam[i].name;
        srcs[i] = out.src[i].text;
        lens[i] = out.src[i].len;
    }
    mg_jit_opts jo = {.arch = o->arch ? o->arch : "sm_90a", .no_cache = o->no_cache, .verbose_ptxas = o->verbose};
    mg_jit_result res[MG_FAM_COUNT];
    memset(res, 0, sizeof res);
    double t0 = now_ms();
    rc = mg_jit_compile_many(out.n_src, names, srcs, lens, &jo, o->jobs, res, &err);
    double ms = now_ms() - t0;
    if (!rc) {
        mg_extra_file extra[MG_FAM_COUNT];
        for (int i = 0; i < out.n_src; i++) {
            snprintf(extra[i].file, sizeof extra[i].file, "%s.%s.cubin", plan.fam[i].name, jo.arch);
            extra[i].data = res[i].cubin.data;
            extra[i].size = res[i].cubin.size;
        }
        char dir[1024];
        default_outdir(&plan, o, dir, sizeof dir);
        rc = mg_gen_write_with(&out, extra, out.n_src, dir, &err);
        if (!rc && !quiet) {
            int hits = 0;
            for (int i = 0; i < out.n_src; i++) {
                hits += res[i].cache_hit;
                printf("  %-64s %7zu B  %s %8.1f ms\n", plan.fam[i].name, res[i].cubin.size,
                       res[i].cache_hit ? "cached " : "nvrtc  ", res[i].compile_ms);
                if (o->verbose && res[i].log && *res[i].log) printf("%s\n", res[i].log);
            }
            printf("compile: %d kernel families for %s in %.1f ms (%d cached), cubins in %s/\n", out.n_src, jo.arch, ms,
                   hits, dir);
        }
    }
    for (int i = 0; i < out.n_src; i++) mg_jit_result_free(&res[i]);
    mg_genout_free(&out);
    return rc ? report(&err) : 0;
}

static int cmd_default(const cli_opts *o)
{
    int rc = cmd_check(o);
    if (!rc) rc = cmd_compile(o, 0);
    if (rc) return rc;
    mg_plan plan;
    load_plan(o, "check", &plan);
    char dir[1024];
    default_outdir(&plan, o, dir, sizeof dir);
    printf("\nnext: moegen selftest %s   (checks every kernel against the CPU reference)\n"
           "      the generated layer is in %s/ (sources, moe_*.h, manifest.json, cubins)\n", o->spec, dir);
    return 0;
}

static int cmd_selftest(const cli_opts *o)
{
    if (!o->spec) return user_error("%s", "selftest: missing spec file (usage: moegen selftest SPEC)");
    mg_spec spec;
    mg_err err;
    mg_err_clear(&err);
    if (mg_spec_load(o->spec, &spec, &err)) return report(&err);
    mg_selftest_opts so;
    memset(&so, 0, sizeof so);
    so.seed = o->have_seed ? o->seed : (unsigned long long)time(NULL);
    so.arch = o->arch;
    int rc = mg_selftest(&spec, &so, &err);
    if (rc && err.msg[0]) return report(&err);
    return rc;
}

static int cmd_cache(const cli_opts *o)
{
    const char *sub = o->spec;  /* the first positional */
    mg_err err;
    mg_err_clear(&err);
    if (!sub) return user_error("%s", "cache: missing subcommand (ls or clear)");
    if (!strcmp(sub, "ls")) {
        int n = mg_cache_ls(stdout, &err);
        if (n < 0) return report(&err);
        char dir[1024];
        if (mg_cache_dir(dir, sizeof dir, &err)) return report(&err);
        printf("%d entries in %s\n", n, dir);
        return 0;
    }
    if (!strcmp(sub, "clear")) {
        int n = mg_cache_clear(&err);
        if (n < 0) return report(&err);
        printf("removed %d entries\n", n);
        return 0;
    }
    return user_error("cache: unknown subcommand '%s' (allowed: ls, clear)", sub);
}

static int cmd_devices(void)
{
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess || n == 0) {
        printf("no CUDA device\n");
        return MG_EUSER;
    }
    for (int i = 0; i < n; i++) {
        struct cudaDeviceProp p;
        if (cudaGetDeviceProperties(&p, i) != cudaSuccess) continue;
        printf("%d: %s  sm_%d%d  %d SMs  %.1f GiB\n", i, p.name, p.major, p.minor, p.multiProcessorCount,
               p.totalGlobalMem / 1073741824.0);
    }
    return 0;
}

int main(int argc, char **argv)
{
    if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
        fputs(usage_main, argc < 2 ? stderr : stdout);
        return argc < 2 ? MG_EUSER : 0;
    }
    if (!strcmp(argv[1], "--version")) {
        char nv[32];
        mg_nvrtc_version(nv, sizeof nv);
        printf("moegen %s (NVRTC %s)\n", mg_version(), nv);
        return 0;
    }
    if (!strcmp(argv[1], "data")) return mg_cmd_data(argc - 2, argv + 2);
    if (!strcmp(argv[1], "train")) return mg_cmd_train(argc - 2, argv + 2);
    if (!strcmp(argv[1], "eval")) return mg_cmd_eval(argc - 2, argv + 2);
    if (!strcmp(argv[1], "tune")) return mg_tune_cli(argc - 2, argv + 2);
    if (!strcmp(argv[1], "report")) return mg_cmd_report(argc - 2, argv + 2);
    if (!strcmp(argv[1], "watch")) return mg_cmd_watch(argc - 2, argv + 2);
    if (!strcmp(argv[1], "analyze")) return mg_cmd_analyze(argc - 2, argv + 2);
    static const char *const verbs[] = {"check", "gen", "compile", "selftest", "cache", "devices"};
    const char *verb = NULL;
    for (size_t i = 0; i < sizeof verbs / sizeof *verbs; i++)
        if (!strcmp(argv[1], verbs[i])) verb = verbs[i];
    int first = verb ? 2 : 1;
    for (int i = first; i < argc; i++)
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) return verb_help(verb ? verb : "");
    if (!verb && argv[1][0] == '-') return user_error("unknown option '%s' (see moegen --help)", argv[1]);
    if (!verb && !strstr(argv[1], ".lua"))
        return user_error("unknown verb '%s' (allowed: check, gen, compile, selftest, cache, devices, data, train, eval, report, watch, analyze, or a spec.lua)",
                          argv[1]);
    cli_opts o;
    if (parse_opts(verb ? verb : "moegen", argc - first, argv + first, &o)) return MG_EUSER;
    if (o.arch && strchr(o.arch, ',') && !o.bundle)
        return user_error("--arch = '%s': a list needs gen --bundle; give one of sm_90a, sm_90, sm_80", o.arch);
    if (!verb) return cmd_default(&o);
    if (!strcmp(verb, "check")) return cmd_check(&o);
    if (!strcmp(verb, "gen")) return o.bundle ? cmd_bundle(&o) : cmd_gen(&o, 0);
    if (!strcmp(verb, "compile")) return cmd_compile(&o, 0);
    if (!strcmp(verb, "selftest")) return cmd_selftest(&o);
    if (!strcmp(verb, "cache")) return cmd_cache(&o);
    return cmd_devices();
}
