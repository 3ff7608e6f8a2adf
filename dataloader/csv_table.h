// Real tables for evaluation: CSV files with the features first and an integer class label
// last, comma separated, optionally with a header line (detected: the first non-blank line
// has a field that is not a number). Blank lines are skipped; CRLF line ends, spaces around
// fields and double quotes around a whole field are accepted. Every other irregularity is a
// one-line error naming the file, the line and the column.
#pragma once
#include "table_batch.h"

#define CSV_MAX_CLASSES (1 << 16)

typedef struct {
    int rows, features, num_classes; // num_classes = largest label + 1
    float* x;   // (rows, features)
    int* y;     // (rows)
    char* path; // for error messages
} CsvTable;

// trims spaces, tabs, CR and one pair of surrounding double quotes, in place
static char* csv_trim(char* s) {
    while (*s == ' ' || *s == '\t') s++;
    char* e = s + strlen(s);
    while (e > s && (e[-1] == ' ' || e[-1] == '\t' || e[-1] == '\r')) *--e = '\0';
    if (e - s >= 2 && s[0] == '"' && e[-1] == '"') { e[-1] = '\0'; s++; }
    return s;
}

// 1 if the whole field is a number (NaN and Inf spellings count as numbers here)
static int csv_parse_number(const char* s, double* value) {
    if (*s == '\0') return 0;
    char* end;
    errno = 0;
    *value = strtod(s, &end);
    return *end == '\0';
}

static void csv_grow(void** p, size_t* capacity, size_t needed, size_t elem) {
    if (needed <= *capacity) return;
    size_t c = *capacity ? *capacity : 1024;
    while (c < needed) c *= 2;
    void* q = realloc(*p, c * elem);
    if (!q) { fprintf(stderr, "mosaic: error: out of memory growing a CSV table to %zu bytes\n", c * elem); mosaic_exit(1); }
    *p = q;
    *capacity = c;
}

static void csv_table_read(CsvTable* table, const char* path) {
    memset(table, 0, sizeof(*table));
    table->path = strdup(path);
    dataloader_check_regular_file(path);
    FILE* f = fopenCheck(path, "rb");
    if (fseek(f, 0, SEEK_END) != 0) mosaic_fail("cannot seek in '%s': %s", path, strerror(errno));
    const long size = ftell(f);
    if (size < 0) mosaic_fail("cannot read '%s': %s", path, strerror(errno));
    rewind(f);
    char* text = (char*)mallocCheck((size_t)size + 1);
    fread_check(text, 1, (size_t)size, f, path);
    fclose(f);
    text[size] = '\0';
    if (memchr(text, '\0', (size_t)size)) mosaic_fail("'%s' is not a text file (it contains NUL bytes)", path);

    size_t x_cap = 0, y_cap = 0;
    float* x = NULL;
    int* y = NULL;
    char** fields = NULL; // (columns) the current line's fields
    int columns = 0, rows = 0, saw_line = 0, header_line = 0, columns_line = 0;
    char* line = text;
    for (int line_no = 1; line && *line; line_no++) {
        char* next = strchr(line, '\n');
        if (next) *next++ = '\0';
        // blank lines are skipped
        const char* p = line;
        while (*p == ' ' || *p == '\t' || *p == '\r') p++;
        if (*p == '\0') { line = next; continue; }

        // split into trimmed fields, in place
        int n_fields = 1;
        for (char* c = line; *c; c++) n_fields += *c == ',';
        if (columns == 0) {
            columns = n_fields;
            columns_line = line_no;
            if (columns < 2) mosaic_fail("'%s' line %d has 1 column; expected the features, then the label last", path, line_no);
            fields = (char**)mallocCheck((size_t)columns * sizeof(char*));
        } else if (n_fields != columns) {
            mosaic_fail("'%s' line %d has %d fields, expected %d (as on line %d)", path, line_no, n_fields, columns, columns_line);
        }
        {
            char* field = line;
            for (int c = 0; c < columns; c++) {
                char* comma = strchr(field, ',');
                if (comma) *comma = '\0';
                fields[c] = csv_trim(field);
                field = comma ? comma + 1 : NULL;
            }
        }
        // header: the first non-blank line, if it has a non-numeric field
        if (!saw_line) {
            saw_line = 1;
            int numeric = 1; // an empty field is a data error, not a header
            for (int c = 0; c < columns; c++) {
                double v;
                if (fields[c][0] != '\0' && !csv_parse_number(fields[c], &v)) numeric = 0;
            }
            if (!numeric) { header_line = line_no; line = next; continue; }
        }
        csv_grow((void**)&x, &x_cap, (size_t)(rows + 1) * (columns - 1), sizeof(float));
        csv_grow((void**)&y, &y_cap, (size_t)(rows + 1), sizeof(int));
        for (int c = 0; c < columns; c++) {
            const char* s = fields[c];
            double v;
            if (*s == '\0') mosaic_fail("empty field in '%s' at line %d, column %d", path, line_no, c + 1);
            if (!csv_parse_number(s, &v)) mosaic_fail("non-numeric field '%.40s' in '%s' at line %d, column %d", s, path, line_no, c + 1);
            if (isnan(v)) mosaic_fail("NaN in '%s' at line %d, column %d", path, line_no, c + 1);
            if (isinf(v)) mosaic_fail("Inf in '%s' at line %d, column %d", path, line_no, c + 1);
            if (c < columns - 1) {
                const float fv = (float)v;
                if (!isfinite(fv)) mosaic_fail("value %s in '%s' at line %d, column %d does not fit in float32", s, path, line_no, c + 1);
                x[(size_t)rows * (columns - 1) + c] = fv;
            } else {
                if (v < 0.0 || v != floor(v))
                    mosaic_fail("label '%s' in '%s' at line %d (column %d) is not a non-negative integer", s, path, line_no, c + 1);
                if (v >= CSV_MAX_CLASSES)
                    mosaic_fail("label %s in '%s' at line %d is above %d: is the last column a class label?", s, path, line_no,
                                CSV_MAX_CLASSES - 1);
                y[rows] = (int)v;
            }
        }
        rows++;
        line = next;
    }
    free(text);
    free(fields);
    if (!saw_line) mosaic_fail("'%s' is empty", path);
    if (rows == 0) mosaic_fail("'%s' has a header (line %d) but no data rows", path, header_line);
    if (rows < 4) mosaic_fail("'%s' has %d data rows; need at least 4 (2 per class for a train/test split)", path, rows);
    int max_label = 0;
    for (int r = 0; r < rows; r++) max_label = y[r] > max_label ? y[r] : max_label;
    int distinct = 0;
    {
        char* seen = (char*)callocCheck((size_t)max_label + 1);
        for (int r = 0; r < rows; r++) { distinct += !seen[y[r]]; seen[y[r]] = 1; }
        free(seen);
    }
    if (distinct < 2) mosaic_fail("'%s' has a single class (label %d); classification needs at least 2", path, y[0]);
    table->rows = rows;
    table->features = columns - 1;
    table->num_classes = max_label + 1;
    table->x = x;
    table->y = y;
}

static void csv_table_free(CsvTable* table) {
    free(table->x);
    free(table->y);
    free(table->path);
    memset(table, 0, sizeof(*table));
}

// largest remainder: +1 train row to the classes furthest below their quota (and with a
// test row to spare) until `assigned` reaches n_train; returns the new total
static int split_raise_train_counts(int* ntrain, const double* quota, const int* count, int K, int assigned, int n_train) {
    while (assigned < n_train) {
        int best = -1;
        for (int k = 0; k < K; k++)
            if (count[k] > 0 && ntrain[k] < count[k] - 1 && (best < 0 || quota[k] - ntrain[k] > quota[best] - ntrain[best])) best = k;
        if (best < 0) break;
        ntrain[best]++;
        assigned++;
    }
    return assigned;
}

// Stratified train/test split (like sklearn's train_test_split(stratify=y)) into one dataset:
// rows [0, S) train, [S, R) test, each part in the file's row order.
// test rows total ceil(test_fraction * rows) as in sklearn; the train rows are shared out
// over the classes in proportion to their counts (largest remainder), with every present
// class getting at least 1 train and 1 test row; within a class the rows are picked by a
// seeded shuffle.
static void csv_table_stratified_split(TableBatch* out, const CsvTable* table, float test_fraction, uint64_t seed) {
    const char* path = table->path ? table->path : "(table)";
    if (!(test_fraction > 0.0f && test_fraction < 1.0f)) mosaic_fail("test fraction %g must be in (0, 1)", (double)test_fraction);
    MOSAIC_CHECK(out->max_B >= 1 && out->max_R >= table->rows && out->max_F >= table->features,
                 "allocate the eval batch with table_batch_alloc(&batch, 1, table.rows, table.features)");
    const int N = table->rows, K = table->num_classes;
    int* count = (int*)callocCheck((size_t)K * sizeof(int));     // (K) rows per class
    int* start = (int*)callocCheck((size_t)(K + 1) * sizeof(int)); // (K+1) class buckets in order
    int* order = (int*)mallocCheck((size_t)N * sizeof(int));       // (N) row ids bucketed by class
    int* ntrain = (int*)callocCheck((size_t)K * sizeof(int));    // (K) train rows per class
    double* quota = (double*)callocCheck((size_t)K * sizeof(double));
    char* is_train = (char*)callocCheck((size_t)N);
    for (int r = 0; r < N; r++) count[table->y[r]]++;
    int present = 0;
    for (int k = 0; k < K; k++) {
        if (count[k] == 1)
            mosaic_fail("'%s': class %d has only 1 row; a stratified split needs at least 2 rows per class", path, k);
        present += count[k] > 0;
    }
    // the float's shortest decimal (0.3f -> 0.3), so that 0.3 of 30 rows is 9, not 10
    char decimal[32];
    snprintf(decimal, sizeof(decimal), "%.7g", (double)test_fraction);
    int n_test = (int)ceil(strtod(decimal, NULL) * N - 1e-9);
    int n_train = N - n_test;
    n_train = n_train < present ? present : (n_train > N - present ? N - present : n_train); // 1 train + 1 test per class
    // largest remainder: floor of each quota, then +1 to the largest fractional parts
    int assigned = 0;
    for (int k = 0; k < K; k++) {
        quota[k] = (double)count[k] * n_train / N;
        ntrain[k] = (int)floor(quota[k]);
        assigned += ntrain[k];
    }
    assigned = split_raise_train_counts(ntrain, quota, count, K, assigned, n_train);
    // at least 1 train and 1 test row per class, then restore the total from the classes with room
    for (int k = 0; k < K; k++) {
        if (count[k] == 0) continue;
        if (ntrain[k] < 1) { assigned += 1 - ntrain[k]; ntrain[k] = 1; }
        if (ntrain[k] > count[k] - 1) { assigned -= ntrain[k] - (count[k] - 1); ntrain[k] = count[k] - 1; }
    }
    while (assigned > n_train) {
        int best = -1;
        for (int k = 0; k < K; k++)
            if (ntrain[k] > 1 && (best < 0 || ntrain[k] - quota[k] > ntrain[best] - quota[best])) best = k;
        if (best < 0) break;
        ntrain[best]--;
        assigned--;
    }
    assigned = split_raise_train_counts(ntrain, quota, count, K, assigned, n_train);
    // bucket rows by class (stable), shuffle each bucket, its first ntrain rows are train
    for (int k = 0; k < K; k++) start[k + 1] = start[k] + count[k];
    {
        int* fill = (int*)mallocCheck((size_t)K * sizeof(int));
        memcpy(fill, start, (size_t)K * sizeof(int));
        for (int r = 0; r < N; r++) order[fill[table->y[r]]++] = r;
        free(fill);
    }
    Rng rng;
    rng_seed(&rng, seed);
    for (int k = 0; k < K; k++) {
        int* a = order + start[k];
        for (int i = count[k] - 1; i > 0; i--) { int j = rng_int(&rng, 0, i); int t = a[i]; a[i] = a[j]; a[j] = t; }
        for (int i = 0; i < ntrain[k]; i++) is_train[a[i]] = 1;
    }
    // write: train rows, then test rows, each in file order
    const int F = table->features;
    out->B = 1;
    out->R = N;
    out->F = F;
    int dst = 0;
    for (int pass = 1; pass >= 0; pass--) {
        for (int r = 0; r < N; r++) {
            if (is_train[r] != pass) continue;
            memcpy(out->x + (size_t)dst * F, table->x + (size_t)r * F, (size_t)F * sizeof(float));
            out->y[dst] = (float)table->y[r];
            dst++;
        }
        if (pass == 1) out->S = dst;
    }
    MOSAIC_CHECK(out->S >= 2 && out->S < N, "a split has at least 2 train rows and 1 test row");
    free(count);
    free(start);
    free(order);
    free(ntrain);
    free(quota);
    free(is_train);
}
