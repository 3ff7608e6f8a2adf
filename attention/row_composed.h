// Row attention, composed and hierarchical: NOT IMPLEMENTED YET (stub; see row_attention.h).
#pragma once
#include "row_shard.h"

// the dispatcher asks these: set implemented to 1 when the strategy works; keeps_state when
// a layer's forward leaves state in its scratch for the same layer's backward
static int composed_attention_implemented(void) { return 0; }
static int composed_attention_keeps_state(void) { return 0; }

static size_t composed_attention_scratch_floats(RowCapacity cap, int p) {
    (void)cap; (void)p;
    return 0;
}

static void composed_attention_forward(RowAttention* ra, float* o, float* lse, const float* qkv) {
    (void)o; (void)lse; (void)qkv;
    mosaic_fail("row attention '%s' is not implemented yet", row_strategy_names[ra->strategy]);
}

static void composed_attention_backward(RowAttention* ra, float* dqkv, const float* dout, const float* o, const float* lse,
                                    const float* qkv) {
    (void)dqkv; (void)dout; (void)o; (void)lse; (void)qkv;
    mosaic_fail("row attention '%s' is not implemented yet", row_strategy_names[ra->strategy]);
}
