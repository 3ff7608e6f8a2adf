// All-gather attention over the row axis: every rank gathers every train K/V block, runs
// its queries against each and merges by log-sum-exp; the backward computes dK/dV for every
// block and reduce-scatters them back to their owners. Simple, no overlap; memory O(Nt).
// Volume per rank per layer: forward 2 Nt C E b (p - 1)/p; backward twice that (gather
// again, then reduce-scatter).
#pragma once
#include "row_context.h"

typedef struct {
    float* gathered; // (p, block) every rank's K/V block, padded to the largest
    float* dkv;      // (p, block) dK/dV of every block
    float* own;      // (block) this rank's K/V, then its summed dK/dV
    float* o_part;
    float* lse_part;
    size_t block;    // floats per padded block of this batch
} AllgatherBuffers;

// p gathered blocks, p dK/dV blocks, one own block, one partial output and lse at capacity,
// from base (NULL: sizing only); returns the floats they take
static size_t allgather_layout(AllgatherBuffers* ab, float* base, RowCapacity cap, int p) {
    const size_t block = row_cap_kv_floats(cap, p);
    ScratchCursor cur = {base, 0};
    ab->gathered = scratch_take(&cur, p * block);
    ab->dkv = scratch_take(&cur, p * block);
    ab->own = scratch_take(&cur, block);
    scratch_take_partial(&cur, cap, p, &ab->o_part, &ab->lse_part);
    return cur.used;
}

static size_t allgather_attention_scratch_floats(RowCapacity cap, int p) {
    AllgatherBuffers ab;
    return allgather_layout(&ab, NULL, cap, p);
}

static AllgatherBuffers allgather_buffers(const RowAttention* ra) {
    AllgatherBuffers ab;
    allgather_layout(&ab, ra->scratch, ra->cap, ra->group->size);
    // blocks are padded to the largest share of this batch, so one equal-count collective fits
    ab.block = (size_t)ra->B * row_train_share(ra, 0) * ra->C * 2 * ra->E; // member 0 holds the most
    return ab;
}

static void allgather_attention_forward(RowAttention* ra, float* o, float* lse, const float* qkv) {
    const int p = ra->group->size;
    AllgatherBuffers ab = allgather_buffers(ra);
    pack_kv_rows(ab.own, qkv, ra->B, ra->R, ra->C, ra->E, 0, ra->S);
    comm_allgather(ra->group, ab.gathered, ab.own, ab.block);
    for (int k = 0; k < p; k++) {
        const float* kv = ab.gathered + k * ab.block;
        if (k == 0) {
            row_block_forward(ra, o, lse, qkv, kv, row_train_share(ra, k));
        } else {
            row_block_forward(ra, ab.o_part, ab.lse_part, qkv, kv, row_train_share(ra, k));
            row_merge(ra, o, lse, ab.o_part, ab.lse_part);
        }
    }
}

// dqkv (B, R, C, 3E) is overwritten. All layers share the scratch, so the forward's
// gathered K/V are gone by now: gather again rather than hold O(Nt) per layer.
static void allgather_attention_backward(RowAttention* ra, float* dqkv, const float* dout, const float* o,
                                         const float* lse, const float* qkv) {
    const int p = ra->group->size;
    AllgatherBuffers ab = allgather_buffers(ra);
    device_memset_zero(dqkv, (size_t)ra->B * ra->R * ra->C * 3 * ra->E * sizeof(float));
    pack_kv_rows(ab.own, qkv, ra->B, ra->R, ra->C, ra->E, 0, ra->S);
    comm_allgather(ra->group, ab.gathered, ab.own, ab.block);
    device_memset_zero(ab.dkv, p * ab.block * sizeof(float));
    for (int k = 0; k < p; k++)
        row_block_backward(ra, dqkv, ab.dkv + k * ab.block, dout, o, lse, qkv, ab.gathered + k * ab.block,
                           row_train_share(ra, k));
    comm_reduce_scatter_sum(ra->group, ab.own, ab.dkv, ab.block);
    unpack_kv_rows_add(dqkv, ab.own, ra->B, ra->R, ra->C, ra->E, 0, ra->S);
}
