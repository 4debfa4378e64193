/* test_tmpl: placeholder filling and template directives. */
#include "mg_test.h"
#include "mg_sb.h"
#include "mg_tmpl.h"

#include <stdlib.h>

static int fill(const char *text, const mg_tmpl_var *v, int n, char **out, mg_err *err)
{
    mg_sb sb;
    mg_sb_init(&sb);
    mg_err_clear(err);
    int rc = mg_tmpl_fill("t.cu", text, strlen(text), v, n, &sb, err);
    *out = mg_sb_take(&sb);
    return rc;
}

static void test_fill_replaces_placeholder_and_default(void **state)
{
    (void)state;
    mg_tmpl_var v[] = {{"fwd", "moe_up_x_fwd"}, {"bwd", "moe_up_x_bwd"}};
    char *out;
    mg_err err;
    const char *t = "extern \"C\" __global__ void /*$fwd*/k_fwd(int a) {}\nvoid /*$bwd*/k_bwd();\n";
    assert_int_equal(fill(t, v, 2, &out, &err), MG_OK);
    assert_string_equal(out, "extern \"C\" __global__ void moe_up_x_fwd(int a) {}\nvoid moe_up_x_bwd();\n");
    free(out);
}

static void test_unknown_placeholder_names_line(void **state)
{
    (void)state;
    mg_tmpl_var v[] = {{"fwd", "a"}};
    char *out;
    mg_err err;
    assert_int_equal(fill("x\ny\nvoid /*$fwd*/f(); void /*$bogus*/g();\n", v, 1, &out, &err), MG_EUSER);
    assert_string_equal(err.msg, "templates/t.cu:3: unknown placeholder '$bogus' (known: fwd)");
    free(out);
}

static void test_unused_placeholder_is_error(void **state)
{
    (void)state;
    mg_tmpl_var v[] = {{"fwd", "a"}, {"wgrad", "b"}};
    char *out;
    mg_err err;
    assert_int_equal(fill("void /*$fwd*/f();\n", v, 2, &out, &err), MG_EUSER);
    assert_string_equal(err.msg, "templates/t.cu: placeholder '$wgrad' is never used");
    free(out);
}

static void test_malformed_placeholders(void **state)
{
    (void)state;
    mg_tmpl_var v[] = {{"fwd", "a"}};
    char *out;
    mg_err err;
    assert_int_equal(fill("/*$fwd*/ f();\n", v, 1, &out, &err), MG_EUSER);
    mg_assert_contains(err.msg, "templates/t.cu:1: placeholder '$fwd' must be followed by an identifier");
    free(out);
    assert_int_equal(fill("\n/*$ fwd*/f();\n", v, 1, &out, &err), MG_EUSER);
    mg_assert_contains(err.msg, "templates/t.cu:2: malformed placeholder");
    free(out);
    assert_int_equal(fill("/*$fwd", v, 1, &out, &err), MG_EUSER);
    free(out);
}

static void test_fill_keeps_line_count(void **state)
{
    (void)state;
    /* #line directives point compiler errors at template lines: filling must not add lines. */
    mg_tmpl_var v[] = {{"fwd", "a_much_longer_symbol_name_fwd"}};
    char *out;
    mg_err err;
    const char *t = "a\nb /*$fwd*/f c\nd\n";
    assert_int_equal(fill(t, v, 1, &out, &err), MG_OK);
    int lines = 0;
    for (char *p = out; *p; p++) lines += *p == '\n';
    assert_int_equal(lines, 3);
    free(out);
}

static void test_directive_entries(void **state)
{
    (void)state;
    char w[8][32];
    mg_err err;
    const char *t = "// x\n// moegen:entries fwd  dgrad wgrad\nint x;\n";
    assert_int_equal(mg_tmpl_directive("t.cu", t, strlen(t), "entries", w, 8, &err), 3);
    assert_string_equal(w[0], "fwd");
    assert_string_equal(w[2], "wgrad");
    assert_int_equal(mg_tmpl_directive("t.cu", t, strlen(t), "other", w, 8, &err), 0);
    const char *bad = "// moegen:entries Fwd\n";
    assert_int_equal(mg_tmpl_directive("t.cu", bad, strlen(bad), "entries", w, 8, &err), -1);
    mg_assert_contains(err.msg, "must match [a-z0-9_]+");
    const char *many = "// moegen:entries a b c\n";
    assert_int_equal(mg_tmpl_directive("t.cu", many, strlen(many), "entries", w, 2, &err), -1);
}

static void test_every_embedded_family_template_is_present(void **state)
{
    (void)state;
    const char *names[] = {"moe_router.cu", "moe_dispatch.cu", "moe_up.cu", "moe_down.cu", "moe_combine.cu",
                           "moe_params.h", "mg_common.cuh"};
    for (size_t i = 0; i < sizeof names / sizeof *names; i++) {
        size_t len = 0;
        const char *t = mg_tmpl_get(names[i], &len);
        if (!t) print_error("template %s not embedded\n", names[i]);
        assert_non_null(t);
        assert_true(len > 0);
    }
    assert_null(mg_tmpl_get("nope.cu", NULL));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fill_replaces_placeholder_and_default),
        cmocka_unit_test(test_unknown_placeholder_names_line),
        cmocka_unit_test(test_unused_placeholder_is_error),
        cmocka_unit_test(test_malformed_placeholders),
        cmocka_unit_test(test_fill_keeps_line_count),
        cmocka_unit_test(test_directive_entries),
        cmocka_unit_test(test_every_embedded_family_template_is_present),
    };
    return cmocka_run_group_tests_name("tmpl", tests, NULL, NULL);
}
