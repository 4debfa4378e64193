/* test_tune: the CPU parts of `moegen tune`: enumeration and pruning rules, ranking and
 * selection, the tuning db (round trip, lookup, corruption), the sweep engine (resume after
 * an interruption, crashes, hangs, budget), routing distributions, CSV/HTML and the CLI
 * without a GPU. */
#include "mg_test.h"
#include "mg_testproc.h"
#include "mg_gen.h"
#include "mg_tune.h"
#include "mg_tune_db.h"
#include "mg_tune_gpu.h"
#include "mg_tune_report.h"
#include "mg_tune_space.h"
#include "../templates/moe_params.h"

#include <dirent.h>
#include <sys/wait.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

static char tmp[256];
static char dbpath[320];

static int setup(void **state)
{
    (void)state;
    if (mg_test_tmpdir(tmp, sizeof tmp, "tune")) return -1;
    setenv("MOEGEN_CACHE_DIR", tmp, 1);
    snprintf(dbpath, sizeof dbpath, "%s/tune.db", tmp);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    mg_test_rmtree(tmp);
    return 0;
}

static void fresh_db(void)
{
    mg_proc p;
    mg_run(&p, "rm -f %s/tune.db* %s/calls", tmp, tmp);
}

static mg_spec load(const char *path)
{
    mg_spec s;
    mg_err err;
    int rc = mg_spec_load(path, &s, &err);
    if (rc) print_error("%s\n", err.msg);
    assert_int_equal(rc, MG_OK);
    return s;
}

/* A100-like limits without the Hopper path, so the mma.sync smem formula applies. */
static mg_tune_hw hw_a100(void)
{
    mg_tune_hw hw;
    mg_tune_hw_default("sm_80", &hw);
    return hw;
}

/* ------------------------------------------------------------------ space */
static void test_enumerate_covers_the_knob_table(void **state)
{
    (void)state;
    mg_spec s = load("specs/wt2-moe8.lua");
    mg_tune_hw hw = hw_a100();
    mg_tune_cand *c;
    int n = mg_tune_enumerate(&s, MG_FAM_UP, 4096, &hw, &c);
    int product = 1;
    for (int k = 0; k < mg_tune_n_knobs; k++) product *= mg_tune_knobs[k].n_values;
    assert_int_equal(n, product);
    mg_plan plan;
    mg_err err;
    assert_int_equal(mg_plan_make(&s, NULL, &plan, &err), MG_OK);
    int defaults = 0;
    for (int i = 0; i < n; i++) {
        defaults += c[i].is_default;
        if (c[i].is_default) assert_true(mg_tune_tile_eq(&c[i].tile, &plan.fam[MG_FAM_UP].tile));
        for (int j = 0; j < i; j++) assert_false(mg_tune_tile_eq(&c[i].tile, &c[j].tile));
        char str[128];
        mg_tile back;
        mg_tune_tile_str(&c[i].tile, str, sizeof str);
        assert_int_equal(mg_tune_tile_parse(str, &back), 0);
        assert_true(mg_tune_tile_eq(&back, &c[i].tile));
        assert_true(c[i].predicted > 0);
    }
    assert_int_equal(defaults, 1);
    mg_tile t;
    assert_int_equal(mg_tune_tile_parse("bm=64,bn=64", &t), -1);                           /* missing knobs */
    assert_int_equal(mg_tune_tile_parse("bm=64,bn=64,bk=32,stages=3,warps=4,zz=1", &t), -1); /* unknown knob */
    assert_int_equal(mg_tune_tile_parse("warps=4,stages=2,bk=16,bn=64,bm=128", &t), 0);      /* any order */
    assert_int_equal(t.bm, 128);
    free(c);
}

static void test_prune_shared_memory_uses_the_host_formula(void **state)
{
    (void)state;
    mg_spec s = load("specs/wt2-moe8.lua");
    mg_tune_dims dm;
    mg_tune_dims_of(&s, 4096, &dm);
    mg_tune_hw hw = hw_a100();
    mg_tune_cand c;
    memset(&c, 0, sizeof c);
    c.tile = (mg_tile){128, 128, 32, 3, 8};
    assert_int_equal(mg_tune_prune(&dm, MG_FAM_UP, &hw, &c), 1);
    /* fwd (both K-contiguous) is the largest: dynamic + the two row tables */
    int fwd = MG_GEMM_SMEM_BYTES(128, 128, 32, 3, 2, 1, 1) + (128 + 128) * 8;
    assert_int_equal(c.smem, fwd);
    assert_true(c.blocks_per_sm >= 1);
    hw.smem_optin = 48 * 1024;   /* the default carve-out only */
    memset(&c, 0, sizeof c);
    c.tile = (mg_tile){128, 128, 64, 4, 8};
    assert_int_equal(mg_tune_prune(&dm, MG_FAM_UP, &hw, &c), 0);
    assert_int_equal(c.status, MG_TUNE_PRUNED);
    mg_assert_contains(c.reason, "shared memory");
    /* the enumeration on that device prunes some and keeps some */
    mg_tune_cand *all;
    int n = mg_tune_enumerate(&s, MG_FAM_DOWN, 4096, &hw, &all), pruned = 0;
    for (int i = 0; i < n; i++) {
        if (all[i].status == MG_TUNE_PRUNED) {
            pruned++;
            assert_true(all[i].smem > hw.smem_optin);
            assert_true(strlen(all[i].reason) > 0);
        }
    }
    assert_true(pruned > 0 && pruned < n);
    free(all);
}

static void test_prune_template_register_and_alignment_rules(void **state)
{
    (void)state;
    mg_spec s = load("specs/wt2-moe8.lua");
    mg_tune_dims dm;
    mg_tune_dims_of(&s, 4096, &dm);
    mg_tune_hw hw = hw_a100();
    mg_tune_cand c;
    memset(&c, 0, sizeof c);
    c.tile = (mg_tile){64, 32, 32, 2, 8};   /* warp tile 32x8: not a multiple of 16x16 */
    assert_int_equal(mg_tune_prune(&dm, MG_FAM_UP, &hw, &c), 0);
    mg_assert_contains(c.reason, "template rule");
    memset(&c, 0, sizeof c);
    hw.smem_optin = hw.smem_per_sm = 1 << 24;   /* let registers decide */
    c.tile = (mg_tile){256, 256, 16, 2, 4};
    assert_int_equal(mg_tune_prune(&dm, MG_FAM_UP, &hw, &c), 0);
    mg_assert_contains(c.reason, "register estimate");
    /* tiny: d = ff = 64, so a 128-wide tile of down is all padding past 64 */
    mg_spec t = load("specs/tiny.lua");
    mg_tune_dims_of(&t, 256, &dm);
    hw = hw_a100();
    memset(&c, 0, sizeof c);
    c.tile = (mg_tile){64, 128, 32, 3, 4};
    assert_int_equal(mg_tune_prune(&dm, MG_FAM_DOWN, &hw, &c), 0);
    mg_assert_contains(c.reason, "alignment");
}

static void test_rank_puts_default_first_and_cuts_to_budget(void **state)
{
    (void)state;
    mg_spec s = load("specs/wt2-moe8.lua");
    mg_tune_hw hw = hw_a100();
    mg_tune_cand *c;
    int n = mg_tune_enumerate(&s, MG_FAM_UP, 4096, &hw, &c);
    int kept = mg_tune_rank(c, n, 5);
    assert_int_equal(kept, 5);
    assert_true(c[0].is_default);
    assert_int_equal(c[0].status, MG_TUNE_PENDING);
    int pending = 0, budget = 0;
    for (int i = 0; i < n; i++) {
        pending += c[i].status == MG_TUNE_PENDING;
        if (c[i].status == MG_TUNE_BUDGET) { budget++; mg_assert_contains(c[i].reason, "budget"); }
    }
    assert_int_equal(pending, 5);
    assert_int_equal(budget, n - 5);
    for (int i = 2; i < 5; i++) assert_true(c[i - 1].predicted <= c[i].predicted);
    free(c);
}

static void test_pick_never_selects_failures_and_keeps_rules_within_noise(void **state)
{
    (void)state;
    mg_tune_cand c[4];
    memset(c, 0, sizeof c);
    c[0] = (mg_tune_cand){.tile = {128, 128, 32, 3, 8}, .is_default = 1, .status = MG_TUNE_OK, .median_ms = 10.0};
    c[1] = (mg_tune_cand){.tile = {64, 128, 32, 3, 8}, .status = MG_TUNE_OK, .median_ms = 9.95};
    c[2] = (mg_tune_cand){.tile = {64, 64, 32, 3, 4}, .status = MG_TUNE_WRONG, .median_ms = 1.0};
    c[3] = (mg_tune_cand){.tile = {64, 64, 64, 3, 4}, .status = MG_TUNE_TIMEOUT, .median_ms = 0.5};
    const mg_tune_cand *def, *best = mg_tune_pick(c, 4, 0.01, &def);
    assert_ptr_equal(def, &c[0]);
    assert_ptr_equal(best, &c[0]);   /* 0.5% faster: noise, the rules stay */
    c[1].median_ms = 9.0;
    best = mg_tune_pick(c, 4, 0.01, &def);
    assert_ptr_equal(best, &c[1]);
    c[0].status = c[1].status = MG_TUNE_CRASH;
    assert_null(mg_tune_pick(c, 4, 0.01, &def));
}

/* ------------------------------------------------------------------ db */
static mg_tune_key test_key(const char *gpu, const char *dims)
{
    mg_tune_key k;
    memset(&k, 0, sizeof k);
    snprintf(k.kernel, sizeof k.kernel, "moe_up_swiglu_bf16_e8_k2_d512_f1024");
    snprintf(k.family, sizeof k.family, "up");
    snprintf(k.dims, sizeof k.dims, "%s", dims);
    snprintf(k.dtype, sizeof k.dtype, "bf16");
    snprintf(k.gpu, sizeof k.gpu, "%s", gpu);
    mg_tune_cuda_key("sm_90a", k.cuda, sizeof k.cuda);
    snprintf(k.moegen, sizeof k.moegen, "%s", mg_version());
    return k;
}

static void test_db_round_trip_and_lookup(void **state)
{
    (void)state;
    fresh_db();
    mg_tune_db *db;
    mg_err err;
    mg_err_clear(&err);
    assert_int_equal(mg_tune_db_open(NULL, &db, &err), MG_OK);
    assert_string_equal(mg_tune_db_path(db), dbpath);
    mg_tune_key k = test_key("NVIDIA H100 80GB HBM3 (132 SMs)", "T=4096,dist=balanced");
    mg_tune_cand c;
    memset(&c, 0, sizeof c);
    c.tile = (mg_tile){64, 128, 32, 4, 8};
    c.status = MG_TUNE_OK;
    c.median_ms = 1.25;
    c.min_ms = 1.2;
    c.runs = 10;
    snprintf(c.reason, sizeof c.reason, "checked, with a comma, and \"quotes\"");
    assert_int_equal(mg_tune_db_put(db, &k, &c, &err), MG_OK);
    mg_tune_cand w = c;
    w.tile = (mg_tile){128, 128, 64, 4, 4};
    w.status = MG_TUNE_WRONG;
    assert_int_equal(mg_tune_db_put(db, &k, &w, &err), MG_OK);
    assert_int_equal(mg_tune_db_count(db, &k, &err), 2);
    mg_tune_cand got;
    memset(&got, 0, sizeof got);
    assert_int_equal(mg_tune_db_get(db, &k, &c.tile, &got, &err), 1);
    assert_int_equal(got.status, MG_TUNE_OK);
    assert_true(got.median_ms == 1.25 && got.runs == 10);
    assert_string_equal(got.reason, c.reason);
    mg_tile none = {64, 64, 16, 2, 4};
    assert_int_equal(mg_tune_db_get(db, &k, &none, &got, &err), 0);

    /* winners at two token counts on one GPU, one on another GPU */
    mg_tile def = {128, 128, 32, 3, 8}, a = {64, 128, 32, 4, 8}, b = {128, 64, 32, 2, 4}, h2 = {64, 64, 64, 2, 8};
    mg_tune_key k2 = test_key("NVIDIA H100 80GB HBM3 (132 SMs)", "T=16384,dist=balanced");
    mg_tune_key k3 = test_key("NVIDIA H200 (132 SMs)", "T=4096,dist=balanced");
    assert_int_equal(mg_tune_db_set_best(db, &k, &a, 1.0, &def, 1.1, &err), MG_OK);
    assert_int_equal(mg_tune_db_set_best(db, &k2, &b, 3.0, &def, 3.1, &err), MG_OK);
    assert_int_equal(mg_tune_db_set_best(db, &k3, &h2, 0.9, &def, 1.0, &err), MG_OK);
    mg_tile t;
    char gpu[160], dims[128];
    assert_int_equal(mg_tune_db_find_best(db, &k, "h100", 4000, &t, gpu, sizeof gpu, dims, sizeof dims, &err), 1);
    assert_true(mg_tune_tile_eq(&t, &a));
    mg_assert_contains(dims, "T=4096");
    assert_int_equal(mg_tune_db_find_best(db, &k, "H100", 0, &t, NULL, 0, NULL, 0, &err), 1);   /* largest T */
    assert_true(mg_tune_tile_eq(&t, &b));
    assert_int_equal(mg_tune_db_find_best(db, &k, "H200", 0, &t, gpu, sizeof gpu, NULL, 0, &err), 1);
    assert_true(mg_tune_tile_eq(&t, &h2));
    assert_int_equal(mg_tune_db_find_best(db, &k, "A100", 0, &t, NULL, 0, NULL, 0, &err), 0);
    mg_tune_key other = k;
    snprintf(other.moegen, sizeof other.moegen, "9.9.9");   /* another moegen version: no entry */
    assert_int_equal(mg_tune_db_find_best(db, &other, NULL, 0, &t, NULL, 0, NULL, 0, &err), 0);
    mg_tune_db_close(db);
}

static void test_consult_fills_tiles_and_says_where_from(void **state)
{
    (void)state;
    fresh_db();
    mg_spec s = load("specs/wt2-moe8.lua");
    mg_plan plan;
    mg_err err;
    mg_err_clear(&err);
    char log[4096] = "";
    FILE *f = fmemopen(log, sizeof log, "w");
    mg_tune_lookup tl = {.log = f};
    assert_int_equal(mg_tune_plan_make(&s, &tl, &plan, &err), MG_OK);   /* no db: rules, nothing created */
    fflush(f);
    mg_assert_contains(log, "tuning: up moe_up_swiglu_bf16_e8_k2_d512_f1024_t");
    mg_assert_contains(log, "from rules");
    struct stat st;
    assert_int_equal(stat(dbpath, &st), -1);

    mg_tune_db *db;
    assert_int_equal(mg_tune_db_open(NULL, &db, &err), MG_OK);
    mg_tune_key k;
    memset(&k, 0, sizeof k);
    mg_tune_kernel_base(&plan.fam[MG_FAM_DOWN], k.kernel, sizeof k.kernel);
    assert_string_equal(k.kernel, "moe_down_swiglu_bf16_e8_k2_d512_f1024");
    snprintf(k.dims, sizeof k.dims, "T=16384,dist=balanced");
    snprintf(k.dtype, sizeof k.dtype, "bf16");
    snprintf(k.gpu, sizeof k.gpu, "NVIDIA H100 80GB HBM3 (132 SMs)");
    mg_tune_cuda_key(NULL, k.cuda, sizeof k.cuda);
    snprintf(k.moegen, sizeof k.moegen, "%s", mg_version());
    mg_tile tuned = {64, 128, 64, 4, 4};
    assert_int_equal(mg_tune_db_set_best(db, &k, &tuned, 1.0, &plan.fam[MG_FAM_DOWN].tile, 1.2, &err), MG_OK);
    mg_tune_db_close(db);
    rewind(f);
    memset(log, 0, sizeof log);
    assert_int_equal(mg_tune_plan_make(&s, &tl, &plan, &err), MG_OK);
    fflush(f);
    assert_true(mg_tune_tile_eq(&plan.fam[MG_FAM_DOWN].tile, &tuned));
    mg_assert_contains(log, "tuning: down moe_down_swiglu_bf16_e8_k2_d512_f1024_t64x128x64_s4 from tuning db (NVIDIA H100");
    mg_assert_contains(log, "tuning: up moe_up_swiglu_bf16_e8_k2_d512_f1024_t128x");
    tl.gpu = "A100";   /* no entry for that GPU: rules */
    assert_int_equal(mg_tune_plan_make(&s, &tl, &plan, &err), MG_OK);
    assert_false(mg_tune_tile_eq(&plan.fam[MG_FAM_DOWN].tile, &tuned));
    tl.gpu = NULL;
    tl.rules_only = 1;
    assert_int_equal(mg_tune_plan_make(&s, &tl, &plan, &err), MG_OK);
    assert_false(mg_tune_tile_eq(&plan.fam[MG_FAM_DOWN].tile, &tuned));
    fclose(f);
}

static int count_aside(void)
{
    DIR *d = opendir(tmp);
    int n = 0;
    for (struct dirent *e; d && (e = readdir(d));) n += strstr(e->d_name, "tune.db.corrupt-") != NULL;
    if (d) closedir(d);
    return n;
}

static void test_corrupt_db_is_moved_aside_not_a_crash(void **state)
{
    (void)state;
    mg_proc p;
    mg_run(&p, "rm -f %s/tune.db* && head -c 8192 /dev/urandom > %s/tune.db", tmp, tmp);
    int before = count_aside();
    mg_tune_db *db;
    mg_err err;
    mg_err_clear(&err);
    assert_int_equal(mg_tune_db_open(NULL, &db, &err), MG_OK);   /* warns on stderr, starts over */
    assert_int_equal(count_aside(), before + 1);
    mg_tune_key k = test_key("GPU (1 SMs)", "T=1,dist=balanced");
    assert_int_equal(mg_tune_db_count(db, &k, &err), 0);
    mg_tune_cand c;
    memset(&c, 0, sizeof c);
    c.tile = (mg_tile){64, 64, 32, 2, 4};
    c.status = MG_TUNE_OK;
    assert_int_equal(mg_tune_db_put(db, &k, &c, &err), MG_OK);
    mg_tune_db_close(db);
    /* a valid database cut short: detected too */
    assert_int_equal(mg_tune_db_open(NULL, &db, &err), MG_OK);
    assert_int_equal(mg_tune_db_exec(db, "BEGIN", &err), MG_OK);
    for (int i = 0; i < 300; i++) {
        c.tile.bm = 1 + i;   /* distinct configs */
        snprintf(c.reason, sizeof c.reason, "%0200d", i);
        assert_int_equal(mg_tune_db_put(db, &k, &c, &err), MG_OK);
    }
    assert_int_equal(mg_tune_db_exec(db, "COMMIT", &err), MG_OK);
    mg_tune_db_close(db);
    mg_run(&p, "truncate -s 20000 %s", dbpath);
    assert_int_equal(p.code, 0);
    assert_int_equal(mg_tune_db_open(NULL, &db, &err), MG_OK);
    assert_int_equal(count_aside(), before + 2);
    mg_tune_db_close(db);
    /* the lookup path survives a broken file as well: rules */
    mg_run(&p, "echo 'not a database at all' > %s", dbpath);
    mg_spec s = load("specs/tiny.lua");
    mg_tile tiles[MG_FAM_COUNT];
    mg_tune_tiles(&s, NULL, tiles, NULL);
    assert_int_equal(tiles[MG_FAM_UP].bm, 0);
    assert_int_equal(count_aside(), before + 3);
    /* the CLI: a warning, exit 0 */
    mg_run(&p, "echo garbage > %s && %s gen specs/tiny.lua -o %s/g", dbpath, mg_bin(), tmp);
    assert_int_equal(p.code, 0);
    mg_assert_contains(p.out, "moved aside");
    mg_assert_contains(p.out, "from rules");
}

/* ------------------------------------------------------------------ sweep engine */
/* Fake evaluators: each call appends the config to tmp/calls (the worker is a child
 * process, so the count lives in a file). */
typedef struct fake { int crash_at, hang_at, kill_parent_at, fail_init; } fake;

static int calls(void)
{
    char path[300];
    snprintf(path, sizeof path, "%s/calls", tmp);
    FILE *f = fopen(path, "r");
    int n = 0;
    for (int ch; f && (ch = fgetc(f)) != EOF;) n += ch == '\n';
    if (f) fclose(f);
    return n;
}

static int fake_init(void *ctx, char *msg, size_t n)
{
    fake *fk = ctx;
    if (fk->fail_init) { snprintf(msg, n, "no device for you"); return -1; }
    return 0;
}

static int fake_eval(void *ctx, mg_tune_cand *c)
{
    fake *fk = ctx;
    char path[300];
    snprintf(path, sizeof path, "%s/calls", tmp);
    int nth = calls() + 1;
    FILE *f = fopen(path, "a");
    fprintf(f, "%d %d %d\n", c->tile.bm, c->tile.bn, c->tile.bk);
    fclose(f);
    if (nth == fk->crash_at) abort();
    if (nth == fk->hang_at) sleep(30);
    if (nth == fk->kill_parent_at) { kill(getppid(), SIGKILL); _exit(0); }
    c->status = MG_TUNE_OK;
    c->median_ms = 1.0 + c->tile.bk / 100.0 + (c->tile.bm == 64 ? 0.5 : 0);
    c->min_ms = c->median_ms;
    c->runs = 3;
    return 0;
}

static int make_cands(mg_tune_cand **c)
{
    mg_spec s = load("specs/wt2-moe8.lua");
    mg_tune_hw hw = hw_a100();
    int n = mg_tune_enumerate(&s, MG_FAM_UP, 4096, &hw, c);
    return mg_tune_rank(*c, n, 8) >= 0 ? n : -1;   /* 8 to run, the rest "budget" */
}

static mg_tune_sweep make_sweep(mg_tune_key *k, mg_tune_cand *c, int n, fake *fk)
{
    mg_tune_sweep s = {dbpath, k, c, n, fake_init, fake_eval, fk, 5.0, 0, 0, "test"};
    return s;
}

static void test_sweep_commits_rows_and_resumes(void **state)
{
    (void)state;
    fresh_db();
    mg_tune_key k = test_key("Fake GPU (1 SMs)", "T=4096,dist=balanced");
    mg_tune_cand *c;
    int n = make_cands(&c);
    fake fk = {0, 0, 0, 0};
    mg_tune_sweep s = make_sweep(&k, c, n, &fk);
    mg_err err;
    mg_err_clear(&err);
    assert_int_equal(mg_tune_sweep_run(&s, &err), 8);
    assert_int_equal(calls(), 8);
    int ok = 0;
    for (int i = 0; i < n; i++) ok += c[i].status == MG_TUNE_OK;
    assert_int_equal(ok, 8);
    mg_tune_db *db;
    assert_int_equal(mg_tune_db_open(dbpath, &db, &err), MG_OK);
    assert_int_equal(mg_tune_db_count(db, &k, &err), n);   /* budget rows stored too */
    mg_tune_db_close(db);
    free(c);
    /* a rerun with the same cut runs nothing and loads every result */
    n = make_cands(&c);
    s = make_sweep(&k, c, n, &fk);
    assert_int_equal(mg_tune_sweep_run(&s, &err), 0);
    assert_int_equal(calls(), 8);
    ok = 0;
    for (int i = 0; i < n; i++) {
        if (c[i].status != MG_TUNE_OK) continue;
        ok++;
        mg_assert_contains(c[i].reason, "resumed");
        assert_true(c[i].median_ms > 0);
    }
    assert_int_equal(ok, 8);
    /* with a bigger budget only the configs cut before are run */
    for (int i = 0; i < n; i++)
        if (c[i].status == MG_TUNE_BUDGET) c[i].status = MG_TUNE_PENDING;
    int more = 0;
    for (int i = 0; i < n; i++) more += c[i].status == MG_TUNE_PENDING;
    assert_int_equal(mg_tune_sweep_run(&s, &err), more);
    assert_int_equal(calls(), 8 + more);
    free(c);
}

static void test_sweep_survives_an_interruption(void **state)
{
    (void)state;
    fresh_db();
    mg_tune_key k = test_key("Fake GPU (1 SMs)", "T=4096,dist=zipf");
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    if (pid == 0) {   /* a `moegen tune` killed (SIGKILL) while its worker runs the 4th config */
        mg_tune_cand *c;
        int n = make_cands(&c);
        fake fk = {0, 0, 4, 0};
        mg_tune_sweep s = make_sweep(&k, c, n, &fk);
        mg_err err;
        mg_tune_sweep_run(&s, &err);
        _exit(0);
    }
    int st;
    waitpid(pid, &st, 0);
    assert_true(WIFSIGNALED(st));
    assert_int_equal(calls(), 4);
    mg_tune_cand *c;
    int n = make_cands(&c);
    fake fk = {0, 0, 0, 0};
    mg_tune_sweep s = make_sweep(&k, c, n, &fk);
    mg_err err;
    mg_err_clear(&err);
    int ran = mg_tune_sweep_run(&s, &err);
    assert_int_equal(ran, 5);                   /* 8 - the 3 finished before the kill */
    assert_int_equal(calls(), 4 + 5);
    int ok = 0, resumed = 0;
    for (int i = 0; i < n; i++) {
        ok += c[i].status == MG_TUNE_OK;
        resumed += strstr(c[i].reason, "resumed") != NULL;
    }
    assert_int_equal(ok, 8);
    assert_int_equal(resumed, 3);
    free(c);
}

static void test_sweep_records_crash_and_timeout_and_goes_on(void **state)
{
    (void)state;
    fresh_db();
    mg_tune_key k = test_key("Fake GPU (1 SMs)", "T=4096,dist=one");
    mg_tune_cand *c;
    int n = make_cands(&c);
    fake fk = {2, 4, 0, 0};
    mg_tune_sweep s = make_sweep(&k, c, n, &fk);
    s.timeout_s = 1.0;
    mg_err err;
    mg_err_clear(&err);
    assert_int_equal(mg_tune_sweep_run(&s, &err), 8);
    int ok = 0, crash = 0, timeout = 0;
    for (int i = 0; i < n; i++) {
        ok += c[i].status == MG_TUNE_OK;
        if (c[i].status == MG_TUNE_CRASH) { crash++; mg_assert_contains(c[i].reason, "signal 6"); }
        if (c[i].status == MG_TUNE_TIMEOUT) { timeout++; mg_assert_contains(c[i].reason, "killed"); }
    }
    assert_int_equal(crash, 1);
    assert_int_equal(timeout, 1);
    assert_int_equal(ok, 6);
    const mg_tune_cand *best = mg_tune_pick(c, n, 0.01, NULL);
    assert_non_null(best);
    assert_int_equal(best->status, MG_TUNE_OK);
    /* the bad rows are stored as finished: a rerun does not retry them */
    free(c);
    n = make_cands(&c);
    s = make_sweep(&k, c, n, &fk);
    assert_int_equal(mg_tune_sweep_run(&s, &err), 0);
    free(c);
}

static void test_sweep_budget_and_init_failure(void **state)
{
    (void)state;
    fresh_db();
    mg_tune_key k = test_key("Fake GPU (1 SMs)", "T=64,dist=balanced");
    mg_tune_cand *c;
    int n = make_cands(&c);
    fake fk = {0, 0, 0, 0};
    mg_tune_sweep s = make_sweep(&k, c, n, &fk);
    s.deadline = mg_tune_now() - 1;   /* already past */
    mg_err err;
    mg_err_clear(&err);
    assert_int_equal(mg_tune_sweep_run(&s, &err), 0);
    for (int i = 0; i < n; i++) assert_int_equal(c[i].status, MG_TUNE_BUDGET);
    free(c);
    n = make_cands(&c);
    fk.fail_init = 1;
    s = make_sweep(&k, c, n, &fk);
    assert_int_equal(mg_tune_sweep_run(&s, &err), 0);
    int failed = 0;
    for (int i = 0; i < n; i++)
        if (c[i].status == MG_TUNE_LAUNCH_ERROR) { failed++; mg_assert_contains(c[i].reason, "no device for you"); }
    assert_int_equal(failed, 8);
    assert_int_equal(calls(), 0);
    free(c);
}

/* ------------------------------------------------------------------ routing */
static void test_route_distributions(void **state)
{
    (void)state;
    enum { T = 4096, E = 64, K = 8 };
    int *sel = malloc(sizeof *sel * T * K), cnt[E];
    for (int d = 0; d < 3; d++) {
        mg_tune_route((mg_tune_dist)d, T, E, K, 7, sel);
        memset(cnt, 0, sizeof cnt);
        for (int t = 0; t < T; t++)
            for (int j = 0; j < K; j++) {
                int e = sel[t * K + j];
                assert_true(e >= 0 && e < E);
                for (int q = 0; q < j; q++) assert_int_not_equal(sel[t * K + q], e);   /* distinct */
                cnt[e]++;
            }
        if (d == MG_DIST_BALANCED)
            for (int e = 0; e < E; e++) assert_int_equal(cnt[e], T * K / E);
        if (d == MG_DIST_ONE) {
            for (int e = 0; e < K; e++) assert_int_equal(cnt[e], T);
            for (int e = K; e < E; e++) assert_int_equal(cnt[e], 0);
        }
        if (d == MG_DIST_ZIPF) {
            assert_true(cnt[0] > 4 * cnt[E - 1]);
            assert_true(cnt[0] > T * K / E);
        }
    }
    free(sel);
}

/* ------------------------------------------------------------------ reports */
static void test_csv_and_html(void **state)
{
    (void)state;
    mg_tune_cand c[3];
    memset(c, 0, sizeof c);
    c[0] = (mg_tune_cand){.tile = {128, 128, 32, 3, 8}, .is_default = 1, .status = MG_TUNE_OK, .median_ms = 2.0, .min_ms = 1.9, .runs = 10};
    c[1] = (mg_tune_cand){.tile = {64, 128, 32, 4, 8}, .status = MG_TUNE_OK, .median_ms = 1.5, .min_ms = 1.4, .runs = 10};
    c[2] = (mg_tune_cand){.tile = {128, 128, 64, 4, 4}, .status = MG_TUNE_PRUNED};
    snprintf(c[2].reason, sizeof c[2].reason, "shared memory 300000 B per block > 232448 B, \"too big\" <b>");
    mg_tune_report r = {"wt2-moe8", "up", "moe_up_x", "T=4096,dist=balanced", "GPU, \"fast\"", c, 3};
    char csv[400], html[400];
    snprintf(csv, sizeof csv, "%s/t.csv", tmp);
    snprintf(html, sizeof html, "%s/t.html", tmp);
    mg_err err;
    mg_err_clear(&err);
    assert_int_equal(mg_tune_write_csv(csv, &r, 1, &err), MG_OK);
    assert_int_equal(mg_tune_write_html(html, &r, 1, &err), MG_OK);
    mg_proc p;
    mg_run(&p, "cat %s", csv);
    mg_assert_contains(p.out, "spec,family,kernel,dims,gpu,config,bm,bn,bk,stages,warps,is_default,selected,status,reason");
    mg_assert_contains(p.out, "\"T=4096,dist=balanced\"");
    mg_assert_contains(p.out, "\"GPU, \"\"fast\"\"\"");
    mg_assert_contains(p.out, ",1,0,ok,,2.0000");                 /* the default, not selected */
    mg_assert_contains(p.out, "64,128,32,4,8,0,1,ok,,1.5000");     /* the winner */
    mg_assert_contains(p.out, "1.3333");                           /* speed-up vs default */
    mg_assert_contains(p.out, "pruned,\"shared memory 300000 B per block > 232448 B, \"\"too big\"\" <b>\"");
    mg_run(&p, "python3 -c 'import csv,sys; rows=list(csv.reader(open(\"%s\"))); "
               "assert len(rows)==4 and all(len(r)==len(rows[0]) for r in rows), rows; print(\"csv ok\")'", csv);
    mg_assert_contains(p.out, "csv ok");
    mg_run(&p, "cat %s", html);
    mg_assert_contains(p.out, "<svg");
    mg_assert_contains(p.out, "<rect");
    mg_assert_contains(p.out, "&lt;b&gt;");   /* escaped */
    mg_assert_contains(p.out, "1.33x");
    assert_null(strstr(p.out, "<script"));
    assert_null(strstr(p.out, "src="));
    assert_null(strstr(p.out, "href="));
    /* the terminal table */
    char buf[4096] = "";
    FILE *f = fmemopen(buf, sizeof buf, "w");
    mg_tune_print_table(f, &r, 10);
    fclose(f);
    mg_assert_contains(buf, "<- selected");
    mg_assert_contains(buf, "33.3% faster than the rules");
    mg_assert_contains(buf, "1 pruned");
}

/* ------------------------------------------------------------------ CLI */
static void test_cli_without_gpu(void **state)
{
    (void)state;
    mg_tune_hw hw;
    char arch[32], why[200];
    if (mg_tune_hw_probe(&hw, arch, sizeof arch, why, sizeof why)) {
        print_message("skipped: a CUDA device is present (the GPU sweep is run by the lead, not the CPU suite)\n");
        return;
    }
    fresh_db();
    mg_proc p;
    mg_run(&p, "%s tune specs/tiny.lua specs/wt2-moe8.lua --tokens 256,4096 -o %s/rep", mg_bin(), tmp);
    if (p.code) print_error("%s\n", p.out);
    assert_int_equal(p.code, 0);
    mg_assert_contains(p.out, "down  moe_down_swiglu_bf16_e4_k2_d64_f64: 72 configs, 36 pruned (36 alignment)");
    mg_assert_contains(p.out, "skipped: no CUDA device");
    assert_true(strstr(p.out, "configs") < strstr(p.out, "skipped: no CUDA device"));
    mg_run(&p, "test -s %s/rep/tune.csv && test -s %s/rep/tune.html && wc -l < %s/rep/tune.csv", tmp, tmp, tmp);
    assert_int_equal(p.code, 0);
    assert_int_equal(atoi(p.out), 1 + 2 * 2 * 2 * 72);   /* header + 2 specs x 2 T x 2 families x 72 */
    mg_run(&p, "%s tune specs/tiny.lua --kernels router", mg_bin());
    assert_int_equal(p.code, 1);
    mg_assert_contains(p.out, "not a tunable family");
    mg_run(&p, "%s tune specs/tiny.lua --dist uniform", mg_bin());
    assert_int_equal(p.code, 1);
    mg_run(&p, "%s tune", mg_bin());
    assert_int_equal(p.code, 1);
    mg_assert_contains(p.out, "missing spec file");
    mg_run(&p, "%s tune --help", mg_bin());
    assert_int_equal(p.code, 0);
    mg_assert_contains(p.out, "usage: moegen tune SPEC...");
    mg_run(&p, "%s gen specs/tiny.lua -o %s/g2 --rules", mg_bin(), tmp);
    assert_int_equal(p.code, 0);
    mg_assert_contains(p.out, "tuning: up moe_up_swiglu_bf16_e4_k2_d64_f64_t");
    mg_assert_contains(p.out, "from rules");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_enumerate_covers_the_knob_table),
        cmocka_unit_test(test_prune_shared_memory_uses_the_host_formula),
        cmocka_unit_test(test_prune_template_register_and_alignment_rules),
        cmocka_unit_test(test_rank_puts_default_first_and_cuts_to_budget),
        cmocka_unit_test(test_pick_never_selects_failures_and_keeps_rules_within_noise),
        cmocka_unit_test(test_db_round_trip_and_lookup),
        cmocka_unit_test(test_consult_fills_tiles_and_says_where_from),
        cmocka_unit_test(test_corrupt_db_is_moved_aside_not_a_crash),
        cmocka_unit_test(test_sweep_commits_rows_and_resumes),
        cmocka_unit_test(test_sweep_survives_an_interruption),
        cmocka_unit_test(test_sweep_records_crash_and_timeout_and_goes_on),
        cmocka_unit_test(test_sweep_budget_and_init_failure),
        cmocka_unit_test(test_route_distributions),
        cmocka_unit_test(test_csv_and_html),
        cmocka_unit_test(test_cli_without_gpu),
    };
    return cmocka_run_group_tests_name("tune", tests, setup, teardown);
}
