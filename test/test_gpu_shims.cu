// Self-test of the test-only CUDA runtime shim (test/cuda_runtime_shim.h: deferred streams and
// events, the device memory registry) and the NCCL shim (test/nccl_shim.h: NCCL on MPI). Each
// check compares with a reference (the host values written, or MPI's own collective) and can
// fail; the planted-bug checks show that the shims turn a GPU-only bug into a wrong answer, a
// failed call or a death with a message. Built only for the CPU, with MPI (Makefile block
// "GPU shims self-test"):
//   ./build/emu_test_gpu_shims                              runtime parts + NCCL on one rank
//   mpirun --oversubscribe -np 2 ./build/emu_test_gpu_shims --nccl-only
// (also built and run under ASan+UBSan and TSan, single-process).
#include "cuda_test_util.h"
#include <mpi.h>
#include <nccl.h>
#include "nccl_shim.h"
#include <fcntl.h>
#include <sys/wait.h>
#include <unistd.h>
#include <chrono>
#include <string>

#ifndef MOSAIC_SIMT_EMULATION
#error "test_gpu_shims.cu tests the emulation's shims: build it with -DMOSAIC_SIMT_EMULATION"
#endif

#if defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define TEST_TSAN 1
#endif
#if __has_feature(address_sanitizer)
#define TEST_ASAN 1
#endif
#endif
#ifdef TEST_TSAN
extern "C" const char* __tsan_default_options(void) { return "atexit_sleep_ms=0"; }
#endif
#ifdef TEST_ASAN
// Open MPI keeps its own allocations until exit; only this program's leaks matter here. Its
// plugins are unloaded by MPI_Finalize, so the suppressions need full malloc stacks to match
extern "C" const char* __asan_default_options(void) { return "fast_unwind_on_malloc=0:print_suppressions=0"; }
extern "C" const char* __lsan_default_suppressions(void) {
    return "leak:libmpi.so\nleak:libopen-pal.so\nleak:libopen-rte.so\nleak:libhwloc.so\nleak:libevent\nleak:libpmix\n"
           "leak:mca_\nleak:libucp\nleak:libuct\nleak:libucs\n";
}
#endif

static int world_rank = 0, world_size = 1;

// an NCCL call that must succeed: a failure is counted and the test goes on
#define NCCL_CHECK_SHIM(call)                                                                           \
    do {                                                                                                \
        ncclResult_t nccl_r_ = (call);                                                                  \
        if (nccl_r_ != ncclSuccess) {                                                                   \
            printf("FAIL  %s at %s:%d: %s\n", #call, __FILE__, __LINE__, ncclGetErrorString(nccl_r_)); \
            tests_failed++;                                                                             \
        }                                                                                               \
    } while (0)

// ----------------------------------------------------------------------------------------------
// kernels

__global__ void fill_kernel(float* out, float value, int n) { // out (n)
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = value;
}

__global__ void add_kernel(float* out, const float* in, float add, int n) { // out (n), in (n)
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = in[i] + add;
}

// every thread writes its dynamic shared slot, thread 0 sums them: out[0] = blockDim.x
__global__ void shared_sum_kernel(float* out) { // out (1)
    MOSAIC_DYNAMIC_SHARED(float, slots);
    slots[threadIdx.x] = 1.0f;
    __syncthreads();
    if (threadIdx.x == 0) {
        float s = 0.0f;
        for (unsigned i = 0; i < blockDim.x; i++) s += slots[i];
        out[0] = s;
    }
}

// ----------------------------------------------------------------------------------------------
// helpers

static float* device_floats(int n, float value) {
    float* d = NULL;
    CUDA_CHECK(cudaMalloc((void**)&d, (size_t)n * sizeof(float)));
    std::vector<float> h((size_t)n, value);
    CUDA_CHECK(cudaMemcpy(d, h.data(), (size_t)n * sizeof(float), cudaMemcpyHostToDevice));
    return d;
}

// a blocking copy: runs only the legacy default stream's work, as on CUDA
static std::vector<float> host_floats(const float* d, int n) {
    std::vector<float> h((size_t)n);
    CUDA_CHECK(cudaMemcpy(h.data(), d, (size_t)n * sizeof(float), cudaMemcpyDeviceToHost));
    return h;
}

static int all_equal(const std::vector<float>& v, float want) {
    for (float x : v)
        if (x != want) return 0;
    return 1;
}

static cudaStream_t new_stream(unsigned flags) {
    cudaStream_t s;
    CUDA_CHECK(cudaStreamCreateWithFlags(&s, flags));
    return s;
}


// ----------------------------------------------------------------------------------------------
// CUDA runtime shim

// stream a writes x = 1, stream b computes y = x + 1 after waiting for a's event (or not)
static int event_join_trial(cudaStream_t a, cudaStream_t b, cudaEvent_t ev, float* x, float* y, int n, int with_wait) {
    CUDA_CHECK(cudaMemcpy(x, std::vector<float>((size_t)n, 0.0f).data(), (size_t)n * sizeof(float), cudaMemcpyHostToDevice));
    MOSAIC_LAUNCH(fill_kernel, 1, 64, 0, a, x, 1.0f, n);
    CUDA_CHECK(cudaEventRecord(ev, a));
    if (with_wait) CUDA_CHECK(cudaStreamWaitEvent(b, ev, 0));
    MOSAIC_LAUNCH(add_kernel, 1, 64, 0, b, y, (const float*)x, 1.0f, n);
    CUDA_CHECK(cudaStreamSynchronize(b));
    int right = all_equal(host_floats(y, n), 2.0f);
    CUDA_CHECK(cudaDeviceSynchronize());
    return right;
}

static void test_event_join(void) {
    const int n = 64, seeds = 16;
    cudaStream_t a = new_stream(cudaStreamNonBlocking), b = new_stream(cudaStreamNonBlocking);
    cudaEvent_t ev;
    CUDA_CHECK(cudaEventCreateWithFlags(&ev, cudaEventDisableTiming));
    float *x = device_floats(n, 0.0f), *y = device_floats(n, 0.0f);
    int right_with = 0, right_without = 0;
    for (int seed = 1; seed <= seeds; seed++) {
        shim_set_seed((uint64_t)seed);
        right_with += event_join_trial(a, b, ev, x, y, n, 1);
        shim_set_seed((uint64_t)seed);
        right_without += event_join_trial(a, b, ev, x, y, n, 0);
    }
    char what[200];
    snprintf(what, sizeof(what), "two streams joined by an event: right under all %d seeds (%d right)", seeds, right_with);
    check_true(what, right_with == seeds);
    snprintf(what, sizeof(what), "the same without cudaStreamWaitEvent: wrong under some seed (%d of %d wrong)",
             seeds - right_without, seeds);
    check_true(what, right_without < seeds);
    CUDA_CHECK(cudaEventDestroy(ev));
    CUDA_CHECK(cudaStreamDestroy(a));
    CUDA_CHECK(cudaStreamDestroy(b));
    CUDA_CHECK(cudaFree(x));
    CUDA_CHECK(cudaFree(y));
}

static void test_default_stream_semantics(void) {
    const int n = 40;
    float *x = device_floats(n, 0.0f), *y = device_floats(n, 0.0f);
    cudaStream_t nb = new_stream(cudaStreamNonBlocking), blocking = new_stream(cudaStreamDefault);

    MOSAIC_LAUNCH(fill_kernel, 1, 64, 0, nb, x, 5.0f, n);
    check_true("a kernel on a non-blocking stream is queued, not run", shim_pending_work() == 1);
    check_true("a blocking cudaMemcpy does not run a non-blocking stream's pending kernel", all_equal(host_floats(x, n), 0.0f));
    CUDA_CHECK(cudaStreamSynchronize(nb));
    check_true("cudaStreamSynchronize runs it", all_equal(host_floats(x, n), 5.0f));

    MOSAIC_LAUNCH(fill_kernel, 1, 64, 0, 0, x, 7.0f, n);
    check_true("a blocking cudaMemcpy runs the legacy default stream's kernel first", all_equal(host_floats(x, n), 7.0f));

    MOSAIC_LAUNCH(fill_kernel, 1, 64, 0, blocking, x, 9.0f, n);
    check_true("... and a blocking stream's (CUDA's implicit synchronisation)", all_equal(host_floats(x, n), 9.0f));

    // cudaMemset is queued on the legacy stream: a blocking stream orders after it
    CUDA_CHECK(cudaMemset(x, 0, n * sizeof(float)));
    MOSAIC_LAUNCH(add_kernel, 1, 64, 0, blocking, y, (const float*)x, 1.0f, n);
    CUDA_CHECK(cudaStreamSynchronize(blocking));
    check_true("a blocking stream's kernel runs after an earlier cudaMemset", all_equal(host_floats(y, n), 1.0f));

    // ... a non-blocking stream does not: reading without synchronising sees old data for some seed
    int wrong = 0;
    for (int seed = 1; seed <= 16; seed++) {
        shim_set_seed((uint64_t)seed);
        MOSAIC_LAUNCH(fill_kernel, 1, 64, 0, 0, x, 3.0f, n);
        CUDA_CHECK(cudaDeviceSynchronize());
        CUDA_CHECK(cudaMemset(x, 0, n * sizeof(float)));
        MOSAIC_LAUNCH(add_kernel, 1, 64, 0, nb, y, (const float*)x, 1.0f, n);
        CUDA_CHECK(cudaStreamSynchronize(nb));
        wrong += !all_equal(host_floats(y, n), 1.0f);
        CUDA_CHECK(cudaDeviceSynchronize());
    }
    char what[160];
    snprintf(what, sizeof(what), "cudaMemset then a non-blocking stream without a sync: wrong under some seed (%d of 16)", wrong);
    check_true(what, wrong > 0);

    // device-to-device cudaMemcpy is asynchronous to the host, ordered on the legacy stream
    MOSAIC_LAUNCH(fill_kernel, 1, 64, 0, 0, x, 4.0f, n);
    CUDA_CHECK(cudaMemcpy(y, x, n * sizeof(float), cudaMemcpyDeviceToDevice));
    check_true("device-to-device cudaMemcpy is queued on the legacy stream", shim_pending_work() >= 2);
    check_true("... and ordered after its kernel", all_equal(host_floats(y, n), 4.0f));

    CUDA_CHECK(cudaStreamDestroy(nb));
    CUDA_CHECK(cudaStreamDestroy(blocking));
    CUDA_CHECK(cudaFree(x));
    CUDA_CHECK(cudaFree(y));
}

static void test_async_host_copies(void) {
    const int n = 8;
    float* d = device_floats(n, 0.0f);
    cudaStream_t s = new_stream(cudaStreamNonBlocking);
    float h[n] = {1, 2, 3, 4, 5, 6, 7, 8};
    CUDA_CHECK(cudaMemcpyAsync(d, h, sizeof(h), cudaMemcpyHostToDevice, s));
    h[0] = 100.0f; // reused before the stream was synchronised
    CUDA_CHECK(cudaStreamSynchronize(s));
    std::vector<float> got = host_floats(d, n);
    check_true("cudaMemcpyAsync host-to-device reads the host buffer when it runs (early reuse shows)",
               got[0] == 100.0f && got[7] == 8.0f);
    float back[n];
    for (int i = 0; i < n; i++) back[i] = -1.0f;
    CUDA_CHECK(cudaMemcpyAsync(back, d, sizeof(back), cudaMemcpyDeviceToHost, s));
    int untouched = back[0] == -1.0f && back[7] == -1.0f;
    CUDA_CHECK(cudaStreamSynchronize(s));
    check_true("cudaMemcpyAsync device-to-host writes the host buffer only when it runs",
               untouched && back[0] == 100.0f && back[7] == 8.0f);
    CUDA_CHECK(cudaStreamDestroy(s));
    CUDA_CHECK(cudaFree(d));
}

static void test_queries_and_events(void) {
    const int n = 32;
    float* x = device_floats(n, 0.0f);
    cudaStream_t s = new_stream(cudaStreamNonBlocking), t = new_stream(cudaStreamNonBlocking);
    cudaEvent_t ev, never;
    CUDA_CHECK(cudaEventCreateWithFlags(&ev, cudaEventDisableTiming));
    CUDA_CHECK(cudaEventCreateWithFlags(&never, cudaEventDisableTiming));
    MOSAIC_LAUNCH(fill_kernel, 1, 64, 0, s, x, 2.0f, n);
    check_true("cudaStreamQuery runs what can run and reports cudaSuccess", cudaStreamQuery(s) == cudaSuccess &&
               shim_pending_work() == 0 && all_equal(host_floats(x, n), 2.0f));
    MOSAIC_LAUNCH(fill_kernel, 1, 64, 0, s, x, 3.0f, n);
    CUDA_CHECK(cudaEventRecord(ev, s));
    MOSAIC_LAUNCH(fill_kernel, 1, 64, 0, t, x, 6.0f, n); // not needed by the event
    check_true("cudaEventSynchronize runs the event's work", cudaEventSynchronize(ev) == cudaSuccess && cudaEventQuery(ev) == cudaSuccess);
    CUDA_CHECK(cudaDeviceSynchronize());
    check_true("an event never recorded is complete, and waiting on it is a no-op",
               cudaEventQuery(never) == cudaSuccess && cudaStreamWaitEvent(s, never, 0) == cudaSuccess &&
                   shim_pending_work() == 0);
    fprintf(stderr, "    (the next 'cuda shim:' lines are expected)\n");
    cudaStream_t gone = s;
    CUDA_CHECK(cudaStreamDestroy(s));
    check_true("a destroyed stream is an invalid handle", cudaStreamSynchronize(gone) == cudaErrorInvalidResourceHandle);
    check_true("cudaStreamCreateWithFlags with unknown flags fails", cudaStreamCreateWithFlags(&s, 0x8) == cudaErrorInvalidValue);
    cudaGetLastError();
    CUDA_CHECK(cudaEventDestroy(ev));
    CUDA_CHECK(cudaEventDestroy(never));
    CUDA_CHECK(cudaStreamDestroy(t));
    CUDA_CHECK(cudaFree(x));
}

static void test_devices(void) {
    int count = 0, dev = -1;
    setenv("MOSAIC_SHIM_DEVICES", "4", 1);
    check_true("cudaGetDeviceCount is MOSAIC_SHIM_DEVICES (4)", cudaGetDeviceCount(&count) == cudaSuccess && count == 4);
    CUDA_CHECK(cudaSetDevice(3));
    check_true("cudaSetDevice(3), cudaGetDevice", cudaGetDevice(&dev) == cudaSuccess && dev == 3);
    cudaStream_t s3 = new_stream(cudaStreamNonBlocking);
    CUDA_CHECK(cudaSetDevice(0));
    fprintf(stderr, "    (the next 'cuda shim:' lines are expected)\n");
    check_true("cudaSetDevice(4) of 4 devices fails", cudaSetDevice(4) == cudaErrorInvalidDevice);
    check_true("a stream of device 3 used while device 0 is current fails",
               cudaStreamSynchronize(s3) == cudaErrorInvalidResourceHandle);
    CUDA_CHECK(cudaSetDevice(3));
    CUDA_CHECK(cudaStreamDestroy(s3));
    CUDA_CHECK(cudaSetDevice(0));
    setenv("MOSAIC_SHIM_DEVICES", "0", 1);
    check_true("MOSAIC_SHIM_DEVICES=0: cudaGetDeviceCount says no device", cudaGetDeviceCount(&count) == cudaErrorNoDevice && count == 0);
    unsetenv("MOSAIC_SHIM_DEVICES");
    cudaGetLastError();
}

static void test_shared_memory_opt_in(void) {
    float* out = device_floats(1, 0.0f);
    cudaStream_t s = new_stream(cudaStreamNonBlocking);
    CUDA_CHECK(cudaFuncSetAttribute((const void*)shared_sum_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, 100 * 1024));
    MOSAIC_LAUNCH(shared_sum_kernel, 1, 256, 100 * 1024, s, out);
    CUDA_CHECK(cudaStreamSynchronize(s));
    check_true("100 KB of dynamic shared memory after cudaFuncSetAttribute opt-in", host_floats(out, 1)[0] == 256.0f);
    fprintf(stderr, "    (the next 'cuda shim:' line is expected)\n");
    check_true("opt-in above the device limit (163 KB, sm_80) fails",
               cudaFuncSetAttribute((const void*)shared_sum_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                    200 * 1024) == cudaErrorInvalidValue);
    cudaGetLastError();
    CUDA_CHECK(cudaStreamDestroy(s));
    CUDA_CHECK(cudaFree(out));
}

static void test_runtime_deaths(void) {
    expect_death("a host pointer passed to a kernel", [] {
        static float host[64];
        cudaStream_t s = new_stream(cudaStreamNonBlocking);
        MOSAIC_LAUNCH(fill_kernel, 1, 64, 0, s, host, 1.0f, 64);
    }, "argument 0 of kernel fill_kernel launched at");
    expect_death("cudaMemcpyAsync host-to-device into a host buffer (wrong kind)", [] {
        static float a[16], b[16];
        cudaStream_t s = new_stream(cudaStreamNonBlocking);
        CUDA_CHECK(cudaMemcpyAsync(a, b, sizeof(a), cudaMemcpyHostToDevice, s));
    }, "cudaMemcpyAsync(cudaMemcpyHostToDevice): the destination");
    expect_death("cudaMemcpyAsync device-to-host with the pointers swapped", [] {
        static float h[16];
        float* d = device_floats(16, 0.0f);
        cudaStream_t s = new_stream(cudaStreamNonBlocking);
        CUDA_CHECK(cudaMemcpyAsync(d, h, sizeof(h), cudaMemcpyDeviceToHost, s));
    }, "is device memory: wrong direction?");
    expect_death("64 KB of dynamic shared memory without opt-in", [] {
        float* d = device_floats(64, 0.0f);
        MOSAIC_LAUNCH(fill_kernel, 1, 64, 64 * 1024, 0, d, 1.0f, 64);
    }, "above the limit of 49152");
    expect_death("a launch on a destroyed stream", [] {
        float* d = device_floats(64, 0.0f);
        cudaStream_t s = new_stream(cudaStreamNonBlocking);
        CUDA_CHECK(cudaStreamDestroy(s));
        MOSAIC_LAUNCH(fill_kernel, 1, 64, 0, s, d, 1.0f, 64);
    }, "not a live stream");
    expect_death("a host buffer passed to ncclAllReduce", [] {
        static float host[64];
        float* d = device_floats(64, 0.0f);
        ncclUniqueId id;
        ncclComm_t comm;
        ncclGetUniqueId(&id);
        ncclCommInitRank(&comm, 1, id, 0);
        ncclAllReduce(host, d, 64, ncclFloat, ncclSum, comm, 0);
    }, "ncclAllReduce sendbuff");
    expect_death("a host buffer passed to ncclRecv", [] {
        static float host[64];
        ncclUniqueId id;
        ncclComm_t comm;
        ncclGetUniqueId(&id);
        ncclCommInitRank(&comm, 1, id, 0);
        ncclRecv(host, 64, ncclFloat, 0, comm, 0);
    }, "ncclRecv recvbuff");
}

// ----------------------------------------------------------------------------------------------
// NCCL shim (every rank of the world runs these)

static std::vector<float> rank_data(int rank, int n, int salt) { // reproducible values that need rounding when summed
    std::vector<float> v((size_t)n);
    uint32_t z = 2654435761u * (uint32_t)(rank + 1) + 97u * (uint32_t)salt;
    for (int i = 0; i < n; i++) {
        z = z * 1664525u + 1013904223u;
        v[(size_t)i] = ((float)(z >> 8) / 16777216.0f - 0.5f) * (1.0f + (float)(i % 7));
    }
    return v;
}

static void upload(float* d, const std::vector<float>& h) {
    CUDA_CHECK(cudaMemcpy(d, h.data(), h.size() * sizeof(float), cudaMemcpyHostToDevice));
}

// the same bits on every rank?
static int same_on_all_ranks(const void* p, size_t bytes) {
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < bytes; i++) h = (h ^ ((const uint8_t*)p)[i]) * 1099511628211ull;
    uint64_t lo = 0, hi = 0;
    MPI_Allreduce(&h, &lo, 1, MPI_UINT64_T, MPI_MIN, MPI_COMM_WORLD);
    MPI_Allreduce(&h, &hi, 1, MPI_UINT64_T, MPI_MAX, MPI_COMM_WORLD);
    return lo == hi;
}

static ncclComm_t world_comm(void) {
    ncclUniqueId id;
    if (world_rank == 0) ncclGetUniqueId(&id);
    MPI_Bcast(&id, sizeof(id), MPI_BYTE, 0, MPI_COMM_WORLD);
    ncclComm_t comm = NULL;
    ncclResult_t r = ncclCommInitRank(&comm, world_size, id, world_rank);
    check_true("ncclCommInitRank over the world (id broadcast over MPI)", r == ncclSuccess);
    return comm;
}

static void test_nccl_collectives(ncclComm_t comm, cudaStream_t s) {
    const int n = 1000, part = 37, p = world_size;
    char what[200];
    std::vector<float> mine = rank_data(world_rank, n, 1);
    float *d_send = device_floats(n, 0.0f), *d_recv = device_floats(n * p, 0.0f);
    upload(d_send, mine);

    // all-gather: rank k's values at k * n, exactly as MPI_Allgather
    NCCL_CHECK_SHIM(ncclAllGather(d_send, d_recv, n, ncclFloat, comm, s));
    CUDA_CHECK(cudaStreamSynchronize(s));
    std::vector<float> want((size_t)n * p), got = host_floats(d_recv, n * p);
    MPI_Allgather(mine.data(), n, MPI_FLOAT, want.data(), n, MPI_FLOAT, MPI_COMM_WORLD);
    snprintf(what, sizeof(what), "ncclAllGather float (%d ranks) equals MPI_Allgather", p);
    allclose_report(what, got.data(), want.data(), (long)n * p, 0.0, 0.0);
    // in place: this rank's part already sits at rank * n
    upload(d_recv, std::vector<float>((size_t)n * p, -1.0f));
    CUDA_CHECK(cudaMemcpy(d_recv + (size_t)world_rank * n, d_send, n * sizeof(float), cudaMemcpyDeviceToDevice));
    NCCL_CHECK_SHIM(ncclAllGather(d_recv + (size_t)world_rank * n, d_recv, n, ncclFloat, comm, 0));
    got = host_floats(d_recv, n * p);
    allclose_report("ncclAllGather in place (legacy stream, read by a blocking cudaMemcpy)", got.data(), want.data(), (long)n * p, 0.0, 0.0);

    // all-reduce float: summed in rank order; MPI may add in another order beyond 2 ranks: a few
    // roundings of sums up to ~15 (atol 1e-5, rtol 1e-6); 2 ranks give the same bits
    NCCL_CHECK_SHIM(ncclAllReduce(d_send, d_recv, n, ncclFloat, ncclSum, comm, s));
    CUDA_CHECK(cudaStreamSynchronize(s));
    got = host_floats(d_recv, n);
    std::vector<float> sum((size_t)n);
    MPI_Allreduce(mine.data(), sum.data(), n, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
    snprintf(what, sizeof(what), "ncclAllReduce float sum (%d ranks) equals MPI_Allreduce", p);
    allclose_report(what, got.data(), sum.data(), n, 1e-5, 1e-6);
    check_true("ncclAllReduce float: the same bits on every rank", same_on_all_ranks(got.data(), n * sizeof(float)));
    NCCL_CHECK_SHIM(ncclAllReduce(d_send, d_send, n, ncclFloat, ncclSum, comm, s)); // in place
    CUDA_CHECK(cudaStreamSynchronize(s));
    std::vector<float> inplace = host_floats(d_send, n);
    check_true("ncclAllReduce float in place: the same bits as out of place", memcmp(inplace.data(), got.data(), n * sizeof(float)) == 0);

    // all-reduce double
    std::vector<double> mine_d((size_t)n), sum_d((size_t)n), got_d((size_t)n);
    for (int i = 0; i < n; i++) mine_d[(size_t)i] = (double)mine[(size_t)i] / 3.0;
    double* dd = NULL;
    CUDA_CHECK(cudaMalloc((void**)&dd, n * sizeof(double)));
    CUDA_CHECK(cudaMemcpy(dd, mine_d.data(), n * sizeof(double), cudaMemcpyHostToDevice));
    NCCL_CHECK_SHIM(ncclAllReduce(dd, dd, n, ncclDouble, ncclSum, comm, s));
    CUDA_CHECK(cudaStreamSynchronize(s));
    CUDA_CHECK(cudaMemcpy(got_d.data(), dd, n * sizeof(double), cudaMemcpyDeviceToHost));
    MPI_Allreduce(mine_d.data(), sum_d.data(), n, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD);
    snprintf(what, sizeof(what), "ncclAllReduce double sum (%d ranks) equals MPI_Allreduce", p);
    allclose_report(what, got_d.data(), sum_d.data(), n, 1e-14, 1e-14);

    // reduce-scatter float: part k of the sum to rank k
    std::vector<float> full = rank_data(world_rank, part * p, 2), rs((size_t)part), want_rs((size_t)part);
    float* d_full = device_floats(part * p, 0.0f);
    upload(d_full, full);
    NCCL_CHECK_SHIM(ncclReduceScatter(d_full, d_recv, part, ncclFloat, ncclSum, comm, s));
    CUDA_CHECK(cudaStreamSynchronize(s));
    rs = host_floats(d_recv, part);
    MPI_Reduce_scatter_block(full.data(), want_rs.data(), part, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
    snprintf(what, sizeof(what), "ncclReduceScatter float sum (%d ranks) equals MPI_Reduce_scatter_block", p);
    allclose_report(what, rs.data(), want_rs.data(), part, 1e-5, 1e-6);

    CUDA_CHECK(cudaFree(dd));
    CUDA_CHECK(cudaFree(d_full));
    CUDA_CHECK(cudaFree(d_send));
    CUDA_CHECK(cudaFree(d_recv));
}

// each rank sends its block to the next and receives the previous rank's: inside one group
static void test_nccl_ring(ncclComm_t comm, cudaStream_t comm_s, cudaStream_t compute_s) {
    const int n = 100, p = world_size, next = (world_rank + 1) % p, prev = (world_rank + p - 1) % p;
    float *d_send = device_floats(n, 0.0f), *d_recv = device_floats(n, 0.0f), *d_out = device_floats(n, 0.0f);
    upload(d_send, rank_data(world_rank, n, 3));
    std::vector<float> from_prev = rank_data(prev, n, 3), plus_one((size_t)n);
    for (int i = 0; i < n; i++) plus_one[(size_t)i] = from_prev[(size_t)i] + 1.0f;

    NCCL_CHECK_SHIM(ncclGroupStart());
    NCCL_CHECK_SHIM(ncclSend(d_send, n, ncclFloat, next, comm, comm_s));
    NCCL_CHECK_SHIM(ncclRecv(d_recv, n, ncclFloat, prev, comm, comm_s));
    NCCL_CHECK_SHIM(ncclGroupEnd());
    CUDA_CHECK(cudaStreamSynchronize(comm_s));
    std::vector<float> got = host_floats(d_recv, n);
    allclose_report("ring send/recv inside ncclGroupStart/End completes with the previous rank's block", got.data(),
                    from_prev.data(), n, 0.0, 0.0);

    // the compute stream uses the received block after waiting on the communication stream's event
    cudaEvent_t arrived;
    CUDA_CHECK(cudaEventCreateWithFlags(&arrived, cudaEventDisableTiming));
    for (int with_wait = 1; with_wait >= 0; with_wait--) {
        upload(d_recv, std::vector<float>((size_t)n, 0.0f));
        NCCL_CHECK_SHIM(ncclGroupStart());
        NCCL_CHECK_SHIM(ncclSend(d_send, n, ncclFloat, next, comm, comm_s));
        NCCL_CHECK_SHIM(ncclRecv(d_recv, n, ncclFloat, prev, comm, comm_s));
        NCCL_CHECK_SHIM(ncclGroupEnd());
        CUDA_CHECK(cudaEventRecord(arrived, comm_s));
        if (with_wait) CUDA_CHECK(cudaStreamWaitEvent(compute_s, arrived, 0));
        MOSAIC_LAUNCH(add_kernel, 2, 64, 0, compute_s, d_out, (const float*)d_recv, 1.0f, n);
        CUDA_CHECK(cudaStreamSynchronize(compute_s));
        got = host_floats(d_out, n);
        long right = 0;
        for (int i = 0; i < n; i++) right += got[(size_t)i] == plus_one[(size_t)i];
        if (with_wait)
            check_true("compute stream waits on the ring's event: uses the received block", right == n);
        else
            check_true("the same without cudaStreamWaitEvent: uses the block before it arrived (wrong)", right < n);
        CUDA_CHECK(cudaDeviceSynchronize()); // the group runs here if nothing needed it
    }
    CUDA_CHECK(cudaEventDestroy(arrived));
    CUDA_CHECK(cudaFree(d_send));
    CUDA_CHECK(cudaFree(d_recv));
    CUDA_CHECK(cudaFree(d_out));
}

// the same ring with send and receive as separate calls outside a group: each rank's send waits
// for a receive its peer queued behind its own send, as on GPUs. The shim's timeout turns that
// into a failed communicator (not a hang); ncclCommAbort drops the work
static void test_nccl_ring_outside_group(cudaStream_t s) {
    const int n = 16, p = world_size, next = (world_rank + 1) % p, prev = (world_rank + p - 1) % p;
    setenv("MOSAIC_SHIM_NCCL_TIMEOUT", "2", 1);
    ncclComm_t comm = world_comm();
    unsetenv("MOSAIC_SHIM_NCCL_TIMEOUT");
    float *d_send = device_floats(n, 1.0f), *d_recv = device_floats(n, 0.0f);
    NCCL_CHECK_SHIM(ncclSend(d_send, n, ncclFloat, next, comm, s));
    NCCL_CHECK_SHIM(ncclRecv(d_recv, n, ncclFloat, prev, comm, s));
    ncclResult_t before = ncclInProgress;
    ncclCommGetAsyncError(comm, &before);
    auto t0 = std::chrono::steady_clock::now();
    fprintf(stderr, "    (the next 'nccl shim:' and 'cuda shim:' lines are expected)\n");
    cudaError_t e = cudaStreamSynchronize(s);
    double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    ncclResult_t after = ncclSuccess;
    ncclCommGetAsyncError(comm, &after);
    char what[200];
    snprintf(what, sizeof(what), "ring send then recv outside a group: deadlock detected after %.1f s (timeout 2 s), "
             "cudaStreamSynchronize fails", seconds);
    check_true(what, e == cudaErrorLaunchTimeout && seconds < 30.0);
    check_true("ncclCommGetAsyncError: ncclSuccess before, ncclRemoteError after", before == ncclSuccess && after == ncclRemoteError);
    cudaGetLastError();
    check_true("ncclCommAbort drops the communicator's work", ncclCommAbort(comm) == ncclSuccess && shim_pending_work() == 0);
    MOSAIC_LAUNCH(fill_kernel, 1, 64, 0, s, d_recv, 4.0f, n);
    check_true("the stream runs later work after the abort",
               cudaStreamSynchronize(s) == cudaSuccess && all_equal(host_floats(d_recv, n), 4.0f));
    MPI_Barrier(MPI_COMM_WORLD); // every rank is past its failed send before the next test
    CUDA_CHECK(cudaFree(d_send));
    CUDA_CHECK(cudaFree(d_recv));
}

// communicators of part of the world: made without any MPI call by the ranks outside them
static void test_nccl_subsets(cudaStream_t s) {
    const int n = 10, p = world_size;
    float* d = device_floats(n * p, 0.0f);
    // alone: no broadcast, no MPI
    ncclUniqueId id;
    ncclGetUniqueId(&id);
    ncclComm_t alone = NULL;
    check_true("a communicator of one rank", ncclCommInitRank(&alone, 1, id, 0) == ncclSuccess);
    upload(d, rank_data(world_rank, n, 4));
    NCCL_CHECK_SHIM(ncclAllReduce(d, d + n * (p - 1), n, ncclFloat, ncclSum, alone, s));
    CUDA_CHECK(cudaStreamSynchronize(s));
    std::vector<float> want = rank_data(world_rank, n, 4), got = host_floats(d + n * (p - 1), n);
    allclose_report("ncclAllReduce over one rank is a copy", got.data(), want.data(), n, 0.0, 0.0);
    NCCL_CHECK_SHIM(ncclCommDestroy(alone));


    // the even world ranks only; the odd ones take part in the id's broadcast and nothing else
    if (world_rank == 0) ncclGetUniqueId(&id);
    MPI_Bcast(&id, sizeof(id), MPI_BYTE, 0, MPI_COMM_WORLD);
    if (world_rank % 2 == 0) {
        ncclComm_t even = NULL;
        int members = (p + 1) / 2;
        check_true("a communicator of the even world ranks", ncclCommInitRank(&even, members, id, world_rank / 2) == ncclSuccess);
        float* g = device_floats(n * members, 0.0f);
        upload(d, rank_data(world_rank, n, 6));
        NCCL_CHECK_SHIM(ncclAllGather(d, g, n, ncclFloat, even, s));
        CUDA_CHECK(cudaStreamSynchronize(s));
        std::vector<float> all = host_floats(g, n * members);
        int ok = 1;
        for (int k = 0; k < members; k++) {
            std::vector<float> w = rank_data(2 * k, n, 6);
            ok &= memcmp(all.data() + (size_t)k * n, w.data(), n * sizeof(float)) == 0;
        }
        check_true("... its all-gather has world rank 2k's block at k", ok);
        NCCL_CHECK_SHIM(ncclCommDestroy(even));
        CUDA_CHECK(cudaFree(g));
    }
    CUDA_CHECK(cudaFree(d));
    MPI_Barrier(MPI_COMM_WORLD);
}

// the id's creator is the last world rank, and NCCL rank k is world rank p - 1 - k
static void test_nccl_reversed_order(cudaStream_t s) {
    const int n = 12, p = world_size;
    ncclUniqueId id;
    if (world_rank == p - 1) ncclGetUniqueId(&id);
    MPI_Bcast(&id, sizeof(id), MPI_BYTE, p - 1, MPI_COMM_WORLD);
    ncclComm_t reversed = NULL;
    if (ncclCommInitRank(&reversed, p, id, p - 1 - world_rank) != ncclSuccess) {
        check_true("reversed communicator", 0);
        return;
    }
    float *d = device_floats(n, 0.0f), *g = device_floats(n * p, 0.0f);
    upload(d, rank_data(world_rank, n, 7));
    NCCL_CHECK_SHIM(ncclAllGather(d, g, n, ncclFloat, reversed, s));
    CUDA_CHECK(cudaStreamSynchronize(s));
    std::vector<float> all = host_floats(g, n * p);
    int ok = 1;
    for (int k = 0; k < p; k++) {
        std::vector<float> w = rank_data(p - 1 - k, n, 7);
        ok &= memcmp(all.data() + (size_t)k * n, w.data(), n * sizeof(float)) == 0;
    }
    check_true("reversed communicator: all-gather has world rank p-1-k's block at k", ok);
    NCCL_CHECK_SHIM(ncclCommDestroy(reversed));
    CUDA_CHECK(cudaFree(d));
    CUDA_CHECK(cudaFree(g));
}

// two ranks of one host on one GPU: NCCL refuses the communicator, so does the shim
static void test_nccl_duplicate_device(void) {
    if (world_size < 2) return;
    CUDA_CHECK(cudaSetDevice(0));
    ncclUniqueId id;
    if (world_rank == 0) ncclGetUniqueId(&id);
    MPI_Bcast(&id, sizeof(id), MPI_BYTE, 0, MPI_COMM_WORLD);
    if (world_rank == 0) fprintf(stderr, "    (the next 'nccl shim:' lines are expected)\n");
    ncclComm_t comm = NULL;
    ncclResult_t r = ncclCommInitRank(&comm, world_size, id, world_rank);
    check_true("every rank on device 0: ncclCommInitRank fails with ncclInvalidUsage on every rank",
               r == ncclInvalidUsage && comm == NULL);
    CUDA_CHECK(cudaSetDevice(world_rank));
    MPI_Barrier(MPI_COMM_WORLD);
}

static void test_nccl(void) {
    char devices[16];
    snprintf(devices, sizeof(devices), "%d", world_size);
    setenv("MOSAIC_SHIM_DEVICES", devices, 1); // one GPU per rank, picked from the rank
    CUDA_CHECK(cudaSetDevice(world_rank));
    ncclComm_t comm = world_comm();
    cudaStream_t comm_s = new_stream(cudaStreamNonBlocking), compute_s = new_stream(cudaStreamNonBlocking);
    auto t0 = std::chrono::steady_clock::now();
    test_nccl_collectives(comm, comm_s);
    test_nccl_ring(comm, comm_s, compute_s);
    test_nccl_subsets(comm_s);
    test_nccl_reversed_order(comm_s);
    test_nccl_duplicate_device();
    double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    if (world_rank == 0) printf("      NCCL tests on %d rank(s) took %.0f ms (before the 2 s deadlock test)\n", world_size, ms);
    test_nccl_ring_outside_group(comm_s);
    check_true("ncclCommDestroy of the world communicator", ncclCommDestroy(comm) == ncclSuccess);
    CUDA_CHECK(cudaStreamDestroy(comm_s));
    CUDA_CHECK(cudaStreamDestroy(compute_s));
    CUDA_CHECK(cudaSetDevice(0));
    unsetenv("MOSAIC_SHIM_DEVICES");
}

int main(int argc, char** argv) {
    int nccl_only = argc > 1 && strcmp(argv[1], "--nccl-only") == 0;
    setvbuf(stdout, NULL, _IOLBF, 0); // checks and the shims' stderr lines in order
    auto t0 = std::chrono::steady_clock::now();
    if (!nccl_only) { // before MPI_Init: the death tests fork
        test_event_join();
        test_default_stream_semantics();
        test_async_host_copies();
        test_queries_and_events();
        test_devices();
        test_shared_memory_opt_in();
        test_runtime_deaths();
    }
    double runtime_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    int provided = 0;
    MPI_Init_thread(&argc, &argv, MPI_THREAD_FUNNELED, &provided);
    MPI_Comm_rank(MPI_COMM_WORLD, &world_rank);
    MPI_Comm_size(MPI_COMM_WORLD, &world_size);
    tests_quiet_ok = world_rank > 0;
    if (!nccl_only) printf("      runtime tests took %.0f ms\n", runtime_ms);
    test_nccl();
    int status = tests_finish();
    int worst = 0;
    MPI_Allreduce(&status, &worst, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
    MPI_Finalize();
    return worst;
}
