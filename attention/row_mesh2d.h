// Row attention on a 2-D mesh. The group's p = r x c ranks form a grid; rank k sits at
// (i, j) = (k / c, k % c) and holds row chunk k. The row group (i, *) all-gathers its queries
// (chunks i c .. i c + c - 1), the column group (*, j) all-gathers its train K/V (chunks j,
// c + j, .., (r - 1) c + j), and the rank computes the tile Q_i x KV_j: over the grid every
// (Q chunk, KV chunk) pair is computed exactly once. Each member then holds a partial
// (O, LSE) of every row of its row group over its column group's keys; an all-to-all returns
// them to the owners, which merge the c partials by log-sum-exp.
// Backward: the row group all-gathers Q, the final O, dO and LSE; the column group gathers
// K/V again; dQ is reduce-scattered over the row group, dK/dV over the column group.
// Nothing is kept from forward to backward (all layers share one scratch).
// Volume per rank per layer (N rows, Nt train rows, b bytes per float):
//   forward  (c-1)/p N C (2E + heads) + 2 (r-1)/p Nt C E   ~ (2N/r + 2Nt/c) C E b
//   backward (c-1)/p N C (4E + heads) + 4 (r-1)/p Nt C E   ~ (4N/r + 4Nt/c) C E b
// Blocks are padded to the batch's largest share, so the equal-count collectives fit.
#pragma once
#include "row_context.h"

static int mesh2d_attention_keeps_state(void) { return 0; }

typedef struct {
    // forward
    float* q_own;     // (B, R, C, E) this rank's queries
    float* q_all;     // (c, qblock) the row group's queries; block j' is (B, n_j', C, E)
    float* part_send; // (c, pblock) for owner j': O (B, n_j', C, E), then LSE (B*C, heads, n_j')
    float* part_recv; // (c, pblock) the partials of this rank's rows, one from each member
    // backward (the same memory as the forward's)
    float* bw_own;    // (bblock) this rank's Q, O, dO (B, R, C, E) each, then LSE (B*C, heads, R);
                      // after the gather, its summed dQ (B, R, C, E)
    float* bw_all;    // (c, bblock) the row group's
    float* dq_all;    // (c, qblock) dQ of the row group's queries
    // both
    float* kv_own;    // (kvblock) this rank's train K/V (B, S, C, 2E); later its summed dK/dV
    float* kv_all;    // (r, kvblock) the column group's K/V; later the tile's dK/dV per owner
    float* kv;        // (B, St, C, 2E) the same rows side by side: the tile's one key set
    float* dkv;       // (B, St, C, 2E) dK/dV of the tile
    // this batch
    int i, j, r, c;   // grid position and shape
    int rmax, smax;   // the largest row and train-row share of the group: blocks are padded to them
    int St;           // train rows of the column group, the tile's keys
    size_t qblock, pblock, bblock, kvblock; // floats per padded block
} Mesh2dBuffers;

// member j' of the row group holds chunk i c + j'; member i' of the column group chunk i' c + j
static inline int mesh2d_row_chunk(const Mesh2dBuffers* mb, int jj) { return mb->i * mb->c + jj; }
static inline int mesh2d_col_chunk(const Mesh2dBuffers* mb, int ii) { return ii * mb->c + mb->j; }

// The buffers at capacity, from base (NULL: sizing only); returns the floats they take.
// A rows region serves the forward's buffers and then the backward's (the same memory); the
// K/V region holds own K/V, r gathered blocks, the joined key set and its dK/dV.
static size_t mesh2d_layout(Mesh2dBuffers* mb, float* base, RowCapacity cap, int p) {
    const size_t rows = row_cap_cells(cap, p), kv_block = row_cap_kv_floats(cap, p);
    const size_t c = cap.mesh_c, r = cap.mesh_r;
    ScratchCursor fw = {base, 0};
    mb->q_own = scratch_take(&fw, rows * cap.E);
    mb->q_all = scratch_take(&fw, c * rows * cap.E);
    mb->part_send = scratch_take(&fw, c * rows * (cap.E + cap.heads));
    mb->part_recv = scratch_take(&fw, c * rows * (cap.E + cap.heads));
    ScratchCursor bw = {base, 0};
    mb->bw_own = scratch_take(&bw, rows * (3 * cap.E + cap.heads));
    mb->bw_all = scratch_take(&bw, c * rows * (3 * cap.E + cap.heads));
    mb->dq_all = scratch_take(&bw, c * rows * cap.E);
    ScratchCursor cur = {base, fw.used > bw.used ? fw.used : bw.used};
    mb->kv_own = scratch_take(&cur, kv_block);
    mb->kv_all = scratch_take(&cur, r * kv_block);
    mb->kv = scratch_take(&cur, r * kv_block);
    mb->dkv = scratch_take(&cur, r * kv_block);
    return cur.used;
}

static size_t mesh2d_attention_scratch_floats(RowCapacity cap, int p) {
    Mesh2dBuffers mb;
    return mesh2d_layout(&mb, NULL, cap, p);
}

static Mesh2dBuffers mesh2d_buffers(const RowAttention* ra) {
    const int p = ra->group->size, k = ra->group->rank;
    if (!ra->mesh_row || !ra->mesh_col)
        mosaic_fail("row attention 'mesh2d' needs the group as an r x c grid (mesh_row and mesh_col), "
                    "but none was given");
    Mesh2dBuffers mb;
    mb.r = ra->mesh_col->size;
    mb.c = ra->mesh_row->size;
    mb.i = k / mb.c;
    mb.j = k % mb.c;
    MOSAIC_CHECK(mb.r * mb.c == p && ra->mesh_row->rank == mb.j && ra->mesh_col->rank == mb.i,
                 "mesh2d: mesh_row/mesh_col are not the r x c grid of the group (rank k at (k / c, k % c))");
    MOSAIC_CHECK(mb.r == ra->cap.mesh_r && mb.c == ra->cap.mesh_c, "mesh2d: grid differs from the one sized for");
    MOSAIC_CHECK(ra->R == row_share(ra, k) && ra->S == row_train_share(ra, k), "mesh2d: local rows are not share k");
    mb.rmax = mb.smax = 0;
    for (int m = 0; m < p; m++) {
        mb.rmax = row_share(ra, m) > mb.rmax ? row_share(ra, m) : mb.rmax;
        mb.smax = row_train_share(ra, m) > mb.smax ? row_train_share(ra, m) : mb.smax;
    }
    MOSAIC_CHECK(ra->B <= ra->cap.max_B && ra->C <= ra->cap.max_C && mb.rmax <= row_cap_block(ra->cap, p) &&
                     mb.smax <= row_cap_train_block(ra->cap, p),
                 "mesh2d: batch larger than the scratch was sized for");
    mb.St = 0;
    for (int ii = 0; ii < mb.r; ii++) mb.St += row_train_share(ra, mesh2d_col_chunk(&mb, ii));
    const size_t rows = (size_t)ra->B * mb.rmax * ra->C;
    mb.qblock = rows * ra->E;
    mb.pblock = rows * (ra->E + ra->heads);
    mb.bblock = rows * (3 * ra->E + ra->heads);
    mb.kvblock = (size_t)ra->B * mb.smax * ra->C * 2 * ra->E;

    MOSAIC_CHECK(mesh2d_layout(&mb, ra->scratch, ra->cap, p) <= ra->scratch_floats, "mesh2d: scratch too small");
    return mb;
}

// gather the column group's train K/V and lay the r blocks side by side along rows:
// kv (B, St, C, 2E), block i' at rows [sum of earlier shares, + its share)
static void mesh2d_gather_kv(const RowAttention* ra, const Mesh2dBuffers* mb, const float* qkv) {
    const long cell = (long)ra->C * 2 * ra->E;
    pack_kv_rows(mb->kv_own, qkv, ra->B, ra->R, ra->C, ra->E, 0, ra->S);
    comm_allgather(ra->mesh_col, mb->kv_all, mb->kv_own, mb->kvblock);
    for (int ii = 0, row0 = 0; ii < mb->r; ii++) {
        const int s = row_train_share(ra, mesh2d_col_chunk(mb, ii));
        copy_blocks(mb->kv + row0 * cell, mb->St * cell, mb->kv_all + ii * mb->kvblock, s * cell, ra->B, s * cell);
        row0 += s;
    }
}

// the reverse for the gradient: block i' of kv_all (B, s_i', C, 2E) = its rows of dkv,
// reduce-scattered over the column group, then added to this rank's k and v
static void mesh2d_return_dkv(const RowAttention* ra, const Mesh2dBuffers* mb, float* dqkv) {
    const long cell = (long)ra->C * 2 * ra->E;
    for (int ii = 0, row0 = 0; ii < mb->r; ii++) {
        const int s = row_train_share(ra, mesh2d_col_chunk(mb, ii));
        copy_blocks(mb->kv_all + ii * mb->kvblock, s * cell, mb->dkv + row0 * cell, mb->St * cell, ra->B, s * cell);
        row0 += s;
    }
    comm_reduce_scatter_sum(ra->mesh_col, mb->kv_own, mb->kv_all, mb->kvblock);
    unpack_kv_rows_add(dqkv, mb->kv_own, ra->B, ra->R, ra->C, ra->E, 0, ra->S);
}

// o (B, R, C, E), lse (B*C, heads, R) for this rank's rows; qkv (B, R, C, 3E)
static void mesh2d_attention_forward(RowAttention* ra, float* o, float* lse, const float* qkv) {
    Mesh2dBuffers mb = mesh2d_buffers(ra);
    const int E = ra->E, C = ra->C, B = ra->B;
    // the row group's queries, each block tight (B, n, C, E)
    copy_blocks(mb.q_own, E, qkv, 3 * E, (long)B * ra->R * C, E);
    comm_allgather(ra->mesh_row, mb.q_all, mb.q_own, mb.qblock);
    mesh2d_gather_kv(ra, &mb, qkv);
    // the tile: every gathered query chunk against the column group's keys, straight into
    // the block that goes back to the chunk's owner
    for (int jj = 0; jj < mb.c; jj++) {
        const int n = row_share(ra, mesh2d_row_chunk(&mb, jj));
        float* o_part = mb.part_send + jj * mb.pblock;
        float* lse_part = o_part + (size_t)B * mb.rmax * C * E;
        flash_attention_forward(o_part, lse_part, mb.q_all + jj * mb.qblock, mb.kv, mb.kv + E,
                                row_axis_layout(n, C, E), row_axis_layout(mb.St, C, 2 * E), row_axis_layout(n, C, E),
                                B * C, ra->heads, n, mb.St, E / ra->heads, row_attention_scale(ra));
    }
    comm_alltoall(ra->mesh_row, mb.part_recv, mb.part_send, mb.pblock);
    // merge the c partials of this rank's rows, in member order (fixed, so the bits are too);
    // a member whose column group holds no train rows sent lse = -inf, which merges away
    const long lse_offset = (long)B * mb.rmax * C * E;
    copy_blocks(o, C * E, mb.part_recv, C * E, (long)B * ra->R, C * E);
    copy_blocks(lse, 0, mb.part_recv + lse_offset, 0, 1, (long)B * C * ra->heads * ra->R);
    for (int jj = 1; jj < mb.c; jj++) {
        const float* o_part = mb.part_recv + jj * mb.pblock;
        row_merge(ra, o, lse, o_part, o_part + lse_offset);
    }
}

// dqkv (B, R, C, 3E) is overwritten. The forward's gathered blocks are gone (the layers share
// the scratch), so the gathers run again.
static void mesh2d_attention_backward(RowAttention* ra, float* dqkv, const float* dout, const float* o,
                                      const float* lse, const float* qkv) {
    Mesh2dBuffers mb = mesh2d_buffers(ra);
    const int E = ra->E, C = ra->C, B = ra->B, heads = ra->heads;
    const long rows = (long)B * ra->R, block_rows = (long)B * mb.rmax * C; // cells: this rank's, a padded block's
    // this rank's Q, O, dO, LSE into one block: one gather over the row group
    copy_blocks(mb.bw_own, E, qkv, 3 * E, rows * C, E);
    copy_blocks(mb.bw_own + block_rows * E, C * E, o, C * E, rows, C * E);
    copy_blocks(mb.bw_own + 2 * block_rows * E, C * E, dout, C * E, rows, C * E);
    copy_blocks(mb.bw_own + 3 * block_rows * E, 0, lse, 0, 1, (long)B * C * heads * ra->R);
    comm_allgather(ra->mesh_row, mb.bw_all, mb.bw_own, mb.bblock);
    mesh2d_gather_kv(ra, &mb, qkv);

    device_memset_zero(mb.dq_all, mb.c * mb.qblock * sizeof(float));
    device_memset_zero(mb.dkv, (size_t)B * mb.St * C * 2 * E * sizeof(float));
    for (int jj = 0; jj < mb.c; jj++) { // sequential: the chunks all add into dkv
        const int n = row_share(ra, mesh2d_row_chunk(&mb, jj));
        const float* q = mb.bw_all + jj * mb.bblock;
        const float* o_jj = q + block_rows * E;
        const float* do_jj = q + 2 * block_rows * E;
        const float* lse_jj = q + 3 * block_rows * E;
        flash_attention_backward(mb.dq_all + jj * mb.qblock, mb.dkv, mb.dkv + E, do_jj, o_jj, lse_jj, q, mb.kv,
                                 mb.kv + E, row_axis_layout(n, C, E), row_axis_layout(mb.St, C, 2 * E),
                                 row_axis_layout(n, C, E), B * C, heads, n, mb.St, E / heads,
                                 row_attention_scale(ra));
    }
    // dQ back to the owners over the row group, dK/dV over the column group
    device_memset_zero(dqkv, (size_t)rows * C * 3 * E * sizeof(float));
    float* dq_own = mb.bw_own; // (B, R, C, E); the packed block is spent
    comm_reduce_scatter_sum(ra->mesh_row, dq_own, mb.dq_all, mb.qblock);
    copy_blocks(dqkv, 3 * E, dq_own, E, rows * C, E);
    mesh2d_return_dkv(ra, &mb, dqkv);
}
