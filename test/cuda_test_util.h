// Helpers shared by the CUDA kernel tests (test/test_cuda_*.cu). Each test runs a kernel and
// its CPU twin on the same inputs and compares them with a stated tolerance.
// Built two ways (Makefile, `make test_cuda_kernels`):
//   clang++ -DMOSAIC_SIMT_EMULATION: the kernels run on the CPU through test/simt_emulator.h,
//     once per schedule (forward, reverse, random resume orders, shuffled blocks, shared memory
//     poisoned with NaN); outputs must match the twin AND be bit-identical across schedules;
//   nvcc: the kernels run natively, once, where a GPU exists.
#pragma once
#include "../model/cuda_common.cuh"
#include "test_util.h"
#include <vector>
#include <string>

// device buffers for tests: allocated, filled and read back through the CUDA runtime
static float* test_device_upload(const float* host, long n) {
    float* d = NULL;
    CUDA_CHECK(cudaMalloc((void**)&d, (size_t)(n > 0 ? n : 1) * sizeof(float)));
    if (n > 0) CUDA_CHECK(cudaMemcpy(d, host, (size_t)n * sizeof(float), cudaMemcpyHostToDevice));
    return d;
}
static std::vector<float> test_device_download(const float* d, long n) {
    std::vector<float> host((size_t)(n > 0 ? n : 1));
    CUDA_CHECK(cudaDeviceSynchronize());
    if (n > 0) CUDA_CHECK(cudaMemcpy(host.data(), d, (size_t)n * sizeof(float), cudaMemcpyDeviceToHost));
    return host;
}

// outputs of one schedule must equal those of the first, bit for bit: a schedule-dependent
// result is a race (a missing barrier) or an order-dependent reduction
static int check_bit_identical(const char* what, const float* a, const float* first, long n) {
    long bad = -1;
    for (long i = 0; i < n && bad < 0; i++)
        if (memcmp(&a[i], &first[i], sizeof(float)) != 0) bad = i;
    char line[512];
    snprintf(line, sizeof(line), "%s: bit-identical to the first schedule", what);
    if (bad >= 0) printf("      first difference at %ld: %.9g vs %.9g\n", bad, (double)a[bad], (double)first[bad]);
    check_true(line, bad < 0);
    return bad < 0;
}

// the schedules a test runs its kernels under; under nvcc the one native run
struct TestSchedule {
    const char* name;
#ifdef MOSAIC_SIMT_EMULATION
    SimtOrder order;
    uint64_t seed;
#endif
};

static std::vector<TestSchedule> test_schedules(void) {
#ifdef MOSAIC_SIMT_EMULATION
    return {{"forward", SIMT_FORWARD, 1}, {"reverse", SIMT_REVERSE, 2}, {"random", SIMT_RANDOM, 3}};
#else
    return {{"native"}};
#endif
}

static void test_use_schedule(const TestSchedule& s) {
#ifdef MOSAIC_SIMT_EMULATION
    simt_set_schedule(s.order, s.seed);
#else
    (void)s;
#endif
}

// where the kernels ran, for the closing lines: a skipped native run is said, never counted
static int test_cuda_device_present(void) {
#ifdef MOSAIC_SIMT_EMULATION
    return 1;
#else
    int count = 0;
    return cudaGetDeviceCount(&count) == cudaSuccess && count > 0;
#endif
}
