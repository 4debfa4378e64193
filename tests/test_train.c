/* test_train: the CPU trainer end to end: specs/ci-cpu.lua learns tiny-shakespeare (loss
 * bound), a stopped-and-resumed run equals an uninterrupted one bitwise, and the train/eval
 * verbs' messages. MG_TEST_QUICK=1 (the ASan pass) trains fewer steps against a looser bound.
 * Without the data ($MOEGEN_DATA_DIR or ../shared/data) the training tests say "skipped". */
#include "mg_test.h"
#include "mg_testproc.h"

#include "mg_safetensors.h"
#include "mg_spec.h"
#include "mg_tokfile.h"
#include "mg_train.h"

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
    return mg_test_tmpdir(tmp, sizeof tmp, "train");
}

static int teardown(void **state)
{
    (void)state;
    mg_test_rmtree(tmp);
    return 0;
}

static int quick(void) { return getenv("MG_TEST_QUICK") && strcmp(getenv("MG_TEST_QUICK"), "0"); }

static void load(mg_spec *s, const char *path, const char *text)
{
    mg_err err;
    mg_err_clear(&err);
    int rc = text ? mg_spec_load_string(path, text, strlen(text), s, &err) : mg_spec_load(path, s, &err);
    if (rc) {
        print_error("%s\n", err.msg);
        fail();
    }
}

static double now_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + t.tv_nsec * 1e-9;
}

/* The CI run: measured on 2 cores at -O2, 300 steps take ~20 s of CPU and end at train
 * loss 2.52, val loss 2.47 (from ln 256 = 5.55). Bound: val loss < 2.6 (quick: 20 steps,
 * < 4.5; under ASan 20 steps take ~15 s). */
static void test_ci_spec_learns(void **state)
{
    (void)state;
    if (!mg_test_have_data()) return;
    mg_spec s;
    load(&s, "specs/ci-cpu.lua", NULL);
    char dir[300];
    snprintf(dir, sizeof dir, "%s/ci", tmp);
    mg_train_opts o = {.run_dir = dir, .stop_after = quick() ? 20 : 0, .quiet = 1};
    mg_train_result r;
    mg_err err;
    double t0 = now_s();
    if (mg_train(&s, &o, &r, &err)) {
        print_error("%s\n", err.msg);
        fail();
    }
    double bound = quick() ? 4.5 : 2.6;
    print_message("ci-cpu: %ld steps in %.1f s, last train loss %.4f, val loss %.4f (ppl %.2f), bound %.2f\n",
                  r.steps_done, now_s() - t0, r.last_loss, r.last_val, exp(r.last_val), bound);
    /* the curve, every 50 steps */
    char path[400], line[4096];
    snprintf(path, sizeof path, "%s/metrics.jsonl", dir);
    FILE *f = fopen(path, "r");
    assert_non_null(f);
    while (fgets(line, sizeof line, f)) {
        json_t *j = json_loads(line, 0, NULL);
        long st = (long)json_integer_value(json_object_get(j, "step"));
        if (st == 1 || st % 50 == 0)
            print_message("  step %4ld  loss %.4f%s\n", st, json_real_value(json_object_get(j, "loss")),
                          json_object_get(j, "val_loss") ? "  (eval)" : "");
        json_decref(j);
    }
    fclose(f);
    assert_true(r.last_val < bound);
}

#define RESUME_SPEC                                                                                           \
    "return { name = 'rs', model = { vocab = 256, d_model = 16, n_layer = 2, n_head = 2, n_kv_head = 1,"      \
    " seq_len = 16 }, moe = { experts = 4, top_k = 2, d_ff = 16, every = 2, router = 'sigmoid_topk',"         \
    " bias_update_rate = 0.01, capacity_factor = 1.0 }, dtype = 'fp32', train = { data = 'tinyshakespeare',"   \
    " batch = 2, grad_accum = 2, dropout = 0.1, steps = 8, warmup = 2, eval_every = 3, eval_batches = 2 } }"

/* The deterministic fields of every line of a metrics file, one string. */
static char *curve(const char *dir)
{
    char path[400], line[4096];
    snprintf(path, sizeof path, "%s/metrics.jsonl", dir);
    FILE *f = fopen(path, "r");
    assert_non_null(f);
    size_t cap = 1 << 16, len = 0;
    char *out = calloc(cap, 1);
    while (fgets(line, sizeof line, f)) {
        char *cut = strstr(line, ", \"tokens_total\"");   /* step .. grad_norm, tokens */
        assert_non_null(cut);
        *cut = 0;
        len += (size_t)snprintf(out + len, cap - len, "%s\n", line);
    }
    fclose(f);
    return out;
}

static void train_ok(const mg_spec *s, mg_train_opts *o)
{
    mg_train_result r;
    mg_err err;
    o->quiet = 1;
    if (mg_train(s, o, &r, &err)) {
        print_error("%s\n", err.msg);
        fail();
    }
}

/* 8 steps straight vs 5 steps + resume to 8, and vs resuming from the older ckpt-000003 of
 * the stopped run: the same losses, gradient norms and final weights, bit for bit (dropout,
 * grad accumulation, capacity drops and the aux-free bias included). */
static void test_resume_is_bitwise(void **state)
{
    (void)state;
    if (!mg_test_have_data()) return;
    mg_spec s;
    load(&s, "rs.lua", RESUME_SPEC);
    char a[300], b[300], c[300], ck[400];
    snprintf(a, sizeof a, "%s/straight", tmp);
    snprintf(b, sizeof b, "%s/stopped", tmp);
    snprintf(c, sizeof c, "%s/from3", tmp);
    mg_train_opts oa = {.run_dir = a};
    train_ok(&s, &oa);
    mg_train_opts ob = {.run_dir = b, .stop_after = 5};
    train_ok(&s, &ob);
    mg_proc p;
    mg_run(&p, "cp -r %s %s && rm -r %s/ckpt-000005", b, c, c);
    assert_int_equal(p.code, 0);
    mg_train_opts ob2 = {.resume = b};
    train_ok(NULL, &ob2);
    snprintf(ck, sizeof ck, "%s/ckpt-000003", c);
    mg_train_opts oc = {.resume = ck};
    train_ok(&s, &oc);   /* with the spec given again: its hash must match */

    char *ca = curve(a), *cb = curve(b), *cc = curve(c);
    assert_string_equal(ca, cb);
    assert_string_equal(ca, cc);
    mg_assert_contains(ca, "{\"step\": 8,");
    free(ca); free(cb); free(cc);
    mg_run(&p, "cmp %s/ckpt-000008/model.safetensors %s/ckpt-000008/model.safetensors && "
               "cmp %s/ckpt-000008/optimizer.safetensors %s/ckpt-000008/optimizer.safetensors && "
               "cmp %s/ckpt-000008/model.safetensors %s/ckpt-000008/model.safetensors", a, b, a, b, a, c);
    if (p.code) print_error("%s\n", p.out);
    assert_int_equal(p.code, 0);
}

#define SOFTMAX_BIAS_SPEC                                                                                     \
    "return { name = 'sb', model = { vocab = 256, d_model = 16, n_layer = 1, n_head = 2, seq_len = 16 },"      \
    " moe = { experts = 4, top_k = 2, d_ff = 16, router = 'softmax_topk', bias_update_rate = 0.01 },"         \
    " dtype = 'fp32', log = { every = 3 }, train = { data = 'tinyshakespeare', batch = 2, steps = 5,"           \
    " warmup = 1, eval_every = 5, eval_batches = 1 } }"

/* The CPU trainer takes the aux-loss-free bias with the softmax router (and refuses it with
 * switch, which has no selection to bias), moves it and checkpoints it; log.every of the spec
 * sets when routing metrics are written (step 3 and the last, 5). */
static void test_softmax_bias_and_log_every(void **state)
{
    (void)state;
    if (!mg_test_have_data()) return;
    mg_spec s;
    mg_err err;
    mg_train_result r;
    char dir[300], path[400], line[1 << 14];
    snprintf(dir, sizeof dir, "%s/sw", tmp);
    load(&s, "sw.lua", "return { name = 'sw', model = { vocab = 256, d_model = 16, n_layer = 1, n_head = 2,"
                       " seq_len = 16 }, moe = { experts = 4, top_k = 1, d_ff = 16, router = 'switch',"
                       " bias_update_rate = 0.01 }, dtype = 'fp32' }");
    mg_train_opts os = {.run_dir = dir, .quiet = 1};
    assert_int_equal(mg_train(&s, &os, &r, &err), MG_EUSER);
    assert_string_equal(err.msg, "sw.lua: moe.bias_update_rate = 0.01: the selection bias needs router = "
                                 "\"softmax_topk\" or \"sigmoid_topk\" (as mg_ref does)");

    snprintf(dir, sizeof dir, "%s/sb", tmp);
    load(&s, "sb.lua", SOFTMAX_BIAS_SPEC);
    mg_train_opts o = {.run_dir = dir};
    train_ok(&s, &o);
    snprintf(path, sizeof path, "%s/metrics.jsonl", dir);
    FILE *f = fopen(path, "r");
    assert_non_null(f);
    int logged = 0;
    while (fgets(line, sizeof line, f)) {
        long st = strtol(line + strlen("{\"step\": "), NULL, 10);
        int has = strstr(line, "\"moe\": [") != NULL;
        assert_int_equal(has, st == 3 || st == 5);
        logged += has;
    }
    fclose(f);
    assert_int_equal(logged, 2);
    /* 5 updates of ±0.01 each: every entry of the saved bias is a nonzero multiple of 0.01 */
    snprintf(path, sizeof path, "%s/ckpt-000005/model.safetensors", dir);
    mg_st_file sf;
    float bias[4];
    long sh[1] = {4};
    assert_int_equal(mg_st_open(path, &sf, &err), 0);
    assert_int_equal(mg_st_get(&sf, "model.layers.0.mlp.gate.e_score_correction_bias", 1, sh, bias, &err), 0);
    mg_st_close(&sf);
    int moved = 0;
    for (int e = 0; e < 4; e++) {
        double q = bias[e] / 0.01;
        assert_true(fabs(q - round(q)) < 1e-3 && fabs(q) <= 5 + 1e-3);
        moved += bias[e] != 0;
    }
    assert_true(moved > 0);
}

/* The verbs: the GPU path refuses plainly, errors are one line, eval reports loss and ppl. */
static void test_cli(void **state)
{
    (void)state;
    mg_proc p;
    mg_run(&p, "%s devices", mg_bin());
    if (p.code != 0) {   /* no CUDA device (CI): --device gpu is one line naming the reason */
        mg_run(&p, "%s train specs/ci-cpu.lua --device gpu --run-dir %s/nogpu", mg_bin(), tmp);
        assert_int_equal(p.code, 1);
        mg_assert_contains(p.out, "moegen: train: --device gpu: no CUDA device here (");
        mg_assert_contains(p.out, "); use --device cpu\n");
        assert_ptr_equal(strchr(p.out, '\n'), p.out + strlen(p.out) - 1);
        /* --check-step runs the CPU half, dumps it for the PyTorch check, then says why it stops */
        mg_run(&p, "%s train specs/ci-cpu.lua --check-step --dump %s/chk", mg_bin(), tmp);
        assert_int_equal(p.code, 1);
        mg_assert_contains(p.out, "gpu: skipped: no CUDA device");
        mg_assert_contains(p.out, "moegen: train: --check-step: no CUDA device (");
        mg_run(&p, "ls %s/chk", tmp);
        mg_assert_contains(p.out, "batch.npy\nconfig.json\ngrads_cpu.safetensors\nmodel.safetensors\nspec.lua\n");
    }
    mg_run(&p, "%s train specs/ci-cpu.lua --dump /tmp/x", mg_bin());
    assert_int_equal(p.code, 1);
    mg_assert_contains(p.out, "--dump needs --check-step");
    mg_run(&p, "%s train specs/ci-cpu.lua --device tpu", mg_bin());
    assert_int_equal(p.code, 1);
    mg_assert_contains(p.out, "--device = 'tpu': must be one of cpu, gpu");
    mg_run(&p, "%s train --device cpu", mg_bin());
    assert_int_equal(p.code, 1);
    mg_assert_contains(p.out, "missing spec file");
    mg_run(&p, "%s train specs/ci-cpu.lua --steps 0", mg_bin());
    assert_int_equal(p.code, 1);
    mg_assert_contains(p.out, "--steps = '0': must be an integer >= 1");
    mg_run(&p, "%s train --help", mg_bin());
    assert_int_equal(p.code, 0);
    mg_assert_contains(p.out, "usage: moegen train SPEC");
    mg_run(&p, "%s eval %s/nothing", mg_bin(), tmp);
    assert_int_equal(p.code, 1);
    mg_assert_contains(p.out, "no such checkpoint or run directory");
    if (!mg_test_have_data()) return;

    char spec[300];
    snprintf(spec, sizeof spec, "%s/rs.lua", tmp);
    FILE *f = fopen(spec, "w");
    fputs(RESUME_SPEC, f);
    fclose(f);
    mg_run(&p, "%s train %s --device cpu --steps 3 --run-dir %s/cli", mg_bin(), spec, tmp);
    if (p.code) print_error("%s\n", p.out);
    assert_int_equal(p.code, 0);
    mg_assert_contains(p.out, "step 3/3 | loss ");
    mg_assert_contains(p.out, "train: 3 steps done");
    /* a fresh run into a run dir with checkpoints is refused */
    mg_run(&p, "%s train %s --run-dir %s/cli", mg_bin(), spec, tmp);
    assert_int_equal(p.code, 1);
    mg_assert_contains(p.out, "already holds checkpoints");
    mg_run(&p, "printf 'To be, or not to be, that is the question: Whether tis nobler in the mind to suffer' > "
               "%s/t.txt && %s eval %s/cli --data %s/t.txt", tmp, mg_bin(), tmp, tmp);
    assert_int_equal(p.code, 0);
    mg_assert_contains(p.out, "loss ");
    mg_assert_contains(p.out, "ppl ");
    mg_assert_contains(p.out, "(80 tokens)");
    mg_run(&p, "truncate -s 100 %s/cli/ckpt-000003/model.safetensors && %s eval %s/cli/best", tmp, mg_bin(), tmp);
    assert_int_equal(p.code, 1);
    mg_assert_contains(p.out, "/cli/best/model.safetensors: truncated");
    mg_run(&p, "%s train --resume %s/cli", mg_bin(), tmp);
    assert_int_equal(p.code, 1);
    mg_assert_contains(p.out, "/cli/ckpt-000003/model.safetensors: truncated");
}


/* train.data = a `moegen data` output directory: the token files are used as they are, and a
 * model.vocab below the files' vocabulary is refused. */
static void test_token_files(void **state)
{
    (void)state;
    char dir[300], path[400], spec[1024];
    snprintf(dir, sizeof dir, "%s/tok", tmp);
    mkdir(dir, 0755);
    uint32_t t[3000];
    for (int i = 0; i < 3000; i++) t[i] = (uint32_t)((i * 7 + i / 13) % 50);
    mg_tokfile_info info = {.vocab = 50};
    snprintf(info.tokenizer, sizeof info.tokenizer, "word");
    mg_err err;
    snprintf(path, sizeof path, "%s/train.tok", dir);
    assert_int_equal(mg_tokfile_write(path, &info, t, 3000, &err), 0);
    snprintf(path, sizeof path, "%s/valid.tok", dir);
    assert_int_equal(mg_tokfile_write(path, &info, t + 1000, 500, &err), 0);
    for (int vocab = 48; vocab <= 64; vocab += 16) {
        snprintf(spec, sizeof spec, "return { name = 'tk', model = { vocab = %d, d_model = 16, n_layer = 1, n_head = 2,"
                 " seq_len = 16 }, moe = { experts = 4, top_k = 2, d_ff = 16 }, dtype = 'fp32', train = { data = '%s',"
                 " batch = 2, steps = 2, warmup = 1, eval_every = 2, eval_batches = 2 } }", vocab, dir);
        mg_spec s;
        load(&s, "tk.lua", spec);
        snprintf(path, sizeof path, "%s/run%d", tmp, vocab);
        mg_train_opts o = {.run_dir = path, .quiet = 1};
        mg_train_result r;
        int rc = mg_train(&s, &o, &r, &err);
        if (vocab == 48) {
            assert_int_equal(rc, MG_EUSER);
            mg_assert_contains(err.msg, "model.vocab = 48: the data (token files ");
            mg_assert_contains(err.msg, "needs vocab >= 50");
        } else {
            if (rc) print_error("%s\n", err.msg);
            assert_int_equal(rc, 0);
            assert_int_equal(r.steps_done, 2);
            assert_true(isfinite(r.last_val) && r.last_val < log(64.0) + 0.5);
        }
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_cli),
        cmocka_unit_test(test_resume_is_bitwise),
        cmocka_unit_test(test_token_files),
        cmocka_unit_test(test_softmax_bias_and_log_every),
        cmocka_unit_test(test_ci_spec_learns),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
