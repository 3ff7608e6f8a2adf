// The training step's GEMMs, one library against another (issue 9, item 2): OpenBLAS (the build's
// cblas, OpenMP), oneDNN's dnnl_sgemm (Debian's libdnnl, OpenMP runtime, row-major C API) and
// libxsmm (Debian's libxsmm 1.17: libxsmm_sgemm_omp, its OpenMP front end, column-major, so a
// row-major product is called with the operands swapped). Shapes as model/ops_cpu.h calls them:
//   forward   C(M, out) += A(M, in) W(out, in)^T   (beta 1 on a bias-filled C)
//   dinp      D(M, in)   = G(M, out) W(out, in)    (beta 0)
//   dweight   dW(out, in) += G^T(out, M) A(M, in)  (beta 1, K = M)
// for every (M, in, out) of one default step (32 tables x 150 rows x 5 features, E 96, H 192,
// 3 layers, the last one pruned), each with how often the step runs it, so that the last lines
// give the step's GEMM time per library. Every library's result is checked against OpenBLAS's
// (|diff| <= 1e-4 relative to the largest |C|); a mismatch exits 1. JSON lines on stdout.
//   build/bench_gemm [--reps 5]      (OMP_NUM_THREADS sets the threads)
#include <cblas.h>
#include <dnnl.h>
#include <libxsmm.h>
#include <omp.h>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

typedef struct {
    long M;
    int in, out;
    int count; // per training step
    const char* what;
} Shape;

enum { KIND_FORWARD, KIND_DINP, KIND_DWEIGHT, NUM_KINDS };
static const char* kind_names[NUM_KINDS] = {"forward", "dinp", "dweight"};
enum { LIB_OPENBLAS, LIB_DNNL, LIB_XSMM, NUM_LIBS };
static const char* lib_names[NUM_LIBS] = {"openblas", "onednn", "libxsmm"};

// row-major C(m, n) = alpha op(A) op(B) + beta C through library lib
static void gemm(int lib, bool ta, bool tb, int m, int n, int k, const float* a, int lda, const float* b, int ldb,
                 float beta, float* c, int ldc) {
    const float alpha = 1.0f;
    if (lib == LIB_OPENBLAS) {
        cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, m, n, k, alpha, a,
                    lda, b, ldb, beta, c, ldc);
    } else if (lib == LIB_DNNL) {
        if (dnnl_sgemm(ta ? 'T' : 'N', tb ? 'T' : 'N', m, n, k, alpha, a, lda, b, ldb, beta, c, ldc) != dnnl_success) {
            fprintf(stderr, "bench_gemm: dnnl_sgemm failed\n");
            exit(1);
        }
    } else { // column-major: C^T = op(B)^T op(A)^T
        const char tra = tb ? 'T' : 'N', trb = ta ? 'T' : 'N';
        const libxsmm_blasint M = n, N = m, K = k, LDA = ldb, LDB = lda, LDC = ldc;
        libxsmm_sgemm_omp(&tra, &trb, &M, &N, &K, &alpha, b, &LDA, a, &LDB, &beta, c, &LDC);
    }
}

static void run(int lib, int kind, const Shape& s, const float* act, const float* w, const float* g, float* out) {
    const int M = (int)s.M;
    switch (kind) {
        case KIND_FORWARD: gemm(lib, false, true, M, s.out, s.in, act, s.in, w, s.in, 1.0f, out, s.out); break;
        case KIND_DINP: gemm(lib, false, false, M, s.in, s.out, g, s.out, w, s.in, 0.0f, out, s.in); break;
        default: gemm(lib, true, false, s.out, s.in, M, g, s.out, act, s.in, 1.0f, out, s.in); break;
    }
}

int main(int argc, char** argv) {
    int reps = 5;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--reps") && i + 1 < argc) reps = atoi(argv[++i]);
        else {
            fprintf(stderr, "usage: %s [--reps N]\n", argv[0]);
            return 2;
        }
    }
    libxsmm_init();
    const long N = 32L * 150 * 6, BR = 32L * 150, BT = 32L * 75;
    // (M, in, out, per step): 2 whole layers, then the pruned last layer and the decoder
    const Shape shapes[] = {
        {N, 96, 288, 4, "q/k/v, whole layers"},       {N, 96, 96, 4, "attention out, whole layers"},
        {N, 96, 192, 3, "MLP in (whole) + k/v (pruned)"}, {N, 192, 96, 2, "MLP out, whole layers"},
        {BR, 96, 96, 2, "pruned q, feature out"},     {BR, 96, 288, 1, "pruned row q/k/v"},
        {BT, 96, 96, 1, "pruned row out"},            {BT, 96, 192, 2, "pruned MLP in + decoder 1"},
        {BT, 192, 96, 1, "pruned MLP out"},
    };
    const int threads = omp_get_max_threads();
    double step_ms[NUM_LIBS] = {0};
    int failed = 0;
    for (const Shape& s : shapes) {
        std::vector<float> act(s.M * s.in), w((size_t)s.out * s.in), g(s.M * s.out);
        for (size_t i = 0; i < act.size(); i++) act[i] = (float)((i * 2654435761u) % 1000) / 1000.0f - 0.5f;
        for (size_t i = 0; i < w.size(); i++) w[i] = (float)((i * 40503u) % 997) / 997.0f - 0.5f;
        for (size_t i = 0; i < g.size(); i++) g[i] = (float)((i * 2246822519u) % 991) / 991.0f - 0.5f;
        for (int kind = 0; kind < NUM_KINDS; kind++) {
            const size_t out_n = kind == KIND_FORWARD ? s.M * s.out : (kind == KIND_DINP ? s.M * s.in : (size_t)s.out * s.in);
            std::vector<float> ref(out_n, 0.25f), out(out_n);
            run(LIB_OPENBLAS, kind, s, act.data(), w.data(), g.data(), ref.data());
            double max_ref = 0;
            for (float v : ref) max_ref = fmax(max_ref, fabs(v));
            double best[NUM_LIBS];
            for (int lib = 0; lib < NUM_LIBS; lib++) {
                std::fill(out.begin(), out.end(), 0.25f);
                run(lib, kind, s, act.data(), w.data(), g.data(), out.data());
                double err = 0;
                for (size_t i = 0; i < out_n; i++) err = fmax(err, fabs(out[i] - ref[i]));
                if (!(err <= 1e-4 * max_ref)) {
                    printf("FAIL %s %s M=%ld in=%d out=%d: max |diff| %.3g vs OpenBLAS (max |C| %.3g)\n", lib_names[lib],
                           kind_names[kind], s.M, s.in, s.out, err, max_ref);
                    failed = 1;
                }
                best[lib] = 1e30;
            }
            // the libraries in turn, reps rounds, best time of each
            for (int r = 0; r < reps; r++)
                for (int lib = 0; lib < NUM_LIBS; lib++) {
                    auto t0 = std::chrono::steady_clock::now();
                    run(lib, kind, s, act.data(), w.data(), g.data(), out.data());
                    auto t1 = std::chrono::steady_clock::now();
                    best[lib] = fmin(best[lib], std::chrono::duration<double, std::milli>(t1 - t0).count());
                }
            const double gflop = 2.0 * s.M * s.in * s.out / 1e9;
            for (int lib = 0; lib < NUM_LIBS; lib++) {
                step_ms[lib] += best[lib] * s.count;
                printf("{\"bench\": \"gemm\", \"library\": \"%s\", \"kind\": \"%s\", \"M\": %ld, \"in\": %d, \"out\": %d, "
                       "\"per_step\": %d, \"threads\": %d, \"ms\": %.3f, \"gflop_per_s\": %.1f, \"what\": \"%s\"}\n",
                       lib_names[lib], kind_names[kind], s.M, s.in, s.out, s.count, threads, best[lib],
                       gflop / (best[lib] / 1e3), s.what);
            }
        }
    }
    for (int lib = 0; lib < NUM_LIBS; lib++)
        printf("{\"bench\": \"gemm_step_total\", \"library\": \"%s\", \"threads\": %d, \"ms_per_step\": %.1f, "
               "\"vs_openblas\": %.3f}\n",
               lib_names[lib], threads, step_ms[lib], step_ms[LIB_OPENBLAS] / step_ms[lib]);
    return failed;
}
