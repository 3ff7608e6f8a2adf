// libFuzzer target: the checkpoint reader (checkpoint_load in model/model_file.h) into a small
// training model (E 8, heads 2, H 8, L 1, outputs 2; the seed corpus holds its checkpoints),
// and model_file_config, which predict calls on a checkpoint first.
#include "fuzz_util.h"
#include "../model/model_file.h"

static TabPFN* fuzz_small_model(void) {
    static TabPFN model;
    static int built = 0;
    static Comm comm;
    if (!built) {
        comm_init_single(&comm);
        ParallelConfig par = parallel_config_single(&comm);
        TabPFNConfig c = tabpfn_config_default();
        c.E = 8; c.heads = 2; c.H = 8; c.L = 1; c.outputs = 2;
        ActivationCapacity cap;
        memset(&cap, 0, sizeof(cap));
        cap.max_B = 1; cap.max_F = 1; cap.max_rows = 4; cap.max_cells = 8; cap.max_inputs = 4; cap.max_R_global = 4;
        tabpfn_build(&model, c, cap, 1, &par);
        built = 1;
    }
    return &model;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    mosaic_error_quiet = 1;
    TabPFN* model = fuzz_small_model();
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
