// A batch of tables as the model consumes it, in host memory.
// All B tables share R rows, F features and S train rows: rows [0, S) are train, [S, R) test.
#pragma once
#include <sys/stat.h>
#include "../model/common.h"

// a directory or a device opens fine with fopen but then reads nonsense: say so instead
static void dataloader_check_regular_file(const char* path) {
    struct stat st;
    if (stat(path, &st) != 0) mosaic_fail("cannot open '%s': %s", path, strerror(errno));
    if (!S_ISREG(st.st_mode)) mosaic_fail("'%s' is not a regular file", path);
}

typedef struct {
    int B;    // datasets in the batch
    int R;    // rows per dataset (train + test)
    int F;    // features per dataset (zero-padded to the batch's widest)
    int S;    // train rows; 2 <= S < R (the feature encoder needs an unbiased std)
    float* x; // (B, R, F) feature values
    float* y; // (B, R) class indices as floats; test rows hold the true labels (for the loss)
    // capacities the buffers were allocated for; a batch never exceeds them
    int max_B, max_R, max_F;
} TableBatch;

static inline void table_batch_alloc(TableBatch* batch, int max_B, int max_R, int max_F) {
    memset(batch, 0, sizeof(*batch));
    batch->max_B = max_B;
    batch->max_R = max_R;
    batch->max_F = max_F;
    batch->x = (float*)callocCheck((size_t)max_B * max_R * max_F * sizeof(float));
    batch->y = (float*)callocCheck((size_t)max_B * max_R * sizeof(float));
}

static inline void table_batch_free(TableBatch* batch) {
    free(batch->x);
    free(batch->y);
    batch->x = batch->y = NULL;
}
