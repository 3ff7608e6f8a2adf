// Flash attention on the GPU: the CUDA twin of attention/flash_attention_cpu.h (same names,
// same parameter lists, float only, in namespace gpu). fp32 SIMT code, no tensor cores.
//
// Tensors are reached through an AxisLayout as in the CPU file: sequence n starts at
// axis_offset(layout, n), positions are seq_stride apart, head h sits at h * head_dim and its
// head_dim elements are contiguous. LSE (and the backward's D) is (n_batch, heads, q_len).
//
// Two paths, chosen by the key count:
//   short (kv_len <= FAG_SHORT_KV, the feature axis with its ~6 cells; the backward also needs
//     q_len <= FAG_SHORT_BWD_MAX_Q): one thread per query (forward, dQ) or per key (dK, dV,
//     walking the queries FAG_SHORT_Q_CHUNK at a time), scores in registers, no shared memory,
//     no barriers; a key tile would leave 58 of its 64 slots empty there.
//   tiled (FlashAttention-2 style): 128 threads = 4 warps per block, shared-memory tiles sized
//     per head-size bucket (32, 64, 128; head_dim <= bucket, padding dims are zero):
//                     forward                dQ                     dK, dV
//       bucket 32     32 q x 64 k  28928 B   32 q x 64 k  33280 B   32 k x 32 q  24832 B
//       bucket 64     32 q x 32 k  28800 B   32 q x 32 k  37120 B   32 k x 32 q  41216 B
//       bucket 128    16 q x 32 k  43136 B    8 q x 32 k  42240 B    8 k x 32 q  43264 B
//     (static shared memory per block, all under the 49152 B that need no opt-in; each kernel
//     static_asserts it).
//     Forward and dQ: a block per (sequence, head, query tile); each warp owns ROWS query rows;
//     lanes own keys for the scores (q broadcast from shared memory, K rows padded to
//     bucket + 1 floats so 32 lanes reading 32 keys hit 32 banks) and head dims for the
//     P V / dS K products (probabilities through a per-warp shared buffer).
//     dK, dV: a block per (sequence, head, key tile); each warp owns ROWS keys and keeps their
//     dK, dV rows in registers (lanes over head dims) while the block walks every query tile;
//     lanes own queries for the scores.
// Backward: a first kernel computes D = rowsum(dO * O) per query (a warp per query, shuffle
// reduction) into a scratch buffer; then a dQ kernel and a dK/dV kernel. Determinism: every
// dQ, dK, dV element has exactly one owning thread, which sums its terms in a fixed order and
// adds them to the caller's value (once; the short dK/dV once per query chunk); no atomics, so
// the bits do not depend on scheduling. The price is that the scores and probabilities are computed
// twice (once in the dQ kernel, once in the dK/dV kernel) instead of once with atomic dQ
// updates. P is recomputed from the saved LSE; no R x S matrix ever reaches global memory.
#pragma once
#include "../model/cuda_common.cuh"
#include "axis_layout.h"

namespace gpu {

enum { FAG_SHORT_KV = 16, FAG_SHORT_Q_CHUNK = 8, FAG_SHORT_BWD_MAX_Q = 64, FAG_WARPS = 4, FAG_THREADS = 128 };

// tile shapes per head-size bucket (see the table above); ROWS per warp, KPL keys per lane
template <int DMAX> struct FaFwdTile;
template <> struct FaFwdTile<32> { enum { ROWS = 8, KPL = 2 }; };
template <> struct FaFwdTile<64> { enum { ROWS = 8, KPL = 1 }; };
template <> struct FaFwdTile<128> { enum { ROWS = 4, KPL = 1 }; };
template <int DMAX> struct FaDqTile;
template <> struct FaDqTile<32> { enum { ROWS = 8, KPL = 2 }; };
template <> struct FaDqTile<64> { enum { ROWS = 8, KPL = 1 }; };
template <> struct FaDqTile<128> { enum { ROWS = 2, KPL = 1 }; };
template <int DMAX> struct FaDkvTile; // ROWS keys per warp, 32 queries per query tile
template <> struct FaDkvTile<32> { enum { ROWS = 8 }; };
template <> struct FaDkvTile<64> { enum { ROWS = 8 }; };
template <> struct FaDkvTile<128> { enum { ROWS = 2 }; };

// butterfly reductions: every lane ends with the same bits (float + and max commute)
__device__ __forceinline__ float fa_warp_max(float x) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, o));
    return x;
}
__device__ __forceinline__ float fa_warp_sum(float x) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
    return x;
}

// dot product of two head rows in global memory, in index order
__device__ __forceinline__ float fa_row_dot(const float* a, const float* b, int d) {
    float acc = 0.0f;
    for (int e = 0; e < d; e++) acc = fmaf(a[e], b[e], acc);
    return acc;
}

// ----------------------------------------------------------------------------
// forward, short path: one thread per (sequence, head, query), kv_len <= FAG_SHORT_KV keys
// (kv_len 0 too: out = 0, lse = -inf). out (layout), lse (n_batch, heads, q_len)
static __global__ void __launch_bounds__(FAG_THREADS)
    fa_forward_short_kernel(float* out, float* lse, const float* q, const float* k, const float* v,
                            AxisLayout q_layout, AxisLayout kv_layout, AxisLayout out_layout, long n_rows,
                            int heads, int q_len, int kv_len, int head_dim, float scale) {
    const long w = (long)blockIdx.x * blockDim.x + threadIdx.x; // = (n * heads + h) * q_len + i
    if (w >= n_rows) return;
    const int i = (int)(w % q_len), h = (int)((w / q_len) % heads);
    const long n = w / ((long)q_len * heads);
    const float* qi = q + axis_offset(q_layout, n) + (long)h * head_dim + (long)i * q_layout.seq_stride;
    const float* kb = k + axis_offset(kv_layout, n) + (long)h * head_dim;
    const float* vb = v + axis_offset(kv_layout, n) + (long)h * head_dim;
    float* oi = out + axis_offset(out_layout, n) + (long)h * head_dim + (long)i * out_layout.seq_stride;
    float s[FAG_SHORT_KV];
    float m = -INFINITY;
#pragma unroll
    for (int j = 0; j < FAG_SHORT_KV; j++) {
        s[j] = j < kv_len ? scale * fa_row_dot(qi, kb + (long)j * kv_layout.seq_stride, head_dim) : -INFINITY;
        m = fmaxf(m, s[j]);
    }
    float sum = 0.0f;
#pragma unroll
    for (int j = 0; j < FAG_SHORT_KV; j++) {
        s[j] = j < kv_len ? expf(s[j] - m) : 0.0f;
        sum += s[j];
    }
    const float inv = kv_len > 0 ? 1.0f / sum : 0.0f;
    for (int e = 0; e < head_dim; e++) {
        float acc = 0.0f;
#pragma unroll
        for (int j = 0; j < FAG_SHORT_KV; j++)
            if (j < kv_len) acc = fmaf(s[j], vb[(long)j * kv_layout.seq_stride + e], acc);
        oi[e] = acc * inv;
    }
    lse[w] = kv_len > 0 ? m + logf(sum) : -INFINITY;
}

// ----------------------------------------------------------------------------
// Pieces shared by the tiled kernels below. None of them synchronises: the kernels keep every
// __syncthreads and __syncwarp, where the shared tiles change hands.

// the tile of B positions (queries or keys) and the (sequence, head) of this block
struct FaBlockTile {
    int t0;  // the tile's first position
    long nh; // n * heads + h
    int h;
    long n;
};
template <int B>
__device__ __forceinline__ FaBlockTile fa_block_tile(int len, int heads) {
    const int tiles = (len + B - 1) / B;
    const long nh = blockIdx.x / tiles;
    return {(int)(blockIdx.x % tiles) * B, nh, (int)(nh % heads), nh / heads};
}

// Stages BR positions r0 + r of two tensors' heads (a, b: the head's position 0, seq strides
// a_stride, b_stride) into rows r of a_s, b_s (row pitches AP, BP), both in one pass of the
// block; rows from n_valid on and dims from head_dim on are zero, so that padding adds nothing
// to the products. The caller's __syncthreads publishes the tile. (Where the pitch is DMAX the
// row index is idx itself; written so, the compiler keeps the kernels' original addressing.)
template <int BR, int DMAX, int AP, int BP>
__device__ __forceinline__ void fa_stage_pair(float* a_s, float* b_s, const float* a, const float* b, long a_stride,
                                              long b_stride, int r0, int n_valid, int head_dim) {
    for (int idx = (int)threadIdx.x; idx < BR * DMAX; idx += FAG_THREADS) {
        const int r = idx / DMAX, e = idx % DMAX;
        const int ok = r < n_valid && e < head_dim;
        const long a_off = (long)(r0 + r) * a_stride + e, b_off = (long)(r0 + r) * b_stride + e;
        a_s[AP == DMAX ? idx : r * AP + e] = ok ? a[a_off] : 0.0f;
        b_s[BP == DMAX ? idx : r * BP + e] = ok ? b[b_off] : 0.0f;
    }
}

template <int R, int C>
__device__ __forceinline__ void fa_zero(float (&x)[R][C]) {
#pragma unroll
    for (int r = 0; r < R; r++)
#pragma unroll
        for (int c = 0; c < C; c++) x[r][c] = 0.0f;
}

// Step k of NP products a warp computes in registers from shared memory, for the warp's R rows
// r and this lane's C columns c:
//     (*out[p])[r][c] += a[p][k + r * AP] * b[p][k * BK + (c * 32 + lane) * BL]
// a's element is the same on every lane (a broadcast), b's is this lane's own: for the scores
// its key (query) row c * 32 + lane (BK = 1, BL = the padded row pitch, so that 32 lanes hit 32
// banks), for the products with V, K, Q, dO its head dim c * 32 + lane (BK = the row pitch,
// BL = 1). The caller walks k, so every out element sums its terms in k order; the NP products
// of one step interleave as in a single hand-written loop. out[p] point to the caller's
// register arrays; the pointers vanish once the step is inlined and unrolled.
template <int R, int C, int AP, int BK, int BL, int NP>
__device__ __forceinline__ void fa_fma_step(float (*const (&out)[NP])[R][C], const float* const (&a)[NP],
                                            const float* const (&b)[NP], int k, int lane) {
    float bc[NP][C];
#pragma unroll
    for (int c = 0; c < C; c++)
#pragma unroll
        for (int p = 0; p < NP; p++) bc[p][c] = b[p][k * BK + (c * 32 + lane) * BL];
#pragma unroll
    for (int r = 0; r < R; r++) {
        float ar[NP];
#pragma unroll
        for (int p = 0; p < NP; p++) ar[p] = a[p][k + r * AP];
#pragma unroll
        for (int c = 0; c < C; c++)
#pragma unroll
            for (int p = 0; p < NP; p++) (*out[p])[r][c] = fmaf(ar[p], bc[p][c], (*out[p])[r][c]);
    }
}

// ----------------------------------------------------------------------------
// forward, tiled: a block per (sequence, head, query tile of BQ), online softmax over key
// tiles of BK. Each warp owns ROWS query rows: running max m and a per-lane partial sum l
// per row, the unnormalised output per row in registers (lanes over head dims).
template <int DMAX>
__global__ void __launch_bounds__(FAG_THREADS)
    fa_forward_tiled_kernel(float* out, float* lse, const float* q, const float* k, const float* v,
                            AxisLayout q_layout, AxisLayout kv_layout, AxisLayout out_layout, int heads, int q_len,
                            int kv_len, int head_dim, float scale) {
    constexpr int ROWS = FaFwdTile<DMAX>::ROWS, KPL = FaFwdTile<DMAX>::KPL;
    constexpr int BQ = FAG_WARPS * ROWS, BK = 32 * KPL, NT = DMAX / 32, KS = DMAX + 1;
    __shared__ float q_s[BQ * DMAX];             // pre-scaled queries, zero past q_len and head_dim
    __shared__ float k_s[BK * KS];               // padded rows: lane j reads key j in bank (j + e) % 32
    __shared__ float v_s[BK * DMAX];             // zero past the tile's keys, so p = 0 meets v = 0
    __shared__ float p_s[FAG_WARPS * ROWS * BK]; // each warp's probabilities for the P V product
    static_assert((BQ * DMAX + BK * KS + BK * DMAX + FAG_WARPS * ROWS * BK) * 4 <= MOSAIC_MAX_SHARED_BYTES, "smem");
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const auto [i0, nh, h, n] = fa_block_tile<BQ>(q_len, heads);
    const float* qb = q + axis_offset(q_layout, n) + (long)h * head_dim;
    const float* kb = k + axis_offset(kv_layout, n) + (long)h * head_dim;
    const float* vb = v + axis_offset(kv_layout, n) + (long)h * head_dim;
    for (int idx = tid; idx < BQ * DMAX; idx += FAG_THREADS) {
        const int r = idx / DMAX, e = idx % DMAX;
        q_s[idx] = i0 + r < q_len && e < head_dim ? qb[(long)(i0 + r) * q_layout.seq_stride + e] * scale : 0.0f;
    }
    float acc[ROWS][NT], m[ROWS], l[ROWS];
    fa_zero(acc);
#pragma unroll
    for (int r = 0; r < ROWS; r++) {
        m[r] = -INFINITY;
        l[r] = 0.0f;
    }
    float* p_w = p_s + warp * ROWS * BK;
    const float* q_w = q_s + warp * ROWS * DMAX;
    for (int j0 = 0; j0 < kv_len; j0 += BK) {
        const int nk = kv_len - j0 < BK ? kv_len - j0 : BK;
        fa_stage_pair<BK, DMAX, KS, DMAX>(k_s, v_s, kb, vb, kv_layout.seq_stride, kv_layout.seq_stride, j0, nk,
                                          head_dim);
        __syncthreads(); // fwd: the K, V tile (and Q) complete before any warp reads it
        // scores s[r][c] of query row r and this lane's key c * 32 + lane
        float s[ROWS][KPL];
        fa_zero(s);
#pragma unroll 4
        for (int e = 0; e < DMAX; e++) fa_fma_step<ROWS, KPL, DMAX, 1, KS>({&s}, {q_w}, {k_s}, e, lane);
#pragma unroll
        for (int r = 0; r < ROWS; r++) {
            float mx = -INFINITY;
#pragma unroll
            for (int c = 0; c < KPL; c++) {
                if (c * 32 + lane >= nk) s[r][c] = -INFINITY; // keys past the tile
                mx = fmaxf(mx, s[r][c]);
            }
            // nk >= 1, so the new maximum is finite; exp(-inf - m) = 0 on the first tile
            const float m_new = fmaxf(m[r], fa_warp_max(mx));
            const float corr = expf(m[r] - m_new);
            l[r] *= corr;
#pragma unroll
            for (int t = 0; t < NT; t++) acc[r][t] *= corr;
#pragma unroll
            for (int c = 0; c < KPL; c++) {
                const float p = expf(s[r][c] - m_new);
                l[r] += p;
                p_w[r * BK + c * 32 + lane] = p;
            }
            m[r] = m_new;
        }
        __syncwarp(); // every lane's p written before the lanes read each other's
        // acc += P V, this lane's head dims t * 32 + lane
#pragma unroll 4
        for (int j = 0; j < BK; j++) fa_fma_step<ROWS, NT, BK, DMAX, 1>({&acc}, {p_w}, {v_s}, j, lane);
        __syncthreads(); // fwd: every warp is done with K, V, P before the next tile overwrites them
    }
    float* ob = out + axis_offset(out_layout, n) + (long)h * head_dim;
    float* lb = lse + nh * q_len;
#pragma unroll
    for (int r = 0; r < ROWS; r++) {
        const float sum = fa_warp_sum(l[r]);
        const int i = i0 + warp * ROWS + r;
        if (i >= q_len) continue;
        const float inv = kv_len > 0 ? 1.0f / sum : 0.0f;
#pragma unroll
        for (int t = 0; t < NT; t++) {
            const int e = t * 32 + lane;
            if (e < head_dim) ob[(long)i * out_layout.seq_stride + e] = acc[r][t] * inv;
        }
        if (lane == 0) lb[i] = kv_len > 0 ? m[r] + logf(sum) : -INFINITY;
    }
}

// the head-size bucket a kernel is instantiated for
static inline int fa_bucket(int head_dim) { return head_dim <= 32 ? 32 : head_dim <= 64 ? 64 : 128; }

static inline unsigned fa_grid(long blocks) {
    MOSAIC_CHECK(blocks > 0 && blocks <= 0x7fffffffL, "attention grid too large: split the batch");
    return (unsigned)blocks;
}

// the two forward paths, also called directly by the kernel test
static void flash_attention_forward_short(float* out, float* lse, const float* q, const float* k, const float* v,
                                          AxisLayout q_layout, AxisLayout kv_layout, AxisLayout out_layout,
                                          int n_batch, int heads, int q_len, int kv_len, int head_dim, float scale) {
    MOSAIC_CHECK(kv_len <= FAG_SHORT_KV, "short attention path called with too many keys");
    const long n_rows = (long)n_batch * heads * q_len;
    if (n_rows == 0) return;
    MOSAIC_LAUNCH(fa_forward_short_kernel, fa_grid((n_rows + FAG_THREADS - 1) / FAG_THREADS), FAG_THREADS, 0,
                  mosaic_stream, out, lse, q, k, v, q_layout, kv_layout, out_layout, n_rows, heads, q_len, kv_len,
                  head_dim, scale);
}

template <int DMAX>
static void fa_forward_tiled_launch(float* out, float* lse, const float* q, const float* k, const float* v,
                                    AxisLayout q_layout, AxisLayout kv_layout, AxisLayout out_layout, int n_batch,
                                    int heads, int q_len, int kv_len, int head_dim, float scale) {
    constexpr int BQ = FAG_WARPS * FaFwdTile<DMAX>::ROWS;
    const long blocks = (long)n_batch * heads * ((q_len + BQ - 1) / BQ);
    MOSAIC_LAUNCH(fa_forward_tiled_kernel<DMAX>, fa_grid(blocks), FAG_THREADS, 0, mosaic_stream, out, lse, q, k, v,
                  q_layout, kv_layout, out_layout, heads, q_len, kv_len, head_dim, scale);
}

static void flash_attention_forward_tiled(float* out, float* lse, const float* q, const float* k, const float* v,
                                          AxisLayout q_layout, AxisLayout kv_layout, AxisLayout out_layout,
                                          int n_batch, int heads, int q_len, int kv_len, int head_dim, float scale) {
    if ((long)n_batch * heads * q_len == 0) return;
    switch (fa_bucket(head_dim)) {
    case 32:
        fa_forward_tiled_launch<32>(out, lse, q, k, v, q_layout, kv_layout, out_layout, n_batch, heads, q_len, kv_len,
                                    head_dim, scale);
        break;
    case 64:
        fa_forward_tiled_launch<64>(out, lse, q, k, v, q_layout, kv_layout, out_layout, n_batch, heads, q_len, kv_len,
                                    head_dim, scale);
        break;
    default:
        fa_forward_tiled_launch<128>(out, lse, q, k, v, q_layout, kv_layout, out_layout, n_batch, heads, q_len,
                                     kv_len, head_dim, scale);
    }
}

// out = softmax(scale * q k^T) v over kv positions [0, kv_len); lse = log-sum-exp of the scores.
// kv_len == 0 gives out = 0 and lse = -inf (an empty key set, merged away by lse_merge).
// out (layout), lse (n_batch, heads, q_len), q, k, v (layouts)
static void flash_attention_forward(float* out, float* lse, const float* q, const float* k, const float* v,
                                    AxisLayout q_layout, AxisLayout kv_layout, AxisLayout out_layout, int n_batch,
                                    int heads, int q_len, int kv_len, int head_dim, float scale) {
    MOSAIC_CHECK(head_dim <= FA_MAX_HEAD_DIM, "head size above FA_MAX_HEAD_DIM: use more heads");
    if (kv_len <= FAG_SHORT_KV)
        flash_attention_forward_short(out, lse, q, k, v, q_layout, kv_layout, out_layout, n_batch, heads, q_len,
                                      kv_len, head_dim, scale);
    else
        flash_attention_forward_tiled(out, lse, q, k, v, q_layout, kv_layout, out_layout, n_batch, heads, q_len,
                                      kv_len, head_dim, scale);
}

// ----------------------------------------------------------------------------
// backward, step 1: D_i = rowsum(dO_i * O_i), the softmax Jacobian's diagonal correction.
// One warp per query row, lanes over head dims, a shuffle reduction.
// dsum (n_batch, heads, q_len), dout and out (out_layout)
static __global__ void __launch_bounds__(FAG_THREADS)
    fa_backward_rowdot_kernel(float* dsum, const float* dout, const float* out, AxisLayout out_layout, long n_rows,
                              int heads, int q_len, int head_dim) {
    const long w = (long)blockIdx.x * FAG_WARPS + (threadIdx.x >> 5);
    const int lane = threadIdx.x & 31;
    if (w >= n_rows) return; // whole warps only
    const int i = (int)(w % q_len), h = (int)((w / q_len) % heads);
    const long n = w / ((long)q_len * heads);
    const long off = axis_offset(out_layout, n) + (long)h * head_dim + (long)i * out_layout.seq_stride;
    float acc = 0.0f;
    for (int e = lane; e < head_dim; e += 32) acc = fmaf(dout[off + e], out[off + e], acc);
    acc = fa_warp_sum(acc);
    if (lane == 0) dsum[w] = acc;
}

// backward, short path, dQ: one thread per (sequence, head, query); dq (q_layout) +=
static __global__ void __launch_bounds__(FAG_THREADS)
    fa_backward_short_dq_kernel(float* dq, const float* dout, const float* lse, const float* dsum, const float* q,
                                const float* k, const float* v, AxisLayout q_layout, AxisLayout kv_layout,
                                AxisLayout out_layout, long n_rows, int heads, int q_len, int kv_len, int head_dim,
                                float scale) {
    const long w = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (w >= n_rows) return;
    const int i = (int)(w % q_len), h = (int)((w / q_len) % heads);
    const long n = w / ((long)q_len * heads);
    const long q_off = axis_offset(q_layout, n) + (long)h * head_dim + (long)i * q_layout.seq_stride;
    const float* doi = dout + axis_offset(out_layout, n) + (long)h * head_dim + (long)i * out_layout.seq_stride;
    const float* kb = k + axis_offset(kv_layout, n) + (long)h * head_dim;
    const float* vb = v + axis_offset(kv_layout, n) + (long)h * head_dim;
    const float lse_i = lse[w], d_i = dsum[w];
    float ds[FAG_SHORT_KV];
#pragma unroll
    for (int j = 0; j < FAG_SHORT_KV; j++) {
        ds[j] = 0.0f;
        if (j < kv_len) {
            const float p = expf(scale * fa_row_dot(q + q_off, kb + (long)j * kv_layout.seq_stride, head_dim) - lse_i);
            ds[j] = p * (fa_row_dot(doi, vb + (long)j * kv_layout.seq_stride, head_dim) - d_i) * scale;
        }
    }
    for (int e = 0; e < head_dim; e++) {
        float acc = 0.0f;
#pragma unroll
        for (int j = 0; j < FAG_SHORT_KV; j++)
            if (j < kv_len) acc = fmaf(ds[j], kb[(long)j * kv_layout.seq_stride + e], acc);
        dq[q_off + e] += acc;
    }
}

// backward, short path, dK and dV: one thread per (sequence, head, key), walking the queries in
// chunks of FAG_SHORT_Q_CHUNK (probabilities in registers); dk, dv (kv_layout) +=
static __global__ void __launch_bounds__(FAG_THREADS)
    fa_backward_short_dkv_kernel(float* dk, float* dv, const float* dout, const float* lse, const float* dsum,
                                 const float* q, const float* k, const float* v, AxisLayout q_layout,
                                 AxisLayout kv_layout, AxisLayout out_layout, long n_keys, int heads, int q_len,
                                 int kv_len, int head_dim, float scale) {
    const long w = (long)blockIdx.x * blockDim.x + threadIdx.x; // = (n * heads + h) * kv_len + j
    if (w >= n_keys) return;
    const int j = (int)(w % kv_len), h = (int)((w / kv_len) % heads);
    const long nh = w / kv_len, n = nh / heads;
    const long kv_off = axis_offset(kv_layout, n) + (long)h * head_dim + (long)j * kv_layout.seq_stride;
    const float* qb = q + axis_offset(q_layout, n) + (long)h * head_dim;
    const float* dob = dout + axis_offset(out_layout, n) + (long)h * head_dim;
    const float* lb = lse + nh * q_len;
    const float* db = dsum + nh * q_len;
    for (int i0 = 0; i0 < q_len; i0 += FAG_SHORT_Q_CHUNK) {
        float p[FAG_SHORT_Q_CHUNK], ds[FAG_SHORT_Q_CHUNK];
#pragma unroll
        for (int b = 0; b < FAG_SHORT_Q_CHUNK; b++) {
            p[b] = ds[b] = 0.0f;
            const int i = i0 + b;
            if (i < q_len) {
                p[b] = expf(scale * fa_row_dot(qb + (long)i * q_layout.seq_stride, k + kv_off, head_dim) - lb[i]);
                ds[b] = p[b] * (fa_row_dot(dob + (long)i * out_layout.seq_stride, v + kv_off, head_dim) - db[i]) *
                        scale;
            }
        }
        for (int e = 0; e < head_dim; e++) {
            float dk_acc = 0.0f, dv_acc = 0.0f;
#pragma unroll
            for (int b = 0; b < FAG_SHORT_Q_CHUNK; b++)
                if (i0 + b < q_len) {
                    dk_acc = fmaf(ds[b], qb[(long)(i0 + b) * q_layout.seq_stride + e], dk_acc);
                    dv_acc = fmaf(p[b], dob[(long)(i0 + b) * out_layout.seq_stride + e], dv_acc);
                }
            dk[kv_off + e] += dk_acc;
            dv[kv_off + e] += dv_acc;
        }
    }
}

// backward, tiled, dQ: a block per (sequence, head, query tile), looping over the key tiles.
// Each warp owns ROWS query rows and keeps their dQ rows in registers; lanes own keys for the
// scores and head dims for dS K. dq (q_layout) +=
template <int DMAX>
__global__ void __launch_bounds__(FAG_THREADS)
    fa_backward_dq_kernel(float* dq, const float* dout, const float* lse, const float* dsum, const float* q,
                          const float* k, const float* v, AxisLayout q_layout, AxisLayout kv_layout,
                          AxisLayout out_layout, int heads, int q_len, int kv_len, int head_dim, float scale) {
    constexpr int ROWS = FaDqTile<DMAX>::ROWS, KPL = FaDqTile<DMAX>::KPL;
    constexpr int BQ = FAG_WARPS * ROWS, BK = 32 * KPL, NT = DMAX / 32, KS = DMAX + 1;
    __shared__ float q_s[BQ * DMAX];              // zero past q_len and head_dim
    __shared__ float do_s[BQ * DMAX];
    __shared__ float k_s[BK * KS];                // padded rows, as in the forward
    __shared__ float v_s[BK * KS];
    __shared__ float ds_s[FAG_WARPS * ROWS * BK]; // each warp's dS for the dS K product
    static_assert((2 * BQ * DMAX + 2 * BK * KS + FAG_WARPS * ROWS * BK) * 4 <= MOSAIC_MAX_SHARED_BYTES, "smem");
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const auto [i0, nh, h, n] = fa_block_tile<BQ>(q_len, heads);
    const float* qb = q + axis_offset(q_layout, n) + (long)h * head_dim;
    const float* dob = dout + axis_offset(out_layout, n) + (long)h * head_dim;
    const float* kb = k + axis_offset(kv_layout, n) + (long)h * head_dim;
    const float* vb = v + axis_offset(kv_layout, n) + (long)h * head_dim;
    fa_stage_pair<BQ, DMAX, DMAX, DMAX>(q_s, do_s, qb, dob, q_layout.seq_stride, out_layout.seq_stride, i0,
                                        q_len - i0, head_dim);
    // per row (warp-uniform): lse and D; a padding row gets lse = +inf, so p = 0
    float lse_r[ROWS], d_r[ROWS], acc[ROWS][NT];
    fa_zero(acc);
#pragma unroll
    for (int r = 0; r < ROWS; r++) {
        const int i = i0 + warp * ROWS + r;
        lse_r[r] = i < q_len ? lse[nh * q_len + i] : INFINITY;
        d_r[r] = i < q_len ? dsum[nh * q_len + i] : 0.0f;
    }
    float* ds_w = ds_s + warp * ROWS * BK;
    const float* q_w = q_s + warp * ROWS * DMAX;
    const float* do_w = do_s + warp * ROWS * DMAX;
    for (int j0 = 0; j0 < kv_len; j0 += BK) {
        const int nk = kv_len - j0 < BK ? kv_len - j0 : BK;
        fa_stage_pair<BK, DMAX, KS, KS>(k_s, v_s, kb, vb, kv_layout.seq_stride, kv_layout.seq_stride, j0, nk,
                                        head_dim);
        __syncthreads(); // dq: the K, V tile (and Q, dO) complete before any warp reads it
        // scores s and dP = dO V^T of query row r and this lane's key c * 32 + lane
        float s[ROWS][KPL], dp[ROWS][KPL];
        fa_zero(s);
        fa_zero(dp);
#pragma unroll 4
        for (int e = 0; e < DMAX; e++)
            fa_fma_step<ROWS, KPL, DMAX, 1, KS>({&s, &dp}, {q_w, do_w}, {k_s, v_s}, e, lane);
#pragma unroll
        for (int r = 0; r < ROWS; r++)
#pragma unroll
            for (int c = 0; c < KPL; c++) {
                const int j = c * 32 + lane;
                const float p = j < nk ? expf(scale * s[r][c] - lse_r[r]) : 0.0f;
                ds_w[r * BK + j] = p * (dp[r][c] - d_r[r]) * scale;
            }
        __syncwarp(); // every lane's dS written before the lanes read each other's
        // acc += dS K, this lane's head dims t * 32 + lane
#pragma unroll 4
        for (int j = 0; j < BK; j++) fa_fma_step<ROWS, NT, BK, KS, 1>({&acc}, {ds_w}, {k_s}, j, lane);
        __syncthreads(); // dq: every warp is done with K, V, dS before the next tile overwrites them
    }
    float* dqb = dq + axis_offset(q_layout, n) + (long)h * head_dim;
#pragma unroll
    for (int r = 0; r < ROWS; r++) {
        const int i = i0 + warp * ROWS + r;
        if (i >= q_len) continue;
#pragma unroll
        for (int t = 0; t < NT; t++) {
            const int e = t * 32 + lane;
            if (e < head_dim) dqb[(long)i * q_layout.seq_stride + e] += acc[r][t];
        }
    }
}

// backward, tiled, dK and dV: a block per (sequence, head, key tile), looping over all query
// tiles of 32. Each warp owns ROWS keys and keeps their dK, dV rows in registers (lanes over
// head dims); lanes own queries for the scores. dk, dv (kv_layout) +=
template <int DMAX>
__global__ void __launch_bounds__(FAG_THREADS)
    fa_backward_dkv_kernel(float* dk, float* dv, const float* dout, const float* lse, const float* dsum,
                           const float* q, const float* k, const float* v, AxisLayout q_layout,
                           AxisLayout kv_layout, AxisLayout out_layout, int heads, int q_len, int kv_len,
                           int head_dim, float scale) {
    constexpr int ROWS = FaDkvTile<DMAX>::ROWS;
    constexpr int BKV = FAG_WARPS * ROWS, BQ = 32, NT = DMAX / 32, QS = DMAX + 1;
    __shared__ float k_s[BKV * DMAX];            // zero past kv_len and head_dim
    __shared__ float v_s[BKV * DMAX];
    __shared__ float q_s[BQ * QS];               // padded rows: lane i reads query i conflict-free
    __shared__ float do_s[BQ * QS];
    __shared__ float p_s[FAG_WARPS * ROWS * BQ]; // each warp's P and dS for its keys
    __shared__ float ds_s[FAG_WARPS * ROWS * BQ];
    static_assert((2 * BKV * DMAX + 2 * BQ * QS + 2 * FAG_WARPS * ROWS * BQ) * 4 <= MOSAIC_MAX_SHARED_BYTES, "smem");
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const auto [j0, nh, h, n] = fa_block_tile<BKV>(kv_len, heads);
    const int nk = kv_len - j0 < BKV ? kv_len - j0 : BKV;
    const float* qb = q + axis_offset(q_layout, n) + (long)h * head_dim;
    const float* dob = dout + axis_offset(out_layout, n) + (long)h * head_dim;
    const float* kb = k + axis_offset(kv_layout, n) + (long)h * head_dim;
    const float* vb = v + axis_offset(kv_layout, n) + (long)h * head_dim;
    const float* lb = lse + nh * q_len;
    const float* db = dsum + nh * q_len;
    fa_stage_pair<BKV, DMAX, DMAX, DMAX>(k_s, v_s, kb, vb, kv_layout.seq_stride, kv_layout.seq_stride, j0, nk,
                                         head_dim);
    float dk_acc[ROWS][NT], dv_acc[ROWS][NT];
    fa_zero(dk_acc);
    fa_zero(dv_acc);
    const float* k_w = k_s + warp * ROWS * DMAX;
    const float* v_w = v_s + warp * ROWS * DMAX;
    float* p_w = p_s + warp * ROWS * BQ;
    float* ds_w = ds_s + warp * ROWS * BQ;
    for (int i0 = 0; i0 < q_len; i0 += BQ) {
        fa_stage_pair<BQ, DMAX, QS, QS>(q_s, do_s, qb, dob, q_layout.seq_stride, out_layout.seq_stride, i0,
                                        q_len - i0, head_dim);
        // this lane's query: a padding query gets lse = +inf, so p = dS = 0
        const int i = i0 + lane;
        const float lse_i = i < q_len ? lb[i] : INFINITY, d_i = i < q_len ? db[i] : 0.0f;
        __syncthreads(); // dkv: the Q, dO tile (and K, V) complete before any warp reads it
        // scores s and dP = V dO^T of key row r and this lane's query (one column)
        float s[ROWS][1], dp[ROWS][1];
        fa_zero(s);
        fa_zero(dp);
#pragma unroll 4
        for (int e = 0; e < DMAX; e++)
            fa_fma_step<ROWS, 1, DMAX, 1, QS>({&s, &dp}, {k_w, v_w}, {q_s, do_s}, e, lane);
#pragma unroll
        for (int r = 0; r < ROWS; r++) {
            const float p = expf(scale * s[r][0] - lse_i);
            p_w[r * BQ + lane] = p;
            ds_w[r * BQ + lane] = p * (dp[r][0] - d_i) * scale;
        }
        __syncwarp(); // every lane's P, dS written before the lanes read each other's
        // dV += P dO, dK += dS Q, this lane's head dims t * 32 + lane
#pragma unroll 4
        for (int ii = 0; ii < BQ; ii++)
            fa_fma_step<ROWS, NT, BQ, QS, 1>({&dv_acc, &dk_acc}, {p_w, ds_w}, {do_s, q_s}, ii, lane);
        __syncthreads(); // dkv: every warp is done with Q, dO, P, dS before the next query tile
    }
    float* dkb = dk + axis_offset(kv_layout, n) + (long)h * head_dim;
    float* dvb = dv + axis_offset(kv_layout, n) + (long)h * head_dim;
#pragma unroll
    for (int r = 0; r < ROWS; r++) {
        const int j = warp * ROWS + r;
        if (j >= nk) continue;
#pragma unroll
        for (int t = 0; t < NT; t++) {
            const int e = t * 32 + lane;
            if (e >= head_dim) continue;
            const long off = (long)(j0 + j) * kv_layout.seq_stride + e;
            dkb[off] += dk_acc[r][t];
            dvb[off] += dv_acc[r][t];
        }
    }
}

// D's scratch (n_batch * heads * q_len floats), grown on demand and kept: cudaFree
// synchronises the device, so it runs only when a larger problem first appears. One buffer:
// backward calls must be ordered (one stream), as every leaf op on mosaic_stream is.
static float* fa_dsum_scratch = NULL;
static long fa_dsum_capacity = 0;
static float* fa_dsum_buffer(long n) {
    if (n > fa_dsum_capacity) {
        if (fa_dsum_scratch) CUDA_CHECK(cudaFree(fa_dsum_scratch));
        CUDA_CHECK(cudaMalloc((void**)&fa_dsum_scratch, (size_t)n * sizeof(float)));
        fa_dsum_capacity = n;
    }
    return fa_dsum_scratch;
}

// the twin of flash_attention_cpu.h's: the D buffer for up to max_queries (sequence, head, query)
// rows, allocated once at build time
static inline void flash_attention_reserve_scratch(long max_queries) { fa_dsum_buffer(max_queries); }

static void fa_backward_rowdot(float* dsum, const float* dout, const float* out, AxisLayout out_layout, long n_rows,
                               int heads, int q_len, int head_dim) {
    MOSAIC_LAUNCH(fa_backward_rowdot_kernel, fa_grid((n_rows + FAG_WARPS - 1) / FAG_WARPS), FAG_THREADS, 0,
                  mosaic_stream, dsum, dout, out, out_layout, n_rows, heads, q_len, head_dim);
}

// the two backward paths, also called directly by the kernel test
static void flash_attention_backward_short(float* dq, float* dk, float* dv, const float* dout, const float* out,
                                           const float* lse, const float* q, const float* k, const float* v,
                                           AxisLayout q_layout, AxisLayout kv_layout, AxisLayout out_layout,
                                           int n_batch, int heads, int q_len, int kv_len, int head_dim, float scale) {
    MOSAIC_CHECK(kv_len <= FAG_SHORT_KV, "short attention path called with too many keys");
    const long n_rows = (long)n_batch * heads * q_len, n_keys = (long)n_batch * heads * kv_len;
    if (n_rows == 0 || n_keys == 0) return;
    float* dsum = fa_dsum_buffer(n_rows);
    fa_backward_rowdot(dsum, dout, out, out_layout, n_rows, heads, q_len, head_dim);
    MOSAIC_LAUNCH(fa_backward_short_dq_kernel, fa_grid((n_rows + FAG_THREADS - 1) / FAG_THREADS), FAG_THREADS, 0,
                  mosaic_stream, dq, dout, lse, dsum, q, k, v, q_layout, kv_layout, out_layout, n_rows, heads, q_len,
                  kv_len, head_dim, scale);
    MOSAIC_LAUNCH(fa_backward_short_dkv_kernel, fa_grid((n_keys + FAG_THREADS - 1) / FAG_THREADS), FAG_THREADS, 0,
                  mosaic_stream, dk, dv, dout, lse, dsum, q, k, v, q_layout, kv_layout, out_layout, n_keys, heads,
                  q_len, kv_len, head_dim, scale);
}

template <int DMAX>
static void fa_backward_tiled_launch(float* dq, float* dk, float* dv, const float* dout, const float* lse,
                                     const float* dsum, const float* q, const float* k, const float* v,
                                     AxisLayout q_layout, AxisLayout kv_layout, AxisLayout out_layout, int n_batch,
                                     int heads, int q_len, int kv_len, int head_dim, float scale) {
    constexpr int BQ = FAG_WARPS * FaDqTile<DMAX>::ROWS, BKV = FAG_WARPS * FaDkvTile<DMAX>::ROWS;
    const long nh = (long)n_batch * heads;
    MOSAIC_LAUNCH(fa_backward_dq_kernel<DMAX>, fa_grid(nh * ((q_len + BQ - 1) / BQ)), FAG_THREADS, 0, mosaic_stream,
                  dq, dout, lse, dsum, q, k, v, q_layout, kv_layout, out_layout, heads, q_len, kv_len, head_dim,
                  scale);
    MOSAIC_LAUNCH(fa_backward_dkv_kernel<DMAX>, fa_grid(nh * ((kv_len + BKV - 1) / BKV)), FAG_THREADS, 0,
                  mosaic_stream, dk, dv, dout, lse, dsum, q, k, v, q_layout, kv_layout, out_layout, heads, q_len,
                  kv_len, head_dim, scale);
}

static void flash_attention_backward_tiled(float* dq, float* dk, float* dv, const float* dout, const float* out,
                                           const float* lse, const float* q, const float* k, const float* v,
                                           AxisLayout q_layout, AxisLayout kv_layout, AxisLayout out_layout,
                                           int n_batch, int heads, int q_len, int kv_len, int head_dim, float scale) {
    const long n_rows = (long)n_batch * heads * q_len;
    if (n_rows == 0 || kv_len == 0) return;
    float* dsum = fa_dsum_buffer(n_rows);
    fa_backward_rowdot(dsum, dout, out, out_layout, n_rows, heads, q_len, head_dim);
    switch (fa_bucket(head_dim)) {
    case 32:
        fa_backward_tiled_launch<32>(dq, dk, dv, dout, lse, dsum, q, k, v, q_layout, kv_layout, out_layout, n_batch,
                                     heads, q_len, kv_len, head_dim, scale);
        break;
    case 64:
        fa_backward_tiled_launch<64>(dq, dk, dv, dout, lse, dsum, q, k, v, q_layout, kv_layout, out_layout, n_batch,
                                     heads, q_len, kv_len, head_dim, scale);
        break;
    default:
        fa_backward_tiled_launch<128>(dq, dk, dv, dout, lse, dsum, q, k, v, q_layout, kv_layout, out_layout, n_batch,
                                      heads, q_len, kv_len, head_dim, scale);
    }
}

// Backward from the saved output and lse. ACCUMULATES into dq, dk, dv (callers zero them), so
// that a sharded caller can run it once per key block; out and lse are the FINAL (all keys)
// results. dq (q_layout), dk, dv (kv_layout), dout and out (out_layout), lse (n_batch, heads, q_len)
static void flash_attention_backward(float* dq, float* dk, float* dv, const float* dout, const float* out,
                                     const float* lse, const float* q, const float* k, const float* v,
                                     AxisLayout q_layout, AxisLayout kv_layout, AxisLayout out_layout, int n_batch,
                                     int heads, int q_len, int kv_len, int head_dim, float scale) {
    MOSAIC_CHECK(head_dim <= FA_MAX_HEAD_DIM, "head size above FA_MAX_HEAD_DIM: use more heads");
    // the short dK/dV threads walk all queries alone: only worth it while there are few
    if (kv_len <= FAG_SHORT_KV && q_len <= FAG_SHORT_BWD_MAX_Q)
        flash_attention_backward_short(dq, dk, dv, dout, out, lse, q, k, v, q_layout, kv_layout, out_layout, n_batch,
                                       heads, q_len, kv_len, head_dim, scale);
    else
        flash_attention_backward_tiled(dq, dk, dv, dout, out, lse, q, k, v, q_layout, kv_layout, out_layout, n_batch,
                                       heads, q_len, kv_len, head_dim, scale);
}

// ----------------------------------------------------------------------------
// merge: one warp per (sequence, head, query), lanes over head dims. out, out_b (layouts),
// lse, lse_b (n_batch, heads, q_len)
static __global__ void __launch_bounds__(FAG_THREADS)
    fa_lse_merge_kernel(float* out, float* lse, const float* out_b, const float* lse_b, AxisLayout out_layout,
                        AxisLayout out_b_layout, long n_rows, int heads, int q_len, int head_dim) {
    const long w = (long)blockIdx.x * FAG_WARPS + (threadIdx.x >> 5);
    const int lane = threadIdx.x & 31;
    if (w >= n_rows) return; // whole warps only
    const float la = lse[w], lb = lse_b[w];
    if (lb == -INFINITY) return; // an empty side b leaves a unchanged
    const int i = (int)(w % q_len), h = (int)((w / q_len) % heads);
    const long n = w / ((long)q_len * heads);
    float* oa = out + axis_offset(out_layout, n) + (long)h * head_dim + (long)i * out_layout.seq_stride;
    const float* ob = out_b + axis_offset(out_b_layout, n) + (long)h * head_dim + (long)i * out_b_layout.seq_stride;
    float l = lb;
    if (la == -INFINITY) {
        for (int e = lane; e < head_dim; e += 32) oa[e] = ob[e];
    } else {
        // L = max(La, Lb) + log1p(exp(-|La - Lb|)); O = exp(La - L) Oa + exp(Lb - L) Ob
        l = fmaxf(la, lb) + log1pf(expf(-fabsf(la - lb)));
        const float wa = expf(la - l), wb = expf(lb - l);
        for (int e = lane; e < head_dim; e += 32) oa[e] = wa * oa[e] + wb * ob[e];
    }
    __syncwarp(); // every lane has read lse[w] before lane 0 overwrites it
    if (lane == 0) lse[w] = l;
}

// Merge a partial result (out_b, lse_b) over a disjoint key set into (out, lse), in place.
// An empty key set (lse = -inf) leaves the other side unchanged.
static void lse_merge(float* out, float* lse, const float* out_b, const float* lse_b, AxisLayout out_layout,
                      AxisLayout out_b_layout, int n_batch, int heads, int q_len, int head_dim) {
    const long n_rows = (long)n_batch * heads * q_len;
    if (n_rows == 0) return;
    MOSAIC_LAUNCH(fa_lse_merge_kernel, fa_grid((n_rows + FAG_WARPS - 1) / FAG_WARPS), FAG_THREADS, 0, mosaic_stream,
                  out, lse, out_b, lse_b, out_layout, out_b_layout, n_rows, heads, q_len, head_dim);
}

} // namespace gpu
