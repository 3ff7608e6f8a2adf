// Test-only cuBLAS for the emulated CUDA build (clang++ -DMOSAIC_SIMT_EMULATION): exactly the
// calls model/ops_cuda.cuh makes, defined against the real <cublas_v2.h> declarations so that
// the compiler checks every signature, over the emulator's device memory registry.
//   - cublasSgemm_v2 is a column-major reference GEMM with double accumulation that honours
//     transa/transb, lda/ldb/ldc, alpha and beta (beta == 0: C is not read, as in cuBLAS);
//   - every matrix it touches is checked with shim_check_device_range over the extent the
//     sizes imply, so a host pointer or a too-small buffer aborts with the operand's name;
//   - invalid sizes or leading dimensions print what is wrong and return
//     CUBLAS_STATUS_INVALID_VALUE, as cuBLAS does; the caller's CUBLAS_CHECK then stops.
// The product is queued on the handle's stream (test/cuda_runtime_shim.h) and runs when that
// stream's work runs, ordered with the kernels around it as on a GPU; alpha and beta are read at
// the call (host pointer mode).
#pragma once
#include <cublas_v2.h>
#include <stdio.h>
#include "simt_emulator.h"

struct cublasContext {
    cudaStream_t stream;
    cublasMath_t math_mode;
};

static inline cublasStatus_t cublas_shim_invalid(const char* call, const char* what, long got, long least) {
    fprintf(stderr, "cublas shim: %s: %s is %ld, must be at least %ld (CUBLAS_STATUS_INVALID_VALUE)\n", call, what, got, least);
    return CUBLAS_STATUS_INVALID_VALUE;
}

// elements spanned by a column-major (rows, cols) matrix with leading dimension ld
static inline size_t cublas_shim_extent(int rows, int cols, int ld) {
    return rows > 0 && cols > 0 ? (size_t)(cols - 1) * ld + rows : 0;
}

// the column-major product itself, run when the stream reaches the queued GEMM
static inline void cublas_shim_sgemm_now(cublasOperation_t transa, cublasOperation_t transb, int m, int n, int k,
                                         double a, const float* A, int lda, const float* B, int ldb, double b, float* C,
                                         int ldc) {
    for (int j = 0; j < n; j++) {
        for (int i = 0; i < m; i++) {
            double acc = 0.0;
            for (int p = 0; p < k; p++) {
                const float x = transa == CUBLAS_OP_N ? A[i + (size_t)p * lda] : A[p + (size_t)i * lda];
                const float y = transb == CUBLAS_OP_N ? B[p + (size_t)j * ldb] : B[j + (size_t)p * ldb];
                acc += (double)x * y;
            }
            float* c = C + i + (size_t)j * ldc;
            *c = (float)(b == 0.0 ? a * acc : a * acc + b * (double)*c);
        }
    }
}

extern "C" {

inline cublasStatus_t CUBLASWINAPI cublasCreate_v2(cublasHandle_t* handle) {
    if (!handle) return CUBLAS_STATUS_INVALID_VALUE;
    *handle = new cublasContext{(cudaStream_t)0, CUBLAS_DEFAULT_MATH};
    return CUBLAS_STATUS_SUCCESS;
}

inline cublasStatus_t CUBLASWINAPI cublasDestroy_v2(cublasHandle_t handle) {
    if (!handle) return CUBLAS_STATUS_NOT_INITIALIZED;
    delete handle;
    return CUBLAS_STATUS_SUCCESS;
}

inline cublasStatus_t CUBLASWINAPI cublasSetStream_v2(cublasHandle_t handle, cudaStream_t stream) {
    if (!handle) return CUBLAS_STATUS_NOT_INITIALIZED;
    handle->stream = stream;
    return CUBLAS_STATUS_SUCCESS;
}

inline cublasStatus_t CUBLASWINAPI cublasSetMathMode(cublasHandle_t handle, cublasMath_t mode) {
    if (!handle) return CUBLAS_STATUS_NOT_INITIALIZED;
    handle->math_mode = mode;
    return CUBLAS_STATUS_SUCCESS;
}

// C (m, n) = alpha op(A) (m, k) op(B) (k, n) + beta C, column-major
inline cublasStatus_t CUBLASWINAPI cublasSgemm_v2(cublasHandle_t handle, cublasOperation_t transa, cublasOperation_t transb,
                                                  int m, int n, int k, const float* alpha, const float* A, int lda,
                                                  const float* B, int ldb, const float* beta, float* C, int ldc) {
    const char* call = "cublasSgemm";
    if (!handle) return CUBLAS_STATUS_NOT_INITIALIZED;
    if (transa != CUBLAS_OP_N && transa != CUBLAS_OP_T) return cublas_shim_invalid(call, "transa (N or T only)", transa, 0);
    if (transb != CUBLAS_OP_N && transb != CUBLAS_OP_T) return cublas_shim_invalid(call, "transb (N or T only)", transb, 0);
    if (m < 0) return cublas_shim_invalid(call, "m", m, 0);
    if (n < 0) return cublas_shim_invalid(call, "n", n, 0);
    if (k < 0) return cublas_shim_invalid(call, "k", k, 0);
    // A is stored (m, k) or, transposed, (k, m); B (k, n) or (n, k); C (m, n)
    const int a_rows = transa == CUBLAS_OP_N ? m : k, a_cols = transa == CUBLAS_OP_N ? k : m;
    const int b_rows = transb == CUBLAS_OP_N ? k : n, b_cols = transb == CUBLAS_OP_N ? n : k;
    if (lda < (a_rows > 1 ? a_rows : 1)) return cublas_shim_invalid(call, "lda (rows of A as stored)", lda, a_rows > 1 ? a_rows : 1);
    if (ldb < (b_rows > 1 ? b_rows : 1)) return cublas_shim_invalid(call, "ldb (rows of B as stored)", ldb, b_rows > 1 ? b_rows : 1);
    if (ldc < (m > 1 ? m : 1)) return cublas_shim_invalid(call, "ldc (rows of C)", ldc, m > 1 ? m : 1);
    if (!alpha || !beta) return cublas_shim_invalid(call, "alpha and beta (host pointers)", 0, 1);
    if (m == 0 || n == 0) return CUBLAS_STATUS_SUCCESS; // nothing to compute, as cuBLAS
    const size_t a_bytes = cublas_shim_extent(a_rows, a_cols, lda) * sizeof(float);
    const size_t b_bytes = cublas_shim_extent(b_rows, b_cols, ldb) * sizeof(float);
    const size_t c_bytes = cublas_shim_extent(m, n, ldc) * sizeof(float);
    if (k > 0) {
        shim_check_device_range(A, a_bytes, "cublasSgemm A");
        shim_check_device_range(B, b_bytes, "cublasSgemm B");
    }
    shim_check_device_range(C, c_bytes, "cublasSgemm C");
    const double a = *alpha, b = *beta;
    cudaError_t queued = shim_enqueue_host_work(handle->stream, "cublasSgemm", [=] {
        if (k > 0) { // still allocated when the stream reaches it
            shim_check_device_range(A, a_bytes, "cublasSgemm A");
            shim_check_device_range(B, b_bytes, "cublasSgemm B");
        }
        shim_check_device_range(C, c_bytes, "cublasSgemm C");
        cublas_shim_sgemm_now(transa, transb, m, n, k, a, A, lda, B, ldb, b, C, ldc);
    });
    return queued == cudaSuccess ? CUBLAS_STATUS_SUCCESS : CUBLAS_STATUS_EXECUTION_FAILED;
}

} // extern "C"
