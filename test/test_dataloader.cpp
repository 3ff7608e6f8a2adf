// Tests for dataloader/: the built-in prior, prior dump files, CSV tables.
// build: mkdir -p build && g++ -std=c++17 -O2 -Wall -fopenmp test/test_dataloader.cpp -o build/test_dataloader -lm
// run:   ./build/test_dataloader                            all checks, one line each, then "N passed, M failed"
//        ./build/test_dataloader --check-dump DUMP EXPECTED  compare a dump's batches with expected batches
//                                                            (written by test/test_h5_convert.sh)
//        ./build/test_dataloader --read-dump DUMP B          read every dataset of a dump once (error driving)
//        ./build/test_dataloader --read-csv FILE             read a CSV and split it 50/50 (error driving)
#include "../dataloader/prior.h"
#include "../dataloader/prior_dump.h"
#include "../dataloader/csv_table.h"
#include <fcntl.h>
#include <sys/wait.h>
#include <unistd.h>

static int tests_passed = 0, tests_failed = 0;

static void check(int ok, const char* fmt, ...) {
    va_list args;
    va_start(args, fmt);
    printf("%s ", ok ? "ok  " : "FAIL");
    vprintf(fmt, args);
    printf("\n");
    va_end(args);
    fflush(stdout);
    if (ok) tests_passed++;
    else tests_failed++;
}

static char tmp_dir[64];
static char tmp_paths[128][128];
static int tmp_count = 0;

// a path in the test's temporary directory, removed at the end
static const char* tmp_path(const char* name) {
    MOSAIC_CHECK(tmp_count < 128, "too many temporary files");
    snprintf(tmp_paths[tmp_count], sizeof(tmp_paths[0]), "%s/%s", tmp_dir, name);
    return tmp_paths[tmp_count++];
}

static void write_text(const char* path, const char* text) {
    FILE* f = fopenCheck(path, "wb");
    fwrite_check(text, 1, strlen(text), f, path);
    fclose(f);
}

static int batches_equal(const TableBatch* a, const TableBatch* b) {
    if (a->B != b->B || a->R != b->R || a->F != b->F || a->S != b->S) return 0;
    return memcmp(a->x, b->x, (size_t)a->B * a->R * a->F * sizeof(float)) == 0 &&
           memcmp(a->y, b->y, (size_t)a->B * a->R * sizeof(float)) == 0;
}

// ----------------------------------------------------------------------------
// error behaviour: run the failing call in a child process, expect a non-zero exit and
// exactly one stderr line "mosaic: error: ..." that contains `expect`

static void check_fails(const char* name, void (*fn)(const char*), const char* arg, const char* expect) {
    int fds[2];
    MOSAIC_CHECK(pipe(fds) == 0, "pipe");
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    MOSAIC_CHECK(pid >= 0, "fork");
    if (pid == 0) {
        close(fds[0]);
        dup2(fds[1], 2);
        int devnull = open("/dev/null", O_WRONLY);
        if (devnull >= 0) dup2(devnull, 1); // stdout is not part of the message
        fn(arg);
        _exit(0); // returned: no error raised
    }
    close(fds[1]);
    char out[2048];
    size_t n = 0;
    ssize_t got;
    while ((got = read(fds[0], out + n, sizeof(out) - 1 - n)) > 0) n += (size_t)got;
    out[n] = '\0';
    close(fds[0]);
    int status = 0;
    waitpid(pid, &status, 0);
    const int exited_nonzero = WIFEXITED(status) && WEXITSTATUS(status) != 0;
    int lines = 0;
    for (size_t i = 0; i < n; i++) lines += out[i] == '\n';
    const int one_line = lines == 1 && n > 0 && out[n - 1] == '\n' && strncmp(out, "mosaic: error: ", 15) == 0;
    const int has = strstr(out, expect) != NULL;
    if (n > 0 && out[n - 1] == '\n') out[n - 1] = '\0';
    check(exited_nonzero && one_line && has, "error: %s -> [%s]%s", name, out,
          !exited_nonzero ? " (did not exit non-zero)" : !one_line ? " (not exactly one 'mosaic: error:' line)" : !has ? " (expected text missing)" : "");
}

static void run_open_dump(const char* path) {
    PriorDump d;
    prior_dump_open(&d, path);
    prior_dump_close(&d);
}

static void run_read_dump(const char* path) { // every dataset once, batch size 1
    PriorDump d;
    prior_dump_open(&d, path);
    TableBatch b;
    table_batch_alloc(&b, 1, d.rows_needed, d.features_needed);
    for (int i = 0; i < d.num_datasets; i++) prior_dump_next_batch(&b, &d, 1);
    table_batch_free(&b);
    prior_dump_close(&d);
}

static void run_read_csv(const char* path) {
    CsvTable t;
    csv_table_read(&t, path);
    TableBatch b;
    table_batch_alloc(&b, 1, t.rows, t.features);
    csv_table_stratified_split(&b, &t, 0.5f, 0);
    table_batch_free(&b);
    csv_table_free(&t);
}

static void run_prior_config(const char* which) {
    PriorConfig c = prior_config_default();
    if (!strcmp(which, "min_rows")) c.min_rows = 2;
    if (!strcmp(which, "rows_order")) c.max_rows = c.min_rows - 1;
    if (!strcmp(which, "classes")) c.num_classes = 1;
    if (!strcmp(which, "fraction")) c.max_train_fraction = 1.0f;
    Prior p;
    prior_init(&p, c, 0);
}

// a small valid dump: 3 datasets of up to 6 rows x 2 features, 2 classes
static void write_small_dump(const char* path, float bad_x, float bad_y, int bad_sep) {
    const int N = 3, MR = 6, MF = 2;
    int32_t nf[3] = {1, 2, 2}, nd[3] = {6, 4, 5}, sep[3] = {3, 2, 4};
    float x[N * MR * MF], y[N * MR];
    for (int i = 0; i < N * MR * MF; i++) x[i] = 0.25f * (float)(i % 7);
    for (int i = 0; i < N * MR; i++) y[i] = (float)(i % 2);
    x[1 * MR * MF + 2 * MF + 1] = bad_x; // dataset 1, row 2, feature 1
    y[2 * MR + 3] = bad_y;               // dataset 2, row 3
    sep[2] = bad_sep;
    prior_dump_write(path, nf, nd, sep, x, y, N, MR, MF, 2);
}

static void copy_prefix(const char* dst, const char* src, long bytes) {
    FILE* f = fopenCheck(src, "rb");
    char* buf = (char*)mallocCheck((size_t)bytes);
    fread_check(buf, 1, (size_t)bytes, f, src);
    fclose(f);
    f = fopenCheck(dst, "wb");
    fwrite_check(buf, 1, (size_t)bytes, f, dst);
    fclose(f);
    free(buf);
}

static void test_errors(void) {
    const char* good = tmp_path("good.bin");
    write_small_dump(good, 1.0f, 1.0f, 4);
    check_fails("missing dump", run_open_dump, tmp_path("missing.bin"), "missing.bin");
    check_fails("dump is a directory", run_open_dump, tmp_dir, "not a regular file");
    const char* magic = tmp_path("magic.bin");
    write_text(magic, "\x89HDF\r\n\x1a\n then some bytes to make it longer than nothing");
    check_fails("dump shorter than a header", run_open_dump, magic, "too short");
    {   // wrong magic, version: patch the good file's header
        FILE* f = fopenCheck(good, "rb");
        fseek(f, 0, SEEK_END);
        long size = ftell(f);
        fclose(f);
        copy_prefix(magic, good, size);
        f = fopenCheck(magic, "r+b");
        fwrite_check("\x89HDF", 1, 4, f, magic);
        fclose(f);
        check_fails("wrong magic (HDF5 file)", run_open_dump, magic, "convert it with scripts/convert_nanotabpfn_h5.py");
        const char* version = tmp_path("version.bin");
        copy_prefix(version, good, size);
        f = fopenCheck(version, "r+b");
        int32_t v = 7;
        fseek(f, 4, SEEK_SET);
        fwrite_check(&v, 4, 1, f, version);
        fclose(f);
        check_fails("wrong version", run_open_dump, version, "version 7");
        const char* truncated = tmp_path("truncated.bin");
        copy_prefix(truncated, good, size - 4);
        char expect[128];
        snprintf(expect, sizeof(expect), "implies %ld bytes, the file has %ld", size, size - 4);
        check_fails("truncated dump", run_open_dump, truncated, expect);
    }
    const char* nan_x = tmp_path("nan_x.bin");
    write_small_dump(nan_x, NAN, 1.0f, 4);
    check_fails("NaN in dump x", run_read_dump, nan_x, "NaN in prior dump");
    check_fails("NaN in dump x names the dataset", run_read_dump, nan_x, "dataset 1, row 2, feature 1");
    const char* inf_x = tmp_path("inf_x.bin");
    write_small_dump(inf_x, -INFINITY, 1.0f, 4);
    check_fails("Inf in dump x", run_read_dump, inf_x, "Inf in prior dump");
    const char* bad_y = tmp_path("bad_y.bin");
    write_small_dump(bad_y, 1.0f, 0.5f, 4);
    check_fails("non-integer label in dump", run_read_dump, bad_y, "bad label 0.5");
    write_small_dump(bad_y, 1.0f, 2.0f, 4);
    check_fails("label >= max_classes in dump", run_read_dump, bad_y, "dataset 2, row 3");
    write_small_dump(bad_y, 1.0f, -1.0f, 4);
    check_fails("negative label in dump", run_read_dump, bad_y, "bad label -1");
    const char* bad_sep = tmp_path("bad_sep.bin");
    write_small_dump(bad_sep, 1.0f, 1.0f, 5);
    check_fails("single_eval_pos >= num_datapoints", run_open_dump, bad_sep, "dataset 2 has single_eval_pos=5");

    struct { const char* name; const char* text; const char* expect; } csv[] = {
        {"csv NaN spelled nan", "a,b,y\n1,2,0\n3,nan,1\n", "'%s' line 3, column 2 ('b'): 'nan' is not a missing-cell spelling"},
        {"csv Inf", "1,2,0\n3,4,1\n-inf,4,1\n", "'%s' line 3, column 1: Inf '-inf'"},
        {"csv float32 overflow", "a,b,y\n1,2,0\n3,1e39,1\n", "'%s' line 3, column 2 ('b'): the value '1e39' is not a finite float32"},
        {"csv ragged row", "a,b,y\n1,2,0\n3,4\n", "'%s' line 3, column 3: the row has 2 fields where line 1 has 3"},
        {"csv extra field", "a,b,y\n1,2,0\n3,4,1,5\n", "'%s' line 3, column 4: the row has 4 fields where line 1 has 3"},
        {"csv one class", "1,2,1\n3,4,1\n5,6,1\n7,8,1\n", "'%s' column 3: every label is '1' (lines 1-4)"},
        {"csv too few rows", "x,y\n1,0\n2,1\n3,1\n", "has 3 data rows (lines 2-4); need at least 4"},
        {"csv empty file", "", "'%s' is empty"},
        {"csv blank lines only", "\n  \r\n\n", "'%s' is empty"},
        {"csv header only", "a,b,label\n\n", "'%s' has a header (line 1) but no data rows"},
        {"csv one column", "1\n2\n3\n4\n", "'%s' line 1, column 1: one column"},
        {"csv binary", "ab\x01\x02,c\n", "'%s' is not a CSV text file: byte 0x01 at line 1, character 3"},
        {"csv unclosed quote", "a,b,y\n1,2,0\n3,\"4,1\n5,6,1\n", "'%s' line 3, column 2: a quoted field is never closed"},
        {"csv quote inside a field", "a,b,y\n1,2,0\n3,4\"x,1\n", "'%s' line 3, column 2: a quote inside an unquoted field"},
        {"csv text after a closing quote", "a,b,y\n1,2,0\n3,\"4\"x,1\n", "'%s' line 3, column 2: text after the closing quote"},
        {"csv missing label", "a,b,y\n1,2,0\n3,4,NA\n5,6,1\n7,8,1\n", "'%s' line 3, column 3 ('y'): the label is missing ('NA')"},
        {"csv empty header name", "a,,y\n1,2,0\n", "'%s' line 1, column 2: the header names no column"},
        {"csv class with one row", "1,0\n2,0\n3,1\n4,0\n", "class 1 has only 1 row"},
    };
    for (size_t i = 0; i < sizeof(csv) / sizeof(csv[0]); i++) {
        char name[32];
        snprintf(name, sizeof(name), "bad%zu.csv", i);
        const char* path = tmp_path(name);
        write_text(path, csv[i].text);
        char expect[256];
        snprintf(expect, sizeof(expect), csv[i].expect, path);
        check_fails(csv[i].name, run_read_csv, path, expect);
    }
    check_fails("missing csv", run_read_csv, tmp_path("missing.csv"), "missing.csv");
    check_fails("prior config min_rows < 3", run_prior_config, "min_rows", "min_rows=2");
    check_fails("prior config min_rows > max_rows", run_prior_config, "rows_order", "max_rows=49 is below min_rows=50");
    check_fails("prior config num_classes < 2", run_prior_config, "classes", "num_classes=1");
    check_fails("prior config train fraction 1", run_prior_config, "fraction", "train fractions");
}

// ----------------------------------------------------------------------------
// the prior

static void test_prior_determinism(void) {
    const PriorConfig c = prior_config_default();
    const int B = 8;
    Prior p1, p2, p3;
    prior_init(&p1, c, 1234);
    prior_init(&p2, c, 1234);
    prior_init(&p3, c, 1235);
    TableBatch a, b, keep;
    table_batch_alloc(&a, B, c.max_rows, c.max_features);
    table_batch_alloc(&b, B, c.max_rows, c.max_features);
    table_batch_alloc(&keep, B, c.max_rows, c.max_features);
    int same = 1;
    for (int i = 0; i < 3; i++) {
        prior_sample_batch(&a, &p1, B);
        prior_sample_batch(&b, &p2, B);
        same &= batches_equal(&a, &b);
        if (i == 2) {
            keep.B = a.B; keep.R = a.R; keep.F = a.F; keep.S = a.S;
            memcpy(keep.x, a.x, (size_t)a.B * a.R * a.F * sizeof(float));
            memcpy(keep.y, a.y, (size_t)a.B * a.R * sizeof(float));
        }
    }
    check(same, "prior: same seed gives identical bits for 3 batches");
    int differ = 1;
    prior_skip_to(&p1, 0);
    for (int i = 0; i < 3; i++) {
        prior_sample_batch(&a, &p1, B);
        prior_sample_batch(&b, &p3, B);
        differ &= !batches_equal(&a, &b);
    }
    check(differ, "prior: a different seed gives different batches");
    Prior p4;
    prior_init(&p4, c, 1234);
    prior_skip_to(&p4, 2);
    prior_sample_batch(&a, &p4, B);
    check(batches_equal(&a, &keep), "prior: prior_skip_to(2) reproduces batch 2");
    prior_sample_batch_at(&a, &p4, B, 2);
    check(batches_equal(&a, &keep), "prior: prior_sample_batch_at(2) reproduces batch 2");
#ifdef _OPENMP
    {   // the bits must not depend on the number of threads: a config big enough to use them
        PriorConfig big = c;
        big.min_rows = 400; big.max_rows = 500; big.min_features = 30; big.max_features = 40;
        const int threads = omp_get_max_threads();
        Prior pn, p1t;
        prior_init(&pn, big, 77);
        omp_set_num_threads(1);
        prior_init(&p1t, big, 77);
        omp_set_num_threads(threads);
        TableBatch bn, b1;
        table_batch_alloc(&bn, 16, big.max_rows, big.max_features);
        table_batch_alloc(&b1, 16, big.max_rows, big.max_features);
        int same_bits = 1;
        for (int i = 0; i < 2; i++) {
            prior_sample_batch(&bn, &pn, 16);
            prior_sample_batch(&b1, &p1t, 16);
            same_bits &= batches_equal(&bn, &b1);
        }
        check(same_bits && p1t.num_threads == 1, "prior: %d threads and 1 thread give the same bits (B=16, R=%d, F=%d)", pn.num_threads, bn.R, bn.F);
        prior_free(&pn);
        prior_free(&p1t);
        table_batch_free(&bn);
        table_batch_free(&b1);
    }
#endif
    prior_free(&p1); prior_free(&p2); prior_free(&p3); prior_free(&p4);
    table_batch_free(&a); table_batch_free(&b); table_batch_free(&keep);
}

// validity over many batches; also 1-nearest-neighbour accuracy vs the majority class on the
// test rows, as a cheap signal that the labels depend on the features
static void test_prior_validity(const char* name, PriorConfig c, int batches, int B) {
    Prior p;
    prior_init(&p, c, 7);
    TableBatch t;
    table_batch_alloc(&t, B, c.max_rows, c.max_features);
    int sizes_ok = 1, finite = 1, labels_ok = 1, standardised = 1, split_ok = 1;
    int64_t one_class = 0, datasets = 0;
    double knn_correct = 0, majority_correct = 0, test_rows = 0;
    int* counts = (int*)callocCheck((size_t)c.num_classes * sizeof(int));
    int* seen_classes = (int*)callocCheck((size_t)c.num_classes * sizeof(int));
    for (int it = 0; it < batches; it++) {
        prior_sample_batch(&t, &p, B);
        const int R = t.R, F = t.F, S = t.S;
        sizes_ok &= t.B == B && R >= c.min_rows && R <= c.max_rows && F >= c.min_features && F <= c.max_features;
        split_ok &= S >= 2 && S <= R - 1;
        const int s_lo = (int)floorf(c.min_train_fraction * R) - 1, s_hi = (int)ceilf(c.max_train_fraction * R) + 1;
        split_ok &= (S >= s_lo || S == 2) && (S <= s_hi || S == R - 1);
        for (int b = 0; b < B; b++) {
            const float* x = t.x + (size_t)b * R * F;
            const float* y = t.y + (size_t)b * R;
            for (int i = 0; i < R * F; i++) finite &= isfinite(x[i]) != 0;
            for (int r = 0; r < R; r++) {
                labels_ok &= isfinite(y[r]) && y[r] >= 0.0f && y[r] < (float)c.num_classes && y[r] == floorf(y[r]);
                if (labels_ok) seen_classes[(int)y[r]] = 1;
            }
            for (int f = 0; f < F; f++) {
                double s = 0, ss = 0;
                for (int r = 0; r < R; r++) s += x[r * F + f];
                for (int r = 0; r < R; r++) ss += (x[r * F + f] - s / R) * (x[r * F + f] - s / R);
                const double mean = s / R, sd = sqrt(ss / R);
                standardised &= fabs(mean) < 1e-4 && (fabs(sd - 1.0) < 1e-3 || sd == 0.0);
            }
            if (!labels_ok) continue;
            memset(counts, 0, (size_t)c.num_classes * sizeof(int));
            for (int r = 0; r < S; r++) counts[(int)y[r]]++;
            int distinct = 0, majority = 0;
            for (int k = 0; k < c.num_classes; k++) {
                distinct += counts[k] > 0;
                if (counts[k] > counts[majority]) majority = k;
            }
            one_class += distinct < 2;
            datasets++;
            for (int r = S; r < R; r++) {
                int best = 0;
                float best_d = INFINITY;
                for (int q = 0; q < S; q++) {
                    float d = 0;
                    for (int f = 0; f < F; f++) d += (x[r * F + f] - x[q * F + f]) * (x[r * F + f] - x[q * F + f]);
                    if (d < best_d) { best_d = d; best = q; }
                }
                knn_correct += y[best] == y[r];
                majority_correct += (int)y[r] == majority;
                test_rows++;
            }
        }
    }
    int all_classes = 1;
    for (int k = 0; k < c.num_classes; k++) all_classes &= seen_classes[k];
    check(sizes_ok, "prior %s: R in [%d,%d], F in [%d,%d] over %d batches", name, c.min_rows, c.max_rows, c.min_features, c.max_features, batches);
    check(split_ok, "prior %s: S in [2, R-1] and near the train fraction [%.2f, %.2f]", name, (double)c.min_train_fraction, (double)c.max_train_fraction);
    check(finite, "prior %s: all features finite", name);
    check(labels_ok && all_classes, "prior %s: labels are integers in [0, %d), every class occurs", name, c.num_classes);
    check(standardised, "prior %s: every feature has mean 0 and std 1 (or is constant 0)", name);
    const double frac = (double)one_class / (double)datasets;
    check(frac < 0.02, "prior %s: %.3f%% of %lld datasets have one class in the train rows (want < 2%%; counter says %lld)", name, 100.0 * frac,
          (long long)datasets, (long long)p.datasets_one_train_class);
    check(knn_correct > majority_correct, "prior %s: 1-NN test accuracy %.3f vs majority class %.3f (labels depend on the features)", name,
          knn_correct / test_rows, majority_correct / test_rows);
    free(counts);
    free(seen_classes);
    table_batch_free(&t);
    prior_free(&p);
}

static void time_prior(void) {
    PriorConfig c = prior_config_default();
    c.min_rows = c.max_rows = 150;
    c.min_features = c.max_features = 5;
    const int B = 32, iters = 200;
    Prior p;
    prior_init(&p, c, 3);
    TableBatch t;
    table_batch_alloc(&t, B, c.max_rows, c.max_features);
    prior_sample_batch(&t, &p, B); // warm up (thread pool)
    double t0 = wall_seconds();
    for (int i = 0; i < iters; i++) prior_sample_batch(&t, &p, B);
    double ms = (wall_seconds() - t0) * 1e3 / iters;
    double ms1 = ms;
#ifdef _OPENMP
    {
        const int threads = omp_get_max_threads();
        omp_set_num_threads(1);
        Prior p1;
        prior_init(&p1, c, 3);
        omp_set_num_threads(threads);
        t0 = wall_seconds();
        for (int i = 0; i < iters; i++) prior_sample_batch(&t, &p1, B);
        ms1 = (wall_seconds() - t0) * 1e3 / iters;
        prior_free(&p1);
    }
#endif
    // a loose bound, so a busy CI machine does not fail it; the target is well under 5 ms
    check(ms < 50.0, "prior timing: B=32 R=150 F=5 takes %.3f ms per batch with %d threads, %.3f ms with 1 (bound 50 ms)", ms, p.num_threads, ms1);
    table_batch_free(&t);
    prior_free(&p);
}

// ----------------------------------------------------------------------------
// prior dumps

// expected batch of B datasets starting at `first`, computed straight from the arrays
static void expected_dump_batch(TableBatch* e, const int32_t* nf, const int32_t* nd, const int32_t* sep, const float* X, const float* Y,
                                int N, int MR, int MF, int first, int B) {
    int R = 0, F = 0;
    for (int b = 0; b < B; b++) {
        int i = (first + b) % N;
        R = nd[i] > R ? nd[i] : R;
        F = nf[i] > F ? nf[i] : F;
    }
    e->B = B; e->R = R; e->F = F;
    e->S = sep[first] < R ? sep[first] : R - 1;
    for (int b = 0; b < B; b++) {
        int i = (first + b) % N;
        for (int r = 0; r < R; r++) {
            for (int f = 0; f < F; f++) e->x[((size_t)b * R + r) * F + f] = X[((size_t)i * MR + r) * MF + f];
            e->y[(size_t)b * R + r] = Y[(size_t)i * MR + r];
        }
    }
}

static void test_dump_roundtrip(void) {
    const int N = 7, MR = 12, MF = 4, MC = 3;
    int32_t nf[N], nd[N], sep[N];
    float X[N * MR * MF], Y[N * MR];
    Rng rng;
    rng_seed(&rng, 99);
    for (int i = 0; i < N; i++) {
        nf[i] = 1 + i % MF;
        nd[i] = 5 + (i * 3) % 8;
        sep[i] = 2 + i % (nd[i] - 2);
    }
    for (int i = 0; i < N * MR * MF; i++) X[i] = (float)rng_normal(&rng); // padding too: copied as stored
    for (int i = 0; i < N * MR; i++) Y[i] = (float)rng_int(&rng, 0, MC - 1);
    const char* path = tmp_path("roundtrip.bin");
    prior_dump_write(path, nf, nd, sep, X, Y, N, MR, MF, MC);
    PriorDump d;
    prior_dump_open(&d, path);
    int rn = 0, fn = 0;
    for (int i = 0; i < N; i++) { rn = nd[i] > rn ? nd[i] : rn; fn = nf[i] > fn ? nf[i] : fn; }
    check(d.num_datasets == N && d.max_rows == MR && d.max_features == MF && d.max_classes == MC && d.rows_needed == rn &&
              d.features_needed == fn,
          "dump: header and sizes read back (N=%d, rows_needed=%d, features_needed=%d)", d.num_datasets, d.rows_needed, d.features_needed);
    TableBatch got, want;
    table_batch_alloc(&got, 9, rn, fn);
    table_batch_alloc(&want, 9, MR, MF);
    const int B = 3;
    const int firsts[4] = {0, 3, 6, 2}; // the third batch wraps: datasets 6, 0, 1
    for (int k = 0; k < 4; k++) {
        prior_dump_next_batch(&got, &d, B);
        expected_dump_batch(&want, nf, nd, sep, X, Y, N, MR, MF, firsts[k], B);
        int mixed = 0;
        for (int b = 1; b < B; b++) mixed |= nd[(firsts[k] + b) % N] != nd[firsts[k]];
        check(batches_equal(&got, &want), "dump: batch %d (datasets %d..%d%s, R=%d F=%d S=%d%s) equals the source", k, firsts[k],
              (firsts[k] + B - 1) % N, firsts[k] + B > N ? ", wraps" : "", got.R, got.F, got.S, mixed ? ", mixed num_datapoints" : "");
    }
    prior_dump_skip_to(&d, 2, B);
    prior_dump_next_batch(&got, &d, B);
    expected_dump_batch(&want, nf, nd, sep, X, Y, N, MR, MF, 6, B);
    check(batches_equal(&got, &want), "dump: prior_dump_skip_to(batch 2) reproduces batch 2");
    prior_dump_skip_to(&d, 0, 9);
    prior_dump_next_batch(&got, &d, 9);
    expected_dump_batch(&want, nf, nd, sep, X, Y, N, MR, MF, 0, 9);
    check(batches_equal(&got, &want) && d.next_dataset == 2, "dump: a batch larger than the file (B=9, N=7) wraps");
    prior_dump_close(&d);
    table_batch_free(&got);
    table_batch_free(&want);
}

static void test_dump_writer(void) {
    const PriorConfig c = prior_config_default();
    const int B = 4, N = 10;
    Prior p;
    prior_init(&p, c, 5);
    TableBatch src[3], got;
    const char* path = tmp_path("writer.bin");
    PriorDumpWriter w;
    prior_dump_writer_open(&w, path, N, c.max_rows, c.max_features, c.num_classes);
    int appended[3];
    for (int i = 0; i < 3; i++) {
        table_batch_alloc(&src[i], B, c.max_rows, c.max_features);
        prior_sample_batch(&src[i], &p, B);
        appended[i] = prior_dump_writer_append(&w, &src[i]);
    }
    prior_dump_writer_close(&w);
    check(appended[0] == 4 && appended[1] == 4 && appended[2] == 2, "dump writer: appends stop at N (%d, %d, %d)", appended[0], appended[1], appended[2]);
    PriorDump d;
    prior_dump_open(&d, path);
    table_batch_alloc(&got, B, d.rows_needed, d.features_needed);
    prior_dump_next_batch(&got, &d, B);
    int ok = batches_equal(&got, &src[0]);
    prior_dump_next_batch(&got, &d, B);
    ok &= batches_equal(&got, &src[1]);
    check(ok, "dump writer: prior batches written with the streaming writer read back bit-exact");
    prior_dump_close(&d);
    for (int i = 0; i < 3; i++) table_batch_free(&src[i]);
    table_batch_free(&got);
    prior_free(&p);
}

// ----------------------------------------------------------------------------
// CSV tables

static void test_csv_parse(void) {
    const char* path = tmp_path("table.csv");
    write_text(path, "\"f1\", f2 ,label\r\n0.5,-1.25,0\r\n3e2,7,1\r\n\r\n-0.1, 2.5 ,1\r\n1e-3,0,0\r\n0.25,4,2\n0.75,8,2.0\n\n");
    CsvTable t;
    csv_table_read(&t, path);
    const char* xs[12] = {"0.5", "-1.25", "3e2", "7", "-0.1", "2.5", "1e-3", "0", "0.25", "4", "0.75", "8"};
    const int ys[6] = {0, 1, 1, 0, 2, 2};
    int ok = t.rows == 6 && t.features == 2 && t.num_classes == 3;
    for (int i = 0; ok && i < 12; i++) ok &= t.x[i] == (float)strtod(xs[i], NULL);
    for (int i = 0; ok && i < 6; i++) ok &= t.y[i] == ys[i];
    check(ok, "csv: header, CRLF, blank lines, spaces and quotes: %d rows x %d features, %d classes, values exact", t.rows, t.features, t.num_classes);
    csv_table_free(&t);
    const char* path2 = tmp_path("noheader.csv");
    write_text(path2, "1,2,0\n3,4,1\n5,6,0\n7,8,3");
    csv_table_read(&t, path2);
    ok = t.rows == 4 && t.features == 2 && t.num_classes == 3 && t.x[0] == 1.0f && t.x[7] == 8.0f && t.y[3] == 2 &&
         !strcmp(t.class_names[2], "3");
    check(ok, "csv: no header, no final newline, labels {0,1,3} -> 3 classes, '3' is class 2");
    csv_table_free(&t);
}

// predict's tables: RFC 4180 quotes, string and numeric labels, categorical columns, missing cells
static void test_csv_semantics(void) {
    const char* train_path = tmp_path("sem_train.csv");
    const char* test_path = tmp_path("sem_test.csv");
    // colour: categorical {"blue", "green, dark", "red \"x\""}, with a quoted line break in one name;
    // size: numeric with 2 missing cells (mean of 1, 2, 6 = 3); labels 10 > 9 numerically
    write_text(train_path, "\xEF\xBB\xBFsize,colour,\"the\nlabel\"\r\n"
                           "1,blue,9\n"
                           "NA,\"green, dark\",10\n"
                           "2,\"red \"\"x\"\"\",9.0\n"
                           "?,blue,10\n"
                           "6,,9\n");
    write_text(test_path, "size,colour\n5,\"green, dark\"\n,purple\n7,\"red \"\"x\"\"\"\n");
    CsvText tr, te;
    csv_text_read(&tr, train_path, CSV_HEADER_REQUIRED);
    CsvSchema s;
    csv_schema_build(&s, &tr, NULL);
    CsvTable a, b;
    csv_table_encode(&a, &tr, &s, CSV_MISSING_MEAN, 1, train_path);
    int ok = tr.rows == 5 && tr.columns == 3 && !strcmp(tr.header[2], "the\nlabel") && s.num_classes == 2 &&
             !strcmp(s.class_names[0], "9") && !strcmp(s.class_names[1], "10") && !s.categorical[0] && s.categorical[1] &&
             s.num_categories[1] == 3 && !strcmp(s.categories[1][1], "green, dark") && !strcmp(s.categories[1][2], "red \"x\"") &&
             tr.line[4] == 7;
    const float want_x[10] = {1, 0, 3, 1, 2, 2, 3, 0, 6, 0}; // colour missing -> "blue" (2 of 4), code 0
    const int want_y[5] = {0, 1, 0, 1, 0};
    for (int i = 0; ok && i < 10; i++) ok &= a.x[i] == want_x[i];
    for (int i = 0; ok && i < 5; i++) ok &= a.y[i] == want_y[i];
    ok &= a.missing == 3 && a.unseen == 0 && a.has_labels;
    check(ok, "csv: BOM, quoted commas/quotes/line breaks, numeric labels sorted as numbers (9 < 10, 9.0 = 9), "
              "categories sorted and coded, missing -> mean 3 / most frequent category");
    csv_text_read(&te, test_path, CSV_HEADER_REQUIRED);
    csv_table_encode(&b, &te, &s, CSV_MISSING_MEAN, 0, train_path);
    const float want_t[6] = {5, 1, 3, 0, 7, 2}; // unseen "purple" -> missing -> code 0
    ok = b.rows == 3 && !b.has_labels && b.missing == 2 && b.unseen == 1;
    for (int i = 0; ok && i < 6; i++) ok &= b.x[i] == want_t[i];
    check(ok, "csv: test table without the label column; unseen category counts as missing");
    csv_table_free(&a);
    csv_table_free(&b);
    csv_text_free(&te);
    csv_schema_free(&s);
    csv_text_free(&tr);

    // string labels sorted as bytes, --label picks a middle column
    write_text(train_path, "y,a,b\nno,1,2\nyes,3,4\nYes,5,6\nno,7,8\n");
    csv_text_read(&tr, train_path, CSV_HEADER_REQUIRED);
    csv_schema_build(&s, &tr, "y");
    csv_table_encode(&a, &tr, &s, CSV_MISSING_ERROR, 1, train_path);
    ok = s.num_classes == 3 && !strcmp(s.class_names[0], "Yes") && !strcmp(s.class_names[1], "no") &&
         !strcmp(s.class_names[2], "yes") && a.features == 2 && a.x[0] == 1 && a.x[1] == 2 && a.y[0] == 1 && a.y[2] == 0;
    check(ok, "csv: --label y (first column), string labels sorted as byte strings {Yes, no, yes}");
    csv_table_free(&a);
    csv_schema_free(&s);
    csv_text_free(&tr);
}

// predict's pair of tables: the train file (arg) fixes the schema, then pair_test is encoded
static const char* pair_test;
static const char* pair_label;
static CsvMissing pair_missing;
static void run_read_pair(const char* train_path) {
    CsvText tr, te;
    csv_text_read(&tr, train_path, CSV_HEADER_REQUIRED);
    CsvSchema s;
    csv_schema_build(&s, &tr, pair_label);
    CsvTable a, b;
    csv_table_encode(&a, &tr, &s, pair_missing, 1, train_path);
    csv_text_read(&te, pair_test, CSV_HEADER_REQUIRED);
    csv_table_encode(&b, &te, &s, pair_missing, 0, train_path);
}

static void test_csv_pair_errors(void) {
    struct { const char* name; const char* train; const char* test; const char* label; int error; const char* expect; } c[] = {
        {"label column not found", "a,b,y\n1,2,0\n3,4,1\n", "a,b\n1,2\n", "z", 0, "'TRAIN' line 1: no column is named 'z'"},
        {"label name twice", "y,b,y\n1,2,0\n3,4,1\n", "y,b\n1,2\n", "y", 0, "'TRAIN' line 1, columns 1 and 3 are both named 'y'"},
        {"test header differs", "a,b,y\n1,2,0\n3,4,1\n", "a,c\n1,2\n", NULL, 0, "'TEST' line 1, column 2: named 'c' where the train table 'TRAIN' has 'b'"},
        {"test has other columns", "a,b,y\n1,2,0\n3,4,1\n", "a\n1\n", NULL, 0, "'TEST' line 1: 1 columns, but the train table 'TRAIN' has 3"},
        {"test has too many columns", "a,b,y\n1,2,0\n3,4,1\n", "a,b,y,z\n1,2,0,0\n", NULL, 0, "'TEST' line 1: 4 columns, but the train table 'TRAIN' has 3"},
        {"test label not a train class", "a,b,y\n1,2,0\n3,4,1\n", "a,b,y\n1,2,1\n3,4,2\n", NULL, 0, "'TEST' line 3, column 3 ('y'): label '2' is not a class of the train table 'TRAIN'"},
        {"test text in a numeric column", "a,b,y\n1,2,0\n3,4,1\n", "a,b\n1,x\n", NULL, 0, "'TEST' line 2, column 2 ('b'): 'x' is not a number, and the column is numeric"},
        {"missing refused", "a,b,y\n1,2,0\n3,NaN,1\n", "a,b\n1,2\n", NULL, 1, "'TRAIN' line 3, column 2 ('b'): missing cell ('NaN'; --missing error)"},
        {"unseen category refused", "a,b,y\n1,u,0\n3,v,1\n", "a,b\n1,w\n", NULL, 1, "'TEST' line 2, column 2 ('b'): category 'w' is not in the train table"},
        {"test header only", "a,b,y\n1,2,0\n3,4,1\n", "a,b\n", NULL, 0, "'TEST' has a header (line 1) but no data rows"},
        {"some test labels missing", "a,b,y\n1,2,0\n3,4,1\n", "a,b,y\n1,2,0\n1,2,\n", NULL, 0, "'TEST' line 3, column 3 ('y'): the label is missing"},
        {"one train class", "a,b,y\nx,2,u\ny,4,u\n", "a,b\n1,2\n", NULL, 0, "'TRAIN' column 3 ('y'): every label is 'u' (lines 2-3)"},
    };
    for (size_t i = 0; i < sizeof(c) / sizeof(c[0]); i++) {
        char name[48];
        snprintf(name, sizeof(name), "pair%zu_train.csv", i);
        const char* train = tmp_path(name);
        snprintf(name, sizeof(name), "pair%zu_test.csv", i);
        const char* test = tmp_path(name);
        write_text(train, c[i].train);
        write_text(test, c[i].test);
        pair_test = test;
        pair_label = c[i].label;
        pair_missing = c[i].error ? CSV_MISSING_ERROR : CSV_MISSING_MEAN;
        char expect[512]; // TRAIN and TEST stand for the two paths
        size_t n = 0;
        for (const char* e = c[i].expect; *e && n < sizeof(expect) - 200;) {
            const char* path = !strncmp(e, "TRAIN", 5) ? train : !strncmp(e, "TEST", 4) ? test : NULL;
            if (path) { n += (size_t)snprintf(expect + n, sizeof(expect) - n, "%s", path); e += path == train ? 5 : 4; }
            else expect[n++] = *e++;
        }
        expect[n] = '\0';
        char what[96];
        snprintf(what, sizeof(what), "predict tables: %s", c[i].name);
        check_fails(what, run_read_pair, train, expect);
    }
}

// checks a split of `t` against the expected train counts per class
static void check_split(const char* name, const CsvTable* t, float test_fraction, uint64_t seed, const int* want_train) {
    TableBatch b;
    table_batch_alloc(&b, 1, t->rows, t->features);
    csv_table_stratified_split(&b, t, test_fraction, seed);
    const int N = t->rows, K = t->num_classes, F = t->features;
    int ok = b.B == 1 && b.R == N && b.F == F;
    int* used = (int*)callocCheck((size_t)N * sizeof(int));
    int train[16] = {0}, test[16] = {0};
    int order_ok = 1, prev_train = -1, prev_test = -1;
    for (int r = 0; r < N; r++) {
        const int id = (int)b.x[(size_t)r * F]; // feature 0 holds the source row id
        if (id < 0 || id >= N || used[id]) { ok = 0; break; }
        used[id] = 1;
        ok &= b.y[r] == (float)t->y[id] && memcmp(b.x + (size_t)r * F, t->x + (size_t)id * F, (size_t)F * sizeof(float)) == 0;
        if (r < b.S) { train[t->y[id]]++; order_ok &= id > prev_train; prev_train = id; }
        else { test[t->y[id]]++; order_ok &= id > prev_test; prev_test = id; }
    }
    int counts_ok = 1, sum = 0;
    for (int k = 0; k < K; k++) {
        counts_ok &= train[k] == want_train[k] && train[k] >= 1 && test[k] >= 1;
        sum += want_train[k];
    }
    check(ok && counts_ok && order_ok && b.S == sum,
          "split %s: S=%d, train per class {%d,%d,%d}, every row once, rows carried intact, train then test in file order", name, b.S,
          train[0], train[1], K > 2 ? train[2] : 0);
    free(used);
    table_batch_free(&b);
}

static void test_csv_split(void) {
    // 30 rows: class 0 x12, class 1 x9, class 2 x9, interleaved; feature 0 = row id
    CsvTable t;
    memset(&t, 0, sizeof(t));
    t.rows = 30; t.features = 2; t.num_classes = 3;
    t.x = (float*)mallocCheck(30 * 2 * sizeof(float));
    t.y = (int*)mallocCheck(30 * sizeof(int));
    t.path = strdup("split-test");
    const int labels[30] = {0, 1, 2, 0, 0, 1, 2, 0, 1, 2, 0, 0, 1, 2, 0, 2, 1, 0, 0, 2, 1, 2, 0, 1, 0, 2, 1, 1, 2, 0};
    for (int r = 0; r < 30; r++) { t.x[2 * r] = (float)r; t.x[2 * r + 1] = 0.5f * r - 3.0f; t.y[r] = labels[r]; }
    const int half[3] = {6, 5, 4}; // quotas 6, 4.5, 4.5 -> the tie goes to the lower class
    check_split("test 0.5", &t, 0.5f, 11, half);
    const int thirty[3] = {9, 6, 6}; // 9 test rows, 21 train: quotas 8.4, 6.3, 6.3
    check_split("test 0.3", &t, 0.3f, 11, thirty);
    {   // same seed -> same split, another seed -> another
        TableBatch a, b;
        table_batch_alloc(&a, 1, 30, 2);
        table_batch_alloc(&b, 1, 30, 2);
        csv_table_stratified_split(&a, &t, 0.5f, 11);
        csv_table_stratified_split(&b, &t, 0.5f, 11);
        int same = batches_equal(&a, &b);
        csv_table_stratified_split(&b, &t, 0.5f, 12);
        check(same && !batches_equal(&a, &b), "split: same seed same split, other seed other split");
        table_batch_free(&a);
        table_batch_free(&b);
    }
    // tiny classes: counts {2, 20}, 90% test: each class still gets 1 train and 1 test row
    t.rows = 22; t.num_classes = 2;
    for (int r = 0; r < 22; r++) { t.x[2 * r] = (float)r; t.y[r] = r == 5 || r == 17 ? 0 : 1; }
    const int tiny[2] = {1, 1};
    check_split("test 0.9, class of 2", &t, 0.9f, 3, tiny);
    csv_table_free(&t);
}

// ----------------------------------------------------------------------------
// --check-dump DUMP EXPECTED: EXPECTED holds
//   int32 header[256]: [0] 0x4D535845, [1] 1, [2] num_batches, [3] B, [4] N, [5] max_rows, [6] max_features, [7] max_classes
//   then per batch: int32 {R, F, S, 0}, float32 x[B][R][F], float32 y[B][R]

static int check_dump(const char* dump_path, const char* expected_path) {
    FILE* f = fopenCheck(expected_path, "rb");
    int32_t header[256];
    fread_check(header, sizeof(int32_t), 256, f, expected_path);
    if (header[0] != 0x4D535845 || header[1] != 1) mosaic_fail("'%s' is not an expected-batches file", expected_path);
    const int num_batches = header[2], B = header[3];
    PriorDump d;
    prior_dump_open(&d, dump_path);
    check(d.num_datasets == header[4] && d.max_rows == header[5] && d.max_features == header[6] && d.max_classes == header[7],
          "check-dump: header N=%d max_rows=%d max_features=%d max_classes=%d", d.num_datasets, d.max_rows, d.max_features, d.max_classes);
    TableBatch got, want;
    table_batch_alloc(&got, B, d.rows_needed, d.features_needed);
    table_batch_alloc(&want, B, d.max_rows, d.max_features);
    for (int k = 0; k < num_batches; k++) {
        int32_t dims[4];
        fread_check(dims, sizeof(int32_t), 4, f, expected_path);
        want.B = B; want.R = dims[0]; want.F = dims[1]; want.S = dims[2];
        MOSAIC_CHECK(want.R <= d.max_rows && want.F <= d.max_features, "expected batch larger than the dump");
        fread_check(want.x, sizeof(float), (size_t)B * want.R * want.F, f, expected_path);
        fread_check(want.y, sizeof(float), (size_t)B * want.R, f, expected_path);
        prior_dump_next_batch(&got, &d, B);
        check(batches_equal(&got, &want), "check-dump: batch %d (B=%d R=%d F=%d S=%d) bit-exact (got R=%d F=%d S=%d)", k, B, want.R, want.F,
              want.S, got.R, got.F, got.S);
    }
    fclose(f);
    prior_dump_close(&d);
    table_batch_free(&got);
    table_batch_free(&want);
    printf("%d passed, %d failed\n", tests_passed, tests_failed);
    return tests_failed ? 1 : 0;
}

int main(int argc, char** argv) {
    if (argc == 4 && !strcmp(argv[1], "--check-dump")) return check_dump(argv[2], argv[3]);
    if (argc == 4 && !strcmp(argv[1], "--read-dump")) {
        PriorDump d;
        prior_dump_open(&d, argv[2]);
        const int B = atoi(argv[3]);
        if (B < 1) mosaic_fail("batch size '%s' must be a positive integer", argv[3]);
        TableBatch b;
        table_batch_alloc(&b, B, d.rows_needed, d.features_needed);
        for (int i = 0; i < ceil_div(d.num_datasets, B); i++) prior_dump_next_batch(&b, &d, B);
        printf("'%s': %d datasets, up to %d rows x %d features, %d classes: all read\n", argv[2], d.num_datasets, d.rows_needed,
               d.features_needed, d.max_classes);
        return 0;
    }
    if (argc == 3 && !strcmp(argv[1], "--read-csv")) {
        CsvTable t;
        csv_table_read(&t, argv[2]);
        TableBatch b;
        table_batch_alloc(&b, 1, t.rows, t.features);
        csv_table_stratified_split(&b, &t, 0.5f, 0);
        printf("'%s': %d rows x %d features, %d classes; split %d train, %d test\n", argv[2], t.rows, t.features, t.num_classes, b.S, b.R - b.S);
        return 0;
    }
    if (argc != 1) {
        fprintf(stderr, "usage: %s [--check-dump DUMP EXPECTED | --read-dump DUMP B | --read-csv FILE]\n", argv[0]);
        return 2;
    }
    snprintf(tmp_dir, sizeof(tmp_dir), "/tmp/mosaic_test_dataloader_XXXXXX");
    if (!mkdtemp(tmp_dir)) mosaic_fail("cannot create a temporary directory: %s", strerror(errno));

    test_errors(); // first: forks before any OpenMP thread pool exists
    test_csv_pair_errors();
    test_prior_determinism();
    test_prior_validity("default", prior_config_default(), 300, 16);
    {
        PriorConfig c = prior_config_default();
        c.min_rows = 3; c.max_rows = 12; c.min_features = 1; c.max_features = 1; c.num_classes = 3;
        c.min_train_fraction = 0.1f; c.max_train_fraction = 0.95f;
        test_prior_validity("tiny (R 3..12, F 1, 3 classes)", c, 300, 16);
        c = prior_config_default();
        c.min_rows = 100; c.max_rows = 300; c.min_features = 10; c.max_features = 40; c.num_classes = 10;
        test_prior_validity("wide (R 100..300, F 10..40, 10 classes)", c, 40, 16);
    }
    time_prior();
    test_dump_roundtrip();
    test_dump_writer();
    test_csv_parse();
    test_csv_semantics();
    test_csv_split();

    for (int i = 0; i < tmp_count; i++) unlink(tmp_paths[i]);
    rmdir(tmp_dir);
    printf("%d passed, %d failed\n", tests_passed, tests_failed);
    return tests_failed ? 1 : 0;
}
