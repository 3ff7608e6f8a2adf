// The communicator interface the orchestration talks to.
// This build has one transport: a single process (every group has one rank, every
// collective is the identity). The MPI and NCCL transports implement the same calls.
#pragma once
#include "../model/common.h"

typedef struct {
    int rank; // this process's rank in the group
    int size; // ranks in the group
} Comm;

static inline void comm_init_single(Comm* comm) {
    comm->rank = 0;
    comm->size = 1;
}

// buf (n) = sum over the group's ranks of buf, identical on every rank
static inline void comm_allreduce_sum_double(Comm* comm, double* buf, size_t n) {
    (void)buf; (void)n;
    MOSAIC_CHECK(comm->size == 1, "the single-process transport cannot reduce across ranks");
}
static inline void comm_allreduce_sum_float(Comm* comm, float* buf, size_t n) {
    (void)buf; (void)n;
    MOSAIC_CHECK(comm->size == 1, "the single-process transport cannot reduce across ranks");
}
