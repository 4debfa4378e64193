/* test_metrics: routing metrics on hand-made routing, CRC-32C against known vectors, the
 * TFRecord/protobuf/PNG bytes read back by TensorBoard's own EventAccumulator
 * (tests/tb_read.py; "skipped" when python3 cannot import tensorboard), and the trainer's
 * metrics.jsonl "moe" entries and event file on a tiny run. */
#include "mg_test.h"
#include "mg_testproc.h"

#include "mg_metrics.h"
#include "mg_sb.h"
#include "mg_spec.h"
#include "mg_tb.h"
#include "mg_train.h"

#include <jansson.h>
#include <math.h>
#include <stdlib.h>
#include <sys/stat.h>

static char tmp[256];

static int setup(void **state)
{
    (void)state;
    return mg_test_tmpdir(tmp, sizeof tmp, "metrics");
}

static int teardown(void **state)
{
    (void)state;
    mg_test_rmtree(tmp);
    return 0;
}

/* ---- metric math --------------------------------------------------------------------- */

/* 4 tokens, E = 4, k = 2: loads 4, 2, 1, 1. */
static const int topk[] = {0, 1, 1, 0, 0, 2, 3, 0};

static void test_metrics_math(void **state)
{
    (void)state;
    mg_metrics m;
    int id = 5;
    assert_int_equal(mg_metrics_init(&m, 1, &id, 4, 2), 0);
    float probs[16];
    for (int i = 0; i < 16; i++) probs[i] = 0.25f;
    probs[0] = 0.7f, probs[1] = 0.1f, probs[2] = 0.1f, probs[3] = 0.1f;   /* token 0 peaked */
    mg_metrics_add(&m, 0, &(mg_metrics_batch){.T = 4, .topk_idx = topk, .probs = probs, .aux = 0.1, .z = 0.01,
                                               .dropped = 2});
    mg_metrics_end_step(&m);
    mg_metrics_summary s;
    mg_metrics_summarize(&m, 0, &s);
    assert_int_equal(s.tokens, 4);
    assert_int_equal(m.l[0].load[0], 4);
    assert_int_equal(m.l[0].load[1], 2);
    assert_int_equal(m.l[0].load[2], 1);
    assert_int_equal(m.l[0].load[3], 1);
    assert_true(fabs(s.cv - sqrt(1.5) / 2) < 1e-12);        /* mean 2, var (4+0+1+1)/4 */
    assert_true(fabs(s.max_mean - 2) < 1e-12);
    assert_true(fabs(s.dropped_frac - 0.25) < 1e-12);       /* 2 of 8 assignments */
    double h0 = -(0.7 * log(0.7) + 3 * 0.1 * log(0.1)), h1 = log(4.0);
    assert_true(fabs(s.entropy - (h0 + 3 * h1) / 4) < 1e-6);
    assert_true(fabs(s.top1 - (0.7 + 3 * 0.25) / 4) < 1e-6);
    assert_int_equal(s.dead, 0);
    /* co-activation: pairs (0,1) twice, (0,2), (0,3); diagonal = load */
    long want[16] = {4, 2, 1, 1, 2, 2, 0, 0, 1, 0, 1, 0, 1, 0, 0, 1};
    for (int i = 0; i < 16; i++) assert_int_equal(m.l[0].coact[i], want[i]);

    /* a second step from counts alone (the GPU path: device sums, no topk): expert 3 idle */
    int counts[4] = {3, 3, 2, 0};
    mg_metrics_add(&m, 0, &(mg_metrics_batch){.T = 4, .counts_all = counts, .entropy_sum = 4.0, .top1_sum = 2.0,
                                               .aux = 0.3, .z = 0.03});
    mg_metrics_end_step(&m);
    mg_metrics_summarize(&m, 0, &s);
    assert_int_equal(m.l[0].load[0], 7);
    assert_int_equal(m.l[0].load[3], 1);
    assert_true(fabs(s.aux - 0.2) < 1e-12);                 /* mean over the 2 steps */
    assert_true(fabs(s.z - 0.02) < 1e-12);
    assert_true(fabs(s.top1 - (0.7 + 0.75 + 2.0) / 8) < 1e-6);

    /* reset, then a window with a dead expert, as JSON */
    mg_metrics_reset(&m);
    mg_metrics_add(&m, 0, &(mg_metrics_batch){.T = 4, .counts_all = counts});
    mg_metrics_end_step(&m);
    char path[400];
    snprintf(path, sizeof path, "%s/m.json", tmp);
    FILE *f = fopen(path, "w");
    fputs("{\"step\": 1", f);
    mg_metrics_json(&m, f);
    fputs("}\n", f);
    fclose(f);
    json_error_t je;
    json_t *j = json_load_file(path, 0, &je);
    assert_non_null(j);
    json_t *l = json_array_get(json_object_get(j, "moe"), 0);
    assert_int_equal(json_integer_value(json_object_get(l, "layer")), 5);
    assert_int_equal(json_array_size(json_object_get(l, "dead")), 1);
    assert_int_equal(json_integer_value(json_array_get(json_object_get(l, "dead"), 0)), 3);
    assert_int_equal(json_array_size(json_object_get(l, "coact")), 4);
    assert_int_equal(json_integer_value(json_array_get(json_object_get(l, "load"), 1)), 3);
    json_decref(j);
    mg_metrics_free(&m);

    /* dense model: no layers, no output */
    assert_int_equal(mg_metrics_init(&m, 0, NULL, 4, 2), 0);
    mg_metrics_free(&m);
}

/* Co-activation (mg_metrics_coact, which the GPU's mg_gpu_coact kernel mirrors): the diagonal is
 * the load, the matrix is symmetric, a row sums to k·load for distinct choices; repeated and
 * out-of-range choices; counts handed over reduced (.coact, the GPU trainer) add up like topk. */
static void test_metrics_coact(void **state)
{
    (void)state;
    enum { T = 1000, E = 16, K = 4 };
    static int idx[T * K];
    unsigned x = 12345;
    for (int t = 0; t < T; t++)   /* K distinct experts per token, skewed toward low ids */
        for (int i = 0; i < K; i++) {
            int e, dup;
            do {
                x = x * 1103515245u + 12345u;
                e = (int)((x >> 16) % E) & (int)((x >> 8) % E);
                dup = 0;
                for (int j = 0; j < i; j++) dup |= idx[t * K + j] == e;
            } while (dup);
            idx[t * K + i] = e;
        }
    long co[E * E] = {0}, load[E] = {0};
    mg_metrics_coact(idx, T, E, K, co);
    for (int tk = 0; tk < T * K; tk++) load[idx[tk]]++;
    for (int e = 0; e < E; e++) {
        long row = 0;
        for (int f = 0; f < E; f++) row += co[e * E + f], assert_int_equal(co[e * E + f], co[f * E + e]);
        assert_int_equal(co[e * E + e], load[e]);
        assert_int_equal(row, K * load[e]);
    }

    /* a repeated choice counts on the diagonal once per slot, never off it; -1 and E are skipped */
    static const int odd[] = {2, 2, -1, 3, 1, 4};
    long c4[16] = {0};
    mg_metrics_coact(odd, 3, 4, 2, c4);
    long want[16] = {0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 2, 0, 0, 0, 0, 1};
    for (int i = 0; i < 16; i++) assert_int_equal(c4[i], want[i]);

    /* the GPU trainer's path: counts_all + reduced coact; the same window as from topk_idx */
    mg_metrics a, b;
    assert_int_equal(mg_metrics_init(&a, 1, NULL, E, K), 0);
    assert_int_equal(mg_metrics_init(&b, 1, NULL, E, K), 0);
    int ico[E * E], cnt[E];
    for (int i = 0; i < E * E; i++) ico[i] = (int)co[i];
    for (int e = 0; e < E; e++) cnt[e] = (int)load[e];
    for (int step = 0; step < 2; step++) {
        mg_metrics_add(&a, 0, &(mg_metrics_batch){.T = T, .topk_idx = idx});
        mg_metrics_add(&b, 0, &(mg_metrics_batch){.T = T, .counts_all = cnt, .coact = ico});
    }
    mg_metrics_add(&a, 0, &(mg_metrics_batch){.T = T, .topk_idx = idx, .coact = ico});   /* topk wins: once */
    mg_metrics_add(&b, 0, &(mg_metrics_batch){.T = T, .topk_idx = idx});
    for (int i = 0; i < E * E; i++) assert_int_equal(a.l[0].coact[i], 3 * co[i]), assert_int_equal(b.l[0].coact[i], 3 * co[i]);
    for (int e = 0; e < E; e++) assert_int_equal(a.l[0].load[e], b.l[0].load[e]);
    mg_metrics_add(&b, 0, &(mg_metrics_batch){.T = T, .counts_all = cnt});   /* neither: no co-activation */
    assert_int_equal(b.l[0].coact[0], 3 * co[0]);
    mg_metrics_free(&a);
    mg_metrics_free(&b);
}

/* ---- CRC-32C, framing, PNG ------------------------------------------------------------ */

static void test_crc32c(void **state)
{
    (void)state;
    uint8_t buf[32];
    assert_int_equal(mg_crc32c(0, "123456789", 9), 0xE3069283u);   /* the CRC catalogue's check value */
    memset(buf, 0, 32);
    assert_int_equal(mg_crc32c(0, buf, 32), 0x8A9136AAu);          /* RFC 3720 B.4 */
    memset(buf, 0xff, 32);
    assert_int_equal(mg_crc32c(0, buf, 32), 0x62A8AB43u);
    for (int i = 0; i < 32; i++) buf[i] = (uint8_t)i;
    assert_int_equal(mg_crc32c(0, buf, 32), 0x46DD794Eu);
    for (int i = 0; i < 32; i++) buf[i] = (uint8_t)(31 - i);
    assert_int_equal(mg_crc32c(0, buf, 32), 0x113FDB5Cu);
    /* incremental = one go */
    assert_int_equal(mg_crc32c(mg_crc32c(0, "1234", 4), "56789", 5), 0xE3069283u);
    uint32_t c = 0xE3069283u;
    assert_int_equal(mg_crc32c_masked("123456789", 9), ((c >> 15) | (c << 17)) + 0xa282ead8u);

    mg_sb sb;
    mg_sb_init(&sb);
    mg_tfrecord_frame("abc", 3, &sb);
    assert_int_equal(sb.len, 8 + 4 + 3 + 4);
    assert_memory_equal(sb.buf, "\x03\0\0\0\0\0\0\0", 8);
    uint32_t lc, dc;
    memcpy(&lc, sb.buf + 8, 4), memcpy(&dc, sb.buf + 15, 4);
    assert_int_equal(lc, mg_crc32c_masked(sb.buf, 8));
    assert_int_equal(dc, mg_crc32c_masked("abc", 3));
    mg_sb_free(&sb);

    const uint8_t rgb[12] = {255, 0, 0, 0, 255, 0, 0, 0, 255, 255, 255, 255};
    mg_sb_init(&sb);
    assert_int_equal(mg_png_encode(rgb, 2, 2, &sb), 0);
    assert_memory_equal(sb.buf, "\x89PNG\r\n\x1a\n\0\0\0\x0dIHDR\0\0\0\x02\0\0\0\x02\x08\x02", 26);
    assert_memory_equal(sb.buf + sb.len - 12, "\0\0\0\0IEND\xae\x42\x60\x82", 12);
    mg_sb_free(&sb);
}

/* ---- TensorBoard reads what we write --------------------------------------------------- */

static int tb_read(const char *dir, mg_proc *p)
{
    mg_run(p, "python3 tests/tb_read.py %s", dir);
    if (p->code == 77 || p->code == 127) {
        print_message("%s", p->out);
        print_message("skipped: TensorBoard's reader is not available (CI installs it: pip install tensorboard)\n");
        return 0;
    }
    if (p->code) print_error("%s\n", p->out);
    assert_int_equal(p->code, 0);
    return 1;
}

static void test_tb_roundtrip(void **state)
{
    (void)state;
    char dir[400];
    snprintf(dir, sizeof dir, "%s/tb", tmp);
    mg_tb tb;
    mg_err err;
    assert_int_equal(mg_tb_open(&tb, dir, &err), 0);
    for (long s = 1; s <= 3; s++) mg_tb_scalar(&tb, "train/loss", s, 5.0 - s);
    mg_tb_scalar(&tb, "val/ppl", 300, 11.5);
    double lim[3] = {1, 2, 3}, cnt[3] = {10, 0, 30};
    mg_tb_histo(&tb, "moe/L1/load", 7, lim, cnt, 3);
    uint8_t rgb[4 * 2 * 3];
    for (int i = 0; i < 24; i++) rgb[i] = (uint8_t)(i < 12 ? 255 : 10 * i);
    mg_tb_image(&tb, "moe/load_heatmap", 9, rgb, 4, 2);
    mg_tb_close(&tb);
    mg_proc p;
    if (!tb_read(dir, &p)) return;
    mg_assert_contains(p.out, "scalar train/loss 1 4\n");
    mg_assert_contains(p.out, "scalar train/loss 3 2\n");
    mg_assert_contains(p.out, "scalar val/ppl 300 11.5\n");
    mg_assert_contains(p.out, "histo moe/L1/load 7 num=40 limits=1,2,3 buckets=10,0,30\n");
    mg_assert_contains(p.out, "image moe/load_heatmap 9 4x2 png=True");
    assert_null(strstr(p.out, "colors=1\n"));
}

/* ---- the trainer --------------------------------------------------------------------- */

#define TINY_SPEC                                                                                             \
    "return { name = 'tiny', model = { vocab = 256, d_model = 16, n_layer = 2, n_head = 2, n_kv_head = 1,"    \
    " seq_len = 16 }, moe = { experts = 4, top_k = 2, d_ff = 16, every = 1, capacity_factor = 1.0 },"         \
    " dtype = 'fp32', train = { data = 'tinyshakespeare', batch = 4, steps = 6, warmup = 2, eval_every = 3,"  \
    " eval_batches = 2 } }"

static void test_train_metrics(void **state)
{
    (void)state;
    if (!mg_test_have_data()) return;
    mg_spec s;
    mg_err err;
    assert_int_equal(mg_spec_load_string("tiny.lua", TINY_SPEC, strlen(TINY_SPEC), &s, &err), 0);
    char dir[400];
    snprintf(dir, sizeof dir, "%s/run", tmp);
    mg_train_opts o = {.run_dir = dir, .quiet = 1, .log_every = 2};
    mg_train_result r;
    if (mg_train(&s, &o, &r, &err)) print_error("%s\n", err.msg), fail();
    char path[500];
    snprintf(path, sizeof path, "%s/metrics.jsonl", dir);
    FILE *f = fopen(path, "r");
    assert_non_null(f);
    char *line = NULL;
    size_t cap = 0;
    int n_moe = 0;
    while (getline(&line, &cap, f) > 0) {
        json_t *j = json_loads(line, 0, NULL);
        assert_non_null(j);
        long st = (long)json_integer_value(json_object_get(j, "step"));
        json_t *moe = json_object_get(j, "moe");
        assert_int_equal(moe != NULL, st % 2 == 0);
        if (moe) {
            assert_int_equal(json_array_size(moe), 2);   /* both layers are MoE */
            json_t *l = json_array_get(moe, 1);
            assert_int_equal(json_integer_value(json_object_get(l, "layer")), 1);
            assert_int_equal(json_integer_value(json_object_get(l, "tokens")), 2 * 4 * 16);   /* 2 steps */
            long sum = 0;
            for (int e = 0; e < 4; e++) sum += (long)json_integer_value(json_array_get(json_object_get(l, "load"), e));
            assert_int_equal(sum, 2 * 4 * 16 * 2);
            double ent = json_real_value(json_object_get(l, "entropy"));
            assert_true(ent > 0 && ent <= log(4.0) + 1e-9);
            n_moe++;
        }
        json_decref(j);
    }
    free(line);
    fclose(f);
    assert_int_equal(n_moe, 3);
    print_message("metrics overhead: %.2f ms of %.2f ms of training (%.2f%%)\n", r.metrics_s * 1e3, r.train_s * 1e3,
                  100 * r.metrics_s / r.train_s);

    snprintf(path, sizeof path, "%s/tb", dir);
    mg_proc p;
    if (!tb_read(path, &p)) return;
    mg_assert_contains(p.out, "scalar train/loss 6 ");
    mg_assert_contains(p.out, "scalar moe/L0/load_cv 2 ");
    mg_assert_contains(p.out, "scalar moe/L1/entropy 4 ");
    mg_assert_contains(p.out, "scalar val/ppl 6 ");
    mg_assert_contains(p.out, "histo moe/L1/load 6 num=256 limits=1,2,3,4 ");
    mg_assert_contains(p.out, "image moe/load_heatmap 6 48x24 png=True");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_metrics_math),
        cmocka_unit_test(test_metrics_coact),
        cmocka_unit_test(test_crc32c),
        cmocka_unit_test(test_tb_roundtrip),
        cmocka_unit_test(test_train_metrics),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
