/* test_bundle: `moegen gen --bundle` output builds and runs without moegen: the C API header
 * compiles as C99, C11 and C++17 (pedantic), the loader compiles alone, exports only its API
 * and links with libcudart only; two bundles link into one program; the three examples build
 * and run (printing "skipped: no CUDA device" without a GPU); `make install` into a temp
 * prefix gives a working pkg-config setup. Runs from the repository root. */
#include "mg_test.h"
#include "mg_testproc.h"

#include <stdlib.h>
#include <unistd.h>

static char tmp[256];     /* scratch dir, removed at the end */
static char build[256];   /* the build dir of the moegen under test (dirname of $MOEGEN) */
static char root[1024];   /* the repository root (cwd) */
static char bin[1280];    /* $MOEGEN, absolute */
static const char *cuda(void) { return getenv("CUDA_HOME") ? getenv("CUDA_HOME") : "/usr/local/cuda"; }

static int setup(void **state)
{
    (void)state;
    snprintf(tmp, sizeof tmp, "/tmp/moegen-test-bundle-XXXXXX");
    if (!mkdtemp(tmp)) return -1;
    snprintf(build, sizeof build, "%s", mg_bin());
    char *slash = strrchr(build, '/');
    if (slash) *slash = 0;
    else snprintf(build, sizeof build, ".");
    if (!getcwd(root, sizeof root)) return -1;
    if (mg_bin()[0] == '/') snprintf(bin, sizeof bin, "%s", mg_bin());
    else snprintf(bin, sizeof bin, "%s/%s", root, mg_bin());
    mg_proc p;
    mg_run(&p, "%s gen specs/tiny.lua --bundle -o %s/moe_tiny", bin, tmp);
    if (p.code) { print_error("%s\n", p.out); return -1; }
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    mg_proc p;
    if (tmp[0]) mg_run(&p, "rm -rf %s", tmp);
    return 0;
}

#define RUN_OK(p, ...) do { mg_run((p), __VA_ARGS__); \
        if ((p)->code) { print_error("exit %d:\n%s\n", (p)->code, (p)->out); fail(); } } while (0)

static void test_bundle_files(void **state)
{
    (void)state;
    mg_proc p;
    RUN_OK(&p, "cd %s/moe_tiny && ls moe_tiny.h moe_tiny.c moe_tiny_blob.c moe_tiny.mk CMakeLists.txt mg_launch.c "
               "mg_launch.h moe_params.h moe_tiny_kernels.h manifest.json && ls *.sm_80.cubin *.sm_90a.cubin "
               "*.compute_80.ptx | wc -l", tmp);
    mg_assert_contains(p.out, "15");
    /* the launch sequence is runtime/mg_launch.c verbatim: one code path for moegen and bundles */
    RUN_OK(&p, "cmp runtime/mg_launch.c %s/moe_tiny/mg_launch.c && cmp runtime/mg_launch.h %s/moe_tiny/mg_launch.h",
           tmp, tmp);
    RUN_OK(&p, "grep -c 'static const unsigned long long' %s/moe_tiny/moe_tiny_blob.c", tmp);
    assert_string_equal(p.out, "15\n");
}

static void test_header_pedantic(void **state)
{
    (void)state;
    mg_proc p;
    RUN_OK(&p, "cd %s && printf '#include \"moe_tiny.h\"\\nint main(void) { moe_tiny *l = 0; "
               "return (int)moe_tiny_workspace_size(l, 0); }\\n' > h.c && cp h.c h.cpp && "
               "for s in c99 c11; do cc -std=$s -pedantic -Wall -Wextra -Werror -Imoe_tiny -c h.c -o h_$s.o || exit 1; "
               "done && c++ -std=c++17 -pedantic -Wall -Wextra -Werror -Imoe_tiny -c h.cpp -o h_cxx.o", tmp);
}

static void test_loader_alone(void **state)
{
    (void)state;
    mg_proc p;
    RUN_OK(&p, "cd %s && cc -std=c11 -pedantic -Wall -Wextra -Werror -O1 -I%s/include -c moe_tiny/moe_tiny.c "
               "-o loader.o && nm -g --defined-only loader.o | awk '{print $3}' | sort | tr '\\n' ' '", tmp, cuda());
    /* only the API is exported: several bundles and libmoegen link into one program */
    assert_string_equal(p.out, "moe_tiny_backward moe_tiny_create moe_tiny_destroy moe_tiny_forward moe_tiny_image "
                               "moe_tiny_last_error moe_tiny_losses moe_tiny_strerror moe_tiny_workspace_size ");
    RUN_OK(&p, "cd %s && cc -Imoe_tiny h.c loader.o -o h -L%s/lib64 -lcudart -lm && ldd h | grep -E 'nvrtc|lua|moegen|libcuda[.]' "
               "| wc -l", tmp, cuda());
    assert_string_equal(p.out, "0\n");
}

static void test_cli_errors(void **state)
{
    (void)state;
    mg_proc p;
    mg_run(&p, "%s gen specs/tiny.lua --bundle --arch sm_80,sm_70 -o %s/bad", mg_bin(), tmp);
    assert_int_equal(p.code, 1);
    mg_assert_contains(p.out, "'sm_70' is not a real arch >= sm_80");
    mg_run(&p, "%s compile specs/tiny.lua --arch sm_80,sm_90a -o %s/bad", mg_bin(), tmp);
    assert_int_equal(p.code, 1);
    mg_assert_contains(p.out, "a list needs gen --bundle");
    mg_run(&p, "test -e %s/bad", tmp);
    assert_int_not_equal(p.code, 0);   /* nothing written on failure */
}

static void test_two_bundles_link(void **state)
{
    (void)state;
    mg_proc p;
    RUN_OK(&p, "%s gen specs/switch-cf125.lua --bundle --arch sm_80 -o %s/moe_sw", mg_bin(), tmp);
    RUN_OK(&p, "cd %s && ls moe_sw/*.c | grep -v blob | grep -v mg_launch", tmp);
    char loader[256];
    sscanf(p.out, "%255s", loader);
    RUN_OK(&p, "cd %s && cc -std=c11 -O0 -I%s/include -c %s -o sw.o && cc h.c loader.o sw.o -Imoe_tiny -o two "
               "-L%s/lib64 -lcudart -lm", tmp, cuda(), loader, cuda());
}

/* Under `make test-asan` the examples inherit SAN and CFLAGS through MAKEFLAGS. */
static void test_examples(void **state)
{
    (void)state;
    mg_proc p;
    RUN_OK(&p, "make -s -C examples/embed-c MOEGEN_SRC=%s MOEGEN=%s O=%s/embed 2>&1 && %s/embed/embed-c", root, bin, tmp,
           tmp);
    assert_true(strstr(p.out, "skipped: no CUDA device") || strstr(p.out, "embed-c: PASS"));
    RUN_OK(&p, "make -s -C examples/cpp MOEGEN_SRC=%s MOEGEN=%s O=%s/cpp 2>&1 && %s/cpp/moe-cpp", root, bin, tmp, tmp);
    assert_true(strstr(p.out, "skipped: no CUDA device") || strstr(p.out, "moe-cpp: image"));
}

static void test_cmake(void **state)
{
    (void)state;
    mg_proc p;
    mg_run(&p, "command -v cmake");
    if (p.code) { print_message("cmake not found: skipped\n"); return; }
    RUN_OK(&p, "cd %s && mkdir -p cm && printf 'cmake_minimum_required(VERSION 3.18)\\nproject(app C)\\n"
               "add_subdirectory(%s/moe_tiny moe_tiny)\\nadd_executable(app %s/h.c)\\n"
               "target_link_libraries(app PRIVATE moe_tiny)\\n' > cm/CMakeLists.txt && "
               "cmake -S cm -B cm/b -DCUDAToolkit_ROOT=%s > /dev/null && cmake --build cm/b > /dev/null", tmp, tmp, tmp,
           cuda());
}

static void test_install_pkgconfig(void **state)
{
    (void)state;
    mg_proc p;
    RUN_OK(&p, "make -s install BUILD=%s PREFIX=%s/prefix > /dev/null", build, tmp);
    RUN_OK(&p, "cd %s/prefix && ls bin/moegen lib/libmoegen.a lib/libmoegen.so lib/libmoegen.so.0 "
               "include/moegen/moegen.h include/moegen/mg_moe.h include/moegen/mg_launch.h include/moegen/moe_params.h "
               "lib/pkgconfig/moegen.pc && readelf -d lib/libmoegen.so.0 | grep SONAME", tmp);
    mg_assert_contains(p.out, "libmoegen.so.0");
    RUN_OK(&p, "PKG_CONFIG_PATH=%s/prefix/lib/pkgconfig pkg-config --cflags --libs moegen", tmp);
    mg_assert_contains(p.out, "-lmoegen");
    RUN_OK(&p, "PKG_CONFIG_PATH=%s/prefix/lib/pkgconfig make -s -C examples/pkgconfig O=%s/pc 2>&1 && "
               "%s/pc/moe-runtime specs/tiny.lua", tmp, tmp, tmp);
    mg_assert_contains(p.out, "moe-runtime: moegen");
    assert_true(strstr(p.out, "skipped: no CUDA device") || strstr(p.out, "PASS"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_bundle_files),
        cmocka_unit_test(test_header_pedantic),
        cmocka_unit_test(test_loader_alone),
        cmocka_unit_test(test_cli_errors),
        cmocka_unit_test(test_two_bundles_link),
        cmocka_unit_test(test_examples),
        cmocka_unit_test(test_cmake),
        cmocka_unit_test(test_install_pkgconfig),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
