// CUDA twins of attention/a2a_ops_cpu.h: the leaf ops of the all-to-all row strategies, which
// move the head slices of independent attention problems t = (b * C + c) * heads + h between the
// row side (B, R, C, width) and the problem side (the owned problems as a virtual table whose
// rows are every member's train rows, then every member's test rows), through the contiguous
// buffers of one comm_alltoallv. Same names and parameter lists, in namespace gpu; pure data
// movement, so every output is exact.
//
// Row side: one grid-stride loop with a thread per element of the contiguous buffer.
// Problem side: a block per (problem, member), threads striding over that member's chunk, which
// is contiguous in the exchange buffer. The host-side member table (MemberRows, offset[]) reaches
// the kernels without any allocation or copy in the step loop: it is packed into one struct
// passed BY VALUE as a kernel parameter (A2AMembers, 20 KB). CUDA 12.1+ on sm_70+ accepts kernel
// parameters up to 32764 bytes (the 4 KB limit of older toolkits would reject it); the struct
// is __grid_constant__ so indexing it by member reads the parameter space directly instead of
// copying 20 KB into every thread's local memory.
#pragma once
#include "../model/ops_cuda.cuh"
#include "member_rows.h"

#if defined(MOSAIC_SIMT_EMULATION) && !defined(__grid_constant__)
#define __grid_constant__ // on the CPU a by-value parameter is an ordinary argument
#endif

namespace gpu {

struct A2AMembers {
    MemberRows mr;                // rows, train rows, first virtual train and test row of each member
    int offset[A2A_MAX_MEMBERS];  // where member m's chunk starts in the problem-side buffer
};
// the launch adds at most a few pointers and ints to the struct
static_assert(sizeof(A2AMembers) + 64 <= 32764, "A2AMembers exceeds the 32764-byte kernel parameter limit");

static inline void a2a_members(A2AMembers* members, const int* offset, const MemberRows* mr) {
    MOSAIC_CHECK(mr->count >= 0 && mr->count <= A2A_MAX_MEMBERS, "a2a group larger than A2A_MAX_MEMBERS");
    memcpy(&members->mr, mr, sizeof(MemberRows));
    memset(members->offset, 0, sizeof(members->offset));
    if (offset) memcpy(members->offset, offset, (size_t)mr->count * sizeof(int));
}

enum { A2A_BLOCK = 128 };

// ----------------------------------------------------------------------------
// row side

// row j of a problem's (R + 2S, d) chunk: q of row j, k of row j - R, or v of row j - R - S
static __device__ __forceinline__ void qkv_chunk_row(int j, int R, int S, int* r, int* part) {
    *part = j < R ? 0 : (j < R + S ? 1 : 2);
    *r = j - (*part == 0 ? 0 : (*part == 1 ? R : R + S));
}

static __global__ void __launch_bounds__(ELEMENTWISE_BLOCK)
gather_problem_qkv_kernel(float* out, const float* qkv, int R, int C, int E, int heads, int S, long n) {
    const int d = E / heads;
    const long chunk = (long)(R + 2 * S) * d;
    GRID_STRIDE_LOOP(i, n) {
        const int t = (int)(i / chunk);
        const long j = i % chunk;
        const int e = (int)(j % d);
        int r, part;
        qkv_chunk_row((int)(j / d), R, S, &r, &part);
        const int h = t % heads, bc = t / heads, c = bc % C, b = bc / C;
        out[i] = qkv[(((long)b * R + r) * C + c) * 3 * E + (long)part * E + (long)h * d + e];
    }
}

// out (n, R + 2S, d) = per problem its q of rows [0, R), then k and v of the train rows [0, S);
// qkv (B, R, C, 3E)
static inline void gather_problem_qkv(float* out, const float* qkv, int B, int R, int C, int E, int heads, int S) {
    const long n = (long)B * C * heads * (R + 2 * S) * (E / heads);
    if (n > 0)
        MOSAIC_LAUNCH(gather_problem_qkv_kernel, elementwise_grid(n), ELEMENTWISE_BLOCK, 0, mosaic_stream, out, qkv, R, C, E,
                      heads, S, n);
}

// a thread per element of dqkv: every element is written (test rows' k and v with 0)
static __global__ void __launch_bounds__(ELEMENTWISE_BLOCK)
scatter_problem_qkv_kernel(float* dqkv, const float* in, int R, int C, int E, int heads, int S, long n) {
    const int d = E / heads;
    const long chunk = (long)(R + 2 * S) * d;
    GRID_STRIDE_LOOP(i, n) {
        const int w = (int)(i % (3 * E)); // channel within the (3E) row
        const long cell = i / (3 * E);    // (b * R + r) * C + c
        const int c = (int)(cell % C);
        const long br = cell / C;
        const int r = (int)(br % R), b = (int)(br / R);
        const int part = w / E, h = (w % E) / d, e = w % d;
        const long t = ((long)b * C + c) * heads + h;
        const float* src = in + t * chunk;
        float value;
        if (part == 0)
            value = src[(long)r * d + e];
        else
            value = r < S ? src[(long)R * d + (long)(part - 1) * S * d + (long)r * d + e] : 0.0f;
        dqkv[i] = value;
    }
}

// the reverse, overwriting: dqkv (B, R, C, 3E) from in (n, R + 2S, d); the k and v parts of the
// test rows (never keys) become 0
static inline void scatter_problem_qkv(float* dqkv, const float* in, int B, int R, int C, int E, int heads, int S) {
    const long n = (long)B * R * C * 3 * E;
    if (n > 0)
        MOSAIC_LAUNCH(scatter_problem_qkv_kernel, elementwise_grid(n), ELEMENTWISE_BLOCK, 0, mosaic_stream, dqkv, in, R, C, E,
                      heads, S, n);
}

static __global__ void __launch_bounds__(ELEMENTWISE_BLOCK)
scatter_problem_o_lse_kernel(float* o, float* lse, const float* in, int R, int C, int E, int heads, long n) {
    const int d = E / heads;
    const long chunk = (long)R * (d + 1);
    GRID_STRIDE_LOOP(i, n) {
        const int t = (int)(i / chunk);
        const long j = i % chunk;
        if (j < (long)R * d) {
            const int r = (int)(j / d), e = (int)(j % d);
            const int h = t % heads, bc = t / heads, c = bc % C, b = bc / C;
            o[(((long)b * R + r) * C + c) * E + (long)h * d + e] = in[i];
        } else {
            // lse of problem t: (b*C + c, h) is row t of (B*C*heads, R)
            lse[(long)t * R + (j - (long)R * d)] = in[i];
        }
    }
}

// o (B, R, C, E) and lse (B*C, heads, R) from in (n, R, d + 1): per problem its o rows, then its
// lse rows
static inline void scatter_problem_o_lse(float* o, float* lse, const float* in, int B, int R, int C, int E, int heads) {
    const long n = (long)B * C * heads * R * (E / heads + 1);
    if (n > 0)
        MOSAIC_LAUNCH(scatter_problem_o_lse_kernel, elementwise_grid(n), ELEMENTWISE_BLOCK, 0, mosaic_stream, o, lse, in, R, C, E,
                      heads, n);
}

// ----------------------------------------------------------------------------
// problem side: block = (problem t, member m), t = blockIdx.x / count, m = blockIdx.x % count

static __global__ void __launch_bounds__(A2A_BLOCK)
members_to_virtual_qkv_kernel(float* qkv_v, const float* in, const __grid_constant__ A2AMembers members, int R_v, int d) {
    const MemberRows* mr = &members.mr;
    const int m = blockIdx.x % mr->count, t = blockIdx.x / mr->count;
    const int R = mr->rows[m], S = mr->train[m];
    const float* src = in + members.offset[m] + (long)t * (R + 2 * S) * d;
    float* dst = qkv_v + (long)t * R_v * 3 * d;
    for (long i = threadIdx.x; i < (long)(R + 2 * S) * d; i += A2A_BLOCK) {
        int r, part;
        qkv_chunk_row((int)(i / d), R, S, &r, &part);
        dst[(long)member_vrow(mr, m, r) * 3 * d + part * d + i % d] = src[i];
    }
}

// qkv_v (n_own, R_v, 1, 3d) from the members' chunks (n_own, R_m + 2 S_m, d) at in + offset[m],
// laid out as gather_problem_qkv writes them. The k and v parts of test rows are left alone:
// no kernel reads them.
static inline void members_to_virtual_qkv(float* qkv_v, const float* in, const int* offset, const MemberRows* mr, int n_own,
                                          int R_v, int d) {
    if (n_own <= 0 || mr->count <= 0) return;
    A2AMembers members;
    a2a_members(&members, offset, mr);
    MOSAIC_LAUNCH(members_to_virtual_qkv_kernel, n_own * mr->count, A2A_BLOCK, 0, mosaic_stream, qkv_v, in, members, R_v, d);
}

static __global__ void __launch_bounds__(A2A_BLOCK)
virtual_to_members_qkv_kernel(float* out, const float* dqkv_v, const __grid_constant__ A2AMembers members, int R_v, int d) {
    const MemberRows* mr = &members.mr;
    const int m = blockIdx.x % mr->count, t = blockIdx.x / mr->count;
    const int R = mr->rows[m], S = mr->train[m];
    float* dst = out + members.offset[m] + (long)t * (R + 2 * S) * d;
    const float* src = dqkv_v + (long)t * R_v * 3 * d;
    for (long i = threadIdx.x; i < (long)(R + 2 * S) * d; i += A2A_BLOCK) {
        int r, part;
        qkv_chunk_row((int)(i / d), R, S, &r, &part);
        dst[i] = src[(long)member_vrow(mr, m, r) * 3 * d + part * d + i % d];
    }
}

// the reverse: the members' chunks (n_own, R_m + 2 S_m, d) at out + offset[m] from
// dqkv_v (n_own, R_v, 1, 3d), dq of every row, dk and dv of the train rows
static inline void virtual_to_members_qkv(float* out, const int* offset, const float* dqkv_v, const MemberRows* mr, int n_own,
                                          int R_v, int d) {
    if (n_own <= 0 || mr->count <= 0) return;
    A2AMembers members;
    a2a_members(&members, offset, mr);
    MOSAIC_LAUNCH(virtual_to_members_qkv_kernel, n_own * mr->count, A2A_BLOCK, 0, mosaic_stream, out, dqkv_v, members, R_v, d);
}

static __global__ void __launch_bounds__(A2A_BLOCK)
members_to_virtual_rows_kernel(float* x_v, const float* in, const __grid_constant__ A2AMembers members, int R_v, int d) {
    const MemberRows* mr = &members.mr;
    const int m = blockIdx.x % mr->count, t = blockIdx.x / mr->count;
    const int R = mr->rows[m];
    const float* src = in + members.offset[m] + (long)t * R * d;
    for (long i = threadIdx.x; i < (long)R * d; i += A2A_BLOCK)
        x_v[((long)t * R_v + member_vrow(mr, m, (int)(i / d))) * d + i % d] = src[i];
}

// x_v (n_own, R_v, 1, d) from the members' chunks (n_own, R_m, d) at in + offset[m]
static inline void members_to_virtual_rows(float* x_v, const float* in, const int* offset, const MemberRows* mr, int n_own,
                                           int R_v, int d) {
    if (n_own <= 0 || mr->count <= 0) return;
    A2AMembers members;
    a2a_members(&members, offset, mr);
    MOSAIC_LAUNCH(members_to_virtual_rows_kernel, n_own * mr->count, A2A_BLOCK, 0, mosaic_stream, x_v, in, members, R_v, d);
}

static __global__ void __launch_bounds__(A2A_BLOCK)
virtual_to_members_o_lse_kernel(float* out, const float* o_v, const float* lse_v, const __grid_constant__ A2AMembers members,
                                int R_v, int d) {
    const MemberRows* mr = &members.mr;
    const int m = blockIdx.x % mr->count, t = blockIdx.x / mr->count;
    const int R = mr->rows[m];
    float* dst = out + members.offset[m] + (long)t * R * (d + 1);
    for (long i = threadIdx.x; i < (long)R * (d + 1); i += A2A_BLOCK) {
        if (i < (long)R * d) {
            dst[i] = o_v[((long)t * R_v + member_vrow(mr, m, (int)(i / d))) * d + i % d];
        } else {
            dst[i] = lse_v[(long)t * R_v + member_vrow(mr, m, (int)(i - (long)R * d))];
        }
    }
}

// the members' chunks (n_own, R_m, d + 1) at out + offset[m] from o_v (n_own, R_v, 1, d) and
// lse_v (n_own, 1, R_v): per problem the member's o rows, then its lse rows
static inline void virtual_to_members_o_lse(float* out, const int* offset, const float* o_v, const float* lse_v,
                                            const MemberRows* mr, int n_own, int R_v, int d) {
    if (n_own <= 0 || mr->count <= 0) return;
    A2AMembers members;
    a2a_members(&members, offset, mr);
    MOSAIC_LAUNCH(virtual_to_members_o_lse_kernel, n_own * mr->count, A2A_BLOCK, 0, mosaic_stream, out, o_v, lse_v, members,
                  R_v, d);
}

} // namespace gpu
