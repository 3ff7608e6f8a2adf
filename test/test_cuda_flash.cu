// The CUDA flash attention kernels (attention/flash_attention_cuda.cuh) against their CPU twin
// (attention/flash_attention_cpu.h, float), on the shapes of test/test_flash_attention.cpp:
// q length != kv length, kv 0 and 1, lengths off the tiles, both axis layouts (the row axis,
// also with keys in their own buffer as the sharded strategies pass them, and the feature axis
// with C = 6), head sizes 5, 8, 16, 24, 32, 64, 128, the short and the tiled path.
// Forward: out (the whole buffer, so writes outside the layout show) and lse. Backward: dq, dk,
// dv accumulated onto random initial values, so the += is checked; both directions start from
// the same inputs as the twin (the backward from the twin's out and lse). lse_merge with -inf
// on either side and on both.
// Emulated build: every schedule of test_schedules(), and every output must also be
// bit-identical to the first schedule's (a schedule-dependent bit is a race).
#include "cuda_test_util.h"
#include "../attention/flash_attention_cpu.h"
#include "../attention/flash_attention_cuda.cuh"
#include "../attention/axis_attention.h"
#include <map>

// Tolerances against the twin. Both sides are fp32 over the same inputs; they differ in
// summation order (tiles, lanes, fused multiply-adds) and in exp (fast_expf on the CPU, expf
// here), a few ulp per term. Forward outputs are convex combinations of v (|v| up to ~4):
// 2e-5 abs + 2e-5 rel is ~100 ulp at 1 (measured under emulation: <= 6e-7). Backward values
// are sums of up to q_len (dk, dv) or kv_len (dq) such terms on top of the initial gradient,
// grow to ~20 here, and their products come in another order than the twin's: 5e-5 abs +
// 5e-5 rel (measured under emulation: <= 4e-6 at |ref| 16); the slack is for the native
// run, whose expf and FMA contraction differ from the host's. Every check prints its error.
static const double FWD_ATOL = 2e-5, FWD_RTOL = 2e-5, BWD_ATOL = 5e-5, BWD_RTOL = 5e-5;

enum Kind { ROW, ROW_SPLIT, FEATURE };
enum Path { AUTO, SHORT, TILED };
static const char* kind_name[] = {"row", "row-split-kv", "feature"};
static const char* path_name[] = {"auto", "short", "tiled"};

// ROW: B*C sequences of R = q_len rows in one qkv (B, R, C, 3E), the first S = kv_len rows the keys.
// ROW_SPLIT: queries from qkv (B, R, C, 3E), keys from their own kv (B, S, C, 2E), any S
//   (row_block_forward's layouts). FEATURE: B*R sequences of C = q_len = kv_len cells of qkv.
struct FlashCase {
    Kind kind;
    int B, mid; // mid: C for the row axis, R for the feature axis
    int heads, q_len, kv_len, head_dim;
};

struct Problem {
    AxisLayout q_layout, kv_layout, out_layout;
    int n_batch, E;
    long n_qkv, n_kv, n_out, n_lse;
    std::vector<float> qkv, kv, out0, lse0, dout, dqkv0, dkv0; // inputs and initial outputs
    const float *q, *k, *v;                                     // host views into qkv / kv
};

static void fill_normal(std::vector<float>& x, Rng* rng, double scale) {
    for (auto& xi : x) xi = (float)(scale * rng_normal(rng));
}

static Problem make_problem(const FlashCase& c, uint64_t seed) {
    Problem p;
    const int E = c.heads * c.head_dim;
    p.E = E;
    long cells;
    if (c.kind == FEATURE) {
        p.n_batch = c.B * c.mid;
        cells = (long)c.B * c.mid * c.q_len;
        p.q_layout = p.kv_layout = feature_axis_layout(c.q_len, 3 * E);
        p.out_layout = feature_axis_layout(c.q_len, E);
    } else {
        p.n_batch = c.B * c.mid;
        cells = (long)c.B * c.q_len * c.mid;
        p.q_layout = row_axis_layout(c.q_len, c.mid, 3 * E);
        p.kv_layout = c.kind == ROW ? p.q_layout : row_axis_layout(c.kv_len, c.mid, 2 * E);
        p.out_layout = row_axis_layout(c.q_len, c.mid, E);
    }
    p.n_qkv = cells * 3 * E;
    p.n_kv = c.kind == ROW_SPLIT ? (long)c.B * c.kv_len * c.mid * 2 * E : 0;
    p.n_out = cells * E;
    p.n_lse = (long)p.n_batch * c.heads * c.q_len;
    Rng rng;
    rng_seed(&rng, seed);
    // host buffers never empty: the views qkv + E, qkv + 2E stay inside even with no rows
    p.qkv.resize(p.n_qkv > 0 ? p.n_qkv : 3 * E);
    p.kv.resize(p.n_kv > 0 ? p.n_kv : 2 * E);
    p.out0.resize(p.n_out > 0 ? p.n_out : 1);
    p.lse0.resize(p.n_lse > 0 ? p.n_lse : 1);
    p.dout.resize(p.out0.size());
    p.dqkv0.resize(p.qkv.size());
    p.dkv0.resize(p.kv.size());
    fill_normal(p.qkv, &rng, 1.0);
    fill_normal(p.kv, &rng, 1.0);
    fill_normal(p.out0, &rng, 1.0); // what the forward must overwrite (or leave alone off the layout)
    fill_normal(p.lse0, &rng, 1.0);
    fill_normal(p.dout, &rng, 1.0);
    fill_normal(p.dqkv0, &rng, 0.5); // the caller's gradient so far: the kernels add to it
    fill_normal(p.dkv0, &rng, 0.5);
    p.q = p.qkv.data();
    p.k = c.kind == ROW_SPLIT ? p.kv.data() : p.qkv.data() + E;
    p.v = c.kind == ROW_SPLIT ? p.kv.data() + E : p.qkv.data() + 2 * E;
    return p;
}

// lse may hold -inf (no keys): those must match exactly, the rest within the tolerance
static void compare_lse(const char* what, const float* got, const float* want, long n, double atol, double rtol) {
    std::vector<float> g(got, got + n), w(want, want + n);
    int inf_match = 1;
    for (long i = 0; i < n; i++)
        if (w[i] == -INFINITY || g[i] == -INFINITY) {
            inf_match &= g[i] == w[i];
            g[i] = w[i] = 0.0f;
        }
    char line[256];
    snprintf(line, sizeof(line), "%s: -inf where the twin has -inf", what);
    check_true(line, inf_match);
    allclose_report(what, g.data(), w.data(), n, atol, rtol);
}

// the first schedule's outputs, by label, for the bit-identity check of the later schedules
static std::map<std::string, std::vector<float>> first_outputs;

static void check_schedule_bits(int schedule, const std::string& label, const std::vector<float>& got) {
    if (schedule == 0) {
        first_outputs[label] = got;
        return;
    }
    const std::vector<float>& first = first_outputs[label];
    check_bit_identical(label.c_str(), got.data(), first.data(), (long)got.size());
}

static void forward_on_device(Path path, float* out, float* lse, const float* q, const float* k, const float* v,
                              const Problem& p, const FlashCase& c, float scale) {
    if (path == SHORT)
        gpu::flash_attention_forward_short(out, lse, q, k, v, p.q_layout, p.kv_layout, p.out_layout, p.n_batch,
                                           c.heads, c.q_len, c.kv_len, c.head_dim, scale);
    else if (path == TILED)
        gpu::flash_attention_forward_tiled(out, lse, q, k, v, p.q_layout, p.kv_layout, p.out_layout, p.n_batch,
                                           c.heads, c.q_len, c.kv_len, c.head_dim, scale);
    else
        gpu::flash_attention_forward(out, lse, q, k, v, p.q_layout, p.kv_layout, p.out_layout, p.n_batch, c.heads,
                                     c.q_len, c.kv_len, c.head_dim, scale);
}

static void backward_on_device(Path path, float* dq, float* dk, float* dv, const float* dout, const float* out,
                               const float* lse, const float* q, const float* k, const float* v, const Problem& p,
                               const FlashCase& c, float scale) {
    if (path == SHORT)
        gpu::flash_attention_backward_short(dq, dk, dv, dout, out, lse, q, k, v, p.q_layout, p.kv_layout,
                                            p.out_layout, p.n_batch, c.heads, c.q_len, c.kv_len, c.head_dim, scale);
    else if (path == TILED)
        gpu::flash_attention_backward_tiled(dq, dk, dv, dout, out, lse, q, k, v, p.q_layout, p.kv_layout,
                                            p.out_layout, p.n_batch, c.heads, c.q_len, c.kv_len, c.head_dim, scale);
    else
        gpu::flash_attention_backward(dq, dk, dv, dout, out, lse, q, k, v, p.q_layout, p.kv_layout, p.out_layout,
                                      p.n_batch, c.heads, c.q_len, c.kv_len, c.head_dim, scale);
}

static void test_case(int schedule, int case_id, const FlashCase& c) {
    const Problem p = make_problem(c, 1000 + case_id);
    const float scale = 1.0f / sqrtf((float)c.head_dim);
    const int E = p.E;
    // the twin, on host copies of the same inputs
    std::vector<float> out_ref = p.out0, lse_ref = p.lse0, dqkv_ref = p.dqkv0, dkv_ref = p.dkv0;
    flash_attention_forward(out_ref.data(), lse_ref.data(), p.q, p.k, p.v, p.q_layout, p.kv_layout, p.out_layout,
                            p.n_batch, c.heads, c.q_len, c.kv_len, c.head_dim, scale);
    float* dq_ref = dqkv_ref.data();
    float* dk_ref = c.kind == ROW_SPLIT ? dkv_ref.data() : dqkv_ref.data() + E;
    float* dv_ref = c.kind == ROW_SPLIT ? dkv_ref.data() + E : dqkv_ref.data() + 2 * E;
    flash_attention_backward(dq_ref, dk_ref, dv_ref, p.dout.data(), out_ref.data(), lse_ref.data(), p.q, p.k, p.v,
                             p.q_layout, p.kv_layout, p.out_layout, p.n_batch, c.heads, c.q_len, c.kv_len,
                             c.head_dim, scale);

    // device inputs: q, k, v, and for the backward the twin's out, lse and the upstream dout
    float* d_qkv = test_device_upload(p.qkv.data(), p.n_qkv);
    float* d_kv = test_device_upload(p.kv.data(), (long)p.kv.size());
    const float* d_q = d_qkv;
    const float* d_k = c.kind == ROW_SPLIT ? d_kv : d_qkv + E;
    const float* d_v = c.kind == ROW_SPLIT ? d_kv + E : d_qkv + 2 * E;
    float* d_out_ref = test_device_upload(out_ref.data(), p.n_out);
    float* d_lse_ref = test_device_upload(lse_ref.data(), (long)lse_ref.size());
    float* d_dout = test_device_upload(p.dout.data(), p.n_out);

    // the public entry points always; on a short key set both paths explicitly as well
    std::vector<Path> paths = {AUTO};
    if (c.kv_len <= gpu::FAG_SHORT_KV) paths = {AUTO, SHORT, TILED};
    char tag[200], what[300];
    snprintf(tag, sizeof(tag), "%-12s n%d h%d q%d kv%d d%d", kind_name[c.kind], p.n_batch, c.heads, c.q_len, c.kv_len,
             c.head_dim);
    for (Path path : paths) {
        // forward
        float* d_out = test_device_upload(p.out0.data(), p.n_out);
        float* d_lse = test_device_upload(p.lse0.data(), (long)p.lse0.size());
        forward_on_device(path, d_out, d_lse, d_q, d_k, d_v, p, c, scale);
        std::vector<float> out = test_device_download(d_out, p.n_out);
        std::vector<float> lse = test_device_download(d_lse, p.n_lse);
        snprintf(what, sizeof(what), "fwd %-5s %s: out", path_name[path], tag);
        allclose_report(what, out.data(), out_ref.data(), p.n_out, FWD_ATOL, FWD_RTOL);
        check_schedule_bits(schedule, what, out);
        snprintf(what, sizeof(what), "fwd %-5s %s: lse", path_name[path], tag);
        compare_lse(what, lse.data(), lse_ref.data(), p.n_lse, FWD_ATOL, FWD_RTOL);
        check_schedule_bits(schedule, what, lse);
        CUDA_CHECK(cudaFree(d_out));
        CUDA_CHECK(cudaFree(d_lse));

        // backward, from the twin's out and lse, onto non-zero gradients
        float* d_dqkv = test_device_upload(p.dqkv0.data(), p.n_qkv);
        float* d_dkv = test_device_upload(p.dkv0.data(), (long)p.dkv0.size());
        float* d_dk = c.kind == ROW_SPLIT ? d_dkv : d_dqkv + E;
        float* d_dv = c.kind == ROW_SPLIT ? d_dkv + E : d_dqkv + 2 * E;
        backward_on_device(path, d_dqkv, d_dk, d_dv, d_dout, d_out_ref, d_lse_ref, d_q, d_k, d_v, p, c, scale);
        std::vector<float> dqkv = test_device_download(d_dqkv, p.n_qkv);
        snprintf(what, sizeof(what), "bwd %-5s %s: %s", path_name[path], tag,
                 c.kind == ROW_SPLIT ? "dq" : "dq,dk,dv");
        allclose_report(what, dqkv.data(), dqkv_ref.data(), p.n_qkv, BWD_ATOL, BWD_RTOL);
        check_schedule_bits(schedule, what, dqkv);
        if (c.kind == ROW_SPLIT) {
            std::vector<float> dkv = test_device_download(d_dkv, (long)p.dkv0.size());
            snprintf(what, sizeof(what), "bwd %-5s %s: dk,dv", path_name[path], tag);
            allclose_report(what, dkv.data(), dkv_ref.data(), (long)dkv.size(), BWD_ATOL, BWD_RTOL);
            check_schedule_bits(schedule, what, dkv);
        }
        CUDA_CHECK(cudaFree(d_dqkv));
        CUDA_CHECK(cudaFree(d_dkv));
    }
    CUDA_CHECK(cudaFree(d_qkv));
    CUDA_CHECK(cudaFree(d_kv));
    CUDA_CHECK(cudaFree(d_out_ref));
    CUDA_CHECK(cudaFree(d_lse_ref));
    CUDA_CHECK(cudaFree(d_dout));
}

// lse_merge on the row layout, side b in a wider buffer; -inf on side a, side b, and both
static void test_merge(int schedule, int B, int C, int R, int heads, int head_dim) {
    const int E = heads * head_dim, n_batch = B * C;
    const AxisLayout la = row_axis_layout(R, C, E), lb = row_axis_layout(R, C, 2 * E);
    const long n_a = (long)B * R * C * E, n_b = 2 * n_a, n_lse = (long)n_batch * heads * R;
    Rng rng;
    rng_seed(&rng, 77 + head_dim);
    std::vector<float> out_a(n_a), out_b(n_b), lse_a(n_lse), lse_b(n_lse);
    fill_normal(out_a, &rng, 1.0);
    fill_normal(out_b, &rng, 1.0);
    fill_normal(lse_a, &rng, 3.0);
    fill_normal(lse_b, &rng, 3.0);
    for (long i = 0; i < n_lse; i++) { // empty key sets: a alone, b alone, both
        if (i % 5 == 1 || i % 35 == 0) lse_a[i] = -INFINITY;
        if (i % 7 == 2 || i % 35 == 0) lse_b[i] = -INFINITY;
    }
    std::vector<float> out_ref = out_a, lse_ref = lse_a;
    lse_merge(out_ref.data(), lse_ref.data(), out_b.data(), lse_b.data(), la, lb, n_batch, heads, R, head_dim);
    float* d_out = test_device_upload(out_a.data(), n_a);
    float* d_lse = test_device_upload(lse_a.data(), n_lse);
    float* d_out_b = test_device_upload(out_b.data(), n_b);
    float* d_lse_b = test_device_upload(lse_b.data(), n_lse);
    gpu::lse_merge(d_out, d_lse, d_out_b, d_lse_b, la, lb, n_batch, heads, R, head_dim);
    std::vector<float> out = test_device_download(d_out, n_a), lse = test_device_download(d_lse, n_lse);
    char what[200];
    snprintf(what, sizeof(what), "lse_merge n%d h%d q%d d%d: out", n_batch, heads, R, head_dim);
    allclose_report(what, out.data(), out_ref.data(), n_a, FWD_ATOL, FWD_RTOL);
    check_schedule_bits(schedule, what, out);
    snprintf(what, sizeof(what), "lse_merge n%d h%d q%d d%d: lse", n_batch, heads, R, head_dim);
    compare_lse(what, lse.data(), lse_ref.data(), n_lse, FWD_ATOL, FWD_RTOL);
    check_schedule_bits(schedule, what, lse);
    CUDA_CHECK(cudaFree(d_out));
    CUDA_CHECK(cudaFree(d_lse));
    CUDA_CHECK(cudaFree(d_out_b));
    CUDA_CHECK(cudaFree(d_lse_b));
}

int main(void) {
    if (!test_cuda_device_present()) {
        printf("SKIP  native run of test_cuda_flash: no CUDA device (cudaGetDeviceCount found none); "
               "the emulated build runs these kernels on the CPU\n");
        return tests_finish();
    }
    // {kind, B, C or R, heads, q_len, kv_len, head_dim}; few sequences and heads where the
    // shape is the point, so the emulated run stays short
    const FlashCase cases[] = {
        {ROW, 1, 2, 2, 70, 33, 8},        // q != kv, neither a tile multiple, 3 query tiles
        {ROW_SPLIT, 1, 2, 1, 65, 129, 16}, // keys in their own buffer, longer than q, 3 key tiles
        {ROW_SPLIT, 1, 1, 1, 33, 100, 32}, // bucket 32 full, 2 key tiles
        {ROW, 1, 3, 2, 40, 16, 24},       // the longest short key set, more queries than keys
        {ROW, 1, 2, 3, 37, 17, 24},       // the shortest tiled key set
        {ROW, 1, 2, 1, 33, 1, 32},        // one key
        {ROW, 1, 2, 2, 9, 0, 64},         // no keys (a rank without train rows)
        {ROW_SPLIT, 1, 2, 1, 20, 70, 64}, // bucket 64, 3 key tiles
        {ROW, 1, 1, 2, 45, 40, 128},      // bucket 128: 3 query tiles, 2 key tiles, 5 dK/dV tiles
        {ROW, 1, 2, 2, 19, 18, 5},        // odd head size
        {ROW, 1, 1, 1, 70, 10, 8},        // short keys, many queries: the short dK/dV walks 9 chunks
        {ROW_SPLIT, 1, 3, 2, 1, 7, 16},   // a single query
        {ROW_SPLIT, 1, 2, 1, 0, 5, 8},    // no queries (nothing to do, nothing written)
        {FEATURE, 2, 3, 4, 6, 6, 24},     // the default model's feature axis: C = 6, head size 24
        {FEATURE, 1, 2, 1, 6, 6, 128},    // feature axis, largest head
        {FEATURE, 1, 2, 2, 20, 20, 16},   // feature axis with more cells than the short path takes
    };
    const int n_cases = (int)(sizeof(cases) / sizeof(cases[0]));
    std::vector<TestSchedule> schedules = test_schedules();
    for (size_t si = 0; si < schedules.size(); si++) {
        test_use_schedule(schedules[si]);
        printf("-- schedule %s\n", schedules[si].name);
        const double t0 = wall_seconds();
        for (int i = 0; i < n_cases; i++) test_case((int)si, i, cases[i]);
        test_merge((int)si, 1, 2, 37, 2, 24);
        test_merge((int)si, 2, 1, 5, 1, 40);
        printf("-- schedule %s took %.2f s\n", schedules[si].name, wall_seconds() - t0);
    }
    return tests_finish();
}
