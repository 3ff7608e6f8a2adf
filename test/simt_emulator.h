// Test-only SIMT emulation: the CUDA kernel source (*.cuh) compiled by clang++ with
// -DMOSAIC_SIMT_EMULATION -x c++ and executed on the CPU, one fiber per CUDA thread.
// model/cuda_common.cuh includes this header after the real <cuda_runtime.h>; kernel code only
// uses the macros there (MOSAIC_LAUNCH, MOSAIC_DYNAMIC_SHARED) and CUDA's own names.
//
// What it does, and why:
//   - blocks run one at a time, in an order shuffled by the schedule seed; the threads of a block
//     are fibers (own stack, guard page below it) that switch only at __syncthreads, __syncwarp,
//     the shuffles and thread exit. After every barrier release the waiting threads resume in the
//     schedule's order: forward (thread 0 first), reverse, or random(seed). A kernel whose output
//     depends on that order has a race; tests require bit-identical outputs across schedules;
//   - static __shared__ variables live in one linker section and dynamic shared memory on the heap
//     at exactly the launch's size; both are filled with 0xFF bytes (a float NaN) before every
//     block, so a read before a write shows up as NaN, and ASan sees dynamic-smem overruns;
//   - misuse aborts with one line naming the kernel and its launch site: a thread that exits while
//     others wait at a barrier, __syncthreads reached by only some threads or at different lines,
//     shuffle masks naming lanes that never arrive, bad block/grid shapes, too much dynamic shared
//     memory, and pointer arguments that are not device memory (cudaMalloc'd);
//   - launches are queued on their stream (test/cuda_runtime_shim.h: the strict CUDA runtime for
//     host code, with deferred streams and events and the device memory registry) with copies of
//     the arguments, and run when a synchronisation needs them; the pointer arguments are checked
//     against the registry when queued and again when run;
//   - ThreadSanitizer: fibers are TSan fibers switched without implicit synchronisation; only
//     __syncthreads/__syncwarp create happens-before (one sync key per barrier generation), so a
//     missing barrier is reported as a data race even when the schedule happens to hide it;
//     AddressSanitizer: stack switches are announced to it.
// Switching uses __builtin_setjmp/__builtin_longjmp (no signal-mask syscall, no assembly, not
// intercepted by the sanitizers); ucontext is used once per fiber to enter its fresh stack.
// Define SIMT_USE_SWAPCONTEXT to switch with swapcontext instead (slower; for comparison).
//
// Limits (what it cannot see): races between different blocks (blocks run one after another),
// timing and occupancy, memory-model subtleties below barrier granularity (a thread runs from one
// scheduling point to the next without interruption), pointers hidden inside struct arguments,
// static shared memory overruns that stay inside the section (-fsanitize=bounds catches indexing of
// fixed-size arrays), more than one active shuffle mask per warp at a time.
#pragma once
#ifndef __clang__
#error "the SIMT emulation needs clang++: g++ ignores the section attribute on statics in templates and inline functions, so template kernels' shared memory would silently not be poisoned"
#endif
#include <cuda_runtime.h>
#include "cuda_runtime_shim.h"
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <stdarg.h>
#include <math.h>
#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>
#include <map>
#include <memory>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#if defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define SIMT_TSAN 1
#endif
#if __has_feature(address_sanitizer)
#define SIMT_ASAN 1
#endif
#endif
#ifdef SIMT_TSAN
#include <sanitizer/tsan_interface.h>
#define SIMT_NO_TSAN __attribute__((no_sanitize("thread")))
#else
#define SIMT_NO_TSAN
#endif
#ifdef SIMT_ASAN
#include <sanitizer/common_interface_defs.h>
#include <sanitizer/asan_interface.h>
// ASan would call __asan_handle_no_return before the longjmp, which unpoisons the whole live stack of
// the fiber being left (its frames' redzones) and costs a sigaltstack syscall per switch
#define SIMT_NO_ASAN __attribute__((no_sanitize("address")))
#else
#define SIMT_NO_ASAN
#endif

// ----------------------------------------------------------------------------------------------
// CUDA keywords for the CPU. In host mode the real header made __global__/__device__/__host__/
// __shared__ empty; __shared__ must become a per-program static (one copy shared by all threads of
// the running block) in the section that is poisoned before every block.
#undef __global__
#undef __device__
#undef __host__
#undef __shared__
#undef __launch_bounds__
#undef __forceinline__
#define __global__
#define __device__
#define __host__
#define __shared__ static __attribute__((section("simt_shared")))
#define __launch_bounds__(...)
#define __forceinline__ inline __attribute__((always_inline))

// the linker defines these for a section whose name is a C identifier; weak: a program without
// static shared memory has no such section
extern "C" char __start_simt_shared[] __attribute__((weak));
extern "C" char __stop_simt_shared[] __attribute__((weak));

enum SimtOrder { SIMT_FORWARD, SIMT_REVERSE, SIMT_RANDOM };

// same as MOSAIC_MAX_SHARED_BYTES (model/cuda_common.cuh); opt-in limit of sm_80 (the smaller target)
enum { SIMT_MAX_DEFAULT_SHARED = SHIM_MAX_DEFAULT_SHARED, SIMT_MAX_OPTIN_SHARED = SHIM_MAX_OPTIN_SHARED };

// ----------------------------------------------------------------------------------------------
// state

struct SimtCtx { // a place to switch to: the scheduler (main stack) or one fiber
    void* jb[5];      // __builtin_setjmp buffer
    void* asan_fake;  // ASan's fake stack of this context while switched out
    const void* stack_bottom;
    size_t stack_size;
    void* tsan_fiber;
#ifdef SIMT_USE_SWAPCONTEXT
    ucontext_t uc;
#endif
};

enum { SIMT_RUNNABLE, SIMT_WAIT_BLOCK, SIMT_WAIT_WARP, SIMT_DONE };
enum { SIMT_OP_SYNCWARP, SIMT_OP_SHFL_IDX, SIMT_OP_SHFL_UP, SIMT_OP_SHFL_DOWN, SIMT_OP_SHFL_XOR, SIMT_OP_BALLOT };

struct SimtFiber {
    SimtCtx ctx;
    char* map_base;  // mmap'd guard page + stack
    size_t map_size;
    int linear;      // thread index within the block, x fastest
    uint3 tid;
    int state;
    const char* wait_file; // where it waits (for messages)
    int wait_line;
    // this lane's operands of the pending warp operation and, after the release, its result
    int op_b, op_width;
    uint64_t op_value;
    uint64_t op_result;
};

struct SimtWarp {
    unsigned arrived;  // lanes waiting in the current generation
    unsigned mask;     // the mask of the current generation
    unsigned exited;   // lanes that returned
    unsigned gen;
    int op;
    const char* file;
    int line;
    char tsan_keys[4]; // one happens-before key per generation (mod 4) for __syncwarp
};

struct SimtState {
    // schedule
    SimtOrder order = SIMT_FORWARD;
    uint64_t seed = 1, rng = 1, launch_count = 0;
    // current launch
    int running = 0;
    const char* kernel_name = "";
    const char* launch_file = "";
    int launch_line = 0;
    void (*invoke)(void*) = nullptr;
    void* payload = nullptr;
    int nthreads = 0;
    size_t smem_bytes = 0;
    void* dynamic_shared = nullptr;
    uint3 block_idx = {0, 0, 0};
    dim3 block_dim, grid_dim;
    // the running block
    std::vector<SimtFiber*> fibers; // pool, grown on demand, kept across launches
    std::vector<SimtWarp> warps;
    std::vector<int> ready;         // ring of runnable fiber indices
    std::vector<int> order_buf;
    size_t ready_head = 0, ready_tail = 0;
    int done = 0;
    int block_waiting = 0, block_exited = 0, block_line = 0;
    unsigned block_gen = 0;
    const char* block_file = nullptr;
    char block_keys[4] = {0, 0, 0, 0};
    char block_start_key = 0, block_end_key = 0;
    SimtFiber* current = nullptr;
    SimtFiber* starting = nullptr;
    SimtCtx sched;
    // statistics
    uint64_t switches = 0, blocks_run = 0;
    int segv_handler = 0;
};
// never destroyed: kernels may still be referenced by exit handlers, and LeakSanitizer must not
// report fibers and device memory as leaked once static destructors ran
inline SimtState& simt_state = *new SimtState();

// what the kernel code reads as threadIdx, blockIdx, blockDim, gridDim: the scheduler writes the
// running fiber's values here before every switch into it (kernel code cannot write them)
struct SimtNow {
    uint3 thread_idx, block_idx;
    dim3 block_dim, grid_dim;
};
inline SimtNow simt_now;
// the scheduler's writes are not instrumented: to TSan, kernel threads only ever read these
SIMT_NO_TSAN inline void simt_set_now_block(uint3 block_idx, dim3 block_dim, dim3 grid_dim) {
    simt_now.block_idx = block_idx;
    simt_now.block_dim = block_dim;
    simt_now.grid_dim = grid_dim;
}
SIMT_NO_TSAN inline void simt_set_now_thread(uint3 thread_idx) { simt_now.thread_idx = thread_idx; }
#define threadIdx (static_cast<const uint3&>(simt_now.thread_idx))
#define blockIdx (static_cast<const uint3&>(simt_now.block_idx))
#define blockDim (static_cast<const dim3&>(simt_now.block_dim))
#define gridDim (static_cast<const dim3&>(simt_now.grid_dim))
// a variable, not a macro: cudaDeviceProp has a member of that name
constexpr int warpSize = 32;

// ----------------------------------------------------------------------------------------------
// errors: one line naming the kernel, its launch site and the thread, then abort()

SIMT_NO_TSAN __attribute__((noreturn, format(printf, 1, 2))) inline void simt_fail(const char* fmt, ...) {
    char where[512] = "";
    SimtState& S = simt_state;
    if (S.running) {
        int n = snprintf(where, sizeof(where), " [kernel %s launched at %s:%d, block (%u,%u,%u)", S.kernel_name,
                         S.launch_file, S.launch_line, S.block_idx.x, S.block_idx.y, S.block_idx.z);
        if (S.current && n < (int)sizeof(where))
            n += snprintf(where + n, sizeof(where) - n, ", thread (%u,%u,%u)", S.current->tid.x, S.current->tid.y,
                          S.current->tid.z);
        if (n < (int)sizeof(where)) snprintf(where + n, sizeof(where) - n, "]");
    }
    va_list args;
    va_start(args, fmt);
    shim_print_line("simt: error: ", where, fmt, args);
    va_end(args);
    abort();
}

SIMT_NO_TSAN inline uint64_t simt_next_random(void) { // splitmix64
    uint64_t z = (simt_state.rng += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

// thread resume order and block shuffle for the following launches; a test sets it per schedule
inline void simt_set_schedule(SimtOrder order, uint64_t seed) {
    simt_state.order = order;
    simt_state.seed = seed;
    simt_state.rng = seed * 0x2545F4914F6CDD1Dull + 1;
    simt_state.launch_count = 0;
}

// ----------------------------------------------------------------------------------------------
// fibers

#ifdef SIMT_TSAN
#define SIMT_TSAN_RELEASE(p) __tsan_release((void*)(p))
#define SIMT_TSAN_ACQUIRE(p) __tsan_acquire((void*)(p))
#else
#define SIMT_TSAN_RELEASE(p) ((void)0)
#define SIMT_TSAN_ACQUIRE(p) ((void)0)
#endif

#if defined(SIMT_ASAN)
enum { SIMT_STACK_BYTES = 1024 * 1024 }; // ASan frames carry redzones
#elif defined(SIMT_TSAN)
enum { SIMT_STACK_BYTES = 512 * 1024 };
#else
enum { SIMT_STACK_BYTES = 256 * 1024 };
#endif

// Switch from one context to another. Nothing here may be instrumented by TSan: the function
// leaves through a longjmp and is re-entered by one.
__attribute__((noinline)) SIMT_NO_TSAN SIMT_NO_ASAN inline void simt_switch(SimtCtx* from, SimtCtx* to) {
    simt_state.switches++;
#ifdef SIMT_ASAN
    __sanitizer_start_switch_fiber(&from->asan_fake, to->stack_bottom, to->stack_size);
#endif
#ifdef SIMT_TSAN
    __tsan_switch_to_fiber(to->tsan_fiber, __tsan_switch_to_fiber_no_sync);
#endif
#ifdef SIMT_USE_SWAPCONTEXT
    swapcontext(&from->uc, &to->uc);
#else
    if (__builtin_setjmp(from->jb) == 0) __builtin_longjmp(to->jb, 1);
#endif
#ifdef SIMT_ASAN
    // resumed: from is this context again; remember the scheduler's stack when coming from it
    const void* prev_bottom = nullptr;
    size_t prev_size = 0;
    __sanitizer_finish_switch_fiber(from->asan_fake, &prev_bottom, &prev_size);
    if (from != &simt_state.sched) {
        simt_state.sched.stack_bottom = prev_bottom;
        simt_state.sched.stack_size = prev_size;
    }
#endif
}

SIMT_NO_TSAN inline void simt_thread_exit(void);

// Every fiber runs this loop forever: one kernel thread per turn, for whichever block and launch
// the scheduler has set up, then it parks in simt_thread_exit until the next block needs it.
SIMT_NO_TSAN inline void simt_fiber_main(void) {
    SimtState& S = simt_state;
    SimtFiber* self = S.starting;
#ifdef SIMT_ASAN
    const void* prev_bottom = nullptr;
    size_t prev_size = 0;
    __sanitizer_finish_switch_fiber(nullptr, &prev_bottom, &prev_size);
    S.sched.stack_bottom = prev_bottom;
    S.sched.stack_size = prev_size;
#endif
    simt_switch(&self->ctx, &S.sched); // created: park until the first block
    for (;;) {
        SIMT_TSAN_ACQUIRE(&S.block_start_key); // the block's setup (poisoned smem, arguments) happens before
        S.invoke(S.payload);
        simt_thread_exit();
    }
}

// a guard page hit by a fiber is a stack overflow in kernel code: say so instead of a bare SIGSEGV
inline void simt_segv_handler(int sig, siginfo_t* info, void*) {
    SimtState& S = simt_state;
    char* addr = (char*)info->si_addr;
    for (SimtFiber* f : S.fibers) {
        long page = sysconf(_SC_PAGESIZE);
        if (addr >= f->map_base && addr < f->map_base + page) {
            char line[512];
            int n = snprintf(line, sizeof(line),
                             "simt: error: stack overflow of an emulated CUDA thread in kernel %s launched at %s:%d "
                             "(fiber stacks are %d KB: a large local array?)\n",
                             S.kernel_name, S.launch_file, S.launch_line, (int)(SIMT_STACK_BYTES / 1024));
            if (write(2, line, (size_t)n) < 0) {}
            abort();
        }
    }
    signal(sig, SIG_DFL); // not ours: fault again with the default action
}

inline void simt_install_segv_handler(void) {
#if !defined(SIMT_ASAN) && !defined(SIMT_TSAN)
    SimtState& S = simt_state;
    if (S.segv_handler) return;
    S.segv_handler = 1;
    static char alt_stack[64 * 1024];
    stack_t ss;
    memset(&ss, 0, sizeof(ss));
    ss.ss_sp = alt_stack;
    ss.ss_size = sizeof(alt_stack);
    sigaltstack(&ss, nullptr);
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_sigaction = simt_segv_handler;
    sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
    sigaction(SIGSEGV, &sa, nullptr);
#endif
}

__attribute__((noinline)) SIMT_NO_TSAN SIMT_NO_ASAN inline void simt_first_switch(SimtFiber* f) {
    SimtState& S = simt_state;
    S.starting = f;
#ifdef SIMT_USE_SWAPCONTEXT
    simt_switch(&S.sched, &f->ctx);
#else
    ucontext_t uc;
    if (getcontext(&uc) != 0) simt_fail("getcontext failed");
    uc.uc_stack.ss_sp = f->map_base + sysconf(_SC_PAGESIZE);
    uc.uc_stack.ss_size = SIMT_STACK_BYTES;
    uc.uc_link = nullptr;
    makecontext(&uc, simt_fiber_main, 0);
#ifdef SIMT_ASAN
    __sanitizer_start_switch_fiber(&S.sched.asan_fake, f->ctx.stack_bottom, f->ctx.stack_size);
#endif
#ifdef SIMT_TSAN
    __tsan_switch_to_fiber(f->ctx.tsan_fiber, 0);
#endif
    if (__builtin_setjmp(S.sched.jb) == 0) setcontext(&uc);
#ifdef SIMT_ASAN
    __sanitizer_finish_switch_fiber(S.sched.asan_fake, nullptr, nullptr);
#endif
#endif
}

// one more fiber in the pool: its stack above a PROT_NONE guard page, entered once to park it
inline void simt_add_fiber(void) {
    SimtState& S = simt_state;
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    SimtFiber* f = new SimtFiber();
    f->map_size = page + SIMT_STACK_BYTES;
    void* base = mmap(nullptr, f->map_size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (base == MAP_FAILED) simt_fail("mmap of a %zu-byte fiber stack failed (out of memory?)", f->map_size);
    if (mprotect(base, page, PROT_NONE) != 0) simt_fail("mprotect of a fiber guard page failed");
    f->map_base = (char*)base;
    f->ctx.stack_bottom = f->map_base + page;
    f->ctx.stack_size = SIMT_STACK_BYTES;
#ifdef SIMT_TSAN
    f->ctx.tsan_fiber = __tsan_create_fiber(0);
    char name[32];
    snprintf(name, sizeof(name), "simt thread %zu", S.fibers.size());
    __tsan_set_fiber_name(f->ctx.tsan_fiber, name);
#endif
#ifdef SIMT_USE_SWAPCONTEXT
    if (getcontext(&f->ctx.uc) != 0) simt_fail("getcontext failed");
    f->ctx.uc.uc_stack.ss_sp = f->map_base + page;
    f->ctx.uc.uc_stack.ss_size = SIMT_STACK_BYTES;
    f->ctx.uc.uc_link = nullptr;
    makecontext(&f->ctx.uc, simt_fiber_main, 0);
#endif
    S.fibers.push_back(f);
    simt_first_switch(f);
}

// ----------------------------------------------------------------------------------------------
// scheduling: a ring of runnable fibers; a release appends the released threads in schedule order

// ids[0..n) into the schedule's resume order (no std::swap: an instrumented template would show
// the emulator's own bookkeeping to TSan as races between fibers)
SIMT_NO_TSAN inline void simt_order(int* ids, int n) {
    SimtState& S = simt_state;
    if (S.order == SIMT_REVERSE) {
        for (int i = 0, j = n - 1; i < j; i++, j--) {
            int t = ids[i];
            ids[i] = ids[j];
            ids[j] = t;
        }
    } else if (S.order == SIMT_RANDOM) {
        for (int i = n - 1; i > 0; i--) {
            int j = (int)(simt_next_random() % (uint64_t)(i + 1)), t = ids[i];
            ids[i] = ids[j];
            ids[j] = t;
        }
    }
}

SIMT_NO_TSAN inline void simt_make_ready(const int* ids, int n) {
    SimtState& S = simt_state;
    size_t cap = S.ready.size();
    for (int i = 0; i < n; i++) {
        S.fibers[ids[i]]->state = SIMT_RUNNABLE;
        S.ready[S.ready_tail++ % cap] = ids[i];
    }
}

SIMT_NO_TSAN inline void simt_yield(void) {
    SimtState& S = simt_state;
    simt_switch(&S.current->ctx, &S.sched);
}

inline const char* simt_op_name(int op) {
    switch (op) {
    case SIMT_OP_SYNCWARP: return "__syncwarp";
    case SIMT_OP_SHFL_IDX: return "__shfl_sync";
    case SIMT_OP_SHFL_UP: return "__shfl_up_sync";
    case SIMT_OP_SHFL_DOWN: return "__shfl_down_sync";
    case SIMT_OP_SHFL_XOR: return "__shfl_xor_sync";
    case SIMT_OP_BALLOT: return "__ballot_sync";
    }
    return "?";
}

// __syncthreads: every thread of the block, at the same line; the last to arrive releases all
SIMT_NO_TSAN inline void simt_syncthreads(const char* file, int line) {
    SimtState& S = simt_state;
    if (!S.running) simt_fail("__syncthreads at %s:%d called outside a kernel launch", file, line);
    SimtFiber* f = S.current;
    if (S.block_exited > 0)
        simt_fail("__syncthreads at %s:%d reached after %d thread(s) of the block returned: every thread of a block "
                  "must reach every __syncthreads (no early return before a barrier)",
                  file, line, S.block_exited);
    if (S.block_waiting == 0) {
        S.block_file = file;
        S.block_line = line;
    } else if (line != S.block_line || (file != S.block_file && strcmp(file, S.block_file) != 0)) {
        simt_fail("divergent __syncthreads: this thread is at %s:%d while %d thread(s) wait at %s:%d (a barrier inside "
                  "a branch that not all threads take)",
                  file, line, S.block_waiting, S.block_file, S.block_line);
    }
    unsigned gen = S.block_gen;
    (void)gen;
    SIMT_TSAN_RELEASE(&S.block_keys[gen & 3]);
    f->state = SIMT_WAIT_BLOCK;
    f->wait_file = file;
    f->wait_line = line;
    if (++S.block_waiting == S.nthreads) {
        S.block_waiting = 0;
        S.block_gen++;
        int* ids = S.order_buf.data();
        for (int i = 0; i < S.nthreads; i++) ids[i] = i;
        simt_order(ids, S.nthreads);
        simt_make_ready(ids, S.nthreads);
    }
    simt_yield();
    SIMT_TSAN_ACQUIRE(&S.block_keys[gen & 3]);
}

// One warp-synchronous operation: this lane arrives with its operands, waits until every lane of
// the mask has arrived, and returns its result. The last lane to arrive computes all results
// (PTX shfl.sync semantics), so no lane's slot can be overwritten before it is read.
SIMT_NO_TSAN inline uint64_t simt_warp_op(int op, unsigned mask, uint64_t value, int b, int width, const char* file,
                                          int line) {
    SimtState& S = simt_state;
    if (!S.running) simt_fail("%s at %s:%d called outside a kernel launch", simt_op_name(op), file, line);
    SimtFiber* f = S.current;
    int lane = f->linear & 31;
    SimtWarp& W = S.warps[f->linear >> 5];
    unsigned bit = 1u << lane;
    if (!(mask & bit))
        simt_fail("%s at %s:%d: lane %d calls it with mask 0x%08x that does not include itself", simt_op_name(op), file,
                  line, lane, mask);
    if (op != SIMT_OP_SYNCWARP && op != SIMT_OP_BALLOT && (width < 1 || width > 32 || (width & (width - 1)) != 0))
        simt_fail("%s at %s:%d: width %d is not a power of two in [1, 32]", simt_op_name(op), file, line, width);
    if (W.exited & mask)
        simt_fail("%s at %s:%d: mask 0x%08x names lanes that already returned (0x%08x): they can never arrive",
                  simt_op_name(op), file, line, mask, W.exited & mask);
    if (W.arrived == 0) {
        W.mask = mask;
        W.op = op;
        W.file = file;
        W.line = line;
    } else if (W.mask != mask || W.op != op) {
        simt_fail("warp lanes disagree: this lane calls %s with mask 0x%08x at %s:%d while lanes 0x%08x wait in %s with "
                  "mask 0x%08x at %s:%d (all lanes of a mask must execute the same operation with the same mask)",
                  simt_op_name(op), mask, file, line, W.arrived, simt_op_name(W.op), W.mask, W.file, W.line);
    }
    unsigned gen = W.gen;
    (void)gen;
    if (op == SIMT_OP_SYNCWARP) SIMT_TSAN_RELEASE(&W.tsan_keys[gen & 3]);
    f->op_value = value;
    f->op_b = b;
    f->op_width = width;
    f->state = SIMT_WAIT_WARP;
    f->wait_file = file;
    f->wait_line = line;
    W.arrived |= bit;
    if (W.arrived == mask) {
        SimtFiber** lanes = &S.fibers[f->linear & ~31];
        unsigned ballot = 0;
        if (op == SIMT_OP_BALLOT)
            for (int l = 0; l < 32; l++)
                if ((mask >> l & 1) && lanes[l]->op_value != 0) ballot |= 1u << l;
        int ids[32], n = 0;
        for (int l = 0; l < 32; l++) {
            if (!(mask >> l & 1)) continue;
            SimtFiber* me = lanes[l];
            ids[n++] = me->linear;
            if (op == SIMT_OP_SYNCWARP) continue;
            if (op == SIMT_OP_BALLOT) {
                me->op_result = ballot;
                continue;
            }
            // PTX shfl.sync: c = ((32 - width) << 8) | clamp; a source beyond the segment gives the lane its own value
            int segmask = 32 - me->op_width;
            int min_lane = l & segmask;
            int max_lane = (op == SIMT_OP_SHFL_UP) ? min_lane : (min_lane | (31 & ~segmask));
            long j = l;
            int ok = 1;
            long bv = (long)(unsigned)me->op_b;
            if (op == SIMT_OP_SHFL_UP) {
                j = l - bv;
                ok = j >= max_lane;
            } else if (op == SIMT_OP_SHFL_DOWN) {
                j = l + bv;
                ok = j <= max_lane;
            } else if (op == SIMT_OP_SHFL_XOR) {
                j = l ^ bv;
                ok = j <= max_lane;
            } else {
                j = min_lane | (bv & 31 & ~segmask);
                ok = j <= max_lane;
            }
            if (!ok) j = l;
            if (!(mask >> j & 1))
                simt_fail("%s at %s:%d: lane %d reads lane %ld, which is not in the mask 0x%08x (undefined on the GPU)",
                          simt_op_name(op), me->wait_file, me->wait_line, l, j, mask);
            me->op_result = lanes[j]->op_value;
        }
        W.arrived = 0;
        W.gen++;
        simt_order(ids, n);
        simt_make_ready(ids, n);
    }
    simt_yield();
    if (op == SIMT_OP_SYNCWARP) SIMT_TSAN_ACQUIRE(&W.tsan_keys[gen & 3]);
    return f->op_result;
}

// the kernel function of this fiber returned
SIMT_NO_TSAN inline void simt_thread_exit(void) {
    SimtState& S = simt_state;
    SimtFiber* f = S.current;
    if (S.block_waiting > 0)
        simt_fail("thread returned while %d thread(s) wait at __syncthreads at %s:%d: the barrier is reached by only "
                  "some threads (an early return or a barrier inside a branch); every thread of a block must reach "
                  "every __syncthreads",
                  S.block_waiting, S.block_file, S.block_line);
    SimtWarp& W = S.warps[f->linear >> 5];
    unsigned bit = 1u << (f->linear & 31);
    if (W.arrived != 0 && (W.mask & bit))
        simt_fail("lane %d returned while lanes 0x%08x wait for it in %s (mask 0x%08x) at %s:%d", f->linear & 31,
                  W.arrived, simt_op_name(W.op), W.mask, W.file, W.line);
    W.exited |= bit;
    S.block_exited++;
    S.done++;
    f->state = SIMT_DONE;
    SIMT_TSAN_RELEASE(&S.block_end_key); // the host reads what the block wrote after the launch
    simt_yield();
}

// nobody can run but not every thread has returned: name where they wait
inline void simt_report_deadlock(void) {
    SimtState& S = simt_state;
    char detail[1024];
    int n = 0;
    int counted[SIMT_DONE + 1] = {0, 0, 0, 0};
    for (int i = 0; i < S.nthreads; i++) counted[S.fibers[i]->state]++;
    if (counted[SIMT_WAIT_BLOCK])
        n += snprintf(detail + n, sizeof(detail) - n, "%d thread(s) wait at __syncthreads at %s:%d; ",
                      counted[SIMT_WAIT_BLOCK], S.block_file, S.block_line);
    for (size_t w = 0; w < S.warps.size() && n < (int)sizeof(detail) - 200; w++) {
        SimtWarp& W = S.warps[w];
        if (W.arrived)
            n += snprintf(detail + n, sizeof(detail) - n, "warp %zu: lanes 0x%08x wait in %s (mask 0x%08x) at %s:%d; ",
                          w, W.arrived, simt_op_name(W.op), W.mask, W.file, W.line);
    }
    S.current = nullptr;
    simt_fail("deadlock, no thread can run: %s%d returned (a barrier or shuffle that not all of its threads reach)",
              detail, counted[SIMT_DONE]);
}

// run one launch: every block, one after another in a shuffled order
inline void simt_run(void) {
    SimtState& S = simt_state;
    simt_install_segv_handler();
#ifdef SIMT_TSAN
    S.sched.tsan_fiber = __tsan_get_current_fiber();
#endif
    int nt = S.nthreads;
    while ((int)S.fibers.size() < nt) simt_add_fiber();
    S.ready.assign((size_t)nt, 0);
    S.order_buf.assign((size_t)nt, 0);
    S.warps.assign((size_t)nt / 32, SimtWarp());
    for (int i = 0; i < nt; i++) {
        SimtFiber* f = S.fibers[i];
        f->linear = i;
        f->tid.x = (unsigned)i % S.block_dim.x;
        f->tid.y = ((unsigned)i / S.block_dim.x) % S.block_dim.y;
        f->tid.z = (unsigned)i / (S.block_dim.x * S.block_dim.y);
    }
    uint64_t gx = S.grid_dim.x, gy = S.grid_dim.y, gz = S.grid_dim.z, nblocks = gx * gy * gz;
    std::vector<uint64_t> blocks(nblocks);
    for (uint64_t i = 0; i < nblocks; i++) blocks[i] = i;
    for (uint64_t i = nblocks; i > 1; i--) std::swap(blocks[i - 1], blocks[simt_next_random() % i]);
    char* smem_lo = __start_simt_shared;
    size_t smem_static = (smem_lo && __stop_simt_shared > smem_lo) ? (size_t)(__stop_simt_shared - smem_lo) : 0;
    for (uint64_t b = 0; b < nblocks; b++) {
        uint64_t l = blocks[b];
        S.block_idx.x = (unsigned)(l % gx);
        S.block_idx.y = (unsigned)((l / gx) % gy);
        S.block_idx.z = (unsigned)(l / (gx * gy));
        simt_set_now_block(S.block_idx, S.block_dim, S.grid_dim);
        // fresh shared memory: NaN bytes, the dynamic part at exactly its size on the heap
        if (smem_static) memset(smem_lo, 0xFF, smem_static);
        S.dynamic_shared = malloc(S.smem_bytes > 0 ? S.smem_bytes : 1);
        if (!S.dynamic_shared) simt_fail("malloc of %zu bytes of dynamic shared memory failed", S.smem_bytes);
        memset(S.dynamic_shared, 0xFF, S.smem_bytes);
        for (auto& W : S.warps) W.arrived = W.exited = 0;
        S.block_waiting = S.block_exited = 0;
        S.done = 0;
        S.ready_head = S.ready_tail = 0;
        int* ids = S.order_buf.data();
        for (int i = 0; i < nt; i++) ids[i] = i;
        simt_order(ids, nt);
        simt_make_ready(ids, nt);
        SIMT_TSAN_RELEASE(&S.block_start_key);
        while (S.ready_head != S.ready_tail) {
            SimtFiber* f = S.fibers[S.ready[S.ready_head++ % (size_t)nt]];
            S.current = f;
            simt_set_now_thread(f->tid);
            simt_switch(&S.sched, &f->ctx);
        }
        if (S.done != nt) simt_report_deadlock();
        S.current = nullptr;
        SIMT_TSAN_ACQUIRE(&S.block_end_key);
        free(S.dynamic_shared);
        S.dynamic_shared = nullptr;
        S.blocks_run++;
    }
}

// ----------------------------------------------------------------------------------------------
// device memory registry: test/cuda_runtime_shim.h; these names stay for the kernel tests

inline bool simt_is_device(const void* p, size_t bytes) { return shim_is_device(p, bytes); }

// for test/cublas_shim.h: abort unless [p, p + bytes) lies inside one cudaMalloc allocation.
// That shim computes its GEMM when called instead of queueing it on its stream, so this check
// first runs all queued work (a device synchronisation) and the GEMM then reads what earlier
// work wrote. A shim that queues its work calls shim_check_device_range (no synchronisation).
inline void simt_check_device_range(const void* p, size_t bytes, const char* what) {
    if (!shim_state.draining) (void)cudaDeviceSynchronize();
    shim_check_device_range(p, bytes, what);
}

inline size_t simt_device_allocation_count(void) { return shim_device_allocation_count(); }

// ----------------------------------------------------------------------------------------------
// launch

// the kernel and its arguments, converted to the parameter types as a call would
template <typename... KArgs>
struct SimtPayload {
    void (*kernel)(KArgs...);
    std::tuple<std::decay_t<KArgs>...> args;
};

// every thread calls the kernel with its own copies of the arguments (parameters are by value)
template <typename... KArgs>
void simt_invoke_kernel(void* payload) {
    auto* p = (SimtPayload<KArgs...>*)payload;
    std::apply(p->kernel, p->args);
}

template <typename T>
void simt_check_argument(const T& v, int index, const char* name, const char* file, int line) {
    if constexpr (std::is_pointer<T>::value) {
        if (v != nullptr && !simt_is_device((const void*)v, 0))
            simt_fail("argument %d of kernel %s launched at %s:%d is %p, which is not device memory (not inside any "
                      "cudaMalloc allocation): a host pointer passed to a kernel?",
                      index, name, file, line, (const void*)v);
    }
    (void)v;
    (void)index;
    (void)name;
    (void)file;
    (void)line;
}

// run one queued launch (the stream reached it): the same checks of the pointer arguments, now
// against the registry at run time (a buffer freed since the launch was queued fails here)
template <typename... KArgs>
void simt_execute_launch(SimtPayload<KArgs...>* payload, const char* name, const char* file, int line, dim3 grid,
                         dim3 block, size_t smem_bytes, SimtOrder order) {
    SimtState& S = simt_state;
    int index = 0;
    std::apply([&](const auto&... a) { (simt_check_argument(a, index++, name, file, line), ...); }, payload->args);
    SimtOrder saved_order = S.order; // the thread order in effect when the launch was queued
    S.order = order;
    S.kernel_name = name;
    S.launch_file = file;
    S.launch_line = line;
    S.invoke = &simt_invoke_kernel<KArgs...>;
    S.payload = payload;
    S.nthreads = (int)(block.x * block.y * block.z);
    S.smem_bytes = smem_bytes;
    S.block_dim = block;
    S.grid_dim = grid;
    S.rng ^= S.seed + 0x9E3779B97F4A7C15ull * ++S.launch_count;
    S.running = 1;
    simt_run();
    S.running = 0;
    S.invoke = nullptr;
    S.payload = nullptr;
    S.order = saved_order;
}

// what MOSAIC_LAUNCH expands to: validate the launch now (shape, shared memory, stream, pointer
// arguments), then queue it on its stream with copies of the arguments (parameters are by value)
template <typename... KArgs, typename... Args>
void simt_launch(const char* name, const char* file, int line, void (*kernel)(KArgs...), dim3 grid, dim3 block,
                 size_t smem_bytes, cudaStream_t stream, Args... args) {
    static_assert(sizeof...(KArgs) == sizeof...(Args), "MOSAIC_LAUNCH: argument count differs from the kernel's");
    SimtState& S = simt_state;
    if (S.running) simt_fail("launch of %s at %s:%d from inside kernel %s: dynamic parallelism is not emulated", name, file, line, S.kernel_name);
    uint64_t threads = (uint64_t)block.x * block.y * block.z;
    if (block.x == 0 || block.y == 0 || block.z == 0 || threads > 1024 || block.x > 1024 || block.y > 1024 || block.z > 64)
        simt_fail("kernel %s launched at %s:%d with block (%u,%u,%u): each dimension must be at least 1, at most "
                  "(1024,1024,64), and at most 1024 threads in all",
                  name, file, line, block.x, block.y, block.z);
    if (threads % 32 != 0)
        simt_fail("kernel %s launched at %s:%d with block (%u,%u,%u) = %llu threads: the contract needs whole warps (a "
                  "multiple of 32)",
                  name, file, line, block.x, block.y, block.z, (unsigned long long)threads);
    if (grid.x == 0 || grid.y == 0 || grid.z == 0 || grid.x > 2147483647u || grid.y > 65535 || grid.z > 65535)
        simt_fail("kernel %s launched at %s:%d with grid (%u,%u,%u): each dimension must be at least 1 (skip the launch "
                  "for an empty problem) and y, z at most 65535",
                  name, file, line, grid.x, grid.y, grid.z);
    size_t limit = shim_max_dynamic_shared((const void*)kernel);
    if (smem_bytes > limit)
        simt_fail("kernel %s launched at %s:%d with %zu bytes of dynamic shared memory: above the limit of %zu "
                  "(MOSAIC_MAX_SHARED_BYTES without opt-in; cudaFuncSetAttribute(cudaFuncAttributeMaxDynamicSharedMemorySize) "
                  "raises it)",
                  name, file, line, smem_bytes, limit);
    ShimStream* st = shim_stream(stream, "kernel launch");
    if (!st)
        simt_fail("kernel %s launched at %s:%d on stream %p: not a live stream of the current device (see the line above)",
                  name, file, line, (void*)stream);
    auto payload = std::make_shared<SimtPayload<KArgs...>>(SimtPayload<KArgs...>{kernel, std::tuple<std::decay_t<KArgs>...>(args...)});
    int index = 0;
    std::apply([&](const auto&... a) { (simt_check_argument(a, index++, name, file, line), ...); }, payload->args);
    char what[512];
    snprintf(what, sizeof(what), "kernel %s launched at %s:%d", name, file, line);
    SimtOrder order = S.order;
    shim_enqueue_run(st, what, [=] { simt_execute_launch(payload.get(), name, file, line, grid, block, smem_bytes, order); });
}

// MOSAIC_DYNAMIC_SHARED: this block's dynamic shared memory (heap, exactly the launch's bytes)
SIMT_NO_TSAN inline void* simt_dynamic_shared(void) {
    if (!simt_state.running) simt_fail("simt_dynamic_shared called outside a kernel launch");
    return simt_state.dynamic_shared;
}

// ----------------------------------------------------------------------------------------------
// device intrinsics

#define __syncthreads() simt_syncthreads(__FILE__, __LINE__)
SIMT_NO_TSAN inline void simt_syncwarp(const char* file, int line, unsigned mask = 0xffffffffu) {
    simt_warp_op(SIMT_OP_SYNCWARP, mask, 0, 0, 32, file, line);
}
#define __syncwarp(...) simt_syncwarp(__FILE__, __LINE__, ##__VA_ARGS__)

template <typename T>
inline T simt_shfl(int op, unsigned mask, T var, int b, int width, const char* file, int line) {
    static_assert(std::is_trivially_copyable<T>::value && sizeof(T) <= 8, "shuffles move values of at most 8 bytes");
    uint64_t bits = 0;
    memcpy(&bits, &var, sizeof(T));
    bits = simt_warp_op(op, mask, bits, b, width, file, line);
    T out;
    memcpy(&out, &bits, sizeof(T));
    return out;
}
#define __shfl_sync(mask, var, src, ...) simt_shfl(SIMT_OP_SHFL_IDX, (mask), (var), (src), simt_width(__VA_ARGS__), __FILE__, __LINE__)
#define __shfl_up_sync(mask, var, d, ...) simt_shfl(SIMT_OP_SHFL_UP, (mask), (var), (int)(d), simt_width(__VA_ARGS__), __FILE__, __LINE__)
#define __shfl_down_sync(mask, var, d, ...) simt_shfl(SIMT_OP_SHFL_DOWN, (mask), (var), (int)(d), simt_width(__VA_ARGS__), __FILE__, __LINE__)
#define __shfl_xor_sync(mask, var, m, ...) simt_shfl(SIMT_OP_SHFL_XOR, (mask), (var), (int)(m), simt_width(__VA_ARGS__), __FILE__, __LINE__)
inline int simt_width(int width = 32) { return width; }

SIMT_NO_TSAN inline unsigned simt_ballot(unsigned mask, int pred, const char* file, int line) {
    return (unsigned)simt_warp_op(SIMT_OP_BALLOT, mask, pred != 0, 0, 32, file, line);
}
#define __ballot_sync(mask, pred) simt_ballot((mask), (pred), __FILE__, __LINE__)
#define __any_sync(mask, pred) (simt_ballot((mask), (pred), __FILE__, __LINE__) != 0)
#define __all_sync(mask, pred) (simt_ballot((mask), (pred), __FILE__, __LINE__) == (mask))

// atomics: real atomic instructions, so TSan sees them as such (fibers never interleave inside one)
inline int atomicAdd(int* p, int v) { return __atomic_fetch_add(p, v, __ATOMIC_RELAXED); }
inline unsigned atomicAdd(unsigned* p, unsigned v) { return __atomic_fetch_add(p, v, __ATOMIC_RELAXED); }
inline unsigned long long atomicAdd(unsigned long long* p, unsigned long long v) {
    return __atomic_fetch_add(p, v, __ATOMIC_RELAXED);
}
template <typename F, typename U>
inline F simt_atomic_add_float(F* p, F v) {
    static_assert(sizeof(F) == sizeof(U), "float and its bits");
    U old_bits = __atomic_load_n((U*)p, __ATOMIC_RELAXED), new_bits;
    F old_value, new_value;
    do {
        memcpy(&old_value, &old_bits, sizeof(F));
        new_value = old_value + v;
        memcpy(&new_bits, &new_value, sizeof(F));
    } while (!__atomic_compare_exchange_n((U*)p, &old_bits, new_bits, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED));
    return old_value;
}
inline float atomicAdd(float* p, float v) { return simt_atomic_add_float<float, uint32_t>(p, v); }
inline double atomicAdd(double* p, double v) { return simt_atomic_add_float<double, uint64_t>(p, v); }

// CUDA's min/max overloads, which nvcc provides for host and device code alike
#define SIMT_MIN_MAX(T)                                   \
    inline T min(T a, T b) { return a < b ? a : b; } \
    inline T max(T a, T b) { return a > b ? a : b; }
SIMT_MIN_MAX(int)
SIMT_MIN_MAX(unsigned)
SIMT_MIN_MAX(long)
SIMT_MIN_MAX(unsigned long)
SIMT_MIN_MAX(long long)
SIMT_MIN_MAX(unsigned long long)
#undef SIMT_MIN_MAX
inline float min(float a, float b) { return fminf(a, b); }
inline float max(float a, float b) { return fmaxf(a, b); }
inline double min(double a, double b) { return fmin(a, b); }
inline double max(double a, double b) { return fmax(a, b); }
inline unsigned min(int a, unsigned b) { return min((unsigned)a, b); }
inline unsigned min(unsigned a, int b) { return min(a, (unsigned)b); }
inline unsigned max(int a, unsigned b) { return max((unsigned)a, b); }
inline unsigned max(unsigned a, int b) { return max(a, (unsigned)b); }
