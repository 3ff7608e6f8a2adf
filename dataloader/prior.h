// Built-in synthetic prior: random structural causal models (SCMs) in the TabPFN style.
// Deterministic from a seed, nothing to download.
//
// One dataset = one random SCM, an MLP-like DAG:
//   layer 0       root causes, each column of R samples normal or uniform
//   layers 1..L   node_j = act_l(sum_i W_ji * parent_i + b_j) + noise_std * N(0,1)
//                 (sparse random W, one random activation per layer among
//                  tanh, relu, sin, abs, identity, sigmoid)
// The target is read from a random non-root node, the F features from F other random nodes.
// Features are standardised over the dataset's rows (mean 0, std 1; a constant feature
// becomes 0). The target node is cut into K classes by thresholds at random quantiles of its
// values, and the class ids are randomly permuted; K is drawn per dataset, uniformly in
// [2, num_classes] (the trainer's --classes).
//
// A batch shares R rows, F features and S train rows (sampled once per batch); its B
// datasets each come from their own SCM. Batch i draws all its randomness from
// hash(seed, i) and dataset b of it from hash(hash(seed, i), b), so: the same seed
// gives the same bits, resuming at batch k (prior_skip_to) reproduces batch k, and the
// result does not depend on the number of OpenMP threads.
#pragma once
#include <algorithm>
#include "table_batch.h"
#ifdef _OPENMP
#include <omp.h>
#endif

typedef struct {
    int min_rows, max_rows;         // R per batch, uniform in [min_rows, max_rows]
    int min_features, max_features; // F per batch, uniform in [min_features, max_features]
    int num_classes;                // most classes: each table draws K uniformly in [2, num_classes], labels 0 .. K-1
    float min_train_fraction, max_train_fraction; // S = round(fraction * R), clamped to [2, R-1]
} PriorConfig;

static inline PriorConfig prior_config_default(void) {
    PriorConfig c;
    c.min_rows = 50;
    c.max_rows = 150;
    c.min_features = 1;
    c.max_features = 5;
    c.num_classes = 2;
    // wide on purpose: the model should work from a handful of train rows up to most of
    // the table; the 50/50 split used for evaluation is in the middle
    c.min_train_fraction = 0.3f;
    c.max_train_fraction = 0.9f;
    return c;
}

#define PRIOR_MAX_HIDDEN 3    // hidden layers after the root causes: 1..3
#define PRIOR_EXTRA_WIDTH 8   // nodes per hidden layer beyond the minimum the features need
#define PRIOR_MAX_ROOTS 8     // root causes: 1..max(8, hidden width)
#define PRIOR_LABEL_TRIES 8   // threshold draws before giving up on 2 train classes
#define PRIOR_MAX_CLASSES 64

enum { PRIOR_ACT_TANH, PRIOR_ACT_RELU, PRIOR_ACT_SIN, PRIOR_ACT_ABS, PRIOR_ACT_IDENTITY, PRIOR_ACT_SIGMOID, PRIOR_NUM_ACTS };

// per-thread scratch, sized from the config once in prior_init
typedef struct {
    float* nodes;   // (PRIOR_MAX_HIDDEN + 1, max_width, max_rows) node values, node-major so row loops are contiguous
    float* weights; // (max_width, max_width) one layer's W
    float* bias;    // (max_width)
    float* sorted;  // (max_rows) target values, sorted, for the quantile thresholds
    int* pick;      // ((PRIOR_MAX_HIDDEN + 1) * max_width) node ids for sampling without replacement
} PriorScratch;

typedef struct {
    PriorConfig config;
    uint64_t seed;
    int64_t next_batch; // batch counter: prior_sample_batch produces batch next_batch
    int max_width;      // widest layer any dataset can have
    int num_threads;
    PriorScratch* scratch; // (num_threads)
    // statistics, for tests and logs: datasets whose train rows hold a single class
    int64_t datasets_sampled, datasets_one_train_class;
} Prior;

// ----------------------------------------------------------------------------
// random helpers

// mixes two 64-bit values into one well-spread seed (splitmix64 finaliser, twice)
static inline uint64_t prior_hash(uint64_t a, uint64_t b) {
    uint64_t z = a ^ (b * 0xD1B54A32D192ED03ull + 0x8CB92BA72F3D8DD7ull);
    for (int i = 0; i < 2; i++) {
        z += 0x9E3779B97F4A7C15ull;
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
        z ^= z >> 31;
    }
    return z;
}

static inline float prior_uniform(Rng* rng, float lo, float hi) { return lo + (hi - lo) * (float)rng_uniform(rng); }

// approximately standard normal from one u64: Irwin-Hall sum of four 16-bit uniforms,
// rescaled to variance 1. Why: Box-Muller per noise value costs more than the whole SCM.
static inline float prior_fast_normal(Rng* rng) {
    uint64_t u = rng_next_u64(rng);
    float s = (float)(u & 0xFFFF) + (float)((u >> 16) & 0xFFFF) + (float)((u >> 32) & 0xFFFF) + (float)(u >> 48);
    return (s * (1.0f / 65536.0f) - 2.0f) * 1.7320508f; // sum of 4 U(0,1) has mean 2, variance 1/3
}

// ----------------------------------------------------------------------------
// setup

static void prior_init(Prior* prior, PriorConfig config, uint64_t seed) {
    const PriorConfig c = config;
    if (c.min_rows < 3) mosaic_fail("prior config: min_rows=%d must be at least 3 (2 train rows + 1 test row)", c.min_rows);
    if (c.max_rows < c.min_rows) mosaic_fail("prior config: max_rows=%d is below min_rows=%d", c.max_rows, c.min_rows);
    if (c.max_rows > (1 << 24)) mosaic_fail("prior config: max_rows=%d is too large (limit %d)", c.max_rows, 1 << 24);
    if (c.min_features < 1) mosaic_fail("prior config: min_features=%d must be at least 1", c.min_features);
    if (c.max_features < c.min_features) mosaic_fail("prior config: max_features=%d is below min_features=%d", c.max_features, c.min_features);
    if (c.max_features > 4096) mosaic_fail("prior config: max_features=%d is too large (limit 4096)", c.max_features);
    if (c.num_classes < 2) mosaic_fail("prior config: num_classes=%d must be at least 2", c.num_classes);
    if (c.num_classes > PRIOR_MAX_CLASSES) mosaic_fail("prior config: num_classes=%d is above the limit %d", c.num_classes, PRIOR_MAX_CLASSES);
    if (c.num_classes > c.min_rows) mosaic_fail("prior config: num_classes=%d exceeds min_rows=%d", c.num_classes, c.min_rows);
    if (!(c.min_train_fraction > 0.0f && c.max_train_fraction < 1.0f && c.min_train_fraction <= c.max_train_fraction))
        mosaic_fail("prior config: train fractions [%g, %g] must satisfy 0 < min <= max < 1", (double)c.min_train_fraction,
                    (double)c.max_train_fraction);

    memset(prior, 0, sizeof(*prior));
    prior->config = c;
    prior->seed = seed;
    prior->next_batch = 0;
    // the narrowest allowed hidden layer is ceil((F+1)/hidden) with one hidden layer: F+1
    prior->max_width = c.max_features + 1 + PRIOR_EXTRA_WIDTH;
    if (prior->max_width < PRIOR_MAX_ROOTS) prior->max_width = PRIOR_MAX_ROOTS;
#ifdef _OPENMP
    prior->num_threads = omp_get_max_threads();
#else
    prior->num_threads = 1;
#endif
    if (prior->num_threads < 1) prior->num_threads = 1;
    const size_t W = (size_t)prior->max_width, Rmax = (size_t)c.max_rows;
    prior->scratch = (PriorScratch*)mallocCheck((size_t)prior->num_threads * sizeof(PriorScratch));
    for (int t = 0; t < prior->num_threads; t++) {
        PriorScratch* s = &prior->scratch[t];
        s->nodes = (float*)mallocCheck((PRIOR_MAX_HIDDEN + 1) * W * Rmax * sizeof(float));
        s->weights = (float*)mallocCheck(W * W * sizeof(float));
        s->bias = (float*)mallocCheck(W * sizeof(float));
        s->sorted = (float*)mallocCheck(Rmax * sizeof(float));
        s->pick = (int*)mallocCheck((PRIOR_MAX_HIDDEN + 1) * W * sizeof(int));
    }
}

static void prior_free(Prior* prior) {
    for (int t = 0; t < prior->num_threads; t++) {
        PriorScratch* s = &prior->scratch[t];
        free(s->nodes);
        free(s->weights);
        free(s->bias);
        free(s->sorted);
        free(s->pick);
    }
    free(prior->scratch);
    prior->scratch = NULL;
}

// the next prior_sample_batch produces batch `batch_index` (resume from a checkpoint at step k)
static inline void prior_skip_to(Prior* prior, int64_t batch_index) { prior->next_batch = batch_index; }

// ----------------------------------------------------------------------------
// one dataset

static void prior_apply_activation(float* v, int n, int act) {
    switch (act) {
    case PRIOR_ACT_TANH:    for (int r = 0; r < n; r++) v[r] = tanhf(v[r]); break;
    case PRIOR_ACT_RELU:    for (int r = 0; r < n; r++) v[r] = v[r] > 0.0f ? v[r] : 0.0f; break;
    case PRIOR_ACT_SIN:     for (int r = 0; r < n; r++) v[r] = sinf(v[r]); break;
    case PRIOR_ACT_ABS:     for (int r = 0; r < n; r++) v[r] = fabsf(v[r]); break;
    case PRIOR_ACT_SIGMOID: for (int r = 0; r < n; r++) v[r] = 1.0f / (1.0f + expf(-v[r])); break;
    default: break; // identity
    }
}

// returns 1 when the train rows [0, S) hold at least 2 distinct classes
static int prior_label_dataset(float* y, Rng* rng, PriorScratch* s, const float* t, int R, int S, int K) {
    // y: (R) output class ids; t: (R) target node values
    memcpy(s->sorted, t, (size_t)R * sizeof(float));
    std::sort(s->sorted, s->sorted + R);
    float thresholds[PRIOR_MAX_CLASSES], cum[PRIOR_MAX_CLASSES];
    int perm[PRIOR_MAX_CLASSES];
    for (int attempt = 0; attempt < PRIOR_LABEL_TRIES / 2; attempt++) {
        // random class proportions in [0.25, 1.25] relative: no class is tiny
        float total = 0.0f;
        for (int k = 0; k < K; k++) { total += 0.25f + (float)rng_uniform(rng); cum[k] = total; }
        for (int k = 0; k < K - 1; k++) {
            int idx = (int)(cum[k] / total * (float)R);
            idx = idx < 1 ? 1 : (idx > R - 1 ? R - 1 : idx);
            thresholds[k] = s->sorted[idx];
        }
        for (int k = 0; k < K; k++) perm[k] = k;
        for (int k = K - 1; k > 0; k--) { int j = rng_int(rng, 0, k); int tmp = perm[k]; perm[k] = perm[j]; perm[j] = tmp; }
        int first = -1, two_classes = 0;
        for (int r = 0; r < R; r++) {
            int c = 0;
            for (int k = 0; k < K - 1; k++) c += t[r] >= thresholds[k];
            c = perm[c];
            y[r] = (float)c;
            if (r < S) {
                if (first < 0) first = c;
                else if (c != first) two_classes = 1;
            }
        }
        if (two_classes) return 1;
    }
    return 0;
}

static void prior_sample_dataset(float* x, float* y, Rng* rng, PriorScratch* s, int R, int F, int S, int K, int max_width) {
    // x: (R, F) features; y: (R) labels
    const int n_hidden = rng_int(rng, 1, PRIOR_MAX_HIDDEN);
    int width[PRIOR_MAX_HIDDEN + 1];
    int min_width = (F + 1 + n_hidden - 1) / n_hidden; // hidden nodes >= F + 1: room for target + features
    if (min_width < 2) min_width = 2;
    for (int l = 1; l <= n_hidden; l++) width[l] = rng_int(rng, min_width, min_width + PRIOR_EXTRA_WIDTH);
    width[0] = rng_int(rng, 1, min_width > PRIOR_MAX_ROOTS ? min_width : PRIOR_MAX_ROOTS);
    const size_t layer_stride = (size_t)max_width * R; // node (l, j) starts at nodes + l*layer_stride + j*R
    const float noise_std = expf(prior_uniform(rng, logf(0.003f), logf(0.3f)));

    // root causes: normal, or uniform with variance 1
    const int uniform_roots = rng_uniform(rng) < 0.5;
    for (int j = 0; j < width[0]; j++) {
        float* v = s->nodes + (size_t)j * R;
        if (uniform_roots) {
            for (int r = 0; r < R; r++) v[r] = prior_uniform(rng, -1.7320508f, 1.7320508f);
        } else {
            for (int r = 0; r < R; r++) v[r] = (float)rng_normal(rng);
        }
    }

    // hidden layers
    for (int l = 1; l <= n_hidden; l++) {
        const int in = width[l - 1], outw = width[l];
        const int act = rng_int(rng, 0, PRIOR_NUM_ACTS - 1);
        const float gain = prior_uniform(rng, 0.5f, 2.0f) / sqrtf((float)in);
        const float p_drop = prior_uniform(rng, 0.0f, 0.6f); // sparse DAG: some edges missing
        for (int j = 0; j < outw; j++) {
            float* w = s->weights + (size_t)j * in;
            int kept = 0;
            for (int i = 0; i < in; i++) {
                w[i] = rng_uniform(rng) < p_drop ? 0.0f : gain * (float)rng_normal(rng);
                kept += w[i] != 0.0f;
            }
            if (!kept) w[rng_int(rng, 0, in - 1)] = gain * (float)rng_normal(rng); // every node has a parent
            s->bias[j] = 0.5f * (float)rng_normal(rng);
        }
        const float* prev = s->nodes + (size_t)(l - 1) * layer_stride;
        float* cur = s->nodes + (size_t)l * layer_stride;
        for (int j = 0; j < outw; j++) {
            float* v = cur + (size_t)j * R;
            const float* w = s->weights + (size_t)j * in;
            for (int r = 0; r < R; r++) v[r] = s->bias[j];
            for (int i = 0; i < in; i++) {
                if (w[i] == 0.0f) continue;
                const float wi = w[i];
                const float* p = prev + (size_t)i * R;
                for (int r = 0; r < R; r++) v[r] += wi * p[r];
            }
            prior_apply_activation(v, R, act);
            for (int r = 0; r < R; r++) v[r] += noise_std * prior_fast_normal(rng);
        }
    }

    // node ids: l * max_width + j. Target: a random hidden node; features: F other nodes of any layer.
    int n_nodes = 0;
    for (int l = 0; l <= n_hidden; l++)
        for (int j = 0; j < width[l]; j++) s->pick[n_nodes++] = l * max_width + j;
    const int n_roots = width[0];
    {   // target first, into pick[0], from the hidden nodes pick[n_roots..]
        int j = rng_int(rng, n_roots, n_nodes - 1);
        int tmp = s->pick[0]; s->pick[0] = s->pick[j]; s->pick[j] = tmp;
    }
    for (int f = 1; f <= F; f++) { // partial Fisher-Yates over the rest
        int j = rng_int(rng, f, n_nodes - 1);
        int tmp = s->pick[f]; s->pick[f] = s->pick[j]; s->pick[j] = tmp;
    }
#define PRIOR_NODE(id) (s->nodes + (size_t)((id) / max_width) * layer_stride + (size_t)((id) % max_width) * R)

    // features: standardised over all R rows, in double for a stable variance
    for (int f = 0; f < F; f++) {
        const float* v = PRIOR_NODE(s->pick[1 + f]);
        double sum = 0.0, sumsq = 0.0;
        for (int r = 0; r < R; r++) sum += v[r];
        const double mean = sum / R;
        for (int r = 0; r < R; r++) { double d = v[r] - mean; sumsq += d * d; }
        const double std = sqrt(sumsq / R);
        // constant (or, defensively, non-finite) feature -> all zeros
        const int usable = isfinite(mean) && isfinite(std) && std > 1e-7 * (fabs(mean) + 1.0);
        const double inv = usable ? 1.0 / std : 0.0;
        for (int r = 0; r < R; r++) x[(size_t)r * F + f] = usable ? (float)((v[r] - mean) * inv) : 0.0f;
    }

    // labels: if the target node never gives 2 train classes, try another hidden node
    for (int attempt = 0; attempt < 2; attempt++) {
        const float* t = PRIOR_NODE(s->pick[0]);
        if (prior_label_dataset(y, rng, s, t, R, S, K)) return;
        // swap a not-used hidden node (index > F) into the target slot, if there is one
        int candidates = 0;
        for (int k = F + 1; k < n_nodes; k++) candidates += s->pick[k] / max_width > 0;
        if (!candidates) return;
        int choice = rng_int(rng, 0, candidates - 1);
        for (int k = F + 1; k < n_nodes; k++) {
            if (s->pick[k] / max_width == 0) continue;
            if (choice-- == 0) { s->pick[0] = s->pick[k]; break; }
        }
    }
    // still one class in the train rows: keep it (rare; the model sees such tables in real data too)
#undef PRIOR_NODE
}

// ----------------------------------------------------------------------------
// batches

// samples batch `batch_index` (a pure function of the seed, the config and batch_index)
static void prior_sample_batch_at(TableBatch* out, Prior* prior, int B, int64_t batch_index) {
    const PriorConfig* c = &prior->config;
    MOSAIC_CHECK(B >= 1 && B <= out->max_B, "batch size must be in [1, the batch's max_B]");
    MOSAIC_CHECK(c->max_rows <= out->max_R && c->max_features <= out->max_F,
                 "allocate the batch with table_batch_alloc(&batch, B, config.max_rows, config.max_features)");
    Rng rng;
    const uint64_t batch_seed = prior_hash(prior->seed, (uint64_t)batch_index);
    rng_seed(&rng, batch_seed);
    const int R = rng_int(&rng, c->min_rows, c->max_rows);
    const int F = rng_int(&rng, c->min_features, c->max_features);
    const float fraction = prior_uniform(&rng, c->min_train_fraction, c->max_train_fraction);
    int S = (int)lrintf(fraction * (float)R);
    S = S < 2 ? 2 : (S > R - 1 ? R - 1 : S);
    out->B = B;
    out->R = R;
    out->F = F;
    out->S = S;
    int one_class = 0;
    // threads only for big batches: the default batch takes ~1 ms on one core, less than
    // waking a team costs on a busy machine. Work ~ B * R * width^2.
    const double work = (double)B * R * (double)(F + 1 + PRIOR_EXTRA_WIDTH) * (double)(F + 1 + PRIOR_EXTRA_WIDTH);
    const int parallel = prior->num_threads > 1 && work > 8e6;
    (void)parallel; // unused without OpenMP
#ifdef _OPENMP
#pragma omp parallel for num_threads(prior->num_threads) schedule(static) reduction(+ : one_class) if (parallel)
#endif
    for (int b = 0; b < B; b++) {
        int thread = 0;
#ifdef _OPENMP
        thread = omp_get_thread_num();
#endif
        Rng drng;
        rng_seed(&drng, prior_hash(batch_seed, (uint64_t)b + 1));
        float* x = out->x + (size_t)b * R * F;
        float* y = out->y + (size_t)b * R;
        // multiclass: each table its own class count, uniform in 2..num_classes (no draw for 2,
        // so binary priors keep their bits)
        const int K = c->num_classes > 2 ? rng_int(&drng, 2, c->num_classes) : 2;
        prior_sample_dataset(x, y, &drng, &prior->scratch[thread], R, F, S, K, prior->max_width);
        int first = (int)y[0], two = 0;
        for (int r = 1; r < S; r++) two |= (int)y[r] != first;
        one_class += !two;
    }
    prior->datasets_sampled += B;
    prior->datasets_one_train_class += one_class;
}

// samples the next batch: R, F, S once per batch, then each of the B datasets from its own SCM
static void prior_sample_batch(TableBatch* out, Prior* prior, int B) {
    prior_sample_batch_at(out, prior, B, prior->next_batch);
    prior->next_batch++;
}
