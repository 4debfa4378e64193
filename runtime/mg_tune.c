/* mg_tune: `moegen tune` orchestration: device probe, per spec x tokens x family: space,
 * resume, budget cut, parallel NVRTC, worker sweep, selection, database, reports. */
#include "mg_tune.h"
#include "mg_cache.h"
#include "mg_cuda.h"
#include "mg_gen.h"
#include "mg_jit.h"
#include "mg_tune_gpu.h"
#include "mg_tune_report.h"

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#define DEFAULT_BUDGET_S 270.0   /* one spec's sweep stays under the 5-minute bar on one H100 */
#define PICK_MARGIN 0.01         /* the rules' config stays unless beaten by more than 1% */
#define NOMINAL_TFLOPS 150.0     /* the layer's fwd+bwd rate, for budget estimates only */

/* ------------------------------------------------------------------ device probe */
typedef struct probe_msg { int ok; mg_tune_hw hw; char arch[32], why[200]; } probe_msg;

int mg_tune_hw_probe(mg_tune_hw *hw, char *arch, size_t an, char *why, size_t wn)
{
    int fds[2];
    if (pipe(fds)) { snprintf(why, wn, "pipe: %s", strerror(errno)); return 0; }
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    if (pid < 0) { close(fds[0]); close(fds[1]); snprintf(why, wn, "fork: %s", strerror(errno)); return 0; }
    if (pid == 0) {   /* the only process that initializes CUDA here; it exits at once */
        close(fds[0]);
        probe_msg m;
        memset(&m, 0, sizeof m);
        if (mg_cuda_device_count(m.why, sizeof m.why) > 0) {
            struct cudaDeviceProp p;
            if (cudaGetDeviceProperties(&p, 0) == cudaSuccess) {
                m.ok = 1;
                snprintf(m.hw.name, sizeof m.hw.name, "%.127s", p.name);
                m.hw.sms = p.multiProcessorCount;
                m.hw.cc_major = p.major;
                m.hw.cc_minor = p.minor;
                m.hw.smem_optin = (int)p.sharedMemPerBlockOptin;
                m.hw.smem_per_sm = (int)p.sharedMemPerMultiprocessor;
                m.hw.regs_per_sm = p.regsPerMultiprocessor;
                m.hw.max_threads_per_sm = p.maxThreadsPerMultiProcessor;
                m.hw.l2_bytes = p.l2CacheSize;
                mg_cuda_arch(0, m.arch, sizeof m.arch);
            } else {
                snprintf(m.why, sizeof m.why, "cudaGetDeviceProperties failed");
            }
        }
        ssize_t w = write(fds[1], &m, sizeof m);
        _exit(w == (ssize_t)sizeof m ? 0 : 1);
    }
    close(fds[1]);
    probe_msg m;
    memset(&m, 0, sizeof m);
    size_t got = 0;
    while (got < sizeof m) {
        ssize_t r = read(fds[0], (char *)&m + got, sizeof m - got);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) break;
        got += (size_t)r;
    }
    close(fds[0]);
    int st;
    while (waitpid(pid, &st, 0) < 0 && errno == EINTR) {}
    if (got != sizeof m) { snprintf(why, wn, "device probe died"); return 0; }
    if (!m.ok) { snprintf(why, wn, "%s", m.why[0] ? m.why : "no CUDA device"); return 0; }
    *hw = m.hw;
    snprintf(arch, an, "%s", m.arch);
    return 1;
}

/* ------------------------------------------------------------------ one family sweep */
typedef struct tune_job {
    const mg_spec *spec;
    mg_family_id fam;
    int T;
    mg_tune_key key;
    mg_tune_cand *c;
    int n;
} tune_job;

static void job_key(tune_job *j, const mg_plan *rules, const mg_tune_hw *hw, const char *arch, mg_tune_dist dist)
{
    mg_tune_key *k = &j->key;
    memset(k, 0, sizeof *k);
    mg_tune_kernel_base(&rules->fam[j->fam], k->kernel, sizeof k->kernel);
    snprintf(k->family, sizeof k->family, "%s", mg_family_names[j->fam]);
    snprintf(k->dims, sizeof k->dims, "T=%d,dist=%s", j->T, mg_tune_dist_names[dist]);
    snprintf(k->dtype, sizeof k->dtype, "%s", mg_dtype_names[j->spec->dtype]);
    snprintf(k->gpu, sizeof k->gpu, "%s (%d SMs)", hw->name, hw->sms);
    mg_tune_cuda_key(arch, k->cuda, sizeof k->cuda);
    snprintf(k->moegen, sizeof k->moegen, "%s", mg_version());
}

/* Summary of the space: counts per status and per pruning rule. */
static void print_space(const tune_job *j)
{
    int pruned = 0, pending = 0, finished = 0;
    const char *rules[8];
    int counts[8], nr = 0;
    for (int i = 0; i < j->n; i++) {
        const mg_tune_cand *c = &j->c[i];
        if (c->status == MG_TUNE_PENDING) { pending++; continue; }
        if (c->status != MG_TUNE_PRUNED) { finished++; continue; }
        pruned++;
        int q = 0;
        size_t len = strcspn(c->reason, ":");
        while (q < nr && (strlen(rules[q]) < len || strncmp(rules[q], c->reason, len))) q++;
        if (q == nr && nr < 8) { rules[nr] = c->reason; counts[nr++] = 0; }
        if (q < nr) counts[q]++;
    }
    printf("  %-5s %s: %d configs, %d pruned", mg_family_names[j->fam], j->key.kernel, j->n, pruned);
    for (int q = 0; q < nr; q++) printf("%s%d %.*s", q ? ", " : " (", counts[q], (int)strcspn(rules[q], ":"), rules[q]);
    printf("%s, %d to run", nr ? ")" : "", pending);
    if (finished) printf(", %d finished earlier", finished);
    printf("\n");
}

/* Estimated seconds to check and time one candidate (for the budget cut). */
static double cand_cost_s(const mg_spec *s, int T, const mg_tune_opts *o)
{
    double d = s->model.d_model, ff = s->moe.d_ff, f2 = ff * (mg_act_is_glu(s->moe.activation) ? 2 : 1);
    double tk = (double)T * (s->moe.top_k + s->moe.shared_experts);
    double layer_s = 3.0 * 2.0 * tk * (d * f2 + ff * d) / (NOMINAL_TFLOPS * 1e12) + 3e-4;
    double grads = (s->moe.experts + s->moe.shared_experts) * (d * f2 + ff * d) * 4.0;
    double check_s = 3.0 * grads / 4e9 + 2 * layer_s;   /* fetch + compare the weight gradients */
    return 0.3 + check_s + (o->warmup + o->runs) * layer_s;
}

/* Parallel NVRTC of every pending candidate's family source (plus the rules' other
 * families, which every candidate's layer loads). Marks compile failures. */
static int compile_pending(tune_job *j, const char *arch, int jobs, mg_err *err)
{
    int np = 0;
    for (int i = 0; i < j->n; i++) np += j->c[i].status == MG_TUNE_PENDING;
    if (!np) return MG_OK;
    int cap = np + MG_FAM_COUNT, n = 0;
    char **names = calloc((size_t)cap, sizeof *names), **srcs = calloc((size_t)cap, sizeof *srcs);
    size_t *lens = calloc((size_t)cap, sizeof *lens);
    int *owner = calloc((size_t)cap, sizeof *owner);
    mg_jit_result *res = calloc((size_t)cap, sizeof *res);
    int rc = (!names || !srcs || !lens || !owner || !res) ? mg_err_set(err, MG_EINTERNAL, "tune: out of memory") : MG_OK;
    for (int i = -1; i < j->n && !rc; i++) {   /* i = -1: the rules' plan */
        if (i >= 0 && j->c[i].status != MG_TUNE_PENDING) continue;
        mg_tile tiles[MG_FAM_COUNT];
        memset(tiles, 0, sizeof tiles);
        if (i >= 0) tiles[j->fam] = j->c[i].tile;
        mg_plan plan;
        mg_genout gen;
        memset(&gen, 0, sizeof gen);
        mg_err e2;
        mg_err_clear(&e2);
        if (mg_plan_make(j->spec, tiles, &plan, &e2) || mg_gen_sources(&plan, &gen, &e2)) {
            if (i < 0) { rc = mg_err_set(err, e2.code, "%s", e2.msg); break; }
            j->c[i].status = MG_TUNE_COMPILE_ERROR;
            snprintf(j->c[i].reason, sizeof j->c[i].reason, "gen: %.240s", e2.msg);
            mg_genout_free(&gen);
            continue;
        }
        for (int f = 0; f < gen.n_src; f++) {
            if ((i < 0) == ((mg_family_id)f == j->fam)) continue;   /* rules: the others; candidate: its family */
            names[n] = strdup(plan.fam[f].name);
            srcs[n] = gen.src[f].text;
            gen.src[f].text = NULL;
            lens[n] = gen.src[f].len;
            owner[n++] = i;
        }
        mg_genout_free(&gen);
    }
    mg_jit_opts jo = {.arch = arch};
    if (!rc && mg_jit_compile_many(n, (const char *const *)names, (const char *const *)srcs, lens, &jo, jobs, res, err)) {
        /* the good ones are cached now; find the bad ones one by one (cache hits are ~free) */
        mg_err_clear(err);
        for (int q = 0; q < n; q++) {
            mg_jit_result r1;
            memset(&r1, 0, sizeof r1);
            mg_err e2;
            mg_err_clear(&e2);
            if (mg_jit_compile(names[q], srcs[q], lens[q], &jo, &r1, &e2) == MG_OK) { mg_jit_result_free(&r1); continue; }
            if (owner[q] < 0) { rc = mg_err_set(err, e2.code, "the rules' %s does not compile: %s", names[q], e2.msg); break; }
            j->c[owner[q]].status = MG_TUNE_COMPILE_ERROR;
            snprintf(j->c[owner[q]].reason, sizeof j->c[owner[q]].reason, "nvrtc: %.240s", e2.msg);
        }
    } else {
        /* candidates whose family compiles to the same binary as one ranked before them
         * (knobs a code path ignores, e.g. the Hopper path's) are not timed twice */
        unsigned long long *h = calloc((size_t)n, sizeof *h);
        for (int q = 0; q < n && h; q++) {
            unsigned long long x = 1469598103934665603ull ^ res[q].cubin.size;
            for (size_t b = 0; b < res[q].cubin.size; b++) x = (x ^ ((const unsigned char *)res[q].cubin.data)[b]) * 1099511628211ull;
            h[q] = x;
            for (int p = 0; p < q && owner[q] >= 0; p++) {
                if (owner[p] < 0 || h[p] != h[q] || res[p].cubin.size != res[q].cubin.size ||
                    memcmp(res[p].cubin.data, res[q].cubin.data, res[q].cubin.size))
                    continue;
                char cfg[128];
                mg_tune_tile_str(&j->c[owner[p]].tile, cfg, sizeof cfg);
                j->c[owner[q]].status = MG_TUNE_DUPLICATE;
                snprintf(j->c[owner[q]].reason, sizeof j->c[owner[q]].reason, "same binary as %s", cfg);
                break;
            }
        }
        free(h);
        for (int q = 0; q < n; q++) mg_jit_result_free(&res[q]);
    }
    for (int q = 0; q < n; q++) { free(names[q]); free(srcs[q]); }
    free(names); free(srcs); free(lens); free(owner); free(res);
    return rc;
}

/* compile_pending in a child process. NVRTC 13 calls cuInit while it compiles, and a process
 * whose driver is initialized cannot hand CUDA to the children it forks afterwards (the timing
 * workers then fail with "initialization error"). So the parent never runs NVRTC: a child
 * compiles (into the kernel cache, which the workers read) and sends the candidates' new
 * statuses back. */
static int compile_pending_isolated(tune_job *j, const char *arch, int jobs, mg_err *err)
{
    int fds[2];
    if (pipe(fds)) return mg_err_set(err, MG_EINTERNAL, "tune: pipe: %s", strerror(errno));
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    if (pid < 0) {
        close(fds[0]);
        close(fds[1]);
        return mg_err_set(err, MG_EINTERNAL, "tune: fork: %s", strerror(errno));
    }
    if (pid == 0) {
        close(fds[0]);
        mg_err e;
        mg_err_clear(&e);
        int rc = compile_pending(j, arch, jobs, &e);
        int ok = write(fds[1], &rc, sizeof rc) == (ssize_t)sizeof rc &&
                 write(fds[1], &e, sizeof e) == (ssize_t)sizeof e;
        for (size_t off = 0, n = sizeof *j->c * (size_t)j->n; ok && off < n;) {
            ssize_t w = write(fds[1], (const char *)j->c + off, n - off);
            if (w <= 0) ok = 0; else off += (size_t)w;
        }
        _exit(ok ? 0 : 1);
    }
    close(fds[1]);
    int rc = MG_OK;
    mg_err e;
    size_t want[3] = {sizeof rc, sizeof e, sizeof *j->c * (size_t)j->n}, got = 0;
    void *dst[3] = {&rc, &e, j->c};
    int complete = 1;
    for (int part = 0; part < 3 && complete; part++, got = 0)
        while (got < want[part]) {
            ssize_t r = read(fds[0], (char *)dst[part] + got, want[part] - got);
            if (r < 0 && errno == EINTR) continue;
            if (r <= 0) { complete = 0; break; }
            got += (size_t)r;
        }
    close(fds[0]);
    int st = 0;
    while (waitpid(pid, &st, 0) < 0 && errno == EINTR) {}
    if (!complete)
        return mg_err_set(err, MG_EINTERNAL, "tune: the compile process died (%s)",
                          WIFSIGNALED(st) ? strsignal(WTERMSIG(st)) : "no result");
    if (rc) return mg_err_set(err, e.code, "%s", e.msg);
    return MG_OK;
}

/* ------------------------------------------------------------------ one spec */
typedef struct tune_run {
    const mg_tune_opts *o;
    int have_gpu;
    mg_tune_hw hw;
    char arch[32];
    tune_job jobs[MG_TUNE_MAX_TOKENS * MG_FAM_COUNT * 8];
    char dims_txt[MG_TUNE_MAX_TOKENS * MG_FAM_COUNT * 8][128];
    int n_jobs;
} tune_run;

static int write_reports(tune_run *R, const char *spec_names[], const char *out_dir, mg_err *err)
{
    mg_tune_report rep[sizeof R->jobs / sizeof R->jobs[0]];
    for (int i = 0; i < R->n_jobs; i++) {
        tune_job *j = &R->jobs[i];
        rep[i] = (mg_tune_report){spec_names[i], mg_family_names[j->fam], j->key.kernel, j->key.dims, j->key.gpu, j->c, j->n};
    }
    char csv[PATH_MAX + 16], html[PATH_MAX + 16];
    snprintf(csv, sizeof csv, "%s/tune.csv", out_dir);
    snprintf(html, sizeof html, "%s/tune.html", out_dir);
    if (mg_mkdir_p(out_dir, err) || mg_tune_write_csv(csv, rep, R->n_jobs, err) ||
        mg_tune_write_html(html, rep, R->n_jobs, err))
        return err->code;
    return MG_OK;
}

static int tune_spec(tune_run *R, const mg_spec *spec, const char **spec_names, double deadline, mg_err *err)
{
    const mg_tune_opts *o = R->o;
    mg_plan rules;
    if (mg_plan_make(spec, NULL, &rules, err)) return err->code;
    int tokens[MG_TUNE_MAX_TOKENS], nt = o->n_tokens;
    memcpy(tokens, o->tokens, sizeof tokens);
    if (!nt) {
        long t = (long)spec->train.batch * spec->model.seq_len;
        tokens[nt++] = (int)(t < 16 ? 16 : t > 65536 ? 65536 : t);
    }
    int fams[MG_FAM_COUNT], nf = 0;
    for (int f = 0; f < MG_FAM_COUNT; f++)
        if (mg_tune_family_tunable((mg_family_id)f) && (!o->fam_mask || (o->fam_mask >> f & 1))) fams[nf++] = f;
    printf("tune: %s (%s) on %s, arch %s\n", spec->name, spec->path, R->hw.name, R->arch);
    int first = R->n_jobs;
    for (int ti = 0; ti < nt; ti++)
        for (int fi = 0; fi < nf; fi++) {
            if (R->n_jobs >= (int)(sizeof R->jobs / sizeof R->jobs[0])) break;
            tune_job *j = &R->jobs[R->n_jobs];
            memset(j, 0, sizeof *j);
            j->spec = spec;
            j->fam = (mg_family_id)fams[fi];
            j->T = tokens[ti];
            job_key(j, &rules, &R->hw, R->arch, o->dist);
            j->n = mg_tune_enumerate(spec, j->fam, j->T, &R->hw, &j->c);
            if (j->n < 0) return mg_err_set(err, MG_EINTERNAL, "tune: out of memory");
            spec_names[R->n_jobs] = spec->name;
            R->n_jobs++;
            /* resume: load finished rows so the summary and the cut see them */
            mg_tune_db *db;
            if (mg_tune_db_open(o->db_path, &db, err)) return err->code;
            for (int i = 0; i < j->n; i++) {
                mg_tune_cand row = j->c[i];
                if (j->c[i].status == MG_TUNE_PENDING && mg_tune_db_get(db, &j->key, &j->c[i].tile, &row, err) == 1 &&
                    row.status != MG_TUNE_PENDING && row.status != MG_TUNE_BUDGET)
                    j->c[i] = row;
            }
            mg_tune_db_close(db);
            mg_err_clear(err);
            print_space(j);
        }
    if (!R->have_gpu) return MG_OK;

    for (int ji = first; ji < R->n_jobs; ji++) {
        tune_job *j = &R->jobs[ji];
        double now = mg_tune_now(), share = (deadline - now) / (R->n_jobs - ji);
        const double job_deadline = now + share, per = cand_cost_s(spec, j->T, o);
        char label[64];
        snprintf(label, sizeof label, "%s T=%d", mg_family_names[j->fam], j->T);
        double t0 = mg_tune_now();
        mg_tune_rank(j->c, j->n, -1);   /* the default first: duplicates of it are the others */
        if (compile_pending_isolated(j, R->arch, o->jobs, err)) return err->code;
        int keep = (int)((job_deadline - mg_tune_now() - 10.0) / per);   /* ~10 s: worker start, data, reference */
        if (keep < 3) keep = 3;
        int n_dup = 0, n_cut = 0;
        for (int i = 0; i < j->n; i++) n_dup += j->c[i].status == MG_TUNE_DUPLICATE;
        int kept = mg_tune_rank(j->c, j->n, keep);
        for (int i = 0; i < j->n; i++) n_cut += j->c[i].status == MG_TUNE_BUDGET;
        printf("%s: compiled in %.1f s; %d duplicates; %d to run within %.0f s (about %.1f s each)", label,
               mg_tune_now() - t0, n_dup, kept, job_deadline - mg_tune_now(), per);
        if (n_cut) printf(", %d more ranked out by the cost model", n_cut);
        printf("\n");
        mg_tune_gpu_cfg gc;
        memset(&gc, 0, sizeof gc);
        gc.spec = *spec;
        gc.fam = j->fam;
        gc.T = j->T;
        gc.dist = o->dist;
        snprintf(gc.arch, sizeof gc.arch, "%s", R->arch);
        gc.runs = o->runs;
        gc.warmup = o->warmup;
        gc.seed = o->seed;
        mg_tune_gpu *g = mg_tune_gpu_new(&gc);
        if (!g) return mg_err_set(err, MG_EINTERNAL, "tune: out of memory");
        mg_tune_sweep sw = {o->db_path, &j->key, j->c, j->n, mg_tune_gpu_init, mg_tune_gpu_eval, g,
                            o->timeout_s, job_deadline, 1, label};
        int ran = mg_tune_sweep_run(&sw, err);
        mg_tune_gpu_free(g);
        if (ran < 0) return err->code;
        const mg_tune_cand *def, *best = mg_tune_pick(j->c, j->n, PICK_MARGIN, &def);
        if (best) {
            mg_tune_db *db;
            if (mg_tune_db_open(o->db_path, &db, err)) return err->code;
            int rc = mg_tune_db_set_best(db, &j->key, &best->tile, best->median_ms, def ? &def->tile : &best->tile,
                                         def ? def->median_ms : 0, err);
            mg_tune_db_close(db);
            if (rc) return rc;
        }
        mg_tune_report rep = {spec->name, mg_family_names[j->fam], j->key.kernel, j->key.dims, j->key.gpu, j->c, j->n};
        mg_tune_print_table(stdout, &rep, 10);
        fflush(stdout);
    }
    return MG_OK;
}

int mg_tune_specs(int n, const char *const *paths, const mg_tune_opts *oin, mg_err *err)
{
    mg_tune_opts o = *oin;
    if (o.budget_s <= 0) o.budget_s = DEFAULT_BUDGET_S;
    if (o.runs <= 0) o.runs = 10;
    if (o.runs > 64) o.runs = 64;
    if (o.warmup <= 0) o.warmup = 3;
    if (o.timeout_s <= 0) o.timeout_s = 120;
    tune_run *R = calloc(1, sizeof *R);
    mg_spec *specs = calloc((size_t)(n ? n : 1), sizeof *specs);
    const char **spec_names = calloc(sizeof R->jobs / sizeof R->jobs[0], sizeof *spec_names);
    if (!R || !specs || !spec_names) { free(R); free(specs); free(spec_names); return mg_err_set(err, MG_EINTERNAL, "tune: out of memory"); }
    R->o = &o;
    char why[200];
    R->have_gpu = mg_tune_hw_probe(&R->hw, R->arch, sizeof R->arch, why, sizeof why);
    if (!R->have_gpu) mg_tune_hw_default(o.arch, &R->hw);
    if (o.arch) snprintf(R->arch, sizeof R->arch, "%s", o.arch);
    else if (!R->have_gpu) snprintf(R->arch, sizeof R->arch, "sm_90a");
    int rc = MG_OK;
    for (int i = 0; i < n && !rc; i++) {
        if (mg_spec_load(paths[i], &specs[i], err)) { rc = err->code; break; }
        double deadline = mg_tune_now() + o.budget_s;
        rc = tune_spec(R, &specs[i], spec_names, deadline, err);
    }
    char out_dir[PATH_MAX];
    if (o.out_dir) snprintf(out_dir, sizeof out_dir, "%s", o.out_dir);
    else if (n == 1) snprintf(out_dir, sizeof out_dir, "out/tune-%s", specs[0].name);
    else snprintf(out_dir, sizeof out_dir, "out/tune");
    if (!rc && R->n_jobs) {
        mg_err e2;
        mg_err_clear(&e2);
        if (write_reports(R, spec_names, out_dir, &e2)) rc = mg_err_set(err, e2.code, "%s", e2.msg);
        else printf("tune: every configuration in %s/tune.csv, chart in %s/tune.html\n", out_dir, out_dir);
    }
    if (!rc && !R->have_gpu) printf("skipped: no CUDA device (%s)\n", why);
    else if (!rc) printf("tune: results in %s (gen, compile and the layer now use them)\n", o.db_path ? o.db_path : "the tuning db");
    for (int i = 0; i < R->n_jobs; i++) free(R->jobs[i].c);
    free(R);
    free(specs);
    free(spec_names);
    return rc;
}

/* ------------------------------------------------------------------ CLI */
static const char tune_usage[] =
    "usage: moegen tune SPEC... [--kernels up,down] [--tokens T[,T2...]] [--budget SECONDS] [--jobs N]\n"
    "                   [--dist balanced|zipf|one] [--runs N] [--warmup N] [--timeout SECONDS] [--arch A]\n"
    "                   [--seed N] [-o DIR] [--db FILE]\n"
    "  Finds the fastest correct configuration (tile M/N/K, stages, warps) of each tunable kernel family\n"
    "  for each spec on this GPU: enumerates the space, prunes what breaks a hardware or template rule,\n"
    "  compiles the rest with NVRTC in parallel, checks each against the reference, times the layer's\n"
    "  forward + backward (median of N CUDA-event timings, inputs rotated past the L2, routing of the\n"
    "  requested distribution) and keeps the fastest (the rules' config unless beaten by more than 1%).\n"
    "  Results go to the tuning db ($MOEGEN_CACHE_DIR/tune.db); gen, compile and the layer use them.\n"
    "  Every finished row is committed as it completes: an interrupted sweep resumes where it stopped.\n"
    "  Writes DIR/tune.csv (every config, accepted or not, with the reason) and DIR/tune.html (chart);\n"
    "  DIR defaults to out/tune-<spec>/ (out/tune/ for several specs).\n"
    "  --tokens   token counts to tune for (default: the spec's train.batch x model.seq_len)\n"
    "  --budget   wall-clock seconds per spec (default 270); the cost model ranks what fits\n"
    "  --dist     routing: balanced (round robin), zipf (skewed), one (every token on experts 0..k-1)\n"
    "  Without a GPU it prints the enumeration and pruning summary, then 'skipped: no CUDA device'.\n"
    "example: moegen tune specs/bench-olmoe.lua --tokens 16384\n";

static int tune_int(const char *flag, const char *v, long lo, long hi, long *out)
{
    char *end;
    long x = strtol(v, &end, 10);
    if (!*v || *end || x < lo || x > hi) {
        fprintf(stderr, "moegen: tune: %s = '%s': must be an integer in [%ld, %ld]\n", flag, v, lo, hi);
        return -1;
    }
    *out = x;
    return 0;
}

int mg_tune_cli(int argc, char **argv)
{
    mg_tune_opts o;
    memset(&o, 0, sizeof o);
    o.seed = 1;
    const char **specs = calloc((size_t)(argc > 0 ? argc : 1), sizeof *specs);
    int ns = 0;
    if (!specs) return MG_EINTERNAL;
    static const char *const with_value[] = {"--kernels", "--tokens", "--budget", "--jobs", "--dist", "--runs",
                                             "--warmup", "--timeout", "--arch", "--seed", "-o", "--db"};
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) { fputs(tune_usage, stdout); free(specs); return 0; }
        int takes = 0;
        for (size_t q = 0; q < sizeof with_value / sizeof *with_value; q++) takes |= !strcmp(a, with_value[q]);
        if (!takes) {
            if (a[0] == '-') {
                fprintf(stderr, "moegen: tune: unknown option '%s' (see moegen tune --help)\n", a);
                free(specs);
                return MG_EUSER;
            }
            specs[ns++] = a;
            continue;
        }
        if (i + 1 >= argc) { fprintf(stderr, "moegen: tune: %s needs a value\n", a); free(specs); return MG_EUSER; }
        const char *v = argv[++i];
        long x = 0;
        int bad = 0;
        if (!strcmp(a, "--kernels")) {
            char buf[256];
            snprintf(buf, sizeof buf, "%s", v);
            for (char *tok = strtok(buf, ","); tok && !bad; tok = strtok(NULL, ",")) {
                int f = 0;
                while (f < MG_FAM_COUNT && strcmp(tok, mg_family_names[f])) f++;
                if (f == MG_FAM_COUNT || !mg_tune_family_tunable((mg_family_id)f)) {
                    fprintf(stderr, "moegen: tune: --kernels: '%s' is not a tunable family (allowed: up, down)\n", tok);
                    bad = 1;
                } else {
                    o.fam_mask |= 1u << f;
                }
            }
        } else if (!strcmp(a, "--tokens")) {
            char buf[512];
            snprintf(buf, sizeof buf, "%s", v);
            for (char *tok = strtok(buf, ","); tok && !bad; tok = strtok(NULL, ",")) {
                if (o.n_tokens == MG_TUNE_MAX_TOKENS) { fprintf(stderr, "moegen: tune: --tokens: at most %d values\n", MG_TUNE_MAX_TOKENS); bad = 1; }
                else if (tune_int("--tokens", tok, 1, 1 << 22, &x)) bad = 1;
                else o.tokens[o.n_tokens++] = (int)x;
            }
        } else if (!strcmp(a, "--budget")) {
            bad = tune_int(a, v, 10, 86400, &x);
            o.budget_s = (double)x;
        } else if (!strcmp(a, "--jobs")) {
            bad = tune_int(a, v, 1, 256, &x);
            o.jobs = (int)x;
        } else if (!strcmp(a, "--runs")) {
            bad = tune_int(a, v, 1, 64, &x);
            o.runs = (int)x;
        } else if (!strcmp(a, "--warmup")) {
            bad = tune_int(a, v, 1, 100, &x);
            o.warmup = (int)x;
        } else if (!strcmp(a, "--timeout")) {
            bad = tune_int(a, v, 1, 3600, &x);
            o.timeout_s = (double)x;
        } else if (!strcmp(a, "--seed")) {
            bad = tune_int(a, v, 0, 2147483647L, &x);
            o.seed = (unsigned long long)x;
        } else if (!strcmp(a, "--dist")) {
            int d = 0;
            while (d < 3 && strcmp(v, mg_tune_dist_names[d])) d++;
            if (d == 3) { fprintf(stderr, "moegen: tune: --dist = '%s': must be one of balanced, zipf, one\n", v); bad = 1; }
            else o.dist = (mg_tune_dist)d;
        } else if (!strcmp(a, "--arch")) {
            if (strcmp(v, "sm_90a") && strcmp(v, "sm_90") && strcmp(v, "sm_80")) {
                fprintf(stderr, "moegen: tune: --arch = '%s': must be one of sm_90a, sm_90, sm_80\n", v);
                bad = 1;
            }
            o.arch = v;
        } else if (!strcmp(a, "-o")) o.out_dir = v;
        else if (!strcmp(a, "--db")) o.db_path = v;
        if (bad) { free(specs); return MG_EUSER; }
    }
    if (!ns) {
        fprintf(stderr, "moegen: tune: missing spec file (usage: moegen tune SPEC... [options])\n");
        free(specs);
        return MG_EUSER;
    }
    mg_err err;
    mg_err_clear(&err);
    int rc = mg_tune_specs(ns, specs, &o, &err);
    free(specs);
    if (rc) {
        fprintf(stderr, "moegen: %s\n", err.msg);
        return err.code ? err.code : MG_EINTERNAL;
    }
    return 0;
}
