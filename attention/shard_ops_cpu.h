// CPU leaf ops that move row-attention operands between the activation layout and the
// contiguous buffers the communicator sends. The strategies (row_*.h) call only these, the
// flash kernels, add_inplace and device_memset_zero (model/ops.h) and the communicator; the
// CUDA build has twins with the same names.
#pragma once
#include <omp.h>
#include "../model/common.h"

// kv (B, rows, C, 2E) = the k and v parts of rows [row0, row0 + rows) of qkv (B, R, C, 3E)
static void pack_kv_rows(float* kv, const float* qkv, int B, int R, int C, int E, int row0, int rows) {
#pragma omp parallel for collapse(2) schedule(static)
    for (int b = 0; b < B; b++)
        for (int r = 0; r < rows; r++)
            for (int c = 0; c < C; c++)
                memcpy(kv + (((long)b * rows + r) * C + c) * 2 * E, qkv + (((long)b * R + row0 + r) * C + c) * 3 * E + E,
                       2 * E * sizeof(float));
}

// the reverse, adding: dqkv k and v parts of rows [row0, row0 + rows) += dkv (B, rows, C, 2E)
static void unpack_kv_rows_add(float* dqkv, const float* dkv, int B, int R, int C, int E, int row0, int rows) {
#pragma omp parallel for collapse(2) schedule(static)
    for (int b = 0; b < B; b++)
        for (int r = 0; r < rows; r++)
            for (int c = 0; c < C; c++) {
                float* dst = dqkv + (((long)b * R + row0 + r) * C + c) * 3 * E + E;
                const float* src = dkv + (((long)b * rows + r) * C + c) * 2 * E;
                for (int e = 0; e < 2 * E; e++) dst[e] += src[e];
            }
}

// Head slices of independent attention problems. Problem t = (b * C + c) * heads + h of a
// (B, R, C, width) buffer is the sequence of rows r, each d = head_dim floats at channel
// offset + h * d. out (t1 - t0, rows, d) = problems [t0, t1), rows [row0, row0 + rows).
static void gather_problem_rows(float* out, const float* buf, int R, int C, int width, int offset, int heads, int d,
                                int t0, int t1, int row0, int rows) {
#pragma omp parallel for schedule(static)
    for (int t = t0; t < t1; t++) {
        const int h = t % heads, bc = t / heads, c = bc % C, b = bc / C;
        for (int r = 0; r < rows; r++)
            memcpy(out + ((long)(t - t0) * rows + r) * d,
                   buf + (((long)b * R + row0 + r) * C + c) * width + offset + (long)h * d, d * sizeof(float));
    }
}

// strided block copy: dst[i * dst_stride + j] = src[i * src_stride + j], i < n_blocks, j < len
static void copy_blocks(float* dst, long dst_stride, const float* src, long src_stride, long n_blocks, long len) {
#pragma omp parallel for schedule(static)
    for (long i = 0; i < n_blocks; i++) memcpy(dst + i * dst_stride, src + i * src_stride, len * sizeof(float));
}
