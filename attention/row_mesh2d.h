// Row attention, 2-D mesh: NOT IMPLEMENTED YET (stub; see row_attention.h).
#pragma once
#include "row_shard.h"

static size_t mesh2d_attention_scratch_floats(RowCapacity cap, int p) {
    (void)cap; (void)p;
    return 0;
}

static void mesh2d_attention_forward(RowAttention* ra, float* o, float* lse, const float* qkv) {
    (void)o; (void)lse; (void)qkv;
    mosaic_fail("row attention '%s' is not implemented yet", row_strategy_names[ra->strategy]);
}

static void mesh2d_attention_backward(RowAttention* ra, float* dqkv, const float* dout, const float* o, const float* lse,
                                    const float* qkv) {
    (void)dqkv; (void)dout; (void)o; (void)lse; (void)qkv;
    mosaic_fail("row attention '%s' is not implemented yet", row_strategy_names[ra->strategy]);
}
