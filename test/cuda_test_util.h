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
#ifdef MOSAIC_SIMT_EMULATION
#include <fcntl.h>
#include <sys/wait.h>
#include <unistd.h>
#endif

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

#ifdef MOSAIC_SIMT_EMULATION
// Death test, for the emulator and the shims: runs fn in a child process (then synchronises the
// device, since launches and copies are queued) and passes if the child dies (a signal or a non-
// zero exit) with want in its stderr. A child that survives leaves by exit(), so that TSan's
// exit-time verdict (exit code 66 after a reported race) counts; call it before MPI_Init.
static void expect_death(const char* what, void (*fn)(void), const char* want) {
    fflush(stdout);
    fflush(stderr);
    int fds[2];
    if (pipe(fds) != 0) {
        check_true("pipe for a death test", 0);
        return;
    }
    pid_t pid = fork();
    if (pid == 0) {
        close(fds[0]);
        dup2(fds[1], 2);
        int devnull = open("/dev/null", O_WRONLY);
        if (devnull >= 0) dup2(devnull, 1);
        fn();
        (void)cudaDeviceSynchronize(); // queued work runs (and fails) here
        exit(0);
    }
    close(fds[1]);
    std::string text;
    char buf[4096];
    ssize_t got;
    while ((got = read(fds[0], buf, sizeof(buf))) > 0) text.append(buf, (size_t)got);
    close(fds[0]);
    int status = 0;
    waitpid(pid, &status, 0);
    const int died = WIFSIGNALED(status) || (WIFEXITED(status) && WEXITSTATUS(status) != 0);
    const size_t at = text.find(want);
    char line[512];
    snprintf(line, sizeof(line), "death test: %s (%s, message has \"%s\")", what,
             WIFSIGNALED(status) ? "killed by a signal" : (died ? "non-zero exit" : "exited 0"), want);
    check_true(line, died && at != std::string::npos);
    // the line that says it, so the log documents what a user would see
    if (at != std::string::npos) {
        size_t begin = text.rfind('\n', at);
        begin = begin == std::string::npos ? 0 : begin + 1;
        const size_t end = text.find('\n', at);
        printf("      %s\n", text.substr(begin, end == std::string::npos ? std::string::npos : end - begin).c_str());
    } else {
        printf("      child output: %.600s\n", text.c_str());
    }
}
#endif
