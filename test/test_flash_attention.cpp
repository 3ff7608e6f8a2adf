// Flash attention (forward, backward, LSE merge) against a naive attention that stores
// the whole score matrix. Backward reference: the naive forward differentiated by central
// finite differences in double. Shapes cover q_len != kv_len, kv_len 1, kv_len 0 and
// lengths that are not multiples of the tiles, on strided (axis-routed) layouts.
#include "test_util.h"
#include "../attention/flash_attention_cpu.h"
#include "../attention/axis_attention.h"

typedef struct {
    int n_batch, heads, q_len, kv_len, head_dim;
} Shape;

// a row-axis layout over a (B, R, C, 3*width) style buffer exercises every stride
static void make_layouts(AxisLayout* q_layout, AxisLayout* o_layout, Shape s, int* n_floats_qkv, int* n_floats_o) {
    int C = s.n_batch % 2 == 0 ? 2 : 1;
    int B = s.n_batch / C;
    int R = s.q_len > s.kv_len ? s.q_len : s.kv_len;
    int E = s.heads * s.head_dim;
    *q_layout = row_axis_layout(R, C, 3 * E);
    *o_layout = row_axis_layout(R, C, E);
    *n_floats_qkv = B * R * C * 3 * E;
    *n_floats_o = B * R * C * E;
}

template <typename T>
static void fill_random(T* x, long n, Rng* rng, double scale) {
    for (long i = 0; i < n; i++) x[i] = (T)(scale * rng_normal(rng));
}

// scalar loss sum(out * w) of the naive attention, for finite differences
static double naive_loss(const double* qkv, const double* w, Shape s, AxisLayout ql, AxisLayout ol, int E, int n_o) {
    double* out = (double*)callocCheck(n_o * sizeof(double));
    double* lse = (double*)callocCheck((size_t)s.n_batch * s.heads * s.q_len * sizeof(double) + 8);
    naive_attention_forward(out, lse, qkv, qkv + E, qkv + 2 * E, ql, ql, ol, s.n_batch, s.heads, s.q_len, s.kv_len,
                            s.head_dim, 1.0 / sqrt((double)s.head_dim));
    double loss = 0.0;
    for (int i = 0; i < n_o; i++) loss += out[i] * w[i];
    free(out);
    free(lse);
    return loss;
}

static void test_shape(Shape s, Rng* rng) {
    char what[160];
    AxisLayout ql, ol;
    int n_qkv, n_o;
    make_layouts(&ql, &ol, s, &n_qkv, &n_o);
    const int E = s.heads * s.head_dim;
    const long n_lse = (long)s.n_batch * s.heads * s.q_len;
    const double scale = 1.0 / sqrt((double)s.head_dim);
    double* qkv = (double*)callocCheck(n_qkv * sizeof(double));
    double* w = (double*)callocCheck(n_o * sizeof(double));
    fill_random(qkv, n_qkv, rng, 1.0);
    fill_random(w, n_o, rng, 1.0);
    double* out_ref = (double*)callocCheck(n_o * sizeof(double));
    double* lse_ref = (double*)callocCheck((n_lse + 1) * sizeof(double));
    naive_attention_forward(out_ref, lse_ref, qkv, qkv + E, qkv + 2 * E, ql, ql, ol, s.n_batch, s.heads, s.q_len,
                            s.kv_len, s.head_dim, scale);

    // forward, double: exact up to rounding
    double* out = (double*)callocCheck(n_o * sizeof(double));
    double* lse = (double*)callocCheck((n_lse + 1) * sizeof(double));
    flash_attention_forward(out, lse, qkv, qkv + E, qkv + 2 * E, ql, ql, ol, s.n_batch, s.heads, s.q_len, s.kv_len,
                            s.head_dim, scale);
    snprintf(what, sizeof(what), "forward double  n%d h%d q%d kv%d d%d: out", s.n_batch, s.heads, s.q_len, s.kv_len, s.head_dim);
    allclose_report(what, out, out_ref, n_o, 1e-12, 1e-10);
    if (s.kv_len > 0) {
        snprintf(what, sizeof(what), "forward double  n%d h%d q%d kv%d d%d: lse", s.n_batch, s.heads, s.q_len, s.kv_len, s.head_dim);
        allclose_report(what, lse, lse_ref, n_lse, 1e-12, 1e-10);
    } else {
        int all_neg_inf = 1;
        for (long i = 0; i < n_lse; i++) all_neg_inf &= (lse[i] == -INFINITY);
        check_true("forward kv_len 0 gives lse = -inf", all_neg_inf);
    }

    // forward, float: within float rounding of the double reference
    float* qkv_f = (float*)callocCheck(n_qkv * sizeof(float));
    for (int i = 0; i < n_qkv; i++) qkv_f[i] = (float)qkv[i];
    float* out_f = (float*)callocCheck(n_o * sizeof(float));
    float* lse_f = (float*)callocCheck((n_lse + 1) * sizeof(float));
    flash_attention_forward(out_f, lse_f, qkv_f, qkv_f + E, qkv_f + 2 * E, ql, ql, ol, s.n_batch, s.heads, s.q_len,
                            s.kv_len, s.head_dim, (float)scale);
    snprintf(what, sizeof(what), "forward float   n%d h%d q%d kv%d d%d: out", s.n_batch, s.heads, s.q_len, s.kv_len, s.head_dim);
    allclose_report(what, out_f, out_ref, n_o, 2e-5, 2e-5);

    // backward: d/dqkv of sum(out * w) against central differences of the naive forward
    if (s.kv_len > 0) {
        double* dqkv = (double*)callocCheck(n_qkv * sizeof(double));
        flash_attention_backward(dqkv, dqkv + E, dqkv + 2 * E, w, out, lse, qkv, qkv + E, qkv + 2 * E, ql, ql, ol,
                                 s.n_batch, s.heads, s.q_len, s.kv_len, s.head_dim, scale);
        double* dqkv_fd = (double*)callocCheck(n_qkv * sizeof(double));
        const double h = 1e-5;
        for (int i = 0; i < n_qkv; i++) {
            double saved = qkv[i];
            qkv[i] = saved + h;
            double lp = naive_loss(qkv, w, s, ql, ol, E, n_o);
            qkv[i] = saved - h;
            double lm = naive_loss(qkv, w, s, ql, ol, E, n_o);
            qkv[i] = saved;
            dqkv_fd[i] = (lp - lm) / (2 * h);
        }
        snprintf(what, sizeof(what), "backward double n%d h%d q%d kv%d d%d: dq,dk,dv", s.n_batch, s.heads, s.q_len, s.kv_len, s.head_dim);
        allclose_report(what, dqkv, dqkv_fd, n_qkv, 1e-7, 1e-6);
        free(dqkv);
        free(dqkv_fd);
    }
    free(qkv); free(w); free(out_ref); free(lse_ref); free(out); free(lse); free(qkv_f); free(out_f); free(lse_f);
}

// splitting the keys into two blocks and merging by LSE equals attention over all keys
static void test_merge(Rng* rng) {
    Shape s = {3, 2, 37, 70, 8};
    const int E = s.heads * s.head_dim, split = 29;
    AxisLayout ql, ol;
    int n_qkv, n_o;
    make_layouts(&ql, &ol, s, &n_qkv, &n_o);
    const long n_lse = (long)s.n_batch * s.heads * s.q_len;
    double* qkv = (double*)callocCheck(n_qkv * sizeof(double));
    fill_random(qkv, n_qkv, rng, 1.5);
    double *out = (double*)callocCheck(n_o * sizeof(double)), *lse = (double*)callocCheck(n_lse * sizeof(double));
    double *out_b = (double*)callocCheck(n_o * sizeof(double)), *lse_b = (double*)callocCheck(n_lse * sizeof(double));
    double *out_ref = (double*)callocCheck(n_o * sizeof(double)), *lse_ref = (double*)callocCheck(n_lse * sizeof(double));
    double scale = 1.0 / sqrt((double)s.head_dim);
    naive_attention_forward(out_ref, lse_ref, qkv, qkv + E, qkv + 2 * E, ql, ql, ol, s.n_batch, s.heads, s.q_len, s.kv_len, s.head_dim, scale);
    flash_attention_forward(out, lse, qkv, qkv + E, qkv + 2 * E, ql, ql, ol, s.n_batch, s.heads, s.q_len, split, s.head_dim, scale);
    const long kv_offset = (long)split * ql.seq_stride;
    flash_attention_forward(out_b, lse_b, qkv, qkv + E + kv_offset, qkv + 2 * E + kv_offset, ql, ql, ol, s.n_batch,
                            s.heads, s.q_len, s.kv_len - split, s.head_dim, scale);
    lse_merge(out, lse, out_b, lse_b, ol, ol, s.n_batch, s.heads, s.q_len, s.head_dim);
    allclose_report("lse_merge of two key blocks: out", out, out_ref, n_o, 1e-12, 1e-10);
    allclose_report("lse_merge of two key blocks: lse", lse, lse_ref, n_lse, 1e-12, 1e-10);
    // merging an empty block (kv_len 0) changes nothing
    flash_attention_forward(out_b, lse_b, qkv, qkv + E, qkv + 2 * E, ql, ql, ol, s.n_batch, s.heads, s.q_len, 0, s.head_dim, scale);
    lse_merge(out, lse, out_b, lse_b, ol, ol, s.n_batch, s.heads, s.q_len, s.head_dim);
    allclose_report("lse_merge with an empty block is the identity", out, out_ref, n_o, 1e-12, 1e-10);
    free(qkv); free(out); free(lse); free(out_b); free(lse_b); free(out_ref); free(lse_ref);
}

int main(void) {
    Rng rng;
    rng_seed(&rng, 42);
    Shape shapes[] = {
        {2, 2, 5, 5, 4},     // tiny, square
        {4, 3, 70, 33, 8},   // q_len != kv_len, neither a tile multiple
        {2, 1, 33, 1, 5},    // kv_len 1, odd head size
        {1, 2, 65, 129, 3},  // kv longer than q, crosses two kv tiles
        {3, 2, 1, 7, 16},    // a single query
        {2, 2, 9, 0, 4},     // no keys at all (a rank without train rows)
        {3, 2, 40, 16, 24},  // the longest key set of the short path, more queries than keys
        {2, 3, 6, 17, 24},   // the shortest key set of the tiled path
    };
    for (size_t i = 0; i < sizeof(shapes) / sizeof(shapes[0]); i++) test_shape(shapes[i], &rng);
    test_merge(&rng);
    return tests_finish();
}
