// Self-test of the SIMT emulation (test/simt_emulator.h): barriers, shuffles, shared-memory
// poisoning, schedules that expose a missing barrier, the runtime shim, and death tests for every
// misuse it promises to catch. Built only for the CPU (emu_, asan_, tsan_ builds; see Makefile):
//   clang++ -std=c++17 -O1 -g -DMOSAIC_SIMT_EMULATION -I/usr/local/cuda/include -x c++ test/test_simt_emulator.cu
#include "cuda_test_util.h"
#include <fcntl.h>
#include <sys/wait.h>
#include <unistd.h>
#include <chrono>

#ifndef MOSAIC_SIMT_EMULATION
#error "test_simt_emulator.cu tests the emulation: build it with -DMOSAIC_SIMT_EMULATION"
#endif
static_assert((int)SIMT_MAX_DEFAULT_SHARED == (int)MOSAIC_MAX_SHARED_BYTES, "the emulator's shared-memory limit");

#if defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define TEST_TSAN 1
#endif
#if __has_feature(address_sanitizer)
#define TEST_ASAN 1
#endif
#endif
#ifdef TEST_TSAN
// the death tests' children exit through TSan's finaliser, which otherwise sleeps a second each
extern "C" const char* __tsan_default_options(void) { return "atexit_sleep_ms=0"; }
#endif

// ----------------------------------------------------------------------------------------------
// kernels

// block sum: a shuffle reduction per warp, the warp sums through shared memory, one more shuffle
__device__ __forceinline__ float warp_sum(float v) {
    for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_down_sync(0xffffffffu, v, offset);
    return __shfl_sync(0xffffffffu, v, 0);
}

template <int THREADS>
__global__ void block_sum_kernel(float* out, const float* x, long n) { // out (gridDim.x*gridDim.y), x (n)
    __shared__ float warp_sums[THREADS / 32];
    int t = threadIdx.x + threadIdx.y * blockDim.x;
    int block = blockIdx.x + blockIdx.y * gridDim.x;
    long i = (long)block * THREADS + t;
    float v = i < n ? x[i] : 0.0f;
    v = warp_sum(v);
    if ((t & 31) == 0) warp_sums[t >> 5] = v;
    __syncthreads();
    if (t < 32) {
        float w = t < THREADS / 32 ? warp_sums[t] : 0.0f;
        w = warp_sum(w);
        if (t == 0) out[block] = w;
    }
}

// every shuffle variant and width for one value type; out (nvariants, 32) per block
template <typename T>
__global__ void shuffle_kernel(T* out, int src_shift) { // out (gridDim.x * warps, 64, 32)
    int lane = threadIdx.x & 31, warp = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    T v = (T)(lane * 7 + 3 + warp * 1000);
    int k = 0;
    long base = (long)warp * 64 * 32;
    for (int width = 1; width <= 32; width <<= 1) {
        out[base + (k++) * 32 + lane] = __shfl_sync(0xffffffffu, v, (lane * 5 + src_shift) % 37, width);
        out[base + (k++) * 32 + lane] = __shfl_up_sync(0xffffffffu, v, 3, width);
        out[base + (k++) * 32 + lane] = __shfl_down_sync(0xffffffffu, v, 5, width);
        out[base + (k++) * 32 + lane] = __shfl_xor_sync(0xffffffffu, v, 6, width);
        out[base + (k++) * 32 + lane] = __shfl_xor_sync(0xffffffffu, v, 17, width);
    }
    out[base + (k++) * 32 + lane] = __shfl_down_sync(0xffffffffu, v, 1); // default width
    out[base + (k++) * 32 + lane] = __shfl_up_sync(0xffffffffu, v, 31);
    out[base + (k++) * 32 + lane] = __shfl_sync(0xffffffffu, v, 33);
    out[base + (k++) * 32 + lane] = (T)__ballot_sync(0xffffffffu, lane % 3 == 0);
}
enum { SHUFFLE_VARIANTS = 6 * 5 + 4 };

// reads shared memory before writing it: must see NaN in every block (static, template and dynamic)
template <int N>
__global__ void read_before_write_kernel(float* out) { // out (gridDim.x, 3, blockDim.x)
    __shared__ float s_static[N];
    MOSAIC_DYNAMIC_SHARED(float, s_dynamic);
    int t = threadIdx.x;
    long o = (long)blockIdx.x * 3 * blockDim.x;
    out[o + t] = s_static[t];
    out[o + blockDim.x + t] = s_dynamic[t];
    __syncthreads();
    s_static[t] = 1.0f; // the next block must not see this
    s_dynamic[t] = 2.0f;
    __syncthreads();
    out[o + 2 * blockDim.x + t] = s_static[(t + 1) % N] + s_dynamic[(t + 1) % blockDim.x];
}

// neighbour exchange through shared memory; WITH_BARRIER = 0 drops the barrier (a read-after-write race)
template <int WITH_BARRIER>
__global__ void neighbour_kernel(float* out) { // out (gridDim.x * blockDim.x)
    __shared__ float s[256];
    int t = threadIdx.x, n = blockDim.x;
    s[t] = (float)(t + 1);
    if (WITH_BARRIER) __syncthreads();
    out[blockIdx.x * n + t] = s[(t + 1) % n];
}

// write-after-read race: the second write to s needs a barrier after the neighbour's read
template <int WITH_BARRIER>
__global__ void overwrite_kernel(float* out) { // out (gridDim.x * blockDim.x)
    __shared__ float s[256];
    int t = threadIdx.x, n = blockDim.x;
    s[t] = (float)(t + 1);
    __syncthreads();
    float v = s[(t + 1) % n];
    if (WITH_BARRIER) __syncthreads();
    s[t] = 10.0f * v;
    __syncthreads();
    out[blockIdx.x * n + t] = s[(t + 2) % n];
}

// lanes exchange through shared memory; WITH_SYNCWARP = 0 drops the __syncwarp between write and read
template <int WITH_SYNCWARP>
__global__ void warp_exchange_kernel(float* out) { // out (gridDim.x * blockDim.x)
    __shared__ float s[128];
    int t = threadIdx.x, lane = t & 31;
    s[t] = (float)(t * 3 + 1);
    if (WITH_SYNCWARP) __syncwarp();
    out[blockIdx.x * blockDim.x + t] = s[t - lane + (31 - lane)];
}

__global__ void atomic_kernel(int* count, unsigned* ucount, float* fsum) {
    atomicAdd(count, 1);
    atomicAdd(ucount, 2u);
    atomicAdd(fsum, 0.5f); // exact in float for these counts
}

__global__ void many_barriers_kernel(float* out, int rounds) { // out (gridDim.x * blockDim.x)
    __shared__ float s[1024];
    int t = threadIdx.x, n = blockDim.x;
    float acc = 0.0f;
    s[t] = (float)t;
    for (int r = 0; r < rounds; r++) {
        __syncthreads();
        acc += s[(t + r + 1) % n];
    }
    out[blockIdx.x * n + t] = acc;
}

// 3-D block and grid: every thread writes its coordinates once
__global__ void coordinates_kernel(int* out) { // out (blocks * threads, 6)
    long block = blockIdx.x + (long)gridDim.x * (blockIdx.y + (long)gridDim.y * blockIdx.z);
    long thread = threadIdx.x + (long)blockDim.x * (threadIdx.y + (long)blockDim.y * threadIdx.z);
    long i = (block * blockDim.x * blockDim.y * blockDim.z + thread) * 6;
    out[i + 0] = threadIdx.x, out[i + 1] = threadIdx.y, out[i + 2] = threadIdx.z;
    out[i + 3] = blockIdx.x, out[i + 4] = blockIdx.y, out[i + 5] = blockIdx.z;
}

// misuse, one kernel per death test
__global__ void early_exit_kernel(float* out) {
    if (threadIdx.x == 5) return; // returns before the barrier the others reach
    __syncthreads();
    out[threadIdx.x] = 1.0f;
}
__global__ void branch_barrier_kernel(float* out) {
    if (threadIdx.x < 32) __syncthreads(); // only some threads
    out[threadIdx.x] = 1.0f;
}
__global__ void divergent_barrier_kernel(float* out) {
    if (threadIdx.x < 32) {
        __syncthreads();
        out[threadIdx.x] = 1.0f;
    } else {
        __syncthreads();
        out[threadIdx.x] = 2.0f;
    }
}
__global__ void partial_shuffle_kernel(float* out) {
    float v = (float)threadIdx.x;
    if ((threadIdx.x & 31) < 16) v = __shfl_xor_sync(0xffffffffu, v, 1); // lanes 16..31 never arrive
    out[threadIdx.x] = v;
}
__global__ void shuffle_deadlock_kernel(float* out) {
    float v = (float)threadIdx.x;
    if (threadIdx.x < 16) v = __shfl_xor_sync(0xffffffffu, v, 1); // lanes 16..31 wait at the barrier instead
    else __syncthreads();
    out[threadIdx.x] = v;
}
__global__ void mixed_shuffle_kernel(float* out) {
    float v = (float)threadIdx.x;
    if (threadIdx.x & 1) v = __shfl_xor_sync(0xffffffffu, v, 1); // odd lanes one operation,
    else v = __shfl_down_sync(0xffffffffu, v, 1);                 // even lanes another
    out[threadIdx.x] = v;
}
__global__ void plain_kernel(float* out, const float* in) { out[threadIdx.x] = in ? in[threadIdx.x] : 0.0f; }
__global__ void dynamic_overrun_kernel(float* out, int n) {
    MOSAIC_DYNAMIC_SHARED(float, s);
    s[threadIdx.x] = 1.0f;
    __syncthreads();
    if (threadIdx.x == 0) out[0] = s[n]; // one past the end
}
__global__ void static_overrun_kernel(float* out, int n) {
    __shared__ float s[32];
    s[threadIdx.x % 32] = 1.0f;
    __syncthreads();
    if (threadIdx.x == 0) out[0] = s[n];
}

// ----------------------------------------------------------------------------------------------
// helpers


static std::vector<float> host_range(long n, float scale) {
    std::vector<float> v((size_t)n);
    for (long i = 0; i < n; i++) v[i] = scale * (float)((i * 37) % 101 - 50);
    return v;
}

// ----------------------------------------------------------------------------------------------
// tests

static void test_block_sum(void) {
    const int THREADS = 128;
    const long n = 128 * 37 - 13; // the last block is partial
    const dim3 grid(37, 1), block(32, 4);
    std::vector<float> x = host_range(n, 0.25f);
    std::vector<float> want(37, 0.0f);
    for (long i = 0; i < n; i++) want[i / THREADS] += x[i]; // integers * 0.25: exact in float
    float* d_x = test_device_upload(x.data(), n);
    float* d_out = NULL;
    CUDA_CHECK(cudaMalloc((void**)&d_out, 37 * sizeof(float)));
    std::vector<float> first;
    for (auto s : test_schedules()) {
        test_use_schedule(s);
        MOSAIC_LAUNCH(block_sum_kernel<THREADS>, grid, block, 0, mosaic_stream, d_out, d_x, n);
        std::vector<float> got = test_device_download(d_out, 37);
        char what[128];
        snprintf(what, sizeof(what), "block sum, shuffles + __syncthreads (%s)", s.name);
        allclose_report(what, got.data(), want.data(), 37, 0.0, 0.0);
        if (first.empty()) first = got;
        else check_bit_identical(what, got.data(), first.data(), 37);
    }
    CUDA_CHECK(cudaFree(d_x));
    CUDA_CHECK(cudaFree(d_out));
}

// the documented CUDA semantics, written independently of the emulator's PTX-style formula
static int shuffle_source(int variant, int lane, int src_shift) {
    if (variant < 30) {
        int width = 1 << (variant / 5), kind = variant % 5;
        int start = lane / width * width;
        switch (kind) {
        case 0: return start + ((lane * 5 + src_shift) % 37) % width;
        case 1: return lane - start >= 3 ? lane - 3 : lane;
        case 2: return lane - start + 5 < width ? lane + 5 : lane;
        case 3: return (lane ^ 6) < start + width ? (lane ^ 6) : lane; // later groups: own value
        case 4: return (lane ^ 17) < start + width ? (lane ^ 17) : lane;
        }
    }
    if (variant == 30) return lane + 1 < 32 ? lane + 1 : lane;
    if (variant == 31) return lane >= 31 ? lane - 31 : lane;
    if (variant == 32) return 1;
    return -1;
}

template <typename T>
static void test_shuffles(const char* type) {
    const int blocks = 3, threads = 64, src_shift = 3, warps = blocks * threads / 32;
    long n = (long)warps * 64 * 32;
    T* d_out = NULL;
    CUDA_CHECK(cudaMalloc((void**)&d_out, n * sizeof(T)));
    for (auto s : test_schedules()) {
        test_use_schedule(s);
        MOSAIC_LAUNCH(shuffle_kernel<T>, blocks, threads, 0, mosaic_stream, d_out, src_shift);
        std::vector<T> got((size_t)n);
        CUDA_CHECK(cudaMemcpy(got.data(), d_out, n * sizeof(T), cudaMemcpyDeviceToHost));
        long bad = 0;
        for (int b = 0; b < warps; b++)
            for (int v = 0; v < SHUFFLE_VARIANTS; v++)
                for (int lane = 0; lane < 32; lane++) {
                    T want;
                    if (v == 33) {
                        unsigned ballot = 0;
                        for (int l = 0; l < 32; l++) ballot |= (l % 3 == 0 ? 1u : 0u) << l;
                        want = (T)ballot;
                    } else {
                        want = (T)(shuffle_source(v, lane, src_shift) * 7 + 3 + b * 1000);
                    }
                    if (got[(size_t)b * 64 * 32 + v * 32 + lane] != want) bad++;
                }
        char what[128];
        snprintf(what, sizeof(what), "shuffles of every kind and width, %s (%s): %ld wrong", type, s.name, bad);
        check_true(what, bad == 0);
    }
    CUDA_CHECK(cudaFree(d_out));
}

static void test_poisoned_shared(void) {
    const int blocks = 4, threads = 64;
    long n = (long)blocks * 3 * threads;
    float* d_out = NULL;
    CUDA_CHECK(cudaMalloc((void**)&d_out, n * sizeof(float)));
    for (auto s : test_schedules()) {
        test_use_schedule(s);
        MOSAIC_LAUNCH(read_before_write_kernel<64>, blocks, threads, threads * sizeof(float), mosaic_stream, d_out);
        std::vector<float> got = test_device_download(d_out, n);
        int nan_static = 1, nan_dynamic = 1, written = 1;
        for (int b = 0; b < blocks; b++)
            for (int t = 0; t < threads; t++) {
                nan_static &= got[(size_t)b * 3 * threads + t] != got[(size_t)b * 3 * threads + t];
                nan_dynamic &= got[(size_t)b * 3 * threads + threads + t] != got[(size_t)b * 3 * threads + threads + t];
                written &= got[(size_t)b * 3 * threads + 2 * threads + t] == 3.0f;
            }
        char what[160];
        snprintf(what, sizeof(what), "static __shared__ of a template kernel reads NaN before a write, every block (%s)", s.name);
        check_true(what, nan_static);
        snprintf(what, sizeof(what), "dynamic shared memory reads NaN before a write, every block (%s)", s.name);
        check_true(what, nan_dynamic);
        snprintf(what, sizeof(what), "shared memory written then read back (%s)", s.name);
        check_true(what, written);
    }
    // fresh device memory is NaN too: a kernel that reads what nobody wrote shows it
    float* d_fresh = NULL;
    CUDA_CHECK(cudaMalloc((void**)&d_fresh, 16 * sizeof(float)));
    std::vector<float> fresh = test_device_download(d_fresh, 16);
    check_true("cudaMalloc'd memory reads NaN until written", fresh[0] != fresh[0] && fresh[15] != fresh[15]);
    CUDA_CHECK(cudaFree(d_fresh));
    CUDA_CHECK(cudaFree(d_out));
}

// run a kernel under every schedule; outputs[s] is its result under schedule s
template <typename Launch>
static std::vector<std::vector<float>> run_schedules(Launch launch, float* d_out, long n) {
    std::vector<std::vector<float>> outs;
    for (auto s : test_schedules()) {
        test_use_schedule(s);
        launch();
        outs.push_back(test_device_download(d_out, n));
    }
    return outs;
}

static int differ(const std::vector<float>& a, const std::vector<float>& b) {
    return memcmp(a.data(), b.data(), a.size() * sizeof(float)) != 0;
}

static void test_schedules_expose_races(void) {
    const int blocks = 3, threads = 96;
    long n = (long)blocks * threads;
    float* d_out = NULL;
    CUDA_CHECK(cudaMalloc((void**)&d_out, n * sizeof(float)));
    auto good = run_schedules([&] { MOSAIC_LAUNCH(neighbour_kernel<1>, blocks, threads, 0, mosaic_stream, d_out); }, d_out, n);
    int right = 1;
    for (long i = 0; i < n; i++) right &= good[0][i] == (float)((i % threads + 1) % threads + 1);
    check_true("neighbour exchange with its barrier: right answer", right);
    check_true("neighbour exchange with its barrier: identical under all schedules",
               !differ(good[0], good[1]) && !differ(good[0], good[2]));
    auto good2 = run_schedules([&] { MOSAIC_LAUNCH(overwrite_kernel<1>, blocks, threads, 0, mosaic_stream, d_out); }, d_out, n);
    check_true("overwrite after a barrier: identical under all schedules",
               !differ(good2[0], good2[1]) && !differ(good2[0], good2[2]));
    auto warp_good = run_schedules([&] { MOSAIC_LAUNCH(warp_exchange_kernel<1>, blocks, threads, 0, mosaic_stream, d_out); }, d_out, n);
    right = 1;
    for (long i = 0; i < n; i++) {
        long t = i % threads, lane = t % 32;
        right &= warp_good[0][i] == (float)((t - lane + 31 - lane) * 3 + 1);
    }
    check_true("lanes exchange through shared memory with __syncwarp: right answer", right);
    check_true("lanes exchange through shared memory with __syncwarp: identical under all schedules",
               !differ(warp_good[0], warp_good[1]) && !differ(warp_good[0], warp_good[2]));
#ifndef TEST_TSAN // TSan reports these races (tested below in a child process)
    auto warp_bad = run_schedules([&] { MOSAIC_LAUNCH(warp_exchange_kernel<0>, blocks, threads, 0, mosaic_stream, d_out); }, d_out, n);
    check_true("missing __syncwarp: forward and reverse schedules differ", differ(warp_bad[0], warp_bad[1]));
    auto bad = run_schedules([&] { MOSAIC_LAUNCH(neighbour_kernel<0>, blocks, threads, 0, mosaic_stream, d_out); }, d_out, n);
    check_true("missing __syncthreads (read after write): forward and reverse schedules differ", differ(bad[0], bad[1]));
    auto bad2 = run_schedules([&] { MOSAIC_LAUNCH(overwrite_kernel<0>, blocks, threads, 0, mosaic_stream, d_out); }, d_out, n);
    check_true("missing __syncthreads (write after read): forward and reverse schedules differ", differ(bad2[0], bad2[1]));
#endif
    CUDA_CHECK(cudaFree(d_out));
}

static void test_atomics_and_coordinates(void) {
    int* d_count = NULL;
    unsigned* d_ucount = NULL;
    float* d_fsum = NULL;
    CUDA_CHECK(cudaMalloc((void**)&d_count, sizeof(int)));
    CUDA_CHECK(cudaMalloc((void**)&d_ucount, sizeof(unsigned)));
    CUDA_CHECK(cudaMalloc((void**)&d_fsum, sizeof(float)));
    CUDA_CHECK(cudaMemset(d_count, 0, sizeof(int)));
    CUDA_CHECK(cudaMemset(d_ucount, 0, sizeof(unsigned)));
    CUDA_CHECK(cudaMemset(d_fsum, 0, sizeof(float)));
    MOSAIC_LAUNCH(atomic_kernel, dim3(5, 2), 64, 0, mosaic_stream, d_count, d_ucount, d_fsum);
    int count = 0;
    unsigned ucount = 0;
    float fsum = 0;
    CUDA_CHECK(cudaMemcpy(&count, d_count, sizeof(int), cudaMemcpyDeviceToHost));
    CUDA_CHECK(cudaMemcpy(&ucount, d_ucount, sizeof(unsigned), cudaMemcpyDeviceToHost));
    CUDA_CHECK(cudaMemcpy(&fsum, d_fsum, sizeof(float), cudaMemcpyDeviceToHost));
    check_true("atomicAdd int, unsigned, float over 640 threads", count == 640 && ucount == 1280 && fsum == 320.0f);
    CUDA_CHECK(cudaFree(d_count));
    CUDA_CHECK(cudaFree(d_ucount));
    CUDA_CHECK(cudaFree(d_fsum));

    const dim3 grid(3, 2, 2), block(8, 4, 2);
    long total = 12L * 64, n = total * 6;
    int* d_coords = NULL;
    CUDA_CHECK(cudaMalloc((void**)&d_coords, n * sizeof(int)));
    MOSAIC_LAUNCH(coordinates_kernel, grid, block, 0, mosaic_stream, d_coords);
    std::vector<int> coords((size_t)n);
    CUDA_CHECK(cudaMemcpy(coords.data(), d_coords, n * sizeof(int), cudaMemcpyDeviceToHost));
    int ok = 1;
    for (long i = 0; i < total; i++) {
        long b = i / 64, t = i % 64;
        int want[6] = {(int)(t % 8), (int)(t / 8 % 4), (int)(t / 32), (int)(b % 3), (int)(b / 3 % 2), (int)(b / 6)};
        for (int k = 0; k < 6; k++) ok &= coords[i * 6 + k] == want[k];
    }
    check_true("threadIdx/blockIdx of a 3-D block and grid", ok);
    CUDA_CHECK(cudaFree(d_coords));
}

static void test_runtime_shim(void) {
    int count = 0;
    check_true("cudaGetDeviceCount is 1", cudaGetDeviceCount(&count) == cudaSuccess && count == 1);
    float host[8] = {1, 2, 3, 4, 5, 6, 7, 8}, back[8] = {0};
    float *d_a = NULL, *d_b = NULL;
    CUDA_CHECK(cudaMalloc((void**)&d_a, sizeof(host)));
    CUDA_CHECK(cudaMalloc((void**)&d_b, sizeof(host)));
    CUDA_CHECK(cudaMemcpyAsync(d_a, host, sizeof(host), cudaMemcpyHostToDevice, mosaic_stream));
    CUDA_CHECK(cudaMemcpy(d_b, d_a, sizeof(host), cudaMemcpyDeviceToDevice));
    CUDA_CHECK(cudaMemsetAsync(d_a, 0, sizeof(host), mosaic_stream));
    CUDA_CHECK(cudaStreamSynchronize(mosaic_stream));
    CUDA_CHECK(cudaMemcpy(back, d_b, sizeof(host), cudaMemcpyDefault));
    check_true("cudaMemcpy host -> device -> device -> host round trip", memcmp(back, host, sizeof(host)) == 0);
    CUDA_CHECK(cudaMemcpy(back, d_a, sizeof(host), cudaMemcpyDeviceToHost));
    check_true("cudaMemsetAsync zeroes device memory", back[0] == 0.0f && back[7] == 0.0f);
    // misuse returns an error (and says why on stderr); cudaGetLastError reports it once
    fprintf(stderr, "    (the next three 'cuda shim:' lines are expected)\n");
    check_true("cudaFree of a host pointer fails", cudaFree(host) == cudaErrorInvalidValue);
    check_true("cudaGetLastError returns the error, then resets",
               cudaPeekAtLastError() == cudaErrorInvalidValue && cudaGetLastError() == cudaErrorInvalidValue &&
                   cudaGetLastError() == cudaSuccess);
    check_true("cudaMemcpy past the end of an allocation fails",
               cudaMemcpy(d_a, host, sizeof(host) + 4, cudaMemcpyHostToDevice) == cudaErrorInvalidValue);
    check_true("cudaMemcpy DeviceToHost with the arguments swapped fails",
               cudaMemcpy(d_a, back, sizeof(host), cudaMemcpyDeviceToHost) == cudaErrorInvalidValue);
    cudaGetLastError();
    size_t live = simt_device_allocation_count();
    CUDA_CHECK(cudaFree(d_a));
    CUDA_CHECK(cudaFree(d_b));
    check_true("cudaFree removes allocations from the registry", simt_device_allocation_count() == live - 2);
}

static void test_performance(void) {
    // the figure quoted in the issue: 64 blocks x 128 threads x 10 barriers
    float* d_out = NULL;
    CUDA_CHECK(cudaMalloc((void**)&d_out, 64 * 128 * sizeof(float)));
    simt_set_schedule(SIMT_FORWARD, 1);
    uint64_t switches0 = simt_state.switches;
    auto t0 = std::chrono::steady_clock::now();
    MOSAIC_LAUNCH(many_barriers_kernel, 64, 128, 0, mosaic_stream, d_out, 10);
    CUDA_CHECK(cudaDeviceSynchronize()); // the launch is queued until a synchronisation runs it
    double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    uint64_t switches = simt_state.switches - switches0;
    std::vector<float> got = test_device_download(d_out, 64 * 128);
    int ok = 1;
    for (int i = 0; i < 64 * 128; i++) {
        int t = i % 128;
        float want = 0;
        for (int r = 0; r < 10; r++) want += (float)((t + r + 1) % 128);
        ok &= got[i] == want;
    }
    check_true("64 blocks x 128 threads x 10 barriers: right answer", ok);
    printf("      took %.1f ms, %llu fiber switches (%.2f M switches/s)\n", ms, (unsigned long long)switches,
           switches / ms / 1000.0);
    CUDA_CHECK(cudaFree(d_out));
}

// ----------------------------------------------------------------------------------------------
// death tests: each runs in a child, which must die with the emulator's message

static float* death_buffer(void) {
    float* d = NULL;
    CUDA_CHECK(cudaMalloc((void**)&d, 4096 * sizeof(float)));
    return d;
}

static void test_death(void) {
    expect_death("a thread returns before a barrier the others reach",
                 [] { MOSAIC_LAUNCH(early_exit_kernel, 1, 64, 0, mosaic_stream, death_buffer()); },
                 "every thread of a block must reach every __syncthreads");
    expect_death("a thread returns before a barrier (reverse order)", [] {
        simt_set_schedule(SIMT_REVERSE, 2);
        MOSAIC_LAUNCH(early_exit_kernel, 1, 64, 0, mosaic_stream, death_buffer());
    }, "early_exit_kernel launched at");
    expect_death("a barrier inside a branch only some threads take",
                 [] { MOSAIC_LAUNCH(branch_barrier_kernel, 1, 64, 0, mosaic_stream, death_buffer()); },
                 "reached by only some threads");
    expect_death("divergent barriers (two __syncthreads lines)",
                 [] { MOSAIC_LAUNCH(divergent_barrier_kernel, 1, 64, 0, mosaic_stream, death_buffer()); },
                 "divergent __syncthreads");
    expect_death("a shuffle whose mask names lanes that never arrive",
                 [] { MOSAIC_LAUNCH(partial_shuffle_kernel, 1, 32, 0, mosaic_stream, death_buffer()); },
                 "__shfl_xor_sync");
    expect_death("lanes of a warp in different shuffle operations",
                 [] { MOSAIC_LAUNCH(mixed_shuffle_kernel, 1, 32, 0, mosaic_stream, death_buffer()); },
                 "warp lanes disagree");
    expect_death("lanes at a shuffle while the rest wait at __syncthreads (deadlock)",
                 [] { MOSAIC_LAUNCH(shuffle_deadlock_kernel, 1, 32, 0, mosaic_stream, death_buffer()); },
                 "deadlock");
    expect_death("a host pointer as a kernel argument", [] {
        static float host[64];
        MOSAIC_LAUNCH(plain_kernel, 1, 64, 0, mosaic_stream, death_buffer(), (const float*)host);
    }, "argument 1 of kernel plain_kernel launched at");
    expect_death("a block of 48 threads",
                 [] { MOSAIC_LAUNCH(plain_kernel, 1, 48, 0, mosaic_stream, death_buffer(), (const float*)NULL); },
                 "multiple of 32");
    expect_death("a block of 2048 threads",
                 [] { MOSAIC_LAUNCH(plain_kernel, 1, 2048, 0, mosaic_stream, death_buffer(), (const float*)NULL); },
                 "at most 1024 threads");
    expect_death("a grid with a zero dimension",
                 [] { MOSAIC_LAUNCH(plain_kernel, dim3(4, 0), 32, 0, mosaic_stream, death_buffer(), (const float*)NULL); },
                 "at least 1");
    expect_death("64 KB of dynamic shared memory",
                 [] { MOSAIC_LAUNCH(plain_kernel, 1, 32, 64 * 1024, mosaic_stream, death_buffer(), (const float*)NULL); },
                 "65536 bytes of dynamic shared memory");
    expect_death("cudaMemcpy HostToDevice into host memory", [] {
        static float a[16], b[16];
        CUDA_CHECK(cudaMemcpy(a, b, sizeof(a), cudaMemcpyHostToDevice));
    }, "cudaMemcpy(cudaMemcpyHostToDevice): the destination");
    expect_death("cudaMemcpy DeviceToHost from host memory", [] {
        static float a[16], b[16];
        CUDA_CHECK(cudaMemcpy(a, b, sizeof(a), cudaMemcpyDeviceToHost));
    }, "cudaMemcpy(cudaMemcpyDeviceToHost): the source");
    expect_death("simt_check_device_range on a host range", [] {
        static float a[16];
        simt_check_device_range(a, sizeof(a), "cublasSgemm A");
    }, "cublasSgemm A");
    expect_death("simt_check_device_range past the end of an allocation", [] {
        float* d = death_buffer();
        simt_check_device_range(d + 4000, 200 * sizeof(float), "cublasSgemm C");
    }, "overruns its device allocation");
    expect_death("static shared memory indexed out of bounds (-fsanitize=bounds)",
                 [] { MOSAIC_LAUNCH(static_overrun_kernel, 1, 32, 0, mosaic_stream, death_buffer(), 32); },
                 "out of bounds");
#ifdef TEST_ASAN
    expect_death("dynamic shared memory read one past its launch size (ASan)",
                 [] { MOSAIC_LAUNCH(dynamic_overrun_kernel, 1, 32, 32 * sizeof(float), mosaic_stream, death_buffer(), 32); },
                 "heap-buffer-overflow");
    expect_death("device memory read one past its allocation (ASan)", [] {
        float* d = NULL;
        CUDA_CHECK(cudaMalloc((void**)&d, 31 * sizeof(float)));
        MOSAIC_LAUNCH(plain_kernel, 1, 32, 0, mosaic_stream, death_buffer(), (const float*)d);
    }, "heap-buffer-overflow");
#endif
#ifdef TEST_TSAN
    // the schedule can hide a race; TSan must not: only barriers create happens-before
    expect_death("missing __syncthreads, read after write (TSan)", [] {
        float* d = death_buffer();
        simt_set_schedule(SIMT_REVERSE, 2); // the order under which the output is right
        MOSAIC_LAUNCH(neighbour_kernel<0>, 1, 64, 0, mosaic_stream, d);
    }, "ThreadSanitizer: data race");
    expect_death("missing __syncwarp between lanes' shared-memory write and read (TSan)", [] {
        float* d = death_buffer();
        simt_set_schedule(SIMT_REVERSE, 2);
        MOSAIC_LAUNCH(warp_exchange_kernel<0>, 1, 64, 0, mosaic_stream, d);
    }, "ThreadSanitizer: data race");
    expect_death("missing __syncthreads, write after read (TSan, one key per barrier generation)", [] {
        float* d = death_buffer();
        simt_set_schedule(SIMT_FORWARD, 1);
        MOSAIC_LAUNCH(overwrite_kernel<0>, 1, 64, 0, mosaic_stream, d);
    }, "ThreadSanitizer: data race");
#endif
}

int main(void) {
    test_block_sum();
    test_shuffles<float>("float");
    test_shuffles<int>("int");
    test_shuffles<unsigned>("unsigned");
    test_shuffles<double>("double");
    test_poisoned_shared();
    test_schedules_expose_races();
    test_atomics_and_coordinates();
    test_runtime_shim();
    test_performance();
    test_death();
    return tests_finish();
}
