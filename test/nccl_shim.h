// Test-only NCCL on MPI for the emulated CUDA build (clang++ -DMOSAIC_SIMT_EMULATION): exactly
// the calls the GPU trainer makes, defined against the real <nccl.h> declarations (the compiler
// checks every signature). Include it after <nccl.h>; it queues its work on the CUDA runtime
// shim's deferred streams (test/cuda_runtime_shim.h).
//
//   - ncclGetUniqueId names its caller's world rank and a counter; the caller broadcasts the id
//     over MPI as with real NCCL. ncclCommInitRank builds the member table without any MPI call
//     that non-members make: each member sends (rank, world rank, device, host) to the id's
//     creator on MPI_COMM_WORLD under a tag derived from the id (far above the transport's
//     tags), the creator checks the table (each rank once, no GPU used by two ranks of one host:
//     NCCL refuses that) and sends it back, then the members make a private communicator with
//     MPI_Comm_create_group, on which all data moves (it can never match other MPI traffic);
//   - every operation is queued on its CUDA stream and starts only when a synchronisation needs
//     it. ncclSend/ncclRecv are SYNCHRONOUS MPI sends (MPI_Issend) and receives: inside
//     ncclGroupStart/ncclGroupEnd they start together, outside a group each is its own stream
//     work, so a ring's send and receive issued separately deadlock as they do on GPUs (the
//     send waits for the peer's receive, which is queued behind the peer's own send);
//   - ncclAllGather, ncclAllReduce (ncclFloat and ncclDouble, ncclSum) and ncclReduceScatter
//     (the same types) are nonblocking MPI collectives; the reductions gather every rank's
//     contribution and add them in rank order, so every rank gets the same bits in every run;
//   - every buffer is checked against the device memory registry when the call is made and
//     again when the operation starts: a host pointer aborts with the call's name;
//   - a receive whose size differs from the matching send fails; a failed MPI call
//     (ncclSystemError) or an operation that has waited MOSAIC_SHIM_NCCL_TIMEOUT seconds
//     (default 60; ncclRemoteError: a dead or deadlocked peer) fails the communicator instead of
//     hanging: ncclCommGetAsyncError reports it, the synchronisation waiting for it returns
//     cudaErrorLaunchTimeout, ncclCommAbort drops the communicator's queued work.
// Groups must not span streams. Needs MPI initialised (MPI_THREAD_FUNNELED is enough: all calls
// come from the thread that synchronises), except for communicators of one rank.
#pragma once
#include <mpi.h>
#include <nccl.h>
#include "cuda_runtime_shim.h"
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <memory>
#include <string>
#include <vector>

struct ncclComm {
    int rank, nranks;
    MPI_Comm mpi;   // the members in NCCL rank order; MPI_COMM_NULL for a communicator of one rank
    int device;     // current CUDA device at ncclCommInitRank
    double timeout; // seconds an operation may wait for its peers
    ncclResult_t async_error;
    std::vector<MPI_Request> leaked; // left posted by ncclCommAbort (collectives cannot be cancelled)
};

enum { SHIM_NCCL_SEND, SHIM_NCCL_RECV, SHIM_NCCL_ALLGATHER, SHIM_NCCL_ALLREDUCE, SHIM_NCCL_REDUCE_SCATTER };

struct ShimNcclOp {
    int kind;
    const char* call; // "ncclSend", ...
    const void* send;
    void* recv;
    size_t count;     // elements: of the message, of each rank's part (all-gather, reduce-scatter), of the vector
    ncclDataType_t type;
    int peer;
    ncclComm_t comm;
    cudaStream_t stream;
    std::vector<char> staging; // reductions: every rank's contribution, in rank order
};

// one stream work: a group's operations (or one operation outside a group), started together
struct ShimNcclWork {
    std::vector<ShimNcclOp> ops;
    std::vector<MPI_Request> requests;
    std::vector<int> request_op; // the op each request belongs to
    std::vector<int> self_unmatched; // ops of one-rank communicators that found no partner
    double started_at = 0;
    std::string what;
};

struct ShimNcclState {
    int group_depth = 0;
    std::vector<ShimNcclOp> group_ops;
    uint32_t id_counter = 0;
    std::vector<ncclComm_t> comms; // live communicators
};
inline ShimNcclState& shim_nccl = *new ShimNcclState();

struct ShimNcclId { // inside ncclUniqueId
    char magic[16];
    int32_t root_world; // world rank of the ncclGetUniqueId caller; -1 without MPI
    uint32_t counter;
    uint64_t nonce;
};
static_assert(sizeof(ShimNcclId) <= sizeof(ncclUniqueId), "the shim's id fits in ncclUniqueId");
#define SHIM_NCCL_MAGIC "mosaic-nccl-shim"

struct ShimNcclMember {
    int32_t rank, nranks, world_rank, device;
    uint64_t host, nonce;
};

// ----------------------------------------------------------------------------------------------
// helpers

inline ncclResult_t shim_nccl_error(ncclResult_t r, const char* fmt, ...) __attribute__((format(printf, 2, 3)));
inline ncclResult_t shim_nccl_error(ncclResult_t r, const char* fmt, ...) {
    va_list args;
    va_start(args, fmt);
    shim_print_line("nccl shim: error: ", NULL, fmt, args);
    va_end(args);
    return r;
}

inline double shim_nccl_now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

inline size_t shim_nccl_type_size(ncclDataType_t t) {
    switch (t) {
    case ncclInt8: case ncclUint8: case ncclFloat8e4m3: case ncclFloat8e5m2: return 1;
    case ncclFloat16: case ncclBfloat16: return 2;
    case ncclInt32: case ncclUint32: case ncclFloat32: return 4;
    case ncclInt64: case ncclUint64: case ncclFloat64: return 8;
    default: return 0;
    }
}

inline const char* shim_nccl_type_name(ncclDataType_t t) {
    switch (t) {
    case ncclFloat32: return "ncclFloat";
    case ncclFloat64: return "ncclDouble";
    case ncclInt32: return "ncclInt32";
    case ncclInt64: return "ncclInt64";
    case ncclInt8: return "ncclInt8";
    case ncclUint8: return "ncclUint8";
    default: return "another type";
    }
}

inline bool shim_nccl_live(ncclComm_t comm) {
    for (ncclComm_t c : shim_nccl.comms)
        if (c == comm) return true;
    return false;
}

inline double shim_nccl_timeout(void) {
    const char* env = getenv("MOSAIC_SHIM_NCCL_TIMEOUT");
    if (!env || !*env) return 60.0;
    char* end = nullptr;
    double t = strtod(env, &end);
    if (*end != '\0' || !(t > 0)) shim_fail("MOSAIC_SHIM_NCCL_TIMEOUT=%s: want seconds > 0", env);
    return t;
}

inline int shim_nccl_mpi_ready(void) {
    int initialized = 0, finalized = 0;
    MPI_Initialized(&initialized);
    MPI_Finalized(&finalized);
    return initialized && !finalized;
}

// the MPI tag of one communicator's setup traffic on MPI_COMM_WORLD (and of its
// MPI_Comm_create_group): far above the transport's own tags (small numbers), different for
// every id of one creator and, up to 4096 world ranks, for ids of different creators
inline int shim_nccl_tag(const ShimNcclId* id) {
    int* ub = nullptr;
    int flag = 0;
    MPI_Comm_get_attr(MPI_COMM_WORLD, MPI_TAG_UB, &ub, &flag);
    long top = (flag && ub) ? (long)*ub : 32767;
    uint64_t key = ((uint64_t)id->counter << 12) | ((uint64_t)id->root_world & 0xFFF);
    if (top >= (1L << 30)) return (1 << 29) + (int)(key % (1u << 28));
    return (int)(top - 2047 + (long)(key % 2048u));
}

inline uint64_t shim_nccl_host_hash(void) {
    char name[256] = {0};
    gethostname(name, sizeof(name) - 1);
    uint64_t h = 1469598103934665603ull;
    for (const char* p = name; *p; p++) h = (h ^ (uint8_t)*p) * 1099511628211ull;
    return h;
}

inline std::string shim_mpi_error(int code) {
    char text[MPI_MAX_ERROR_STRING];
    int len = 0;
    if (MPI_Error_string(code, text, &len) != MPI_SUCCESS) return "unknown MPI error";
    return std::string(text, (size_t)len);
}

// poll one request until it completes or the communicator's setup times out
inline int shim_nccl_wait(MPI_Request* request, double timeout, MPI_Status* status) {
    double t0 = shim_nccl_now();
    useconds_t nap = 0;
    for (;;) {
        int done = 0;
        int rc = MPI_Test(request, &done, status);
        if (rc != MPI_SUCCESS) return rc;
        if (done) return MPI_SUCCESS;
        if (shim_nccl_now() - t0 > timeout) return -1;
        usleep(nap);
        nap = nap < 1000 ? nap + 50 : 1000;
    }
}

// ----------------------------------------------------------------------------------------------
// running queued operations

// an operation of work failed: say so once, fail its communicators
inline int shim_nccl_fail(ShimNcclWork* w, ncclResult_t code, const char* fmt, ...) __attribute__((format(printf, 3, 4)));
inline int shim_nccl_fail(ShimNcclWork* w, ncclResult_t code, const char* fmt, ...) {
    char line[1024];
    va_list args;
    va_start(args, fmt);
    vsnprintf(line, sizeof(line), fmt, args);
    va_end(args);
    shim_nccl_error(code, "%s", line);
    for (ShimNcclOp& op : w->ops)
        if (shim_nccl_live(op.comm) && op.comm->async_error == ncclSuccess) op.comm->async_error = code;
    return SHIM_ASYNC_FAILED;
}

inline std::string shim_nccl_describe(const ShimNcclOp& op) {
    char buf[256];
    size_t bytes = op.count * shim_nccl_type_size(op.type);
    if (op.kind == SHIM_NCCL_SEND || op.kind == SHIM_NCCL_RECV)
        snprintf(buf, sizeof(buf), "%s of %zu bytes %s rank %d (rank %d of %d)", op.call, bytes,
                 op.kind == SHIM_NCCL_SEND ? "to" : "from", op.peer, op.comm->rank, op.comm->nranks);
    else
        snprintf(buf, sizeof(buf), "%s of %zu bytes per rank (rank %d of %d)", op.call, bytes, op.comm->rank,
                 op.comm->nranks);
    return buf;
}

// the buffers an operation reads and writes, against the registry
inline void shim_nccl_check_buffers(const ShimNcclOp& op) {
    size_t bytes = op.count * shim_nccl_type_size(op.type), n = (size_t)op.comm->nranks;
    char what[96];
    if (op.count == 0) return;
    switch (op.kind) {
    case SHIM_NCCL_SEND:
        snprintf(what, sizeof(what), "%s sendbuff", op.call);
        shim_check_device_range(op.send, bytes, what);
        break;
    case SHIM_NCCL_RECV:
        snprintf(what, sizeof(what), "%s recvbuff", op.call);
        shim_check_device_range(op.recv, bytes, what);
        break;
    case SHIM_NCCL_ALLGATHER:
    case SHIM_NCCL_REDUCE_SCATTER:
    case SHIM_NCCL_ALLREDUCE: {
        size_t send_bytes = op.kind == SHIM_NCCL_REDUCE_SCATTER ? n * bytes : bytes;
        size_t recv_bytes = op.kind == SHIM_NCCL_ALLGATHER ? n * bytes : bytes;
        snprintf(what, sizeof(what), "%s sendbuff", op.call);
        shim_check_device_range(op.send, send_bytes, what);
        snprintf(what, sizeof(what), "%s recvbuff", op.call);
        shim_check_device_range(op.recv, recv_bytes, what);
        break;
    }
    }
}

// element-wise sum of the ranks' contributions in rank order into out
template <typename T>
inline void shim_nccl_sum(void* out, const std::vector<char>& staging, size_t count, int nranks) {
    const T* parts = (const T*)staging.data();
    T* o = (T*)out;
    for (size_t i = 0; i < count; i++) {
        T acc = parts[i];
        for (int r = 1; r < nranks; r++) acc += parts[(size_t)r * count + i];
        o[i] = acc;
    }
}

inline void shim_nccl_reduce_into(ShimNcclOp& op) {
    if (op.type == ncclFloat32) shim_nccl_sum<float>(op.recv, op.staging, op.count, op.comm->nranks);
    else shim_nccl_sum<double>(op.recv, op.staging, op.count, op.comm->nranks);
}

inline int shim_nccl_poll(ShimNcclWork* w) {
    if (!w->requests.empty()) {
        int done = 0;
        std::vector<MPI_Status> statuses(w->requests.size());
        int rc = MPI_Testall((int)w->requests.size(), w->requests.data(), &done, statuses.data());
        if (rc != MPI_SUCCESS) {
            std::string err = shim_mpi_error(rc);
            for (size_t i = 0; i < statuses.size(); i++)
                if (rc == MPI_ERR_IN_STATUS && statuses[i].MPI_ERROR != MPI_SUCCESS && statuses[i].MPI_ERROR != MPI_ERR_PENDING) {
                    err = shim_mpi_error(statuses[i].MPI_ERROR);
                    return shim_nccl_fail(w, ncclSystemError, "%s failed in MPI: %s (a receive smaller than the "
                                          "matching send, or a peer died)",
                                          shim_nccl_describe(w->ops[(size_t)w->request_op[i]]).c_str(), err.c_str());
                }
            return shim_nccl_fail(w, ncclSystemError, "%s failed in MPI: %s (a peer died?)", w->what.c_str(), err.c_str());
        }
        if (done) {
            for (size_t i = 0; i < statuses.size(); i++) {
                ShimNcclOp& op = w->ops[(size_t)w->request_op[i]];
                if (op.kind != SHIM_NCCL_RECV) continue;
                int got = 0;
                MPI_Get_count(&statuses[i], MPI_BYTE, &got);
                size_t want = op.count * shim_nccl_type_size(op.type);
                if ((size_t)got != want)
                    return shim_nccl_fail(w, ncclInvalidUsage, "%s got %d bytes: the matching ncclSend has another "
                                          "count or datatype", shim_nccl_describe(op).c_str(), got);
            }
            w->requests.clear();
        }
    }
    if (w->requests.empty() && w->self_unmatched.empty()) {
        for (ShimNcclOp& op : w->ops)
            if ((op.kind == SHIM_NCCL_ALLREDUCE || op.kind == SHIM_NCCL_REDUCE_SCATTER) && op.comm->mpi != MPI_COMM_NULL)
                shim_nccl_reduce_into(op);
        return SHIM_ASYNC_DONE;
    }
    if (shim_nccl_now() - w->started_at > w->ops[0].comm->timeout) {
        const ShimNcclOp& op = w->ops[(size_t)(w->self_unmatched.empty() ? w->request_op[0] : w->self_unmatched[0])];
        return shim_nccl_fail(w, ncclRemoteError, "%s did not complete within %.0f s (MOSAIC_SHIM_NCCL_TIMEOUT): a "
                              "ncclSend/ncclRecv pair issued outside ncclGroupStart/ncclGroupEnd deadlocks (each "
                              "waits for the peer's matching call, queued behind the peer's own), or a peer died or "
                              "never synchronised its stream",
                              shim_nccl_describe(op).c_str(), op.comm->timeout);
    }
    return SHIM_ASYNC_PENDING;
}

// post every operation of the work (the stream reached it)
inline int shim_nccl_start(ShimNcclWork* w) {
    w->started_at = shim_nccl_now();
    std::vector<int> self_sends, self_recvs;
    for (size_t k = 0; k < w->ops.size(); k++) {
        ShimNcclOp& op = w->ops[k];
        if (!shim_nccl_live(op.comm)) shim_fail("%s: its communicator was destroyed before the operation ran", op.call);
        shim_nccl_check_buffers(op);
        size_t esize = shim_nccl_type_size(op.type), bytes = op.count * esize;
        ncclComm_t c = op.comm;
        if (c->mpi == MPI_COMM_NULL) { // one rank: no transfers, copies
            if (op.kind == SHIM_NCCL_SEND) self_sends.push_back((int)k);
            else if (op.kind == SHIM_NCCL_RECV) self_recvs.push_back((int)k);
            else if (bytes > 0 && op.recv != op.send) memmove(op.recv, op.send, bytes);
            continue;
        }
        if (bytes > (size_t)INT32_MAX)
            return shim_nccl_fail(w, ncclInvalidArgument, "%s: more than 2 GB in one operation (the MPI shim's limit)",
                                  shim_nccl_describe(op).c_str());
        MPI_Request r = MPI_REQUEST_NULL;
        int rc = MPI_SUCCESS;
        const char* mpi_call = "";
        switch (op.kind) {
        case SHIM_NCCL_SEND:
            mpi_call = "MPI_Issend";
            rc = MPI_Issend(op.send, (int)bytes, MPI_BYTE, op.peer, 0, c->mpi, &r);
            break;
        case SHIM_NCCL_RECV:
            mpi_call = "MPI_Irecv";
            rc = MPI_Irecv(op.recv, (int)bytes, MPI_BYTE, op.peer, 0, c->mpi, &r);
            break;
        case SHIM_NCCL_ALLGATHER:
            mpi_call = "MPI_Iallgather";
            if (op.send == (const char*)op.recv + (size_t)c->rank * bytes)
                rc = MPI_Iallgather(MPI_IN_PLACE, 0, MPI_DATATYPE_NULL, op.recv, (int)bytes, MPI_BYTE, c->mpi, &r);
            else
                rc = MPI_Iallgather(op.send, (int)bytes, MPI_BYTE, op.recv, (int)bytes, MPI_BYTE, c->mpi, &r);
            break;
        case SHIM_NCCL_ALLREDUCE: // every contribution, summed in rank order once all arrived
            mpi_call = "MPI_Iallgather";
            op.staging.assign((size_t)c->nranks * bytes, 0);
            rc = MPI_Iallgather(op.send, (int)bytes, MPI_BYTE, op.staging.data(), (int)bytes, MPI_BYTE, c->mpi, &r);
            break;
        case SHIM_NCCL_REDUCE_SCATTER: // every rank's part k goes to rank k, summed in rank order there
            mpi_call = "MPI_Ialltoall";
            op.staging.assign((size_t)c->nranks * bytes, 0);
            rc = MPI_Ialltoall(op.send, (int)bytes, MPI_BYTE, op.staging.data(), (int)bytes, MPI_BYTE, c->mpi, &r);
            break;
        }
        if (rc != MPI_SUCCESS)
            return shim_nccl_fail(w, ncclSystemError, "%s: %s failed: %s (a peer died?)", shim_nccl_describe(op).c_str(),
                                  mpi_call, shim_mpi_error(rc).c_str());
        w->requests.push_back(r);
        w->request_op.push_back((int)k);
    }
    // one-rank communicators: the k-th send to self pairs with the k-th receive from self of this work
    size_t paired = self_sends.size() < self_recvs.size() ? self_sends.size() : self_recvs.size();
    for (size_t i = 0; i < paired; i++) {
        const ShimNcclOp &s = w->ops[(size_t)self_sends[i]], &r = w->ops[(size_t)self_recvs[i]];
        size_t sb = s.count * shim_nccl_type_size(s.type), rb = r.count * shim_nccl_type_size(r.type);
        if (sb != rb)
            return shim_nccl_fail(w, ncclInvalidUsage, "%s got %zu bytes: the matching ncclSend has another count or "
                                  "datatype", shim_nccl_describe(r).c_str(), sb);
        if (sb > 0) memmove(r.recv, s.send, sb);
    }
    for (size_t i = paired; i < self_sends.size(); i++) w->self_unmatched.push_back(self_sends[i]);
    for (size_t i = paired; i < self_recvs.size(); i++) w->self_unmatched.push_back(self_recvs[i]);
    return shim_nccl_poll(w);
}

// ncclCommAbort: release what the work posted
inline void shim_nccl_cancel(ShimNcclWork* w) {
    for (size_t i = 0; i < w->requests.size(); i++) {
        MPI_Request& r = w->requests[i];
        if (r == MPI_REQUEST_NULL) continue;
        ShimNcclOp& op = w->ops[(size_t)w->request_op[i]];
        if (op.kind == SHIM_NCCL_SEND || op.kind == SHIM_NCCL_RECV) {
            MPI_Cancel(&r);
            MPI_Request_free(&r);
        } else if (shim_nccl_live(op.comm)) {
            op.comm->leaked.push_back(r); // MPI forbids cancelling a nonblocking collective
        }
    }
    w->requests.clear();
}

// queue ops as one stream work
inline ncclResult_t shim_nccl_enqueue(std::vector<ShimNcclOp>&& ops) {
    if (ops.empty()) return ncclSuccess;
    auto w = std::make_shared<ShimNcclWork>();
    w->ops = std::move(ops);
    std::vector<const void*> owners;
    for (ShimNcclOp& op : w->ops) {
        if (op.stream != w->ops[0].stream)
            return shim_nccl_error(ncclInvalidUsage, "ncclGroupEnd: the group's operations use different streams "
                                   "(the shim supports one stream per group)");
        bool seen = false;
        for (const void* o : owners) seen |= o == op.comm;
        if (!seen) owners.push_back(op.comm);
    }
    if (w->ops.size() == 1) {
        w->what = shim_nccl_describe(w->ops[0]);
    } else {
        char buf[96];
        snprintf(buf, sizeof(buf), "a group of %zu NCCL operations (first: ", w->ops.size());
        w->what = buf + shim_nccl_describe(w->ops[0]) + ")";
    }
    cudaError_t e = shim_enqueue_async(
        w->ops[0].stream, w->what, owners, [w] { return shim_nccl_start(w.get()); }, [w] { return shim_nccl_poll(w.get()); },
        [w] { shim_nccl_cancel(w.get()); });
    return e == cudaSuccess ? ncclSuccess : shim_nccl_error(ncclInvalidArgument, "%s: bad stream", w->what.c_str());
}

// the checks every operation makes at the call; then queued at once or collected by the group
inline ncclResult_t shim_nccl_op(ShimNcclOp op) {
    if (!shim_nccl_live(op.comm)) return shim_nccl_error(ncclInvalidArgument, "%s: comm %p is not a live communicator", op.call, (void*)op.comm);
    if (op.comm->async_error != ncclSuccess)
        return shim_nccl_error(ncclInvalidUsage, "%s: the communicator failed earlier (%s): abort it", op.call,
                               ncclGetErrorString(op.comm->async_error));
    if (shim_nccl_type_size(op.type) == 0) return shim_nccl_error(ncclInvalidArgument, "%s: invalid datatype %d", op.call, (int)op.type);
    if ((op.kind == SHIM_NCCL_ALLREDUCE || op.kind == SHIM_NCCL_REDUCE_SCATTER) && op.type != ncclFloat32 &&
        op.type != ncclFloat64)
        return shim_nccl_error(ncclInvalidArgument, "%s: %s is not emulated (ncclFloat and ncclDouble only)", op.call,
                               shim_nccl_type_name(op.type));
    if ((op.kind == SHIM_NCCL_SEND || op.kind == SHIM_NCCL_RECV) && (op.peer < 0 || op.peer >= op.comm->nranks))
        return shim_nccl_error(ncclInvalidArgument, "%s: peer %d is not a rank of the communicator (0..%d)", op.call,
                               op.peer, op.comm->nranks - 1);
    if (op.comm->device != shim_state.device)
        return shim_nccl_error(ncclInvalidUsage, "%s: the communicator belongs to device %d but device %d is current",
                               op.call, op.comm->device, shim_state.device);
    if (!shim_stream_ptr(op.stream)) return shim_nccl_error(ncclInvalidArgument, "%s: stream %p does not exist", op.call, (void*)op.stream);
    shim_nccl_check_buffers(op);
    if (op.count == 0 && op.kind != SHIM_NCCL_SEND && op.kind != SHIM_NCCL_RECV) return ncclSuccess; // NCCL: nothing to do
    if (shim_nccl.group_depth > 0) {
        shim_nccl.group_ops.push_back(std::move(op));
        return ncclSuccess;
    }
    std::vector<ShimNcclOp> one;
    one.push_back(std::move(op));
    return shim_nccl_enqueue(std::move(one));
}

// ----------------------------------------------------------------------------------------------
// the NCCL calls (weak: several translation units may include this header)

__attribute__((weak)) const char* ncclGetErrorString(ncclResult_t result) {
    switch (result) {
    case ncclSuccess: return "no error";
    case ncclUnhandledCudaError: return "unhandled cuda error (run with NCCL_DEBUG=INFO for details)";
    case ncclSystemError: return "unhandled system error (run with NCCL_DEBUG=INFO for details)";
    case ncclInternalError: return "internal error - please report this issue to the NCCL developers";
    case ncclInvalidArgument: return "invalid argument (run with NCCL_DEBUG=WARN for details)";
    case ncclInvalidUsage: return "invalid usage (run with NCCL_DEBUG=WARN for details)";
    case ncclRemoteError: return "remote process exited or there was a network error";
    case ncclInProgress: return "NCCL operation in progress";
    default: return "unknown result code";
    }
}

__attribute__((weak)) ncclResult_t ncclGetUniqueId(ncclUniqueId* uniqueId) {
    if (!uniqueId) return shim_nccl_error(ncclInvalidArgument, "ncclGetUniqueId: NULL result pointer");
    ShimNcclId id;
    memset(&id, 0, sizeof(id));
    memcpy(id.magic, SHIM_NCCL_MAGIC, sizeof(id.magic));
    id.root_world = -1;
    if (shim_nccl_mpi_ready()) MPI_Comm_rank(MPI_COMM_WORLD, &id.root_world);
    id.counter = shim_nccl.id_counter++;
    id.nonce = ((uint64_t)getpid() << 32) ^ (uint64_t)(shim_nccl_now() * 1e6) ^ ((uint64_t)id.counter << 48);
    memset(uniqueId, 0, sizeof(*uniqueId));
    memcpy(uniqueId->internal, &id, sizeof(id));
    return ncclSuccess;
}

// the member table, built through the id's creator (see the top of the file)
inline ncclResult_t shim_nccl_exchange_table(std::vector<ShimNcclMember>* table, const ShimNcclId* id,
                                             const ShimNcclMember& me, double timeout) {
    int nranks = me.nranks, tag = shim_nccl_tag(id);
    table->assign((size_t)nranks, ShimNcclMember{-1, 0, -1, -1, 0, 0});
    int32_t verdict = 0; // 0: table good; otherwise the ncclResult_t every member returns
    if (me.world_rank == id->root_world) {
        (*table)[(size_t)me.rank] = me;
        std::vector<int> member_world;
        for (int got = 1; got < nranks; got++) {
            ShimNcclMember m;
            MPI_Request r;
            MPI_Status st;
            MPI_Irecv(&m, (int)sizeof(m), MPI_BYTE, MPI_ANY_SOURCE, tag, MPI_COMM_WORLD, &r);
            int rc = shim_nccl_wait(&r, timeout, &st);
            if (rc != MPI_SUCCESS) {
                if (rc == -1) {
                    MPI_Cancel(&r);
                    MPI_Request_free(&r);
                }
                return shim_nccl_error(ncclSystemError, "ncclCommInitRank: %d of %d ranks joined within %.0f s (did "
                                       "every rank call ncclCommInitRank with this id?)", got, nranks, timeout);
            }
            member_world.push_back(st.MPI_SOURCE);
            if (m.nonce != me.nonce || m.nranks != nranks || m.rank < 0 || m.rank >= nranks ||
                (*table)[(size_t)m.rank].world_rank >= 0) {
                shim_nccl_error(ncclInvalidUsage, "ncclCommInitRank: world rank %d joins as rank %d of %d, but this "
                                "communicator has %d ranks%s", m.world_rank, m.rank, m.nranks, nranks,
                                m.rank >= 0 && m.rank < nranks && (*table)[(size_t)m.rank].world_rank >= 0
                                    ? " and that rank is taken" : "");
                verdict = ncclInvalidUsage;
            } else {
                (*table)[(size_t)m.rank] = m;
            }
        }
        for (int a = 0; a < nranks && !verdict; a++)
            for (int b = a + 1; b < nranks && !verdict; b++)
                if ((*table)[(size_t)a].host == (*table)[(size_t)b].host && (*table)[(size_t)a].device == (*table)[(size_t)b].device) {
                    shim_nccl_error(ncclInvalidUsage, "ncclCommInitRank: ranks %d and %d (world ranks %d and %d) both "
                                    "use CUDA device %d of one host: NCCL refuses a GPU shared by two ranks of a "
                                    "communicator (pick the device from the node-local rank; the shim has "
                                    "MOSAIC_SHIM_DEVICES devices)", a, b, (*table)[(size_t)a].world_rank,
                                    (*table)[(size_t)b].world_rank, (*table)[(size_t)a].device);
                    verdict = ncclInvalidUsage;
                }
        std::vector<char> reply(sizeof(int32_t) + (size_t)nranks * sizeof(ShimNcclMember));
        memcpy(reply.data(), &verdict, sizeof(verdict));
        memcpy(reply.data() + sizeof(verdict), table->data(), (size_t)nranks * sizeof(ShimNcclMember));
        for (int w : member_world) MPI_Send(reply.data(), (int)reply.size(), MPI_BYTE, w, tag, MPI_COMM_WORLD);
    } else {
        MPI_Request r;
        MPI_Status st;
        MPI_Isend(&me, (int)sizeof(me), MPI_BYTE, id->root_world, tag, MPI_COMM_WORLD, &r);
        int rc = shim_nccl_wait(&r, timeout, &st);
        std::vector<char> reply(sizeof(int32_t) + (size_t)nranks * sizeof(ShimNcclMember));
        if (rc == MPI_SUCCESS) {
            MPI_Irecv(reply.data(), (int)reply.size(), MPI_BYTE, id->root_world, tag, MPI_COMM_WORLD, &r);
            rc = shim_nccl_wait(&r, timeout, &st);
        }
        if (rc != MPI_SUCCESS)
            return shim_nccl_error(ncclSystemError, "ncclCommInitRank: no member table from world rank %d (the id's "
                                   "creator) within %.0f s: it must call ncclCommInitRank with this id too",
                                   id->root_world, timeout);
        int got = 0;
        MPI_Get_count(&st, MPI_BYTE, &got);
        if ((size_t)got != reply.size())
            return shim_nccl_error(ncclInvalidUsage, "ncclCommInitRank: the creator's communicator has another size "
                                   "than the %d ranks this rank asked for", nranks);
        memcpy(&verdict, reply.data(), sizeof(verdict));
        memcpy(table->data(), reply.data() + sizeof(verdict), (size_t)nranks * sizeof(ShimNcclMember));
        if (verdict)
            return shim_nccl_error((ncclResult_t)verdict, "ncclCommInitRank: world rank %d (the id's creator) "
                                   "rejected the communicator (its message says why)", id->root_world);
    }
    return (ncclResult_t)verdict;
}

__attribute__((weak)) ncclResult_t ncclCommInitRank(ncclComm_t* comm, int nranks, ncclUniqueId commId, int rank) {
    if (!comm) return shim_nccl_error(ncclInvalidArgument, "ncclCommInitRank: NULL result pointer");
    *comm = nullptr;
    ShimNcclId id;
    memcpy(&id, commId.internal, sizeof(id));
    if (memcmp(id.magic, SHIM_NCCL_MAGIC, sizeof(id.magic)) != 0)
        return shim_nccl_error(ncclInvalidArgument, "ncclCommInitRank: the id was not made by ncclGetUniqueId (was it "
                               "broadcast to every rank?)");
    if (nranks < 1 || rank < 0 || rank >= nranks)
        return shim_nccl_error(ncclInvalidArgument, "ncclCommInitRank: rank %d of %d", rank, nranks);
    if (shim_nccl.group_depth > 0)
        return shim_nccl_error(ncclInvalidUsage, "ncclCommInitRank inside ncclGroupStart/ncclGroupEnd is not emulated");
    ncclComm_t c = new ncclComm{rank, nranks, MPI_COMM_NULL, shim_state.device, shim_nccl_timeout(), ncclSuccess, {}};
    if (nranks > 1) {
        if (!shim_nccl_mpi_ready() || id.root_world < 0) {
            delete c;
            return shim_nccl_error(ncclInvalidUsage, "ncclCommInitRank: %d ranks need MPI (the shim runs NCCL on MPI: "
                                   "MPI_Init before ncclGetUniqueId)", nranks);
        }
        ShimNcclMember me{rank, nranks, 0, shim_state.device, shim_nccl_host_hash(), id.nonce};
        MPI_Comm_rank(MPI_COMM_WORLD, &me.world_rank);
        std::vector<ShimNcclMember> table;
        ncclResult_t r = shim_nccl_exchange_table(&table, &id, me, c->timeout);
        if (r != ncclSuccess) {
            delete c;
            return r;
        }
        MPI_Group world_group, group;
        std::vector<int> world_ranks;
        for (const ShimNcclMember& m : table) world_ranks.push_back(m.world_rank);
        MPI_Comm_group(MPI_COMM_WORLD, &world_group);
        MPI_Group_incl(world_group, nranks, world_ranks.data(), &group);
        int rc = MPI_Comm_create_group(MPI_COMM_WORLD, group, shim_nccl_tag(&id), &c->mpi);
        MPI_Group_free(&group);
        MPI_Group_free(&world_group);
        if (rc != MPI_SUCCESS || c->mpi == MPI_COMM_NULL) {
            delete c;
            return shim_nccl_error(ncclSystemError, "ncclCommInitRank: MPI_Comm_create_group failed: %s",
                                   shim_mpi_error(rc).c_str());
        }
        MPI_Comm_set_errhandler(c->mpi, MPI_ERRORS_RETURN);
    }
    shim_nccl.comms.push_back(c);
    *comm = c;
    return ncclSuccess;
}

__attribute__((weak)) ncclResult_t ncclCommGetAsyncError(ncclComm_t comm, ncclResult_t* asyncError) {
    if (!asyncError) return shim_nccl_error(ncclInvalidArgument, "ncclCommGetAsyncError: NULL result pointer");
    if (!shim_nccl_live(comm)) return shim_nccl_error(ncclInvalidArgument, "ncclCommGetAsyncError: comm %p is not a live communicator", (void*)comm);
    shim_progress(); // started operations advance, and time out
    *asyncError = comm->async_error;
    return ncclSuccess;
}

inline void shim_nccl_forget(ncclComm_t comm) {
    auto& v = shim_nccl.comms;
    for (size_t i = 0; i < v.size(); i++)
        if (v[i] == comm) {
            v.erase(v.begin() + (long)i);
            break;
        }
}

// drop the communicator's queued and running work; its transfers are cancelled where MPI allows
__attribute__((weak)) ncclResult_t ncclCommAbort(ncclComm_t comm) {
    if (!comm) return ncclSuccess;
    if (!shim_nccl_live(comm)) return shim_nccl_error(ncclInvalidArgument, "ncclCommAbort: comm %p is not a live communicator", (void*)comm);
    shim_drop_owner(comm);
    for (size_t i = 0; i < shim_nccl.group_ops.size();) {
        if (shim_nccl.group_ops[i].comm == comm) shim_nccl.group_ops.erase(shim_nccl.group_ops.begin() + (long)i);
        else i++;
    }
    shim_nccl_forget(comm);
    // the private MPI communicator is not freed: transfers a peer never matched may still refer to it
    delete comm;
    return ncclSuccess;
}

// waits for the communicator's queued work (ncclCommFinalize's part), then frees it
__attribute__((weak)) ncclResult_t ncclCommDestroy(ncclComm_t comm) {
    if (!comm) return ncclSuccess;
    if (!shim_nccl_live(comm)) return shim_nccl_error(ncclInvalidArgument, "ncclCommDestroy: comm %p is not a live communicator", (void*)comm);
    if (shim_run_owner(comm, "ncclCommDestroy") != cudaSuccess)
        return shim_nccl_error(comm->async_error != ncclSuccess ? comm->async_error : ncclSystemError,
                               "ncclCommDestroy: the communicator's work failed: ncclCommAbort it");
    shim_nccl_forget(comm);
    if (comm->mpi != MPI_COMM_NULL) MPI_Comm_free(&comm->mpi);
    delete comm;
    return ncclSuccess;
}

__attribute__((weak)) ncclResult_t ncclGroupStart(void) {
    shim_nccl.group_depth++;
    return ncclSuccess;
}

__attribute__((weak)) ncclResult_t ncclGroupEnd(void) {
    if (shim_nccl.group_depth == 0) return shim_nccl_error(ncclInvalidUsage, "ncclGroupEnd without ncclGroupStart");
    if (--shim_nccl.group_depth > 0) return ncclSuccess;
    std::vector<ShimNcclOp> ops = std::move(shim_nccl.group_ops);
    shim_nccl.group_ops.clear();
    return shim_nccl_enqueue(std::move(ops));
}

__attribute__((weak)) ncclResult_t ncclSend(const void* sendbuff, size_t count, ncclDataType_t datatype, int peer,
                                            ncclComm_t comm, cudaStream_t stream) {
    return shim_nccl_op(ShimNcclOp{SHIM_NCCL_SEND, "ncclSend", sendbuff, nullptr, count, datatype, peer, comm, stream, {}});
}

__attribute__((weak)) ncclResult_t ncclRecv(void* recvbuff, size_t count, ncclDataType_t datatype, int peer,
                                            ncclComm_t comm, cudaStream_t stream) {
    return shim_nccl_op(ShimNcclOp{SHIM_NCCL_RECV, "ncclRecv", nullptr, recvbuff, count, datatype, peer, comm, stream, {}});
}

__attribute__((weak)) ncclResult_t ncclAllGather(const void* sendbuff, void* recvbuff, size_t sendcount,
                                                 ncclDataType_t datatype, ncclComm_t comm, cudaStream_t stream) {
    return shim_nccl_op(ShimNcclOp{SHIM_NCCL_ALLGATHER, "ncclAllGather", sendbuff, recvbuff, sendcount, datatype, 0, comm, stream, {}});
}

__attribute__((weak)) ncclResult_t ncclAllReduce(const void* sendbuff, void* recvbuff, size_t count,
                                                 ncclDataType_t datatype, ncclRedOp_t op, ncclComm_t comm,
                                                 cudaStream_t stream) {
    if (op != ncclSum) return shim_nccl_error(ncclInvalidArgument, "ncclAllReduce: only ncclSum is emulated (got op %d)", (int)op);
    return shim_nccl_op(ShimNcclOp{SHIM_NCCL_ALLREDUCE, "ncclAllReduce", sendbuff, recvbuff, count, datatype, 0, comm, stream, {}});
}

__attribute__((weak)) ncclResult_t ncclReduceScatter(const void* sendbuff, void* recvbuff, size_t recvcount,
                                                     ncclDataType_t datatype, ncclRedOp_t op, ncclComm_t comm,
                                                     cudaStream_t stream) {
    if (op != ncclSum) return shim_nccl_error(ncclInvalidArgument, "ncclReduceScatter: only ncclSum is emulated (got op %d)", (int)op);
    return shim_nccl_op(ShimNcclOp{SHIM_NCCL_REDUCE_SCATTER, "ncclReduceScatter", sendbuff, recvbuff, recvcount, datatype, 0, comm, stream, {}});
}
