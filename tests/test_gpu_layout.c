/* test_gpu_layout: the CPU-checkable parts of the GPU trainer: the fused views mg_gpu_model
 * takes of the flat parameter buffer (QKV, expert groups, dense FFN) agree with the CPU
 * model's tensor table for every shipped spec, the per-layer kernel specs validate, the
 * MFU arithmetic, and NVRTC compiles the model's own small kernels. */
#include "mg_test.h"
#include "mg_cpu_model.h"
#include "mg_gpu_model.h"
#include "mg_jit.h"

#include <dirent.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Every shipped spec small enough to build here (the table is what matters, bmax 1). */
static void test_layout_all_specs(void **state)
{
    (void)state;
    DIR *dir = opendir("specs");
    assert_non_null(dir);
    struct dirent *de;
    int n = 0;
    while ((de = readdir(dir))) {
        size_t len = strlen(de->d_name);
        if (len < 5 || strcmp(de->d_name + len - 4, ".lua")) continue;
        char path[600];
        snprintf(path, sizeof path, "specs/%s", de->d_name);
        mg_spec s;
        mg_err e;
        mg_err_clear(&e);
        assert_int_equal(mg_spec_load(path, &s, &e), 0);
        mg_derived dv;
        mg_spec_derive(&s, &dv);
        for (int dense = 0; dense < 2; dense++) {   /* the kernel specs of both layer kinds validate */
            mg_spec ls;
            mg_gpu_layer_spec(&s, dense, &ls);
            if (mg_spec_validate(&ls, &e)) print_error("%s (dense=%d): %s\n", path, dense, e.msg);
            assert_int_equal(mg_spec_validate(&ls, &e), 0);
            if (dense) {
                assert_int_equal(ls.moe.experts, 1);
                assert_int_equal(ls.moe.d_ff, dv.d_ff_dense);
                assert_true(ls.moe.aux_loss == 0 && ls.moe.z_loss == 0 && ls.moe.capacity_factor == 0);
            } else {
                assert_true(ls.moe.aux_loss == s.moe.aux_loss / s.train.grad_accum);
            }
        }
        if (dv.params_total > 3e8) continue;   /* mixtral, olmoe: too big to allocate here */
        mg_cpu_model m;
        assert_int_equal(mg_cpu_model_create(&m, &s, 1, &e), 0);
        if (mg_gpu_check_layout(&m, &e)) print_error("%s: %s\n", path, e.msg);
        assert_int_equal(mg_gpu_check_layout(&m, &e), 0);
        /* the tensors tile the buffer in order: AdamW's runs of equal decay rely on it */
        long off = 0;
        for (int j = 0; j < m.n_tensors; j++) {
            assert_int_equal(m.tensors[j].off, off);
            off += m.tensors[j].n;
        }
        assert_int_equal(off, m.n_params);
        mg_cpu_model_free(&m);
        n++;
    }
    closedir(dir);
    assert_true(n >= 5);
}

/* A deliberately broken table is caught with the tensor's name. */
static void test_layout_detects_moves(void **state)
{
    (void)state;
    mg_spec s;
    mg_err e;
    mg_err_clear(&e);
    assert_int_equal(mg_spec_load("specs/ci-cpu.lua", &s, &e), 0);
    mg_cpu_model m;
    assert_int_equal(mg_cpu_model_create(&m, &s, 1, &e), 0);
    m.layers[1].w_dn += 1;
    assert_int_equal(mg_gpu_check_layout(&m, &e), MG_EINTERNAL);
    mg_assert_contains(e.msg, "layer 1: experts' down after gate/up");
    m.layers[1].w_dn -= 1;
    m.layers[0].wv += 4;
    assert_int_equal(mg_gpu_check_layout(&m, &e), MG_EINTERNAL);
    mg_assert_contains(e.msg, "layer 0: v_proj after k_proj");
    mg_cpu_model_free(&m);
}

/* MFU = tok/s · (6·active + attention) / 989 TFLOP/s. */
static void test_mfu(void **state)
{
    (void)state;
    mg_spec s;
    mg_err e;
    mg_err_clear(&e);
    assert_int_equal(mg_spec_load("specs/wt2-moe8.lua", &s, &e), 0);
    mg_derived dv;
    mg_spec_derive(&s, &dv);
    double tps = 1e6;
    assert_true(fabs(mg_gpu_mfu(&s, tps, 0) - tps * dv.flops_per_token / 989e12) < 1e-15);
    assert_true(fabs(mg_gpu_mfu(&s, tps, 1e15) - tps * dv.flops_per_token / 1e15) < 1e-15);
    /* 6·active is the bulk: attention adds a little on top */
    assert_true(dv.flops_per_token > 6 * (dv.params_active - dv.params_embedding));
    assert_true(MG_GPU_PEAK_BF16 == 989.0e12);
}

/* The model's own kernels (mg_gpu_glue_source: mg_gpu_add_f32, mg_gpu_coact), compiled at
 * mg_gpu_create on the GPU host: NVRTC builds them here for both shipped archs, with integer
 * atomics in the co-activation count (the PTX for compute_80). */
static void test_glue_nvrtc(void **state)
{
    (void)state;
    size_t len;
    const char *src = mg_gpu_glue_source(&len);
    assert_true(len == strlen(src));
    const char *archs[] = {"sm_80", "sm_90a", "compute_80"};
    for (int a = 0; a < 3; a++) {
        mg_jit_opts o = {.arch = archs[a], .no_cache = 1};
        mg_jit_result r;
        mg_err e;
        memset(&r, 0, sizeof r);
        mg_err_clear(&e);
        int rc = mg_jit_compile("mg_gpu_glue", src, len, &o, &r, &e);
        if (rc) print_error("%s: %s\n", archs[a], e.msg);
        assert_int_equal(rc, MG_OK);
        assert_true(r.cubin.size > 0);
        for (int k = 0; k < 2; k++) {
            const char *name = k ? "mg_gpu_coact" : "mg_gpu_add_f32";
            assert_non_null(memmem(r.cubin.data, r.cubin.size, name, strlen(name)));
        }
        if (a == 2) {
            const char *ptx = (const char *)r.cubin.data;
            assert_true(strstr(ptx, "red.global.add.u32") || strstr(ptx, "red.global.add.s32") ||
                        strstr(ptx, "atom.global.add.u32") || strstr(ptx, "atom.global.add.s32"));
        }
        mg_jit_result_free(&r);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_layout_all_specs),
        cmocka_unit_test(test_layout_detects_moves),
        cmocka_unit_test(test_mfu),
        cmocka_unit_test(test_glue_nvrtc),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
