/* mg_test: what every cmocka suite includes, in the order cmocka needs. */
#ifndef MG_TEST_H
#define MG_TEST_H
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <string.h>

/* Asserts that haystack contains needle, printing both when it does not. */
#define mg_assert_contains(hay, needle) do { \
        const char *h_ = (hay), *n_ = (needle); \
        if (!h_ || !strstr(h_, n_)) { \
            print_error("expected \"%s\" in \"%s\"\n", n_, h_ ? h_ : "(null)"); \
            fail(); } } while (0)
#endif
