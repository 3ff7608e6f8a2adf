// CPU leaf ops of the all-to-all row strategies (row_a2a.h, row_composed.h). They move the
// head slices of independent attention problems, t = (b * C + c) * heads + h, between
//   the row side:     a rank's rows of every problem, (B, R, C, width) with head h at h * d
//   the problem side: the problems a rank owns as a virtual table (n_own, R_v, 1, width_v),
//                     whose rows are the train rows of every member of the a2a group in member
//                     order, then the test rows of every member in member order
// through the contiguous exchange buffers of one comm_alltoallv. On the row side the buffer is
// (n, per-problem chunk) in problem order (the members own consecutive problem ranges); on the
// problem side it is one chunk (n_own, ...) per member, at offset[m].
#pragma once
#include <omp.h>
#include "../model/common.h"
#include "member_rows.h"

// ----------------------------------------------------------------------------
// row side

// out (n, R + 2S, d) = per problem its q of rows [0, R), then k and v of the train rows [0, S);
// qkv (B, R, C, 3E)
static void gather_problem_qkv(float* out, const float* qkv, int B, int R, int C, int E, int heads, int S) {
    const int d = E / heads, n = B * C * heads;
    const long chunk = (long)(R + 2 * S) * d;
#pragma omp parallel for schedule(static)
    for (int t = 0; t < n; t++) {
        const int h = t % heads, bc = t / heads, c = bc % C, b = bc / C;
        const float* src = qkv + ((long)b * R * C + c) * 3 * E + (long)h * d; // row 0 of the problem
        float* q = out + t * chunk;
        float* k = q + (long)R * d;
        float* v = k + (long)S * d;
        for (int r = 0; r < R; r++) memcpy(q + (long)r * d, src + (long)r * C * 3 * E, d * sizeof(float));
        for (int r = 0; r < S; r++) {
            memcpy(k + (long)r * d, src + (long)r * C * 3 * E + E, d * sizeof(float));
            memcpy(v + (long)r * d, src + (long)r * C * 3 * E + 2 * E, d * sizeof(float));
        }
    }
}

// the reverse, overwriting: dqkv (B, R, C, 3E) from in (n, R + 2S, d); the k and v parts of the
// test rows (never keys) become 0
static void scatter_problem_qkv(float* dqkv, const float* in, int B, int R, int C, int E, int heads, int S) {
    const int d = E / heads, n = B * C * heads;
    const long chunk = (long)(R + 2 * S) * d;
#pragma omp parallel for schedule(static)
    for (int t = 0; t < n; t++) {
        const int h = t % heads, bc = t / heads, c = bc % C, b = bc / C;
        float* dst = dqkv + ((long)b * R * C + c) * 3 * E + (long)h * d;
        const float* dq = in + t * chunk;
        const float* dk = dq + (long)R * d;
        const float* dv = dk + (long)S * d;
        for (int r = 0; r < R; r++) {
            float* row = dst + (long)r * C * 3 * E;
            memcpy(row, dq + (long)r * d, d * sizeof(float));
            if (r < S) {
                memcpy(row + E, dk + (long)r * d, d * sizeof(float));
                memcpy(row + 2 * E, dv + (long)r * d, d * sizeof(float));
            } else {
                memset(row + E, 0, d * sizeof(float));
                memset(row + 2 * E, 0, d * sizeof(float));
            }
        }
    }
}

// o (B, R, C, E) and lse (B*C, heads, R) from in (n, R, d + 1): per problem its o rows, then its
// lse rows
static void scatter_problem_o_lse(float* o, float* lse, const float* in, int B, int R, int C, int E, int heads) {
    const int d = E / heads, n = B * C * heads;
    const long chunk = (long)R * (d + 1);
#pragma omp parallel for schedule(static)
    for (int t = 0; t < n; t++) {
        const int h = t % heads, bc = t / heads, c = bc % C, b = bc / C;
        float* dst = o + ((long)b * R * C + c) * E + (long)h * d;
        const float* src = in + t * chunk;
        for (int r = 0; r < R; r++) memcpy(dst + (long)r * C * E, src + (long)r * d, d * sizeof(float));
        // lse of problem t: (b*C + c, h) is row t of (B*C*heads, R)
        memcpy(lse + (long)t * R, src + (long)R * d, R * sizeof(float));
    }
}

// ----------------------------------------------------------------------------
// problem side

// qkv_v (n_own, R_v, 1, 3d) from the members' chunks (n_own, R_m + 2 S_m, d) at in + offset[m],
// laid out as gather_problem_qkv writes them. The k and v parts of test rows are left alone:
// no kernel reads them.
static void members_to_virtual_qkv(float* qkv_v, const float* in, const int* offset, const MemberRows* mr, int n_own,
                                   int R_v, int d) {
#pragma omp parallel for collapse(2) schedule(static)
    for (int t = 0; t < n_own; t++)
        for (int m = 0; m < mr->count; m++) {
            const int R = mr->rows[m], S = mr->train[m];
            const float* q = in + offset[m] + (long)t * (R + 2 * S) * d;
            const float* k = q + (long)R * d;
            const float* v = k + (long)S * d;
            float* dst = qkv_v + (long)t * R_v * 3 * d;
            for (int r = 0; r < R; r++) {
                float* row = dst + (long)member_vrow(mr, m, r) * 3 * d;
                memcpy(row, q + (long)r * d, d * sizeof(float));
                if (r < S) {
                    memcpy(row + d, k + (long)r * d, d * sizeof(float));
                    memcpy(row + 2 * d, v + (long)r * d, d * sizeof(float));
                }
            }
        }
}

// the reverse: the members' chunks (n_own, R_m + 2 S_m, d) at out + offset[m] from
// dqkv_v (n_own, R_v, 1, 3d), dq of every row, dk and dv of the train rows
static void virtual_to_members_qkv(float* out, const int* offset, const float* dqkv_v, const MemberRows* mr, int n_own,
                                   int R_v, int d) {
#pragma omp parallel for collapse(2) schedule(static)
    for (int t = 0; t < n_own; t++)
        for (int m = 0; m < mr->count; m++) {
            const int R = mr->rows[m], S = mr->train[m];
            float* q = out + offset[m] + (long)t * (R + 2 * S) * d;
            float* k = q + (long)R * d;
            float* v = k + (long)S * d;
            const float* src = dqkv_v + (long)t * R_v * 3 * d;
            for (int r = 0; r < R; r++) {
                const float* row = src + (long)member_vrow(mr, m, r) * 3 * d;
                memcpy(q + (long)r * d, row, d * sizeof(float));
                if (r < S) {
                    memcpy(k + (long)r * d, row + d, d * sizeof(float));
                    memcpy(v + (long)r * d, row + 2 * d, d * sizeof(float));
                }
            }
        }
}

// x_v (n_own, R_v, 1, d) from the members' chunks (n_own, R_m, d) at in + offset[m]
static void members_to_virtual_rows(float* x_v, const float* in, const int* offset, const MemberRows* mr, int n_own,
                                    int R_v, int d) {
#pragma omp parallel for collapse(2) schedule(static)
    for (int t = 0; t < n_own; t++)
        for (int m = 0; m < mr->count; m++) {
            const float* src = in + offset[m] + (long)t * mr->rows[m] * d;
            for (int r = 0; r < mr->rows[m]; r++)
                memcpy(x_v + ((long)t * R_v + member_vrow(mr, m, r)) * d, src + (long)r * d, d * sizeof(float));
        }
}

// the members' chunks (n_own, R_m, d + 1) at out + offset[m] from o_v (n_own, R_v, 1, d) and
// lse_v (n_own, 1, R_v): per problem the member's o rows, then its lse rows
static void virtual_to_members_o_lse(float* out, const int* offset, const float* o_v, const float* lse_v,
                                     const MemberRows* mr, int n_own, int R_v, int d) {
#pragma omp parallel for collapse(2) schedule(static)
    for (int t = 0; t < n_own; t++)
        for (int m = 0; m < mr->count; m++) {
            const int R = mr->rows[m];
            float* dst = out + offset[m] + (long)t * R * (d + 1);
            for (int r = 0; r < R; r++) {
                const long vr = (long)t * R_v + member_vrow(mr, m, r);
                memcpy(dst + (long)r * d, o_v + vr * d, d * sizeof(float));
                dst[(long)R * d + r] = lse_v[vr];
            }
        }
}
