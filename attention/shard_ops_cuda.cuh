// CUDA twins of attention/shard_ops_cpu.h: the ops that move row-attention operands between
// the activation layout and the contiguous buffers the communicator sends. Same names and
// parameter lists, in namespace gpu; pure data movement, so every output is exact.
// Each kernel is one grid-stride loop with a thread per OUTPUT element (consecutive threads
// write consecutive floats), which also makes the adding op race-free: no two threads touch
// the same element.
#pragma once
#include "../model/ops_cuda.cuh"

namespace gpu {

static __global__ void __launch_bounds__(ELEMENTWISE_BLOCK)
pack_kv_rows_kernel(float* kv, const float* qkv, int R, int C, int E, int row0, int rows, long n) {
    const int E2 = 2 * E;
    GRID_STRIDE_LOOP(i, n) {
        const int e = (int)(i % E2);
        const long cell = i / E2; // (b * rows + r) * C + c
        const int c = (int)(cell % C);
        const long br = cell / C;
        const int r = (int)(br % rows);
        const long b = br / rows;
        kv[i] = qkv[((b * R + row0 + r) * C + c) * 3 * E + E + e];
    }
}

// kv (B, rows, C, 2E) = the k and v parts of rows [row0, row0 + rows) of qkv (B, R, C, 3E)
static inline void pack_kv_rows(float* kv, const float* qkv, int B, int R, int C, int E, int row0, int rows) {
    const long n = (long)B * rows * C * 2 * E;
    if (n > 0)
        MOSAIC_LAUNCH(pack_kv_rows_kernel, elementwise_grid(n), ELEMENTWISE_BLOCK, 0, mosaic_stream, kv, qkv, R, C, E, row0,
                      rows, n);
}

static __global__ void __launch_bounds__(ELEMENTWISE_BLOCK)
unpack_kv_rows_add_kernel(float* dqkv, const float* dkv, int R, int C, int E, int row0, int rows, long n) {
    const int E2 = 2 * E;
    GRID_STRIDE_LOOP(i, n) {
        const int e = (int)(i % E2);
        const long cell = i / E2;
        const int c = (int)(cell % C);
        const long br = cell / C;
        const int r = (int)(br % rows);
        const long b = br / rows;
        dqkv[((b * R + row0 + r) * C + c) * 3 * E + E + e] += dkv[i];
    }
}

// the reverse, adding: dqkv k and v parts of rows [row0, row0 + rows) += dkv (B, rows, C, 2E)
static inline void unpack_kv_rows_add(float* dqkv, const float* dkv, int B, int R, int C, int E, int row0, int rows) {
    const long n = (long)B * rows * C * 2 * E;
    if (n > 0)
        MOSAIC_LAUNCH(unpack_kv_rows_add_kernel, elementwise_grid(n), ELEMENTWISE_BLOCK, 0, mosaic_stream, dqkv, dkv, R, C, E,
                      row0, rows, n);
}

static __global__ void __launch_bounds__(ELEMENTWISE_BLOCK)
gather_problem_rows_kernel(float* out, const float* buf, int R, int C, int width, int offset, int heads, int d, int t0,
                           int row0, int rows, long n) {
    GRID_STRIDE_LOOP(i, n) {
        const int e = (int)(i % d);
        const long tr = i / d; // (t - t0) * rows + r
        const int r = (int)(tr % rows), t = t0 + (int)(tr / rows);
        const int h = t % heads, bc = t / heads, c = bc % C, b = bc / C;
        out[i] = buf[(((long)b * R + row0 + r) * C + c) * width + offset + (long)h * d + e];
    }
}

// Head slices of independent attention problems. Problem t = (b * C + c) * heads + h of a
// (B, R, C, width) buffer is the sequence of rows r, each d = head_dim floats at channel
// offset + h * d. out (t1 - t0, rows, d) = problems [t0, t1), rows [row0, row0 + rows).
static inline void gather_problem_rows(float* out, const float* buf, int R, int C, int width, int offset, int heads, int d,
                                       int t0, int t1, int row0, int rows) {
    const long n = (long)(t1 - t0) * rows * d;
    if (n > 0)
        MOSAIC_LAUNCH(gather_problem_rows_kernel, elementwise_grid(n), ELEMENTWISE_BLOCK, 0, mosaic_stream, out, buf, R, C, width,
                      offset, heads, d, t0, row0, rows, n);
}

static __global__ void __launch_bounds__(ELEMENTWISE_BLOCK)
copy_blocks_kernel(float* dst, long dst_stride, const float* src, long src_stride, long len, long n) {
    GRID_STRIDE_LOOP(i, n) {
        const long block = i / len, j = i % len;
        dst[block * dst_stride + j] = src[block * src_stride + j];
    }
}

// strided block copy: dst[i * dst_stride + j] = src[i * src_stride + j], i < n_blocks, j < len
static inline void copy_blocks(float* dst, long dst_stride, const float* src, long src_stride, long n_blocks, long len) {
    const long n = n_blocks * len;
    if (n > 0)
        MOSAIC_LAUNCH(copy_blocks_kernel, elementwise_grid(n), ELEMENTWISE_BLOCK, 0, mosaic_stream, dst, dst_stride, src,
                      src_stride, len, n);
}

} // namespace gpu
