// Every leaf op's backward against central finite differences of its forward, in double.
// Each check: loss = sum(out * w) for a random w; analytic gradient from the backward op;
// numeric gradient (loss(x + h) - loss(x - h)) / 2h with h = 1e-6; tolerance 1e-6 relative
// plus 1e-8 absolute (double rounding of the differences is ~1e-10).
#include <vector>
#include "test_util.h"
#include "../model/ops_cpu.h"

typedef std::vector<double> Vec;

static Vec random_vec(long n, Rng* rng, double scale = 1.0) {
    Vec v(n);
    for (long i = 0; i < n; i++) v[i] = scale * rng_normal(rng);
    return v;
}

static double dot(const Vec& a, const Vec& b) {
    double s = 0.0;
    for (size_t i = 0; i < a.size(); i++) s += a[i] * b[i];
    return s;
}

// numeric gradient of loss() with respect to every element of x
template <typename F>
static Vec numeric_grad(Vec& x, F loss) {
    const double h = 1e-6;
    Vec g(x.size());
    for (size_t i = 0; i < x.size(); i++) {
        double saved = x[i];
        x[i] = saved + h;
        double lp = loss();
        x[i] = saved - h;
        double lm = loss();
        x[i] = saved;
        g[i] = (lp - lm) / (2 * h);
    }
    return g;
}

static void check_grad(const char* what, const Vec& analytic, const Vec& numeric) {
    allclose_report(what, analytic.data(), numeric.data(), (long)analytic.size(), 1e-8, 1e-6);
}

static void test_matmul(Rng* rng) {
    const long N = 7;
    const int in = 5, out = 4;
    Vec x = random_vec(N * in, rng), W = random_vec((long)out * in, rng), b = random_vec(out, rng), w = random_vec(N * out, rng);
    Vec y(N * out);
    auto loss = [&]() { matmul_forward(y.data(), x.data(), W.data(), b.data(), N, in, out); return dot(y, w); };
    Vec dx(N * in), dW(out * in, 0.0), db(out, 0.0);
    matmul_backward(dx.data(), dW.data(), db.data(), w.data(), x.data(), W.data(), N, in, out);
    check_grad("matmul: dinp", dx, numeric_grad(x, loss));
    check_grad("matmul: dweight", dW, numeric_grad(W, loss));
    check_grad("matmul: dbias", db, numeric_grad(b, loss));
}

static void test_layernorm(Rng* rng) {
    const long N = 6;
    const int E = 9;
    Vec x = random_vec(N * E, rng, 2.0), g = random_vec(E, rng), b = random_vec(E, rng), w = random_vec(N * E, rng);
    Vec y(N * E), mean(N), rstd(N);
    auto loss = [&]() { layernorm_forward(y.data(), mean.data(), rstd.data(), x.data(), g.data(), b.data(), N, E); return dot(y, w); };
    loss();
    Vec dx(N * E), dg(E, 0.0), db(E, 0.0);
    layernorm_backward(dx.data(), dg.data(), db.data(), w.data(), x.data(), g.data(), mean.data(), rstd.data(), N, E);
    check_grad("layernorm: dinp", dx, numeric_grad(x, loss));
    check_grad("layernorm: dweight", dg, numeric_grad(g, loss));
    check_grad("layernorm: dbias", db, numeric_grad(b, loss));
    // the forward against its definition, computed here directly
    Vec y_ref(N * E);
    for (long n = 0; n < N; n++) {
        double m = 0, v = 0;
        for (int e = 0; e < E; e++) m += x[n * E + e] / E;
        for (int e = 0; e < E; e++) v += (x[n * E + e] - m) * (x[n * E + e] - m) / E;
        for (int e = 0; e < E; e++) y_ref[n * E + e] = (x[n * E + e] - m) / sqrt(v + 1e-5) * g[e] + b[e];
    }
    loss();
    allclose_report("layernorm: forward vs definition", y.data(), y_ref.data(), N * E, 1e-12, 1e-12);
    // the fused residual form: res = a + b, out = LayerNorm(res), against add then norm
    Vec a = random_vec(N * E, rng), bb = random_vec(N * E, rng), res(N * E), y2(N * E), sum(N * E), y3(N * E);
    for (long i = 0; i < N * E; i++) sum[i] = a[i] + bb[i];
    layernorm_forward(y3.data(), mean.data(), rstd.data(), sum.data(), g.data(), b.data(), N, E);
    residual_layernorm_forward(res.data(), y2.data(), mean.data(), rstd.data(), a.data(), bb.data(), g.data(), b.data(), N, E);
    allclose_report("residual_layernorm_forward: the sum", res.data(), sum.data(), N * E, 0.0, 0.0);
    allclose_report("residual_layernorm_forward: the norm", y2.data(), y3.data(), N * E, 0.0, 0.0);
}

static void test_gelu(Rng* rng) {
    const long n = 50;
    Vec x = random_vec(n, rng, 3.0), w = random_vec(n, rng), y(n);
    auto loss = [&]() { gelu_forward(y.data(), x.data(), n); return dot(y, w); };
    Vec dx(n);
    gelu_backward(dx.data(), x.data(), w.data(), n);
    check_grad("gelu: dinp", dx, numeric_grad(x, loss));
    loss();
    Vec y_ref(n);
    for (long i = 0; i < n; i++) y_ref[i] = x[i] * 0.5 * erfc(-x[i] / sqrt(2.0));
    allclose_report("gelu: forward vs x * Phi(x)", y.data(), y_ref.data(), n, 1e-15, 1e-13);
}

// the encoders: standardise features with train-row statistics, clip, Linear(1 -> E);
// target column from train labels and the train-label mean
static void test_encoders(Rng* rng) {
    const int B = 2, R = 7, F = 3, S = 4, C = F + 1, E = 5;
    Vec x = random_vec((long)B * R * F, rng, 3.0), y((long)B * R);
    for (auto& v : y) v = (double)rng_int(rng, 0, 2);
    x[((long)1 * R + S + 1) * F + 2] = 1e6; // a test-row outlier: its z-score is clipped to +100
    Vec fw = random_vec(E, rng), fb = random_vec(E, rng), tw = random_vec(E, rng), tb = random_vec(E, rng);
    Vec w = random_vec((long)B * R * C * E, rng);
    Vec stats((long)B * F * 2), m2((long)B * F), lstats(B * 2), xnorm((long)B * R * F), ynorm((long)B * R), out((long)B * R * C * E);
    auto loss = [&]() {
        feature_stats_local(stats.data(), x.data(), B, R, F, S);
        feature_deviations_local(m2.data(), x.data(), stats.data(), B, R, F, S);
        feature_normalize(xnorm.data(), x.data(), stats.data(), m2.data(), B, R, F);
        label_stats_local(lstats.data(), y.data(), B, R, S);
        target_fill(ynorm.data(), y.data(), lstats.data(), B, R, S);
        scalar_embed_forward(out.data(), xnorm.data(), fw.data(), fb.data(), (long)B * R, F, 0, C, E);
        scalar_embed_forward(out.data(), ynorm.data(), tw.data(), tb.data(), (long)B * R, 1, F, C, E);
        return dot(out, w);
    };
    loss();
    // forward vs a direct two-pass computation of mean and unbiased std
    Vec xnorm_ref((long)B * R * F);
    for (int b = 0; b < B; b++)
        for (int f = 0; f < F; f++) {
            double m = 0, v = 0;
            for (int r = 0; r < S; r++) m += x[((long)b * R + r) * F + f] / S;
            for (int r = 0; r < S; r++) v += pow(x[((long)b * R + r) * F + f] - m, 2) / (S - 1);
            for (int r = 0; r < R; r++) {
                double z = (x[((long)b * R + r) * F + f] - m) / (sqrt(v) + 1e-20);
                xnorm_ref[((long)b * R + r) * F + f] = z < -100 ? -100 : (z > 100 ? 100 : z);
            }
        }
    allclose_report("feature encoder: normalised x vs two-pass mean/std", xnorm.data(), xnorm_ref.data(), B * R * F, 1e-9, 1e-9);
    double mean0 = 0;
    for (int r = 0; r < S; r++) mean0 += y[r] / S;
    check_true("target encoder: test rows get the train-label mean", fabs(ynorm[S] - mean0) < 1e-15 && ynorm[0] == y[0]);
    Vec dfw(E, 0.0), dfb(E, 0.0), dtw(E, 0.0), dtb(E, 0.0);
    scalar_embed_backward(dfw.data(), dfb.data(), w.data(), xnorm.data(), (long)B * R, F, 0, C, E);
    scalar_embed_backward(dtw.data(), dtb.data(), w.data(), ynorm.data(), (long)B * R, 1, F, C, E);
    check_grad("feature encoder: dweight", dfw, numeric_grad(fw, loss));
    check_grad("feature encoder: dbias", dfb, numeric_grad(fb, loss));
    check_grad("target encoder: dweight", dtw, numeric_grad(tw, loss));
    check_grad("target encoder: dbias", dtb, numeric_grad(tb, loss));
}

// The feature statistics on an adversarial column in the model's precision (float inputs): mean
// 3e4, std 1e-3, where one pass of sum and sum of squares loses the variance. Reference: the
// same float inputs, two passes in double. Also the row-sharded form: the train rows split over
// two "ranks" whose [count, sum] and squared deviations are added between the passes, as the
// group's all-reduces do, must give the same normalised values.
static void test_feature_stats_robust(Rng* rng) {
    const int B = 2, R = 64, F = 2, S = 40;
    std::vector<float> x((size_t)B * R * F);
    for (int b = 0; b < B; b++)
        for (int r = 0; r < R; r++) {
            x[((size_t)b * R + r) * F + 0] = (float)(3e4 + 1e-3 * rng_normal(rng) + 0.5 * b);  // the adversarial column
            x[((size_t)b * R + r) * F + 1] = (float)(2.0 * rng_normal(rng));                    // an ordinary one
        }
    std::vector<double> ref((size_t)B * R * F);
    for (int b = 0; b < B; b++)
        for (int f = 0; f < F; f++) {
            double m = 0, v = 0;
            for (int r = 0; r < S; r++) m += (double)x[((size_t)b * R + r) * F + f];
            m /= S;
            for (int r = 0; r < S; r++) v += pow((double)x[((size_t)b * R + r) * F + f] - m, 2);
            const double sd = sqrt(v / (S - 1));
            for (int r = 0; r < R; r++) {
                double z = ((double)x[((size_t)b * R + r) * F + f] - m) / (sd + 1e-20);
                ref[((size_t)b * R + r) * F + f] = z < -100 ? -100 : (z > 100 ? 100 : z);
            }
        }
    std::vector<double> stats((size_t)B * F * 2), m2((size_t)B * F);
    std::vector<float> xnorm(x.size());
    feature_stats_local(stats.data(), x.data(), B, R, F, S);
    feature_deviations_local(m2.data(), x.data(), stats.data(), B, R, F, S);
    feature_normalize(xnorm.data(), x.data(), stats.data(), m2.data(), B, R, F);
    std::vector<double> got(xnorm.begin(), xnorm.end());
    double spread = 0;
    for (int r = 0; r < S; r++) spread = fmax(spread, fabs(ref[(size_t)r * F]));
    check_true("feature stats: the adversarial column has z-scores of order 1", spread > 0.5 && spread < 10);
    allclose_report("feature stats: mean 3e4 std 1e-3 column vs float64 two-pass reference", got.data(), ref.data(), (long)got.size(), 1e-6, 0);
    // two "ranks": rows [0, 17) and [17, S) (test rows split too); sums added between the passes
    const int S0 = 17, R0 = 30, R1 = R - R0, S1 = S - S0;
    std::vector<float> x0((size_t)B * R0 * F), x1((size_t)B * R1 * F);
    for (int b = 0; b < B; b++)
        for (int r = 0; r < R; r++)
            for (int f = 0; f < F; f++) {
                // rank 0: train rows [0, S0) then test rows [S, S + R0 - S0); rank 1: the rest
                const float v = x[((size_t)b * R + r) * F + f];
                if (r < S0) x0[((size_t)b * R0 + r) * F + f] = v;
                else if (r < S) x1[((size_t)b * R1 + (r - S0)) * F + f] = v;
                else if (r < S + R0 - S0) x0[((size_t)b * R0 + S0 + (r - S)) * F + f] = v;
                else x1[((size_t)b * R1 + S1 + (r - S - (R0 - S0))) * F + f] = v;
            }
    std::vector<double> st0(stats.size()), st1(stats.size()), d0(m2.size()), d1(m2.size());
    feature_stats_local(st0.data(), x0.data(), B, R0, F, S0);
    feature_stats_local(st1.data(), x1.data(), B, R1, F, S1);
    for (size_t i = 0; i < st0.size(); i++) st0[i] += st1[i];
    feature_deviations_local(d0.data(), x0.data(), st0.data(), B, R0, F, S0);
    feature_deviations_local(d1.data(), x1.data(), st0.data(), B, R1, F, S1);
    for (size_t i = 0; i < d0.size(); i++) d0[i] += d1[i];
    std::vector<float> n0(x0.size());
    feature_normalize(n0.data(), x0.data(), st0.data(), d0.data(), B, R0, F);
    std::vector<double> got0(n0.begin(), n0.end()), ref0(n0.size());
    for (int b = 0; b < B; b++)
        for (int r = 0; r < R0; r++)
            for (int f = 0; f < F; f++) {
                const int src = r < S0 ? r : S + (r - S0);
                ref0[((size_t)b * R0 + r) * F + f] = ref[((size_t)b * R + src) * F + f];
            }
    allclose_report("feature stats: rows split over two ranks vs float64 reference", got0.data(), ref0.data(), (long)got0.size(), 1e-6, 0);
}

// fast_expf (model/common.h) on NaN, +-Inf and the clamp edges: NaN must come back as NaN with
// no undefined float-to-int conversion on the way (the ASan/UBSan build checks
// float-cast-overflow), and finite inputs stay within 2 ulp of expf
static void test_fast_expf_edges(void) {
    volatile float nan_in = NAN, inf_in = INFINITY; // volatile: no constant folding
    check_true("fast_expf(NaN) is NaN", isnan(fast_expf(nan_in)));
    check_true("fast_expf(-NaN) is NaN", isnan(fast_expf(-nan_in)));
    check_true("fast_expf(-Inf) is 0", fast_expf(-inf_in) == 0.0f);
    check_true("fast_expf(+Inf) is finite and large (clamped at 88)", isfinite(fast_expf(inf_in)) && fast_expf(inf_in) > 1e38f);
    float xs[8] = {-86.9f, -50.0f, -10.0f, -0.5f, 0.0f, 0.7f, 20.0f, 88.0f}; // below -87 it is 0 by design
    double worst = 0;
    for (float x : xs) {
        const double want = expf(x), got = fast_expf(x);
        if (want > 0) worst = fmax(worst, fabs(got - want) / want);
    }
    check_true("fast_expf within 2.4e-7 relative of expf at the edges", worst < 2.4e-7);
}

static void test_gather_scatter(Rng* rng) {
    const int B = 2, R = 6, C = 3, S = 4, E = 3, T = B * (R - S);
    Vec x = random_vec((long)B * R * C * E, rng), w = random_vec((long)T * E, rng), y((long)T * E);
    auto loss = [&]() { gather_target_test_rows(y.data(), x.data(), B, R, C, S, E); return dot(y, w); };
    Vec dx((long)B * R * C * E, 7.0); // scatter must overwrite, not add
    scatter_target_test_rows(dx.data(), w.data(), B, R, C, S, E);
    check_grad("decoder gather: scatter is its transpose", dx, numeric_grad(x, loss));
    // add_target_test_rows adds the scatter into what the buffer holds: acc + scatter(w)
    Vec acc = random_vec((long)B * R * C * E, rng), want = acc;
    for (size_t i = 0; i < want.size(); i++) want[i] += dx[i];
    add_target_test_rows(acc.data(), w.data(), B, R, C, S, E);
    check_grad("add_target_test_rows = buffer + scatter", acc, want);
}

static void test_crossentropy(Rng* rng) {
    const int B = 2, R = 7, S = 3, K = 4;
    const long T = (long)B * (R - S);
    Vec logits = random_vec(T * K, rng, 2.0), y((long)B * R), probs(T * K), loss_sum(1);
    for (auto& v : y) v = (double)rng_int(rng, 0, K - 1);
    auto loss = [&]() { crossentropy_forward(loss_sum.data(), probs.data(), logits.data(), y.data(), B, R, S, K); return loss_sum[0] / T; };
    loss();
    Vec dlogits(T * K);
    crossentropy_backward(dlogits.data(), probs.data(), y.data(), 1.0 / T, B, R, S, K);
    check_grad("cross-entropy: dlogits", dlogits, numeric_grad(logits, loss));
    double ref = 0;
    for (int b = 0; b < B; b++)
        for (int i = 0; i < R - S; i++) {
            const double* z = &logits[((long)b * (R - S) + i) * K];
            double se = 0;
            for (int k = 0; k < K; k++) se += exp(z[k]);
            ref += -(z[(int)y[(long)b * R + S + i]] - log(se));
        }
    Vec got(1, loss()), want(1, ref / T);
    allclose_report("cross-entropy: loss vs -log softmax", got.data(), want.data(), 1, 1e-14, 1e-12);
}

// AdamW and the global norm against a direct transcription of torch.optim.AdamW's update
static void test_optimizer(Rng* rng) {
    const size_t n = 1000;
    Vec p = random_vec(n, rng), m(n, 0.0), v(n, 0.0), g = random_vec(n, rng);
    Vec p_ref = p, m_ref = m, v_ref = v;
    const double lr = 1e-2, b1 = 0.9, b2 = 0.999, eps = 1e-8, wd = 0.1, gs = 0.5;
    for (int step = 1; step <= 3; step++) {
        adamw_update(p.data(), m.data(), v.data(), g.data(), n, (float)lr, (float)b1, (float)b2, (float)eps, (float)wd, (float)gs, step);
        for (size_t i = 0; i < n; i++) {
            double gi = g[i] * gs;
            p_ref[i] *= 1 - lr * wd;
            m_ref[i] = b1 * m_ref[i] + (1 - b1) * gi;
            v_ref[i] = b2 * v_ref[i] + (1 - b2) * gi * gi;
            double mhat = m_ref[i] / (1 - pow(b1, step)), vhat = v_ref[i] / (1 - pow(b2, step));
            p_ref[i] -= lr * mhat / (sqrt(vhat) + eps);
        }
    }
    // the op takes float hyperparameters, so compare at float precision of lr/betas
    allclose_report("adamw: 3 steps vs torch.optim.AdamW formula", p.data(), p_ref.data(), n, 1e-7, 1e-6);
    double sumsq, ref = 0;
    sum_of_squares(&sumsq, g.data(), n);
    for (size_t i = 0; i < n; i++) ref += g[i] * g[i];
    allclose_report("sum of squares (global grad norm)", &sumsq, &ref, 1, 0, 1e-13);
}

int main(void) {
    Rng rng;
    rng_seed(&rng, 7);
    test_matmul(&rng);
    test_layernorm(&rng);
    test_gelu(&rng);
    test_encoders(&rng);
    test_feature_stats_robust(&rng);
    test_fast_expf_edges();
    test_gather_scatter(&rng);
    test_crossentropy(&rng);
    test_optimizer(&rng);
    return tests_finish();
}
