// Cost model of the row-axis strategies: bytes each rank sends per layer (forward plus
// backward) and a predicted time from assumed link bandwidths. `auto` picks the cheapest
// strategy that is implemented and fits; the trainer prints its choice with the prediction,
// and the benchmark prints the predicted bytes next to the measured ones.
//
// Sizes per rank: N = rows of its datasets (B_local x R), Nt = their train rows, C columns,
// E embedding, h heads, b = 4 bytes, p ranks in the group, grid r x c for the 2-D strategies.
#pragma once
#include "row_shard.h"

typedef struct {
    double rows, train_rows; // N and Nt of the whole tables held by the group (B_local x R, B_local x S)
    int C, E, heads, p;
    int mesh_r, mesh_c;      // grid (r x c = p) for mesh2d / composed / hierarchical
    int ranks_per_node;      // topology: ranks sharing a node (fast links)
} RowCostInput;

// bytes one rank sends per layer, forward + backward; the forward share is in the comments
static double row_strategy_bytes(RowStrategy st, const RowCostInput* in) {
    const double b = 4.0, C = in->C, E = in->E, h = in->heads, p = in->p, N = in->rows, Nt = in->train_rows;
    const double r = in->mesh_r, c = in->mesh_c;
    if (p <= 1) return 0.0;
    switch (st) {
        case ROW_ALLGATHER: // forward: gather K/V, 2 Nt C E b (p-1)/p; backward: gather again + reduce-scatter dK/dV
            return 3.0 * 2.0 * Nt * C * E * b * (p - 1) / p;
        case ROW_RING: // forward: K/V around the ring, 2 Nt C E b (p-1)/p; backward: K/V again plus the
                       // dK/dV accumulators, which make p hops to come home
            return 2.0 * Nt * C * E * b * (2.0 * (p - 1) / p + 1.0);
        case ROW_A2A: // forward: q (N), k, v (Nt) out, o + lse back; backward: dO out, dq, dk, dv back
            return (4.0 * N + 4.0 * Nt + N * h / E) * C * E * b * (p - 1) / (p * p);
        case ROW_MESH2D: // forward: Q over the row group, K/V over the column group, partial O + lse back:
                         // [(c-1)/p N (2E + h) + 2 (r-1)/p Nt E] C b; backward: Q, O, dO, lse gathered over
                         // the row group, K/V again, dQ and dK/dV reduced back: [(c-1)/p N (4E + h) + 4 (r-1)/p Nt E] C b
            return ((c - 1) / p * N * (6.0 * E + 2.0 * h) + 6.0 * (r - 1) / p * Nt * E) * C * b;
        case ROW_COMPOSED:
        case ROW_HIERARCHICAL: { // a2a over c ranks, then a ring over r ranks on 1/c of the problems
            RowCostInput inner = *in, outer = *in;
            inner.p = (int)c;
            outer.p = (int)r;
            outer.train_rows = Nt / c;
            return row_strategy_bytes(ROW_A2A, &inner) + row_strategy_bytes(ROW_RING, &outer);
        }
        default: return 0.0;
    }
}

// assumed links: within a node ~20 GB/s (shared memory / NVLink-class is far more; this is
// the conservative CPU figure), across nodes ~10 GB/s (100 Gb/s InfiniBand). Predictions,
// not measurements.
static double row_strategy_seconds(RowStrategy st, const RowCostInput* in) {
    const double intra = 20e9, inter = 10e9;
    const int one_node = in->ranks_per_node >= in->p;
    double bytes = row_strategy_bytes(st, in);
    if (one_node) return bytes / intra;
    if (st == ROW_HIERARCHICAL || st == ROW_COMPOSED) {
        RowCostInput inner = *in, outer = *in;
        inner.p = in->mesh_c;
        outer.p = in->mesh_r;
        outer.train_rows = in->train_rows / in->mesh_c;
        // the a2a stays inside a node when the grid's rows are nodes
        double inner_link = in->mesh_c <= in->ranks_per_node ? intra : inter;
        return row_strategy_bytes(ROW_A2A, &inner) / inner_link + row_strategy_bytes(ROW_RING, &outer) / inter;
    }
    return bytes / inter;
}
