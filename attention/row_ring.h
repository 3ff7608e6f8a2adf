// Ring attention over the row axis.
//
// Forward: the train K/V blocks travel p - 1 steps around the ring. At each step the
// transfer of the next block is posted before the attention of the current one and waited
// after it, so the link works while the cores do; partial outputs merge by log-sum-exp.
// Backward: K/V travel again, and with each block a dK/dV accumulator; every rank adds its
// share and passes it on, and after p steps each accumulator is back at its owner. dQ stays
// local. Volume per rank per layer: forward 2 Nt C E b (p - 1)/p, backward twice that.
#pragma once
#include "row_context.h"

enum { RING_TAG_KV = 101, RING_TAG_DKV = 102 };

typedef struct {
    float* kv[2];
    float* dkv_send[2];
    float* dkv_recv[2];
    float* o_part;   // (B, R, C, E)
    float* lse_part; // (B*C, heads, R)
} RingBuffers;

// kv[2], dkv_send[2], dkv_recv[2] blocks, one partial output and lse, from base (NULL: sizing
// only); returns the floats they take
static size_t ring_layout(RingBuffers* rb, float* base, RowCapacity cap, int p) {
    const size_t block = row_cap_kv_floats(cap, p);
    ScratchCursor cur = {base, 0};
    for (int i = 0; i < 2; i++) rb->kv[i] = scratch_take(&cur, block);
    for (int i = 0; i < 2; i++) rb->dkv_send[i] = scratch_take(&cur, block);
    for (int i = 0; i < 2; i++) rb->dkv_recv[i] = scratch_take(&cur, block);
    scratch_take_partial(&cur, cap, p, &rb->o_part, &rb->lse_part);
    return cur.used;
}

static size_t ring_attention_scratch_floats(RowCapacity cap, int p) {
    RingBuffers rb;
    return ring_layout(&rb, NULL, cap, p);
}

// The ring loops, shared with composed's ring over grid columns (row_composed.h): the ring
// runs over `ring`, and member m's K/V block holds row_train_share(counts, m) rows of this
// rank's B datasets and C columns (counts = ra for the plain ring).
typedef struct {
    Comm* ring;
    const RowAttention* counts;
    float* kv[2];       // the travelling K/V blocks; kv[0] holds this member's on entry
    float* dkv_send[2]; // dK/dV accumulators
    float* dkv_recv[2];
    float* o_part;      // (B, R, C, E)
    float* lse_part;    // (B*C, heads, R)
} RingPass;

static inline size_t ring_block_floats(const RowAttention* ra, const RowAttention* counts, int owner) {
    return (size_t)ra->B * row_train_share(counts, owner) * ra->C * 2 * ra->E;
}

// posts the hop of K/V block `owner` to the next member and of block `incoming` from the
// previous one; without overlap it waits at once, so the transfer is not hidden
static void ring_pass_kv(const RowAttention* ra, const RingPass* rp, CommSendRecv* hop, const float* kv,
                         float* kv_next, int owner, int incoming) {
    Comm* g = rp->ring;
    const int p = g->size;
    comm_sendrecv_post(hop, g, kv, ring_block_floats(ra, rp->counts, owner), (g->rank + 1) % p, kv_next,
                       ring_block_floats(ra, rp->counts, incoming), (g->rank + p - 1) % p, RING_TAG_KV);
    if (!ra->overlap) comm_sendrecv_wait(hop);
}

// o (B, R, C, E), lse (B*C, heads, R): this rank's queries against every block of the ring
static void ring_forward_blocks(RowAttention* ra, const RingPass* rp, float* o, float* lse, const float* qkv) {
    const int p = rp->ring->size, me = rp->ring->rank;
    for (int t = 0; t < p; t++) {
        const int owner = (me - t + p) % p, incoming = (me - t - 1 + 2 * p) % p;
        const float* kv = rp->kv[t % 2];
        CommSendRecv hop;
        const int more = t < p - 1;
        if (more) ring_pass_kv(ra, rp, &hop, kv, rp->kv[(t + 1) % 2], owner, incoming);
        if (t == 0) {
            row_block_forward(ra, o, lse, qkv, kv, row_train_share(rp->counts, owner));
        } else {
            row_block_forward(ra, rp->o_part, rp->lse_part, qkv, kv, row_train_share(rp->counts, owner));
            row_merge(ra, o, lse, rp->o_part, rp->lse_part);
        }
        if (more && ra->overlap) comm_sendrecv_wait(&hop);
    }
}

// dqkv's q part += dQ against every block; returns this member's own block's dK/dV, summed
// over the whole ring (B, rows, C, 2E)
static const float* ring_backward_blocks(RowAttention* ra, const RingPass* rp, float* dqkv, const float* dout,
                                         const float* o, const float* lse, const float* qkv) {
    Comm* g = rp->ring;
    const int p = g->size, me = g->rank, next = (me + 1) % p, prev = (me + p - 1) % p;
    CommSendRecv dkv_hop; // the accumulator's hop, posted at the end of every step
    for (int t = 0; t < p; t++) {
        const int owner = (me - t + p) % p, incoming = (me - t - 1 + 2 * p) % p;
        const size_t block = ring_block_floats(ra, rp->counts, owner);
        const float* kv = rp->kv[t % 2];
        float* dkv = rp->dkv_send[t % 2];
        CommSendRecv hop;
        const int more = t < p - 1;
        if (more) ring_pass_kv(ra, rp, &hop, kv, rp->kv[(t + 1) % 2], owner, incoming);
        // this rank's share of the block's gradient, while the accumulator so far is in flight
        device_memset_zero(dkv, block * sizeof(float));
        row_block_backward(ra, dqkv, dkv, dout, o, lse, qkv, kv, row_train_share(rp->counts, owner));
        if (t > 0) { // the accumulator so far (without overlap it was waited for at once)
            if (ra->overlap) comm_sendrecv_wait(&dkv_hop);
            add_inplace(dkv, rp->dkv_recv[t % 2], (long)block);
        }
        // pass the accumulator on; after the last step it reaches the block's owner (next)
        comm_sendrecv_post(&dkv_hop, g, dkv, block, next, rp->dkv_recv[(t + 1) % 2],
                           ring_block_floats(ra, rp->counts, incoming), prev, RING_TAG_DKV);
        if (!ra->overlap) comm_sendrecv_wait(&dkv_hop);
        if (more && ra->overlap) comm_sendrecv_wait(&hop);
    }
    // our own block's accumulator, complete, from the previous member
    if (ra->overlap) comm_sendrecv_wait(&dkv_hop);
    return rp->dkv_recv[p % 2];
}

static RingPass ring_pass_of(RowAttention* ra, const RingBuffers* rb) {
    RingPass rp = {ra->group, ra, {rb->kv[0], rb->kv[1]}, {rb->dkv_send[0], rb->dkv_send[1]},
                   {rb->dkv_recv[0], rb->dkv_recv[1]}, rb->o_part, rb->lse_part};
    return rp;
}

// o (B, R, C, E), lse (B*C, heads, R) for this rank's rows; qkv (B, R, C, 3E)
static void ring_attention_forward(RowAttention* ra, float* o, float* lse, const float* qkv) {
    RingBuffers rb;
    ring_layout(&rb, ra->scratch, ra->cap, ra->group->size);
    RingPass rp = ring_pass_of(ra, &rb);
    pack_kv_rows(rb.kv[0], qkv, ra->B, ra->R, ra->C, ra->E, 0, ra->S);
    ring_forward_blocks(ra, &rp, o, lse, qkv);
}

// dqkv (B, R, C, 3E) is overwritten
static void ring_attention_backward(RowAttention* ra, float* dqkv, const float* dout, const float* o, const float* lse,
                                    const float* qkv) {
    RingBuffers rb;
    ring_layout(&rb, ra->scratch, ra->cap, ra->group->size);
    RingPass rp = ring_pass_of(ra, &rb);
    device_memset_zero(dqkv, (size_t)ra->B * ra->R * ra->C * 3 * ra->E * sizeof(float));
    pack_kv_rows(rb.kv[0], qkv, ra->B, ra->R, ra->C, ra->E, 0, ra->S);
    const float* own = ring_backward_blocks(ra, &rp, dqkv, dout, o, lse, qkv);
    unpack_kv_rows_add(dqkv, own, ra->B, ra->R, ra->C, ra->E, 0, ra->S);
}
