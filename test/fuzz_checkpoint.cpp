// libFuzzer target: the checkpoint reader (checkpoint_load in model/model_file.h) into a small
// training model (E 8, heads 2, H 8, L 1, outputs 2; the seed corpus holds its checkpoints),
// and model_file_config, which predict calls on a checkpoint first.
#include "fuzz_model.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    mosaic_error_quiet = 1;
    TabPFN* model = fuzz_small_model(1);
    const char* path = fuzz_write_input(data, size, "checkpoint");
    if (setjmp(mosaic_fuzz_jump) == 0) {
        const int next_step = checkpoint_load(path, model);
        if (next_step < 0) abort(); // a negative step must have been refused
    }
    fuzz_close_leftovers();
    if (setjmp(mosaic_fuzz_jump) == 0) model_file_config(path, 4);
    fuzz_close_leftovers();
    return 0;
}
