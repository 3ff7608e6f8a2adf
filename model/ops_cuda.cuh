// CUDA leaf ops: the GPU twins of model/ops_cpu.h, same names and parameter lists, float only,
// in namespace gpu (the CUDA build's orchestration does `using namespace gpu;`). Conventions as
// on the CPU:
//   - outputs first, then inputs, then sizes; pointers are device pointers;
//   - a backward op OVERWRITES the gradient of its activation input and ACCUMULATES (+=) into
//     parameter gradients;
//   - every op enqueues on mosaic_stream and returns without waiting (the host copies
//     device_copy_to_host / device_copy_to_device and device_synchronize are the blocking
//     exceptions, and they wait with a deadline: see the backend section at the end);
//   - reductions run in a fixed order that depends only on the shapes, never on the schedule:
//     warp sums are xor butterflies, block sums go through shared memory in a fixed tree, and
//     sums over many rows write per-chunk partials that a second kernel adds in chunk order
//     (no float atomics), so the same inputs give the same bits on every run.
// Arithmetic is fp32 (double only where the CPU twin's interface is double: the feature and
// label statistics and the sum of squares). The linear layers go through cuBLAS (fp32, no TF32).
#pragma once
#include <limits.h>
#include <unistd.h>
#include <cublas_v2.h>
#ifdef _OPENMP
#include <omp.h>
#endif
#include "cuda_common.cuh"
#ifdef MOSAIC_SIMT_EMULATION
#include "../test/cublas_shim.h" // test-only cuBLAS over the emulator's device memory registry
#endif

namespace gpu {

// ----------------------------------------------------------------------------
// device memory

static inline void* device_malloc(size_t bytes) {
    void* ptr = NULL;
    cudaError_t status = cudaMalloc(&ptr, bytes > 0 ? bytes : 1);
    if (status != cudaSuccess) {
        fprintf(stderr, "mosaic: error: cudaMalloc of %zu bytes failed at %s:%d: %s (out of GPU memory: reduce --batch or rows)\n",
                bytes, __FILE__, __LINE__, cudaGetErrorString(status));
        mosaic_exit(1);
    }
    return ptr;
}
static inline void device_free(void* ptr) {
    if (ptr) CUDA_CHECK(cudaFree(ptr));
}
static inline void device_memset_zero(void* ptr, size_t bytes) {
    if (bytes) CUDA_CHECK(cudaMemsetAsync(ptr, 0, bytes, mosaic_stream));
}
// host waits on a stream, with a deadline while peers take part (defined with the backend below)
static inline void stream_wait(cudaStream_t stream, const char* what, const char* file, int line);
// blocking: CUDA only says an async copy from pageable memory MAY stage the source at once, so
// the caller may reuse or free src only after the copy ran (callers: the batch upload once a
// step, checkpoints, the initial parameters)
static inline void device_copy_to_device(void* dst, const void* src, size_t bytes) {
    if (!bytes) return;
    CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, mosaic_stream));
    stream_wait(mosaic_stream, "the compute stream (a copy from the host)", __FILE__, __LINE__);
}
// blocking: waits for the work queued before it on mosaic_stream (a plain cudaMemcpy would run
// on the legacy default stream, which does not wait for a non-blocking mosaic_stream)
static inline void device_copy_to_host(void* dst, const void* src, size_t bytes) {
    if (!bytes) return;
    // the queue first, with the deadline: a copy into pageable memory blocks the host until done
    stream_wait(mosaic_stream, "the compute stream (before a copy to the host)", __FILE__, __LINE__);
    CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, mosaic_stream));
    stream_wait(mosaic_stream, "the compute stream (a copy to the host)", __FILE__, __LINE__);
}
static inline void device_copy(void* dst, const void* src, size_t bytes) {
    if (bytes) CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, mosaic_stream));
}

// Scratch for the partial sums of the two-pass reductions. It belongs to mosaic_stream (ops on
// it run one after another). tabpfn_build sizes it for the model's largest shapes and freezes it
// (ops_workspace_freeze, below), so the trainer never allocates in its steps; without that (the
// kernel tests) it grows when a larger shape is first seen, freeing the old one after its work.
static void* ops_workspace = NULL;
static size_t ops_workspace_bytes = 0;
static int ops_workspace_frozen = 0; // set by ops_workspace_freeze: growing is then a bug
static inline void* ops_workspace_reserve(size_t bytes) {
    if (bytes > ops_workspace_bytes) {
        if (ops_workspace_frozen) {
            fprintf(stderr, "mosaic: error: the ops workspace needs %zu bytes but was sized to %zu at build time "
                    "(%s:%d): a shape above the model's capacity, or ops_workspace_bound misses an op\n",
                    bytes, ops_workspace_bytes, __FILE__, __LINE__);
            mosaic_exit(1);
        }
        if (ops_workspace) {
            CUDA_CHECK(cudaStreamSynchronize(mosaic_stream));
            CUDA_CHECK(cudaFree(ops_workspace));
        }
        ops_workspace = NULL;
        CUDA_CHECK(cudaMalloc(&ops_workspace, bytes));
        ops_workspace_bytes = bytes;
    }
    return ops_workspace;
}

// ----------------------------------------------------------------------------
// launch shapes and reductions shared by the kernels below

enum { ELEMENTWISE_BLOCK = 256, ELEMENTWISE_MAX_GRID = 8192 };

// grid of an elementwise kernel with a grid-stride loop: one thread per element up to the cap
static inline unsigned elementwise_grid(long n) {
    long blocks = (n + ELEMENTWISE_BLOCK - 1) / ELEMENTWISE_BLOCK;
    return (unsigned)(blocks < 1 ? 1 : (blocks > ELEMENTWISE_MAX_GRID ? ELEMENTWISE_MAX_GRID : blocks));
}
#define GRID_STRIDE_LOOP(i, n) \
    for (long i = (long)blockIdx.x * blockDim.x + threadIdx.x; i < (n); i += (long)gridDim.x * blockDim.x)

// sum over the 32 lanes by an xor butterfly: every lane ends with the same bits (each step adds
// the same two values, a + b on one lane and b + a on its partner)
static __device__ __forceinline__ float ops_warp_sum(float v) {
    for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
    return v;
}
static __device__ __forceinline__ float ops_warp_max(float v) {
    for (int offset = 16; offset > 0; offset >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, offset));
    return v;
}

// Sum of the values of a block of REDUCE_BLOCK threads, one per thread in partial[threadIdx.x],
// in a fixed tree (halving strides); the result ends in partial[0]. Every thread must call it.
enum { REDUCE_BLOCK = 256 };
template <typename T>
static __device__ __forceinline__ void block_tree_sum(T* partial) {
    __syncthreads();
    for (int width = REDUCE_BLOCK / 2; width > 0; width >>= 1) {
        if ((int)threadIdx.x < width) partial[threadIdx.x] += partial[threadIdx.x + width];
        __syncthreads();
    }
}

// Column sums over many rows, two sums at once (value and a second one, e.g. dweight and dbias):
// pass 1: block (tile of 32 columns, chunk of rows), 8 warps; lane = column, warp w walks rows
//         w, w + 8, ... of the chunk; the 8 warp sums are added in warp order through shared
//         memory and written as the chunk's partial;
// pass 2: a thread per column adds the chunks' partials in chunk order into the output (+=).
// The chunk count depends only on N, so the order is fixed by the shapes.
enum { COLSUM_TILE = 32, COLSUM_WARPS = 8, COLSUM_ROWS_PER_CHUNK = 128, COLSUM_MAX_CHUNKS = 128 };

static inline int column_chunks(long N) {
    long chunks = (N + COLSUM_ROWS_PER_CHUNK - 1) / COLSUM_ROWS_PER_CHUNK;
    return (int)(chunks < 1 ? 1 : (chunks > COLSUM_MAX_CHUNKS ? COLSUM_MAX_CHUNKS : chunks));
}

// Op: a functor with `void operator()(long n, int d, const float* in0, ..., const float* in3,
// float& v0, float& v1) const` giving row n, column d's two values from up to four inputs. The
// inputs are kernel arguments of their own (not members of Op), so that the emulated build
// checks them as device pointers like every other pointer argument.
template <typename Op>
static __global__ void __launch_bounds__(COLSUM_TILE * COLSUM_WARPS)
column_partials_kernel(float* partials, Op op, const float* in0, const float* in1, const float* in2, const float* in3, long N,
                       int D, long rows_per_chunk) {
    // partials (chunks, 2, D)
    __shared__ float sum0[COLSUM_WARPS][COLSUM_TILE], sum1[COLSUM_WARPS][COLSUM_TILE];
    const int tiles = (D + COLSUM_TILE - 1) / COLSUM_TILE;
    const int tile = blockIdx.x % tiles, chunk = blockIdx.x / tiles;
    const int lane = threadIdx.x % COLSUM_TILE, warp = threadIdx.x / COLSUM_TILE;
    const int d = tile * COLSUM_TILE + lane;
    const long lo = (long)chunk * rows_per_chunk, hi = lo + rows_per_chunk < N ? lo + rows_per_chunk : N;
    float acc0 = 0.0f, acc1 = 0.0f;
    if (d < D) {
        for (long n = lo + warp; n < hi; n += COLSUM_WARPS) {
            float v0, v1;
            op(n, d, in0, in1, in2, in3, v0, v1);
            acc0 += v0;
            acc1 += v1;
        }
    }
    sum0[warp][lane] = acc0;
    sum1[warp][lane] = acc1;
    __syncthreads();
    if (warp == 0 && d < D) {
        float s0 = 0.0f, s1 = 0.0f;
        for (int w = 0; w < COLSUM_WARPS; w++) {
            s0 += sum0[w][lane];
            s1 += sum1[w][lane];
        }
        partials[((long)chunk * 2 + 0) * D + d] = s0;
        partials[((long)chunk * 2 + 1) * D + d] = s1;
    }
}

static __global__ void __launch_bounds__(ELEMENTWISE_BLOCK)
column_finish_kernel(float* out0, float* out1, const float* partials, int chunks, int D) {
    // out0, out1 (D) += sums over chunks of partials (chunks, 2, D); out1 may be NULL
    const int d = blockIdx.x * blockDim.x + threadIdx.x;
    if (d >= D) return;
    float s0 = 0.0f, s1 = 0.0f;
    for (int c = 0; c < chunks; c++) {
        s0 += partials[((long)c * 2 + 0) * D + d];
        s1 += partials[((long)c * 2 + 1) * D + d];
    }
    out0[d] += s0;
    if (out1) out1[d] += s1;
}

template <typename Op>
static void column_sums2(float* out0, float* out1, Op op, const float* in0, const float* in1, const float* in2,
                         const float* in3, long N, int D) {
    if (N <= 0 || D <= 0) return;
    const int chunks = column_chunks(N);
    const long rows_per_chunk = (N + chunks - 1) / chunks;
    const int tiles = ceil_div(D, COLSUM_TILE);
    float* partials = (float*)ops_workspace_reserve((size_t)chunks * 2 * D * sizeof(float));
    MOSAIC_LAUNCH(column_partials_kernel<Op>, tiles * chunks, COLSUM_TILE * COLSUM_WARPS, 0, mosaic_stream, partials, op,
                  in0, in1, in2, in3, N, D, rows_per_chunk);
    MOSAIC_LAUNCH(column_finish_kernel, ceil_div(D, ELEMENTWISE_BLOCK), ELEMENTWISE_BLOCK, 0, mosaic_stream, out0, out1,
                  (const float*)partials, chunks, D);
}

// row n, column d of a plain (N, D) matrix in0
struct MatrixColumn {
    int D;
    __device__ void operator()(long n, int d, const float* a, const float*, const float*, const float*, float& v0,
                               float& v1) const {
        v0 = a[n * D + d];
        v1 = 0.0f;
    }
};

// out[d] += sum_n a[n, d]; out (D), a (N, D)
static inline void column_sums_accumulate(float* out, const float* a, long N, int D) {
    MatrixColumn op = {D};
    column_sums2(out, (float*)NULL, op, a, (const float*)NULL, (const float*)NULL, (const float*)NULL, N, D);
}

// ----------------------------------------------------------------------------
// cuBLAS: one handle bound to mosaic_stream, fp32 math

static inline const char* cublas_status_name(cublasStatus_t status) {
    switch (status) {
    case CUBLAS_STATUS_SUCCESS: return "CUBLAS_STATUS_SUCCESS";
    case CUBLAS_STATUS_NOT_INITIALIZED: return "CUBLAS_STATUS_NOT_INITIALIZED";
    case CUBLAS_STATUS_ALLOC_FAILED: return "CUBLAS_STATUS_ALLOC_FAILED";
    case CUBLAS_STATUS_INVALID_VALUE: return "CUBLAS_STATUS_INVALID_VALUE";
    case CUBLAS_STATUS_ARCH_MISMATCH: return "CUBLAS_STATUS_ARCH_MISMATCH";
    case CUBLAS_STATUS_MAPPING_ERROR: return "CUBLAS_STATUS_MAPPING_ERROR";
    case CUBLAS_STATUS_EXECUTION_FAILED: return "CUBLAS_STATUS_EXECUTION_FAILED";
    case CUBLAS_STATUS_INTERNAL_ERROR: return "CUBLAS_STATUS_INTERNAL_ERROR";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "CUBLAS_STATUS_NOT_SUPPORTED";
    default: return "unknown cuBLAS status";
    }
}
static inline const char* cublas_status_hint(cublasStatus_t status) {
    switch (status) {
    case CUBLAS_STATUS_NOT_INITIALIZED: return "no usable GPU or CUDA driver";
    case CUBLAS_STATUS_ALLOC_FAILED: return "out of GPU memory: reduce --batch or rows";
    case CUBLAS_STATUS_INVALID_VALUE: return "a size or leading dimension does not fit the matrices: a caller's shape is wrong";
    case CUBLAS_STATUS_EXECUTION_FAILED: return "a kernel fault, often an earlier one";
    default: return "see the cuBLAS documentation for this status";
    }
}

#define CUBLAS_CHECK(call)                                                                                     \
    do {                                                                                                       \
        cublasStatus_t cublas_status_ = (call);                                                                \
        if (cublas_status_ != CUBLAS_STATUS_SUCCESS) {                                                         \
            fprintf(stderr, "mosaic: error: %s failed at %s:%d: %s (%s)\n", #call, __FILE__, __LINE__,         \
                    gpu::cublas_status_name(cublas_status_), gpu::cublas_status_hint(cublas_status_));         \
            mosaic_exit(1);                                                                                    \
        }                                                                                                      \
    } while (0)

static cublasHandle_t cublas_handle = NULL;
static cudaStream_t cublas_bound_stream = 0;

// created once; rebound whenever the trainer has pointed mosaic_stream elsewhere
static inline cublasHandle_t cublas_bound_handle(void) {
    if (!cublas_handle) {
        CUBLAS_CHECK(cublasCreate(&cublas_handle));
        // CUBLAS_DEFAULT_MATH keeps fp32 GEMMs in fp32 (TF32 tensor cores only with
        // CUBLAS_TF32_TENSOR_OP_MATH), so results stay comparable with the CPU build
        CUBLAS_CHECK(cublasSetMathMode(cublas_handle, CUBLAS_DEFAULT_MATH));
        CUBLAS_CHECK(cublasSetStream(cublas_handle, mosaic_stream));
        cublas_bound_stream = mosaic_stream;
    }
    if (cublas_bound_stream != mosaic_stream) {
        CUBLAS_CHECK(cublasSetStream(cublas_handle, mosaic_stream));
        cublas_bound_stream = mosaic_stream;
    }
    return cublas_handle;
}

// C (M, N) = alpha op(A) (M, K) @ op(B) (K, N) + beta C, every matrix ROW-major with leading
// dimensions lda, ldb, ldc (as cblas_sgemm with CblasRowMajor).
// The one place that translates to cuBLAS, which is column-major: a row-major (M, N) matrix
// with leading dimension ld is, byte for byte, a column-major (N, M) matrix with the same ld,
// i.e. its transpose. So C = op(A) op(B) in row-major is C^T = op(B)^T op(A)^T in cuBLAS's
// terms: swap the operands (B first), swap M and N, keep each operand's own transpose flag.
static inline void gemm_row_major(bool trans_a, bool trans_b, int M, int N, int K, float alpha, const float* A, int lda,
                                  const float* B, int ldb, float beta, float* C, int ldc) {
    const cublasOperation_t op_a = trans_a ? CUBLAS_OP_T : CUBLAS_OP_N, op_b = trans_b ? CUBLAS_OP_T : CUBLAS_OP_N;
    CUBLAS_CHECK(cublasSgemm(cublas_bound_handle(), op_b, op_a, N, M, K, &alpha, B, ldb, A, lda, &beta, C, ldc));
}

// ----------------------------------------------------------------------------
// linear layer, PyTorch convention: weight is (out_dim, in_dim)

static __global__ void __launch_bounds__(ELEMENTWISE_BLOCK)
broadcast_rows_kernel(float* out, const float* row, long N, int D) {
    // out (N, D) = row (D) in every row
    GRID_STRIDE_LOOP(i, N * D) out[i] = row[i % D];
}

static inline void matmul_forward(float* out, const float* inp, const float* weight, const float* bias, long N, int in_dim,
                                  int out_dim) {
    // out (N, out_dim) = inp (N, in_dim) @ weight^T + bias; weight (out_dim, in_dim), bias (out_dim) or NULL
    if (N == 0) return;
    MOSAIC_CHECK(N <= INT_MAX, "more rows than cuBLAS's int sizes: reduce --batch or rows");
    if (bias) // the bias first, then the GEMM adds onto it (beta 1)
        MOSAIC_LAUNCH(broadcast_rows_kernel, elementwise_grid(N * out_dim), ELEMENTWISE_BLOCK, 0, mosaic_stream, out, bias, N,
                      out_dim);
    gemm_row_major(false, true, (int)N, out_dim, in_dim, 1.0f, inp, in_dim, weight, in_dim, bias ? 1.0f : 0.0f, out, out_dim);
}

static inline void matmul_backward(float* dinp, float* dweight, float* dbias, const float* dout, const float* inp,
                                   const float* weight, long N, int in_dim, int out_dim) {
    // dinp (N, in_dim) = dout (N, out_dim) @ weight (overwritten; NULL skips it);
    // dweight (out_dim, in_dim) += dout^T @ inp; dbias (out_dim) += column sums of dout (NULL skips)
    if (N == 0) return;
    MOSAIC_CHECK(N <= INT_MAX, "more rows than cuBLAS's int sizes: reduce --batch or rows");
    if (dinp) gemm_row_major(false, false, (int)N, in_dim, out_dim, 1.0f, dout, out_dim, weight, in_dim, 0.0f, dinp, in_dim);
    gemm_row_major(true, false, out_dim, in_dim, (int)N, 1.0f, dout, out_dim, inp, in_dim, 1.0f, dweight, in_dim);
    if (dbias) column_sums_accumulate(dbias, dout, N, out_dim);
}

// ----------------------------------------------------------------------------
// LayerNorm over the last dimension, eps 1e-5, biased variance: one warp per row

enum { ROWWISE_WARPS = 4 }; // warps per block of the row-wise kernels

// one warp per row; b != NULL adds the residual first and stores the sum in res (may be a)
static __global__ void __launch_bounds__(ROWWISE_WARPS * MOSAIC_WARP)
residual_layernorm_forward_kernel(float* res, float* out, float* mean, float* rstd, const float* a, const float* b,
                                  const float* weight, const float* bias, long N, int E) {
    const int lane = threadIdx.x % MOSAIC_WARP;
    const long n = (long)blockIdx.x * ROWWISE_WARPS + threadIdx.x / MOSAIC_WARP;
    if (n >= N) return; // the whole warp leaves; the kernel has no block barrier
    const float* x = a + n * E;
    if (b) {
        float* r = res + n * E;
        for (int e = lane; e < E; e += MOSAIC_WARP) r[e] = x[e] + b[n * E + e];
        x = r; // each lane reads back only the elements it wrote
    }
    float s = 0.0f;
    for (int e = lane; e < E; e += MOSAIC_WARP) s += x[e];
    const float m = ops_warp_sum(s) / E;
    // the variance from the centred values (two passes over the row, which stays in L1)
    float v = 0.0f;
    for (int e = lane; e < E; e += MOSAIC_WARP) {
        const float c = x[e] - m;
        v += c * c;
    }
    const float r = 1.0f / sqrtf(ops_warp_sum(v) / E + 1e-5f);
    float* o = out + n * E;
    for (int e = lane; e < E; e += MOSAIC_WARP) o[e] = (x[e] - m) * r * weight[e] + bias[e];
    if (lane == 0) {
        mean[n] = m;
        rstd[n] = r;
    }
}

static inline void residual_layernorm_forward(float* res, float* out, float* mean, float* rstd, const float* a,
                                              const float* b, const float* weight, const float* bias, long N, int E) {
    // res (N, E) = a + b (res may be a; b NULL: no add), out = LayerNorm(res); mean, rstd (N); weight, bias (E)
    if (N == 0) return;
    MOSAIC_LAUNCH(residual_layernorm_forward_kernel, (unsigned)((N + ROWWISE_WARPS - 1) / ROWWISE_WARPS),
                  ROWWISE_WARPS * MOSAIC_WARP, 0, mosaic_stream, res, out, mean, rstd, a, b, weight, bias, N, E);
}

static inline void layernorm_forward(float* out, float* mean, float* rstd, const float* inp, const float* weight,
                                     const float* bias, long N, int E) {
    // out, inp (N, E); mean, rstd (N); weight, bias (E)
    residual_layernorm_forward(NULL, out, mean, rstd, inp, NULL, weight, bias, N, E);
}

static __global__ void __launch_bounds__(ROWWISE_WARPS * MOSAIC_WARP)
layernorm_backward_input_kernel(float* dinp, const float* dout, const float* inp, const float* weight, const float* mean,
                                const float* rstd, long N, int E) {
    const int lane = threadIdx.x % MOSAIC_WARP;
    const long n = (long)blockIdx.x * ROWWISE_WARPS + threadIdx.x / MOSAIC_WARP;
    if (n >= N) return; // the whole warp leaves; the kernel has no block barrier
    const float* x = inp + n * E;
    const float* dy = dout + n * E;
    const float m = mean[n], s = rstd[n];
    // dxhat = dy * w; dx = s * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat))
    float dnorm = 0.0f, dnorm_xhat = 0.0f;
    for (int e = lane; e < E; e += MOSAIC_WARP) {
        const float xhat = (x[e] - m) * s, dxhat = dy[e] * weight[e];
        dnorm += dxhat;
        dnorm_xhat += dxhat * xhat;
    }
    const float dnorm_mean = ops_warp_sum(dnorm) / E, dnorm_xhat_mean = ops_warp_sum(dnorm_xhat) / E;
    float* dx = dinp + n * E; // may alias dout: a lane reads dy[e] before it writes dx[e]
    for (int e = lane; e < E; e += MOSAIC_WARP) {
        const float xhat = (x[e] - m) * s, dxhat = dy[e] * weight[e];
        dx[e] = s * (dxhat - dnorm_mean - xhat * dnorm_xhat_mean);
    }
}

// row n, column e: dout * xhat (for dweight) and dout (for dbias); inputs dout, inp, mean, rstd
struct LayernormParamColumn {
    int E;
    __device__ void operator()(long n, int e, const float* dout, const float* inp, const float* mean, const float* rstd,
                               float& v0, float& v1) const {
        const float dy = dout[n * E + e];
        v0 = dy * ((inp[n * E + e] - mean[n]) * rstd[n]);
        v1 = dy;
    }
};

static inline void layernorm_backward(float* dinp, float* dweight, float* dbias, const float* dout, const float* inp,
                                      const float* weight, const float* mean, const float* rstd, long N, int E) {
    // dinp, dout, inp (N, E); dweight, dbias (E) accumulate; mean, rstd (N)
    if (N == 0) return;
    // parameter gradients first: they read dout, which dinp may overwrite
    LayernormParamColumn op = {E};
    column_sums2(dweight, dbias, op, dout, inp, mean, rstd, N, E);
    MOSAIC_LAUNCH(layernorm_backward_input_kernel, (unsigned)((N + ROWWISE_WARPS - 1) / ROWWISE_WARPS),
                  ROWWISE_WARPS * MOSAIC_WARP, 0, mosaic_stream, dinp, dout, inp, weight, mean, rstd, N, E);
}

// ----------------------------------------------------------------------------
// exact GELU: x * Phi(x), Phi(x) = (1 + erf(x / sqrt 2)) / 2

static __global__ void __launch_bounds__(ELEMENTWISE_BLOCK) gelu_forward_kernel(float* out, const float* inp, long n) {
    GRID_STRIDE_LOOP(i, n) {
        const float x = inp[i];
        out[i] = 0.5f * x * (1.0f + erff(x * (float)M_SQRT1_2));
    }
}

static __global__ void __launch_bounds__(ELEMENTWISE_BLOCK)
gelu_backward_kernel(float* dinp, const float* inp, const float* dout, long n) {
    const float inv_sqrt_2pi = 0.3989422804014327f;
    GRID_STRIDE_LOOP(i, n) {
        const float x = inp[i];
        const float cdf = 0.5f * (1.0f + erff(x * (float)M_SQRT1_2));
        const float pdf = inv_sqrt_2pi * expf(-0.5f * x * x);
        dinp[i] = dout[i] * (cdf + x * pdf);
    }
}

static inline void gelu_forward(float* out, const float* inp, long n) {
    if (n > 0) MOSAIC_LAUNCH(gelu_forward_kernel, elementwise_grid(n), ELEMENTWISE_BLOCK, 0, mosaic_stream, out, inp, n);
}
static inline void gelu_backward(float* dinp, const float* inp, const float* dout, long n) {
    if (n > 0) MOSAIC_LAUNCH(gelu_backward_kernel, elementwise_grid(n), ELEMENTWISE_BLOCK, 0, mosaic_stream, dinp, inp, dout, n);
}

// ----------------------------------------------------------------------------
// elementwise

static __global__ void __launch_bounds__(ELEMENTWISE_BLOCK)
residual_forward_kernel(float* out, const float* a, const float* b, long n) {
    GRID_STRIDE_LOOP(i, n) out[i] = a[i] + b[i];
}
static __global__ void __launch_bounds__(ELEMENTWISE_BLOCK) add_inplace_kernel(float* acc, const float* x, long n) {
    GRID_STRIDE_LOOP(i, n) acc[i] += x[i];
}

static inline void residual_forward(float* out, const float* a, const float* b, long n) {
    if (n > 0) MOSAIC_LAUNCH(residual_forward_kernel, elementwise_grid(n), ELEMENTWISE_BLOCK, 0, mosaic_stream, out, a, b, n);
}
static inline void add_inplace(float* acc, const float* x, long n) {
    if (n > 0) MOSAIC_LAUNCH(add_inplace_kernel, elementwise_grid(n), ELEMENTWISE_BLOCK, 0, mosaic_stream, acc, x, n);
}

// ----------------------------------------------------------------------------
// feature encoder: statistics of the train rows, then standardise, then Linear(1 -> E) per cell

enum { STATS_FEATURES = 32, STATS_ROW_GROUPS = 8, STATS_BLOCK = 256 };

// Two passes in double, as the CPU twin (see feature_stats_local in ops_cpu.h): [count, sum],
// then, after the group's all-reduce, the squared deviations from the group's mean.
// block (32 features, dataset b), 8 warps: lane = feature, warp w sums rows w, w + 8, ... in
// double; the 8 partial sums are added in warp order. second_pass: stats (B, F, 2) in, m2 (B, F) out.
template <int second_pass>
static __global__ void __launch_bounds__(STATS_BLOCK)
feature_stats_kernel(double* out, const float* x, const double* stats, int R, int F, int S) {
    __shared__ double sum_s[STATS_ROW_GROUPS][STATS_FEATURES];
    const int tiles = (F + STATS_FEATURES - 1) / STATS_FEATURES;
    const int b = blockIdx.x / tiles, lane = threadIdx.x % STATS_FEATURES, group = threadIdx.x / STATS_FEATURES;
    const int f = (blockIdx.x % tiles) * STATS_FEATURES + lane;
    double sum = 0.0;
    if (f < F) {
        const double mean = second_pass ? stats[((long)b * F + f) * 2 + 1] / stats[((long)b * F + f) * 2] : 0.0;
        for (int r = group; r < S; r += STATS_ROW_GROUPS) {
            const double v = (double)x[((long)b * R + r) * F + f];
            if (second_pass) sum += (v - mean) * (v - mean);
            else sum += v;
        }
    }
    sum_s[group][lane] = sum;
    __syncthreads();
    if (group == 0 && f < F) {
        double total = 0.0;
        for (int g = 0; g < STATS_ROW_GROUPS; g++) total += sum_s[g][lane];
        if (second_pass) {
            out[(long)b * F + f] = total;
        } else {
            out[((long)b * F + f) * 2] = S;
            out[((long)b * F + f) * 2 + 1] = total;
        }
    }
}

static inline void feature_stats_local(double* stats, const float* x, int B, int R, int F, int S) {
    // stats (B, F, 2) = [count, sum] over rows [0, S); x (B, R, F)
    if (B == 0 || F == 0) return;
    MOSAIC_LAUNCH(feature_stats_kernel<0>, B * ceil_div(F, STATS_FEATURES), STATS_BLOCK, 0, mosaic_stream, stats, x,
                  (const double*)NULL, R, F, S);
}

static inline void feature_deviations_local(double* m2, const float* x, const double* stats, int B, int R, int F, int S) {
    // m2 (B, F) = sum over rows [0, S) of (x - mean)^2, mean from the group's stats (B, F, 2); x (B, R, F)
    if (B == 0 || F == 0) return;
    MOSAIC_LAUNCH(feature_stats_kernel<1>, B * ceil_div(F, STATS_FEATURES), STATS_BLOCK, 0, mosaic_stream, m2, x, stats, R,
                  F, S);
}

static __global__ void __launch_bounds__(ELEMENTWISE_BLOCK)
feature_normalize_kernel(float* xnorm, const float* x, const double* stats, const double* m2, int B, int R, int F) {
    // in double, as the CPU twin
    GRID_STRIDE_LOOP(i, (long)B * R * F) {
        const int f = (int)(i % F), b = (int)(i / ((long)R * F));
        const double* st = stats + ((long)b * F + f) * 2;
        const double n = st[0];
        const double mean = st[1] / n;
        // n == 1 gives 0/0 = NaN, as torch.std does for a single train row (then sd 0)
        const double var = m2[(long)b * F + f] / (n - 1.0);
        const double sd = sqrt(var > 0.0 ? var : 0.0);
        double z = ((double)x[i] - mean) / (sd + 1e-20);
        z = z < -100.0 ? -100.0 : (z > 100.0 ? 100.0 : z);
        xnorm[i] = (float)z;
    }
}

static inline void feature_normalize(float* xnorm, const float* x, const double* stats, const double* m2, int B, int R, int F) {
    // xnorm, x (B, R, F); stats (B, F, 2), m2 (B, F)
    const long n = (long)B * R * F;
    if (n > 0)
        MOSAIC_LAUNCH(feature_normalize_kernel, elementwise_grid(n), ELEMENTWISE_BLOCK, 0, mosaic_stream, xnorm, x, stats, m2, B,
                      R, F);
}

// a block per dataset: thread i sums rows i, i + 256, ... in double, then the block's fixed tree
static __global__ void __launch_bounds__(REDUCE_BLOCK) label_stats_kernel(double* stats, const float* y, int R, int S) {
    __shared__ double partial[REDUCE_BLOCK];
    const int b = blockIdx.x;
    double sum = 0.0;
    for (int r = threadIdx.x; r < S; r += REDUCE_BLOCK) sum += y[(long)b * R + r];
    partial[threadIdx.x] = sum;
    block_tree_sum(partial);
    if (threadIdx.x == 0) {
        stats[b * 2 + 0] = S;
        stats[b * 2 + 1] = partial[0];
    }
}

static inline void label_stats_local(double* stats, const float* y, int B, int R, int S) {
    // stats (B, 2) = [train row count, sum of train labels]; y (B, R)
    if (B > 0) MOSAIC_LAUNCH(label_stats_kernel, B, REDUCE_BLOCK, 0, mosaic_stream, stats, y, R, S);
}

static __global__ void __launch_bounds__(ELEMENTWISE_BLOCK)
target_fill_kernel(float* ynorm, const float* y, const double* stats, int B, int R, int S) {
    GRID_STRIDE_LOOP(i, (long)B * R) {
        const int b = (int)(i / R), r = (int)(i % R);
        ynorm[i] = r < S ? y[i] : (float)(stats[b * 2 + 1] / stats[b * 2 + 0]);
    }
}

static inline void target_fill(float* ynorm, const float* y, const double* stats, int B, int R, int S) {
    // ynorm, y (B, R): train rows keep their label, test rows get the train-label mean; stats (B, 2)
    const long n = (long)B * R;
    if (n > 0) MOSAIC_LAUNCH(target_fill_kernel, elementwise_grid(n), ELEMENTWISE_BLOCK, 0, mosaic_stream, ynorm, y, stats, B, R, S);
}

static __global__ void __launch_bounds__(ELEMENTWISE_BLOCK)
scalar_embed_forward_kernel(float* out, const float* v, const float* w, const float* bias, long BR, int n_cols, int col0, int C,
                            int E) {
    GRID_STRIDE_LOOP(i, BR * n_cols * E) {
        const int e = (int)(i % E);
        const long cell = i / E; // br * n_cols + f
        const long br = cell / n_cols;
        const int f = (int)(cell % n_cols);
        out[(br * C + col0 + f) * E + e] = v[cell] * w[e] + bias[e];
    }
}

static inline void scalar_embed_forward(float* out, const float* v, const float* w, const float* bias, long BR, int n_cols,
                                        int col0, int C, int E) {
    // out[:, :, col0 + f, :] = v[:, :, f] * w + bias; out (B*R, C, E); v (B*R, n_cols); w, bias (E)
    const long n = BR * n_cols * E;
    if (n > 0)
        MOSAIC_LAUNCH(scalar_embed_forward_kernel, elementwise_grid(n), ELEMENTWISE_BLOCK, 0, mosaic_stream, out, v, w, bias, BR,
                      n_cols, col0, C, E);
}

// row n = br * n_cols + f (a cell), column e: dout * v (for dw) and dout (for dbias); inputs dout, v
struct ScalarEmbedColumn {
    int n_cols, col0, C, E;
    __device__ void operator()(long n, int e, const float* dout, const float* v, const float*, const float*, float& v0,
                               float& v1) const {
        const long br = n / n_cols;
        const int f = (int)(n % n_cols);
        const float g = dout[(br * C + col0 + f) * E + e];
        v0 = g * v[n];
        v1 = g;
    }
};

static inline void scalar_embed_backward(float* dw, float* dbias, const float* dout, const float* v, long BR, int n_cols,
                                         int col0, int C, int E) {
    // dw, dbias (E) += sums over cells of dout * v and dout; dout (B*R, C, E); v (B*R, n_cols)
    ScalarEmbedColumn op = {n_cols, col0, C, E};
    column_sums2(dw, dbias, op, dout, v, (const float*)NULL, (const float*)NULL, BR * n_cols, E);
}

// ----------------------------------------------------------------------------
// decoder input: the target column (last) of the test rows

// element i of a (B, R-S, E) test-row buffer -> its cell's element in (B, R, C, E): test row t of
// dataset b, the target column
static __device__ __forceinline__ long target_test_cell_element(long i, int R, int C, int S, int E) {
    const int T_rows = R - S;
    const int e = (int)(i % E);
    const long row = i / E; // b * T_rows + test row
    const long b = row / T_rows;
    const int t = (int)(row % T_rows);
    return ((b * R + S + t) * C + C - 1) * E + e;
}

static __global__ void __launch_bounds__(ELEMENTWISE_BLOCK)
gather_target_test_rows_kernel(float* out, const float* x, int R, int C, int S, int E, long n) {
    GRID_STRIDE_LOOP(i, n) out[i] = x[target_test_cell_element(i, R, C, S, E)];
}

static inline void gather_target_test_rows(float* out, const float* x, int B, int R, int C, int S, int E) {
    // out (B, R-S, E) = x[b, S + i, C - 1, :]; x (B, R, C, E)
    const long n = (long)B * (R - S) * E;
    if (n > 0)
        MOSAIC_LAUNCH(gather_target_test_rows_kernel, elementwise_grid(n), ELEMENTWISE_BLOCK, 0, mosaic_stream, out, x, R, C, S,
                      E, n);
}

// one pass over dx: every element written once, the gathered cells from dout, the rest 0
static __global__ void __launch_bounds__(ELEMENTWISE_BLOCK)
scatter_target_test_rows_kernel(float* dx, const float* dout, int R, int C, int S, int E, long n) {
    GRID_STRIDE_LOOP(i, n) {
        const int e = (int)(i % E);
        const long cell = i / E; // (b * R + r) * C + c
        const int c = (int)(cell % C);
        const long br = cell / C;
        const int r = (int)(br % R);
        const long b = br / R;
        dx[i] = (r >= S && c == C - 1) ? dout[(b * (R - S) + (r - S)) * E + e] : 0.0f;
    }
}

static inline void scatter_target_test_rows(float* dx, const float* dout, int B, int R, int C, int S, int E) {
    // dx (B, R, C, E) = 0 everywhere but the gathered cells, which get dout (B, R-S, E)
    const long n = (long)B * R * C * E;
    if (n > 0)
        MOSAIC_LAUNCH(scatter_target_test_rows_kernel, elementwise_grid(n), ELEMENTWISE_BLOCK, 0, mosaic_stream, dx, dout, R, C,
                      S, E, n);
}

static __global__ void __launch_bounds__(ELEMENTWISE_BLOCK)
add_target_test_rows_kernel(float* dx, const float* dout, int R, int C, int S, int E, long n) {
    GRID_STRIDE_LOOP(i, n) dx[target_test_cell_element(i, R, C, S, E)] += dout[i];
}

static inline void add_target_test_rows(float* dx, const float* dout, int B, int R, int C, int S, int E) {
    // dx[b, S + i, C - 1, :] += dout[b, i, :]; dx (B, R, C, E), dout (B, R-S, E)
    const long n = (long)B * (R - S) * E;
    if (n > 0)
        MOSAIC_LAUNCH(add_target_test_rows_kernel, elementwise_grid(n), ELEMENTWISE_BLOCK, 0, mosaic_stream, dx, dout, R, C, S,
                      E, n);
}

// ----------------------------------------------------------------------------
// softmax cross-entropy over the test rows

// pass 1: one warp per row (lanes over the classes): the probabilities and the row's loss
static __global__ void __launch_bounds__(ROWWISE_WARPS * MOSAIC_WARP)
crossentropy_rows_kernel(float* row_loss, float* probs, const float* logits, const float* y, int R, int S, int K, long N) {
    const int lane = threadIdx.x % MOSAIC_WARP;
    const long n = (long)blockIdx.x * ROWWISE_WARPS + threadIdx.x / MOSAIC_WARP;
    if (n >= N) return; // the whole warp leaves; the kernel has no block barrier
    const float* z = logits + n * K;
    float* p = probs + n * K;
    float zmax = -INFINITY;
    for (int k = lane; k < K; k += MOSAIC_WARP) zmax = fmaxf(zmax, z[k]);
    zmax = ops_warp_max(zmax);
    float sum = 0.0f;
    for (int k = lane; k < K; k += MOSAIC_WARP) sum += expf(z[k] - zmax);
    sum = ops_warp_sum(sum);
    for (int k = lane; k < K; k += MOSAIC_WARP) p[k] = expf(z[k] - zmax) / sum;
    if (lane == 0) {
        const int label = (int)y[(n / (R - S)) * R + S + n % (R - S)];
        row_loss[n] = -(z[label] - zmax - logf(sum));
    }
}

// pass 2, one block: thread i adds rows i, i + 256, ... in row order, then the block's fixed tree
static __global__ void __launch_bounds__(REDUCE_BLOCK) crossentropy_sum_kernel(float* loss_sum, const float* row_loss, long N) {
    __shared__ float partial[REDUCE_BLOCK];
    float acc = 0.0f;
    for (long n = threadIdx.x; n < N; n += REDUCE_BLOCK) acc += row_loss[n];
    partial[threadIdx.x] = acc;
    block_tree_sum(partial);
    if (threadIdx.x == 0) loss_sum[0] = partial[0];
}

static inline void crossentropy_forward(float* loss_sum, float* probs, const float* logits, const float* y, int B, int R, int S,
                                        int K) {
    // loss_sum (1, device) = sum over rows of -log softmax(logits)[label]; probs, logits (N, K),
    // N = B * (R - S); labels from y (B, R) rows [S, R). The per-row losses go through the
    // workspace so that the sum has one fixed order (no atomics).
    const long N = (long)B * (R - S);
    float* row_loss = (float*)ops_workspace_reserve((size_t)(N > 0 ? N : 1) * sizeof(float));
    if (N > 0)
        MOSAIC_LAUNCH(crossentropy_rows_kernel, (unsigned)((N + ROWWISE_WARPS - 1) / ROWWISE_WARPS),
                      ROWWISE_WARPS * MOSAIC_WARP, 0, mosaic_stream, row_loss, probs, logits, y, R, S, K, N);
    MOSAIC_LAUNCH(crossentropy_sum_kernel, 1, REDUCE_BLOCK, 0, mosaic_stream, loss_sum, (const float*)row_loss, N);
}

static __global__ void __launch_bounds__(ELEMENTWISE_BLOCK)
crossentropy_backward_kernel(float* dlogits, const float* probs, const float* y, float scale, int R, int S, int K, long n) {
    GRID_STRIDE_LOOP(i, n) {
        const long row = i / K;
        const int k = (int)(i % K);
        const int label = (int)y[(row / (R - S)) * R + S + row % (R - S)];
        dlogits[i] = (probs[i] - (k == label ? 1.0f : 0.0f)) * scale;
    }
}

static inline void crossentropy_backward(float* dlogits, const float* probs, const float* y, float scale, int B, int R, int S,
                                         int K) {
    // dlogits, probs (N, K) = (probs - onehot(label)) * scale
    const long n = (long)B * (R - S) * K;
    if (n > 0)
        MOSAIC_LAUNCH(crossentropy_backward_kernel, elementwise_grid(n), ELEMENTWISE_BLOCK, 0, mosaic_stream, dlogits, probs, y,
                      scale, R, S, K, n);
}

// ----------------------------------------------------------------------------
// optimizer

enum { SUMSQ_ELEMS_PER_BLOCK = 4096, SUMSQ_MAX_BLOCKS = 1024 };

// pass 1: block g's threads take elements at a grid stride (the grid size depends only on n)
static __global__ void __launch_bounds__(REDUCE_BLOCK) sum_of_squares_partials_kernel(double* partials, const float* x, size_t n) {
    __shared__ double partial[REDUCE_BLOCK];
    double acc = 0.0;
    for (size_t i = (size_t)blockIdx.x * REDUCE_BLOCK + threadIdx.x; i < n; i += (size_t)gridDim.x * REDUCE_BLOCK)
        acc += (double)x[i] * x[i];
    partial[threadIdx.x] = acc;
    block_tree_sum(partial);
    if (threadIdx.x == 0) partials[blockIdx.x] = partial[0];
}

// pass 2, one block: thread i adds partials i, i + 256, ... in order, then the same tree
static __global__ void __launch_bounds__(REDUCE_BLOCK) sum_of_squares_finish_kernel(double* out, const double* partials, int count) {
    __shared__ double partial[REDUCE_BLOCK];
    double acc = 0.0;
    for (int i = threadIdx.x; i < count; i += REDUCE_BLOCK) acc += partials[i];
    partial[threadIdx.x] = acc;
    block_tree_sum(partial);
    if (threadIdx.x == 0) out[0] = partial[0];
}

static inline void sum_of_squares(double* out, const float* x, size_t n) {
    // out (1, a DEVICE double) = sum of squares of x (n), in double
    if (n == 0) {
        device_memset_zero(out, sizeof(double)); // +0.0 is all zero bits
        return;
    }
    size_t blocks = (n + SUMSQ_ELEMS_PER_BLOCK - 1) / SUMSQ_ELEMS_PER_BLOCK;
    if (blocks > SUMSQ_MAX_BLOCKS) blocks = SUMSQ_MAX_BLOCKS;
    double* partials = (double*)ops_workspace_reserve(blocks * sizeof(double));
    MOSAIC_LAUNCH(sum_of_squares_partials_kernel, (unsigned)blocks, REDUCE_BLOCK, 0, mosaic_stream, partials, x, n);
    MOSAIC_LAUNCH(sum_of_squares_finish_kernel, 1, REDUCE_BLOCK, 0, mosaic_stream, out, (const double*)partials, (int)blocks);
}

static __global__ void __launch_bounds__(ELEMENTWISE_BLOCK)
adamw_kernel(float* params, float* m, float* v, const float* grads, size_t n, float beta1, float beta2, float eps,
             float grad_scale, float step_size, float inv_sqrt_bc2, float decay) {
    GRID_STRIDE_LOOP(i, (long)n) {
        const float g = grads[i] * grad_scale;
        const float mi = beta1 * m[i] + (1 - beta1) * g;
        const float vi = beta2 * v[i] + (1 - beta2) * g * g;
        m[i] = mi;
        v[i] = vi;
        const float denom = sqrtf(vi) * inv_sqrt_bc2 + eps;
        params[i] = params[i] * decay - step_size * mi / denom;
    }
}

// AdamW as torch.optim.AdamW: decoupled weight decay, bias-corrected moments; the scalars that
// depend on the step are computed on the host exactly as in the CPU twin
static inline void adamw_update(float* params, float* m, float* v, const float* grads, size_t n, float lr, float beta1,
                                float beta2, float eps, float weight_decay, float grad_scale, int step) {
    if (n == 0) return;
    const double bc1 = 1.0 - pow(beta1, step), bc2 = 1.0 - pow(beta2, step);
    const float step_size = (float)(lr / bc1);
    const float inv_sqrt_bc2 = (float)(1.0 / sqrt(bc2));
    const float decay = (float)(1.0 - (double)lr * weight_decay);
    MOSAIC_LAUNCH(adamw_kernel, elementwise_grid((long)n), ELEMENTWISE_BLOCK, 0, mosaic_stream, params, m, v, grads, n, beta1,
                  beta2, eps, grad_scale, step_size, inv_sqrt_bc2, decay);
}

static __global__ void __launch_bounds__(ELEMENTWISE_BLOCK)
schedulefree_kernel(float* y, float* z, float* x, float* v, const float* grads, size_t n, float lr_t, float c, float beta1,
                    float beta2, float eps, float decay, float grad_scale) {
    GRID_STRIDE_LOOP(i, (long)n) {
        const float g = grads[i] * grad_scale;
        const float vi = beta2 * v[i] + (1 - beta2) * g * g;
        const float zi = z[i] - lr_t * g / (sqrtf(vi) + eps) - decay * y[i];
        const float xi = (1 - c) * x[i] + c * zi;
        v[i] = vi;
        z[i] = zi;
        x[i] = xi;
        y[i] = (1 - beta1) * zi + beta1 * xi;
    }
}

// Schedule-free AdamW (Defazio et al. 2024, Algorithm 1), one step: see the CPU twin; lr_t and c
// come from the host (tabpfn_update), the decay scalar is computed exactly as there
static inline void schedulefree_update(float* y, float* z, float* x, float* v, const float* grads, size_t n, float lr_t,
                                       float c, float beta1, float beta2, float eps, float weight_decay, float grad_scale) {
    if (n == 0) return;
    const float decay = (float)((double)lr_t * weight_decay);
    MOSAIC_LAUNCH(schedulefree_kernel, elementwise_grid((long)n), ELEMENTWISE_BLOCK, 0, mosaic_stream, y, z, x, v, grads, n,
                  lr_t, c, beta1, beta2, eps, decay, grad_scale);
}

// ----------------------------------------------------------------------------
// backend: the device, the two streams, and host waits that cannot hang
//
// The trainer runs on two non-blocking streams, as llm.c does: every leaf op on mosaic_stream
// (compute), every transfer of the NCCL transport (comm/comm_nccl.h) on comm_stream, the two
// joined by events, so that a ring's next block travels while the current one is computed.
// Non-blocking streams do not synchronise with the legacy default stream, so every host wait
// below names its stream. The device and the streams are chosen once, by backend_select_device
// (the communicator calls it with the node-local rank); a process that never calls it (the
// kernel tests) uses the current device and the default stream.

static cudaStream_t comm_stream = 0; // the communication stream (0 until a device is selected)
static int backend_device = -1;      // the GPU this process runs on; -1: none selected yet

// Host waits on the device poll instead of blocking, so that a peer that died inside a
// collective cannot hold this rank forever. The NCCL transport installs the hooks when it
// creates a communicator of more than one rank: poll() checks the communicators' asynchronous
// errors (and ends the job on one); abort() aborts them before the job ends on a timeout.
static void (*device_wait_poll_hook)(void) = NULL;
static void (*device_wait_abort_hook)(void) = NULL;

// seconds a host wait may take while peers take part (MOSAIC_DEVICE_TIMEOUT overrides 40): below
// the 60 s in which a dead peer must end the job, far above one step of the GPU trainer
static inline double device_wait_timeout(void) {
    static double timeout = -1.0;
    if (timeout < 0.0) {
        const char* env = getenv("MOSAIC_DEVICE_TIMEOUT");
        timeout = env && atof(env) > 0.0 ? atof(env) : 40.0;
    }
    return timeout;
}

// returns once every op queued on stream has finished. Without peers it only polls; with them
// it checks the communicators on every poll and, past the deadline, aborts them and the job.
static inline void stream_wait(cudaStream_t stream, const char* what, const char* file, int line) {
    const double t0 = wall_seconds();
    for (long polls = 0;; polls++) {
        const cudaError_t status = cudaStreamQuery(stream);
        if (status == cudaSuccess) return;
        if (status != cudaErrorNotReady) {
            fprintf(stderr, "mosaic: error: cudaStreamQuery(%s) failed at %s:%d: %s (a kernel fault or a failed "
                    "transfer queued earlier on this stream)\n", what, file, line, cudaGetErrorString(status));
            mosaic_exit(1);
        }
        if (!device_wait_poll_hook) continue;
        device_wait_poll_hook();
        const double waited = wall_seconds() - t0;
        if (waited > device_wait_timeout()) {
            char rank[32] = "";
            if (mosaic_error_rank >= 0) snprintf(rank, sizeof(rank), "[rank %d] ", mosaic_error_rank);
            fprintf(stderr, "mosaic: error: %sthe device has not finished the work on %s after %.0f s, waited for at "
                    "%s:%d (a peer rank died or hangs in a collective; MOSAIC_DEVICE_TIMEOUT sets the limit): aborting\n",
                    rank, what, waited, file, line);
            if (device_wait_abort_hook) device_wait_abort_hook();
            mosaic_exit(1);
        }
        if (polls > 1000) usleep(waited < 0.01 ? 20 : 500); // spin first: most waits are short
    }
}

// picks this process's GPU (node_local_rank modulo the GPUs it sees) and makes the streams on it
static inline void backend_select_device(int node_local_rank) {
    if (backend_device >= 0) return;
    int count = 0;
    const cudaError_t status = cudaGetDeviceCount(&count);
    if (status != cudaSuccess || count < 1) {
        fprintf(stderr, "mosaic: error: no CUDA device found at %s:%d: %s (check nvidia-smi and CUDA_VISIBLE_DEVICES; "
                "the CPU build is ./train_tabpfn)\n", __FILE__, __LINE__,
                status != cudaSuccess ? cudaGetErrorString(status) : "0 devices");
        mosaic_exit(1);
    }
    backend_device = node_local_rank % count;
    CUDA_CHECK(cudaSetDevice(backend_device));
    CUDA_CHECK(cudaStreamCreateWithFlags(&mosaic_stream, cudaStreamNonBlocking));
    CUDA_CHECK(cudaStreamCreateWithFlags(&comm_stream, cudaStreamNonBlocking));
}

// threads size the host's OpenMP pool (the data prior still runs on the CPU); the cuBLAS handle
// is made now, not inside the first timed step
static inline void backend_init(int threads) {
#ifdef _OPENMP
    if (threads > 0) omp_set_num_threads(threads);
#else
    (void)threads;
#endif
    cublas_bound_handle();
}

// CPU threads used by host code: 1 without OpenMP
static inline int backend_threads(void) {
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
}

// waits for every op queued on the compute stream (and the communication stream, which every
// transfer joins back into it): step timing, before reading results
static inline void device_synchronize(void) {
    stream_wait(mosaic_stream, "the compute stream", __FILE__, __LINE__);
    if (comm_stream) stream_wait(comm_stream, "the communication stream", __FILE__, __LINE__);
}

// Sizes the reduction scratch for the largest shapes a model will run (rows of the largest
// (N, D) column sum and of the loss, D the widest bias or LayerNorm) and freezes it: a larger
// request later is an error, so nothing is allocated once the steps run.
static inline size_t ops_workspace_bound(long max_rows, int max_width) {
    const size_t colsum = (size_t)COLSUM_MAX_CHUNKS * 2 * max_width * sizeof(float);
    const size_t loss = (size_t)(max_rows > 0 ? max_rows : 1) * sizeof(float);
    const size_t sumsq = (size_t)SUMSQ_MAX_BLOCKS * sizeof(double);
    return colsum > loss ? (colsum > sumsq ? colsum : sumsq) : (loss > sumsq ? loss : sumsq);
}
static inline void ops_workspace_freeze(size_t bytes) {
    ops_workspace_reserve(bytes);
    ops_workspace_frozen = 1;
}

// the twin of ops_cpu.h's: the workspace at its largest for rows of up to max_rows and bias
// widths of up to max_width, then frozen, so that no op allocates once steps run
static inline void ops_reserve_scratch(long max_rows, int max_width) {
    ops_workspace_freeze(ops_workspace_bound(max_rows, max_width));
}

} // namespace gpu
