// Composed and hierarchical row attention: one strategy per dimension of a grid.
//
// The group is an r x c grid: rank k sits at (i, j) = (k / c, k % c); mesh_row = the c ranks
// (i, *) (contiguous k; for hierarchical, the ranks of one node), mesh_col = the r ranks (*, j).
// Row group i = the ranks (i, *) = the c shares [i c, (i + 1) c) of the rows.
//
// inner = a2a: an all-to-all over mesh_row gives member j the problems of share j of c, with the
//   whole rows of row group i (row_a2a.h); the outer strategy (ring or allgather) then runs over
//   mesh_col on that virtual table through an inner RowAttention context (unit = c), and an
//   all-to-all returns o. Plain a2a is the case r = 1 (the virtual table is attended locally).
//   Volume per rank per layer, forward: the a2a's ~ 4 (c-1)/c (N/p) C E b, plus the outer
//   strategy's on blocks of (1/c) of the problems and c shares of the train rows:
//   2 (r-1)/p Nt C E b (ring: sent in r-1 steps; allgather: at once).
// inner = allgather: the train K/V of row group i are all-gathered over mesh_row, then
//   - outer = ring: those row-group blocks travel the ring over mesh_col (each rank's own
//     queries against each, merged by lse); the backward carries dK/dV accumulators around the
//     ring, then reduce-scatters the row group's over mesh_row. Volume forward
//     2 (c-1)/p Nt C E b + 2 (r-1)/r Nt C E b.
//   - outer = allgather (or r = 1): gathering within rows, then across, gathers everything:
//     it is allgather over the whole group (row_allgather.h), MPI picking the route.
//   - c = 1: the row gathers are empty: it is ring over the whole group (row_ring.h).
// Keeps state (the a2a's virtual table), so every layer has its own scratch.
#pragma once
#include "row_a2a.h"

// the dispatcher asks: does a layer's forward leave state in its scratch for its backward?
static int composed_attention_keeps_state(void) { return 1; }

// ----------------------------------------------------------------------------
// inner = allgather, outer = ring: the "group ring"

typedef struct {
    float* parts;        // (c, member block) the members' K/V as gathered, later their dK/dV
    float* own;          // (member block) this rank's K/V (B, S, C, 2E), later its summed dK/dV
    float* kv[2];        // (row-group block) a row group's K/V (B, S_g, C, 2E), travelling
    float* dkv_send[2];  // (row-group block) dK/dV accumulators
    float* dkv_recv[2];
    float* o_part;       // (B, R, C, E)
    float* lse_part;     // (B*C, heads, R)
    size_t member_block; // floats of one padded member block of this batch
} GroupRingBuffers;

// c + 1 member blocks, 6 row-group blocks (c member blocks each), one partial output and lse
// at capacity, from base (NULL: sizing only); returns the floats they take
static size_t group_ring_layout(GroupRingBuffers* gb, float* base, RowCapacity cap, int p, int c) {
    const size_t member = row_cap_kv_floats(cap, p);
    ScratchCursor cur = {base, 0};
    gb->parts = scratch_take(&cur, c * member);
    gb->own = scratch_take(&cur, member);
    for (int i = 0; i < 2; i++) gb->kv[i] = scratch_take(&cur, c * member);
    for (int i = 0; i < 2; i++) gb->dkv_send[i] = scratch_take(&cur, c * member);
    for (int i = 0; i < 2; i++) gb->dkv_recv[i] = scratch_take(&cur, c * member);
    scratch_take_partial(&cur, cap, p, &gb->o_part, &gb->lse_part);
    return cur.used;
}

static GroupRingBuffers group_ring_buffers(const RowAttention* ra, const MemberRows* mr) {
    GroupRingBuffers gb;
    MOSAIC_CHECK(group_ring_layout(&gb, ra->scratch, ra->cap, ra->group->size, mr->count) <= ra->scratch_floats,
                 "composed scratch sized for another grid");
    // blocks padded to the row group's largest, its first member's, for one equal-count collective
    gb.member_block = (size_t)ra->B * mr->train[0] * ra->C * 2 * ra->E;
    return gb;
}

// row counts of the row groups: member i of mesh_col stands for the c shares of row group i
static RowAttention row_group_counts(const RowAttention* ra) {
    RowAttention grp = *ra;
    grp.group = ra->mesh_col;
    grp.unit = ra->mesh_row->size * ra->unit;
    return grp;
}

// kv (B, S_g, C, 2E) = the train K/V of the whole row group, member m's at rows vtrain[m]
static void gather_row_group_kv(RowAttention* ra, float* kv, const float* qkv, const MemberRows* mr, int S_g,
                                const GroupRingBuffers* gb) {
    const long row_floats = (long)ra->C * 2 * ra->E;
    pack_kv_rows(gb->own, qkv, ra->B, ra->R, ra->C, ra->E, 0, ra->S);
    comm_allgather(ra->mesh_row, gb->parts, gb->own, gb->member_block);
    for (int m = 0; m < mr->count; m++)
        copy_blocks(kv + mr->vtrain[m] * row_floats, S_g * row_floats, gb->parts + m * gb->member_block,
                    mr->train[m] * row_floats, ra->B, mr->train[m] * row_floats);
}

static RingPass group_ring_pass(RowAttention* ra, const RowAttention* grp, const GroupRingBuffers* gb) {
    RingPass rp = {ra->mesh_col, grp, {gb->kv[0], gb->kv[1]}, {gb->dkv_send[0], gb->dkv_send[1]},
                   {gb->dkv_recv[0], gb->dkv_recv[1]}, gb->o_part, gb->lse_part};
    return rp;
}

// one pass of the group ring: this rank's row group, its buffers, and the ring over columns
typedef struct {
    MemberRows mr;       // the row group's members and their rows
    int S_g, R_g;        // train rows and rows of the whole row group
    GroupRingBuffers gb;
    RowAttention grp;    // row counts per column member (unit = c); rp points at it
    RingPass rp;
} GroupRing;

// fills gr and gathers the row group's train K/V into the first travelling block
static void group_ring_start(GroupRing* gr, RowAttention* ra, const float* qkv) {
    member_rows(&gr->mr, &gr->S_g, &gr->R_g, ra, ra->mesh_col->rank * ra->mesh_row->size, ra->mesh_row->size);
    gr->gb = group_ring_buffers(ra, &gr->mr);
    gr->grp = row_group_counts(ra);
    gr->rp = group_ring_pass(ra, &gr->grp, &gr->gb);
    gather_row_group_kv(ra, gr->gb.kv[0], qkv, &gr->mr, gr->S_g, &gr->gb);
}

static void group_ring_forward(RowAttention* ra, float* o, float* lse, const float* qkv) {
    GroupRing gr;
    group_ring_start(&gr, ra, qkv);
    ring_forward_blocks(ra, &gr.rp, o, lse, qkv);
}

// dqkv (B, R, C, 3E) is overwritten
static void group_ring_backward(RowAttention* ra, float* dqkv, const float* dout, const float* o, const float* lse,
                                const float* qkv) {
    GroupRing gr;
    group_ring_start(&gr, ra, qkv);
    device_memset_zero(dqkv, (size_t)ra->B * ra->R * ra->C * 3 * ra->E * sizeof(float));
    const float* dkv = ring_backward_blocks(ra, &gr.rp, dqkv, dout, o, lse, qkv);
    // our row group's dK/dV from every query of this column: split into the members' parts
    // and sum them over the row group (the other columns), each member receiving its own
    const long row_floats = (long)ra->C * 2 * ra->E;
    for (int m = 0; m < gr.mr.count; m++)
        copy_blocks(gr.gb.parts + m * gr.gb.member_block, gr.mr.train[m] * row_floats,
                    dkv + gr.mr.vtrain[m] * row_floats, gr.S_g * row_floats, ra->B, gr.mr.train[m] * row_floats);
    comm_reduce_scatter_sum(ra->mesh_row, gr.gb.own, gr.gb.parts, gr.gb.member_block);
    unpack_kv_rows_add(dqkv, gr.gb.own, ra->B, ra->R, ra->C, ra->E, 0, ra->S);
}

// ----------------------------------------------------------------------------
// composed / hierarchical

static size_t composed_attention_scratch_floats(RowCapacity cap, int p) {
    const int c = cap.mesh_c >= 1 && p % cap.mesh_c == 0 ? cap.mesh_c : p;
    A2aBuffers ab;
    GroupRingBuffers gb;
    size_t n = a2a_layout(&ab, NULL, cap, p, c);
    size_t group_ring = group_ring_layout(&gb, NULL, cap, p, c);
    size_t gather = allgather_attention_scratch_floats(cap, p), ring = ring_attention_scratch_floats(cap, p);
    if (group_ring > n) n = group_ring;
    if (gather > n) n = gather;
    if (ring > n) n = ring;
    return n;
}

// the grid of this call; fails clearly on a missing or inconsistent one
static void composed_check(const RowAttention* ra) {
    const char* name = row_strategy_names[ra->strategy];
    if (ra->mesh_row == NULL || ra->mesh_col == NULL)
        mosaic_fail("row attention '%s' needs the group as a grid (mesh_row x mesh_col)", name);
    const int c = ra->mesh_row->size, r = ra->mesh_col->size;
    if (r * c != ra->group->size || ra->group->rank != ra->mesh_col->rank * c + ra->mesh_row->rank)
        mosaic_fail("row attention '%s': the %d x %d grid does not lay out the group of %d ranks as k = i c + j", name,
                    r, c, ra->group->size);
    MOSAIC_CHECK(c == ra->cap.mesh_c && r == ra->cap.mesh_r, "row attention scratch sized for another grid");
    if (ra->inner != ROW_A2A && ra->inner != ROW_ALLGATHER)
        mosaic_fail("row attention '%s': the strategy over mesh_row must be a2a or allgather, not '%s'", name,
                    row_strategy_names[ra->inner]);
    if (ra->outer != ROW_RING && ra->outer != ROW_ALLGATHER)
        mosaic_fail("row attention '%s': the strategy over mesh_col must be ring or allgather, not '%s'", name,
                    row_strategy_names[ra->outer]);
}

// o (B, R, C, E), lse (B*C, heads, R) for this rank's rows; qkv (B, R, C, 3E)
static void composed_attention_forward(RowAttention* ra, float* o, float* lse, const float* qkv) {
    composed_check(ra);
    const int c = ra->mesh_row->size, r = ra->mesh_col->size;
    if (ra->inner == ROW_A2A) a2a_forward_over(ra, ra->mesh_row, ra->mesh_col->rank * c, ra->mesh_col, o, lse, qkv);
    else if (ra->outer == ROW_ALLGATHER || r == 1) allgather_attention_forward(ra, o, lse, qkv);
    else if (c == 1) ring_attention_forward(ra, o, lse, qkv);
    else group_ring_forward(ra, o, lse, qkv);
}

// dqkv (B, R, C, 3E) is overwritten
static void composed_attention_backward(RowAttention* ra, float* dqkv, const float* dout, const float* o,
                                        const float* lse, const float* qkv) {
    composed_check(ra);
    const int c = ra->mesh_row->size, r = ra->mesh_col->size;
    if (ra->inner == ROW_A2A) a2a_backward_over(ra, ra->mesh_row, ra->mesh_col->rank * c, ra->mesh_col, dqkv, dout);
    else if (ra->outer == ROW_ALLGATHER || r == 1) allgather_attention_backward(ra, dqkv, dout, o, lse, qkv);
    else if (c == 1) ring_attention_backward(ra, dqkv, dout, o, lse, qkv);
    else group_ring_backward(ra, dqkv, dout, o, lse, qkv);
}
