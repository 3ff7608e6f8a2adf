// Small helpers shared by the test binaries: tolerance checks that count passes and
// failures, and the closing line "N passed, M failed" that CI reads.
#pragma once
#include "../model/common.h"

static int tests_passed = 0, tests_failed = 0;
static int tests_quiet_ok = 0; // print only failures (other MPI ranks than the reporting one)

// max |a - b| over n, and whether every element satisfies |a - b| <= atol + rtol * |b|
template <typename TA, typename TB>
static int allclose_report(const char* what, const TA* a, const TB* b, long n, double atol, double rtol) {
    double max_err = 0.0, max_ref = 0.0;
    long worst = -1;
    int ok = 1;
    for (long i = 0; i < n; i++) {
        double x = (double)a[i], y = (double)b[i];
        double err = fabs(x - y);
        if (!(err <= atol + rtol * fabs(y))) { // also catches NaN
            if (ok || err > max_err) worst = i;
            ok = 0;
        }
        if (err > max_err || err != err) max_err = err;
        if (fabs(y) > max_ref) max_ref = fabs(y);
    }
    if (ok) {
        tests_passed++;
        if (!tests_quiet_ok) printf("ok    %-60s max err %.3e (max |ref| %.3e, n %ld)\n", what, max_err, max_ref, n);
    } else {
        tests_failed++;
        printf("FAIL  %-60s max err %.3e at %ld: got %.9g want %.9g (atol %.1e rtol %.1e)\n", what, max_err, worst,
               (double)a[worst], (double)b[worst], atol, rtol);
    }
    return ok;
}

static void check_true(const char* what, int cond) {
    if (cond) {
        tests_passed++;
        if (!tests_quiet_ok) printf("ok    %s\n", what);
    } else {
        tests_failed++;
        printf("FAIL  %s\n", what);
    }
}

static int tests_finish(void) {
    printf("%d passed, %d failed\n", tests_passed, tests_failed);
    return tests_failed == 0 ? 0 : 1;
}
