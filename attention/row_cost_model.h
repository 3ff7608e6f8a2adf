// Cost model of the row-axis strategies: bytes each rank sends per layer (forward plus
// backward) and a predicted time from assumed link bandwidths. `auto` picks the cheapest
// strategy that is implemented and fits; the trainer prints its choice with the prediction,
// and the benchmark prints the predicted bytes next to the measured ones.
//
// Sizes per rank: N = rows of its datasets (B_local x R), Nt = their train rows, C columns,
// E embedding, h heads, b = 4 bytes, p ranks in the group, grid r x c for the 2-D strategies.
#pragma once
#include "row_context.h"

typedef struct {
    double rows, train_rows; // N and Nt of the whole tables held by the group (B_local x R, B_local x S)
    int C, E, heads, p;
    int mesh_r, mesh_c;      // grid (r x c = p) for mesh2d / composed / hierarchical
    int ranks_per_node;      // topology: ranks sharing a node (fast links)
} RowCostInput;

// the two parts of composed / hierarchical (inner a2a, outer ring), per rank per layer
static double composed_a2a_bytes(const RowCostInput* in) {
    const double b = 4.0, C = in->C, E = in->E, h = in->heads, p = in->p, c = in->mesh_c;
    return (4.0 * in->rows + 4.0 * in->train_rows + in->rows * h / E) * C * E * b * (c - 1) / (c * p);
}
static double composed_ring_bytes(const RowCostInput* in) {
    const double b = 4.0, r = in->mesh_r;
    const double block = 2.0 * in->train_rows * in->C * in->E * b / in->p;
    return block * (2.0 * (r - 1) + (r > 1 ? r : 0));
}

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
        case ROW_HIERARCHICAL: // a2a over the c ranks of a grid row (each still holding N/p rows), then a ring
                               // over the r ranks of a grid column on blocks of 2 Nt C E / p floats
            return composed_a2a_bytes(in) + composed_ring_bytes(in);
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
        // the a2a stays inside a node when a grid row fits in one
        double inner_link = in->mesh_c <= in->ranks_per_node ? intra : inter;
        return composed_a2a_bytes(in) / inner_link + composed_ring_bytes(in) / inter;
    }
    return bytes / inter;
}
