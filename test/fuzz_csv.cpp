// libFuzzer target: the CSV reader (dataloader/csv_table.h) along predict's path (the train
// table's text and schema, both tables encoded by it) and the trainer's eval path (csv_table_read
// and the stratified split). Input: one flags byte, then the train table, a form feed (\f, a byte
// the reader refuses inside a table), then the test table. Flags: bit 0 --missing error, bit 1
// --label "label" (else the last column). On a failure the reader's half-built state is leaked,
// not freed (the run uses detect_leaks=0); on success everything is freed.
#include "fuzz_util.h"
#include "../dataloader/csv_table.h"

static void fuzz_write_part(const char* path, const uint8_t* data, size_t size) {
    FILE* f = fopen(path, "wb");
    if (!f || (size && fwrite(data, 1, size, f) != size)) abort();
    fclose(f);
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    mosaic_error_quiet = 1;
    if (size < 1) return 0;
    const int flags = data[0];
    data++, size--;
    const uint8_t* sep = (const uint8_t*)memchr(data, '\f', size);
    const size_t train_size = sep ? (size_t)(sep - data) : size;
    const char* dir = fuzz_write_input(data, 0, "csv"); // a per-process name to derive two paths from
    static char train_path[300], test_path[300];
    snprintf(train_path, sizeof(train_path), "%s.train.csv", dir);
    snprintf(test_path, sizeof(test_path), "%s.test.csv", dir);
    fuzz_write_part(train_path, data, train_size);
    fuzz_write_part(test_path, sep ? sep + 1 : data, sep ? size - train_size - 1 : 0);
    const CsvMissing missing = (flags & 1) ? CSV_MISSING_ERROR : CSV_MISSING_MEAN;
    const char* label = (flags & 2) ? "label" : NULL;

    static CsvText train_text, test_text;
    static CsvSchema schema;
    static CsvTable train, test, eval;
    static TableBatch split;
    if (setjmp(mosaic_fuzz_jump) == 0) { // predict's path
        csv_text_read(&train_text, train_path, CSV_HEADER_REQUIRED);
        csv_schema_build(&schema, &train_text, label);
        csv_table_encode(&train, &train_text, &schema, missing, 1, train_path);
        if (sep) {
            csv_text_read(&test_text, test_path, CSV_HEADER_REQUIRED);
            csv_table_encode(&test, &test_text, &schema, missing, 0, train_path);
            for (long i = 0; i < (long)test.rows * test.features; i++)
                if (!isfinite(test.x[i])) abort(); // imputed or refused, never a NaN for the model
            csv_table_free(&test);
            csv_text_free(&test_text);
        }
        for (long i = 0; i < (long)train.rows * train.features; i++)
            if (!isfinite(train.x[i])) abort();
        csv_table_free(&train);
        csv_schema_free(&schema);
        csv_text_free(&train_text);
    }
    fuzz_close_leftovers();
    if (setjmp(mosaic_fuzz_jump) == 0) { // the trainer's eval table
        csv_table_read(&eval, train_path);
        table_batch_alloc(&split, 1, eval.rows, eval.features);
        csv_table_stratified_split(&split, &eval, 0.5f, 0);
        if (!(split.S >= 1 && split.S < split.R)) abort();
        table_batch_free(&split);
        csv_table_free(&eval);
    }
    fuzz_close_leftovers();
    return 0;
}
