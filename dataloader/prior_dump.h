// Prior dump files: many pre-sampled datasets, read batch by batch like nanoTabPFN's
// PriorDumpDataLoader. nanoTabPFN's HDF5 dumps convert with scripts/convert_nanotabpfn_h5.py.
//
// File format (all little-endian):
//   int32   header[256]       [0] magic 0x4D535044 ("DPSM" in bytes), [1] version 1,
//                             [2] N num_datasets, [3] max_rows, [4] max_features,
//                             [5] max_classes, the rest 0
//   int32   num_features[N]     1 <= num_features[i] <= max_features
//   int32   num_datapoints[N]   rows of dataset i: num_datapoints[i] <= max_rows
//   int32   single_eval_pos[N]  train rows of dataset i: 2 <= single_eval_pos[i] < num_datapoints[i]
//   float32 X[N][max_rows][max_features]   zero (or anything finite) beyond the dataset's size
//   float32 y[N][max_rows]                 class ids as floats, integers in [0, max_classes)
// File size is exactly 1024 + 12*N + 4*N*max_rows*(max_features + 1) bytes.
//
// A batch of B datasets is the next B consecutive ones (wrapping to the start): R is the
// largest num_datapoints among them, F the largest num_features, S the single_eval_pos of
// the first (kept < R); x[:, :R, :F] and y[:, :R] are copied as stored, padding included.
// Reading seeks to each dataset, so files of any size stream through one dataset buffer.
#pragma once
#include <sys/types.h>
#include "table_batch.h"

#define PRIOR_DUMP_MAGIC 0x4D535044
#define PRIOR_DUMP_VERSION 1
#define PRIOR_DUMP_HEADER_INTS 256
#define PRIOR_DUMP_MAX_ROWS (1 << 24)
#define PRIOR_DUMP_MAX_FEATURES (1 << 20)
#define PRIOR_DUMP_MAX_CLASSES (1 << 16)

typedef struct {
    char* path;
    FILE* file;
    int num_datasets, max_rows, max_features, max_classes; // from the header
    int rows_needed, features_needed; // largest num_datapoints / num_features in the file: size the TableBatch with these
    int32_t* num_features;    // (N)
    int32_t* num_datapoints;  // (N)
    int32_t* single_eval_pos; // (N)
    int64_t next_dataset;     // first dataset of the next batch
    int64_t x_offset, y_offset; // byte offsets of X and y
    float* buffer;            // (rows_needed, max_features) the used rows of one dataset's X block
} PriorDump;

static inline int64_t prior_dump_expected_bytes(int64_t N, int64_t max_rows, int64_t max_features) {
    // callers first check (in double) that the result is below 2^62, so this cannot overflow
    return (int64_t)PRIOR_DUMP_HEADER_INTS * 4 + 12 * N + 4 * N * max_rows * (max_features + 1);
}

static void prior_dump_seek(FILE* f, int64_t offset, const char* path) {
    if (fseeko(f, (off_t)offset, SEEK_SET) != 0) mosaic_fail("cannot seek to byte %lld in '%s': %s", (long long)offset, path, strerror(errno));
}

static void prior_dump_open(PriorDump* dump, const char* path) {
    memset(dump, 0, sizeof(*dump));
    dump->path = strdup(path);
    dataloader_check_regular_file(path);
    dump->file = fopenCheck(path, "rb");
    FILE* f = dump->file;
    if (fseeko(f, 0, SEEK_END) != 0) mosaic_fail("cannot seek in '%s': %s", path, strerror(errno));
    const int64_t actual = (int64_t)ftello(f);
    if (actual < 0) mosaic_fail("cannot tell the size of '%s': %s", path, strerror(errno));
    if (actual < PRIOR_DUMP_HEADER_INTS * 4)
        mosaic_fail("'%s' is too short to be a prior dump: %lld bytes, the header alone is %d", path, (long long)actual,
                    PRIOR_DUMP_HEADER_INTS * 4);
    prior_dump_seek(f, 0, path);
    int32_t header[PRIOR_DUMP_HEADER_INTS];
    fread_check(header, sizeof(int32_t), PRIOR_DUMP_HEADER_INTS, f, path);
    if (header[0] != PRIOR_DUMP_MAGIC) {
        const char* hint = memcmp(header, "\x89HDF", 4) == 0 ? " (an HDF5 file: convert it with scripts/convert_nanotabpfn_h5.py)" : "";
        mosaic_fail("'%s' is not a prior dump: magic 0x%08X, expected 0x%08X%s", path, (unsigned)header[0], PRIOR_DUMP_MAGIC, hint);
    }
    if (header[1] != PRIOR_DUMP_VERSION)
        mosaic_fail("'%s' is prior dump version %d; this build reads version %d", path, header[1], PRIOR_DUMP_VERSION);
    const int N = header[2], max_rows = header[3], max_features = header[4], max_classes = header[5];
    if (N < 1) mosaic_fail("'%s': header says %d datasets; need at least 1", path, N);
    if (max_rows < 3 || max_rows > PRIOR_DUMP_MAX_ROWS)
        mosaic_fail("'%s': header max_rows=%d is outside [3, %d]", path, max_rows, PRIOR_DUMP_MAX_ROWS);
    if (max_features < 1 || max_features > PRIOR_DUMP_MAX_FEATURES)
        mosaic_fail("'%s': header max_features=%d is outside [1, %d]", path, max_features, PRIOR_DUMP_MAX_FEATURES);
    if (max_classes < 2 || max_classes > PRIOR_DUMP_MAX_CLASSES)
        mosaic_fail("'%s': header max_classes=%d is outside [2, %d]", path, max_classes, PRIOR_DUMP_MAX_CLASSES);
    if (4.0 * N * max_rows * ((double)max_features + 1.0) > 4.0e18)
        mosaic_fail("'%s': header (%d datasets of %d rows x %d features) implies an impossibly large file: corrupt header?", path, N,
                    max_rows, max_features);
    const int64_t expected = prior_dump_expected_bytes(N, max_rows, max_features);
    if (actual < expected)
        mosaic_fail("'%s' is truncated: its header (%d datasets of %d rows x %d features) implies %lld bytes, the file has %lld",
                    path, N, max_rows, max_features, (long long)expected, (long long)actual);
    if (actual > expected)
        mosaic_fail("'%s' has %lld bytes but its header (%d datasets of %d rows x %d features) implies %lld: corrupt header or trailing data",
                    path, (long long)actual, N, max_rows, max_features, (long long)expected);
    dump->num_datasets = N;
    dump->max_rows = max_rows;
    dump->max_features = max_features;
    dump->max_classes = max_classes;
    dump->num_features = (int32_t*)mallocCheck((size_t)N * sizeof(int32_t));
    dump->num_datapoints = (int32_t*)mallocCheck((size_t)N * sizeof(int32_t));
    dump->single_eval_pos = (int32_t*)mallocCheck((size_t)N * sizeof(int32_t));
    fread_check(dump->num_features, sizeof(int32_t), (size_t)N, f, path);
    fread_check(dump->num_datapoints, sizeof(int32_t), (size_t)N, f, path);
    fread_check(dump->single_eval_pos, sizeof(int32_t), (size_t)N, f, path);
    for (int i = 0; i < N; i++) {
        const int nf = dump->num_features[i], nd = dump->num_datapoints[i], sep = dump->single_eval_pos[i];
        if (nf < 1 || nf > max_features)
            mosaic_fail("'%s': dataset %d has num_features=%d, outside [1, max_features=%d]", path, i, nf, max_features);
        if (nd < 3 || nd > max_rows)
            mosaic_fail("'%s': dataset %d has num_datapoints=%d, outside [3, max_rows=%d]", path, i, nd, max_rows);
        if (sep < 2 || sep >= nd)
            mosaic_fail("'%s': dataset %d has single_eval_pos=%d, outside [2, num_datapoints=%d)", path, i, sep, nd);
        if (nd > dump->rows_needed) dump->rows_needed = nd;
        if (nf > dump->features_needed) dump->features_needed = nf;
    }
    dump->x_offset = (int64_t)PRIOR_DUMP_HEADER_INTS * 4 + 12 * (int64_t)N;
    dump->y_offset = dump->x_offset + 4 * (int64_t)N * max_rows * max_features;
    // sized by the tables' actual largest row count, not the header's max_rows (which may be far larger)
    dump->buffer = (float*)mallocCheck((size_t)dump->rows_needed * max_features * sizeof(float));
    dump->next_dataset = 0;
}

static void prior_dump_close(PriorDump* dump) {
    if (dump->file) fclose(dump->file);
    free(dump->path);
    free(dump->num_features);
    free(dump->num_datapoints);
    free(dump->single_eval_pos);
    free(dump->buffer);
    memset(dump, 0, sizeof(*dump));
}

// the next prior_dump_next_batch starts at batch `batch_index` of size B (resume from a checkpoint)
static inline void prior_dump_skip_to(PriorDump* dump, int64_t batch_index, int B) {
    MOSAIC_CHECK(batch_index >= 0 && B >= 1, "batch index and size must be non-negative / positive");
    const int64_t N = dump->num_datasets; // N < 2^31, so the product below fits in int64
    dump->next_dataset = (batch_index % N) * (B % N) % N;
}

static void prior_dump_next_batch(TableBatch* out, PriorDump* dump, int B) {
    MOSAIC_CHECK(dump->file != NULL, "prior_dump_open first");
    MOSAIC_CHECK(B >= 1 && B <= out->max_B, "batch size must be in [1, the batch's max_B]");
    const int64_t N = dump->num_datasets, first = dump->next_dataset;
    int R = 0, F = 0;
    for (int b = 0; b < B; b++) {
        const int64_t i = (first + b) % N;
        if (dump->num_datapoints[i] > R) R = dump->num_datapoints[i];
        if (dump->num_features[i] > F) F = dump->num_features[i];
    }
    MOSAIC_CHECK(R <= out->max_R && F <= out->max_F,
                 "allocate the batch with table_batch_alloc(&batch, B, dump.rows_needed, dump.features_needed)");
    int S = dump->single_eval_pos[first];
    S = S > R - 1 ? R - 1 : S; // cannot trigger for a validated file (S < num_datapoints <= R); kept as the rule
    out->B = B;
    out->R = R;
    out->F = F;
    out->S = S;
    const int MF = dump->max_features;
    for (int b = 0; b < B; b++) {
        const int64_t i = (first + b) % N;
        // x[b] = X[i, :R, :F]
        prior_dump_seek(dump->file, dump->x_offset + 4 * i * dump->max_rows * MF, dump->path);
        fread_check(dump->buffer, sizeof(float), (size_t)R * MF, dump->file, dump->path);
        float* x = out->x + (size_t)b * R * F;
        for (int r = 0; r < R; r++) {
            for (int f = 0; f < F; f++) {
                const float v = dump->buffer[(size_t)r * MF + f];
                if (!isfinite(v))
                    mosaic_fail("%s in prior dump '%s': dataset %lld, row %d, feature %d", isnan(v) ? "NaN" : "Inf", dump->path,
                                (long long)i, r, f);
                x[(size_t)r * F + f] = v;
            }
        }
        // y[b] = y[i, :R]
        float* y = out->y + (size_t)b * R;
        prior_dump_seek(dump->file, dump->y_offset + 4 * i * dump->max_rows, dump->path);
        fread_check(y, sizeof(float), (size_t)R, dump->file, dump->path);
        for (int r = 0; r < R; r++) {
            const float v = y[r];
            if (!isfinite(v))
                mosaic_fail("%s label in prior dump '%s': dataset %lld, row %d", isnan(v) ? "NaN" : "Inf", dump->path, (long long)i, r);
            if (v < 0.0f || v != floorf(v) || v >= (float)dump->max_classes)
                mosaic_fail("bad label %g in prior dump '%s': dataset %lld, row %d (labels must be integers in [0, max_classes=%d))",
                            (double)v, dump->path, (long long)i, r, dump->max_classes);
        }
    }
    dump->next_dataset = (first + B) % N;
}

// ----------------------------------------------------------------------------
// writing. The writers check sizes only; the reader validates contents, so tests can
// write deliberately broken files.

static void prior_dump_write_header(FILE* f, const char* path, int N, int max_rows, int max_features, int max_classes) {
    int32_t header[PRIOR_DUMP_HEADER_INTS];
    memset(header, 0, sizeof(header));
    header[0] = PRIOR_DUMP_MAGIC;
    header[1] = PRIOR_DUMP_VERSION;
    header[2] = N;
    header[3] = max_rows;
    header[4] = max_features;
    header[5] = max_classes;
    fwrite_check(header, sizeof(int32_t), PRIOR_DUMP_HEADER_INTS, f, path);
}

// writes a whole dump from arrays in memory
static void prior_dump_write(const char* path, const int32_t* num_features, const int32_t* num_datapoints,
                             const int32_t* single_eval_pos, const float* x, const float* y, int N, int max_rows,
                             int max_features, int max_classes) {
    // num_features, num_datapoints, single_eval_pos: (N); x: (N, max_rows, max_features); y: (N, max_rows)
    MOSAIC_CHECK(N >= 1 && max_rows >= 1 && max_features >= 1, "dump sizes must be positive");
    FILE* f = fopenCheck(path, "wb");
    prior_dump_write_header(f, path, N, max_rows, max_features, max_classes);
    fwrite_check(num_features, sizeof(int32_t), (size_t)N, f, path);
    fwrite_check(num_datapoints, sizeof(int32_t), (size_t)N, f, path);
    fwrite_check(single_eval_pos, sizeof(int32_t), (size_t)N, f, path);
    fwrite_check(x, sizeof(float), (size_t)N * max_rows * max_features, f, path);
    fwrite_check(y, sizeof(float), (size_t)N * max_rows, f, path);
    if (fclose(f) != 0) mosaic_fail("cannot write '%s': %s", path, strerror(errno));
}

// streaming writer: append batches (e.g. from the prior) without holding the dump in memory
typedef struct {
    char* path;
    FILE* file;
    int num_datasets, max_rows, max_features, max_classes;
    int count;                // datasets written so far
    int32_t* num_features;    // (N)
    int32_t* num_datapoints;  // (N)
    int32_t* single_eval_pos; // (N)
    float* block;             // (max_rows, max_features) one zero-padded dataset
} PriorDumpWriter;

static void prior_dump_writer_open(PriorDumpWriter* w, const char* path, int N, int max_rows, int max_features, int max_classes) {
    MOSAIC_CHECK(N >= 1 && max_rows >= 3 && max_features >= 1 && max_classes >= 2, "dump sizes out of range");
    memset(w, 0, sizeof(*w));
    w->path = strdup(path);
    w->file = fopenCheck(path, "wb");
    w->num_datasets = N;
    w->max_rows = max_rows;
    w->max_features = max_features;
    w->max_classes = max_classes;
    w->num_features = (int32_t*)callocCheck((size_t)N * sizeof(int32_t));
    w->num_datapoints = (int32_t*)callocCheck((size_t)N * sizeof(int32_t));
    w->single_eval_pos = (int32_t*)callocCheck((size_t)N * sizeof(int32_t));
    w->block = (float*)callocCheck((size_t)max_rows * max_features * sizeof(float));
    prior_dump_write_header(w->file, path, N, max_rows, max_features, max_classes);
}

// appends the batch's datasets (as many as still fit in N); returns how many were written
static int prior_dump_writer_append(PriorDumpWriter* w, const TableBatch* batch) {
    MOSAIC_CHECK(batch->R <= w->max_rows && batch->F <= w->max_features, "batch is larger than the dump's max_rows/max_features");
    const int N = w->num_datasets, R = batch->R, F = batch->F, MF = w->max_features;
    const int64_t x_offset = (int64_t)PRIOR_DUMP_HEADER_INTS * 4 + 12 * (int64_t)N;
    const int64_t y_offset = x_offset + 4 * (int64_t)N * w->max_rows * MF;
    int written = 0;
    for (int b = 0; b < batch->B && w->count < N; b++, written++) {
        const int i = w->count++;
        w->num_features[i] = F;
        w->num_datapoints[i] = R;
        w->single_eval_pos[i] = batch->S;
        const float* x = batch->x + (size_t)b * R * F;
        for (int r = 0; r < R; r++) memcpy(w->block + (size_t)r * MF, x + (size_t)r * F, (size_t)F * sizeof(float));
        prior_dump_seek(w->file, x_offset + 4 * (int64_t)i * w->max_rows * MF, w->path);
        fwrite_check(w->block, sizeof(float), (size_t)w->max_rows * MF, w->file, w->path);
        // y block, zero-padded: the first max_rows floats of block serve as the buffer
        memset(w->block, 0, (size_t)w->max_rows * sizeof(float));
        memcpy(w->block, batch->y + (size_t)b * R, (size_t)R * sizeof(float));
        prior_dump_seek(w->file, y_offset + 4 * (int64_t)i * w->max_rows, w->path);
        fwrite_check(w->block, sizeof(float), (size_t)w->max_rows, w->file, w->path);
        memset(w->block, 0, (size_t)w->max_rows * MF * sizeof(float));
    }
    return written;
}

// writes the per-dataset arrays and closes; every one of the N datasets must have been appended
static void prior_dump_writer_close(PriorDumpWriter* w) {
    MOSAIC_CHECK(w->count == w->num_datasets, "append exactly num_datasets datasets before closing the dump");
    const int N = w->num_datasets;
    prior_dump_seek(w->file, (int64_t)PRIOR_DUMP_HEADER_INTS * 4, w->path);
    fwrite_check(w->num_features, sizeof(int32_t), (size_t)N, w->file, w->path);
    fwrite_check(w->num_datapoints, sizeof(int32_t), (size_t)N, w->file, w->path);
    fwrite_check(w->single_eval_pos, sizeof(int32_t), (size_t)N, w->file, w->path);
    if (fclose(w->file) != 0) mosaic_fail("cannot write '%s': %s", w->path, strerror(errno));
    free(w->path);
    free(w->num_features);
    free(w->num_datapoints);
    free(w->single_eval_pos);
    free(w->block);
    memset(w, 0, sizeof(*w));
}
