/* test_gen: generated sources match the golden files, compile with NVRTC (every shipped
 * spec, sm_90 and sm_80) and with nvcc -c, and carry #line directives and spec constants. */
#include "mg_test.h"
#include "mg_testproc.h"
#include "mg_gen.h"
#include "mg_jit.h"

#include <dirent.h>
#include <stdlib.h>
#include <unistd.h>

static char tmp[256];

static int setup(void **state)
{
    (void)state;
    if (mg_test_tmpdir(tmp, sizeof tmp, "gen")) return -1;
    char cache[300];
    snprintf(cache, sizeof cache, "%s/cache", tmp);
    setenv("MOEGEN_CACHE_DIR", cache, 1);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    mg_test_rmtree(tmp);
    return 0;
}

static int quick(void) { return getenv("MG_TEST_QUICK") != NULL; }

static void plan_of(const char *path, mg_plan *plan)
{
    mg_spec spec;
    mg_err err;
    mg_err_clear(&err);
    if (mg_spec_load(path, &spec, &err) || mg_plan_make(&spec, NULL, plan, &err)) print_error("%s\n", err.msg);
    assert_int_equal(err.code, MG_OK);
}

static void test_golden_outputs(void **state)
{
    (void)state;
    const char *specs[] = {"tiny", "wt2-moe8"};
    for (int i = 0; i < 2; i++) {
        mg_proc p;
        mg_run(&p, "%s gen specs/%s.lua -o %s/g_%s && diff -r tests/golden/%s %s/g_%s", mg_bin(), specs[i], tmp,
               specs[i], specs[i], tmp, specs[i]);
        if (p.code) print_error("golden mismatch for %s (run `make golden` if the change is intended):\n%.4000s\n",
                                specs[i], p.out);
        assert_int_equal(p.code, 0);
    }
}

static void test_sources_have_constants_and_line_directives(void **state)
{
    (void)state;
    mg_plan plan;
    plan_of("specs/wt2-moe8.lua", &plan);
    mg_genout out;
    mg_err err;
    assert_int_equal(mg_gen_sources(&plan, &out, &err), MG_OK);
    assert_int_equal(out.n_src, MG_FAM_COUNT);
    const char *up = out.src[MG_FAM_UP].text;
    mg_assert_contains(up, "static constexpr int MG_D = 512;");
    mg_assert_contains(up, "static constexpr int MG_E = 8;");
    mg_assert_contains(up, "MG_BM = 128, MG_BN = 128, MG_BK = 32, MG_STAGES = 3");
    mg_assert_contains(up, "#line 1 \"templates/moe_up.cu\"");
    mg_assert_contains(up, "#line 1 \"templates/mg_common.cuh\"");
    mg_assert_contains(up, "Do not edit");
    assert_null(strstr(up, "/*$"));  /* every placeholder filled */
    char sym[192];
    mg_plan_entry_symbol(&plan.fam[MG_FAM_UP], 0, sym, sizeof sym);
    mg_assert_contains(up, sym);
    mg_assert_contains(out.manifest.text, "\"sha256\"");
    mg_assert_contains(out.manifest.text, plan.spec_hash);
    mg_assert_contains(out.header.text, "#define MOE_WT2_MOE8_D 512");
    mg_genout_free(&out);
}

static void test_tile_override_changes_name(void **state)
{
    (void)state;
    mg_spec spec;
    mg_err err;
    assert_int_equal(mg_spec_load("specs/wt2-moe8.lua", &spec, &err), MG_OK);
    mg_tile tiles[MG_FAM_COUNT] = {{0}};
    tiles[MG_FAM_DOWN] = (mg_tile){64, 64, 64, 4, 4};
    mg_plan plan;
    assert_int_equal(mg_plan_make(&spec, tiles, &plan, &err), MG_OK);
    mg_assert_contains(plan.fam[MG_FAM_DOWN].name, "_t64x64x64_s4");
    mg_assert_contains(plan.fam[MG_FAM_UP].name, "_t128x128x32_s3");
}

/* Compiles every family of a spec for one arch without the cache. */
static void nvrtc_spec(const char *path, const char *arch)
{
    mg_plan plan;
    plan_of(path, &plan);
    mg_genout out;
    mg_err err;
    mg_err_clear(&err);
    assert_int_equal(mg_gen_sources(&plan, &out, &err), MG_OK);
    const char *names[MG_FAM_COUNT], *srcs[MG_FAM_COUNT];
    size_t lens[MG_FAM_COUNT];
    for (int i = 0; i < out.n_src; i++) names[i] = plan.fam[i].name, srcs[i] = out.src[i].text, lens[i] = out.src[i].len;
    mg_jit_opts o = {.arch = arch, .no_cache = 1};
    mg_jit_result res[MG_FAM_COUNT];
    memset(res, 0, sizeof res);
    int rc = mg_jit_compile_many(out.n_src, names, srcs, lens, &o, 0, res, &err);
    if (rc) print_error("%s %s: %s\n", path, arch, err.msg);
    assert_int_equal(rc, MG_OK);
    for (int i = 0; i < out.n_src; i++) {
        assert_true(res[i].cubin.size > 0);
        mg_jit_result_free(&res[i]);
    }
    mg_genout_free(&out);
}

static void test_nvrtc_every_spec(void **state)
{
    (void)state;
    DIR *d = opendir("specs");
    assert_non_null(d);
    struct dirent *e;
    int n = 0;
    while ((e = readdir(d))) {
        size_t l = strlen(e->d_name);
        if (l < 5 || strcmp(e->d_name + l - 4, ".lua")) continue;
        char path[300];
        snprintf(path, sizeof path, "specs/%s", e->d_name);
        const char *archs[] = {"sm_90", "sm_80", "sm_90a"};
        for (int a = 0; a < (quick() ? 1 : 3); a++) {
            print_message("nvrtc %s %s\n", path, archs[a]);
            nvrtc_spec(path, archs[a]);
        }
        n++;
        if (quick() && n >= 2) break;
    }
    closedir(d);
    assert_true(n >= 2);
}

static void test_nvcc_compiles_generated_sources(void **state)
{
    (void)state;
    if (quick()) { print_message("skipped under MG_TEST_QUICK: nvcc -c of generated sources\n"); return; }
    const char *specs[] = {"tiny", "wt2-moe8"};
    for (int i = 0; i < 2; i++) {
        mg_proc p;
        mg_run(&p, "%s gen specs/%s.lua -o %s/n_%s && cd %s/n_%s && for f in *.cu; do "
                   "${CUDA_HOME:-/usr/local/cuda}/bin/nvcc -std=c++17 -gencode=arch=compute_90a,code=sm_90a -c $f "
                   "-o /dev/null || exit 1; done",
               mg_bin(), specs[i], tmp, specs[i], tmp, specs[i]);
        if (p.code) print_error("nvcc failed for %s:\n%.4000s\n", specs[i], p.out);
        assert_int_equal(p.code, 0);
    }
}

/* The Hopper GEMM's device knobs off their defaults still compile for sm_90a without spills
 * (the A/B paths kept for bench/dev/s5.sh, and the opt-in CTA pairs): NVRTC through `moegen
 * compile -v`, no GPU. A knob path that stops compiling would otherwise only show on a device. */
static void test_nvrtc_knob_variants(void **state)
{
    (void)state;
    if (quick()) { print_message("skipped under MG_TEST_QUICK: NVRTC of the knob variants\n"); return; }
    const char *envs[] = {
        "MOEGEN_WG_CLUSTER=2",
        "MOEGEN_JIT_DEFINES='-DMG_WG_EPI_SMEM=0 -DMG_WG_EPI_SMEM_UP=0 -DMG_WG_MN_BATCH=1 "
        "-DMG_WG_STORE_CS=0'",
        "MOEGEN_JIT_DEFINES='-DMG_WG_PINGPONG=0 -DMG_WG_BN_UP_FWD=256' "
        "MOEGEN_WG_CLUSTER=2",
        "MOEGEN_JIT_DEFINES='-DMG_WG_BAND=8 -DMG_WG_TMA_GATHER=1'",
        "MOEGEN_JIT_DEFINES='-DMG_WG_EPI_ASYNC_MIN_D=0'",    /* the async down dgrad at d 768 */
        "MOEGEN_JIT_DEFINES='-DMG_WG_EPI_ASYNC_MIN_D=0' MOEGEN_WG_CLUSTER=2",
        "MOEGEN_JIT_DEFINES='-DMG_WG_EPI_ASYNC_MIN_D=0 -DMG_WG_ASYNC_HALF=1'",   /* half-tile dump, 4 stages */
        /* the 3-stage rule at bench-small's K, and other stage caps */
        "MOEGEN_JIT_DEFINES='-DMG_WG_NS3_MIN_K=0 -DMG_WG_NS_UP_FWD=3 -DMG_WG_NS_UP_WGRAD=3 -DMG_WG_NS_DN_WGRAD=2'",
    };
    for (int i = 0; i < (int)(sizeof envs / sizeof envs[0]); i++) {
        mg_proc p;
        /* exit 9: some entry spilled (ptxas -v: "N bytes spill stores" with N > 0) */
        mg_run(&p, "%s %s compile specs/bench-small.lua --arch sm_90a -o %s/knob%d --no-cache -v > %s/knob%d.log 2>&1; "
                   "rc=$?; grep -B2 -E ' [1-9][0-9]* bytes spill stores' %s/knob%d.log && exit 9; "
                   "[ $rc = 0 ] || tail -40 %s/knob%d.log; exit $rc",
               envs[i], mg_bin(), tmp, i, tmp, i, tmp, i, tmp, i);
        if (p.code) print_error("compile under %s: exit %d\n%.4000s\n", envs[i], p.code, p.out);
        assert_int_equal(p.code, 0);
    }
}

/* A bad MOEGEN_JIT_DEFINES: one clear line and exit 1, before any compile (it once aborted
 * in a double free: opts_build freed the option array its caller frees). */
static void test_bad_jit_env_is_one_line(void **state)
{
    (void)state;
    const char *cases[][2] = {
        {"MOEGEN_JIT_DEFINES=bad", "MOEGEN_JIT_DEFINES = 'bad': expected up to 8 -DNAME[=VALUE] words"},
        {"MOEGEN_JIT_DEFINES='-DA -DB -DC -DD -DE -DF -DG -DH -DI'", "expected up to 8 -DNAME[=VALUE] words"},
    };
    for (int i = 0; i < 2; i++) {
        mg_proc p;
        mg_run(&p, "%s %s compile specs/tiny.lua --arch sm_90a -o %s/badenv%d --no-cache", cases[i][0], mg_bin(), tmp, i);
        if (p.code != 1 || !strstr(p.out, cases[i][1])) print_error("%s: exit %d\n%s\n", cases[i][0], p.code, p.out);
        assert_int_equal(p.code, 1);
        assert_non_null(strstr(p.out, cases[i][1]));
    }
}

static void test_template_error_points_at_template_line(void **state)
{
    (void)state;
    /* A compile error inside a template must be reported against templates/<file>:<line>. */
    mg_plan plan;
    plan_of("specs/tiny.lua", &plan);
    mg_genout out;
    mg_err err;
    assert_int_equal(mg_gen_sources(&plan, &out, &err), MG_OK);
    /* Break the last line of the combine template in the generated text. */
    mg_source *s = &out.src[MG_FAM_COMBINE];
    char *bad = malloc(s->len + 64);
    memcpy(bad, s->text, s->len);
    strcpy(bad + s->len, "\nthis_is_not_cuda;\n");
    mg_jit_opts o = {.arch = "sm_80", .no_cache = 1};
    mg_jit_result r;
    memset(&r, 0, sizeof r);
    mg_proc p;
    int saved = dup(2);
    char logpath[300];
    snprintf(logpath, sizeof logpath, "%s/nvrtc.log", tmp);
    FILE *lf = freopen(logpath, "w", stderr);
    (void)lf;
    int rc = mg_jit_compile("broken", bad, strlen(bad), &o, &r, &err);
    fflush(stderr);
    dup2(saved, 2);
    close(saved);
    assert_int_equal(rc, MG_EUSER);
    mg_run(&p, "cat %s", logpath);
    mg_assert_contains(p.out, "templates/moe_combine.cu(");
    mg_jit_result_free(&r);
    free(bad);
    mg_genout_free(&out);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_golden_outputs),
        cmocka_unit_test(test_sources_have_constants_and_line_directives),
        cmocka_unit_test(test_tile_override_changes_name),
        cmocka_unit_test(test_template_error_points_at_template_line),
        cmocka_unit_test(test_bad_jit_env_is_one_line),
        cmocka_unit_test(test_nvrtc_every_spec),
        cmocka_unit_test(test_nvcc_compiles_generated_sources),
        cmocka_unit_test(test_nvrtc_knob_variants),
    };
    return cmocka_run_group_tests_name("gen", tests, setup, teardown);
}
