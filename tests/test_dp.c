/* test_dp: data parallelism in the CPU trainer (`moegen train --procs N`, runtime/mg_dp.h):
 * 2 ranks train what 1 process trains (micro-batch split and row split), checkpoints move
 * between 2 ranks and 1 process both ways, and a rank that dies ends the job quickly with the
 * last checkpoint intact. Tolerance: 1e-5 relative on every loss, gradient norm and validation
 * loss (measured: ~1e-9; the sums of the gradients differ from one process's only in order). */
#include "mg_test.h"
#include "mg_testproc.h"

#include "mg_dp.h"

#include <jansson.h>
#include <math.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static char tmp[256];

static int setup(void **state)
{
    (void)state;
    return mg_test_tmpdir(tmp, sizeof tmp, "dp");
}

static int teardown(void **state)
{
    (void)state;
    mg_test_rmtree(tmp);
    return 0;
}

/* Micro-batch split (grad_accum 2 over 2 ranks): dropout, capacity drops, the aux-loss-free bias
 * (global loads) and the aux loss are all per micro-batch, so everything matches one process. */
#define MICRO_SPEC                                                                                            \
    "return { name = 'dpm', model = { vocab = 256, d_model = 16, n_layer = 2, n_head = 2, n_kv_head = 1,"      \
    " seq_len = 16 }, moe = { experts = 4, top_k = 2, d_ff = 16, every = 2, router = 'sigmoid_topk',"         \
    " bias_update_rate = 0.01, capacity_factor = 1.0, aux_loss = 0.01, z_loss = 0.001 }, dtype = 'fp32',"     \
    " train = { data = 'tinyshakespeare', batch = 2, grad_accum = 2, dropout = 0.1, steps = 6, warmup = 2,"    \
    " eval_every = 3, eval_batches = 2 } }"
/* Row split (grad_accum 1, batch 4 over 2 ranks): exact without aux loss and dropout (the aux
 * loss and capacity then count per rank's rows, the dropout masks are the rank's own). */
#define ROW_SPEC                                                                                              \
    "return { name = 'dpr', model = { vocab = 256, d_model = 16, n_layer = 2, n_head = 2, n_kv_head = 1,"      \
    " seq_len = 16 }, moe = { experts = 4, top_k = 2, d_ff = 16, every = 2, aux_loss = 0, z_loss = 0.001 },"  \
    " dtype = 'fp32', train = { data = 'tinyshakespeare', batch = 4, steps = 6, warmup = 2, eval_every = 3,"  \
    " eval_batches = 3 } }"
/* A longer run for the kill test: checkpoints every 2 steps. */
#define KILL_SPEC                                                                                             \
    "return { name = 'dpk', model = { vocab = 256, d_model = 16, n_layer = 2, n_head = 2, n_kv_head = 1,"      \
    " seq_len = 16 }, moe = { experts = 4, top_k = 2, d_ff = 16, every = 2 }, dtype = 'fp32',"                \
    " train = { data = 'tinyshakespeare', batch = 2, grad_accum = 2, steps = 400, warmup = 2,"                \
    " eval_every = 2, eval_batches = 1 } }"

static void write_spec(char *path, size_t n, const char *name, const char *text)
{
    snprintf(path, n, "%s/%s.lua", tmp, name);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
}

/* `moegen train` with procs ranks (1: one process); asserts success. */
static void train(const char *args, int procs)
{
    mg_proc p;
    char extra[32] = "";
    if (procs > 1) snprintf(extra, sizeof extra, "--procs %d --timeout 20", procs);
    mg_run(&p, "env -u MOEGEN_RANK -u SLURM_PROCID -u OMPI_COMM_WORLD_RANK -u PMI_RANK %s train %s --device cpu -q %s",
           mg_bin(), args, extra);
    if (p.code) print_error("moegen train %s %s:\n%s\n", args, extra, p.out);
    assert_int_equal(p.code, 0);
}

/* Per step of RUN/metrics.jsonl: loss, ce, aux, z, grad_norm, val_loss (NAN when absent); tokens. */
enum { NK = 6, MAXS = 16 };
static const char *const keys[NK] = {"loss", "ce", "aux", "z", "grad_norm", "val_loss"};
typedef struct { int n; double v[MAXS][NK]; long tokens[MAXS]; } curve;

static void read_curve(const char *run, curve *c)
{
    char path[400], line[1 << 16];
    snprintf(path, sizeof path, "%s/metrics.jsonl", run);
    FILE *f = fopen(path, "r");
    assert_non_null(f);
    memset(c, 0, sizeof *c);
    while (fgets(line, sizeof line, f) && c->n < MAXS) {
        json_t *j = json_loads(line, 0, NULL);
        assert_non_null(j);
        assert_int_equal(json_integer_value(json_object_get(j, "step")), c->n + 1);
        for (int k = 0; k < NK; k++) {
            json_t *x = json_object_get(j, keys[k]);
            c->v[c->n][k] = x ? json_number_value(x) : NAN;
        }
        c->tokens[c->n++] = (long)json_integer_value(json_object_get(j, "tokens"));
        json_decref(j);
    }
    fclose(f);
}

/* Every value within rel 1e-5 (+ 1e-12 absolute for values near 0, e.g. a zero aux loss). */
static void same_curve(const char *a, const char *b, int steps)
{
    curve x, y;
    read_curve(a, &x);
    read_curve(b, &y);
    assert_int_equal(x.n, steps);
    assert_int_equal(y.n, steps);
    double worst = 0;
    for (int s = 0; s < steps; s++) {
        assert_int_equal(x.tokens[s], y.tokens[s]);
        for (int k = 0; k < NK; k++) {
            double u = x.v[s][k], w = y.v[s][k];
            if (isnan(u) || isnan(w)) {
                assert_true(isnan(u) && isnan(w));
                continue;
            }
            double rel = fabs(u - w) / (fabs(u) + 1e-12);
            if (rel > worst) worst = rel;
            if (fabs(u - w) > 1e-12 + 1e-5 * fabs(u)) {
                print_error("step %d %s: %.17g (%s) vs %.17g (%s): rel %.3g > 1e-5\n", s + 1, keys[k], u, a, w, b, rel);
                fail();
            }
        }
    }
    print_message("    %s vs %s: %d steps, worst rel deviation %.2g (bound 1e-5)\n", a, b, steps, worst);
}

/* ---------------------------------------------------------------- the split itself */

static void test_dp_split(void **state)
{
    (void)state;
    mg_dp dp;
    mg_err err;
    assert_int_equal(mg_dp_init(&dp, NULL, NULL, 4, 8, &err), 0);   /* one process */
    assert_int_equal(dp.A_loc, 4);
    assert_int_equal(dp.B_loc, 8);
    assert_true(dp.scale == 1.0 / 4);
    unsigned long long k;
    int row0, micro;
    mg_dp_micro(&dp, 3, 2, &k, &row0, &micro);
    assert_true(k == 14 && row0 == 0 && micro == 2);
    mg_comm fake = {.rank = 1, .world = 2};   /* only rank/world are read */
    assert_int_equal(mg_dp_init(&dp, &fake, NULL, 4, 8, &err), 0);   /* micro split */
    assert_true(dp.micro_split && dp.A_loc == 2 && dp.B_loc == 8 && dp.a0 == 2);
    mg_dp_micro(&dp, 3, 1, &k, &row0, &micro);
    assert_true(k == 15 && row0 == 0 && micro == 3);
    assert_int_equal(mg_dp_init(&dp, &fake, NULL, 1, 8, &err), 0);   /* row split */
    assert_true(!dp.micro_split && dp.A_loc == 1 && dp.B_loc == 4 && dp.b0 == 4 && dp.scale == 0.5);
    mg_dp_micro(&dp, 3, 0, &k, &row0, &micro);
    assert_true(k == 3 && row0 == 4 && micro == 1);
    fake.world = 3;
    fake.rank = 0;
    assert_int_equal(mg_dp_init(&dp, &fake, NULL, 2, 8, &err), MG_EUSER);
    mg_assert_contains(err.msg, "train.batch = 8, train.grad_accum = 2: cannot be split over 3 ranks");
}

/* ---------------------------------------------------------------- 2 ranks = 1 process */

static void test_dp_micro_split_and_resume(void **state)
{
    (void)state;
    if (!mg_test_have_data()) return;
    char spec[300], args[900], one[300], two[300], a[300], b[300];
    write_spec(spec, sizeof spec, "dpm", MICRO_SPEC);
    snprintf(one, sizeof one, "%s/m1", tmp);
    snprintf(two, sizeof two, "%s/m2", tmp);
    snprintf(a, sizeof a, "%s/m2to1", tmp);
    snprintf(b, sizeof b, "%s/m1to2", tmp);
    snprintf(args, sizeof args, "%s --run-dir %s", spec, one);
    train(args, 1);
    snprintf(args, sizeof args, "%s --run-dir %s", spec, two);
    train(args, 2);
    same_curve(one, two, 6);
    /* the checkpoint format is one process's: 2 ranks -> 1 process, and back */
    snprintf(args, sizeof args, "%s --run-dir %s --steps 3", spec, a);
    train(args, 2);
    snprintf(args, sizeof args, "--resume %s", a);
    train(args, 1);
    same_curve(one, a, 6);
    snprintf(args, sizeof args, "%s --run-dir %s --steps 3", spec, b);
    train(args, 1);
    snprintf(args, sizeof args, "--resume %s", b);
    train(args, 2);
    same_curve(one, b, 6);
    /* rank 0 alone wrote the run dir: one metrics line per step, the usual checkpoints */
    mg_proc p;
    mg_run(&p, "ls %s && wc -l < %s/metrics.jsonl", two, two);
    mg_assert_contains(p.out, "ckpt-000003\nckpt-000006\n");
    mg_assert_contains(p.out, "\n6\n");
}

static void test_dp_row_split(void **state)
{
    (void)state;
    if (!mg_test_have_data()) return;
    char spec[300], args[900], one[300], two[300];
    write_spec(spec, sizeof spec, "dpr", ROW_SPEC);
    snprintf(one, sizeof one, "%s/r1", tmp);
    snprintf(two, sizeof two, "%s/r2", tmp);
    snprintf(args, sizeof args, "%s --run-dir %s", spec, one);
    train(args, 1);
    snprintf(args, sizeof args, "%s --run-dir %s", spec, two);
    train(args, 2);
    same_curve(one, two, 6);
}

/* ---------------------------------------------------------------- faults */

static double now_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + t.tv_nsec * 1e-9;
}

/* Rank 1 is killed (SIGKILL) after step 5 while rank 0 waits for it in step 6: the launcher ends
 * the job in well under 10 s, exit status non-zero, naming rank 1; ckpt-000004 (the last one)
 * loads in `moegen eval` and resumes in one process. */
static void test_dp_rank_dies(void **state)
{
    (void)state;
    if (!mg_test_have_data()) return;
    char spec[300], run[300];
    write_spec(spec, sizeof spec, "dpk", KILL_SPEC);
    snprintf(run, sizeof run, "%s/k", tmp);
    mg_proc p;
    double t0 = now_s();
    mg_run(&p, "env -u MOEGEN_RANK MOEGEN_FAULT_KILL=1:5 %s train %s --device cpu --procs 2 --timeout 30 --run-dir %s",
           mg_bin(), spec, run);
    double secs = now_s() - t0;
    if (p.code != 1 || secs > 10) print_error("%.1f s, status %d:\n%s\n", secs, p.code, p.out);
    assert_int_equal(p.code, 1);
    assert_true(secs < 10);
    mg_assert_contains(p.out, "moegen: train: rank 1 died (signal 9: Killed)");
    mg_run(&p, "ls %s", run);
    mg_assert_contains(p.out, "ckpt-000004\n");
    assert_null(strstr(p.out, "ckpt-000006"));
    mg_run(&p, "%s eval %s", mg_bin(), run);
    if (p.code) print_error("%s\n", p.out);
    assert_int_equal(p.code, 0);
    mg_run(&p, "%s train --resume %s --device cpu --steps 6 -q", mg_bin(), run);
    if (p.code) print_error("%s\n", p.out);
    assert_int_equal(p.code, 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_dp_split),
        cmocka_unit_test(test_dp_micro_split_and_resume),
        cmocka_unit_test(test_dp_row_split),
        cmocka_unit_test(test_dp_rank_dies),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
