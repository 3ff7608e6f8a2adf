// Flash attention on the CPU: tiled, online softmax, log-sum-exp per query.
// Neither direction ever holds more than one (Q tile x KV tile) block of scores.
//
// Tensors are reached through an AxisLayout, so one kernel serves every axis: sequence n of
// the batch starts at (n / n_inner) * outer_stride + (n % n_inner) * inner_stride, consecutive
// positions are seq_stride apart, head h sits at offset h * head_dim, and the head_dim
// elements are contiguous. LSE is (n_batch, heads, q_len), contiguous.
#pragma once
#include <omp.h>
#include "../model/common.h"

typedef struct {
    long outer_stride; // elements between sequences n and n + n_inner
    long inner_stride; // elements between sequences n and n + 1 within one outer block
    long seq_stride;   // elements between consecutive positions of one sequence
    int n_inner;       // sequences per outer block
} AxisLayout;

static inline long axis_offset(AxisLayout layout, long n) {
    return (n / layout.n_inner) * layout.outer_stride + (n % layout.n_inner) * layout.inner_stride;
}

// a contiguous (n_batch, seq, heads * head_dim) buffer, e.g. a received K/V block
static inline AxisLayout axis_layout_contiguous(int seq_len, int heads, int head_dim) {
    AxisLayout layout = {(long)seq_len * heads * head_dim, 0, (long)heads * head_dim, 1};
    return layout;
}

enum { FA_Q_TILE = 32, FA_KV_TILE = 64, FA_MAX_HEAD_DIM = 128 };

template <typename T>
static inline T fa_dot(const T* a, const T* b, int d) {
    T acc = 0;
#pragma omp simd reduction(+ : acc)
    for (int i = 0; i < d; i++) acc += a[i] * b[i];
    return acc;
}

template <typename T>
static inline void fa_axpy(T* y, T alpha, const T* x, int d) {
#pragma omp simd
    for (int i = 0; i < d; i++) y[i] += alpha * x[i];
}

// out = softmax(scale * q k^T) v over kv positions [0, kv_len); lse = log-sum-exp of the scores.
// kv_len == 0 gives out = 0 and lse = -inf (an empty key set, merged away by lse_merge).
template <typename T>
static void flash_attention_forward(T* out, T* lse, const T* q, const T* k, const T* v, AxisLayout q_layout,
                                    AxisLayout kv_layout, AxisLayout out_layout, int n_batch, int heads, int q_len,
                                    int kv_len, int head_dim, T scale) {
    MOSAIC_CHECK(head_dim <= FA_MAX_HEAD_DIM, "head size above FA_MAX_HEAD_DIM: use more heads");
    const int d = head_dim;
    const int q_tiles = ceil_div(q_len, FA_Q_TILE);
    const long work_items = (long)n_batch * heads * q_tiles;
#pragma omp parallel for schedule(dynamic, 4)
    for (long w = 0; w < work_items; w++) {
        const int tile = (int)(w % q_tiles);
        const int h = (int)((w / q_tiles) % heads);
        const long n = w / ((long)q_tiles * heads);
        const int i0 = tile * FA_Q_TILE;
        const int nq = q_len - i0 < FA_Q_TILE ? q_len - i0 : FA_Q_TILE;
        const T* qb = q + axis_offset(q_layout, n) + (long)h * d;
        const T* kb = k + axis_offset(kv_layout, n) + (long)h * d;
        const T* vb = v + axis_offset(kv_layout, n) + (long)h * d;

        T q_tile[FA_Q_TILE][FA_MAX_HEAD_DIM];  // pre-scaled queries
        T acc[FA_Q_TILE][FA_MAX_HEAD_DIM];     // unnormalised outputs
        T k_tile[FA_KV_TILE][FA_MAX_HEAD_DIM]; // contiguous copies: the axis may be strided
        T v_tile[FA_KV_TILE][FA_MAX_HEAD_DIM];
        T s[FA_KV_TILE];
        T row_max[FA_Q_TILE], row_sum[FA_Q_TILE];
        for (int i = 0; i < nq; i++) {
            const T* qi = qb + (long)(i0 + i) * q_layout.seq_stride;
            for (int e = 0; e < d; e++) q_tile[i][e] = qi[e] * scale;
            for (int e = 0; e < d; e++) acc[i][e] = 0;
            row_max[i] = -INFINITY;
            row_sum[i] = 0;
        }
        for (int j0 = 0; j0 < kv_len; j0 += FA_KV_TILE) {
            const int nk = kv_len - j0 < FA_KV_TILE ? kv_len - j0 : FA_KV_TILE;
            for (int j = 0; j < nk; j++) {
                memcpy(k_tile[j], kb + (long)(j0 + j) * kv_layout.seq_stride, d * sizeof(T));
                memcpy(v_tile[j], vb + (long)(j0 + j) * kv_layout.seq_stride, d * sizeof(T));
            }
            for (int i = 0; i < nq; i++) {
                T m = row_max[i];
                for (int j = 0; j < nk; j++) {
                    s[j] = fa_dot(q_tile[i], k_tile[j], d);
                    m = s[j] > m ? s[j] : m;
                }
                // rescale what was accumulated under the old maximum
                T correction = exp(row_max[i] - m);
                T sum = row_sum[i] * correction;
                for (int e = 0; e < d; e++) acc[i][e] *= correction;
                for (int j = 0; j < nk; j++) {
                    T p = exp(s[j] - m);
                    sum += p;
                    fa_axpy(acc[i], p, v_tile[j], d);
                }
                row_max[i] = m;
                row_sum[i] = sum;
            }
        }
        T* ob = out + axis_offset(out_layout, n) + (long)h * d;
        T* lb = lse + (n * heads + h) * (long)q_len + i0;
        for (int i = 0; i < nq; i++) {
            T* oi = ob + (long)(i0 + i) * out_layout.seq_stride;
            if (kv_len == 0) {
                for (int e = 0; e < d; e++) oi[e] = 0;
                lb[i] = -INFINITY;
                continue;
            }
            T inv = (T)1 / row_sum[i];
            for (int e = 0; e < d; e++) oi[e] = acc[i][e] * inv;
            lb[i] = row_max[i] + log(row_sum[i]);
        }
    }
}

// Backward from the saved output and lse. ACCUMULATES into dq, dk, dv (callers zero them),
// so that a sharded caller can run it once per key block. Work is split over
// (sequence, head) pairs, each owned by one thread, so the accumulations never race.
// out and lse are the FINAL (all keys) results; for one key block of a sharded run this
// still gives that block's exact share of the gradient.
template <typename T>
static void flash_attention_backward(T* dq, T* dk, T* dv, const T* dout, const T* out, const T* lse, const T* q,
                                     const T* k, const T* v, AxisLayout q_layout, AxisLayout kv_layout,
                                     AxisLayout out_layout, int n_batch, int heads, int q_len, int kv_len,
                                     int head_dim, T scale) {
    MOSAIC_CHECK(head_dim <= FA_MAX_HEAD_DIM, "head size above FA_MAX_HEAD_DIM: use more heads");
    const int d = head_dim;
    const long work_items = (long)n_batch * heads;
#pragma omp parallel for schedule(dynamic, 1)
    for (long w = 0; w < work_items; w++) {
        const int h = (int)(w % heads);
        const long n = w / heads;
        const long q_base = axis_offset(q_layout, n) + (long)h * d;
        const long kv_base = axis_offset(kv_layout, n) + (long)h * d;
        const long out_base = axis_offset(out_layout, n) + (long)h * d;
        const T* lb = lse + (n * heads + h) * (long)q_len;

        T k_tile[FA_KV_TILE][FA_MAX_HEAD_DIM], v_tile[FA_KV_TILE][FA_MAX_HEAD_DIM];
        T dk_tile[FA_KV_TILE][FA_MAX_HEAD_DIM], dv_tile[FA_KV_TILE][FA_MAX_HEAD_DIM];
        T q_row[FA_MAX_HEAD_DIM], do_row[FA_MAX_HEAD_DIM], dq_row[FA_MAX_HEAD_DIM];
        for (int j0 = 0; j0 < kv_len; j0 += FA_KV_TILE) {
            const int nk = kv_len - j0 < FA_KV_TILE ? kv_len - j0 : FA_KV_TILE;
            for (int j = 0; j < nk; j++) {
                memcpy(k_tile[j], k + kv_base + (long)(j0 + j) * kv_layout.seq_stride, d * sizeof(T));
                memcpy(v_tile[j], v + kv_base + (long)(j0 + j) * kv_layout.seq_stride, d * sizeof(T));
                for (int e = 0; e < d; e++) dk_tile[j][e] = dv_tile[j][e] = 0;
            }
            for (int i = 0; i < q_len; i++) {
                const T* qi = q + q_base + (long)i * q_layout.seq_stride;
                const T* doi = dout + out_base + (long)i * out_layout.seq_stride;
                const T* oi = out + out_base + (long)i * out_layout.seq_stride;
                memcpy(q_row, qi, d * sizeof(T));
                memcpy(do_row, doi, d * sizeof(T));
                // D_i = rowsum(dO * O): the softmax Jacobian's diagonal correction
                T D = fa_dot(do_row, oi, d);
                T lse_i = lb[i];
                for (int e = 0; e < d; e++) dq_row[e] = 0;
                for (int j = 0; j < nk; j++) {
                    T p = exp(scale * fa_dot(q_row, k_tile[j], d) - lse_i);
                    fa_axpy(dv_tile[j], p, do_row, d);
                    T ds = p * (fa_dot(do_row, v_tile[j], d) - D) * scale;
                    fa_axpy(dq_row, ds, k_tile[j], d);
                    fa_axpy(dk_tile[j], ds, q_row, d);
                }
                T* dqi = dq + q_base + (long)i * q_layout.seq_stride;
                for (int e = 0; e < d; e++) dqi[e] += dq_row[e];
            }
            for (int j = 0; j < nk; j++) {
                T* dkj = dk + kv_base + (long)(j0 + j) * kv_layout.seq_stride;
                T* dvj = dv + kv_base + (long)(j0 + j) * kv_layout.seq_stride;
                for (int e = 0; e < d; e++) {
                    dkj[e] += dk_tile[j][e];
                    dvj[e] += dv_tile[j][e];
                }
            }
        }
    }
}

// Merge a partial result (out_b, lse_b) over a disjoint key set into (out, lse), in place:
// L = max(La, Lb) + log1p(exp(-|La - Lb|)); O = exp(La - L) Oa + exp(Lb - L) Ob.
// An empty key set (lse = -inf) leaves the other side unchanged.
template <typename T>
static void lse_merge(T* out, T* lse, const T* out_b, const T* lse_b, AxisLayout out_layout, AxisLayout out_b_layout,
                      int n_batch, int heads, int q_len, int head_dim) {
#pragma omp parallel for schedule(static)
    for (long w = 0; w < (long)n_batch * heads; w++) {
        const int h = (int)(w % heads);
        const long n = w / heads;
        for (int i = 0; i < q_len; i++) {
            T la = lse[w * q_len + i], lb = lse_b[w * q_len + i];
            if (lb == -INFINITY) continue;
            T* oa = out + axis_offset(out_layout, n) + (long)h * head_dim + (long)i * out_layout.seq_stride;
            const T* ob = out_b + axis_offset(out_b_layout, n) + (long)h * head_dim + (long)i * out_b_layout.seq_stride;
            if (la == -INFINITY) {
                for (int e = 0; e < head_dim; e++) oa[e] = ob[e];
                lse[w * q_len + i] = lb;
                continue;
            }
            T mx = la > lb ? la : lb;
            T l = mx + log1p(exp(-fabs(la - lb)));
            T wa = exp(la - l), wb = exp(lb - l);
            for (int e = 0; e < head_dim; e++) oa[e] = wa * oa[e] + wb * ob[e];
            lse[w * q_len + i] = l;
        }
    }
}

// ----------------------------------------------------------------------------
// naive attention: the reference the tests hold the flash kernels to. Stores the full
// score matrix, one (sequence, head) at a time, in double.

template <typename T>
static void naive_attention_forward(T* out, T* lse, const T* q, const T* k, const T* v, AxisLayout q_layout,
                                    AxisLayout kv_layout, AxisLayout out_layout, int n_batch, int heads, int q_len,
                                    int kv_len, int head_dim, double scale) {
    double* p = (double*)mallocCheck((size_t)(kv_len > 0 ? kv_len : 1) * sizeof(double));
    for (long n = 0; n < n_batch; n++)
        for (int h = 0; h < heads; h++)
            for (int i = 0; i < q_len; i++) {
                const T* qi = q + axis_offset(q_layout, n) + (long)h * head_dim + (long)i * q_layout.seq_stride;
                double m = -INFINITY;
                for (int j = 0; j < kv_len; j++) {
                    const T* kj = k + axis_offset(kv_layout, n) + (long)h * head_dim + (long)j * kv_layout.seq_stride;
                    double s = 0.0;
                    for (int e = 0; e < head_dim; e++) s += (double)qi[e] * kj[e];
                    p[j] = s * scale;
                    m = p[j] > m ? p[j] : m;
                }
                double sum = 0.0;
                for (int j = 0; j < kv_len; j++) sum += exp(p[j] - m);
                T* oi = out + axis_offset(out_layout, n) + (long)h * head_dim + (long)i * out_layout.seq_stride;
                for (int e = 0; e < head_dim; e++) {
                    double acc = 0.0;
                    for (int j = 0; j < kv_len; j++)
                        acc += exp(p[j] - m) / sum *
                               v[axis_offset(kv_layout, n) + (long)h * head_dim + (long)j * kv_layout.seq_stride + e];
                    oi[e] = kv_len > 0 ? (T)acc : (T)0;
                }
                lse[(n * heads + h) * q_len + i] = kv_len > 0 ? (T)(m + log(sum)) : (T)-INFINITY;
            }
    free(p);
}
