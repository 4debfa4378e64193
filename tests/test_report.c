/* test_report: report, watch and analyze on a tiny run of specs/ci-cpu.lua trained here:
 * watch --once prints progress, sparkline and load bars; analyze writes consistent JSON;
 * the report is self-contained and, opened in headless Chromium (skipped without it), has no
 * script errors, marks in every chart and a non-blank screenshot. */
#include "mg_test.h"
#include "mg_testproc.h"

#include <jansson.h>
#include <math.h>
#include <stdlib.h>
#include <sys/stat.h>

static char tmp[256];
static int have_run;

static int have_data(void)
{
    const char *env = getenv("MOEGEN_DATA_DIR");
    char p[1100];
    struct stat sb;
    snprintf(p, sizeof p, "%s/tinyshakespeare/input.txt", env && *env ? env : "../shared/data");
    return !stat(p, &sb);
}

static const char *data_file(void)
{
    static char p[1100];
    const char *env = getenv("MOEGEN_DATA_DIR");
    snprintf(p, sizeof p, "%s/tinyshakespeare/input.txt", env && *env ? env : "../shared/data");
    return p;
}

/* Two short runs of ci-cpu (6 and 4 steps; evaluation at the last step writes a checkpoint). */
static int setup(void **state)
{
    (void)state;
    if (mg_test_tmpdir(tmp, sizeof tmp, "report")) return -1;
    if (!have_data()) return 0;
    mg_proc p;
    mg_run(&p, "%s train specs/ci-cpu.lua --steps 6 --run-dir %s/a -q && %s train specs/ci-cpu.lua --steps 4 "
           "--run-dir %s/b -q", mg_bin(), tmp, mg_bin(), tmp);
    if (p.code) {
        fprintf(stderr, "%s\n", p.out);
        return -1;
    }
    have_run = 1;
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    mg_test_rmtree(tmp);
    return 0;
}

static int need_run(void)
{
    if (!have_run) print_message("skipped: no tinyshakespeare/input.txt (set MOEGEN_DATA_DIR)\n");
    return have_run;
}

static void test_watch_once(void **state)
{
    (void)state;
    if (!need_run()) return;
    mg_proc p;
    mg_run(&p, "%s watch %s/a --once", mg_bin(), tmp);
    assert_int_equal(p.code, 0);
    mg_assert_contains(p.out, "step 6/300 [");
    mg_assert_contains(p.out, "% | loss ");
    mg_assert_contains(p.out, "loss \xe2\x96");          /* a sparkline block */
    mg_assert_contains(p.out, "(last 6 steps)");
    mg_assert_contains(p.out, "layer 1  load CV ");
    mg_assert_contains(p.out, "  e3 ");
    assert_null(strstr(p.out, "\033["));                 /* --once: no terminal control codes */
    mg_run(&p, "%s watch %s/nope --once", mg_bin(), tmp);
    assert_int_equal(p.code, 1);
    mg_assert_contains(p.out, "metrics.jsonl: cannot open");
}

static void test_analyze(void **state)
{
    (void)state;
    if (!need_run()) return;
    mg_proc p;
    mg_run(&p, "%s analyze %s/a --data %s --tokens 4096 -o %s/a/analysis.json --html %s/an.html", mg_bin(), tmp,
           data_file(), tmp, tmp);
    if (p.code) print_error("%s\n", p.out);
    assert_int_equal(p.code, 0);
    char path[400];
    snprintf(path, sizeof path, "%s/a/analysis.json", tmp);
    json_error_t je;
    json_t *a = json_load_file(path, 0, &je);
    assert_non_null(a);
    assert_int_equal(json_integer_value(json_object_get(a, "tokens")), 4096);
    json_t *L = json_array_get(json_object_get(a, "layers"), 0);
    assert_int_equal(json_integer_value(json_object_get(L, "layer")), 1);
    json_t *ex = json_object_get(L, "experts");
    assert_int_equal(json_array_size(ex), 4);
    double sum = 0;
    int with_top = 0;
    for (size_t e = 0; e < 4; e++) {
        json_t *x = json_array_get(ex, e), *top = json_object_get(x, "top_tokens");
        sum += json_real_value(json_object_get(x, "share"));
        if (json_array_size(top)) {
            with_top++;
            json_t *t0 = json_array_get(top, 0);
            double pr = json_real_value(json_object_get(t0, "p"));
            assert_true(pr > 0 && pr <= 1);
            assert_true(json_integer_value(json_object_get(t0, "freq")) >= 5);
            assert_non_null(json_string_value(json_object_get(t0, "text")));
        }
    }
    assert_true(fabs(sum - 1) < 1e-4);
    assert_true(with_top >= 2);                          /* top-2: at least two experts see traffic */
    assert_int_equal(json_array_size(json_object_get(a, "consistency")), 0);   /* one MoE layer */
    json_decref(a);
    mg_run(&p, "grep -c 'class=\"chart\"' %s/an.html", tmp);
    assert_true(atoi(p.out) >= 1);
    mg_run(&p, "%s analyze %s/a", mg_bin(), tmp);
    assert_int_equal(p.code, 1);
    mg_assert_contains(p.out, "missing --data FILE");
}

static void test_report_chromium(void **state)
{
    (void)state;
    if (!need_run()) return;
    mg_proc p;
    char html[400];
    snprintf(html, sizeof html, "%s/report.html", tmp);
    mg_run(&p, "%s report %s/a %s/b -o %s", mg_bin(), tmp, tmp, html);
    if (p.code) print_error("%s\n", p.out);
    assert_int_equal(p.code, 0);
    mg_assert_contains(p.out, "report: 2 runs");
    /* self-contained: no external scripts, styles, images or fonts */
    mg_run(&p, "grep -Eci '(src|href)=\"?(https?:)?//|@import|url\\(' %s", html);
    assert_int_equal(atoi(p.out), 0);
    mg_run(&p, "grep -c '<svg class=\"chart\"' %s; grep -c 'Expert specialization' %s", html, html);
    mg_assert_contains(p.out, "1\n");                    /* the analysis section of run a (if analyze ran first) */

    mg_run(&p, "command -v chromium || command -v chromium-browser");
    if (p.code) {
        print_message("skipped: no chromium (apt-get install chromium) to open the report in\n");
        return;
    }
    char bin[256];
    snprintf(bin, sizeof bin, "%.255s", p.out);
    bin[strcspn(bin, "\n")] = 0;
    const char *flags = "--headless --no-sandbox --disable-gpu --hide-scrollbars --no-first-run "
                        "--disable-dev-shm-usage --user-data-dir=";
    mg_run(&p, "%s %s%s/chr --dump-dom file://%s 2>/dev/null | grep -o '<body[^>]*>\\|data-errors=\"[^\"]*\"'", bin,
           flags, tmp, html);
    print_message("chromium: %s", p.out);
    assert_null(strstr(p.out, "data-errors"));
    int charts = -1, drawn = -2;
    const char *c = strstr(p.out, "data-charts=\""), *d = strstr(p.out, "data-drawn=\"");
    assert_non_null(c);
    assert_non_null(d);
    charts = atoi(c + 13), drawn = atoi(d + 12);
    assert_true(charts >= 6);                            /* loss, val, CV, drops, 2 runs x (load, coact), traffic */
    assert_int_equal(drawn, charts);
    mg_run(&p, "%s %s%s/chr --window-size=1200,1800 --screenshot=%s/shot.png file://%s >/dev/null 2>&1; "
           "python3 tests/png_colors.py %s/shot.png", bin, flags, tmp, tmp, html, tmp);
    print_message("screenshot colors: %s", p.out);
    assert_int_equal(p.code, 0);
    assert_true(atoi(p.out) > 1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_watch_once),
        cmocka_unit_test(test_analyze),
        cmocka_unit_test(test_report_chromium),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
