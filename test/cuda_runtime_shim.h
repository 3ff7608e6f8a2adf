// Test-only CUDA runtime for host code (clang++ -DMOSAIC_SIMT_EMULATION): exactly the calls the
// GPU trainer makes, defined against the real <cuda_runtime_api.h> declarations (the compiler
// checks every signature), with a GPU's ordering rules and as strict as a CPU can check them.
// test/simt_emulator.h includes it and runs the kernels; test/cublas_shim.h and
// test/nccl_shim.h queue their work through it.
//
//   - device memory is a registry of heap allocations (cudaMalloc, NaN-filled: a read before a
//     write shows up). Every pointer given to a kernel launch, a copy, a memset, cuBLAS or NCCL
//     must lie inside one allocation (shim_check_device_range aborts naming the call), and every
//     copy checks its direction against the registry;
//   - streams are deferred queues: the legacy default stream (0, cudaStreamLegacy), the
//     per-thread default stream and cudaStreamCreateWithFlags streams. Kernel launches, async
//     copies and memsets, cudaMemset, device-to-device cudaMemcpy, event records, event waits
//     and NCCL operations are queued and run only when something needs them:
//       cudaStreamSynchronize, cudaEventSynchronize, cudaDeviceSynchronize (everything),
//       cudaStreamQuery / cudaEventQuery (run what can run without waiting),
//       a host<->device cudaMemcpy (the legacy default stream only: CUDA syncs that stream
//       before a pageable copy; a cudaStreamNonBlocking stream's pending work is NOT run),
//       cudaFree (everything: cudaFree synchronises the device on CUDA).
//     Then the heads of the queues that may run are run one at a time in a random order
//     (seeded by MOSAIC_SHIM_SEED, default 1): a head waiting on an event (cudaStreamWaitEvent)
//     may not run before the event's recorded point has run, and an NCCL operation starts only
//     when the synchronisation needs it (so ranks start their transfers at matching points).
//     Work that is not needed may run too (a GPU runs it whenever), so a missing event wait or
//     stream synchronisation gives a wrong result for some seed instead of passing;
//   - async copies read and write host memory when they run, as a GPU's DMA does, so a host
//     buffer reused before the copy's stream was synchronised shows up;
//   - the legacy default stream orders with streams created without cudaStreamNonBlocking (and
//     the per-thread stream), both ways, as CUDA's implicit synchronisation does;
//   - cudaGetDeviceCount is MOSAIC_SHIM_DEVICES (default 1), cudaSetDevice checks the range;
//     a stream or event is used only on the device that was current when it was made;
//   - misuse returns CUDA's error code with one line on stderr saying why (the caller's
//     CUDA_CHECK stops); a pointer that is not device memory aborts (shim_check_device_range).
// Single-threaded: the queues run on the thread that synchronises (the trainer's main thread).
// Limits: no timing (cudaEventElapsedTime), no graphs, no pinned or managed memory; memory is not
// per device; work that waits for a peer rank (NCCL) progresses only while this process is inside
// a synchronising call, never while it sits in a host MPI call (a GPU would progress it).
#pragma once
#include <cuda_runtime.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#ifdef CUDA_API_PER_THREAD_DEFAULT_STREAM
#error "the CUDA runtime shim implements the legacy default stream: build without --default-stream per-thread"
#endif

// shared memory per block without opt-in, and the opt-in limit of sm_80 (the smaller target:
// a block that needs more would not launch on an A100)
enum { SHIM_MAX_DEFAULT_SHARED = 48 * 1024, SHIM_MAX_OPTIN_SHARED = 163 * 1024 };

// ----------------------------------------------------------------------------------------------
// state

enum { SHIM_WORK_RUN, SHIM_WORK_WAIT, SHIM_WORK_ASYNC };
enum { SHIM_ASYNC_PENDING, SHIM_ASYNC_DONE, SHIM_ASYNC_FAILED };

struct ShimStream;

// one queued operation
struct ShimWork {
    uint64_t seq = 0; // global enqueue order; increasing along each queue
    int kind = SHIM_WORK_RUN;
    std::string what; // for messages: "kernel foo launched at file:line", "cudaMemcpyAsync", ...
    // RUN: done in one go
    std::function<void()> run;
    // WAIT: until wait_stream has run its work up to wait_seq (an event's recorded point)
    std::shared_ptr<ShimStream> wait_stream;
    uint64_t wait_seq = 0;
    // ASYNC (NCCL): start() posts the transfers, poll() progresses them; both return SHIM_ASYNC_*.
    // cancel() releases what start() posted (ncclCommAbort); owners: the communicators involved
    std::function<int()> start, poll;
    std::function<void()> cancel;
    std::vector<const void*> owners;
    int started = 0, failed = 0;
};

struct ShimStream {
    int id;          // 0: legacy default stream, 1: per-thread default stream, then created ones
    unsigned flags;  // cudaStreamDefault (orders with the legacy stream) or cudaStreamNonBlocking
    int device;      // current device when created
    int destroyed = 0;
    uint64_t last_seq = 0; // seq of the last work queued here
    std::deque<ShimWork> queue;
};

struct ShimEvent {
    unsigned flags;
    int device;
    std::shared_ptr<ShimStream> stream; // where it was last recorded (null: never)
    uint64_t seq = 0;                    // the recorded point: that stream's work up to seq
};

struct ShimState {
    // device memory: start -> bytes
    std::map<uintptr_t, size_t> allocations;
    std::map<const void*, int> max_dynamic_shared; // cudaFuncSetAttribute opt-ins
    cudaError_t last_error = cudaSuccess;
    int device = 0;
    // [0] legacy, [1] per-thread, then created streams; a destroyed one stays until its work ran
    std::vector<std::shared_ptr<ShimStream>> streams;
    std::vector<ShimEvent*> events;
    uint64_t seq = 0;
    int next_stream_id = 2;
    uint64_t rng = 0;
    int rng_ready = 0;
    int draining = 0; // inside a synchronising call: queued work is running
    // statistics (for tests)
    uint64_t work_run = 0, picks_with_choice = 0;
    ShimState() {
        streams.push_back(std::make_shared<ShimStream>(ShimStream{0, cudaStreamDefault, 0}));
        streams.push_back(std::make_shared<ShimStream>(ShimStream{1, cudaStreamDefault, 0}));
    }
};
// never destroyed: work may still be queued when static destructors run, and LeakSanitizer must
// not report the registry as leaked
inline ShimState& shim_state = *new ShimState();

// ----------------------------------------------------------------------------------------------
// messages

// one line "<prefix><message><suffix>" to stderr in one write (ranks' lines never interleave),
// after whatever stdout holds; the shims' and the emulator's error paths all print through it
inline void shim_print_line(const char* prefix, const char* suffix, const char* fmt, va_list args) {
    char line[2048];
    int n = snprintf(line, sizeof(line), "%s", prefix);
    if (n < (int)sizeof(line)) n += vsnprintf(line + n, sizeof(line) - n, fmt, args);
    if (suffix && n < (int)sizeof(line)) n += snprintf(line + n, sizeof(line) - n, "%s", suffix);
    if (n > (int)sizeof(line) - 2) n = (int)sizeof(line) - 2;
    line[n++] = '\n';
    line[n] = '\0';
    fflush(stdout);
    fputs(line, stderr);
    fflush(stderr);
}

// misuse that cannot be returned as an error: one line, then abort()
__attribute__((noreturn, format(printf, 1, 2))) inline void shim_fail(const char* fmt, ...) {
    va_list args;
    va_start(args, fmt);
    shim_print_line("cuda shim: error: ", NULL, fmt, args);
    va_end(args);
    abort();
}

// misuse CUDA reports as an error code: say why on stderr, remember it for cudaGetLastError
inline cudaError_t shim_error(cudaError_t e, const char* fmt, ...) __attribute__((format(printf, 2, 3)));
inline cudaError_t shim_error(cudaError_t e, const char* fmt, ...) {
    va_list args;
    va_start(args, fmt);
    shim_print_line("cuda shim: ", NULL, fmt, args);
    va_end(args);
    shim_state.last_error = e;
    return e;
}

// ----------------------------------------------------------------------------------------------
// device memory registry

// the allocation holding [p, p + bytes), or end()
inline std::map<uintptr_t, size_t>::iterator shim_find_allocation(const void* p, size_t bytes) {
    auto& A = shim_state.allocations;
    uintptr_t a = (uintptr_t)p;
    auto it = A.upper_bound(a);
    if (it == A.begin()) return A.end();
    --it;
    uintptr_t lo = it->first, hi = it->first + it->second;
    // a zero-byte range may sit at the end of an allocation (an empty tail of a buffer)
    if (a >= lo && (bytes == 0 ? a <= hi : (a < hi && bytes <= hi - a))) return it;
    return A.end();
}

inline bool shim_is_device(const void* p, size_t bytes) {
    return shim_find_allocation(p, bytes) != shim_state.allocations.end();
}

// for kernels, copies, cuBLAS and NCCL: abort unless [p, p + bytes) lies inside one allocation
inline void shim_check_device_range(const void* p, size_t bytes, const char* what) {
    if (shim_is_device(p, bytes)) return;
    auto& A = shim_state.allocations;
    auto it = A.upper_bound((uintptr_t)p);
    if (it != A.begin()) {
        --it;
        if ((uintptr_t)p >= it->first && (uintptr_t)p <= it->first + it->second)
            shim_fail("%s: [%p, +%zu bytes) overruns its device allocation of %zu bytes at %p by %zu bytes", what, p, bytes,
                      it->second, (void*)it->first, (size_t)((uintptr_t)p + bytes - (it->first + it->second)));
    }
    shim_fail("%s: %p is not device memory (not inside any cudaMalloc allocation): a host pointer passed as a device "
              "pointer?",
              what, p);
}

inline size_t shim_device_allocation_count(void) { return shim_state.allocations.size(); }

// ----------------------------------------------------------------------------------------------
// streams and the order work runs in

inline ShimStream* shim_legacy(void) { return shim_state.streams[0].get(); }

inline const char* shim_stream_name(const ShimStream* st, char* buf, size_t size) {
    if (st->id == 0) return "the legacy default stream";
    if (st->id == 1) return "the per-thread default stream";
    snprintf(buf, size, "stream %d", st->id);
    return buf;
}

inline std::shared_ptr<ShimStream> shim_stream_ptr(cudaStream_t s) {
    ShimState& S = shim_state;
    if (s == 0 || s == cudaStreamLegacy) return S.streams[0];
    if (s == cudaStreamPerThread) return S.streams[1];
    for (auto& p : S.streams)
        if (p.get() == (ShimStream*)s && !p->destroyed) return p;
    return nullptr;
}

// the live stream behind a handle, or nullptr after reporting cudaErrorInvalidResourceHandle
inline ShimStream* shim_stream(cudaStream_t s, const char* call) {
    std::shared_ptr<ShimStream> p = shim_stream_ptr(s);
    if (!p) {
        shim_error(cudaErrorInvalidResourceHandle, "%s: stream %p does not exist (destroyed, or not made by "
                   "cudaStreamCreateWithFlags)", call, (void*)s);
        return nullptr;
    }
    if (p->id >= 2 && p->device != shim_state.device) {
        shim_error(cudaErrorInvalidResourceHandle, "%s: stream %d belongs to device %d but device %d is current "
                   "(cudaSetDevice before making streams)", call, p->id, p->device, shim_state.device);
        return nullptr;
    }
    return p.get();
}

// has st run all its work up to seq? (work runs in queue order; work dropped by ncclCommAbort counts as run)
inline bool shim_done(const ShimStream* st, uint64_t seq) { return st->queue.empty() || st->queue.front().seq > seq; }

inline void shim_push(ShimStream* st, ShimWork&& w) {
    w.seq = ++shim_state.seq;
    st->last_seq = w.seq;
    st->queue.push_back(std::move(w));
}

inline ShimWork shim_wait_work(const std::shared_ptr<ShimStream>& on, uint64_t seq, const char* what) {
    ShimWork w;
    w.kind = SHIM_WORK_WAIT;
    w.what = what;
    w.wait_stream = on;
    w.wait_seq = seq;
    return w;
}

// queue w on st. CUDA's implicit synchronisation: work on the legacy default stream waits for
// the blocking streams' earlier work, and work on a blocking stream for the legacy stream's
inline void shim_enqueue(ShimStream* st, ShimWork&& w) {
    ShimState& S = shim_state;
    if (st->id == 0) {
        for (auto& b : S.streams)
            if (b.get() != st && b->flags == cudaStreamDefault && !shim_done(b.get(), b->last_seq))
                shim_push(st, shim_wait_work(b, b->last_seq, "implicit wait of the legacy stream for a blocking stream"));
    } else if (st->flags == cudaStreamDefault && !shim_done(shim_legacy(), shim_legacy()->last_seq)) {
        shim_push(st, shim_wait_work(S.streams[0], shim_legacy()->last_seq,
                                     "implicit wait of a blocking stream for the legacy stream"));
    }
    shim_push(st, std::move(w));
}

inline void shim_enqueue_run(ShimStream* st, const std::string& what, std::function<void()> fn) {
    ShimWork w;
    w.kind = SHIM_WORK_RUN;
    w.what = what;
    w.run = std::move(fn);
    shim_enqueue(st, std::move(w));
}

// for the other shims (cuBLAS): host code that runs when the stream reaches it
inline cudaError_t shim_enqueue_host_work(cudaStream_t stream, const char* what, std::function<void()> fn) {
    ShimStream* st = shim_stream(stream, what);
    if (!st) return cudaErrorInvalidResourceHandle;
    shim_enqueue_run(st, what, std::move(fn));
    return cudaSuccess;
}

// for the NCCL shim: work that completes later (see ShimWork)
inline cudaError_t shim_enqueue_async(cudaStream_t stream, const std::string& what, std::vector<const void*> owners,
                                      std::function<int()> start, std::function<int()> poll,
                                      std::function<void()> cancel) {
    ShimStream* st = shim_stream(stream, what.c_str());
    if (!st) return cudaErrorInvalidResourceHandle;
    ShimWork w;
    w.kind = SHIM_WORK_ASYNC;
    w.what = what;
    w.owners = std::move(owners);
    w.start = std::move(start);
    w.poll = std::move(poll);
    w.cancel = std::move(cancel);
    shim_enqueue(st, std::move(w));
    return cudaSuccess;
}

inline uint64_t shim_random(void) { // splitmix64, seeded from MOSAIC_SHIM_SEED
    ShimState& S = shim_state;
    if (!S.rng_ready) {
        const char* env = getenv("MOSAIC_SHIM_SEED");
        S.rng = (env && *env) ? strtoull(env, nullptr, 10) : 1;
        S.rng_ready = 1;
    }
    uint64_t z = (S.rng += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

// the order in which ready work is picked from now on (tests; the trainer uses MOSAIC_SHIM_SEED)
inline void shim_set_seed(uint64_t seed) {
    shim_state.rng = seed;
    shim_state.rng_ready = 1;
}

struct ShimTarget {
    ShimStream* stream;
    uint64_t seq;
};

// per stream (index into streams), the last seq the targets need: the targets' own work and,
// through every event wait among it, the work of the streams it waits for
inline std::vector<uint64_t> shim_needed(const std::vector<ShimTarget>& targets) {
    ShimState& S = shim_state;
    size_t n = S.streams.size();
    std::vector<uint64_t> need(n, 0), scanned(n, 0);
    auto index = [&](const ShimStream* st) {
        for (size_t i = 0; i < n; i++)
            if (S.streams[i].get() == st) return i;
        return n;
    };
    std::vector<size_t> todo;
    auto raise = [&](const ShimStream* st, uint64_t seq) {
        size_t i = index(st);
        if (i < n && seq > need[i]) {
            need[i] = seq;
            todo.push_back(i);
        }
    };
    for (const ShimTarget& t : targets) raise(t.stream, t.seq);
    while (!todo.empty()) {
        size_t i = todo.back();
        todo.pop_back();
        for (const ShimWork& w : S.streams[i]->queue) {
            if (w.seq > need[i]) break;
            if (w.seq <= scanned[i]) continue;
            if (w.kind == SHIM_WORK_WAIT) raise(w.wait_stream.get(), w.wait_seq);
        }
        if (need[i] > scanned[i]) scanned[i] = need[i];
    }
    return need;
}

// run the head of st (chosen as ready)
inline void shim_run_head(ShimStream* st) {
    ShimWork& w = st->queue.front();
    if (w.kind == SHIM_WORK_WAIT) {
        st->queue.pop_front();
    } else if (w.kind == SHIM_WORK_RUN) {
        std::function<void()> fn = std::move(w.run);
        fn();
        st->queue.pop_front();
        shim_state.work_run++;
    } else {
        w.started = 1;
        int r = w.start();
        if (r == SHIM_ASYNC_DONE) st->queue.pop_front();
        else if (r == SHIM_ASYNC_FAILED) w.failed = 1;
    }
}

// one pass over the started NCCL work at the queue heads; returns whether any finished or failed
inline int shim_poll_in_flight(int* still_pending) {
    int changed = 0, pending = 0;
    for (auto& p : shim_state.streams) {
        ShimStream* st = p.get();
        if (st->queue.empty()) continue;
        ShimWork& w = st->queue.front();
        if (w.kind != SHIM_WORK_ASYNC || !w.started || w.failed) continue;
        int r = w.poll();
        if (r == SHIM_ASYNC_DONE) {
            st->queue.pop_front();
            changed = 1;
        } else if (r == SHIM_ASYNC_FAILED) {
            w.failed = 1;
            changed = 1;
        } else {
            pending++;
        }
    }
    if (still_pending) *still_pending = pending;
    return changed;
}

// destroyed streams leave once their work has run
inline void shim_forget_finished_streams(void) {
    auto& v = shim_state.streams;
    for (size_t i = 2; i < v.size();) {
        if (v[i]->destroyed && v[i]->queue.empty()) v.erase(v.begin() + (long)i);
        else i++;
    }
}

// Run queued work until every target has run. blocking = 0: run what can run without waiting
// and return cudaErrorNotReady if the targets are not reached. Returns cudaErrorLaunchTimeout if
// a target sits behind failed NCCL work (a dead or deadlocked peer: ncclCommAbort drops it).
inline cudaError_t shim_run_until(const std::vector<ShimTarget>& targets, int blocking, const char* call) {
    ShimState& S = shim_state;
    if (S.draining) shim_fail("%s called while queued work runs (from inside a kernel or a stream callback?)", call);
    S.draining = 1;
    std::vector<uint64_t> need = shim_needed(targets);
    std::vector<ShimStream*> ready;
    cudaError_t result = cudaSuccess;
    useconds_t nap = 0;
    for (;;) {
        int reached = 1;
        for (const ShimTarget& t : targets) reached &= shim_done(t.stream, t.seq);
        if (reached) break;
        int pending = 0;
        if (shim_poll_in_flight(&pending)) continue;
        ready.clear();
        ShimWork* failed = nullptr;
        ShimStream* failed_on = nullptr;
        for (size_t i = 0; i < S.streams.size(); i++) {
            ShimStream* st = S.streams[i].get();
            if (st->queue.empty()) continue;
            ShimWork& w = st->queue.front();
            if (w.kind == SHIM_WORK_WAIT) {
                if (shim_done(w.wait_stream.get(), w.wait_seq)) ready.push_back(st);
            } else if (w.kind == SHIM_WORK_RUN) {
                ready.push_back(st);
            } else if (w.failed) {
                failed = &w;
                failed_on = st;
            } else if (!w.started && i < need.size() && w.seq <= need[i]) {
                ready.push_back(st); // NCCL work starts only where a synchronisation needs it
            }
        }
        if (!ready.empty()) {
            if (ready.size() > 1) S.picks_with_choice++;
            shim_run_head(ready[ready.size() > 1 ? shim_random() % ready.size() : 0]);
            nap = 0;
            continue;
        }
        if (pending > 0) {
            if (!blocking) {
                result = cudaErrorNotReady;
                break;
            }
            usleep(nap); // waiting for a peer rank: back off up to 1 ms
            nap = nap < 1000 ? nap + 50 : 1000;
            continue;
        }
        if (failed) {
            char buf[32];
            result = shim_error(cudaErrorLaunchTimeout, "%s: cannot complete: %s on %s failed (see the line above; "
                                "ncclCommGetAsyncError reports it, ncclCommAbort drops the communicator's work)",
                                call, failed->what.c_str(), shim_stream_name(failed_on, buf, sizeof(buf)));
            break;
        }
        if (!blocking) {
            result = cudaErrorNotReady;
            break;
        }
        S.draining = 0;
        shim_fail("%s: internal error: the work it waits for can never run", call);
    }
    S.draining = 0;
    shim_forget_finished_streams();
    return result;
}

inline cudaError_t shim_sync_stream(ShimStream* st, int blocking, const char* call) {
    return shim_run_until({ShimTarget{st, st->last_seq}}, blocking, call);
}

inline cudaError_t shim_sync_all(const char* call) {
    std::vector<ShimTarget> all;
    for (auto& p : shim_state.streams) all.push_back(ShimTarget{p.get(), p->last_seq});
    return shim_run_until(all, 1, call);
}

// for the NCCL shim: one pass of progress over started work (ncclCommGetAsyncError)
inline void shim_progress(void) {
    if (!shim_state.draining) shim_poll_in_flight(nullptr);
}

// for the NCCL shim: run every queued work of owner (ncclCommDestroy)
inline cudaError_t shim_run_owner(const void* owner, const char* call) {
    std::vector<ShimTarget> targets;
    for (auto& p : shim_state.streams)
        for (const ShimWork& w : p->queue)
            for (const void* o : w.owners)
                if (o == owner) targets.push_back(ShimTarget{p.get(), w.seq});
    return targets.empty() ? cudaSuccess : shim_run_until(targets, 1, call);
}

// for the NCCL shim: drop every queued work of owner, started or not (ncclCommAbort)
inline int shim_drop_owner(const void* owner) {
    int dropped = 0;
    for (auto& p : shim_state.streams) {
        auto& q = p->queue;
        for (auto it = q.begin(); it != q.end();) {
            bool mine = false;
            for (const void* o : it->owners) mine |= o == owner;
            if (!mine) {
                ++it;
                continue;
            }
            if (it->started && it->cancel) it->cancel();
            it = q.erase(it);
            dropped++;
        }
    }
    return dropped;
}

// work queued and not yet run, over all streams (tests)
inline size_t shim_pending_work(void) {
    size_t n = 0;
    for (auto& p : shim_state.streams) n += p->queue.size();
    return n;
}

// ----------------------------------------------------------------------------------------------
// copies

inline const char* shim_memcpy_kind_name(cudaMemcpyKind k) {
    switch (k) {
    case cudaMemcpyHostToHost: return "cudaMemcpyHostToHost";
    case cudaMemcpyHostToDevice: return "cudaMemcpyHostToDevice";
    case cudaMemcpyDeviceToHost: return "cudaMemcpyDeviceToHost";
    case cudaMemcpyDeviceToDevice: return "cudaMemcpyDeviceToDevice";
    case cudaMemcpyDefault: return "cudaMemcpyDefault";
    }
    return "an unknown cudaMemcpyKind";
}

// one side of a copy: must it be device memory (1), host memory (0), or either (-1)?
inline cudaError_t shim_check_copy_side(const char* call, cudaMemcpyKind kind, const char* side, const void* p,
                                        size_t count, int want_device) {
    bool device = shim_is_device(p, count);
    bool starts_in_device = shim_is_device(p, 1); // strictly inside (host memory may start where an allocation ends)
    if (want_device == 1 && !device)
        return shim_error(cudaErrorInvalidValue, "%s(%s): the %s [%p, +%zu bytes) is not inside one device "
                          "allocation (a host pointer, or a copy past the end of a cudaMalloc buffer)",
                          call, shim_memcpy_kind_name(kind), side, p, count);
    if (want_device == 0 && starts_in_device)
        return shim_error(cudaErrorInvalidValue, "%s(%s): the %s %p is device memory: wrong direction?", call,
                          shim_memcpy_kind_name(kind), side, p);
    if (want_device == -1 && starts_in_device && !device)
        return shim_error(cudaErrorInvalidValue, "%s(%s): the %s [%p, +%zu bytes) overruns its device allocation",
                          call, shim_memcpy_kind_name(kind), side, p, count);
    return cudaSuccess;
}

// checks a copy; on success *dst_device / *src_device say which sides are device memory
inline cudaError_t shim_check_copy(const char* call, void* dst, const void* src, size_t count, cudaMemcpyKind kind,
                                   int* dst_device, int* src_device) {
    int want_dst, want_src;
    switch (kind) {
    case cudaMemcpyHostToHost: want_dst = 0, want_src = 0; break;
    case cudaMemcpyHostToDevice: want_dst = 1, want_src = 0; break;
    case cudaMemcpyDeviceToHost: want_dst = 0, want_src = 1; break;
    case cudaMemcpyDeviceToDevice: want_dst = 1, want_src = 1; break;
    case cudaMemcpyDefault: want_dst = -1, want_src = -1; break;
    default: return shim_error(cudaErrorInvalidMemcpyDirection, "%s: unknown cudaMemcpyKind %d", call, (int)kind);
    }
    if (dst == nullptr || src == nullptr)
        return shim_error(cudaErrorInvalidValue, "%s(%s): NULL %s", call, shim_memcpy_kind_name(kind),
                          dst == nullptr ? "destination" : "source");
    cudaError_t e = shim_check_copy_side(call, kind, "destination", dst, count, want_dst);
    if (e == cudaSuccess) e = shim_check_copy_side(call, kind, "source", src, count, want_src);
    if (e != cudaSuccess) return e;
    *dst_device = shim_is_device(dst, count);
    *src_device = shim_is_device(src, count);
    return cudaSuccess;
}

// the copy as it runs: the device sides must still be allocated
inline void shim_copy_now(const char* call, void* dst, const void* src, size_t count, int dst_device, int src_device) {
    if (dst_device) shim_check_device_range(dst, count, call);
    if (src_device) shim_check_device_range(src, count, call);
    memmove(dst, src, count);
}

inline cudaError_t shim_memcpy_async(const char* call, void* dst, const void* src, size_t count, cudaMemcpyKind kind,
                                     ShimStream* st) {
    if (count == 0) return cudaSuccess;
    int dst_device = 0, src_device = 0;
    cudaError_t e = shim_check_copy(call, dst, src, count, kind, &dst_device, &src_device);
    if (e != cudaSuccess) return e;
    shim_enqueue_run(st, call, [=] { shim_copy_now(call, dst, src, count, dst_device, src_device); });
    return cudaSuccess;
}

inline cudaError_t shim_memset_async(const char* call, void* p, int value, size_t count, ShimStream* st) {
    if (count == 0) return cudaSuccess;
    if (!shim_is_device(p, count))
        return shim_error(cudaErrorInvalidValue, "%s: [%p, +%zu bytes) is not inside one device allocation", call, p, count);
    shim_enqueue_run(st, call, [=] {
        shim_check_device_range(p, count, call);
        memset(p, value, count);
    });
    return cudaSuccess;
}

// ----------------------------------------------------------------------------------------------
// the CUDA runtime calls (weak: several translation units may include this header)

__attribute__((weak)) cudaError_t cudaGetDeviceCount(int* count) {
    if (count == nullptr) return shim_error(cudaErrorInvalidValue, "cudaGetDeviceCount: NULL result pointer");
    const char* env = getenv("MOSAIC_SHIM_DEVICES");
    long n = 1;
    if (env && *env) {
        char* end = nullptr;
        n = strtol(env, &end, 10);
        if (*end != '\0' || n < 0 || n > 64) shim_fail("MOSAIC_SHIM_DEVICES=%s: want a device count in [0, 64]", env);
    }
    *count = (int)n;
    if (n == 0) return shim_error(cudaErrorNoDevice, "cudaGetDeviceCount: no CUDA device (MOSAIC_SHIM_DEVICES=0)");
    return cudaSuccess;
}

__attribute__((weak)) cudaError_t cudaSetDevice(int device) {
    int count = 0;
    cudaError_t e = cudaGetDeviceCount(&count);
    if (e != cudaSuccess) return e;
    if (device < 0 || device >= count)
        return shim_error(cudaErrorInvalidDevice, "cudaSetDevice(%d): there are %d device(s) (MOSAIC_SHIM_DEVICES)",
                          device, count);
    shim_state.device = device;
    return cudaSuccess;
}

__attribute__((weak)) cudaError_t cudaGetDevice(int* device) {
    if (device == nullptr) return shim_error(cudaErrorInvalidValue, "cudaGetDevice: NULL result pointer");
    *device = shim_state.device;
    return cudaSuccess;
}

__attribute__((weak)) cudaError_t cudaMalloc(void** p, size_t size) {
    if (p == nullptr) return shim_error(cudaErrorInvalidValue, "cudaMalloc: NULL result pointer");
    *p = nullptr;
    if (size == 0) return cudaSuccess;
    void* m = malloc(size);
    if (m == nullptr) return shim_error(cudaErrorMemoryAllocation, "cudaMalloc of %zu bytes: out of memory", size);
    memset(m, 0xFF, size); // uninitialised device memory reads as NaN
    shim_state.allocations[(uintptr_t)m] = size;
    *p = m;
    return cudaSuccess;
}

__attribute__((weak)) cudaError_t cudaFree(void* p) {
    if (p == nullptr) return cudaSuccess;
    auto it = shim_state.allocations.find((uintptr_t)p);
    if (it == shim_state.allocations.end())
        return shim_error(cudaErrorInvalidValue, "cudaFree(%p): not the start of a live cudaMalloc allocation "
                          "(a host pointer, an offset pointer, or freed twice)", p);
    // cudaFree synchronises the device: queued work may still use the memory
    cudaError_t e = shim_sync_all("cudaFree");
    if (e != cudaSuccess) return e;
    shim_state.allocations.erase((uintptr_t)p);
    free(p);
    return cudaSuccess;
}

// Blocking copy. Host <-> device: CUDA first syncs the legacy default stream (only that one:
// a non-blocking stream's work is not waited for), then copies before returning. Device to
// device: queued on the legacy stream, asynchronous to the host (CUDA's documented behaviour).
__attribute__((weak)) cudaError_t cudaMemcpy(void* dst, const void* src, size_t count, enum cudaMemcpyKind kind) {
    const char* call = "cudaMemcpy";
    if (count == 0) return cudaSuccess;
    int dst_device = 0, src_device = 0;
    cudaError_t e = shim_check_copy(call, dst, src, count, kind, &dst_device, &src_device);
    if (e != cudaSuccess) return e;
    ShimStream* legacy = shim_legacy();
    // the copy is legacy-stream work (after the blocking streams' earlier work, too)
    shim_enqueue_run(legacy, call, [=] { shim_copy_now(call, dst, src, count, dst_device, src_device); });
    if (dst_device && src_device) return cudaSuccess;
    return shim_sync_stream(legacy, 1, call);
}

__attribute__((weak)) cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t count, enum cudaMemcpyKind kind,
                                                  cudaStream_t stream) {
    ShimStream* st = shim_stream(stream, "cudaMemcpyAsync");
    if (!st) return cudaErrorInvalidResourceHandle;
    return shim_memcpy_async("cudaMemcpyAsync", dst, src, count, kind, st);
}

// asynchronous to the host on CUDA for device memory: queued on the legacy default stream
__attribute__((weak)) cudaError_t cudaMemset(void* p, int value, size_t count) {
    return shim_memset_async("cudaMemset", p, value, count, shim_legacy());
}

__attribute__((weak)) cudaError_t cudaMemsetAsync(void* p, int value, size_t count, cudaStream_t stream) {
    ShimStream* st = shim_stream(stream, "cudaMemsetAsync");
    if (!st) return cudaErrorInvalidResourceHandle;
    return shim_memset_async("cudaMemsetAsync", p, value, count, st);
}

__attribute__((weak)) cudaError_t cudaStreamCreateWithFlags(cudaStream_t* stream, unsigned int flags) {
    if (stream == nullptr) return shim_error(cudaErrorInvalidValue, "cudaStreamCreateWithFlags: NULL result pointer");
    if (flags != cudaStreamDefault && flags != cudaStreamNonBlocking)
        return shim_error(cudaErrorInvalidValue, "cudaStreamCreateWithFlags: flags 0x%x (cudaStreamDefault or "
                          "cudaStreamNonBlocking)", flags);
    ShimState& S = shim_state;
    auto p = std::make_shared<ShimStream>(ShimStream{S.next_stream_id++, flags, S.device});
    S.streams.push_back(p);
    *stream = (cudaStream_t)p.get();
    return cudaSuccess;
}

// CUDA returns at once and releases the stream when its work is done: its work stays queued
__attribute__((weak)) cudaError_t cudaStreamDestroy(cudaStream_t stream) {
    if (stream == 0 || stream == cudaStreamLegacy || stream == cudaStreamPerThread)
        return shim_error(cudaErrorInvalidResourceHandle, "cudaStreamDestroy: the default streams cannot be destroyed");
    ShimStream* st = shim_stream(stream, "cudaStreamDestroy");
    if (!st) return cudaErrorInvalidResourceHandle;
    st->destroyed = 1;
    shim_forget_finished_streams();
    return cudaSuccess;
}

__attribute__((weak)) cudaError_t cudaStreamSynchronize(cudaStream_t stream) {
    ShimStream* st = shim_stream(stream, "cudaStreamSynchronize");
    if (!st) return cudaErrorInvalidResourceHandle;
    return shim_sync_stream(st, 1, "cudaStreamSynchronize");
}

__attribute__((weak)) cudaError_t cudaStreamQuery(cudaStream_t stream) {
    ShimStream* st = shim_stream(stream, "cudaStreamQuery");
    if (!st) return cudaErrorInvalidResourceHandle;
    return shim_sync_stream(st, 0, "cudaStreamQuery");
}

__attribute__((weak)) cudaError_t cudaDeviceSynchronize(void) { return shim_sync_all("cudaDeviceSynchronize"); }

inline ShimEvent* shim_event(cudaEvent_t e, const char* call) {
    for (ShimEvent* p : shim_state.events)
        if (p == (ShimEvent*)e) {
            if (p->device != shim_state.device) {
                shim_error(cudaErrorInvalidResourceHandle, "%s: the event belongs to device %d but device %d is current",
                           call, p->device, shim_state.device);
                return nullptr;
            }
            return p;
        }
    shim_error(cudaErrorInvalidResourceHandle, "%s: event %p does not exist (destroyed, or not made by "
               "cudaEventCreateWithFlags)", call, (void*)e);
    return nullptr;
}

__attribute__((weak)) cudaError_t cudaEventCreateWithFlags(cudaEvent_t* event, unsigned int flags) {
    if (event == nullptr) return shim_error(cudaErrorInvalidValue, "cudaEventCreateWithFlags: NULL result pointer");
    if (flags & ~(unsigned)(cudaEventBlockingSync | cudaEventDisableTiming))
        return shim_error(cudaErrorInvalidValue, "cudaEventCreateWithFlags: flags 0x%x (only cudaEventDisableTiming "
                          "and cudaEventBlockingSync are emulated)", flags);
    ShimEvent* p = new ShimEvent{flags, shim_state.device, nullptr, 0};
    shim_state.events.push_back(p);
    *event = (cudaEvent_t)p;
    return cudaSuccess;
}

__attribute__((weak)) cudaError_t cudaEventDestroy(cudaEvent_t event) {
    ShimEvent* p = shim_event(event, "cudaEventDestroy");
    if (!p) return cudaErrorInvalidResourceHandle;
    auto& v = shim_state.events;
    for (size_t i = 0; i < v.size(); i++)
        if (v[i] == p) {
            v.erase(v.begin() + (long)i);
            break;
        }
    delete p; // waits already queued keep their own reference to the recorded point
    return cudaSuccess;
}

// the event now stands for everything queued on the stream so far
__attribute__((weak)) cudaError_t cudaEventRecord(cudaEvent_t event, cudaStream_t stream) {
    ShimEvent* p = shim_event(event, "cudaEventRecord");
    if (!p) return cudaErrorInvalidResourceHandle;
    std::shared_ptr<ShimStream> st = shim_stream_ptr(stream);
    if (!st || !shim_stream(stream, "cudaEventRecord")) return cudaErrorInvalidResourceHandle;
    shim_enqueue_run(st.get(), "cudaEventRecord", [] {});
    p->stream = st;
    p->seq = st->last_seq;
    return cudaSuccess;
}

// later work on stream waits for the event's recorded point as of this call
__attribute__((weak)) cudaError_t cudaStreamWaitEvent(cudaStream_t stream, cudaEvent_t event, unsigned int flags) {
    if (flags != 0) return shim_error(cudaErrorInvalidValue, "cudaStreamWaitEvent: flags 0x%x (want 0)", flags);
    ShimStream* st = shim_stream(stream, "cudaStreamWaitEvent");
    if (!st) return cudaErrorInvalidResourceHandle;
    ShimEvent* p = shim_event(event, "cudaStreamWaitEvent");
    if (!p) return cudaErrorInvalidResourceHandle;
    if (!p->stream) return cudaSuccess; // never recorded: nothing to wait for, as on CUDA
    shim_enqueue(st, shim_wait_work(p->stream, p->seq, "cudaStreamWaitEvent"));
    return cudaSuccess;
}

__attribute__((weak)) cudaError_t cudaEventSynchronize(cudaEvent_t event) {
    ShimEvent* p = shim_event(event, "cudaEventSynchronize");
    if (!p) return cudaErrorInvalidResourceHandle;
    if (!p->stream) return cudaSuccess;
    return shim_run_until({ShimTarget{p->stream.get(), p->seq}}, 1, "cudaEventSynchronize");
}

__attribute__((weak)) cudaError_t cudaEventQuery(cudaEvent_t event) {
    ShimEvent* p = shim_event(event, "cudaEventQuery");
    if (!p) return cudaErrorInvalidResourceHandle;
    if (!p->stream) return cudaSuccess;
    return shim_run_until({ShimTarget{p->stream.get(), p->seq}}, 0, "cudaEventQuery");
}

__attribute__((weak)) cudaError_t cudaGetLastError(void) {
    cudaError_t e = shim_state.last_error;
    shim_state.last_error = cudaSuccess;
    return e;
}

__attribute__((weak)) cudaError_t cudaPeekAtLastError(void) { return shim_state.last_error; }

__attribute__((weak)) const char* cudaGetErrorString(cudaError_t e) {
    switch (e) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorMemoryAllocation: return "out of memory";
    case cudaErrorInvalidMemcpyDirection: return "invalid copy direction for memcpy";
    case cudaErrorInvalidResourceHandle: return "invalid resource handle";
    case cudaErrorInvalidDeviceFunction: return "invalid device function";
    case cudaErrorInvalidDevice: return "invalid device ordinal";
    case cudaErrorNoDevice: return "no CUDA-capable device is detected";
    case cudaErrorNotReady: return "device not ready";
    case cudaErrorLaunchTimeout: return "the launch timed out and was terminated";
    default: return "unrecognized error code (CUDA runtime shim)";
    }
}

__attribute__((weak)) cudaError_t cudaFuncSetAttribute(const void* func, enum cudaFuncAttribute attr, int value) {
    if (func == nullptr) return shim_error(cudaErrorInvalidDeviceFunction, "cudaFuncSetAttribute: NULL function");
    if (attr == cudaFuncAttributeMaxDynamicSharedMemorySize) {
        if (value < 0 || value > SHIM_MAX_OPTIN_SHARED)
            return shim_error(cudaErrorInvalidValue, "cudaFuncSetAttribute: %d bytes of dynamic shared memory is "
                              "above sm_80's opt-in limit of %d", value, (int)SHIM_MAX_OPTIN_SHARED);
        shim_state.max_dynamic_shared[func] = value;
    }
    return cudaSuccess;
}

// the dynamic shared memory a launch of func may use
inline size_t shim_max_dynamic_shared(const void* func) {
    auto it = shim_state.max_dynamic_shared.find(func);
    size_t limit = SHIM_MAX_DEFAULT_SHARED;
    if (it != shim_state.max_dynamic_shared.end() && (size_t)it->second > limit) limit = (size_t)it->second;
    return limit;
}
