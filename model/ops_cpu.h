// CPU leaf ops: the only CPU code that reads or writes tensor memory (besides attention).
// Each op is a template over the element type so that the gradient checks can run it in
// double; the model instantiates float. Conventions:
//   - outputs first, then inputs, then sizes;
//   - a backward op OVERWRITES the gradient of its activation input (dinp) and ACCUMULATES
//     (+=) into parameter gradients, which are zeroed once per step;
//   - reductions run in a fixed order that does not depend on the thread count, so the same
//     inputs give the same bits with 1 or 64 threads.
#pragma once
#include <omp.h>
#include "common.h"

// ----------------------------------------------------------------------------
// device memory: on the CPU build "device" memory is host memory

static inline void* device_malloc(size_t bytes) { return mallocCheck(bytes); }
static inline void device_free(void* ptr) { free(ptr); }
static inline void device_memset_zero(void* ptr, size_t bytes) { memset(ptr, 0, bytes); }
static inline void device_copy_to_device(void* dst, const void* src, size_t bytes) { memcpy(dst, src, bytes); }
static inline void device_copy_to_host(void* dst, const void* src, size_t bytes) { memcpy(dst, src, bytes); }
static inline void device_copy(void* dst, const void* src, size_t bytes) { memcpy(dst, src, bytes); }
// the ops run on the calling thread's time: nothing is ever in flight
static inline void device_synchronize(void) {}

// the backend's compute resources: OpenMP threads (OpenBLAS on OpenMP shares the pool);
// threads <= 0 keeps the default, all cores
static inline void backend_init(int threads) {
    if (threads > 0) omp_set_num_threads(threads);
}
static inline int backend_threads(void) { return omp_get_max_threads(); }

// the CPU ops keep no scratch of their own; the CUDA twin sizes (and freezes) its reduction
// workspace here, once, at build time
static inline void ops_reserve_scratch(long max_rows, int max_width) { (void)max_rows; (void)max_width; }

// ----------------------------------------------------------------------------
// GEMM: one wrapper, the library chosen in model/gemm_cpu.h (float: oneDNN or OpenBLAS; double: OpenBLAS)
#include "gemm_cpu.h"

// Column sums over N rows in a fixed order, whatever the thread count: the rows are cut into
// COLUMN_ROW_CHUNKS fixed ranges, each range adds its rows (contiguous reads) into partials in
// double, and the partials are added in range order. Columns go in blocks of COLUMN_BLOCK so
// that the partials stay on the stack. add_row(acc, n, d0, w) adds row n's columns [d0, d0 + w)
// into acc[v][0, w) for each of NV sums; finish(d0, w, sums) takes the block's totals.
// (Chunks of columns walked top to bottom, the former layout, read 64 bytes per row at a
// stride and ran 2-3x slower once the matrix left the cache.)
enum { COLUMN_ROW_CHUNKS = 32, COLUMN_BLOCK = 256 };
template <int NV, typename AddRow, typename Finish>
static void column_sums_fixed_order(long N, int D, AddRow add_row, Finish finish) {
    double partial[COLUMN_ROW_CHUNKS][NV][COLUMN_BLOCK]; // NV x 64 KB
    const long rows = (N + COLUMN_ROW_CHUNKS - 1) / COLUMN_ROW_CHUNKS;
    for (int d0 = 0; d0 < D; d0 += COLUMN_BLOCK) {
        const int w = D - d0 < COLUMN_BLOCK ? D - d0 : COLUMN_BLOCK;
#pragma omp parallel for schedule(static)
        for (int c = 0; c < COLUMN_ROW_CHUNKS; c++) {
            double(*acc)[COLUMN_BLOCK] = partial[c];
            for (int v = 0; v < NV; v++)
                for (int j = 0; j < w; j++) acc[v][j] = 0.0;
            const long lo = c * rows, hi = lo + rows < N ? lo + rows : N;
            for (long n = lo; n < hi; n++) add_row(acc, n, d0, w);
        }
        double sums[NV][COLUMN_BLOCK];
        for (int v = 0; v < NV; v++)
            for (int j = 0; j < w; j++) {
                double s = 0.0;
                for (int c = 0; c < COLUMN_ROW_CHUNKS; c++) s += partial[c][v][j];
                sums[v][j] = s;
            }
        finish(d0, w, sums);
    }
}

// out[d] += sum_n a[n, d]; a (N, D)
template <typename T>
static void column_sums_accumulate(T* out, const T* a, long N, int D) {
    column_sums_fixed_order<1>(
        N, D,
        [&](double(*acc)[COLUMN_BLOCK], long n, int d0, int w) {
            const T* row = a + n * D + d0;
#pragma omp simd
            for (int j = 0; j < w; j++) acc[0][j] += row[j];
        },
        [&](int d0, int w, double(*sums)[COLUMN_BLOCK]) {
            for (int j = 0; j < w; j++) out[d0 + j] += (T)sums[0][j];
        });
}

// ----------------------------------------------------------------------------
// linear layer, PyTorch convention: weight is (out_dim, in_dim)

template <typename T>
static void matmul_forward(T* out, const T* inp, const T* weight, const T* bias, long N, int in_dim, int out_dim) {
    // out (N, out_dim) = inp (N, in_dim) @ weight^T + bias
    if (N == 0) return;
    if (bias) {
#pragma omp parallel for schedule(static)
        for (long n = 0; n < N; n++) memcpy(out + n * out_dim, bias, out_dim * sizeof(T));
    }
    blas_gemm(CblasNoTrans, CblasTrans, (int)N, out_dim, in_dim, (T)1, inp, in_dim, weight, in_dim,
              bias ? (T)1 : (T)0, out, out_dim);
}

template <typename T>
static void matmul_backward(T* dinp, T* dweight, T* dbias, const T* dout, const T* inp, const T* weight, long N,
                            int in_dim, int out_dim) {
    // dinp (N, in_dim) = dout (N, out_dim) @ weight; dweight (out_dim, in_dim) += dout^T @ inp
    if (N == 0) return;
    if (dinp) blas_gemm(CblasNoTrans, CblasNoTrans, (int)N, in_dim, out_dim, (T)1, dout, out_dim, weight, in_dim, (T)0, dinp, in_dim);
    blas_gemm(CblasTrans, CblasNoTrans, out_dim, in_dim, (int)N, (T)1, dout, out_dim, inp, in_dim, (T)1, dweight, in_dim);
    if (dbias) column_sums_accumulate(dbias, dout, N, out_dim);
}

// ----------------------------------------------------------------------------
// LayerNorm over the last dimension, eps 1e-5, biased variance (as torch.nn.LayerNorm)

// res (N, E) = a + b, then out = LayerNorm(res): the residual add and the norm in one pass over
// the rows (res may be a; b NULL: no add, a is the input and res is not written). mean, rstd (N)
template <typename T>
static void residual_layernorm_forward(T* res, T* out, T* mean, T* rstd, const T* a, const T* b, const T* weight,
                                       const T* bias, long N, int E) {
#pragma omp parallel for schedule(static)
    for (long n = 0; n < N; n++) {
        const T* x = a + n * E;
        if (b) {
            T* r = res + n * E;
            const T* bn = b + n * E;
#pragma omp simd
            for (int e = 0; e < E; e++) r[e] = x[e] + bn[e];
            x = r;
        }
        // sums in double across vector lanes (simd reductions: a fixed order, any thread count)
        double m = 0.0;
#pragma omp simd reduction(+ : m)
        for (int e = 0; e < E; e++) m += x[e];
        m /= E;
        double v = 0.0;
#pragma omp simd reduction(+ : v)
        for (int e = 0; e < E; e++) v += (x[e] - m) * (x[e] - m);
        v /= E;
        double s = 1.0 / sqrt(v + 1e-5);
        T* o = out + n * E;
#pragma omp simd
        for (int e = 0; e < E; e++) o[e] = (T)((x[e] - m) * s) * weight[e] + bias[e];
        mean[n] = (T)m;
        rstd[n] = (T)s;
    }
}

template <typename T>
static void layernorm_forward(T* out, T* mean, T* rstd, const T* inp, const T* weight, const T* bias, long N, int E) {
    // out, inp (N, E); mean, rstd (N)
    residual_layernorm_forward((T*)NULL, out, mean, rstd, inp, (const T*)NULL, weight, bias, N, E);
}

template <typename T>
static void layernorm_backward(T* dinp, T* dweight, T* dbias, const T* dout, const T* inp, const T* weight,
                               const T* mean, const T* rstd, long N, int E) {
    // dinp, dout, inp (N, E); dweight, dbias (E) accumulate
#pragma omp parallel for schedule(static)
    for (long n = 0; n < N; n++) {
        const T* x = inp + n * E;
        const T* dy = dout + n * E;
        T m = mean[n], s = rstd[n];
        // dxhat = dy * w; dx = s * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat))
        double dnorm_mean = 0.0, dnorm_xhat_mean = 0.0;
#pragma omp simd reduction(+ : dnorm_mean, dnorm_xhat_mean)
        for (int e = 0; e < E; e++) {
            T xhat = (x[e] - m) * s;
            T dxhat = dy[e] * weight[e];
            dnorm_mean += dxhat;
            dnorm_xhat_mean += dxhat * xhat;
        }
        dnorm_mean /= E;
        dnorm_xhat_mean /= E;
        T* dx = dinp + n * E;
#pragma omp simd
        for (int e = 0; e < E; e++) {
            T xhat = (x[e] - m) * s;
            T dxhat = dy[e] * weight[e];
            dx[e] = s * (dxhat - (T)dnorm_mean - xhat * (T)dnorm_xhat_mean);
        }
    }
    // parameter gradients: column sums in a fixed order
    column_sums_fixed_order<2>(
        N, E,
        [&](double(*acc)[COLUMN_BLOCK], long n, int e0, int w) {
            const T* x = inp + n * E + e0;
            const T* dy = dout + n * E + e0;
            const T m = mean[n], s = rstd[n];
#pragma omp simd
            for (int j = 0; j < w; j++) {
                acc[0][j] += (double)dy[j] * ((x[j] - m) * s);
                acc[1][j] += dy[j];
            }
        },
        [&](int e0, int w, double(*sums)[COLUMN_BLOCK]) {
            for (int j = 0; j < w; j++) {
                dweight[e0 + j] += (T)sums[0][j];
                dbias[e0 + j] += (T)sums[1][j];
            }
        });
}

// ----------------------------------------------------------------------------
// exact GELU: x * Phi(x), Phi(x) = (1 + erf(x / sqrt 2)) / 2

// erf for float, written so the compiler vectorises it (libm's erff is one call per
// element): Abramowitz & Stegun 7.1.26, |error| <= 1.5e-7, about float precision.
// double keeps libm's erf, so the double gradient checks stay exact.
static inline float gelu_erf(float x) {
    const float ax = fabsf(x);
    const float t = 1.0f / (1.0f + 0.3275911f * ax);
    const float poly = t * (0.254829592f + t * (-0.284496736f + t * (1.421413741f + t * (-1.453152027f + t * 1.061405429f))));
    const float y = 1.0f - poly * fast_expf(-ax * ax);
    return copysignf(y, x);
}
static inline double gelu_erf(double x) { return erf(x); }
static inline float gelu_exp(float x) { return fast_expf(x); }
static inline double gelu_exp(double x) { return exp(x); }

template <typename T>
static void gelu_forward(T* out, const T* inp, long n) {
#pragma omp parallel for simd schedule(static)
    for (long i = 0; i < n; i++) {
        T x = inp[i];
        out[i] = (T)0.5 * x * ((T)1 + gelu_erf(x * (T)M_SQRT1_2));
    }
}

template <typename T>
static void gelu_backward(T* dinp, const T* inp, const T* dout, long n) {
    const T inv_sqrt_2pi = (T)0.3989422804014327;
#pragma omp parallel for simd schedule(static)
    for (long i = 0; i < n; i++) {
        T x = inp[i];
        T cdf = (T)0.5 * ((T)1 + gelu_erf(x * (T)M_SQRT1_2));
        T pdf = inv_sqrt_2pi * gelu_exp((T)-0.5 * x * x);
        dinp[i] = dout[i] * (cdf + x * pdf);
    }
}

// ----------------------------------------------------------------------------
// elementwise

template <typename T>
static void residual_forward(T* out, const T* a, const T* b, long n) {
#pragma omp parallel for simd schedule(static)
    for (long i = 0; i < n; i++) out[i] = a[i] + b[i];
}

template <typename T>
static void add_inplace(T* acc, const T* x, long n) {
#pragma omp parallel for simd schedule(static)
    for (long i = 0; i < n; i++) acc[i] += x[i];
}

// ----------------------------------------------------------------------------
// feature encoder: per dataset and feature, standardise with train-row statistics, clip,
// then Linear(1 -> E) per cell. Statistics are split into a local sum (this rank's train
// rows) and the normalisation, so that a row-sharded run can all-reduce the sums between.

// Two passes in double, so that a feature with a large mean and a tiny spread keeps its
// variance (one pass of sum and sum of squares cancels catastrophically: mean 3e4, std 1e-3
// lost the column). Under row sharding the group all-reduces between the passes:
//   feature_stats_local -> allreduce [count, sum] -> feature_deviations_local -> allreduce m2
//   -> feature_normalize.

// stats (B, F, 2) = [count, sum] over the train rows held here
template <typename T>
static void feature_stats_local(double* stats, const T* x, int B, int R, int F, int S) {
    // x (B, R, F); rows [0, S) of each dataset are train rows
#pragma omp parallel for collapse(2) schedule(static)
    for (int b = 0; b < B; b++) {
        for (int f = 0; f < F; f++) {
            double sum = 0.0;
            for (int r = 0; r < S; r++) sum += (double)x[((long)b * R + r) * F + f];
            double* st = stats + ((long)b * F + f) * 2;
            st[0] = S;
            st[1] = sum;
        }
    }
}

// m2 (B, F) = sum over the train rows held here of (x - mean)^2, mean = sum / count of the
// group's stats (B, F, 2); a rank without train rows contributes 0
template <typename T>
static void feature_deviations_local(double* m2, const T* x, const double* stats, int B, int R, int F, int S) {
#pragma omp parallel for collapse(2) schedule(static)
    for (int b = 0; b < B; b++) {
        for (int f = 0; f < F; f++) {
            const double* st = stats + ((long)b * F + f) * 2;
            const double mean = st[1] / st[0];
            double acc = 0.0;
            for (int r = 0; r < S; r++) {
                const double d = (double)x[((long)b * R + r) * F + f] - mean;
                acc += d * d;
            }
            m2[(long)b * F + f] = acc;
        }
    }
}

// xnorm (B, R, F) = clip((x - mean) / (std + 1e-20), -100, 100), std unbiased;
// stats (B, F, 2) and m2 (B, F) summed over the group
template <typename T>
static void feature_normalize(T* xnorm, const T* x, const double* stats, const double* m2, int B, int R, int F) {
#pragma omp parallel for schedule(static)
    for (long br = 0; br < (long)B * R; br++) {
        int b = (int)(br / R);
        for (int f = 0; f < F; f++) {
            const double* st = stats + ((long)b * F + f) * 2;
            double n = st[0];
            double mean = st[1] / n;
            // n == 1 gives 0/0 = NaN, as torch.std does for a single train row (then sd 0)
            double var = m2[(long)b * F + f] / (n - 1.0);
            double sd = sqrt(var > 0.0 ? var : 0.0);
            double z = ((double)x[br * F + f] - mean) / (sd + 1e-20);
            z = z < -100.0 ? -100.0 : (z > 100.0 ? 100.0 : z);
            xnorm[br * F + f] = (T)z;
        }
    }
}

// label stats (B, 2) = [train row count, sum of train labels]
template <typename T>
static void label_stats_local(double* stats, const T* y, int B, int R, int S) {
    for (int b = 0; b < B; b++) {
        double sum = 0.0;
        for (int r = 0; r < S; r++) sum += y[(long)b * R + r];
        stats[b * 2 + 0] = S;
        stats[b * 2 + 1] = sum;
    }
}

// ynorm (B, R): train rows keep their label, test rows get the train-label mean
template <typename T>
static void target_fill(T* ynorm, const T* y, const double* stats, int B, int R, int S) {
    for (int b = 0; b < B; b++) {
        T mean = (T)(stats[b * 2 + 1] / stats[b * 2 + 0]);
        for (int r = 0; r < R; r++) ynorm[(long)b * R + r] = r < S ? y[(long)b * R + r] : mean;
    }
}

// out[:, :, col0 + f, :] = v[:, :, f] * w + bias for f in [0, n_cols): Linear(1 -> E) per cell
// out (B*R, C, E); v (B*R, n_cols); w, bias (E)
template <typename T>
static void scalar_embed_forward(T* out, const T* v, const T* w, const T* bias, long BR, int n_cols, int col0, int C, int E) {
#pragma omp parallel for schedule(static)
    for (long br = 0; br < BR; br++) {
        for (int f = 0; f < n_cols; f++) {
            T val = v[br * n_cols + f];
            T* o = out + (br * C + col0 + f) * E;
            for (int e = 0; e < E; e++) o[e] = val * w[e] + bias[e];
        }
    }
}

// dw, dbias (E) += sums over cells of dout * v and dout
template <typename T>
static void scalar_embed_backward(T* dw, T* dbias, const T* dout, const T* v, long BR, int n_cols, int col0, int C, int E) {
#pragma omp parallel for schedule(static)
    for (int e = 0; e < E; e++) {
        double gw = 0.0, gb = 0.0;
        for (long br = 0; br < BR; br++) {
            for (int f = 0; f < n_cols; f++) {
                T g = dout[(br * C + col0 + f) * E + e];
                gw += (double)g * v[br * n_cols + f];
                gb += g;
            }
        }
        dw[e] += (T)gw;
        dbias[e] += (T)gb;
    }
}

// ----------------------------------------------------------------------------
// decoder input: the target column (last) of the test rows

// out (B, R-S, E) = x[b, S + i, C - 1, :]; x (B, R, C, E)
template <typename T>
static void gather_target_test_rows(T* out, const T* x, int B, int R, int C, int S, int E) {
    int T_rows = R - S;
    for (int b = 0; b < B; b++)
        for (int i = 0; i < T_rows; i++)
            memcpy(out + ((long)b * T_rows + i) * E, x + (((long)b * R + S + i) * C + C - 1) * E, E * sizeof(T));
}

// dx (B, R, C, E) = 0 everywhere but the gathered cells, which get dout (B, R-S, E)
template <typename T>
static void scatter_target_test_rows(T* dx, const T* dout, int B, int R, int C, int S, int E) {
    memset(dx, 0, (size_t)B * R * C * E * sizeof(T));
    int T_rows = R - S;
    for (int b = 0; b < B; b++)
        for (int i = 0; i < T_rows; i++)
            memcpy(dx + (((long)b * R + S + i) * C + C - 1) * E, dout + ((long)b * T_rows + i) * E, E * sizeof(T));
}

// dx[b, S + i, C - 1, :] += dout[b, i, :]: the gathered cells' gradient added into a buffer
// that already holds others (the pruned last layer's residuals); dx (B, R, C, E), dout (B, R-S, E)
template <typename T>
static void add_target_test_rows(T* dx, const T* dout, int B, int R, int C, int S, int E) {
    const int T_rows = R - S;
#pragma omp parallel for schedule(static)
    for (long row = 0; row < (long)B * T_rows; row++) {
        const long b = row / T_rows, i = row % T_rows;
        T* to = dx + ((b * R + S + i) * C + C - 1) * E;
        const T* from = dout + row * E;
        for (int e = 0; e < E; e++) to[e] += from[e];
    }
}

// ----------------------------------------------------------------------------
// softmax cross-entropy over the test rows

// loss_sum (1) = sum over rows of -log softmax(logits)[label]; probs (N, K); labels from
// y (B, R) rows [S, R) in (b, i) order, so N = B * (R - S). The sum runs in row order.
template <typename T>
static void crossentropy_forward(T* loss_sum, T* probs, const T* logits, const T* y, int B, int R, int S, int K) {
    long N = (long)B * (R - S);
    double total = 0.0;
    for (long n = 0; n < N; n++) {
        const T* z = logits + n * K;
        T* p = probs + n * K;
        double zmax = z[0];
        for (int k = 1; k < K; k++) zmax = z[k] > zmax ? z[k] : zmax;
        double sum = 0.0;
        for (int k = 0; k < K; k++) sum += exp((double)z[k] - zmax);
        for (int k = 0; k < K; k++) p[k] = (T)(exp((double)z[k] - zmax) / sum);
        int label = (int)y[(n / (R - S)) * R + S + n % (R - S)];
        total += -((double)z[label] - zmax - log(sum));
    }
    loss_sum[0] = (T)total;
}

// dlogits (N, K) = (probs - onehot(label)) * scale; scale = 1 / (global number of test rows)
template <typename T>
static void crossentropy_backward(T* dlogits, const T* probs, const T* y, T scale, int B, int R, int S, int K) {
    long N = (long)B * (R - S);
    for (long n = 0; n < N; n++) {
        int label = (int)y[(n / (R - S)) * R + S + n % (R - S)];
        for (int k = 0; k < K; k++) dlogits[n * K + k] = (probs[n * K + k] - (k == label ? (T)1 : (T)0)) * scale;
    }
}

// ----------------------------------------------------------------------------
// optimizer

// out (1) = sum of squares of x, in double over 64 fixed chunks, summed in chunk order
template <typename T>
static void sum_of_squares(double* out, const T* x, size_t n) {
    enum { CHUNKS = 64 };
    double partial[CHUNKS];
    size_t chunk = (n + CHUNKS - 1) / CHUNKS;
#pragma omp parallel for schedule(static)
    for (int c = 0; c < CHUNKS; c++) {
        size_t lo = c * chunk, hi = lo + chunk < n ? lo + chunk : n;
        double acc = 0.0;
        for (size_t i = lo; i < hi; i++) acc += (double)x[i] * x[i];
        partial[c] = acc;
    }
    double total = 0.0;
    for (int c = 0; c < CHUNKS; c++) total += partial[c];
    out[0] = total;
}

// AdamW as torch.optim.AdamW: decoupled weight decay, bias-corrected moments.
// grad_scale folds gradient clipping in; step counts from 1.
template <typename T>
static void adamw_update(T* params, T* m, T* v, const T* grads, size_t n, float lr, float beta1, float beta2,
                         float eps, float weight_decay, float grad_scale, int step) {
    double bc1 = 1.0 - pow(beta1, step), bc2 = 1.0 - pow(beta2, step);
    T step_size = (T)(lr / bc1);
    T inv_sqrt_bc2 = (T)(1.0 / sqrt(bc2));
    T decay = (T)(1.0 - (double)lr * weight_decay);
#pragma omp parallel for simd schedule(static)
    for (size_t i = 0; i < n; i++) {
        T g = grads[i] * grad_scale;
        m[i] = beta1 * m[i] + (1 - beta1) * g;
        v[i] = beta2 * v[i] + (1 - beta2) * g * g;
        T denom = sqrt(v[i]) * inv_sqrt_bc2 + eps;
        params[i] = params[i] * decay - step_size * m[i] / denom;
    }
}

// Schedule-free AdamW, one step t of Algorithm 1 of Defazio et al. 2024 ("The Road Less
// Scheduled"); the gradient was taken at y = (1 - beta1) z + beta1 x:
//   v = beta2 v + (1 - beta2) g^2
//   z = z - lr_t (g / (sqrt(v) + eps) + weight_decay y)   (decay at y, as the paper)
//   x = (1 - c) x + c z                                     (c = c_{t+1}: the averaging weight)
//   y = (1 - beta1) z + beta1 x                             (where the next gradient is taken)
// lr_t already holds warmup and the bias correction sqrt(1 - beta2^t) (the host computes it
// and c, tabpfn_update); grad_scale folds gradient clipping in.
template <typename T>
static void schedulefree_update(T* y, T* z, T* x, T* v, const T* grads, size_t n, float lr_t, float c, float beta1,
                                float beta2, float eps, float weight_decay, float grad_scale) {
    const T decay = (T)((double)lr_t * weight_decay);
#pragma omp parallel for simd schedule(static)
    for (size_t i = 0; i < n; i++) {
        const T g = grads[i] * grad_scale;
        const T vi = beta2 * v[i] + (1 - beta2) * g * g;
        const T zi = z[i] - lr_t * g / (sqrt(vi) + eps) - decay * y[i];
        const T xi = (1 - c) * x[i] + c * zi;
        v[i] = vi;
        z[i] = zi;
        x[i] = xi;
        y[i] = (1 - beta1) * zi + beta1 * xi;
    }
}
