// Micro benchmark of the CPU flash-attention kernels at the training step's shapes (default
// bench shape: B 32 tables, R 150 rows, C 6 columns, E 96, 4 heads, S 75 train rows).
//   build/bench_flash [threads ...]        e.g. build/bench_flash 1 2
// Environment: BENCH_REPS (timed repetitions, 7), BENCH_CASE (run one case: row, feature, ...).
// Built with -DFA_OLD_HEADER='"path"' it also runs that copy of the kernels (namespace fa_old)
// interleaved with the current one, checks they agree, and prints both.
// Times are wall clock at several threads, the thread's CPU time at one thread.
// GFLOP/s count 4 q kv d per (sequence, head) forward, 10 q kv d backward (the score
// recompute included). The current kernels are also checked for the same bits at 1 and N threads.
#include "../attention/flash_attention_cpu.h"
#include "../attention/axis_attention.h"
#include <algorithm>
#include <vector>
#ifdef FA_OLD_HEADER
namespace fa_old {
#include FA_OLD_HEADER
}
#endif

typedef struct {
    const char* name;
    int n_batch, heads, q_len, kv_len, d;
    AxisLayout q_layout, kv_layout, out_layout;
    long q_floats, kv_floats, out_floats; // buffer sizes
    long q_off, k_off, v_off;             // offsets of q, k, v inside their buffers
    int kv_in_q;                          // k, v live in the q buffer (fused qkv)
} Case;

enum { B = 32, R = 150, C = 6, E = 96, HEADS = 4, S = 75, T = R - S };

static std::vector<Case> make_cases() {
    std::vector<Case> cases;
    const int d = E / HEADS;
    // row axis, all columns: B*C sequences of R queries over the S train rows (fused qkv)
    cases.push_back({"row", B * C, HEADS, R, S, d, row_axis_layout(R, C, 3 * E), row_axis_layout(R, C, 3 * E),
                     row_axis_layout(R, C, E), (long)B * R * C * 3 * E, 0, (long)B * R * C * E, 0, E, 2 * E, 1});
    // feature axis: B*R sequences of C cells (fused qkv)
    cases.push_back({"feature", B * R, HEADS, C, C, d, feature_axis_layout(C, 3 * E), feature_axis_layout(C, 3 * E),
                     feature_axis_layout(C, E), (long)B * R * C * 3 * E, 0, (long)B * R * C * E, 0, E, 2 * E, 1});
    // the feature axis on 64 rows only: the buffers stay in L2, so against "feature" this
    // shows how much of that case is memory traffic
    cases.push_back({"feature_l2", 64, HEADS, C, C, d, feature_axis_layout(C, 3 * E), feature_axis_layout(C, 3 * E),
                     feature_axis_layout(C, E), (long)64 * C * 3 * E, 0, (long)64 * C * E, 0, E, 2 * E, 1});
    // pruned last layer, feature axis: the target cell queries, q (B*R, E), kv (B, R, C, 2E)
    cases.push_back({"feature_target", B * R, HEADS, 1, C, d, feature_axis_layout(1, E), feature_axis_layout(C, 2 * E),
                     feature_axis_layout(1, E), (long)B * R * E, (long)B * R * C * 2 * E, (long)B * R * E, 0, 0, E, 0});
    // pruned last layer, row axis of the target column (C = 1): T test-row queries, q (B, T, E), kv (B, S, 2E)
    cases.push_back({"row_target", B, HEADS, T, S, d, row_axis_layout(T, 1, E), row_axis_layout(S, 1, 2 * E),
                     row_axis_layout(T, 1, E), (long)B * T * E, (long)B * S * 2 * E, (long)B * T * E, 0, 0, E, 0});
    return cases;
}

typedef struct {
    float *q, *kv, *out, *lse, *dout, *dq, *dkv;
} Buffers;

static Buffers alloc_buffers(const Case& c, Rng* rng) {
    Buffers b;
    const long n_lse = (long)c.n_batch * c.heads * c.q_len;
    b.q = (float*)mallocCheck(c.q_floats * sizeof(float));
    b.kv = c.kv_in_q ? b.q : (float*)mallocCheck(c.kv_floats * sizeof(float));
    b.out = (float*)callocCheck(c.out_floats * sizeof(float));
    b.lse = (float*)callocCheck(n_lse * sizeof(float));
    b.dout = (float*)mallocCheck(c.out_floats * sizeof(float));
    b.dq = (float*)callocCheck(c.q_floats * sizeof(float));
    b.dkv = c.kv_in_q ? b.dq : (float*)callocCheck(c.kv_floats * sizeof(float));
    for (long i = 0; i < c.q_floats; i++) b.q[i] = rng_normal(rng);
    if (!c.kv_in_q)
        for (long i = 0; i < c.kv_floats; i++) b.kv[i] = rng_normal(rng);
    for (long i = 0; i < c.out_floats; i++) b.dout[i] = rng_normal(rng);
    return b;
}

static void zero_grads(const Case& c, Buffers* b) {
    memset(b->dq, 0, c.q_floats * sizeof(float));
    if (!c.kv_in_q) memset(b->dkv, 0, c.kv_floats * sizeof(float));
}

// wall seconds; with one thread the calling thread's CPU seconds, which leave out the time
// other processes on a busy machine hold the core
static double bench_clock() {
    if (omp_get_max_threads() > 1) return omp_get_wtime();
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

template <int OLD>
static double run_forward(const Case& c, Buffers* b) {
    const float scale = 1.0f / sqrtf((float)c.d);
    double t0 = bench_clock();
#ifdef FA_OLD_HEADER
    if (OLD) {
        fa_old::old_flash_attention_forward(b->out, b->lse, b->q + c.q_off, b->kv + c.k_off, b->kv + c.v_off, c.q_layout,
                                        c.kv_layout, c.out_layout, c.n_batch, c.heads, c.q_len, c.kv_len, c.d, scale);
        return bench_clock() - t0;
    }
#endif
    flash_attention_forward(b->out, b->lse, b->q + c.q_off, b->kv + c.k_off, b->kv + c.v_off, c.q_layout, c.kv_layout,
                            c.out_layout, c.n_batch, c.heads, c.q_len, c.kv_len, c.d, scale);
    return bench_clock() - t0;
}

template <int OLD>
static double run_backward(const Case& c, Buffers* b) {
    const float scale = 1.0f / sqrtf((float)c.d);
    zero_grads(c, b);
    double t0 = bench_clock();
#ifdef FA_OLD_HEADER
    if (OLD) {
        fa_old::old_flash_attention_backward(b->dq + c.q_off, b->dkv + c.k_off, b->dkv + c.v_off, b->dout, b->out, b->lse,
                                         b->q + c.q_off, b->kv + c.k_off, b->kv + c.v_off, c.q_layout, c.kv_layout,
                                         c.out_layout, c.n_batch, c.heads, c.q_len, c.kv_len, c.d, scale);
        return bench_clock() - t0;
    }
#endif
    flash_attention_backward(b->dq + c.q_off, b->dkv + c.k_off, b->dkv + c.v_off, b->dout, b->out, b->lse,
                             b->q + c.q_off, b->kv + c.k_off, b->kv + c.v_off, c.q_layout, c.kv_layout, c.out_layout,
                             c.n_batch, c.heads, c.q_len, c.kv_len, c.d, scale);
    return bench_clock() - t0;
}

static double max_abs_diff(const float* a, const float* b, long n) {
    double m = 0;
    for (long i = 0; i < n; i++) {
        double e = fabs((double)a[i] - (double)b[i]);
        if (e > m || e != e) m = e;
    }
    return m;
}

static float* copy_of(const float* x, long n) {
    float* y = (float*)mallocCheck(n * sizeof(float));
    memcpy(y, x, n * sizeof(float));
    return y;
}

// median of a few timings
static double median(std::vector<double> t) {
    std::sort(t.begin(), t.end());
    return t[t.size() / 2];
}

int main(int argc, char** argv) {
    std::vector<int> threads;
    for (int i = 1; i < argc; i++) threads.push_back(atoi(argv[i]));
    if (threads.empty()) threads = {1, 2};
    const int reps = getenv("BENCH_REPS") ? atoi(getenv("BENCH_REPS")) : 7;
    Rng rng;
    rng_seed(&rng, 7);
    const char* only = getenv("BENCH_CASE"); // one case by name, else all
    for (const Case& c : make_cases()) {
        if (only && strcmp(only, c.name)) continue;
        Buffers b = alloc_buffers(c, &rng);
        const long n_lse = (long)c.n_batch * c.heads * c.q_len;
        const double flop = (double)c.n_batch * c.heads * c.q_len * c.kv_len * c.d;
        // the same bits at 1 and N threads, and the agreement with the old kernels
        omp_set_num_threads(1);
        run_forward<0>(c, &b);
        run_backward<0>(c, &b);
        float *out1 = copy_of(b.out, c.out_floats), *lse1 = copy_of(b.lse, n_lse);
        float *dq1 = copy_of(b.dq, c.q_floats), *dkv1 = c.kv_in_q ? NULL : copy_of(b.dkv, c.kv_floats);
        omp_set_num_threads(threads.back());
        run_forward<0>(c, &b);
        run_backward<0>(c, &b);
        int same = !memcmp(out1, b.out, c.out_floats * sizeof(float)) && !memcmp(lse1, b.lse, n_lse * sizeof(float)) &&
                   !memcmp(dq1, b.dq, c.q_floats * sizeof(float)) &&
                   (c.kv_in_q || !memcmp(dkv1, b.dkv, c.kv_floats * sizeof(float)));
        printf("{\"case\": \"%s\", \"n_batch\": %d, \"heads\": %d, \"q_len\": %d, \"kv_len\": %d, \"head_dim\": %d, "
               "\"same_bits_1_vs_%d_threads\": %s",
               c.name, c.n_batch, c.heads, c.q_len, c.kv_len, c.d, threads.back(), same ? "true" : "false");
#ifdef FA_OLD_HEADER
        run_forward<1>(c, &b);
        run_backward<1>(c, &b);
        printf(", \"max_diff_vs_old\": {\"out\": %.3e, \"lse\": %.3e, \"dq\": %.3e, \"dkv\": %.3e}",
               max_abs_diff(out1, b.out, c.out_floats), max_abs_diff(lse1, b.lse, n_lse),
               max_abs_diff(dq1, b.dq, c.q_floats), c.kv_in_q ? 0.0 : max_abs_diff(dkv1, b.dkv, c.kv_floats));
        run_forward<0>(c, &b); // the current kernels' out and lse feed both backwards below
#endif
        printf("}\n");
        free(out1); free(lse1); free(dq1); free(dkv1);
        for (int nt : threads) {
            omp_set_num_threads(nt);
            std::vector<double> fwd[2], bwd[2];
            for (int r = 0; r < reps; r++) { // interleaved: new, old, new, old, ...
                fwd[0].push_back(run_forward<0>(c, &b));
                bwd[0].push_back(run_backward<0>(c, &b));
#ifdef FA_OLD_HEADER
                if (getenv("BENCH_NO_OLD")) continue; // profile the current kernels alone
                fwd[1].push_back(run_forward<1>(c, &b));
                bwd[1].push_back(run_backward<1>(c, &b));
                run_forward<0>(c, &b);
#endif
            }
            for (int old = 0; old < 2; old++) {
                if (fwd[old].empty()) continue;
                double f_min = *std::min_element(fwd[old].begin(), fwd[old].end()), f_med = median(fwd[old]);
                double b_min = *std::min_element(bwd[old].begin(), bwd[old].end()), b_med = median(bwd[old]);
                printf("{\"case\": \"%s\", \"kernels\": \"%s\", \"threads\": %d, \"fwd_ms_min\": %.3f, \"fwd_ms_median\": "
                       "%.3f, \"fwd_gflops\": %.1f, \"bwd_ms_min\": %.3f, \"bwd_ms_median\": %.3f, \"bwd_gflops\": %.1f}\n",
                       c.name, old ? "old" : "new", nt, 1e3 * f_min, 1e3 * f_med, 4 * flop / f_min * 1e-9, 1e3 * b_min,
                       1e3 * b_med, 10 * flop / b_min * 1e-9);
            }
            fflush(stdout);
        }
        free(b.q); free(b.out); free(b.lse); free(b.dout); free(b.dq);
        if (!c.kv_in_q) { free(b.kv); free(b.dkv); }
    }
    return 0;
}
