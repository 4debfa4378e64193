/* test_ckpt: safetensors read/write (F32, BF16), checkpoint round trips, retention, and a
 * one-line error naming the file for every kind of missing or corrupt checkpoint. */
#include "mg_test.h"
#include "mg_testproc.h"

#include "mg_ckpt.h"
#include "mg_cpu_model.h"
#include "mg_optim.h"
#include "mg_rng.h"
#include "mg_safetensors.h"

#include <math.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

static char tmp[256];

static int setup(void **state)
{
    (void)state;
    return mg_test_tmpdir(tmp, sizeof tmp, "ckpt");
}

static int teardown(void **state)
{
    (void)state;
    mg_test_rmtree(tmp);
    return 0;
}

#define SPEC "return { name = 'ck', model = { vocab = 32, d_model = 16, n_layer = 2, n_head = 2, n_kv_head = 1," \
             " seq_len = 8, tie_embeddings = false }, moe = { experts = 4, top_k = 2, d_ff = 16, every = 2,"      \
             " router = 'sigmoid_topk', bias_update_rate = 0.001 }, dtype = 'fp32' }"

/* SPEC with the softmax router: its aux-loss-free bias is saved the same way. */
#define SPEC_SOFTMAX "return { name = 'cks', model = { vocab = 32, d_model = 16, n_layer = 2, n_head = 2," \
                     " seq_len = 8 }, moe = { experts = 4, top_k = 2, d_ff = 16, every = 2,"             \
                     " router = 'softmax_topk', bias_update_rate = 0.001 }, dtype = 'fp32' }"

static void make_model_from(mg_cpu_model *m, mg_adamw *o, uint64_t seed, const char *text)
{
    mg_spec s;
    mg_err err;
    if (mg_spec_load_string("ck.lua", text, strlen(text), &s, &err)) {
        print_error("%s\n", err.msg);
        fail();
    }
    assert_int_equal(mg_cpu_model_create(m, &s, 1, &err), 0);
    mg_cpu_model_init_weights(m, seed);
    mg_adamw_init(o, m->n_params);
    mg_rng r;
    mg_rng_seed(&r, seed);
    for (long i = 0; i < m->n_params; i++) o->m[i] = (float)mg_rng_normal(&r), o->v[i] = (float)mg_rng_unif(&r);
    o->step = 7;
    for (int i = 0; i < m->L; i++)
        if (m->layers[i].sel_bias)
            for (int e = 0; e < m->E; e++) m->layers[i].sel_bias[e] = 0.01f * (float)e;
}

static void make_model(mg_cpu_model *m, mg_adamw *o, uint64_t seed) { make_model_from(m, o, seed, SPEC); }

static mg_ckpt_state state_at(long step)
{
    return (mg_ckpt_state){.step = step, .tokens = step * 16, .seed = 3, .data_pos = step * 2, .val_loss = 2.5,
                           .best_val = 2.25, .best_step = step};
}

static void test_safetensors_roundtrip(void **state)
{
    (void)state;
    float a[6] = {1.0f, -2.5f, 3.25f, 1e-3f, 65504.0f, -0.0f}, b[3] = {0.1f, 0.2f, 0.3f}, got[6];
    mg_st_entry e[2] = {{"w.a", 2, {2, 3}, a}, {"w.b", 1, {3, 1}, b}};
    const char *meta[] = {"format", "pt", NULL};
    char path[300];
    mg_err err;
    for (int bf = 0; bf < 2; bf++) {
        snprintf(path, sizeof path, "%s/t%d.safetensors", tmp, bf);
        assert_int_equal(mg_st_write(path, e, 2, bf ? MG_ST_BF16 : MG_ST_F32, meta, &err), 0);
        /* the format by hand: 8-byte LE length, a JSON header padded to 8, data offsets from 0 */
        FILE *f = fopen(path, "rb");
        unsigned char h8[8];
        assert_int_equal(fread(h8, 1, 8, f), 8);
        unsigned long hl = 0;
        for (int i = 7; i >= 0; i--) hl = hl << 8 | h8[i];
        char hdr[512] = {0};
        assert_true(hl < sizeof hdr && hl % 8 == 0);
        assert_int_equal(fread(hdr, 1, hl, f), hl);
        fseek(f, 0, SEEK_END);
        assert_int_equal(ftell(f), 8 + hl + 9 * (bf ? 2 : 4));
        fclose(f);
        mg_assert_contains(hdr, bf ? "\"w.a\":{\"dtype\":\"BF16\",\"shape\":[2,3],\"data_offsets\":[0,12]}"
                                   : "\"w.a\":{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[0,24]}");
        mg_assert_contains(hdr, "\"__metadata__\":{\"format\":\"pt\"}");

        mg_st_file sf;
        assert_int_equal(mg_st_open(path, &sf, &err), 0);
        assert_int_equal(mg_st_count(&sf), 2);
        assert_string_equal(mg_st_meta(&sf, "format"), "pt");
        long sh[2] = {2, 3};
        assert_int_equal(mg_st_get(&sf, "w.a", 2, sh, got, &err), 0);
        for (int i = 0; i < 6; i++) {
            float want = bf ? mg_bf16_to_f32(mg_f32_to_bf16(a[i])) : a[i];
            assert_memory_equal(&got[i], &want, sizeof(float));
            if (bf) assert_true(fabsf(got[i] - a[i]) <= fabsf(a[i]) / 256);
        }
        long bad[2] = {3, 2};
        assert_int_equal(mg_st_get(&sf, "w.a", 2, bad, got, &err), MG_EUSER);
        mg_assert_contains(err.msg, "has shape [2,3], expected [3,2]");
        assert_int_equal(mg_st_get(&sf, "w.c", 1, sh, got, &err), MG_EUSER);
        mg_assert_contains(err.msg, "tensor 'w.c' is missing");
        mg_st_close(&sf);
    }
    /* rounding: ties to even, NaN stays NaN */
    assert_int_equal(mg_f32_to_bf16(1.0f), 0x3F80);
    assert_int_equal(mg_f32_to_bf16(mg_bf16_to_f32(0x3F80) + 0x1p-8f), 0x3F80);   /* tie -> even */
    assert_int_equal(mg_f32_to_bf16(mg_bf16_to_f32(0x3F81) + 0x1p-8f), 0x3F82);
    assert_true(isnan(mg_bf16_to_f32(mg_f32_to_bf16(NAN))));
}

static void test_ckpt_roundtrip_bitwise(void **state)
{
    (void)state;
    mg_cpu_model a, b;
    mg_adamw oa, ob;
    mg_err err;
    make_model(&a, &oa, 1);
    make_model(&b, &ob, 2);
    char run[300], ck[400];
    snprintf(run, sizeof run, "%s/rt", tmp);
    mkdir(run, 0755);
    mg_ckpt_state st = state_at(7);
    assert_int_equal(mg_ckpt_save(run, &a, &oa, &st, 3, &err), 0);
    assert_int_equal(mg_ckpt_resolve(run, ck, sizeof ck, &err), 0);
    mg_assert_contains(ck, "/rt/ckpt-000007");
    mg_ckpt_state rs;
    mg_spec spec;
    assert_int_equal(mg_ckpt_read_state(ck, &rs, &spec, &err), 0);
    assert_int_equal(rs.step, 7);
    assert_int_equal(rs.tokens, 112);
    assert_int_equal(rs.seed, 3);
    assert_int_equal(rs.data_pos, 14);
    assert_true(rs.val_loss == 2.5 && rs.best_val == 2.25 && rs.best_step == 7);
    assert_string_equal(spec.name, "ck");
    mg_ckpt_state_free(&rs);
    assert_int_equal(mg_ckpt_load(ck, &b, &ob, &err), 0);
    assert_memory_equal(a.params, b.params, sizeof(float) * (size_t)a.n_params);
    assert_memory_equal(oa.m, ob.m, sizeof(float) * (size_t)a.n_params);
    assert_memory_equal(oa.v, ob.v, sizeof(float) * (size_t)a.n_params);
    assert_int_equal(ob.step, 7);
    assert_memory_equal(a.layers[1].sel_bias, b.layers[1].sel_bias, sizeof(float) * 4);
    /* HF names in the file */
    char path[500];
    snprintf(path, sizeof path, "%s/model.safetensors", ck);
    mg_st_file f;
    assert_int_equal(mg_st_open(path, &f, &err), 0);
    assert_int_equal(mg_st_count(&f), a.n_tensors + 1);
    float row[16];
    long sh1[1] = {4};
    assert_int_equal(mg_st_get(&f, "model.layers.1.mlp.gate.e_score_correction_bias", 1, sh1, row, &err), 0);
    long sh2[2] = {16, 16};
    float w[256];
    assert_int_equal(mg_st_get(&f, "model.layers.1.mlp.experts.2.up_proj.weight", 2, sh2, w, &err), 0);
    const mg_cpu_tensor *t = mg_cpu_model_find(&a, "model.layers.1.mlp.experts.2.up_proj.weight");
    assert_memory_equal(w, a.params + t->off, sizeof w);
    mg_st_close(&f);
    mg_adamw_free(&oa);
    mg_adamw_free(&ob);
    mg_cpu_model_free(&a);
    mg_cpu_model_free(&b);
}

/* The softmax router's selection bias goes through a checkpoint bit for bit, under its HF name. */
static void test_ckpt_softmax_bias_roundtrip(void **state)
{
    (void)state;
    mg_cpu_model a, b;
    mg_adamw oa, ob;
    mg_err err;
    make_model_from(&a, &oa, 1, SPEC_SOFTMAX);
    make_model_from(&b, &ob, 2, SPEC_SOFTMAX);
    assert_non_null(a.layers[1].sel_bias);
    for (int e = 0; e < 4; e++) a.layers[1].sel_bias[e] = -0.003f * (float)(e + 1);
    memset(b.layers[1].sel_bias, 0, sizeof(float) * 4);
    char run[300], ck[400];
    snprintf(run, sizeof run, "%s/rts", tmp);
    mkdir(run, 0755);
    mg_ckpt_state st = state_at(3);
    assert_int_equal(mg_ckpt_save(run, &a, &oa, &st, 3, &err), 0);
    assert_int_equal(mg_ckpt_resolve(run, ck, sizeof ck, &err), 0);
    assert_int_equal(mg_ckpt_load(ck, &b, &ob, &err), 0);
    assert_memory_equal(a.layers[1].sel_bias, b.layers[1].sel_bias, sizeof(float) * 4);
    char path[500];
    snprintf(path, sizeof path, "%s/model.safetensors", ck);
    mg_st_file f;
    float row[4];
    long sh1[1] = {4};
    assert_int_equal(mg_st_open(path, &f, &err), 0);
    assert_int_equal(mg_st_get(&f, "model.layers.1.mlp.gate.e_score_correction_bias", 1, sh1, row, &err), 0);
    assert_memory_equal(row, a.layers[1].sel_bias, sizeof row);
    mg_st_close(&f);
    mg_adamw_free(&oa);
    mg_adamw_free(&ob);
    mg_cpu_model_free(&a);
    mg_cpu_model_free(&b);
}

/* keep = 2 plus the best: after steps 1..6 with the best at 2, ckpt 2, 5, 6 remain. */
static void test_retention_and_best(void **state)
{
    (void)state;
    mg_cpu_model m;
    mg_adamw o;
    mg_err err;
    make_model(&m, &o, 1);
    char run[300];
    snprintf(run, sizeof run, "%s/keep", tmp);
    mkdir(run, 0755);
    for (long s = 1; s <= 6; s++) {
        mg_ckpt_state st = state_at(s);
        st.val_loss = s == 2 ? 1.0 : 3.0;
        st.best_val = s >= 2 ? 1.0 : 3.0;
        st.best_step = s >= 2 ? 2 : 1;
        assert_int_equal(mg_ckpt_save(run, &m, &o, &st, 2, &err), 0);
    }
    mg_proc p;
    mg_run(&p, "cd %s && ls -A && readlink best", run);
    assert_string_equal(p.out, "best\nckpt-000002\nckpt-000005\nckpt-000006\nckpt-000002\n");
    mg_adamw_free(&o);
    mg_cpu_model_free(&m);
}

/* Saves a good checkpoint into DIR/name, then runs `cmd` (a shell snippet run inside it) to
 * damage it; loading must fail with one line that names `file` and contains `what`. */
static void expect_corrupt(const char *name, const char *cmd, const char *file, const char *what)
{
    mg_cpu_model m, m2;
    mg_adamw o, o2;
    mg_err err;
    make_model(&m, &o, 1);
    make_model(&m2, &o2, 2);
    char run[300], ck[400], want[500];
    snprintf(run, sizeof run, "%s/%s", tmp, name);
    mkdir(run, 0755);
    mg_ckpt_state st = state_at(4);
    assert_int_equal(mg_ckpt_save(run, &m, &o, &st, 3, &err), 0);
    snprintf(ck, sizeof ck, "%s/ckpt-000004", run);
    mg_proc p;
    mg_run(&p, "cd %s && %s", ck, cmd);
    assert_int_equal(p.code, 0);
    mg_ckpt_state rs;
    mg_spec spec;
    int rc = mg_ckpt_read_state(ck, &rs, &spec, &err);
    if (!rc) {
        mg_ckpt_state_free(&rs);
        rc = mg_ckpt_load(ck, &m2, &o2, &err);
    }
    assert_int_equal(rc, MG_EUSER);
    snprintf(want, sizeof want, "%s/%s", ck, file);
    mg_assert_contains(err.msg, want);
    mg_assert_contains(err.msg, what);
    assert_null(strchr(err.msg, '\n'));
    mg_adamw_free(&o);
    mg_adamw_free(&o2);
    mg_cpu_model_free(&m);
    mg_cpu_model_free(&m2);
}

static void test_corrupt_checkpoints(void **state)
{
    (void)state;
    expect_corrupt("c1", "rm model.safetensors", "model.safetensors", "cannot open");
    expect_corrupt("c2", "truncate -s 5000 model.safetensors", "model.safetensors", "truncated");
    expect_corrupt("c3", "truncate -s 5 optimizer.safetensors", "optimizer.safetensors", "truncated");
    expect_corrupt("c4", "printf '\\377\\377\\377\\377' | dd of=model.safetensors conv=notrunc 2>/dev/null",
                   "model.safetensors", "header length");
    expect_corrupt("c5", "printf 'XX' | dd of=model.safetensors bs=1 seek=8 conv=notrunc 2>/dev/null",
                   "model.safetensors", "corrupt header");
    expect_corrupt("c6", "sed -i 's/model.norm.weight/model.norm.wEight/' model.safetensors", "model.safetensors",
                   "tensor 'model.norm.weight' is missing");
    expect_corrupt("c7", "rm state.json", "state.json", "missing");
    expect_corrupt("c8", "echo '{\"step\": ' > state.json", "state.json", "corrupt JSON");
    expect_corrupt("c9", "sed -i 's/\"tokens\"/\"tokenz\"/' state.json", "state.json", "'tokens' missing");
    expect_corrupt("c10", "sed -i 's/d_model = 16/d_model = 32/' state.json", "state.json",
                   "spec_hash does not match");
    expect_corrupt("c11", "sed -i 's/\"step\":\"7\"/\"step\":\"x\"/' optimizer.safetensors", "optimizer.safetensors",
                   "__metadata__.step");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_safetensors_roundtrip),
        cmocka_unit_test(test_ckpt_roundtrip_bitwise),
        cmocka_unit_test(test_ckpt_softmax_bias_roundtrip),
        cmocka_unit_test(test_retention_and_best),
        cmocka_unit_test(test_corrupt_checkpoints),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
