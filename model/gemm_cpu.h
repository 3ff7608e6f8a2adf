// The CPU build's one GEMM: every matmul of the model goes through blas_gemm, so the library is
// chosen here and in the Makefile's GEMM variable, nowhere else.
//   float:  oneDNN's dnnl_sgemm where the build defines MOSAIC_GEMM_ONEDNN (the default where
//           Debian's libdnnl-dev is installed), else OpenBLAS's cblas_sgemm;
//   double: OpenBLAS's cblas_dgemm always (the gradient checks run the ops in double).
// Measured on the step's own shapes (build/bench_gemm, README "Speed"): oneDNN 1.23x faster than
// OpenBLAS over a step's GEMMs at 2 threads, 1.16x at 1; libxsmm 1.17's OpenMP front end was
// slower than both. dnnl_sgemm runs on our OpenMP pool, and its results were the same bits at 1,
// 2 and 3 threads for the step's shapes (the determinism the reductions keep elsewhere).
// Row-major: C (m, n) = alpha op(A) op(B) + beta C.
#pragma once
#include <cblas.h>
#ifdef MOSAIC_GEMM_ONEDNN
#include <dnnl.h>
#endif
#include "common.h"

static inline void blas_gemm(CBLAS_TRANSPOSE ta, CBLAS_TRANSPOSE tb, int m, int n, int k, float alpha,
                             const float* a, int lda, const float* b, int ldb, float beta, float* c, int ldc) {
#ifdef MOSAIC_GEMM_ONEDNN
    const dnnl_status_t status = dnnl_sgemm(ta == CblasTrans ? 'T' : 'N', tb == CblasTrans ? 'T' : 'N', m, n, k, alpha,
                                            a, lda, b, ldb, beta, c, ldc);
    if (status != dnnl_success)
        mosaic_fail("oneDNN sgemm (%d x %d x %d) failed with status %d: build with GEMM=openblas to bypass it", m, n, k,
                    (int)status);
#else
    cblas_sgemm(CblasRowMajor, ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
#endif
}

static inline void blas_gemm(CBLAS_TRANSPOSE ta, CBLAS_TRANSPOSE tb, int m, int n, int k, double alpha,
                             const double* a, int lda, const double* b, int ldb, double beta, double* c, int ldc) {
    cblas_dgemm(CblasRowMajor, ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}
