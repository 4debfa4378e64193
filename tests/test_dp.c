/* test_dp: data parallelism in the CPU trainer (`moegen train --procs N`, runtime/mg_dp.h):
 * 2 ranks train what 1 process trains (micro-batch split and row split), checkpoints move
 * between 2 ranks and 1 process both ways, ZeRO-1 (runtime/mg_zero.h: its cut of the buckets,
 * 2 and 3 ranks, uneven shards, checkpoints to and from zero = 0 and other rank counts), and a
 * rank that dies ends the job quickly with the last checkpoint intact. Tolerance: 1e-5 relative on every loss, gradient norm and validation
 * loss (measured: ~1e-9; the sums of the gradients differ from one process's only in order). */
#include "mg_test.h"
#include "mg_testproc.h"

#include "mg_dp.h"
#include "mg_zero.h"

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
#define MICRO_BODY                                                                                            \
    "return { name = 'dpm', model = { vocab = 256, d_model = 16, n_layer = 2, n_head = 2, n_kv_head = 1,"      \
    " seq_len = 16 }, moe = { experts = 4, top_k = 2, d_ff = 16, every = 2, router = 'sigmoid_topk',"         \
    " bias_update_rate = 0.01, capacity_factor = 1.0, aux_loss = 0.01, z_loss = 0.001 }, dtype = 'fp32',"     \
    " train = { data = 'tinyshakespeare', batch = 2, grad_accum = 2, dropout = 0.1, steps = 6, warmup = 2,"    \
    " eval_every = 3, eval_batches = 2 }"
#define MICRO_SPEC MICRO_BODY " }"
/* The same model and run with ZeRO-1 (the same spec hash but for `parallel`, so their checkpoints
 * resume each other). */
#define ZERO_SPEC MICRO_BODY ", parallel = { zero = 1 } }"
/* Uneven shards: 3 micro-batches, so 3 ranks run the micro-batch split and 2 the row split (exact
 * without aux loss, dropout and capacity); over 3 ranks the buckets (multiples of d_model = 16
 * elements) leave tails (mg_zero.h; test_zero_layout checks that they do). */
#define UNEVEN_BODY                                                                                           \
    "return { name = 'dpu', model = { vocab = 256, d_model = 16, n_layer = 2, n_head = 2, n_kv_head = 1,"      \
    " seq_len = 16 }, moe = { experts = 3, top_k = 2, d_ff = 16, every = 2, aux_loss = 0, z_loss = 0.001 },"  \
    " dtype = 'fp32', train = { data = 'tinyshakespeare', batch = 2, grad_accum = 3, steps = 6, warmup = 2,"  \
    " eval_every = 3, eval_batches = 3 }"
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

/* `moegen train` with procs ranks (1: one process); asserts success, returns its output (static). */
static const char *train_out(const char *args, int procs, int quiet)
{
    static mg_proc p;
    char extra[32] = "";
    if (procs > 1) snprintf(extra, sizeof extra, "--procs %d --timeout 20", procs);
    mg_run(&p, "env -u MOEGEN_RANK -u SLURM_PROCID -u OMPI_COMM_WORLD_RANK -u PMI_RANK %s train %s --device cpu %s %s",
           mg_bin(), args, quiet ? "-q" : "", extra);
    if (p.code) print_error("moegen train %s %s:\n%s\n", args, extra, p.out);
    assert_int_equal(p.code, 0);
    return p.out;
}

static void train(const char *args, int procs) { (void)train_out(args, procs, 1); }

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

/* ---------------------------------------------------------------- ZeRO-1 (mg_zero.h) */

/* mg_zero_pieces' callback: every element of a piece has the piece's decay flag (dec[flat]) and is
 * counted once in seen[] (flat); the shard offsets follow the flat ones within the piece's run. */
typedef struct { const int *dec; int *seen; const mg_zero *z; int bad; } piece_check;

static int check_piece(void *ctx, long flat, long shard, long n, int decay, mg_err *err)
{
    (void)err;
    piece_check *c = ctx;
    int in_run = 0;
    for (int k = 0; k < c->z->n_runs; k++) {
        const mg_zero_run *u = &c->z->run[k];
        in_run += flat >= u->flat && flat + n <= u->flat + u->n && shard == u->shard + (flat - u->flat);
    }
    c->bad += in_run != 1 || n <= 0;
    for (long i = flat; i < flat + n; i++) c->bad += c->dec[i] != decay, c->seen[i]++;
    return 0;
}

/* The cut of the uneven model's buckets over W = 2, 3, 4 ranks, as each rank makes it: every
 * element of a bucket in exactly one rank's slice or in the tail every rank holds; each rank's runs
 * tile its shard [0, n_shard) (the same size on every rank); the counted parts ([0, n_norm)) of all
 * ranks cover every parameter exactly once (the grad norm); over 3 ranks there are tails. */
static void test_zero_layout(void **state)
{
    (void)state;
    mg_spec spec;
    mg_cpu_model m;
    mg_err err;
    const char *text = UNEVEN_BODY " }";
    assert_int_equal(mg_spec_load_string("uneven.lua", text, strlen(text), &spec, &err), 0);
    assert_int_equal(mg_cpu_model_create(&m, &spec, 1, &err), 0);
    int *slices = calloc((size_t)m.n_params, sizeof(int)), *tails = calloc((size_t)m.n_params, sizeof(int));
    int *normed = calloc((size_t)m.n_params, sizeof(int)), *dec = calloc((size_t)m.n_params, sizeof(int));
    int *seen = calloc((size_t)m.n_params, sizeof(int));
    for (int j = 0; j < m.n_tensors; j++)
        for (long i = m.tensors[j].off; i < m.tensors[j].off + m.tensors[j].n; i++) dec[i] = m.tensors[j].decay;
    for (int W = 1; W <= 4; W++) {
        long shard0 = -1, tail_total = 0;
        memset(slices, 0, sizeof(int) * (size_t)m.n_params);
        memset(tails, 0, sizeof(int) * (size_t)m.n_params);
        memset(normed, 0, sizeof(int) * (size_t)m.n_params);
        for (int r = 0; r < W; r++) {
            mg_comm fake = {.rank = r, .world = W};   /* mg_dp_init and mg_zero_init read rank and world only */
            mg_dp dp;
            mg_zero z;
            assert_int_equal(mg_dp_init(&dp, &fake, NULL, 12, 12, &err), 0);
            assert_int_equal(mg_dp_buckets(&dp, &m, &err), 0);
            assert_int_equal(mg_zero_init(&z, 1, &dp, m.n_params, &err), 0);
            assert_int_equal(z.on, W > 1);
            if (!z.on) {
                mg_dp_free(&dp);
                continue;
            }
            if (shard0 < 0) shard0 = z.n_shard;
            assert_int_equal(z.n_shard, shard0);
            long next = 0;
            for (int k = 0; k < z.n_runs; k++) {   /* runs in shard order, back to back */
                const mg_zero_run *u = &z.run[k];
                assert_int_equal(u->shard, next);
                next += u->n;
                for (long i = u->flat; i < u->flat + u->n; i++) normed[i] += u->shard < z.n_norm;
            }
            assert_int_equal(next, z.n_shard);
            /* AdamW's pieces (mg_zero_pieces, both trainers): exactly this rank's runs, one decay flag each */
            memset(seen, 0, sizeof(int) * (size_t)m.n_params);
            piece_check pc = {dec, seen, &z, 0};
            assert_int_equal(mg_zero_pieces(&z, m.tensors, m.n_tensors, check_piece, &pc, &err), 0);
            assert_int_equal(pc.bad, 0);
            for (int k = 0; k < z.n_runs; k++)
                for (long i = z.run[k].flat; i < z.run[k].flat + z.run[k].n; i++) seen[i]--;
            for (long i = 0; i < m.n_params; i++) assert_int_equal(seen[i], 0);
            for (int i = 0; i < dp.n_buckets; i++) {
                const mg_dp_bucket *b = &dp.b[i];
                const mg_zero_part *p = &z.p[i];
                assert_true(p->W == W && p->r == r && p->q == b->n / W && p->tail_n == b->n % W);
                for (long e = b->off + r * p->q; e < b->off + (r + 1) * p->q; e++) slices[e]++;
                for (long e = b->off + W * p->q; e < b->off + b->n; e++) tails[e]++;
                if (r == 0) tail_total += p->tail_n;
            }
            mg_zero_free(&z);
            mg_dp_free(&dp);
        }
        if (W == 1) continue;
        for (long e = 0; e < m.n_params; e++)
            if (!((slices[e] == 1 && tails[e] == 0) || (slices[e] == 0 && tails[e] == W)) || normed[e] != 1)
                fail_msg("W = %d, element %ld: in %d slices, %d tails, counted %d times in the norm", W, e, slices[e],
                         tails[e], normed[e]);
        print_message("    %d ranks: shard %ld of %ld parameters, %ld in tails\n", W, shard0, m.n_params, tail_total);
        if (W == 3) assert_true(tail_total > 0);
    }
    free(slices);
    free(tails);
    free(normed);
    free(dec);
    free(seen);
    mg_cpu_model_free(&m);
}

/* "optimizer state per rank: N bytes" of a run's output */
static long opt_bytes(const char *out)
{
    const char *p = strstr(out, "optimizer state per rank: ");
    assert_non_null(p);
    return atol(p + strlen("optimizer state per rank: "));
}

/* 2 ranks with ZeRO-1 train what 2 ranks without it and one process train; its checkpoints, in
 * the one-process format, resume on one process, on 2 ranks without ZeRO, and the reverse. */
static void test_dp_zero(void **state)
{
    (void)state;
    if (!mg_test_have_data()) return;
    char spec[300], zspec[300], args[900], one[300], two[300], z2[300], d[300];
    write_spec(spec, sizeof spec, "dpz0", MICRO_SPEC);
    write_spec(zspec, sizeof zspec, "dpz1", ZERO_SPEC);
    snprintf(one, sizeof one, "%s/z-one", tmp);
    snprintf(two, sizeof two, "%s/z-two", tmp);
    snprintf(z2, sizeof z2, "%s/z-zero", tmp);
    snprintf(args, sizeof args, "%s --run-dir %s", spec, one);
    train(args, 1);
    snprintf(args, sizeof args, "%s --run-dir %s", spec, two);
    long b0 = opt_bytes(train_out(args, 2, 0));
    snprintf(args, sizeof args, "%s --run-dir %s", zspec, z2);
    long b1 = opt_bytes(train_out(args, 2, 0));
    print_message("    optimizer state per rank: %ld bytes (zero = 0), %ld (zero = 1)\n", b0, b1);
    assert_true(b1 * 2 == b0);   /* 2 ranks, no tails: exactly half */
    same_curve(two, z2, 6);
    same_curve(one, z2, 6);
    /* zero = 1 -> one process, -> zero = 0 on 2 ranks; one process -> zero = 1, zero = 0 -> zero = 1 */
    const struct { const char *first; int p1; const char *then; int p2; } chain[] = {
        {zspec, 2, NULL, 1}, {zspec, 2, spec, 2}, {spec, 1, zspec, 2}, {spec, 2, zspec, 2}};
    for (int i = 0; i < 4; i++) {
        snprintf(d, sizeof d, "%s/z-chain%d", tmp, i);
        snprintf(args, sizeof args, "%s --run-dir %s --steps 3", chain[i].first, d);
        train(args, chain[i].p1);
        snprintf(args, sizeof args, "--resume %s %s", d, chain[i].then ? chain[i].then : "");
        train(args, chain[i].p2);
        same_curve(one, d, 6);
    }
}

/* Uneven shards (tails on most buckets) over 3 ranks = one process; 3 ranks with ZeRO-1 -> 2 ranks
 * with it (row split) and 2 ranks with it -> 3 without. */
static void test_dp_zero_uneven(void **state)
{
    (void)state;
    if (!mg_test_have_data()) return;
    char spec[300], zspec[300], args[900], one[300], d[300];
    write_spec(spec, sizeof spec, "dpu0", UNEVEN_BODY " }");
    write_spec(zspec, sizeof zspec, "dpu1", UNEVEN_BODY ", parallel = { zero = 1 } }");
    snprintf(one, sizeof one, "%s/u-one", tmp);
    snprintf(args, sizeof args, "%s --run-dir %s", spec, one);
    train(args, 1);
    snprintf(d, sizeof d, "%s/u-three", tmp);
    snprintf(args, sizeof args, "%s --run-dir %s", zspec, d);
    train(args, 3);
    same_curve(one, d, 6);
    snprintf(d, sizeof d, "%s/u-3to2", tmp);
    snprintf(args, sizeof args, "%s --run-dir %s --steps 3", zspec, d);
    train(args, 3);
    snprintf(args, sizeof args, "--resume %s %s", d, zspec);
    train(args, 2);
    same_curve(one, d, 6);
    snprintf(d, sizeof d, "%s/u-2to3", tmp);
    snprintf(args, sizeof args, "%s --run-dir %s --steps 3", zspec, d);
    train(args, 2);
    snprintf(args, sizeof args, "--resume %s %s", d, spec);
    train(args, 3);
    same_curve(one, d, 6);
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
        cmocka_unit_test(test_zero_layout),
        cmocka_unit_test(test_dp_zero),
        cmocka_unit_test(test_dp_zero_uneven),
        cmocka_unit_test(test_dp_rank_dies),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
