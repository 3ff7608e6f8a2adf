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
#include "axis_layout.h"

enum { FA_Q_TILE = 32, FA_KV_TILE = 64, FA_QB = 4, FA_LANES = 8 };

template <typename T>
static inline T fa_dot(const T* a, const T* b, int d) {
    T acc = 0;
#pragma omp simd reduction(+ : acc)
    for (int i = 0; i < d; i++) acc += a[i] * b[i];
    return acc;
}

// exp over an array with fast_expf (model/common.h), which the compiler vectorises
static inline void fa_exp_inplace(float* x, int n) {
#pragma omp simd
    for (int i = 0; i < n; i++) x[i] = fast_expf(x[i]);
}
static inline void fa_exp_inplace(double* x, int n) {
    for (int i = 0; i < n; i++) x[i] = exp(x[i]);
}

// Short key sets (the feature axis: C columns, 6 by default) fill too few vector lanes for
// the tiled kernels above, so they take a row-major path: per query, dot products and
// axpys along the head dimension, no tiles, no transposes.
enum { FA_SHORT_KV = 16 };

template <typename T>
static void flash_attention_forward_short(T* out, T* lse, const T* q, const T* k, const T* v, AxisLayout q_layout,
                                          AxisLayout kv_layout, AxisLayout out_layout, int n_batch, int heads,
                                          int q_len, int kv_len, int head_dim, T scale) {
    const int d = head_dim;
#pragma omp parallel for schedule(static)
    for (long w = 0; w < (long)n_batch * heads; w++) {
        const int h = (int)(w % heads);
        const long n = w / heads;
        const T* qb = q + axis_offset(q_layout, n) + (long)h * d;
        const T* kb = k + axis_offset(kv_layout, n) + (long)h * d;
        const T* vb = v + axis_offset(kv_layout, n) + (long)h * d;
        T* ob = out + axis_offset(out_layout, n) + (long)h * d;
        T* lb = lse + w * (long)q_len;
        T s[FA_SHORT_KV];
        for (int i = 0; i < q_len; i++) {
            const T* qi = qb + (long)i * q_layout.seq_stride;
            T m = -INFINITY;
            for (int j = 0; j < kv_len; j++) {
                s[j] = scale * fa_dot(qi, kb + (long)j * kv_layout.seq_stride, d);
                m = s[j] > m ? s[j] : m;
            }
            for (int j = 0; j < kv_len; j++) s[j] -= m;
            fa_exp_inplace(s, kv_len);
            T sum = 0;
            for (int j = 0; j < kv_len; j++) sum += s[j];
            T* oi = ob + (long)i * out_layout.seq_stride;
            const T inv = (T)1 / sum;
#pragma omp simd
            for (int e = 0; e < d; e++) oi[e] = 0;
            for (int j = 0; j < kv_len; j++) {
                const T* vj = vb + (long)j * kv_layout.seq_stride;
                const T pj = s[j] * inv;
#pragma omp simd
                for (int e = 0; e < d; e++) oi[e] += pj * vj[e];
            }
            lb[i] = m + log(sum);
        }
    }
}

template <typename T>
static void flash_attention_backward_short(T* dq, T* dk, T* dv, const T* dout, const T* out, const T* lse, const T* q,
                                           const T* k, const T* v, AxisLayout q_layout, AxisLayout kv_layout,
                                           AxisLayout out_layout, int n_batch, int heads, int q_len, int kv_len,
                                           int head_dim, T scale) {
    const int d = head_dim;
#pragma omp parallel for schedule(static)
    for (long w = 0; w < (long)n_batch * heads; w++) {
        const int h = (int)(w % heads);
        const long n = w / heads;
        const long q_base = axis_offset(q_layout, n) + (long)h * d;
        const long kv_base = axis_offset(kv_layout, n) + (long)h * d;
        const long out_base = axis_offset(out_layout, n) + (long)h * d;
        const T* lb = lse + w * (long)q_len;
        T p[FA_SHORT_KV], ds[FA_SHORT_KV];
        for (int i = 0; i < q_len; i++) {
            const T* qi = q + q_base + (long)i * q_layout.seq_stride;
            const T* doi = dout + out_base + (long)i * out_layout.seq_stride;
            const T D = fa_dot(doi, out + out_base + (long)i * out_layout.seq_stride, d);
            for (int j = 0; j < kv_len; j++) {
                p[j] = scale * fa_dot(qi, k + kv_base + (long)j * kv_layout.seq_stride, d) - lb[i];
                ds[j] = fa_dot(doi, v + kv_base + (long)j * kv_layout.seq_stride, d);
            }
            fa_exp_inplace(p, kv_len);
            T* dqi = dq + q_base + (long)i * q_layout.seq_stride;
            for (int j = 0; j < kv_len; j++) {
                const T dsj = p[j] * (ds[j] - D) * scale, pj = p[j];
                const T* kj = k + kv_base + (long)j * kv_layout.seq_stride;
                T* dkj = dk + kv_base + (long)j * kv_layout.seq_stride;
                T* dvj = dv + kv_base + (long)j * kv_layout.seq_stride;
#pragma omp simd
                for (int e = 0; e < d; e++) {
                    dqi[e] += dsj * kj[e];
                    dkj[e] += dsj * qi[e];
                    dvj[e] += pj * doi[e];
                }
            }
        }
    }
}

// Forward, per (sequence, head, query tile). Tiles are held transposed, queries along the
// vector lanes: every inner loop runs over FA_Q_TILE contiguous queries, so the small head
// size (24 by default) never sits in the vector lanes and no horizontal sums are needed.
// out = softmax(scale * q k^T) v over kv positions [0, kv_len); lse = log-sum-exp of the scores.
// kv_len == 0 gives out = 0 and lse = -inf (an empty key set, merged away by lse_merge).
template <typename T>
static void flash_attention_forward(T* out, T* lse, const T* q, const T* k, const T* v, AxisLayout q_layout,
                                    AxisLayout kv_layout, AxisLayout out_layout, int n_batch, int heads, int q_len,
                                    int kv_len, int head_dim, T scale) {
    MOSAIC_CHECK(head_dim <= FA_MAX_HEAD_DIM, "head size above FA_MAX_HEAD_DIM: use more heads");
    if (kv_len > 0 && kv_len <= FA_SHORT_KV) {
        flash_attention_forward_short(out, lse, q, k, v, q_layout, kv_layout, out_layout, n_batch, heads, q_len, kv_len,
                                      head_dim, scale);
        return;
    }
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

        T q_t[FA_MAX_HEAD_DIM][FA_Q_TILE];   // pre-scaled queries, transposed; padding lanes 0
        T acc_t[FA_MAX_HEAD_DIM][FA_Q_TILE]; // unnormalised outputs, transposed
        T s_t[FA_KV_TILE][FA_Q_TILE];        // scores, then probabilities, key-major
        T row_max[FA_Q_TILE], row_sum[FA_Q_TILE], new_max[FA_Q_TILE], correction[FA_Q_TILE];
        for (int e = 0; e < d; e++)
            for (int i = 0; i < FA_Q_TILE; i++) {
                q_t[e][i] = i < nq ? qb[(long)(i0 + i) * q_layout.seq_stride + e] * scale : (T)0;
                acc_t[e][i] = 0;
            }
        for (int i = 0; i < FA_Q_TILE; i++) {
            row_max[i] = -INFINITY;
            row_sum[i] = 0;
        }
        for (int j0 = 0; j0 < kv_len; j0 += FA_KV_TILE) {
            const int nk = kv_len - j0 < FA_KV_TILE ? kv_len - j0 : FA_KV_TILE;
            for (int i = 0; i < FA_Q_TILE; i++) new_max[i] = row_max[i];
            // scores, two keys at a time: their 2 x FA_Q_TILE sums stay in registers over e
            for (int j = 0; j < nk; j += 2) {
                const int pair = nk - j < 2 ? 1 : 2;
                const T* k0 = kb + (long)(j0 + j) * kv_layout.seq_stride;
                const T* k1 = pair == 2 ? k0 + kv_layout.seq_stride : k0;
                T s0[FA_Q_TILE], s1[FA_Q_TILE];
#pragma omp simd
                for (int i = 0; i < FA_Q_TILE; i++) s0[i] = s1[i] = 0;
                for (int e = 0; e < d; e++) {
                    const T ke0 = k0[e], ke1 = k1[e];
#pragma omp simd
                    for (int i = 0; i < FA_Q_TILE; i++) {
                        s0[i] += ke0 * q_t[e][i];
                        s1[i] += ke1 * q_t[e][i];
                    }
                }
#pragma omp simd
                for (int i = 0; i < FA_Q_TILE; i++) {
                    s_t[j][i] = s0[i];
                    new_max[i] = s0[i] > new_max[i] ? s0[i] : new_max[i];
                }
                if (pair == 2) {
#pragma omp simd
                    for (int i = 0; i < FA_Q_TILE; i++) {
                        s_t[j + 1][i] = s1[i];
                        new_max[i] = s1[i] > new_max[i] ? s1[i] : new_max[i];
                    }
                }
            }
            // rescale what was accumulated under the old maximum (exp(-inf) = 0 at the start)
#pragma omp simd
            for (int i = 0; i < FA_Q_TILE; i++) correction[i] = row_max[i] - new_max[i];
            fa_exp_inplace(correction, FA_Q_TILE);
            for (int j = 0; j < nk; j++) {
#pragma omp simd
                for (int i = 0; i < FA_Q_TILE; i++) s_t[j][i] -= new_max[i];
                fa_exp_inplace(s_t[j], FA_Q_TILE);
            }
#pragma omp simd
            for (int i = 0; i < FA_Q_TILE; i++) row_sum[i] *= correction[i];
            for (int j = 0; j < nk; j++)
#pragma omp simd
                for (int i = 0; i < FA_Q_TILE; i++) row_sum[i] += s_t[j][i];
            // outputs, one head dimension at a time, its FA_Q_TILE sums in registers over the keys
            for (int e = 0; e < d; e++) {
                T a[FA_Q_TILE];
#pragma omp simd
                for (int i = 0; i < FA_Q_TILE; i++) a[i] = acc_t[e][i] * correction[i];
                for (int j = 0; j < nk; j++) {
                    const T ve = vb[(long)(j0 + j) * kv_layout.seq_stride + e];
#pragma omp simd
                    for (int i = 0; i < FA_Q_TILE; i++) a[i] += ve * s_t[j][i];
                }
#pragma omp simd
                for (int i = 0; i < FA_Q_TILE; i++) acc_t[e][i] = a[i];
            }
            for (int i = 0; i < FA_Q_TILE; i++) row_max[i] = new_max[i];
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
            for (int e = 0; e < d; e++) oi[e] = acc_t[e][i] * inv;
            lb[i] = row_max[i] + log(row_sum[i]);
        }
    }
}

// Backward from the saved output and lse. ACCUMULATES into dq, dk, dv (callers zero them),
// so that a sharded caller can run it once per key block. Work is split over
// (sequence, head) pairs, each owned by one thread, so the accumulations never race.
// out and lse are the FINAL (all keys) results; for one key block of a sharded run this
// still gives that block's exact share of the gradient.
// Per key tile, the tile's K, V, dK, dV are held transposed (keys along the vector lanes);
// queries then go FA_QB at a time through vector loops over the tile's keys.
template <typename T>
static void flash_attention_backward(T* dq, T* dk, T* dv, const T* dout, const T* out, const T* lse, const T* q,
                                     const T* k, const T* v, AxisLayout q_layout, AxisLayout kv_layout,
                                     AxisLayout out_layout, int n_batch, int heads, int q_len, int kv_len,
                                     int head_dim, T scale) {
    MOSAIC_CHECK(head_dim <= FA_MAX_HEAD_DIM, "head size above FA_MAX_HEAD_DIM: use more heads");
    if (kv_len <= FA_SHORT_KV) {
        flash_attention_backward_short(dq, dk, dv, dout, out, lse, q, k, v, q_layout, kv_layout, out_layout, n_batch,
                                       heads, q_len, kv_len, head_dim, scale);
        return;
    }
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

        T k_t[FA_MAX_HEAD_DIM][FA_KV_TILE], v_t[FA_MAX_HEAD_DIM][FA_KV_TILE];
        T k_r[FA_KV_TILE][FA_MAX_HEAD_DIM]; // the tile's keys as rows too, for dq
        T dk_t[FA_MAX_HEAD_DIM][FA_KV_TILE], dv_t[FA_MAX_HEAD_DIM][FA_KV_TILE];
        T q_blk[FA_QB][FA_MAX_HEAD_DIM], do_blk[FA_QB][FA_MAX_HEAD_DIM];
        T p[FA_QB][FA_KV_TILE], ds[FA_QB][FA_KV_TILE];
        for (int j0 = 0; j0 < kv_len; j0 += FA_KV_TILE) {
            const int nk = kv_len - j0 < FA_KV_TILE ? kv_len - j0 : FA_KV_TILE;
            for (int j = 0; j < nk; j++) {
                const T* kj = k + kv_base + (long)(j0 + j) * kv_layout.seq_stride;
                const T* vj = v + kv_base + (long)(j0 + j) * kv_layout.seq_stride;
                for (int e = 0; e < d; e++) {
                    k_t[e][j] = k_r[j][e] = kj[e];
                    v_t[e][j] = vj[e];
                }
                for (int e = d; e < ceil_div(d, FA_LANES) * FA_LANES; e++) k_r[j][e] = 0; // padding lanes
            }
            for (int e = 0; e < d; e++) {
                for (int j = 0; j < nk; j++) dk_t[e][j] = dv_t[e][j] = 0;
                for (int j = nk; j < ceil_div(nk, FA_LANES) * FA_LANES; j++) k_t[e][j] = v_t[e][j] = 0; // padding lanes
            }
            // queries in blocks of FA_QB: every K/V/dK/dV vector loaded feeds FA_QB FMAs
            for (int i0 = 0; i0 < q_len; i0 += FA_QB) {
                const int nqb = q_len - i0 < FA_QB ? q_len - i0 : FA_QB;
                T D[FA_QB], lse_b[FA_QB];
                for (int b = 0; b < FA_QB; b++) {
                    if (b < nqb) {
                        const long i = i0 + b;
                        memcpy(q_blk[b], q + q_base + i * q_layout.seq_stride, d * sizeof(T));
                        memcpy(do_blk[b], dout + out_base + i * out_layout.seq_stride, d * sizeof(T));
                        // D_i = rowsum(dO * O): the softmax Jacobian's diagonal correction
                        D[b] = fa_dot(do_blk[b], out + out_base + i * out_layout.seq_stride, d);
                        lse_b[b] = lb[i];
                    } else { // padding: p = exp(-inf) = 0, so it adds nothing
                        for (int e = 0; e < d; e++) q_blk[b][e] = do_blk[b][e] = 0;
                        D[b] = 0;
                        lse_b[b] = INFINITY;
                    }
                    for (int j = 0; j < nk; j++) p[b][j] = ds[b][j] = 0;
                }
                // q . k_j and dO . v_j, FA_LANES keys at a time: the 2 x FA_QB accumulators stay in
                // registers over the head dimension (summed over e in order, as before)
                for (int jv = 0; jv < nk; jv += FA_LANES) {
                    T pa[FA_QB][FA_LANES], da[FA_QB][FA_LANES];
                    for (int b = 0; b < FA_QB; b++)
                        for (int l = 0; l < FA_LANES; l++) pa[b][l] = da[b][l] = 0;
                    for (int e = 0; e < d; e++) {
                        const T* kt = &k_t[e][jv];
                        const T* vt = &v_t[e][jv];
                        for (int b = 0; b < FA_QB; b++) {
                            const T qe = q_blk[b][e], de = do_blk[b][e];
#pragma omp simd
                            for (int l = 0; l < FA_LANES; l++) {
                                pa[b][l] += qe * kt[l];
                                da[b][l] += de * vt[l];
                            }
                        }
                    }
                    for (int b = 0; b < FA_QB; b++)
                        for (int l = 0; l < FA_LANES; l++) {
                            p[b][jv + l] = pa[b][l];
                            ds[b][jv + l] = da[b][l];
                        }
                }
                for (int b = 0; b < FA_QB; b++) {
#pragma omp simd
                    for (int j = 0; j < nk; j++) p[b][j] = scale * p[b][j] - lse_b[b];
                    fa_exp_inplace(p[b], nk);
#pragma omp simd
                    for (int j = 0; j < nk; j++) ds[b][j] = p[b][j] * (ds[b][j] - D[b]) * scale;
                }
                for (int e = 0; e < d; e++) {
                    T qe[FA_QB], de[FA_QB];
                    for (int b = 0; b < FA_QB; b++) { qe[b] = q_blk[b][e]; de[b] = do_blk[b][e]; }
#pragma omp simd
                    for (int j = 0; j < nk; j++) {
                        T dv_acc = dv_t[e][j], dk_acc = dk_t[e][j];
                        for (int b = 0; b < FA_QB; b++) {
                            dv_acc += de[b] * p[b][j];
                            dk_acc += qe[b] * ds[b][j];
                        }
                        dv_t[e][j] = dv_acc;
                        dk_t[e][j] = dk_acc;
                    }
                }
                // dq_i += sum_j ds_ij k_j along the key rows, FA_LANES dims at a time: the FA_QB
                // accumulators stay in registers over the keys (no horizontal sums, no chain
                // through memory)
                for (int e0 = 0; e0 < d; e0 += FA_LANES) {
                    T acc[FA_QB][FA_LANES];
                    for (int b = 0; b < FA_QB; b++)
                        for (int l = 0; l < FA_LANES; l++) acc[b][l] = 0;
                    for (int j = 0; j < nk; j++) {
                        const T* kr = &k_r[j][e0];
                        for (int b = 0; b < FA_QB; b++) {
                            const T dsj = ds[b][j];
#pragma omp simd
                            for (int l = 0; l < FA_LANES; l++) acc[b][l] += dsj * kr[l];
                        }
                    }
                    const int we = d - e0 < FA_LANES ? d - e0 : FA_LANES;
                    for (int b = 0; b < nqb; b++) {
                        T* dqi = dq + q_base + (long)(i0 + b) * q_layout.seq_stride + e0;
                        for (int l = 0; l < we; l++) dqi[l] += acc[b][l];
                    }
                }
            }
            for (int j = 0; j < nk; j++) {
                T* dkj = dk + kv_base + (long)(j0 + j) * kv_layout.seq_stride;
                T* dvj = dv + kv_base + (long)(j0 + j) * kv_layout.seq_stride;
                for (int e = 0; e < d; e++) {
                    dkj[e] += dk_t[e][j];
                    dvj[e] += dv_t[e][j];
                }
            }
        }
    }
}

// the CPU kernels keep no scratch between calls; the CUDA twin sizes its row-dot buffer here, once
static inline void flash_attention_reserve_scratch(long max_queries) { (void)max_queries; }

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
