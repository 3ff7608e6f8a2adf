// The NCCL transport: the device-memory calls of comm/comm.h for the CUDA build. Included by
// comm.h after the Comm type (not on its own); groups and the comm_host_* calls stay on MPI.
//
// Every group of more than one rank gets one NCCL communicator when it is made (comm_split,
// comm_init_world): rank 0 of the group draws the unique id, MPI broadcasts it over the group.
// Every transfer runs on the communication stream (gpu::comm_stream), joined to the compute
// stream (mosaic_stream) by events:
//   post:  compute records `ready` -> comm stream waits on it (the data to send is written,
//          the receive buffer is no longer read) -> ncclSend + ncclRecv in one group -> comm
//          records the pair's completion event;
//   wait:  the compute stream waits on that event; the host does not block, so the ring's next
//          block travels while the kernels of the current one run, and only the kernels that
//          read the received data (queued after the wait) are held back;
//   collectives: the same join before, and the compute stream waits on `joined` after.
// A group of one copies on the compute stream (device to device), never through the host.
// NCCL has no tags: send/recv pairs match in the order they are issued, which is the same on
// every rank (the orchestration is SPMD), so the tag of comm_sendrecv_post is not needed here.
// Floats sum in NCCL's order, not MPI's: results agree with the CPU build to rounding.
#pragma once

// an NCCL error names the call, the site and a hint, then takes the whole job down
#define NCCL_CHECK_HINT(call, hint)                                                                  \
    do {                                                                                             \
        ncclResult_t nccl_status_ = (call);                                                          \
        if (nccl_status_ != ncclSuccess) {                                                           \
            fprintf(stderr, "mosaic: error: [rank %d] %s failed at %s:%d: %s (%s)\n", mosaic_error_rank, \
                    #call, __FILE__, __LINE__, ncclGetErrorString(nccl_status_), hint);               \
            mosaic_exit(1);                                                                          \
        }                                                                                            \
    } while (0)
#define NCCL_CHECK(call) \
    NCCL_CHECK_HINT(call, "a peer rank died, the network failed, or the buffers differ between ranks; NCCL_DEBUG=WARN tells more")

static int comm_host_node_local_rank(Comm* world);

// ----------------------------------------------------------------------------
// the live communicators: checked on every host wait, aborted when the job ends on an error

enum { COMM_MAX_NCCL = 64 };
static ncclComm_t comm_nccl_live[COMM_MAX_NCCL];
static int comm_nccl_count = 0;

static void comm_nccl_abort_all(void) {
    for (int i = 0; i < comm_nccl_count; i++) ncclCommAbort(comm_nccl_live[i]);
    comm_nccl_count = 0;
}

// a communicator that failed asynchronously (a peer's death, a network error) ends the job
static void comm_nccl_poll(void) {
    for (int i = 0; i < comm_nccl_count; i++) {
        ncclResult_t state = ncclSuccess;
        const ncclResult_t status = ncclCommGetAsyncError(comm_nccl_live[i], &state);
        if (status == ncclSuccess && (state == ncclSuccess || state == ncclInProgress)) continue;
        fprintf(stderr, "mosaic: error: [rank %d] an NCCL communicator failed while the host waited on the device: %s "
                "(a peer rank died or the network failed): aborting\n", mosaic_error_rank,
                ncclGetErrorString(status != ncclSuccess ? status : state));
        comm_nccl_abort_all();
        mosaic_exit(1);
    }
}

// ----------------------------------------------------------------------------
// groups

// this rank's GPU: its rank among the ranks of its node, modulo the GPUs it sees
static void comm_device_select(Comm* world) { gpu::backend_select_device(comm_host_node_local_rank(world)); }

static void comm_device_attach(Comm* comm) {
    if (comm->size == 1) return;
    MOSAIC_CHECK(comm_nccl_count < COMM_MAX_NCCL, "more NCCL communicators than COMM_MAX_NCCL");
    CUDA_CHECK(cudaEventCreateWithFlags(&comm->ready, cudaEventDisableTiming));
    CUDA_CHECK(cudaEventCreateWithFlags(&comm->joined, cudaEventDisableTiming));
    for (int i = 0; i < COMM_PAIRS_IN_FLIGHT; i++) {
        CUDA_CHECK(cudaEventCreateWithFlags(&comm->pair_done[i], cudaEventDisableTiming));
        comm->pair_busy[i] = 0;
    }
    ncclUniqueId id;
    if (comm->rank == 0) NCCL_CHECK(ncclGetUniqueId(&id));
    MPI_CHECK(MPI_Bcast(&id, (int)sizeof(id), MPI_BYTE, 0, comm->mpi));
    NCCL_CHECK_HINT(ncclCommInitRank(&comm->nccl, comm->size, id, comm->rank),
                    "NCCL needs one GPU per rank: at most as many ranks per node as GPUs; NCCL_DEBUG=WARN tells more");
    comm_nccl_live[comm_nccl_count++] = comm->nccl;
    gpu::device_wait_poll_hook = comm_nccl_poll;
    gpu::device_wait_abort_hook = comm_nccl_abort_all;
}

static void comm_device_release(Comm* comm) {
    CUDA_CHECK(cudaEventDestroy(comm->ready));
    CUDA_CHECK(cudaEventDestroy(comm->joined));
    for (int i = 0; i < COMM_PAIRS_IN_FLIGHT; i++) CUDA_CHECK(cudaEventDestroy(comm->pair_done[i]));
    NCCL_CHECK(ncclCommDestroy(comm->nccl));
    comm->nccl = NULL;
}

static void comm_device_detach(Comm* comm) {
    if (!comm->nccl) return;
    gpu::device_synchronize(); // nothing of this group may still be in flight
    for (int i = 0; i < comm_nccl_count; i++)
        if (comm_nccl_live[i] == comm->nccl) comm_nccl_live[i] = comm_nccl_live[--comm_nccl_count];
    comm_device_release(comm);
}

// destroys the communicators still alive (the trainer does not free its groups one by one)
static void comm_device_finalize(void) {
    if (gpu::backend_device < 0) return;
    gpu::device_synchronize();
    while (comm_nccl_count > 0) NCCL_CHECK(ncclCommDestroy(comm_nccl_live[--comm_nccl_count]));
    gpu::device_wait_poll_hook = NULL;
    gpu::device_wait_abort_hook = NULL;
}

// the communication stream starts after everything queued so far on the compute stream
static inline void comm_join_before(Comm* comm) {
    CUDA_CHECK(cudaEventRecord(comm->ready, mosaic_stream));
    CUDA_CHECK(cudaStreamWaitEvent(gpu::comm_stream, comm->ready, 0));
}
// the compute stream continues after everything queued so far on the communication stream
static inline void comm_join_after(Comm* comm) {
    CUDA_CHECK(cudaEventRecord(comm->joined, gpu::comm_stream));
    CUDA_CHECK(cudaStreamWaitEvent(mosaic_stream, comm->joined, 0));
}

// ----------------------------------------------------------------------------
// device memory: point to point, a send and a receive posted together and waited together,
// so that compute runs in between

typedef struct {
    Comm* comm;
    int slot; // the pair's completion event in comm->pair_done; -1: a group of one (copied)
} CommSendRecv;

// send (send_count) goes to rank dst while recv (recv_count) comes from rank src; every
// posted pair is waited for exactly once
static void comm_sendrecv_post(CommSendRecv* req, Comm* comm, const float* send, size_t send_count, int dst,
                               float* recv, size_t recv_count, int src, int tag) {
    (void)tag; // pairs match in issue order (see the top of this file)
    req->comm = comm;
    req->slot = -1;
    if (comm->size == 1) {
        MOSAIC_CHECK(send_count == recv_count, "a group of one sends to itself: the counts must agree");
        if (recv != send) device_copy(recv, send, send_count * sizeof(float));
        return;
    }
    for (int i = 0; i < COMM_PAIRS_IN_FLIGHT && req->slot < 0; i++)
        if (!comm->pair_busy[i]) req->slot = i;
    MOSAIC_CHECK(req->slot >= 0, "more send/recv pairs in flight than COMM_PAIRS_IN_FLIGHT: a post without its wait?");
    comm->pair_busy[req->slot] = 1;
    comm_join_before(comm);
    NCCL_CHECK(ncclGroupStart());
    // a zero count is skipped on both sides alike: the peer's matching count is zero too
    if (send_count) NCCL_CHECK(ncclSend(send, send_count, ncclFloat, dst, comm->nccl, gpu::comm_stream));
    if (recv_count) NCCL_CHECK(ncclRecv(recv, recv_count, ncclFloat, src, comm->nccl, gpu::comm_stream));
    NCCL_CHECK(ncclGroupEnd());
    CUDA_CHECK(cudaEventRecord(comm->pair_done[req->slot], gpu::comm_stream));
    comm->bytes_sent += send_count * sizeof(float);
}

// from here on the compute stream sees the receive buffer filled and may overwrite the send one
static void comm_sendrecv_wait(CommSendRecv* req) {
    if (req->slot < 0) return;
    Comm* comm = req->comm;
    MOSAIC_CHECK(comm->pair_busy[req->slot], "a send/recv pair waited for twice");
    CUDA_CHECK(cudaStreamWaitEvent(mosaic_stream, comm->pair_done[req->slot], 0));
    comm->pair_busy[req->slot] = 0; // the wait took the event's state: it may be recorded again
}

// ----------------------------------------------------------------------------
// device memory: collectives (floats unless named otherwise), each on the communication
// stream between the two joins

// out (size * count) = the count floats of every rank, in rank order
static void comm_allgather(Comm* comm, float* out, const float* in, size_t count) {
    if (comm->size == 1) {
        if (out != in) device_copy(out, in, count * sizeof(float));
        return;
    }
    comm_join_before(comm);
    NCCL_CHECK(ncclAllGather(in, out, count, ncclFloat, comm->nccl, gpu::comm_stream));
    comm_join_after(comm);
    comm->bytes_sent += comm_bytes_gather(comm, count, sizeof(float));
}

// uneven all-to-all as grouped send/recv: send_counts[r] floats from in + send_offsets[r] go
// to rank r, which receives them at out + recv_offsets[me]; this rank's own block is a copy
static void comm_alltoallv(Comm* comm, float* out, const int* recv_counts, const int* recv_offsets, const float* in,
                           const int* send_counts, const int* send_offsets) {
    const int me = comm->rank;
    if (comm->size == 1) {
        device_copy(out + recv_offsets[0], in + send_offsets[0], (size_t)send_counts[0] * sizeof(float));
        return;
    }
    MOSAIC_CHECK(send_counts[me] == recv_counts[me], "all-to-all: this rank's block to itself changes size");
    comm_join_before(comm);
    if (send_counts[me])
        CUDA_CHECK(cudaMemcpyAsync(out + recv_offsets[me], in + send_offsets[me], (size_t)send_counts[me] * sizeof(float),
                                   cudaMemcpyDeviceToDevice, gpu::comm_stream));
    NCCL_CHECK(ncclGroupStart());
    for (int r = 0; r < comm->size; r++) {
        if (r == me) continue;
        if (send_counts[r]) NCCL_CHECK(ncclSend(in + send_offsets[r], (size_t)send_counts[r], ncclFloat, r, comm->nccl, gpu::comm_stream));
        if (recv_counts[r]) NCCL_CHECK(ncclRecv(out + recv_offsets[r], (size_t)recv_counts[r], ncclFloat, r, comm->nccl, gpu::comm_stream));
    }
    NCCL_CHECK(ncclGroupEnd());
    comm_join_after(comm);
    comm->bytes_sent += comm_bytes_alltoallv(comm, send_counts);
}

// equal-count all-to-all: block r of in (size * count) goes to rank r; block r of out
// (size * count) is what rank r sent to this one
static void comm_alltoall(Comm* comm, float* out, const float* in, size_t count) {
    if (comm->size == 1) {
        if (out != in) device_copy(out, in, count * sizeof(float));
        return;
    }
    const int me = comm->rank;
    comm_join_before(comm);
    if (count)
        CUDA_CHECK(cudaMemcpyAsync(out + (size_t)me * count, in + (size_t)me * count, count * sizeof(float),
                                   cudaMemcpyDeviceToDevice, gpu::comm_stream));
    NCCL_CHECK(ncclGroupStart());
    for (int r = 0; r < comm->size && count; r++) {
        if (r == me) continue;
        NCCL_CHECK(ncclSend(in + (size_t)r * count, count, ncclFloat, r, comm->nccl, gpu::comm_stream));
        NCCL_CHECK(ncclRecv(out + (size_t)r * count, count, ncclFloat, r, comm->nccl, gpu::comm_stream));
    }
    NCCL_CHECK(ncclGroupEnd());
    comm_join_after(comm);
    comm->bytes_sent += comm_bytes_gather(comm, count, sizeof(float));
}

// buf (count) = sum over ranks, identical everywhere
static void comm_allreduce_sum(Comm* comm, float* buf, size_t count) {
    if (comm->size == 1) return;
    comm_join_before(comm);
    NCCL_CHECK(ncclAllReduce(buf, buf, count, ncclFloat, ncclSum, comm->nccl, gpu::comm_stream));
    comm_join_after(comm);
    comm->bytes_sent += comm_bytes_allreduce(comm, count, sizeof(float));
}

static void comm_allreduce_sum_double(Comm* comm, double* buf, size_t count) {
    if (comm->size == 1) return;
    comm_join_before(comm);
    NCCL_CHECK(ncclAllReduce(buf, buf, count, ncclDouble, ncclSum, comm->nccl, gpu::comm_stream));
    comm_join_after(comm);
    comm->bytes_sent += comm_bytes_allreduce(comm, count, sizeof(double));
}

// out (count) = sum over ranks of block [rank] of in (size * count)
static void comm_reduce_scatter_sum(Comm* comm, float* out, const float* in, size_t count) {
    if (comm->size == 1) {
        if (out != in) device_copy(out, in, count * sizeof(float));
        return;
    }
    comm_join_before(comm);
    NCCL_CHECK(ncclReduceScatter(in, out, count, ncclFloat, ncclSum, comm->nccl, gpu::comm_stream));
    comm_join_after(comm);
    comm->bytes_sent += comm_bytes_gather(comm, count, sizeof(float));
}
