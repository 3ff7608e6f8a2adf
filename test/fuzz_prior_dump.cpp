// libFuzzer target: the prior-dump reader (dataloader/prior_dump.h): open, then read batches of
// 2 datasets as the trainer does (wrapping around the file), and a skip as --resume does.
#include "fuzz_util.h"
#include "../dataloader/prior_dump.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    mosaic_error_quiet = 1;
    const char* path = fuzz_write_input(data, size, "prior_dump");
    static PriorDump dump; // static: survive the longjmp
    static TableBatch batch;
    memset(&dump, 0, sizeof(dump));
    memset(&batch, 0, sizeof(batch));
    if (setjmp(mosaic_fuzz_jump) == 0) {
        prior_dump_open(&dump, path);
        const int B = 2;
        table_batch_alloc(&batch, B, dump.rows_needed, dump.features_needed);
        for (int i = 0; i < 3; i++) {
            prior_dump_next_batch(&batch, &dump, B);
            // the batch the model would get: S train rows of R, labels checked by the reader
            if (!(batch.S >= 2 && batch.S < batch.R && batch.R <= dump.rows_needed && batch.F <= dump.features_needed)) abort();
        }
        prior_dump_skip_to(&dump, 5, B);
        prior_dump_next_batch(&batch, &dump, B);
    }
    fuzz_close_leftovers();
    dump.file = NULL; // closed above if it was open
    prior_dump_close(&dump);
    table_batch_free(&batch);
    return 0;
}
