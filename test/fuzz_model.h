// What the fuzz targets of the model files share: a small model built once (E 8, heads 2, H 8,
// L 1, outputs 2: the seed corpora hold its checkpoints and exports) to read them into.
#pragma once
#include "fuzz_util.h"
#include "../model/model_file.h"

// train: 1 for the optimizer state a checkpoint restores, 0 for an inference model
static TabPFN* fuzz_small_model(int train) {
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
        tabpfn_build(&model, c, cap, train, &par);
        built = 1;
    }
    return &model;
}
