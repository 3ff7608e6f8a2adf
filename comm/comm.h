// The communicator the orchestration talks to: groups, paired point-to-point transfers, and
// the collectives the sharding strategies need. Every exchanged byte is counted (bytes_sent),
// for the benchmarks' volume figures.
//
// Two kinds of calls, by the memory they see:
//   - device memory (tensor buffers: activations, gradients, the feature statistics, the
//     strategies' scratch): comm_sendrecv_post + comm_sendrecv_wait, comm_allgather,
//     comm_alltoall, comm_alltoallv, comm_allreduce_sum (float), comm_allreduce_sum_double
//     (the encoders' train statistics) and comm_reduce_scatter_sum. Here they are MPI on the
//     CPU build's tensor memory, which is host memory; the NCCL transport of the CUDA build
//     implements exactly these calls on device memory. Point to point is offered only as a
//     send paired with a receive, because NCCL deadlocks unless both are issued in one group.
//   - host memory, always MPI, never a tensor buffer: the comm_host_* calls (the loss and
//     test-row count, the evaluation's gather of probabilities, agreement checks on flags and
//     stop requests, the node-local rank count).
// Groups (comm_init_world, comm_init_single, comm_split, comm_free, comm_finalize) are MPI.
//
// Transports: the CPU build runs the device-memory calls on MPI (below); the CUDA build
// (-DMOSAIC_CUDA) on NCCL (comm/comm_nccl.h), with one NCCL communicator per group of more
// than one rank, made when the group is, and the transfers on the communication stream.
// Both count the same bytes.
//
// A group of one rank needs no MPI at all (comm_init_single): every collective is then the
// identity (or a copy), so single-process tools and tests run without mpirun.
#pragma once
#include <mpi.h>
#include "../model/common.h"
#ifdef MOSAIC_CUDA
#include "../model/ops_cuda.cuh" // the streams, device copies, host waits with a deadline
#ifdef MOSAIC_SIMT_EMULATION
#include "../test/nccl_shim.h" // test-only NCCL on MPI, over the emulator's streams
#else
#include <nccl.h>
#endif
enum { COMM_PAIRS_IN_FLIGHT = 8 }; // posted send/recv pairs a group may have unwaited
#endif

typedef struct {
    MPI_Comm mpi;        // MPI_COMM_NULL for a single-process group
    int rank;            // this process's rank in the group
    int size;            // ranks in the group
    uint64_t bytes_sent; // payload this rank has sent through this group
    double wait_seconds; // time blocked in waits and collectives: communication not hidden
                         // (MPI only: the NCCL transport never blocks the host)
#ifdef MOSAIC_CUDA
    ncclComm_t nccl;     // NULL for a group of one
    cudaEvent_t ready;   // recorded on the compute stream: the data to send is ready
    cudaEvent_t joined;  // recorded on the communication stream after a collective
    cudaEvent_t pair_done[COMM_PAIRS_IN_FLIGHT]; // a posted pair's completion, one slot per pair
    int pair_busy[COMM_PAIRS_IN_FLIGHT];
#endif
} Comm;

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
    memset(comm, 0, sizeof(*comm)); // under CUDA: no NCCL communicator, no events
    comm->mpi = MPI_COMM_NULL;
    comm->rank = 0;
    comm->size = 1;
}

// the transport's part of a group (comm_nccl.h under CUDA; nothing for MPI): attach after the
// group's MPI communicator exists, detach before it is freed
#ifdef MOSAIC_CUDA
static void comm_device_select(Comm* world);
static void comm_device_attach(Comm* comm);
static void comm_device_detach(Comm* comm);
static void comm_device_finalize(void);
#else
static inline void comm_device_select(Comm* world) { (void)world; }
static inline void comm_device_attach(Comm* comm) { (void)comm; }
static inline void comm_device_detach(Comm* comm) { (void)comm; }
static inline void comm_device_finalize(void) {}
#endif

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
    comm_device_select(world); // CUDA: this rank's GPU, from its rank on the node
    comm_device_attach(world);
}

static void comm_finalize(void) {
    comm_device_finalize();
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
        return;
    }
    comm_device_attach(out);
}

// releases a group made by comm_split (the world and single groups hold nothing to free)
static void comm_free(Comm* comm) {
    comm_device_detach(comm);
    if (comm->mpi != MPI_COMM_NULL && comm->mpi != MPI_COMM_WORLD) MPI_Comm_free(&comm->mpi);
    comm->mpi = MPI_COMM_NULL;
}

// ----------------------------------------------------------------------------
// payload bytes a rank sends, the same figures for both transports (the benchmark and
// test_mpi_train compare them with the cost model): ring-algorithm volumes for the collectives

static inline uint64_t comm_bytes_gather(const Comm* comm, size_t count, size_t elem) { // allgather, all-to-all, reduce-scatter
    return (uint64_t)(comm->size - 1) * count * elem;
}
static inline uint64_t comm_bytes_allreduce(const Comm* comm, size_t count, size_t elem) {
    return 2 * (uint64_t)(comm->size - 1) * count * elem / comm->size;
}
static inline uint64_t comm_bytes_alltoallv(const Comm* comm, const int* send_counts) {
    uint64_t bytes = 0;
    for (int r = 0; r < comm->size; r++)
        if (r != comm->rank) bytes += (uint64_t)send_counts[r] * sizeof(float);
    return bytes;
}

// ----------------------------------------------------------------------------
// the MPI collectives on host memory, which both kinds of call below are built on

static void comm_mpi_allgather(Comm* comm, void* out, const void* in, size_t count, MPI_Datatype type, size_t elem) {
    if (comm->size == 1) {
        if (out != in) memcpy(out, in, count * elem);
        return;
    }
    MOSAIC_CHECK(count <= (size_t)INT32_MAX, "message too large for one MPI call");
    double t0 = wall_seconds();
    MPI_CHECK(MPI_Allgather(in, (int)count, type, out, (int)count, type, comm->mpi));
    comm->wait_seconds += wall_seconds() - t0;
    comm->bytes_sent += comm_bytes_gather(comm, count, elem);
}

// buf (count) = sum over ranks, identical everywhere. Ring-algorithm volume: 2 (p-1)/p.
static void comm_mpi_allreduce_sum(Comm* comm, void* buf, size_t count, MPI_Datatype type, size_t elem) {
    if (comm->size == 1) return;
    MOSAIC_CHECK(count <= (size_t)INT32_MAX, "message too large for one MPI call");
    double t0 = wall_seconds();
    MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, buf, (int)count, type, MPI_SUM, comm->mpi));
    comm->wait_seconds += wall_seconds() - t0;
    comm->bytes_sent += comm_bytes_allreduce(comm, count, elem);
}

static long comm_mpi_allreduce_long(Comm* comm, long value, MPI_Op op) {
    if (comm->size == 1) return value;
    long out;
    MPI_CHECK(MPI_Allreduce(&value, &out, 1, MPI_LONG, op, comm->mpi));
    return out;
}

#ifdef MOSAIC_CUDA
#include "comm_nccl.h" // the device-memory calls below, on NCCL
#else
// ----------------------------------------------------------------------------
// device memory: point to point, a send and a receive posted together and waited together,
// so that compute runs in between

typedef struct {
    MPI_Request requests[2]; // the send, the receive
    Comm* comm;              // whose wait_seconds the wait adds to
} CommSendRecv;

// send (send_count) goes to rank dst while recv (recv_count) comes from rank src, both with tag
static void comm_sendrecv_post(CommSendRecv* req, Comm* comm, const float* send, size_t send_count, int dst,
                               float* recv, size_t recv_count, int src, int tag) {
    MOSAIC_CHECK(send_count <= (size_t)INT32_MAX && recv_count <= (size_t)INT32_MAX,
                 "message too large for one MPI call");
    MPI_CHECK(MPI_Isend(send, (int)send_count, MPI_FLOAT, dst, tag, comm->mpi, &req->requests[0]));
    MPI_CHECK(MPI_Irecv(recv, (int)recv_count, MPI_FLOAT, src, tag, comm->mpi, &req->requests[1]));
    req->comm = comm;
    comm->bytes_sent += send_count * sizeof(float);
}

// returns once the send buffer may be reused and the receive buffer is filled; every posted
// pair is waited for exactly once
static void comm_sendrecv_wait(CommSendRecv* req) {
    double t0 = wall_seconds();
    MPI_CHECK(MPI_Waitall(2, req->requests, MPI_STATUSES_IGNORE));
    req->comm->wait_seconds += wall_seconds() - t0;
}

// ----------------------------------------------------------------------------
// device memory: collectives (floats unless named otherwise)

// out (size * count) = the count floats of every rank, in rank order
static void comm_allgather(Comm* comm, float* out, const float* in, size_t count) {
    comm_mpi_allgather(comm, out, in, count, MPI_FLOAT, sizeof(float));
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
    comm->bytes_sent += comm_bytes_alltoallv(comm, send_counts);
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
    comm->bytes_sent += comm_bytes_gather(comm, count, sizeof(float));
}

// buf (count) = sum over ranks, identical everywhere
static void comm_allreduce_sum(Comm* comm, float* buf, size_t count) {
    comm_mpi_allreduce_sum(comm, buf, count, MPI_FLOAT, sizeof(float));
}

static void comm_allreduce_sum_double(Comm* comm, double* buf, size_t count) {
    comm_mpi_allreduce_sum(comm, buf, count, MPI_DOUBLE, sizeof(double));
}

// out (count) = sum over ranks of block [rank] of in (size * count)
static void comm_reduce_scatter_sum(Comm* comm, float* out, const float* in, size_t count) {
    if (comm->size == 1) {
        if (out != in) memcpy(out, in, count * sizeof(float));
        return;
    }
    MOSAIC_CHECK(count <= (size_t)INT32_MAX, "message too large for one MPI call");
    double t0 = wall_seconds();
    MPI_CHECK(MPI_Reduce_scatter_block(in, out, (int)count, MPI_FLOAT, MPI_SUM, comm->mpi));
    comm->wait_seconds += wall_seconds() - t0;
    comm->bytes_sent += comm_bytes_gather(comm, count, sizeof(float));
}
#endif // MOSAIC_CUDA

// ----------------------------------------------------------------------------
// host memory only, always MPI

// out (size * count) = the count floats of every rank, in rank order
static void comm_host_allgather(Comm* comm, float* out, const float* in, size_t count) {
    comm_mpi_allgather(comm, out, in, count, MPI_FLOAT, sizeof(float));
}

// buf (count) = sum over ranks, identical everywhere
static void comm_host_allreduce_sum_double(Comm* comm, double* buf, size_t count) {
    comm_mpi_allreduce_sum(comm, buf, count, MPI_DOUBLE, sizeof(double));
}

// one value per rank, maxed / minned: for agreement checks (config hashes, error counts)
static long comm_host_allreduce_max_long(Comm* comm, long value) { return comm_mpi_allreduce_long(comm, value, MPI_MAX); }
static long comm_host_allreduce_min_long(Comm* comm, long value) { return comm_mpi_allreduce_long(comm, value, MPI_MIN); }

// this rank's index among the ranks of its node (MPI's shared-memory split of world): picks its GPU
static int comm_host_node_local_rank(Comm* world) {
    if (world->size == 1) return 0;
    MPI_Comm node;
    MPI_CHECK(MPI_Comm_split_type(world->mpi, MPI_COMM_TYPE_SHARED, world->rank, MPI_INFO_NULL, &node));
    int rank;
    MPI_Comm_rank(node, &rank);
    MPI_Comm_free(&node);
    return rank;
}

// the fewest ranks that share a node (MPI's shared-memory split of world), the same on every rank
static int comm_host_node_local_size(Comm* world) {
    if (world->size == 1) return 1;
    MPI_Comm node;
    MPI_CHECK(MPI_Comm_split_type(world->mpi, MPI_COMM_TYPE_SHARED, world->rank, MPI_INFO_NULL, &node));
    int n;
    MPI_Comm_size(node, &n);
    MPI_Comm_free(&node);
    return (int)comm_host_allreduce_min_long(world, n);
}
