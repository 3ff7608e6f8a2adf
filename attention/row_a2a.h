// All-to-all row attention (head/column parallel, generalised).
//
// The independent problems of row attention are the (dataset, column, head) triples,
// t = (b * C + c) * heads + h, n = B * C * heads of them. Member m of a group of c ranks owns
// problems [share_start(n, c, m), + share_count(n, c, m)) (p <= n; uneven splits allowed).
// Forward: one all-to-all turns the row-sharded q (all rows) and k, v (train rows) into whole
// rows of the owned problems, arranged as a virtual table (n_own, R_v, 1, 3d): its datasets are
// the owned problems (B' = n_own, C' = 1, E' = d, heads' = 1) and its rows the train rows of
// every member in member order, then their test rows, so rows [0, S_v) are the train rows as
// the kernels expect. Attention runs on the virtual table, a second all-to-all returns o and
// lse to the rows' owners.
// Backward: dO goes to the problems' owners, the flash backward runs there on the virtual
// q, k, v, o, lse KEPT from the forward (so every layer has its own scratch: keeps_state = 1;
// recomputing would cost the q, k, v exchange again), and dq, dk, dv return.
// The same code serves composed/hierarchical (row_composed.h): the all-to-all then runs over
// the row group of a grid, and the virtual table's attention over the column group by an
// outer strategy (ring or allgather) instead of locally.
// Volume per rank per layer, group of c, R_k rows and S_k train rows here, floats of b bytes:
// forward (c-1)/c (B C E (R_k + 2 S_k) + B C (E + heads) R_k) b ~ 4 (c-1)/c (N/p) C E b;
// backward (c-1)/c B C E (2 R_k + 2 S_k) b, the same order.
#pragma once
#include "row_context.h"
#include "row_ring.h"
#include "row_allgather.h"
#include "member_rows.h"

// the dispatcher asks: does a layer's forward leave state in its scratch for its backward?
static int a2a_attention_keeps_state(void) { return 1; }

// ----------------------------------------------------------------------------
// sizes: the p ranks as r x c, the all-to-all over groups of c (plain a2a: c = p, r = 1)

typedef struct {
    size_t qkv_v, o_v, lse_v; // the virtual table, kept from forward to backward
    size_t xfer;              // one exchange buffer (there are two)
    size_t outer;             // the outer strategy's scratch (r > 1)
    long max_R_v;             // rows of a virtual table
    RowCapacity vcap;         // capacity of the virtual table, for the outer strategy
} A2aSizes;

static A2aSizes a2a_sizes(RowCapacity cap, int p, int c) {
    const int r = p / c, d = cap.E / cap.heads;
    const long n = (long)cap.max_B * cap.max_C * cap.heads; // problems of a rank's datasets
    const long n_own = (n + c - 1) / c;
    const int blk = ceil_div(cap.max_R, p);                // most train rows, or test rows, of a rank
    const long R_v = cap.max_R < 2 * c * blk ? cap.max_R : 2 * c * blk; // rows of c ranks
    A2aSizes sz;
    sz.max_R_v = R_v;
    sz.qkv_v = (size_t)n_own * R_v * 3 * d;
    sz.o_v = (size_t)n_own * R_v * d;
    sz.lse_v = (size_t)n_own * R_v;
    // row side: per problem R + 2S <= 4 blk rows of d (o, lse: 2 blk of d + 1, less); problem
    // side: n_own (R_v + 2 S_v) d <= 3 n_own R_v d, which also holds dqkv_v in the backward
    const size_t row_side = (size_t)n * 4 * blk * d, problem_side = (size_t)n_own * 3 * R_v * d;
    sz.xfer = row_side > problem_side ? row_side : problem_side;
    // the outer strategy sees member i of the column hold c shares: ceil(max_R / r) = c blk
    // bounds its train block, 2 c blk + 1 its rows
    RowCapacity vcap = {(int)n_own, p * blk, 1, d, 1, 1, r};
    sz.vcap = vcap;
    sz.outer = 0;
    if (r > 1) {
        size_t ring = ring_attention_scratch_floats(vcap, r), gather = allgather_attention_scratch_floats(vcap, r);
        sz.outer = ring > gather ? ring : gather;
    }
    return sz;
}

typedef struct {
    float* qkv_v;  // (n_own, R_v, 1, 3d) q, k, v of the owned problems (k, v of train rows only)
    float* o_v;    // (n_own, R_v, 1, d)
    float* lse_v;  // (n_own, 1, R_v)
    float* send;   // exchange buffers; the backward also holds dO_v in send, dqkv_v in recv
    float* recv;
    float* outer;  // the outer strategy's scratch
    A2aSizes sz;
} A2aBuffers;

// the buffers of an all-to-all over groups of c at capacity, from base (NULL: sizing only);
// returns the floats they take
static size_t a2a_layout(A2aBuffers* ab, float* base, RowCapacity cap, int p, int c) {
    ab->sz = a2a_sizes(cap, p, c);
    ScratchCursor cur = {base, 0};
    ab->qkv_v = scratch_take(&cur, ab->sz.qkv_v);
    ab->o_v = scratch_take(&cur, ab->sz.o_v);
    ab->lse_v = scratch_take(&cur, ab->sz.lse_v);
    ab->send = scratch_take(&cur, ab->sz.xfer);
    ab->recv = scratch_take(&cur, ab->sz.xfer);
    ab->outer = scratch_take(&cur, ab->sz.outer);
    return cur.used;
}

static size_t a2a_attention_scratch_floats(RowCapacity cap, int p) {
    A2aBuffers ab;
    return a2a_layout(&ab, NULL, cap, p, p);
}

static A2aBuffers a2a_buffers(const RowAttention* ra, int c) {
    A2aBuffers ab;
    MOSAIC_CHECK(a2a_layout(&ab, ra->scratch, ra->cap, ra->group->size, c) <= ra->scratch_floats,
                 "a2a scratch sized for another grid");
    return ab;
}

// ----------------------------------------------------------------------------
// the plan of one call: which problems are owned here, where every member's rows go

// the rows of members k0 .. k0 + c - 1 of ra->group and where they sit in their virtual table;
// *S_v, *R_v = its train rows and all its rows
static void member_rows(MemberRows* mr, int* S_v, int* R_v, const RowAttention* ra, int k0, int c) {
    if (c > A2A_MAX_MEMBERS) mosaic_fail("row attention over %d ranks per group: at most %d", c, (int)A2A_MAX_MEMBERS);
    mr->count = c;
    int train = 0, rows = 0;
    for (int m = 0; m < c; m++) {
        mr->train[m] = row_train_share(ra, k0 + m);
        mr->rows[m] = row_share(ra, k0 + m);
        mr->vtrain[m] = train;
        train += mr->train[m];
        rows += mr->rows[m];
    }
    for (int m = 0, test = train; m < c; m++) {
        mr->vtest[m] = test;
        test += mr->rows[m] - mr->train[m];
    }
    *S_v = train;
    *R_v = rows;
}

typedef struct {
    Comm* g;          // the group the all-to-all runs over: members k0 .. k0 + c - 1 of ra->group
    int k0;
    int n, n_own, d;  // problems: all, owned here; head size
    int S_v, R_v;     // rows of the virtual table: train rows, all rows
    MemberRows mr;
} A2aPlan;

static void a2a_plan(A2aPlan* pl, const RowAttention* ra, Comm* g, int k0, const A2aBuffers* ab) {
    const int c = g->size;
    pl->g = g;
    pl->k0 = k0;
    pl->d = ra->E / ra->heads;
    pl->n = ra->B * ra->C * ra->heads;
    if (pl->n < c)
        mosaic_fail("row attention a2a spreads the (dataset, column, head) problems over %d ranks, but this batch "
                    "has only %d (B %d x C %d x heads %d): use fewer ranks in the group, or another strategy",
                    c, pl->n, ra->B, ra->C, ra->heads);
    pl->n_own = share_count(pl->n, c, g->rank);
    member_rows(&pl->mr, &pl->S_v, &pl->R_v, ra, k0, c);
    MOSAIC_CHECK(ra->R == pl->mr.rows[g->rank] && ra->S == pl->mr.train[g->rank],
                 "the rows held here are not this rank's share of the group");
    MOSAIC_CHECK(pl->n_own <= ab->sz.vcap.max_B && pl->R_v <= ab->sz.max_R_v &&
                     (size_t)pl->n * (ra->R + 2 * ra->S) * pl->d <= ab->sz.xfer,
                 "batch larger than the row-attention capacity");
}

// counts and offsets of one all-to-all between the rows and the problems
typedef struct {
    int send_counts[A2A_MAX_MEMBERS], send_offsets[A2A_MAX_MEMBERS];
    int recv_counts[A2A_MAX_MEMBERS], recv_offsets[A2A_MAX_MEMBERS];
} A2aCounts;

// every problem carries a floats per row of a member and b more per train row;
// to_problems: this rank's rows are sent and its problems received, else the reverse
static void a2a_counts(A2aCounts* ct, const A2aPlan* pl, int a, int b, int to_problems) {
    const MemberRows* mr = &pl->mr;
    const int c = mr->count, me = pl->g->rank;
    int* row_counts = to_problems ? ct->send_counts : ct->recv_counts;
    int* row_offsets = to_problems ? ct->send_offsets : ct->recv_offsets;
    int* problem_counts = to_problems ? ct->recv_counts : ct->send_counts;
    int* problem_offsets = to_problems ? ct->recv_offsets : ct->send_offsets;
    // row side: (n, chunk) in problem order; member m's problems are consecutive
    const long row_chunk = (long)mr->rows[me] * a + (long)mr->train[me] * b;
    MOSAIC_CHECK((long)pl->n * row_chunk <= INT32_MAX, "all-to-all too large for one MPI call");
    long offset = 0;
    for (int m = 0; m < c; m++) {
        row_counts[m] = (int)(share_count(pl->n, c, m) * row_chunk);
        row_offsets[m] = (int)(share_start(pl->n, c, m) * row_chunk);
        // problem side: one chunk (n_own, member's rows) per member
        const long count = (long)pl->n_own * ((long)mr->rows[m] * a + (long)mr->train[m] * b);
        MOSAIC_CHECK(offset + count <= INT32_MAX, "all-to-all too large for one MPI call");
        problem_counts[m] = (int)count;
        problem_offsets[m] = (int)offset;
        offset += count;
    }
}

// ----------------------------------------------------------------------------
// attention of the virtual table: locally, or over the column group by the outer strategy

// the context of the outer strategy: member i of col holds the virtual table of row group i,
// i.e. the c shares [i c, (i + 1) c) of the rows, in its own scratch
static RowAttention a2a_outer_context(const RowAttention* ra, const A2aPlan* pl, Comm* col, const A2aBuffers* ab) {
    RowAttention in;
    memset(&in, 0, sizeof(in));
    in.strategy = ra->outer;
    in.group = col;
    in.overlap = ra->overlap;
    in.inner = in.outer = ROW_LOCAL;
    in.unit = pl->mr.count * ra->unit;
    in.B = pl->n_own;
    in.R = pl->R_v;
    in.C = 1;
    in.S = pl->S_v;
    in.E = pl->d;
    in.heads = 1;
    in.S_global = ra->S_global;
    in.T_global = ra->T_global;
    in.scratch = ab->outer;
    in.scratch_floats = ab->sz.outer;
    in.cap = ab->sz.vcap;
    MOSAIC_CHECK(row_train_share(&in, col->rank) == pl->S_v && row_share(&in, col->rank) == pl->R_v,
                 "the row group's rows are not the column member's share");
    return in;
}

static void a2a_virtual_forward(const RowAttention* ra, const A2aPlan* pl, Comm* col, A2aBuffers* ab) {
    if (col == NULL || col->size == 1) {
        row_attention_local_forward(ab->o_v, ab->lse_v, ab->qkv_v, pl->n_own, pl->R_v, 1, pl->S_v, pl->d, 1);
        return;
    }
    RowAttention in = a2a_outer_context(ra, pl, col, ab);
    switch (ra->outer) {
        case ROW_RING: ring_attention_forward(&in, ab->o_v, ab->lse_v, ab->qkv_v); break;
        case ROW_ALLGATHER: allgather_attention_forward(&in, ab->o_v, ab->lse_v, ab->qkv_v); break;
        default: mosaic_fail("composed row attention: the outer strategy must be ring or allgather, not '%s'",
                             row_strategy_names[ra->outer]);
    }
}

// dqkv_v (n_own, R_v, 1, 3d) is overwritten
static void a2a_virtual_backward(const RowAttention* ra, const A2aPlan* pl, Comm* col, A2aBuffers* ab, float* dqkv_v,
                                 const float* dout_v) {
    if (col == NULL || col->size == 1) {
        row_attention_local_backward(dqkv_v, dout_v, ab->o_v, ab->lse_v, ab->qkv_v, pl->n_own, pl->R_v, 1, pl->S_v,
                                     pl->d, 1);
        return;
    }
    RowAttention in = a2a_outer_context(ra, pl, col, ab);
    switch (ra->outer) {
        case ROW_RING: ring_attention_backward(&in, dqkv_v, dout_v, ab->o_v, ab->lse_v, ab->qkv_v); break;
        case ROW_ALLGATHER: allgather_attention_backward(&in, dqkv_v, dout_v, ab->o_v, ab->lse_v, ab->qkv_v); break;
        default: mosaic_fail("composed row attention: the outer strategy must be ring or allgather, not '%s'",
                             row_strategy_names[ra->outer]);
    }
}

// ----------------------------------------------------------------------------
// the all-to-all over g (members k0 .. of ra->group), the virtual table attended over col
// (NULL: locally). o (B, R, C, E), lse (B*C, heads, R); qkv (B, R, C, 3E)

static void a2a_forward_over(RowAttention* ra, Comm* g, int k0, Comm* col, float* o, float* lse, const float* qkv) {
    A2aBuffers ab = a2a_buffers(ra, g->size);
    A2aPlan pl;
    a2a_plan(&pl, ra, g, k0, &ab);
    A2aCounts ct;
    // q of every row, k and v of the train rows, to the problems' owners
    gather_problem_qkv(ab.send, qkv, ra->B, ra->R, ra->C, ra->E, ra->heads, ra->S);
    a2a_counts(&ct, &pl, pl.d, 2 * pl.d, 1);
    comm_alltoallv(g, ab.recv, ct.recv_counts, ct.recv_offsets, ab.send, ct.send_counts, ct.send_offsets);
    members_to_virtual_qkv(ab.qkv_v, ab.recv, ct.recv_offsets, &pl.mr, pl.n_own, pl.R_v, pl.d);
    a2a_virtual_forward(ra, &pl, col, &ab);
    // o and lse back to the rows' owners
    a2a_counts(&ct, &pl, pl.d + 1, 0, 0);
    virtual_to_members_o_lse(ab.send, ct.send_offsets, ab.o_v, ab.lse_v, &pl.mr, pl.n_own, pl.R_v, pl.d);
    comm_alltoallv(g, ab.recv, ct.recv_counts, ct.recv_offsets, ab.send, ct.send_counts, ct.send_offsets);
    scatter_problem_o_lse(o, lse, ab.recv, ra->B, ra->R, ra->C, ra->E, ra->heads);
}

// dqkv (B, R, C, 3E) is overwritten; the virtual q, k, v, o, lse come from this layer's forward
static void a2a_backward_over(RowAttention* ra, Comm* g, int k0, Comm* col, float* dqkv, const float* dout) {
    A2aBuffers ab = a2a_buffers(ra, g->size);
    A2aPlan pl;
    a2a_plan(&pl, ra, g, k0, &ab);
    A2aCounts ct;
    // dO of every row to the problems' owners
    gather_problem_rows(ab.send, dout, ra->R, ra->C, ra->E, 0, ra->heads, pl.d, 0, pl.n, 0, ra->R);
    a2a_counts(&ct, &pl, pl.d, 0, 1);
    comm_alltoallv(g, ab.recv, ct.recv_counts, ct.recv_offsets, ab.send, ct.send_counts, ct.send_offsets);
    float* dout_v = ab.send; // (n_own, R_v, 1, d): send is free once the exchange returned
    members_to_virtual_rows(dout_v, ab.recv, ct.recv_offsets, &pl.mr, pl.n_own, pl.R_v, pl.d);
    float* dqkv_v = ab.recv; // (n_own, R_v, 1, 3d): recv is free once dO is unpacked
    a2a_virtual_backward(ra, &pl, col, &ab, dqkv_v, dout_v);
    // dq of every row, dk and dv of the train rows, back to the rows' owners (this pack
    // overwrites dout_v, used up by now)
    a2a_counts(&ct, &pl, pl.d, 2 * pl.d, 0);
    virtual_to_members_qkv(ab.send, ct.send_offsets, dqkv_v, &pl.mr, pl.n_own, pl.R_v, pl.d);
    comm_alltoallv(g, ab.recv, ct.recv_counts, ct.recv_offsets, ab.send, ct.send_counts, ct.send_offsets);
    scatter_problem_qkv(dqkv, ab.recv, ra->B, ra->R, ra->C, ra->E, ra->heads, ra->S);
}

// ----------------------------------------------------------------------------
// plain a2a: the whole group, attention of the virtual table local

static void a2a_attention_forward(RowAttention* ra, float* o, float* lse, const float* qkv) {
    a2a_forward_over(ra, ra->group, 0, NULL, o, lse, qkv);
}

// dqkv (B, R, C, 3E) is overwritten; o, lse, qkv are not needed (the forward kept its own)
static void a2a_attention_backward(RowAttention* ra, float* dqkv, const float* dout, const float* o, const float* lse,
                                   const float* qkv) {
    (void)o; (void)lse; (void)qkv;
    a2a_backward_over(ra, ra->group, 0, NULL, dqkv, dout);
}
