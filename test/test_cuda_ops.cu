// Every CUDA leaf op of model/ops_cuda.cuh, attention/shard_ops_cuda.cuh and
// attention/a2a_ops_cuda.cuh against its CPU twin (the template instantiated for float), under
// every schedule of test_schedules(); after the first schedule each output must also equal the
// first schedule's bit for bit. The linear layers run through the cuBLAS wrapper and, in the
// emulated build, the cuBLAS shim (test/cublas_shim.h), which checks the row- to column-major
// translation against the CPU's row-major cblas_sgemm.
//
// Tolerances (|got - want| <= atol + rtol |want|):
//   - ops that only move data, and elementwise ops whose float expression has no multiply-add
//     to contract (a + b, (p - onehot) * scale): exact (0, 0);
//   - elementwise multiply-adds (scalar embedding, AdamW, the double feature normalisation):
//     atol/rtol 1e-6; nvcc contracts a * b + c into one fma, the CPU does not, so a native run
//     may differ by one rounding (the emulated run is exact);
//   - GELU: 1e-6 / 1e-5; the CPU's float erf is Abramowitz-Stegun 7.1.26 (|error| <= 1.5e-7) and
//     its exp a polynomial, the kernel uses erff/expf;
//   - reductions in float (column sums, LayerNorm, GEMM, softmax): 1e-5 to 5e-5 absolute: the
//     kernels add in float in a different (fixed) order than the CPU, which adds in double
//     (GEMM: OpenBLAS in float vs the shim's double);
//   - double statistics (feature stats, sum of squares): 1e-12 relative (order only).
#include "../model/ops_cuda.cuh"
#include "../attention/shard_ops_cuda.cuh"
#include "../attention/a2a_ops_cuda.cuh"
#include "../model/ops_cpu.h"
#include "../attention/shard_ops_cpu.h"
#include "../attention/a2a_ops_cpu.h"
#include "cuda_test_util.h"
#include <map>

// ----------------------------------------------------------------------------
// harness

static const char* schedule_name = "";
static int schedule_index = 0;
static std::map<std::string, std::vector<float>> first_schedule; // outputs of the first schedule

// bit-identity across schedules: the first schedule records, the others compare
static void check_schedules(const std::string& what, const float* got, long n) {
    if (schedule_index == 0) {
        first_schedule[what] = std::vector<float>(got, got + n);
        return;
    }
    const std::vector<float>& first = first_schedule[what];
    std::string name = what + " [" + schedule_name + "]";
    if ((long)first.size() != n) check_true((name + ": as many outputs as the first schedule").c_str(), 0);
    else check_bit_identical(name.c_str(), got, first.data(), n);
}

// the kernel's output against the twin's, then against the first schedule's
static void check(const std::string& what, const std::vector<float>& got, const std::vector<float>& want, double atol,
                  double rtol) {
    std::string name = what + " [" + schedule_name + "]";
    allclose_report(name.c_str(), got.data(), want.data(), (long)want.size(), atol, rtol);
    check_schedules(what, got.data(), (long)want.size());
}
static void check(const std::string& what, const std::vector<double>& got, const std::vector<double>& want, double atol,
                  double rtol) {
    std::string name = what + " [" + schedule_name + "]";
    allclose_report(name.c_str(), got.data(), want.data(), (long)want.size(), atol, rtol);
    check_schedules(what, (const float*)got.data(), 2 * (long)want.size()); // the bits of each double
}

static std::string fmt(const char* format, ...) {
    char line[256];
    va_list args;
    va_start(args, format);
    vsnprintf(line, sizeof(line), format, args);
    va_end(args);
    return line;
}

// a device copy of a host vector, freed when it goes out of scope
template <typename T>
struct Dev {
    T* p = NULL;
    size_t n;
    explicit Dev(const std::vector<T>& host) : n(host.size()) {
        CUDA_CHECK(cudaMalloc((void**)&p, (n > 0 ? n : 1) * sizeof(T)));
        if (n > 0) CUDA_CHECK(cudaMemcpy(p, host.data(), n * sizeof(T), cudaMemcpyHostToDevice));
    }
    ~Dev() { CUDA_CHECK(cudaFree(p)); }
    Dev(const Dev&) = delete;
    Dev& operator=(const Dev&) = delete;
    std::vector<T> get() const {
        std::vector<T> host(n);
        CUDA_CHECK(cudaDeviceSynchronize());
        if (n > 0) CUDA_CHECK(cudaMemcpy(host.data(), p, n * sizeof(T), cudaMemcpyDeviceToHost));
        return host;
    }
};
typedef Dev<float> DevF;
typedef Dev<double> DevD;

static Rng rng;
static std::vector<float> uniform(long n, double lo, double hi) {
    std::vector<float> v((size_t)n);
    for (long i = 0; i < n; i++) v[i] = (float)(lo + (hi - lo) * rng_uniform(&rng));
    return v;
}
static std::vector<float> nans(long n) { return std::vector<float>((size_t)n, NAN); }

// ----------------------------------------------------------------------------
// device memory

static void test_device_memory(void) {
    const long n = 1000;
    std::vector<float> host = uniform(n, -1, 1), back(n);
    float* a = (float*)gpu::device_malloc(n * sizeof(float));
    float* b = (float*)gpu::device_malloc(n * sizeof(float));
    gpu::device_copy_to_device(a, host.data(), n * sizeof(float));
    gpu::device_copy(b, a, n * sizeof(float));
    gpu::device_memset_zero(b + 100, 37 * sizeof(float));
    gpu::device_copy_to_device(b, host.data(), 0); // zero bytes: nothing happens
    gpu::device_copy_to_host(back.data(), b, n * sizeof(float));
    std::vector<float> want = host;
    for (int i = 100; i < 137; i++) want[i] = 0.0f;
    check("device memory: copy to device, copy, memset, copy to host", back, want, 0, 0);
    gpu::device_synchronize();
    gpu::device_free(a);
    gpu::device_free(b);
    gpu::device_free(NULL);
}

// ----------------------------------------------------------------------------
// linear layers (cuBLAS wrapper) and bias column sums

static void test_matmul(long N, int in_dim, int out_dim, int with_bias, int with_dinp) {
    const std::string tag = fmt("matmul N=%ld in=%d out=%d%s%s", N, in_dim, out_dim, with_bias ? "" : " no-bias",
                                with_dinp ? "" : " no-dinp");
    std::vector<float> inp = uniform(N * in_dim, -1, 1), w = uniform((long)out_dim * in_dim, -1, 1), bias = uniform(out_dim, -1, 1);
    std::vector<float> dout = uniform(N * out_dim, -1, 1), dw = uniform((long)out_dim * in_dim, -1, 1), db = uniform(out_dim, -1, 1);
    // forward: the kernel's output starts as NaN, so a GEMM that read C with beta 0 would show
    std::vector<float> out(N * out_dim, 0.0f);
    matmul_forward(out.data(), inp.data(), w.data(), with_bias ? bias.data() : (float*)NULL, N, in_dim, out_dim);
    DevF d_out(nans(N * out_dim)), d_inp(inp), d_w(w), d_bias(bias);
    gpu::matmul_forward(d_out.p, d_inp.p, d_w.p, with_bias ? d_bias.p : NULL, N, in_dim, out_dim);
    check(tag + " forward: out", d_out.get(), out, 2e-5, 1e-5);
    // backward: dinp overwritten, dweight and dbias accumulate onto their start values
    std::vector<float> dinp(N * in_dim, 0.0f), dw_cpu = dw, db_cpu = db;
    matmul_backward(with_dinp ? dinp.data() : (float*)NULL, dw_cpu.data(), with_bias ? db_cpu.data() : (float*)NULL, dout.data(),
                    inp.data(), w.data(), N, in_dim, out_dim);
    DevF d_dinp(nans(N * in_dim)), d_dw(dw), d_db(db), d_dout(dout);
    gpu::matmul_backward(with_dinp ? d_dinp.p : NULL, d_dw.p, with_bias ? d_db.p : NULL, d_dout.p, d_inp.p, d_w.p, N, in_dim,
                         out_dim);
    if (with_dinp) check(tag + " backward: dinp", d_dinp.get(), dinp, 2e-5, 1e-5);
    check(tag + " backward: dweight", d_dw.get(), dw_cpu, 2e-5, 1e-5);
    check(tag + " backward: dbias", d_db.get(), db_cpu, 2e-5, 1e-5);
}

static void test_column_sums(long N, int D) {
    std::vector<float> a = uniform(N * D, -1, 1), out = uniform(D, -1, 1), want = out;
    column_sums_accumulate(want.data(), a.data(), N, D);
    DevF d_a(a), d_out(out);
    gpu::column_sums_accumulate(d_out.p, d_a.p, N, D);
    check(fmt("column_sums_accumulate N=%ld D=%d", N, D), d_out.get(), want, 5e-5, 1e-5);
}

// ----------------------------------------------------------------------------
// LayerNorm

static void test_layernorm(long N, int E) {
    const std::string tag = fmt("layernorm N=%ld E=%d", N, E);
    std::vector<float> x = uniform(N * E, -2, 2), w = uniform(E, 0.5, 1.5), b = uniform(E, -0.5, 0.5);
    for (long n = 0; n < N; n++)
        for (int e = 0; e < E; e++) x[n * E + e] += (float)(n % 5); // rows with an offset: centring matters
    std::vector<float> out(N * E), mean(N), rstd(N);
    layernorm_forward(out.data(), mean.data(), rstd.data(), x.data(), w.data(), b.data(), N, E);
    DevF d_out(nans(N * E)), d_mean(nans(N)), d_rstd(nans(N)), d_x(x), d_w(w), d_b(b);
    gpu::layernorm_forward(d_out.p, d_mean.p, d_rstd.p, d_x.p, d_w.p, d_b.p, N, E);
    check(tag + " forward: out", d_out.get(), out, 1e-5, 1e-5);
    check(tag + " forward: mean", d_mean.get(), mean, 1e-6, 1e-6);
    check(tag + " forward: rstd", d_rstd.get(), rstd, 1e-6, 1e-5);
    // the fused residual form, in place (res = a), as the model calls it
    std::vector<float> a = uniform(N * E, -1, 1), res = a, out2(N * E), mean2(N), rstd2(N);
    residual_layernorm_forward(res.data(), out2.data(), mean2.data(), rstd2.data(), res.data(), x.data(), w.data(),
                               b.data(), N, E);
    DevF d_res(a), d_out2(nans(N * E)), d_mean2(nans(N)), d_rstd2(nans(N));
    gpu::residual_layernorm_forward(d_res.p, d_out2.p, d_mean2.p, d_rstd2.p, d_res.p, d_x.p, d_w.p, d_b.p, N, E);
    check(tag + " residual forward: sum", d_res.get(), res, 0, 0);
    check(tag + " residual forward: out", d_out2.get(), out2, 1e-5, 1e-5);
    check(tag + " residual forward: mean", d_mean2.get(), mean2, 1e-6, 1e-6);
    check(tag + " residual forward: rstd", d_rstd2.get(), rstd2, 1e-6, 1e-5);
    // backward from the CPU's mean and rstd, so that only the backward is compared
    std::vector<float> dout = uniform(N * E, -1, 1), dw = uniform(E, -1, 1), db = uniform(E, -1, 1);
    std::vector<float> dinp(N * E), dw_cpu = dw, db_cpu = db;
    layernorm_backward(dinp.data(), dw_cpu.data(), db_cpu.data(), dout.data(), x.data(), w.data(), mean.data(), rstd.data(), N, E);
    DevF d_dinp(nans(N * E)), d_dw(dw), d_db(db), d_dout(dout), d_mean_cpu(mean), d_rstd_cpu(rstd);
    gpu::layernorm_backward(d_dinp.p, d_dw.p, d_db.p, d_dout.p, d_x.p, d_w.p, d_mean_cpu.p, d_rstd_cpu.p, N, E);
    check(tag + " backward: dinp", d_dinp.get(), dinp, 2e-5, 1e-4);
    check(tag + " backward: dweight", d_dw.get(), dw_cpu, 5e-5, 1e-5);
    check(tag + " backward: dbias", d_db.get(), db_cpu, 5e-5, 1e-5);
}

// ----------------------------------------------------------------------------
// elementwise

static void test_elementwise(long n) {
    const std::string tag = fmt("n=%ld", n);
    std::vector<float> x = uniform(n, -6, 6), y = uniform(n, -1, 1), dout = uniform(n, -1, 1);
    std::vector<float> out(n), dinp(n);
    gelu_forward(out.data(), x.data(), n);
    gelu_backward(dinp.data(), x.data(), dout.data(), n);
    DevF d_out(nans(n)), d_dinp(nans(n)), d_x(x), d_y(y), d_dout(dout);
    gpu::gelu_forward(d_out.p, d_x.p, n);
    gpu::gelu_backward(d_dinp.p, d_x.p, d_dout.p, n);
    check("gelu_forward " + tag, d_out.get(), out, 1e-6, 1e-6);
    check("gelu_backward " + tag, d_dinp.get(), dinp, 1e-6, 1e-5);

    std::vector<float> sum(n), acc = y;
    residual_forward(sum.data(), x.data(), y.data(), n);
    add_inplace(acc.data(), x.data(), n);
    DevF d_sum(nans(n));
    gpu::residual_forward(d_sum.p, d_x.p, d_y.p, n);
    gpu::add_inplace(d_y.p, d_x.p, n);
    check("residual_forward " + tag, d_sum.get(), sum, 0, 0);
    check("add_inplace " + tag, d_y.get(), acc, 0, 0);
}

// ----------------------------------------------------------------------------
// feature and target encoders

static void test_feature_encoder(int B, int R, int F, int S) {
    const std::string tag = fmt("B=%d R=%d F=%d S=%d", B, R, F, S);
    std::vector<float> x((size_t)B * R * F);
    for (auto& v : x) v = (float)(5.0 + 2.0 * rng_normal(&rng));
    for (int b = 0; b < B; b++) // a constant feature: variance 0, z = 0
        for (int r = 0; r < R; r++) x[((long)b * R + r) * F] = 3.25f;
    if (F > 1) // the last feature large and nearly constant: one-pass variance would lose it
        for (int b = 0; b < B; b++)
            for (int r = 0; r < R; r++) x[((long)b * R + r) * F + F - 1] = (float)(3e4 + 1e-3 * rng_normal(&rng));
    std::vector<double> stats((size_t)B * F * 2), m2((size_t)B * F);
    feature_stats_local(stats.data(), x.data(), B, R, F, S);
    DevF d_x(x);
    DevD d_stats(std::vector<double>(stats.size(), NAN));
    gpu::feature_stats_local(d_stats.p, d_x.p, B, R, F, S);
    check("feature_stats_local " + tag, d_stats.get(), stats, 1e-12, 1e-12);
    if (S < 2) return; // one or no train row: the std is NaN, as in torch
    // each pass from the CPU's inputs, so that only it is compared
    feature_deviations_local(m2.data(), x.data(), stats.data(), B, R, F, S);
    DevD d_stats_cpu(stats), d_m2(std::vector<double>(m2.size(), NAN));
    gpu::feature_deviations_local(d_m2.p, d_x.p, d_stats_cpu.p, B, R, F, S);
    check("feature_deviations_local " + tag, d_m2.get(), m2, 1e-12, 1e-12);
    std::vector<float> xnorm(x.size());
    feature_normalize(xnorm.data(), x.data(), stats.data(), m2.data(), B, R, F);
    DevD d_m2_cpu(m2);
    DevF d_xnorm(nans((long)x.size()));
    gpu::feature_normalize(d_xnorm.p, d_x.p, d_stats_cpu.p, d_m2_cpu.p, B, R, F);
    check("feature_normalize " + tag, d_xnorm.get(), xnorm, 1e-6, 1e-6);
}

static void test_target_encoder(int B, int R, int S, int K) {
    const std::string tag = fmt("B=%d R=%d S=%d", B, R, S);
    std::vector<float> y((size_t)B * R);
    for (auto& v : y) v = (float)rng_int(&rng, 0, K - 1);
    std::vector<double> stats((size_t)B * 2);
    label_stats_local(stats.data(), y.data(), B, R, S);
    DevF d_y(y);
    DevD d_stats(std::vector<double>(stats.size(), NAN));
    gpu::label_stats_local(d_stats.p, d_y.p, B, R, S);
    check("label_stats_local " + tag, d_stats.get(), stats, 1e-12, 1e-12);
    std::vector<float> ynorm(y.size());
    target_fill(ynorm.data(), y.data(), stats.data(), B, R, S);
    DevD d_stats_cpu(stats);
    DevF d_ynorm(nans((long)y.size()));
    gpu::target_fill(d_ynorm.p, d_y.p, d_stats_cpu.p, B, R, S);
    check("target_fill " + tag, d_ynorm.get(), ynorm, 0, 0);
}

static void test_scalar_embed(long BR, int n_cols, int col0, int C, int E) {
    const std::string tag = fmt("BR=%ld n_cols=%d col0=%d C=%d E=%d", BR, n_cols, col0, C, E);
    std::vector<float> v = uniform(BR * n_cols, -3, 3), w = uniform(E, -1, 1), bias = uniform(E, -1, 1);
    // the output starts with the same values on both sides: columns outside [col0, col0 + n_cols) stay
    std::vector<float> out = uniform(BR * C * E, -1, 1);
    DevF d_out(out), d_v(v), d_w(w), d_bias(bias);
    scalar_embed_forward(out.data(), v.data(), w.data(), bias.data(), BR, n_cols, col0, C, E);
    gpu::scalar_embed_forward(d_out.p, d_v.p, d_w.p, d_bias.p, BR, n_cols, col0, C, E);
    check("scalar_embed_forward " + tag, d_out.get(), out, 1e-6, 1e-6);
    std::vector<float> dout = uniform(BR * C * E, -1, 1), dw = uniform(E, -1, 1), db = uniform(E, -1, 1);
    DevF d_dout(dout), d_dw(dw), d_db(db);
    scalar_embed_backward(dw.data(), db.data(), dout.data(), v.data(), BR, n_cols, col0, C, E);
    gpu::scalar_embed_backward(d_dw.p, d_db.p, d_dout.p, d_v.p, BR, n_cols, col0, C, E);
    check("scalar_embed_backward dw " + tag, d_dw.get(), dw, 5e-5, 1e-5);
    check("scalar_embed_backward dbias " + tag, d_db.get(), db, 5e-5, 1e-5);
}

// ----------------------------------------------------------------------------
// decoder gather/scatter and the loss

static void test_target_rows(int B, int R, int C, int S, int E) {
    const std::string tag = fmt("B=%d R=%d C=%d S=%d E=%d", B, R, C, S, E);
    std::vector<float> x = uniform((long)B * R * C * E, -1, 1), dout = uniform((long)B * (R - S) * E, -1, 1);
    std::vector<float> out((size_t)B * (R - S) * E), dx(x.size());
    gather_target_test_rows(out.data(), x.data(), B, R, C, S, E);
    scatter_target_test_rows(dx.data(), dout.data(), B, R, C, S, E);
    DevF d_x(x), d_dout(dout), d_out(nans((long)out.size())), d_dx(nans((long)dx.size()));
    gpu::gather_target_test_rows(d_out.p, d_x.p, B, R, C, S, E);
    gpu::scatter_target_test_rows(d_dx.p, d_dout.p, B, R, C, S, E);
    check("gather_target_test_rows " + tag, d_out.get(), out, 0, 0);
    check("scatter_target_test_rows " + tag, d_dx.get(), dx, 0, 0);
    // add into a buffer that already holds values elsewhere
    std::vector<float> acc = x;
    add_target_test_rows(acc.data(), dout.data(), B, R, C, S, E);
    DevF d_acc(x);
    gpu::add_target_test_rows(d_acc.p, d_dout.p, B, R, C, S, E);
    check("add_target_test_rows " + tag, d_acc.get(), acc, 0, 0);
}

static void test_crossentropy(int B, int R, int S, int K) {
    const std::string tag = fmt("B=%d R=%d S=%d K=%d", B, R, S, K);
    const long N = (long)B * (R - S);
    std::vector<float> logits = uniform(N * K, -4, 4), y((size_t)B * R);
    for (auto& v : y) v = (float)rng_int(&rng, 0, K - 1);
    std::vector<float> loss(1), probs(N * K), dlogits(N * K);
    crossentropy_forward(loss.data(), probs.data(), logits.data(), y.data(), B, R, S, K);
    const float scale = 1.0f / 37.0f;
    crossentropy_backward(dlogits.data(), probs.data(), y.data(), scale, B, R, S, K);
    DevF d_loss(nans(1)), d_probs(nans(N * K)), d_logits(logits), d_y(y);
    gpu::crossentropy_forward(d_loss.p, d_probs.p, d_logits.p, d_y.p, B, R, S, K);
    check("crossentropy_forward loss_sum " + tag, d_loss.get(), loss, 1e-5, 1e-5);
    check("crossentropy_forward probs " + tag, d_probs.get(), probs, 1e-6, 1e-5);
    // backward from the CPU's probabilities: (p - onehot) * scale is the same float arithmetic
    DevF d_probs_cpu(probs), d_dlogits(nans(N * K));
    gpu::crossentropy_backward(d_dlogits.p, d_probs_cpu.p, d_y.p, scale, B, R, S, K);
    check("crossentropy_backward " + tag, d_dlogits.get(), dlogits, 0, 0);
}

// ----------------------------------------------------------------------------
// optimizer

static void test_sum_of_squares(long n) {
    std::vector<float> x = uniform(n, -2, 2);
    std::vector<double> want(1);
    sum_of_squares(want.data(), x.data(), (size_t)n);
    DevF d_x(x);
    DevD d_out(std::vector<double>(1, NAN)); // a device scalar in the CUDA build
    gpu::sum_of_squares(d_out.p, d_x.p, (size_t)n);
    check(fmt("sum_of_squares n=%ld", n), d_out.get(), want, 1e-12, 1e-12);
}

static void test_adamw(long n, int step) {
    std::vector<float> params = uniform(n, -1, 1), m = uniform(n, -0.1, 0.1), v = uniform(n, 0, 0.01), g = uniform(n, -1, 1);
    DevF d_params(params), d_m(m), d_v(v), d_g(g);
    adamw_update(params.data(), m.data(), v.data(), g.data(), (size_t)n, 1e-3f, 0.9f, 0.999f, 1e-8f, 0.01f, 0.5f, step);
    gpu::adamw_update(d_params.p, d_m.p, d_v.p, d_g.p, (size_t)n, 1e-3f, 0.9f, 0.999f, 1e-8f, 0.01f, 0.5f, step);
    const std::string tag = fmt("adamw_update n=%ld step=%d", n, step);
    check(tag + ": params", d_params.get(), params, 1e-6, 1e-6);
    check(tag + ": m", d_m.get(), m, 1e-6, 1e-6);
    check(tag + ": v", d_v.get(), v, 1e-6, 1e-6);
}

// schedule-free AdamW: lr_t and c as tabpfn_update passes them (warmup and bias correction
// folded into lr_t); c = 1 is the first step (x jumps to z)
static void test_schedulefree(long n, float lr_t, float c) {
    std::vector<float> y = uniform(n, -1, 1), z = uniform(n, -1, 1), x = uniform(n, -1, 1), v = uniform(n, 0, 0.01),
                       g = uniform(n, -1, 1);
    DevF d_y(y), d_z(z), d_x(x), d_v(v), d_g(g);
    schedulefree_update(y.data(), z.data(), x.data(), v.data(), g.data(), (size_t)n, lr_t, c, 0.9f, 0.999f, 1e-8f, 0.01f, 0.5f);
    gpu::schedulefree_update(d_y.p, d_z.p, d_x.p, d_v.p, d_g.p, (size_t)n, lr_t, c, 0.9f, 0.999f, 1e-8f, 0.01f, 0.5f);
    const std::string tag = fmt("schedulefree_update n=%ld lr_t=%g c=%g", n, lr_t, c);
    check(tag + ": y", d_y.get(), y, 1e-6, 1e-6);
    check(tag + ": z", d_z.get(), z, 1e-6, 1e-6);
    check(tag + ": x", d_x.get(), x, 1e-6, 1e-6);
    check(tag + ": v", d_v.get(), v, 1e-6, 1e-6);
}

// ----------------------------------------------------------------------------
// row-sharding data movement (exact)

static void test_shard_ops(void) {
    const int B = 2, R = 10, C = 3, E = 8, row0 = 3, rows = 4;
    std::vector<float> qkv = uniform((long)B * R * C * 3 * E, -1, 1);
    std::vector<float> kv((size_t)B * rows * C * 2 * E);
    pack_kv_rows(kv.data(), qkv.data(), B, R, C, E, row0, rows);
    DevF d_qkv(qkv), d_kv(nans((long)kv.size()));
    gpu::pack_kv_rows(d_kv.p, d_qkv.p, B, R, C, E, row0, rows);
    check("pack_kv_rows", d_kv.get(), kv, 0, 0);

    std::vector<float> dkv = uniform((long)kv.size(), -1, 1), dqkv = uniform((long)qkv.size(), -1, 1);
    DevF d_dkv(dkv), d_dqkv(dqkv);
    unpack_kv_rows_add(dqkv.data(), dkv.data(), B, R, C, E, row0, rows);
    gpu::unpack_kv_rows_add(d_dqkv.p, d_dkv.p, B, R, C, E, row0, rows);
    check("unpack_kv_rows_add", d_dqkv.get(), dqkv, 0, 0);

    // problems [1, 10) of a (B, R, C, 24) buffer, heads of d = 4 at channel offset 8, rows [2, 7)
    const int width = 24, offset = 8, heads = 2, d = 4, t0 = 1, t1 = 10, prow0 = 2, prows = 5;
    std::vector<float> buf = uniform((long)B * R * C * width, -1, 1), out((size_t)(t1 - t0) * prows * d);
    gather_problem_rows(out.data(), buf.data(), R, C, width, offset, heads, d, t0, t1, prow0, prows);
    DevF d_buf(buf), d_out(nans((long)out.size()));
    gpu::gather_problem_rows(d_out.p, d_buf.p, R, C, width, offset, heads, d, t0, t1, prow0, prows);
    check("gather_problem_rows", d_out.get(), out, 0, 0);

    const long n_blocks = 7, len = 9, src_stride = 11, dst_stride = 13;
    std::vector<float> src = uniform(n_blocks * src_stride, -1, 1), dst = uniform(n_blocks * dst_stride, -1, 1);
    DevF d_src(src), d_dst(dst);
    copy_blocks(dst.data(), dst_stride, src.data(), src_stride, n_blocks, len);
    gpu::copy_blocks(d_dst.p, dst_stride, d_src.p, src_stride, n_blocks, len);
    check("copy_blocks", d_dst.get(), dst, 0, 0);
}

// ----------------------------------------------------------------------------
// all-to-all data movement (exact)

static void test_a2a_ops(void) {
    // row side: B = 2, R = 7 rows of which S = 4 train, C = 3 columns, E = 8 = 2 heads of d = 4
    const int B = 2, R = 7, C = 3, E = 8, heads = 2, S = 4, d = E / heads, n = B * C * heads;
    std::vector<float> qkv = uniform((long)B * R * C * 3 * E, -1, 1), packed((size_t)n * (R + 2 * S) * d);
    gather_problem_qkv(packed.data(), qkv.data(), B, R, C, E, heads, S);
    DevF d_qkv(qkv), d_packed(nans((long)packed.size()));
    gpu::gather_problem_qkv(d_packed.p, d_qkv.p, B, R, C, E, heads, S);
    check("gather_problem_qkv", d_packed.get(), packed, 0, 0);

    std::vector<float> dpacked = uniform((long)packed.size(), -1, 1), dqkv(qkv.size());
    scatter_problem_qkv(dqkv.data(), dpacked.data(), B, R, C, E, heads, S);
    DevF d_dpacked(dpacked), d_dqkv(nans((long)dqkv.size()));
    gpu::scatter_problem_qkv(d_dqkv.p, d_dpacked.p, B, R, C, E, heads, S);
    check("scatter_problem_qkv", d_dqkv.get(), dqkv, 0, 0);

    std::vector<float> olse = uniform((long)n * R * (d + 1), -1, 1), o((size_t)B * R * C * E), lse((size_t)n * R);
    scatter_problem_o_lse(o.data(), lse.data(), olse.data(), B, R, C, E, heads);
    DevF d_olse(olse), d_o(nans((long)o.size())), d_lse(nans((long)lse.size()));
    gpu::scatter_problem_o_lse(d_o.p, d_lse.p, d_olse.p, B, R, C, E, heads);
    check("scatter_problem_o_lse: o", d_o.get(), o, 0, 0);
    check("scatter_problem_o_lse: lse", d_lse.get(), lse, 0, 0);

    // problem side: 3 members holding 5 (3 train), 3 (0 train) and 4 (2 train) rows; the virtual
    // table has the 5 train rows first, then the 7 test rows, member by member
    static MemberRows mr; // 16 KB: not on the stack
    memset(&mr, 0, sizeof(mr));
    const int rows_m[3] = {5, 3, 4}, train_m[3] = {3, 0, 2};
    mr.count = 3;
    int total_train = 0, R_v = 0;
    for (int m = 0; m < mr.count; m++) total_train += train_m[m], R_v += rows_m[m];
    for (int m = 0, vtrain = 0, vtest = total_train; m < mr.count; m++) {
        mr.rows[m] = rows_m[m];
        mr.train[m] = train_m[m];
        mr.vtrain[m] = vtrain;
        mr.vtest[m] = vtest;
        vtrain += train_m[m];
        vtest += rows_m[m] - train_m[m];
    }
    const int n_own = 3, dv = 4;
    // member chunks in the exchange buffer, with gaps between them so that offsets matter
    int qkv_offset[3], row_offset[3], olse_offset[3], qkv_total = 0, row_total = 0, olse_total = 0;
    for (int m = 0; m < mr.count; m++) {
        qkv_offset[m] = qkv_total + 3;
        qkv_total = qkv_offset[m] + n_own * (rows_m[m] + 2 * train_m[m]) * dv;
        row_offset[m] = row_total + 5;
        row_total = row_offset[m] + n_own * rows_m[m] * dv;
        olse_offset[m] = olse_total + 2;
        olse_total = olse_offset[m] + n_own * rows_m[m] * (dv + 1);
    }
    // outputs start with the same values on both sides (parts no op writes stay as they were)
    std::vector<float> in_qkv = uniform(qkv_total, -1, 1), qkv_v = uniform((long)n_own * R_v * 3 * dv, -1, 1);
    DevF d_in_qkv(in_qkv), d_qkv_v(qkv_v);
    members_to_virtual_qkv(qkv_v.data(), in_qkv.data(), qkv_offset, &mr, n_own, R_v, dv);
    gpu::members_to_virtual_qkv(d_qkv_v.p, d_in_qkv.p, qkv_offset, &mr, n_own, R_v, dv);
    check("members_to_virtual_qkv", d_qkv_v.get(), qkv_v, 0, 0);

    std::vector<float> dqkv_v = uniform((long)qkv_v.size(), -1, 1), out_qkv = uniform(qkv_total, -1, 1);
    DevF d_dqkv_v(dqkv_v), d_out_qkv(out_qkv);
    virtual_to_members_qkv(out_qkv.data(), qkv_offset, dqkv_v.data(), &mr, n_own, R_v, dv);
    gpu::virtual_to_members_qkv(d_out_qkv.p, qkv_offset, d_dqkv_v.p, &mr, n_own, R_v, dv);
    check("virtual_to_members_qkv", d_out_qkv.get(), out_qkv, 0, 0);

    std::vector<float> in_rows = uniform(row_total, -1, 1), x_v = uniform((long)n_own * R_v * dv, -1, 1);
    DevF d_in_rows(in_rows), d_x_v(x_v);
    members_to_virtual_rows(x_v.data(), in_rows.data(), row_offset, &mr, n_own, R_v, dv);
    gpu::members_to_virtual_rows(d_x_v.p, d_in_rows.p, row_offset, &mr, n_own, R_v, dv);
    check("members_to_virtual_rows", d_x_v.get(), x_v, 0, 0);

    std::vector<float> o_v = uniform((long)n_own * R_v * dv, -1, 1), lse_v = uniform((long)n_own * R_v, -1, 1);
    std::vector<float> out_olse = uniform(olse_total, -1, 1);
    DevF d_o_v(o_v), d_lse_v(lse_v), d_out_olse(out_olse);
    virtual_to_members_o_lse(out_olse.data(), olse_offset, o_v.data(), lse_v.data(), &mr, n_own, R_v, dv);
    gpu::virtual_to_members_o_lse(d_out_olse.p, olse_offset, d_o_v.p, d_lse_v.p, &mr, n_own, R_v, dv);
    check("virtual_to_members_o_lse", d_out_olse.get(), out_olse, 0, 0);
}

// ----------------------------------------------------------------------------

// above gpu::SUMSQ_MAX_BLOCKS * SUMSQ_ELEMS_PER_BLOCK, so the partials kernel strides
enum { SUMSQ_CAP_TEST = 1024 * 4096 + 777 };

int main(void) {
    if (!test_cuda_device_present()) {
        printf("skipped: no CUDA device found, so the native run of the CUDA op tests did not happen "
               "(the emulated build runs them on the CPU)\n");
        return tests_finish();
    }
    gpu::backend_init(1);
    const double t_start = wall_seconds();
    const std::vector<TestSchedule> schedules = test_schedules();
    for (size_t s = 0; s < schedules.size(); s++) {
        test_use_schedule(schedules[s]);
        schedule_name = schedules[s].name;
        schedule_index = (int)s;
        rng_seed(&rng, 1234); // the same inputs under every schedule
        const double t0 = wall_seconds();

        test_device_memory();
        // linear layers: E = 96 -> 3E (qkv), an odd small shape, no bias, no input gradient, no rows
        test_matmul(37, 96, 288, 1, 1);
        test_matmul(5, 7, 13, 1, 1);
        test_matmul(37, 96, 96, 0, 1);
        test_matmul(9, 24, 40, 1, 0);
        test_matmul(0, 7, 13, 1, 1);
        // column sums: row chunks and column tiles off their sizes, one row, no rows
        test_column_sums(300, 97);
        test_column_sums(1000, 40);
        test_column_sums(20000, 3); // more chunks than the cap: chunks of 157 rows
        test_column_sums(1, 5);
        test_column_sums(0, 8);
        // LayerNorm: rows not a multiple of the rows per block, E = 96, odd E below and above a warp
        test_layernorm(37, 96);
        test_layernorm(37, 7);
        test_layernorm(6, 45);
        test_layernorm(0, 8);
        test_elementwise(1000); // not a multiple of the block
        test_elementwise(0);
        // feature statistics: more features than a tile, test rows S < R, no train rows
        test_feature_encoder(3, 50, 37, 30);
        test_feature_encoder(2, 20, 5, 13);
        test_feature_encoder(2, 10, 3, 0);
        test_target_encoder(3, 50, 30, 4);
        test_target_encoder(2, 300, 280, 10); // more train rows than threads
        // scalar embedding: the features (5 columns from 0) and the target (1 column at C - 1)
        test_scalar_embed(40, 5, 0, 6, 96);
        test_scalar_embed(40, 1, 5, 6, 96);
        test_scalar_embed(13, 2, 1, 4, 7);
        test_target_rows(2, 20, 6, 13, 96);
        test_target_rows(3, 9, 4, 5, 7);
        test_target_rows(2, 10, 6, 10, 8); // no test rows
        test_target_rows(2, 9, 1, 4, 8);   // one column (the pruned last layer's row axis)
        test_target_rows(2, 7, 5, 0, 8);   // every row (the pruned last layer's target column)
        // cross-entropy: K = 3, K above a warp, no test rows
        test_crossentropy(2, 20, 13, 3);
        test_crossentropy(3, 30, 7, 40);
        test_crossentropy(2, 300, 20, 3); // more rows than the summing block's threads
        test_crossentropy(2, 10, 10, 5);
        test_sum_of_squares(10000); // 3 partial blocks
        test_sum_of_squares(SUMSQ_CAP_TEST); // the block cap: a grid-stride loop, partials > threads
        test_sum_of_squares(1);
        test_sum_of_squares(0);
        test_adamw(1000, 1);
        test_adamw(1000, 5);
        test_schedulefree(1000, 4e-3f * 0.0316f, 1.0f);
        test_schedulefree(1000, 4e-3f, 0.05f);
        test_shard_ops();
        test_a2a_ops();
        printf("schedule %s: %.2f s\n", schedule_name, wall_seconds() - t0);
    }
    printf("all schedules: %.2f s\n", wall_seconds() - t_start);
    return tests_finish();
}
