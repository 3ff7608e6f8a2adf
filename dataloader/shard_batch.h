// Dispatch of a global batch to one rank: datasets are split over data-parallel groups,
// rows over the ranks of a sequence-parallel group. Every rank of a sequence group gets an
// equal share (to within one row) of the train rows and of the test rows of every dataset,
// so every K/V block has nearly the same size; a rank may hold zero train rows.
// A rank's local table is its train chunk followed by its test chunk, so locally, as
// globally, rows [0, S_local) are the train rows.
#pragma once
#include "table_batch.h"

// the k-th of p balanced shares of n items: count and first index
static inline int share_count(int n, int p, int k) { return n / p + (k < n % p ? 1 : 0); }
static inline int share_start(int n, int p, int k) { return k * (n / p) + (k < n % p ? k : n % p); }

// out = datasets [d0, d0 + nd) of global, rows of share k of p (train and test separately)
static void shard_batch(TableBatch* out, const TableBatch* global, int d0, int nd, int p, int k) {
    const int R = global->R, F = global->F, S = global->S, T = R - S;
    const int s0 = share_start(S, p, k), sk = share_count(S, p, k);
    const int t0 = S + share_start(T, p, k), tk = share_count(T, p, k);
    MOSAIC_CHECK(nd <= out->max_B && sk + tk <= out->max_R && F <= out->max_F, "shard buffers sized too small");
    out->B = nd;
    out->R = sk + tk;
    out->F = F;
    out->S = sk;
    for (int b = 0; b < nd; b++) {
        const float* gx = global->x + (size_t)(d0 + b) * R * F;
        const float* gy = global->y + (size_t)(d0 + b) * R;
        float* x = out->x + (size_t)b * out->R * F;
        float* y = out->y + (size_t)b * out->R;
        memcpy(x, gx + (size_t)s0 * F, (size_t)sk * F * sizeof(float));
        memcpy(x + (size_t)sk * F, gx + (size_t)t0 * F, (size_t)tk * F * sizeof(float));
        memcpy(y, gy + s0, (size_t)sk * sizeof(float));
        memcpy(y + sk, gy + t0, (size_t)tk * sizeof(float));
    }
}
