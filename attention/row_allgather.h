// All-gather attention over the row axis: every rank gathers every train K/V block, runs
// its queries against each and merges by log-sum-exp; the backward computes dK/dV for every
// block and reduce-scatters them back to their owners. Simple, no overlap; memory O(Nt).
// Volume per rank per layer: forward 2 Nt C E b (p - 1)/p; backward twice that (gather
// again, then reduce-scatter).
#pragma once
#include "row_shard.h"

// buffers: p gathered blocks, p dK/dV blocks, one own block, one partial output and lse
static size_t allgather_attention_scratch_floats(RowCapacity cap, int p) {
    size_t block = (size_t)cap.max_B * row_cap_train_block(cap, p) * cap.max_C * 2 * cap.E;
    size_t rows = (size_t)cap.max_B * row_cap_block(cap, p) * cap.max_C;
    return (2 * (size_t)p + 1) * block + rows * cap.E + rows * cap.heads;
}

typedef struct {
    float* gathered; // (p, block) every rank's K/V block, padded to the largest
    float* dkv;      // (p, block) dK/dV of every block
    float* own;      // (block) this rank's K/V, then its summed dK/dV
    float* o_part;
    float* lse_part;
    size_t block;    // floats per padded block
} AllgatherBuffers;

static AllgatherBuffers allgather_buffers(const RowAttention* ra) {
    const int p = ra->group->size;
    AllgatherBuffers ab;
    // blocks are padded to the largest share of this batch, so one equal-count collective fits
    ab.block = (size_t)ra->B * row_train_share(ra, 0) * ra->C * 2 * ra->E; // member 0 holds the most
    size_t cap_block = (size_t)ra->cap.max_B * row_cap_train_block(ra->cap, p) * ra->cap.max_C * 2 * ra->cap.E;
    size_t rows = (size_t)ra->cap.max_B * row_cap_block(ra->cap, p) * ra->cap.max_C;
    ab.gathered = ra->scratch;
    ab.dkv = ab.gathered + p * cap_block;
    ab.own = ab.dkv + p * cap_block;
    ab.o_part = ab.own + cap_block;
    ab.lse_part = ab.o_part + rows * ra->cap.E;
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
    fill_zero(dqkv, (long)ra->B * ra->R * ra->C * 3 * ra->E);
    pack_kv_rows(ab.own, qkv, ra->B, ra->R, ra->C, ra->E, 0, ra->S);
    comm_allgather(ra->group, ab.gathered, ab.own, ab.block);
    fill_zero(ab.dkv, (long)p * ab.block);
    for (int k = 0; k < p; k++)
        row_block_backward(ra, dqkv, ab.dkv + k * ab.block, dout, o, lse, qkv, ab.gathered + k * ab.block,
                           row_train_share(ra, k));
    comm_reduce_scatter_sum(ra->group, ab.own, ab.dkv, ab.block);
    unpack_kv_rows_add(dqkv, ab.own, ra->B, ra->R, ra->C, ra->E, 0, ra->S);
}
