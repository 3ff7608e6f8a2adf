// What every row-axis strategy shares: the context of one layer's row attention on a rank
// whose rows are one share of a sequence-parallel group, and the carving of its scratch.
//
// Rank k of p holds, of every dataset, the k-th share of the train rows followed by the
// k-th share of the test rows (dataloader/shard_batch.h), so locally rows [0, S) are train rows
// and the K/V block of rank k is rows [0, S_k) of its q/k/v buffer.
#pragma once
#include "attention_ops.h"
#include "axis_attention.h"
#include "../comm/comm.h"
#include "../dataloader/shard_batch.h"

typedef enum {
    ROW_LOCAL,        // whole tables on this rank (p = 1)
    ROW_ALLGATHER,    // gather all train K/V, reduce-scatter dK/dV
    ROW_RING,         // K/V blocks travel around the ring, overlapped with compute
    ROW_MESH2D,       // r x c grid: Q over the row group, K/V over the column group
    ROW_A2A,          // all-to-all to (dataset, column, head) problems and back
    ROW_COMPOSED,     // a2a over one mesh dimension x ring over the other
    ROW_HIERARCHICAL, // composed, the dimensions being node-local ranks and nodes
    ROW_AUTO,         // chosen by the cost model at start-up
    ROW_NUM_STRATEGIES
} RowStrategy;

static const char* row_strategy_names[ROW_NUM_STRATEGIES] = {"local", "allgather", "ring", "mesh2d", "a2a",
                                                             "composed", "hierarchical", "auto"};

static inline int row_strategy_from_name(const char* name) {
    for (int i = 0; i < ROW_NUM_STRATEGIES; i++)
        if (!strcmp(name, row_strategy_names[i])) return i;
    return -1;
}

// sizes the buffers are built for
typedef struct {
    int max_B;      // datasets per rank
    int max_R;      // rows of a whole table (global)
    int max_C;      // columns
    int E, heads;
    int mesh_r, mesh_c; // grid of the group for the 2-D strategies (1 x p when there is none)
} RowCapacity;

typedef struct {
    RowStrategy strategy;
    Comm* group;  // the sequence-parallel group: rows are split over its p ranks
    int overlap;  // 1: post transfers before the compute they hide behind; 0: wait at once
    // the 2-D view of the group used by mesh2d, composed and hierarchical: rank k sits at
    // (i, j) = (k / c, k % c); mesh_row = the c ranks (i, *), contiguous in k (for
    // hierarchical: the ranks of one node); mesh_col = the r ranks (*, j)
    Comm* mesh_row;
    Comm* mesh_col;
    RowStrategy inner; // composed/hierarchical: strategy over mesh_row (a2a or allgather)
    RowStrategy outer; // composed/hierarchical: strategy over mesh_col (ring or allgather)
    // member k of the group holds the unit consecutive shares [k * unit, (k + 1) * unit) of
    // the rows split into size * unit shares (1, unless a composed strategy runs this one
    // over groups of ranks)
    int unit;
    // the current batch: local sizes, and the global row counts that fix every rank's share
    int B, R, C, S, E, heads;
    int S_global, T_global;
    // buffers owned by the strategy, sized once by its layout function from a NULL base
    float* scratch;
    size_t scratch_floats;
    RowCapacity cap;
} RowAttention;

// Every strategy lays its buffers out with one function from a base pointer and returns the
// floats they take: with base NULL it only sizes them (the pointers stay NULL), so the size
// allocated and the layout used can never disagree.
typedef struct {
    float* base; // NULL: sizing only
    size_t used; // floats handed out so far
} ScratchCursor;

// the next `floats` floats of the layout
static inline float* scratch_take(ScratchCursor* cur, size_t floats) {
    float* p = cur->base ? cur->base + cur->used : NULL;
    cur->used += floats;
    return p;
}

// train rows held by member k of the group, and its rows in all
static inline int row_train_share(const RowAttention* ra, int k) {
    const int shares = ra->group->size * ra->unit;
    return share_start(ra->S_global, shares, (k + 1) * ra->unit) - share_start(ra->S_global, shares, k * ra->unit);
}
static inline int row_share(const RowAttention* ra, int k) {
    const int shares = ra->group->size * ra->unit;
    return row_train_share(ra, k) + share_start(ra->T_global, shares, (k + 1) * ra->unit) -
           share_start(ra->T_global, shares, k * ra->unit);
}
// the largest of those over the group, for buffer sizes
static inline int row_cap_train_block(RowCapacity cap, int p) { return ceil_div(cap.max_R, p); }
static inline int row_cap_block(RowCapacity cap, int p) { return 2 * ceil_div(cap.max_R, p) + 1; }
// floats of a member's train K/V block (B, train rows, C, 2E), and cells (B, rows, C) of its
// rows, at capacity
static inline size_t row_cap_kv_floats(RowCapacity cap, int p) {
    return (size_t)cap.max_B * row_cap_train_block(cap, p) * cap.max_C * 2 * cap.E;
}
static inline size_t row_cap_cells(RowCapacity cap, int p) { return (size_t)cap.max_B * row_cap_block(cap, p) * cap.max_C; }

// a partial output (B, R, C, E) and its lse (B*C, heads, R) at capacity, merged into the running ones
static inline void scratch_take_partial(ScratchCursor* cur, RowCapacity cap, int p, float** o_part, float** lse_part) {
    *o_part = scratch_take(cur, row_cap_cells(cap, p) * cap.E);
    *lse_part = scratch_take(cur, row_cap_cells(cap, p) * cap.heads);
}

static inline float row_attention_scale(const RowAttention* ra) { return 1.0f / sqrtf((float)(ra->E / ra->heads)); }

// attention of this rank's queries (all its rows) against one K/V block kv (B, rows, C, 2E)
static inline void row_block_forward(const RowAttention* ra, float* o, float* lse, const float* qkv, const float* kv,
                                     int kv_rows) {
    const int E = ra->E, d = E / ra->heads;
    flash_attention_forward(o, lse, qkv, kv, kv + E, row_axis_layout(ra->R, ra->C, 3 * E),
                            row_axis_layout(kv_rows, ra->C, 2 * E), row_axis_layout(ra->R, ra->C, E), ra->B * ra->C,
                            ra->heads, ra->R, kv_rows, d, row_attention_scale(ra));
}

// the backward of row_block_forward: dqkv's q part += dQ, dkv (B, rows, C, 2E) += dK, dV
static inline void row_block_backward(const RowAttention* ra, float* dqkv, float* dkv, const float* dout,
                                      const float* o, const float* lse, const float* qkv, const float* kv,
                                      int kv_rows) {
    const int E = ra->E, d = E / ra->heads;
    flash_attention_backward(dqkv, dkv, dkv + E, dout, o, lse, qkv, kv, kv + E, row_axis_layout(ra->R, ra->C, 3 * E),
                             row_axis_layout(kv_rows, ra->C, 2 * E), row_axis_layout(ra->R, ra->C, E), ra->B * ra->C,
                             ra->heads, ra->R, kv_rows, d, row_attention_scale(ra));
}

// merge a block's partial result into the running one (both in the local o layout)
static inline void row_merge(const RowAttention* ra, float* o, float* lse, const float* o_part, const float* lse_part) {
    AxisLayout layout = row_axis_layout(ra->R, ra->C, ra->E);
    lse_merge(o, lse, o_part, lse_part, layout, layout, ra->B * ra->C, ra->heads, ra->R, ra->E / ra->heads);
}
