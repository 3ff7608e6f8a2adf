// Row attention, dispatched per layer to the strategy chosen for it. The model calls only
// row_attention_forward / row_attention_backward; each strategy lives in its own file.
#pragma once
#include "row_context.h"
#include "row_allgather.h"
#include "row_ring.h"
#include "row_a2a.h"
#include "row_mesh2d.h"
#include "row_composed.h"

// floats of scratch the strategy needs for one layer at the given capacity
static size_t row_attention_scratch_floats(RowStrategy strategy, RowCapacity cap, int p) {
    switch (strategy) {
        case ROW_ALLGATHER: return allgather_attention_scratch_floats(cap, p);
        case ROW_RING: return ring_attention_scratch_floats(cap, p);
        case ROW_A2A: return a2a_attention_scratch_floats(cap, p);
        case ROW_MESH2D: return mesh2d_attention_scratch_floats(cap, p);
        case ROW_COMPOSED:
        case ROW_HIERARCHICAL: return composed_attention_scratch_floats(cap, p);
        default: return 0;
    }
}

// every strategy but the start-up choice `auto` has an implementation
static int row_strategy_implemented(RowStrategy strategy) { return strategy >= ROW_LOCAL && strategy < ROW_AUTO; }

// whether the strategy can run on a group of p ranks (grid shapes, node counts)
static int row_strategy_fits(RowStrategy strategy, int p) {
    switch (strategy) {
        case ROW_LOCAL: return p == 1;
        default: return 1;
    }
}

// strategies that keep state from a layer's forward to its backward need scratch per layer
static int row_attention_keeps_state(RowStrategy strategy) {
    switch (strategy) {
        case ROW_A2A: return a2a_attention_keeps_state();
        case ROW_MESH2D: return mesh2d_attention_keeps_state();
        case ROW_COMPOSED:
        case ROW_HIERARCHICAL: return composed_attention_keeps_state();
        default: return 0;
    }
}

// whether the strategy can run a batch of B datasets x C columns on its group: a2a spreads the
// B*C*heads (dataset, column, head) problems over its ranks, at least one each (composed and
// hierarchical with an a2a inner strategy over the grid's row group)
static int row_attention_fits_columns(const RowAttention* ra, int B, int C) {
    int spread = 1;
    if (ra->group->size > 1 && ra->strategy == ROW_A2A) spread = ra->group->size;
    if (ra->group->size > 1 && (ra->strategy == ROW_COMPOSED || ra->strategy == ROW_HIERARCHICAL) &&
        ra->inner == ROW_A2A && ra->mesh_row)
        spread = ra->mesh_row->size;
    return (long)B * C * ra->heads >= spread;
}

// the batch's local and global row counts; every rank of the group calls this alike
static void row_attention_set_batch(RowAttention* ra, int B, int R, int C, int S, int S_global, int T_global) {
    ra->B = B;
    ra->R = R;
    ra->C = C;
    ra->S = S;
    ra->S_global = S_global;
    ra->T_global = T_global;
}

// o (B, R, C, E), lse (B*C, heads, R) for the rows held here; qkv (B, R, C, 3E)
static void row_attention_forward(RowAttention* ra, float* o, float* lse, const float* qkv) {
    switch (ra->group->size == 1 ? ROW_LOCAL : ra->strategy) { // a group of one holds whole tables
        case ROW_LOCAL: row_attention_local_forward(o, lse, qkv, ra->B, ra->R, ra->C, ra->S, ra->E, ra->heads); break;
        case ROW_ALLGATHER: allgather_attention_forward(ra, o, lse, qkv); break;
        case ROW_RING: ring_attention_forward(ra, o, lse, qkv); break;
        case ROW_A2A: a2a_attention_forward(ra, o, lse, qkv); break;
        case ROW_MESH2D: mesh2d_attention_forward(ra, o, lse, qkv); break;
        case ROW_COMPOSED:
        case ROW_HIERARCHICAL: composed_attention_forward(ra, o, lse, qkv); break;
        default: mosaic_fail("row attention strategy '%s' is not implemented", row_strategy_names[ra->strategy]);
    }
}

// dqkv (B, R, C, 3E) is overwritten
static void row_attention_backward(RowAttention* ra, float* dqkv, const float* dout, const float* o, const float* lse,
                                   const float* qkv) {
    switch (ra->group->size == 1 ? ROW_LOCAL : ra->strategy) {
        case ROW_LOCAL:
            row_attention_local_backward(dqkv, dout, o, lse, qkv, ra->B, ra->R, ra->C, ra->S, ra->E, ra->heads);
            break;
        case ROW_ALLGATHER: allgather_attention_backward(ra, dqkv, dout, o, lse, qkv); break;
        case ROW_RING: ring_attention_backward(ra, dqkv, dout, o, lse, qkv); break;
        case ROW_A2A: a2a_attention_backward(ra, dqkv, dout, o, lse, qkv); break;
        case ROW_MESH2D: mesh2d_attention_backward(ra, dqkv, dout, o, lse, qkv); break;
        case ROW_COMPOSED:
        case ROW_HIERARCHICAL: composed_attention_backward(ra, dqkv, dout, o, lse, qkv); break;
        default: mosaic_fail("row attention strategy '%s' is not implemented", row_strategy_names[ra->strategy]);
    }
}
