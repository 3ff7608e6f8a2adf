// The communicator the orchestration talks to: groups, posted point-to-point transfers,
// and the collectives the sharding strategies need. This is the MPI transport on host
// memory; the NCCL transport (CUDA build) implements the same calls on device memory.
//
// A group of one rank needs no MPI at all (comm_init_single): every collective is then the
// identity, so single-process tools and tests run without mpirun.
// Every exchanged byte is counted (bytes_sent), for the benchmarks' volume figures.
#pragma once
#include <mpi.h>
#include "../model/common.h"

typedef struct {
    MPI_Comm mpi;        // MPI_COMM_NULL for a single-process group
    int rank;            // this process's rank in the group
    int size;            // ranks in the group
    uint64_t bytes_sent; // payload this rank has sent through this group
    double wait_seconds; // time blocked in waits and collectives: communication not hidden
} Comm;

typedef struct {
    MPI_Request request;
    Comm* comm; // whose wait_seconds the wait adds to
} CommRequest;

// an MPI error names the call and the site, then takes the whole job down
#define MPI_CHECK(call)                                                                              \
    do {                                                                                             \
        int mpi_status_ = (call);                                                                    \
        if (mpi_status_ != MPI_SUCCESS) {                                                            \
            char mpi_msg_[MPI_MAX_ERROR_STRING];                                                     \
            int mpi_len_ = 0;                                                                        \
            MPI_Error_string(mpi_status_, mpi_msg_, &mpi_len_);                                      \
            fprintf(stderr, "mosaic: error: %s failed at %s:%d: %s (a peer rank died?)\n", #call,    \
                    __FILE__, __LINE__, mpi_msg_);                                                   \
            mosaic_exit(1);                                                                          \
        }                                                                                            \
    } while (0)

static inline void comm_init_single(Comm* comm) {
    comm->mpi = MPI_COMM_NULL;
    comm->rank = 0;
    comm->size = 1;
    comm->bytes_sent = 0;
    comm->wait_seconds = 0.0;
}

// one failing rank must not leave the others blocked in a collective
static void comm_abort_world(int code) {
    int initialized = 0, finalized = 0;
    MPI_Initialized(&initialized);
    MPI_Finalized(&finalized);
    if (initialized && !finalized) MPI_Abort(MPI_COMM_WORLD, code);
}

static void comm_init_world(Comm* world, int* argc, char*** argv) {
    int provided;
    MPI_Init_thread(argc, argv, MPI_THREAD_FUNNELED, &provided);
    // errors come back to MPI_CHECK, which prints where, then aborts the job
    MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
    world->mpi = MPI_COMM_WORLD;
    MPI_CHECK(MPI_Comm_rank(MPI_COMM_WORLD, &world->rank));
    MPI_CHECK(MPI_Comm_size(MPI_COMM_WORLD, &world->size));
    // alone, an error is an ordinary exit (MPI_Abort would add a banner to the one line)
    if (world->size > 1) {
        mosaic_abort_hook = comm_abort_world;
        mosaic_error_rank = world->rank;
    }
    world->bytes_sent = 0;
    world->wait_seconds = 0.0;
}

static void comm_finalize(void) {
    int initialized = 0;
    MPI_Initialized(&initialized);
    if (initialized) MPI_Finalize();
    mosaic_abort_hook = NULL;
}

// ranks of parent with the same color form a group, ordered by key
static void comm_split(Comm* out, const Comm* parent, int color, int key) {
    if (parent->size == 1) {
        comm_init_single(out);
        return;
    }
    MPI_CHECK(MPI_Comm_split(parent->mpi, color, key, &out->mpi));
    MPI_Comm_set_errhandler(out->mpi, MPI_ERRORS_RETURN);
    MPI_CHECK(MPI_Comm_rank(out->mpi, &out->rank));
    MPI_CHECK(MPI_Comm_size(out->mpi, &out->size));
    out->bytes_sent = 0;
    out->wait_seconds = 0.0;
    if (out->size == 1) { // a group of one never needs MPI
        MPI_Comm_free(&out->mpi);
        comm_init_single(out);
    }
}

// ----------------------------------------------------------------------------
// point to point, posted and waited separately so that compute runs in between

static void comm_send_post(CommRequest* req, Comm* comm, const float* buf, size_t count, int peer, int tag) {
    MOSAIC_CHECK(count <= (size_t)INT32_MAX, "message too large for one MPI call");
    MPI_CHECK(MPI_Isend(buf, (int)count, MPI_FLOAT, peer, tag, comm->mpi, &req->request));
    req->comm = comm;
    comm->bytes_sent += count * sizeof(float);
}

static void comm_recv_post(CommRequest* req, Comm* comm, float* buf, size_t count, int peer, int tag) {
    MOSAIC_CHECK(count <= (size_t)INT32_MAX, "message too large for one MPI call");
    MPI_CHECK(MPI_Irecv(buf, (int)count, MPI_FLOAT, peer, tag, comm->mpi, &req->request));
    req->comm = comm;
}

static void comm_wait(CommRequest* req) {
    double t0 = wall_seconds();
    MPI_CHECK(MPI_Wait(&req->request, MPI_STATUS_IGNORE));
    if (req->comm) req->comm->wait_seconds += wall_seconds() - t0;
}

// ----------------------------------------------------------------------------
// collectives (floats unless named otherwise)

// out (size * count) = the count floats of every rank, in rank order
static void comm_allgather(Comm* comm, float* out, const float* in, size_t count) {
    if (comm->size == 1) {
        if (out != in) memcpy(out, in, count * sizeof(float));
        return;
    }
    double t0 = wall_seconds();
    MPI_CHECK(MPI_Allgather(in, (int)count, MPI_FLOAT, out, (int)count, MPI_FLOAT, comm->mpi));
    comm->wait_seconds += wall_seconds() - t0;
    comm->bytes_sent += (uint64_t)(comm->size - 1) * count * sizeof(float);
}

// uneven all-to-all: send_counts[r] floats from in + send_offsets[r] go to rank r, which
// receives them at out + recv_offsets[me]
static void comm_alltoallv(Comm* comm, float* out, const int* recv_counts, const int* recv_offsets, const float* in,
                           const int* send_counts, const int* send_offsets) {
    if (comm->size == 1) {
        memcpy(out + recv_offsets[0], in + send_offsets[0], (size_t)send_counts[0] * sizeof(float));
        return;
    }
    double t0 = wall_seconds();
    MPI_CHECK(MPI_Alltoallv(in, send_counts, send_offsets, MPI_FLOAT, out, recv_counts, recv_offsets, MPI_FLOAT,
                            comm->mpi));
    comm->wait_seconds += wall_seconds() - t0;
    for (int r = 0; r < comm->size; r++)
        if (r != comm->rank) comm->bytes_sent += (uint64_t)send_counts[r] * sizeof(float);
}

// buf (count) = sum over ranks, identical everywhere. Ring-algorithm volume: 2 (p-1)/p.
static void comm_allreduce_sum(Comm* comm, float* buf, size_t count) {
    if (comm->size == 1) return;
    double t0 = wall_seconds();
    MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, buf, (int)count, MPI_FLOAT, MPI_SUM, comm->mpi));
    comm->wait_seconds += wall_seconds() - t0;
    comm->bytes_sent += 2 * (uint64_t)(comm->size - 1) * count * sizeof(float) / comm->size;
}

static void comm_allreduce_sum_double(Comm* comm, double* buf, size_t count) {
    if (comm->size == 1) return;
    double t0 = wall_seconds();
    MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, buf, (int)count, MPI_DOUBLE, MPI_SUM, comm->mpi));
    comm->wait_seconds += wall_seconds() - t0;
    comm->bytes_sent += 2 * (uint64_t)(comm->size - 1) * count * sizeof(double) / comm->size;
}

// out (count) = sum over ranks of block [rank] of in (size * count)
static void comm_reduce_scatter_sum(Comm* comm, float* out, const float* in, size_t count) {
    if (comm->size == 1) {
        if (out != in) memcpy(out, in, count * sizeof(float));
        return;
    }
    double t0 = wall_seconds();
    MPI_CHECK(MPI_Reduce_scatter_block(in, out, (int)count, MPI_FLOAT, MPI_SUM, comm->mpi));
    comm->wait_seconds += wall_seconds() - t0;
    comm->bytes_sent += (uint64_t)(comm->size - 1) * count * sizeof(float);
}

static void comm_broadcast_bytes(Comm* comm, void* buf, size_t bytes, int root) {
    if (comm->size == 1) return;
    MPI_CHECK(MPI_Bcast(buf, (int)bytes, MPI_BYTE, root, comm->mpi));
}

static void comm_barrier(Comm* comm) {
    if (comm->size == 1) return;
    MPI_CHECK(MPI_Barrier(comm->mpi));
}

// one int per rank, summed / maxed: for agreement checks (config hashes, error counts)
static long comm_allreduce_max_long(Comm* comm, long value) {
    if (comm->size == 1) return value;
    long out;
    MPI_CHECK(MPI_Allreduce(&value, &out, 1, MPI_LONG, MPI_MAX, comm->mpi));
    return out;
}

static long comm_allreduce_min_long(Comm* comm, long value) {
    if (comm->size == 1) return value;
    long out;
    MPI_CHECK(MPI_Allreduce(&value, &out, 1, MPI_LONG, MPI_MIN, comm->mpi));
    return out;
}

// equal-count all-to-all: block r of in (size * count) goes to rank r; block r of out
// (size * count) is what rank r sent to this one
static void comm_alltoall(Comm* comm, float* out, const float* in, size_t count) {
    if (comm->size == 1) {
        if (out != in) memcpy(out, in, count * sizeof(float));
        return;
    }
    MOSAIC_CHECK(count <= (size_t)INT32_MAX, "message too large for one MPI call");
    double t0 = wall_seconds();
    MPI_CHECK(MPI_Alltoall(in, (int)count, MPI_FLOAT, out, (int)count, MPI_FLOAT, comm->mpi));
    comm->wait_seconds += wall_seconds() - t0;
    comm->bytes_sent += (uint64_t)(comm->size - 1) * count * sizeof(float);
}
