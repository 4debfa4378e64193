/* test_cli: every CLI error path prints its one-line message, exits 1 and writes nothing. */
#include "mg_test.h"
#include "mg_testproc.h"

#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

static char tmp[256];

static int setup(void **state)
{
    (void)state;
    if (mg_test_tmpdir(tmp, sizeof tmp, "cli")) return -1;
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

static void write_spec(const char *name, const char *body)
{
    char path[400];
    snprintf(path, sizeof path, "%s/%s", tmp, name);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(body, f);
    fclose(f);
}

static int exists(const char *fmt, const char *a)
{
    char path[600];
    snprintf(path, sizeof path, fmt, tmp, a);
    struct stat st;
    return stat(path, &st) == 0;
}

#define BAD_TOPK "return { name = 'bad', model = { vocab = 64, d_model = 64, n_layer = 1, n_head = 4, seq_len = 16 },\n" \
                 "  moe = { experts = 8, top_k = 9, d_ff = 64 } }\n"

static void test_no_args_prints_usage(void **state)
{
    (void)state;
    mg_proc p;
    mg_run(&p, "%s", mg_bin());
    assert_int_equal(p.code, 1);
    mg_assert_contains(p.out, "usage: moegen <verb>");
}

static void test_help_and_version(void **state)
{
    (void)state;
    mg_proc p;
    mg_run(&p, "%s --help", mg_bin());
    assert_int_equal(p.code, 0);
    mg_assert_contains(p.out, "verbs:");
    mg_run(&p, "%s compile --help", mg_bin());
    assert_int_equal(p.code, 0);
    mg_assert_contains(p.out, "usage: moegen compile SPEC");
    mg_run(&p, "%s --version", mg_bin());
    assert_int_equal(p.code, 0);
    mg_assert_contains(p.out, "moegen ");
    mg_assert_contains(p.out, "NVRTC 13.");
}

static void test_unknown_verb_and_option(void **state)
{
    (void)state;
    mg_proc p;
    mg_run(&p, "%s frobnicate", mg_bin());
    assert_int_equal(p.code, 1);
    mg_assert_contains(p.out, "moegen: unknown verb 'frobnicate' (allowed: check, gen, compile, selftest, cache, devices");
    mg_run(&p, "%s check --fast specs/tiny.lua", mg_bin());
    assert_int_equal(p.code, 1);
    mg_assert_contains(p.out, "moegen: check: unknown option '--fast' (see moegen check --help)");
    mg_run(&p, "%s check", mg_bin());
    assert_int_equal(p.code, 1);
    mg_assert_contains(p.out, "moegen: check: missing spec file");
}

static void test_bad_option_values(void **state)
{
    (void)state;
    mg_proc p;
    mg_run(&p, "%s compile specs/tiny.lua --arch sm_70", mg_bin());
    assert_int_equal(p.code, 1);
    mg_assert_contains(p.out, "moegen: --arch = 'sm_70': must be one of sm_90a, sm_90, sm_80");
    mg_run(&p, "%s compile specs/tiny.lua --jobs 0", mg_bin());
    assert_int_equal(p.code, 1);
    mg_assert_contains(p.out, "moegen: --jobs = '0': must be an integer in [1, 256]");
    mg_run(&p, "%s compile specs/tiny.lua -o", mg_bin());
    assert_int_equal(p.code, 1);
    mg_assert_contains(p.out, "moegen: -o needs a value");
    mg_run(&p, "%s cache frob", mg_bin());
    assert_int_equal(p.code, 1);
    mg_assert_contains(p.out, "moegen: cache: unknown subcommand 'frob' (allowed: ls, clear)");
}

static void test_missing_spec_file(void **state)
{
    (void)state;
    mg_proc p;
    mg_run(&p, "%s check %s/nope.lua", mg_bin(), tmp);
    assert_int_equal(p.code, 1);
    mg_assert_contains(p.out, "nope.lua");
    /* one line, naming the file */
    assert_true(strchr(p.out, '\n') == p.out + strlen(p.out) - 1);
}

static void test_bad_spec_fails_every_verb_and_writes_nothing(void **state)
{
    (void)state;
    write_spec("bad.lua", BAD_TOPK);
    const char *verbs[] = {"check", "gen", "compile", ""};
    for (size_t i = 0; i < sizeof verbs / sizeof *verbs; i++) {
        mg_proc p;
        mg_run(&p, "cd %s && %s/%s %s bad.lua -o gen_out", tmp, getenv("PWD"), mg_bin(), verbs[i]);
        if (p.code != 1) print_error("verb '%s' gave %d: %s\n", verbs[i], p.code, p.out);
        assert_int_equal(p.code, 1);
        mg_assert_contains(p.out, "moegen: bad.lua: moe.top_k = 9: must be in [1, moe.experts = 8]");
        assert_false(exists("%s/%s", "gen_out"));
        assert_false(exists("%s/%s", "out"));
    }
}

static void test_unwritable_output_dir(void **state)
{
    (void)state;
    mg_proc p;
    mg_run(&p, "%s gen specs/tiny.lua -o /proc/moegen_cannot/x", mg_bin());
    assert_int_equal(p.code, 1);
    mg_assert_contains(p.out, "moegen: /proc/moegen_cannot");
}

static void test_check_prints_plan(void **state)
{
    (void)state;
    mg_proc p;
    mg_run(&p, "%s check specs/wt2-moe8.lua", mg_bin());
    assert_int_equal(p.code, 0);
    mg_assert_contains(p.out, "params active per token");
    mg_assert_contains(p.out, "moe_up_swiglu_bf16_e8_k2_d512_f1024_t128x128x32_s3");
    mg_assert_contains(p.out, "moe_router_softmax_topk_rn_bf16_e8_k2_d512");
}

static void test_gen_is_deterministic_and_replaces_whole(void **state)
{
    (void)state;
    mg_proc p;
    mg_run(&p, "%s gen specs/tiny.lua -o %s/a && %s gen specs/tiny.lua -o %s/b && diff -r %s/a %s/b", mg_bin(), tmp,
           mg_bin(), tmp, tmp, tmp);
    if (p.code) print_error("%s\n", p.out);
    assert_int_equal(p.code, 0);
    /* A stale file in the target dir is gone after a regeneration: the dir is replaced whole. */
    mg_run(&p, "touch %s/a/stale.cu && %s gen specs/tiny.lua -o %s/a && test ! -e %s/a/stale.cu", tmp, mg_bin(), tmp,
           tmp);
    assert_int_equal(p.code, 0);
    mg_run(&p, "ls %s | grep -c tmp", tmp);
    assert_string_equal(p.out, "0\n");
}

static void test_compile_then_cached(void **state)
{
    (void)state;
    mg_proc p;
    mg_run(&p, "%s compile specs/tiny.lua -o %s/c --arch sm_80", mg_bin(), tmp);
    if (p.code) print_error("%s\n", p.out);
    assert_int_equal(p.code, 0);
    mg_run(&p, "%s compile specs/tiny.lua -o %s/c --arch sm_80", mg_bin(), tmp);
    assert_int_equal(p.code, 0);
    mg_assert_contains(p.out, "(13 cached)");   /* 5 MoE + 8 decoder-LM families */
    mg_run(&p, "ls %s/c/*.sm_80.cubin | wc -l", tmp);
    assert_string_equal(p.out, "13\n");
    mg_run(&p, "%s cache ls", mg_bin());
    assert_int_equal(p.code, 0);
    mg_assert_contains(p.out, "entries in");
    mg_run(&p, "%s cache clear", mg_bin());
    assert_int_equal(p.code, 0);
    mg_assert_contains(p.out, "removed 13 entries");
}

static void test_selftest_runs_cpu_part(void **state)
{
    (void)state;
    /* The CPU reference checks always run; without a GPU the GPU part says so and passes. */
    mg_proc p;
    mg_run(&p, "%s selftest specs/tiny.lua --seed 7", mg_bin());
    if (p.code) print_error("%s\n", p.out);
    assert_int_equal(p.code, 0);
    mg_assert_contains(p.out, "cpu gradcheck");
    mg_assert_contains(p.out, "PASS");
    mg_run(&p, "%s devices", mg_bin());
    if (p.code) mg_assert_contains(p.out, "no CUDA device");
    mg_run(&p, "%s selftest specs/tiny.lua --seed 7", mg_bin());
    if (strstr(p.out, "no CUDA device")) mg_assert_contains(p.out, "skipped: no CUDA device");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_no_args_prints_usage),
        cmocka_unit_test(test_help_and_version),
        cmocka_unit_test(test_unknown_verb_and_option),
        cmocka_unit_test(test_bad_option_values),
        cmocka_unit_test(test_missing_spec_file),
        cmocka_unit_test(test_bad_spec_fails_every_verb_and_writes_nothing),
        cmocka_unit_test(test_unwritable_output_dir),
        cmocka_unit_test(test_check_prints_plan),
        cmocka_unit_test(test_gen_is_deterministic_and_replaces_whole),
        cmocka_unit_test(test_compile_then_cached),
        cmocka_unit_test(test_selftest_runs_cpu_part),
    };
    return cmocka_run_group_tests_name("cli", tests, setup, teardown);
}
