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

// FA_LANES values of T as one GCC/clang vector (an AVX register of floats), for register blocks
// that `omp simd` over small arrays would keep in memory. may_alias and element alignment: a
// V* may point into any T array (loads and stores through it are unaligned-safe).
template <typename T>
struct FaVec;
template <>
struct FaVec<float> {
    typedef float V __attribute__((vector_size(FA_LANES * sizeof(float)), may_alias, aligned(sizeof(float))));
};
template <>
struct FaVec<double> {
    typedef double V __attribute__((vector_size(FA_LANES * sizeof(double)), may_alias, aligned(sizeof(double))));
};

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
// The register blocks (scores of two keys, outputs of two head dims) are FaVec locals so they
// stay in registers over the reduction; sums run in the same order as the scalar form.
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
    typedef typename FaVec<T>::V V;
    enum { NV = FA_Q_TILE / FA_LANES }; // vectors per query tile
    const int d = head_dim;
    const long kv_stride = kv_layout.seq_stride;
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

        alignas(64) T q_t[FA_MAX_HEAD_DIM][FA_Q_TILE];   // pre-scaled queries, transposed; padding lanes 0
        alignas(64) T acc_t[FA_MAX_HEAD_DIM][FA_Q_TILE]; // unnormalised outputs, transposed
        alignas(64) T s_t[FA_KV_TILE][FA_Q_TILE];        // scores, then probabilities, key-major
        alignas(64) T row_max[FA_Q_TILE], row_sum[FA_Q_TILE], new_max[FA_Q_TILE], correction[FA_Q_TILE];
        for (int i = 0; i < FA_Q_TILE; i++) {
            const T* qi = qb + (long)(i0 + i) * q_layout.seq_stride;
            for (int e = 0; e < d; e++) {
                q_t[e][i] = i < nq ? qi[e] * scale : (T)0;
                acc_t[e][i] = 0;
            }
            row_max[i] = -INFINITY;
            row_sum[i] = 0;
        }
        for (int j0 = 0; j0 < kv_len; j0 += FA_KV_TILE) {
            const int nk = kv_len - j0 < FA_KV_TILE ? kv_len - j0 : FA_KV_TILE;
            // scores, two keys at a time: their 2 x FA_Q_TILE sums stay in registers over e
            for (int j = 0; j < nk; j += 2) {
                const T* k0 = kb + (long)(j0 + j) * kv_stride;
                const T* k1 = nk - j < 2 ? k0 : k0 + kv_stride;
                V s0[NV], s1[NV];
                for (int u = 0; u < NV; u++) s0[u] = s1[u] = V{};
                for (int e = 0; e < d; e++) {
                    const T ke0 = k0[e], ke1 = k1[e];
                    for (int u = 0; u < NV; u++) {
                        const V qv = *(const V*)&q_t[e][u * FA_LANES];
                        s0[u] += ke0 * qv;
                        s1[u] += ke1 * qv;
                    }
                }
                for (int u = 0; u < NV; u++) {
                    *(V*)&s_t[j][u * FA_LANES] = s0[u];
                    if (nk - j >= 2) *(V*)&s_t[j + 1][u * FA_LANES] = s1[u];
                }
            }
#pragma omp simd
            for (int i = 0; i < FA_Q_TILE; i++) new_max[i] = row_max[i];
            for (int j = 0; j < nk; j++)
#pragma omp simd
                for (int i = 0; i < FA_Q_TILE; i++) new_max[i] = s_t[j][i] > new_max[i] ? s_t[j][i] : new_max[i];
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
            // outputs, two head dims at a time: their 2 x FA_Q_TILE sums in registers over the keys
            for (int e = 0; e < d; e += 2) {
                const int e1 = d - e >= 2 ? e + 1 : e; // an odd last dim pairs with itself, stored once
                const T* ve = vb + (long)j0 * kv_stride + e;
                V a0[NV], a1[NV];
                for (int u = 0; u < NV; u++) {
                    const V c = *(const V*)&correction[u * FA_LANES];
                    a0[u] = *(const V*)&acc_t[e][u * FA_LANES] * c;
                    a1[u] = *(const V*)&acc_t[e1][u * FA_LANES] * c;
                }
                for (int j = 0; j < nk; j++) {
                    const T v0 = ve[j * kv_stride], v1 = ve[j * kv_stride + (e1 - e)];
                    for (int u = 0; u < NV; u++) {
                        const V pv = *(const V*)&s_t[j][u * FA_LANES];
                        a0[u] += v0 * pv;
                        a1[u] += v1 * pv;
                    }
                }
                for (int u = 0; u < NV; u++) {
                    *(V*)&acc_t[e1][u * FA_LANES] = a1[u];
                    *(V*)&acc_t[e][u * FA_LANES] = a0[u];
                }
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

// dq rows [i0, i0 + nqb) += ds k over the tile's keys, for head dims [e0, e0 + NE * FA_LANES) ∩ [0, d):
// FA_QB x NE accumulators in registers over the keys, summed in key order.
template <int NE, typename T>
static inline void fa_dq_block(T* dq, long q_stride, const T (*k_r)[FA_MAX_HEAD_DIM], const T (*ds)[FA_KV_TILE],
                               int nk, int nqb, int e0, int d) {
    typedef typename FaVec<T>::V V;
    V acc[FA_QB][NE];
    for (int b = 0; b < FA_QB; b++)
        for (int u = 0; u < NE; u++) acc[b][u] = V{};
    for (int j = 0; j < nk; j++) {
        V kr[NE];
        for (int u = 0; u < NE; u++) kr[u] = *(const V*)&k_r[j][e0 + u * FA_LANES];
        for (int b = 0; b < FA_QB; b++) {
            const T dsj = ds[b][j];
            for (int u = 0; u < NE; u++) acc[b][u] += dsj * kr[u];
        }
    }
    const int we = d - e0 < NE * FA_LANES ? d - e0 : NE * FA_LANES;
    for (int b = 0; b < nqb; b++) {
        alignas(64) T a[NE * FA_LANES];
        for (int u = 0; u < NE; u++) *(V*)&a[u * FA_LANES] = acc[b][u];
        T* dqi = dq + b * q_stride + e0;
        for (int l = 0; l < we; l++) dqi[l] += a[l];
    }
}

// g_t[e][jv, jv + 2 FA_LANES) += sum_b w[b][jv..] x[b][e]: one key gradient (dv from p and dO,
// dk from ds and q) for a register block of 2 key vectors; the FA_QB weight vectors stay in
// registers over the head dimension, each g_t vector is loaded once, the sum runs over b in order
template <typename T>
static inline void fa_key_grad_block(T (*g_t)[FA_KV_TILE], const T (*w)[FA_KV_TILE], const T (*x)[FA_MAX_HEAD_DIM],
                                     int jv, int d) {
    typedef typename FaVec<T>::V V;
    V wb[FA_QB][2];
    for (int b = 0; b < FA_QB; b++) {
        wb[b][0] = *(const V*)&w[b][jv];
        wb[b][1] = *(const V*)&w[b][jv + FA_LANES];
    }
    for (int e = 0; e < d; e++) {
        V a0 = *(const V*)&g_t[e][jv], a1 = *(const V*)&g_t[e][jv + FA_LANES];
        for (int b = 0; b < FA_QB; b++) {
            const T xe = x[b][e];
            a0 += xe * wb[b][0];
            a1 += xe * wb[b][1];
        }
        *(V*)&g_t[e][jv] = a0;
        *(V*)&g_t[e][jv + FA_LANES] = a1;
    }
}

// Backward from the saved output and lse. ACCUMULATES into dq, dk, dv (callers zero them),
// so that a sharded caller can run it once per key block. Work is split over
// (sequence, head) pairs, each owned by one thread, so the accumulations never race.
// out and lse are the FINAL (all keys) results; for one key block of a sharded run this
// still gives that block's exact share of the gradient.
// Per key tile, the tile's K, V, dK, dV are held transposed (keys along the vector lanes);
// queries then go FA_QB at a time through register blocks of FA_QB queries x 2 key vectors
// (FaVec locals), every broadcast query value feeding two FMAs. Sums run in the same order
// as the scalar form: over e for the scores, over queries for dk/dv, over keys for dq.
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
    typedef typename FaVec<T>::V V;
    enum { KB = 2 * FA_LANES }; // keys per register block
    const int d = head_dim;
    const int d_pad = ceil_div(d, FA_LANES) * FA_LANES;
    const long work_items = (long)n_batch * heads;
#pragma omp parallel for schedule(dynamic, 1)
    for (long w = 0; w < work_items; w++) {
        const int h = (int)(w % heads);
        const long n = w / heads;
        const long q_base = axis_offset(q_layout, n) + (long)h * d;
        const long kv_base = axis_offset(kv_layout, n) + (long)h * d;
        const long out_base = axis_offset(out_layout, n) + (long)h * d;
        const T* lb = lse + (n * heads + h) * (long)q_len;

        alignas(64) T k_t[FA_MAX_HEAD_DIM][FA_KV_TILE], v_t[FA_MAX_HEAD_DIM][FA_KV_TILE];
        alignas(64) T k_r[FA_KV_TILE][FA_MAX_HEAD_DIM]; // the tile's keys as rows too, for dq
        alignas(64) T dk_t[FA_MAX_HEAD_DIM][FA_KV_TILE], dv_t[FA_MAX_HEAD_DIM][FA_KV_TILE];
        alignas(64) T q_blk[FA_QB][FA_MAX_HEAD_DIM], do_blk[FA_QB][FA_MAX_HEAD_DIM];
        alignas(64) T p[FA_QB][FA_KV_TILE], ds[FA_QB][FA_KV_TILE];
        for (int j0 = 0; j0 < kv_len; j0 += FA_KV_TILE) {
            const int nk = kv_len - j0 < FA_KV_TILE ? kv_len - j0 : FA_KV_TILE;
            const int nk_pad = ceil_div(nk, KB) * KB; // FA_KV_TILE is a multiple of KB
            for (int j = 0; j < nk_pad; j++) {
                const T* kj = k + kv_base + (long)(j0 + j) * kv_layout.seq_stride;
                const T* vj = v + kv_base + (long)(j0 + j) * kv_layout.seq_stride;
                for (int e = 0; e < d; e++) {
                    k_t[e][j] = j < nk ? kj[e] : (T)0; // padding lanes 0
                    v_t[e][j] = j < nk ? vj[e] : (T)0;
                    dk_t[e][j] = dv_t[e][j] = 0;
                    if (j < nk) k_r[j][e] = kj[e];
                }
                if (j < nk)
                    for (int e = d; e < d_pad; e++) k_r[j][e] = 0; // padding lanes
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
                }
                // q . k_j, then dO . v_j, KB keys at a time: FA_QB x 2 accumulators in registers
                // over the head dimension
                for (int jv = 0; jv < nk_pad; jv += KB) {
                    V pa[FA_QB][2], da[FA_QB][2];
                    for (int b = 0; b < FA_QB; b++) pa[b][0] = pa[b][1] = da[b][0] = da[b][1] = V{};
                    for (int e = 0; e < d; e++) {
                        const V k0 = *(const V*)&k_t[e][jv], k1 = *(const V*)&k_t[e][jv + FA_LANES];
                        for (int b = 0; b < FA_QB; b++) {
                            const T qe = q_blk[b][e];
                            pa[b][0] += qe * k0;
                            pa[b][1] += qe * k1;
                        }
                    }
                    for (int e = 0; e < d; e++) {
                        const V v0 = *(const V*)&v_t[e][jv], v1 = *(const V*)&v_t[e][jv + FA_LANES];
                        for (int b = 0; b < FA_QB; b++) {
                            const T de = do_blk[b][e];
                            da[b][0] += de * v0;
                            da[b][1] += de * v1;
                        }
                    }
                    for (int b = 0; b < FA_QB; b++) {
                        *(V*)&p[b][jv] = pa[b][0];
                        *(V*)&p[b][jv + FA_LANES] = pa[b][1];
                        *(V*)&ds[b][jv] = da[b][0];
                        *(V*)&ds[b][jv + FA_LANES] = da[b][1];
                    }
                }
                for (int b = 0; b < FA_QB; b++) {
#pragma omp simd
                    for (int j = 0; j < nk; j++) p[b][j] = scale * p[b][j] - lse_b[b];
                    fa_exp_inplace(p[b], nk);
#pragma omp simd
                    for (int j = 0; j < nk; j++) ds[b][j] = p[b][j] * (ds[b][j] - D[b]) * scale;
                    for (int j = nk; j < nk_pad; j++) p[b][j] = ds[b][j] = 0; // padding keys add nothing
                }
                // dv += p^T dO and dk += ds^T q, KB keys at a time
                for (int jv = 0; jv < nk_pad; jv += KB) {
                    fa_key_grad_block(dv_t, p, do_blk, jv, d);
                    fa_key_grad_block(dk_t, ds, q_blk, jv, d);
                }
                // dq_i += sum_j ds_ij k_j along the key rows, 3 x FA_LANES dims at a time
                T* dq_blk = dq + q_base + (long)i0 * q_layout.seq_stride;
                int e0 = 0;
                for (; d - e0 > 2 * FA_LANES; e0 += 3 * FA_LANES)
                    fa_dq_block<3>(dq_blk, q_layout.seq_stride, k_r, ds, nk, nqb, e0, d);
                if (d - e0 > FA_LANES)
                    fa_dq_block<2>(dq_blk, q_layout.seq_stride, k_r, ds, nk, nqb, e0, d);
                else if (d - e0 > 0)
                    fa_dq_block<1>(dq_blk, q_layout.seq_stride, k_r, ds, nk, nqb, e0, d);
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
