// Shared basics: error-check macros, a deterministic RNG, wall-clock timing.
// Everything here compiles under g++ and nvcc alike.
#pragma once
#include <stdio.h>
#include <stdlib.h>
#include <stdarg.h>
#include <stdint.h>
#include <string.h>
#include <math.h>
#include <errno.h>
#include <time.h>

// functions that CUDA kernels call as well as host code (nvcc needs to be told)
#ifdef __CUDACC__
#define MOSAIC_HOST_DEVICE __host__ __device__
#else
#define MOSAIC_HOST_DEVICE
#endif

// ----------------------------------------------------------------------------
// errors: one line naming the problem, then a non-zero exit.
// Under MPI the communicator installs an abort hook so that one failing rank
// takes the whole job down instead of leaving the others waiting.

typedef void (*mosaic_abort_fn)(int code);
static mosaic_abort_fn mosaic_abort_hook = NULL;
static int mosaic_error_rank = -1; // under mpirun errors name the rank that raised them
static int mosaic_error_quiet = 0; // set while every rank checks the same flags: rank 0 speaks for all

#ifdef MOSAIC_FUZZ
// fuzz builds only (test/fuzz_*.cpp): a failure jumps back into the harness, which set this
// with setjmp, instead of ending the process
#include <setjmp.h>
static jmp_buf mosaic_fuzz_jump;
#endif

static inline void mosaic_exit(int code) {
#ifdef MOSAIC_FUZZ
    longjmp(mosaic_fuzz_jump, 1);
#endif
    fflush(stdout);
    fflush(stderr);
    if (mosaic_abort_hook) mosaic_abort_hook(code);
    exit(code);
}

// user-facing error (bad flag, bad file): "mosaic: error: <message>"
static inline void mosaic_fail(const char* fmt, ...) {
    if (mosaic_error_quiet) {
        // under mpirun rank 0 meets the same error and reports it: give it 10 s to print and
        // end the job before this rank's abort could kill it mid-line
        if (mosaic_abort_hook) {
            struct timespec wait = {10, 0};
            nanosleep(&wait, NULL);
        }
        mosaic_exit(1);
    }
    // one write: under mpirun, pieces of a line could interleave with other output
    char line[2048];
    int n = snprintf(line, sizeof(line), "mosaic: error: ");
    if (mosaic_error_rank >= 0) n += snprintf(line + n, sizeof(line) - n, "[rank %d] ", mosaic_error_rank);
    va_list args;
    va_start(args, fmt);
    n += vsnprintf(line + n, sizeof(line) - n, fmt, args);
    va_end(args);
    if (n > (int)sizeof(line) - 2) n = (int)sizeof(line) - 2;
    line[n++] = '\n';
    line[n] = '\0';
    fputs(line, stderr);
    fflush(stderr);
    mosaic_exit(1);
}

// internal check: names the condition, file:line and a hint for the reader
#define MOSAIC_CHECK(cond, hint)                                                         \
    do {                                                                                 \
        if (!(cond)) {                                                                   \
            fprintf(stderr, "mosaic: error: check '%s' failed at %s:%d (%s)\n", #cond, \
                    __FILE__, __LINE__, hint);                                           \
            mosaic_exit(1);                                                              \
        }                                                                                \
    } while (0)

static inline void* malloc_check(size_t size, const char* file, int line) {
    void* p = malloc(size > 0 ? size : 1);
    if (p == NULL) {
        fprintf(stderr, "mosaic: error: malloc of %zu bytes failed at %s:%d (out of host memory? reduce --batch or rows)\n",
                size, file, line);
        mosaic_exit(1);
    }
    return p;
}
#define mallocCheck(size) malloc_check((size), __FILE__, __LINE__)

static inline void* calloc_check(size_t size, const char* file, int line) {
    void* p = malloc_check(size, file, line);
    memset(p, 0, size);
    return p;
}
#define callocCheck(size) calloc_check((size), __FILE__, __LINE__)

static inline FILE* fopen_check(const char* path, const char* mode, const char* file, int line) {
    (void)file; (void)line;
    FILE* f = fopen(path, mode);
    if (f == NULL) mosaic_fail("cannot open '%s': %s", path, strerror(errno));
    return f;
}
#define fopenCheck(path, mode) fopen_check((path), (mode), __FILE__, __LINE__)

// fread that names the file and how much was missing when the file is short
static inline void fread_check(void* ptr, size_t size, size_t count, FILE* f, const char* path) {
    size_t got = fread(ptr, size, count, f);
    if (got != count)
        mosaic_fail("'%s' is truncated or unreadable: wanted %zu items of %zu bytes, got %zu", path, count, size, got);
}

static inline void fwrite_check(const void* ptr, size_t size, size_t count, FILE* f, const char* path) {
    size_t put = fwrite(ptr, size, count, f);
    if (put != count) mosaic_fail("cannot write '%s': %s", path, strerror(errno));
}

// ----------------------------------------------------------------------------
// deterministic random numbers (splitmix64 seeding, xoshiro-style state update)

typedef struct {
    uint64_t state;
} Rng;

static inline uint64_t rng_next_u64(Rng* rng) {
    // splitmix64: small, fast, and every seed (including 0) gives a good stream
    uint64_t z = (rng->state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}
static inline void rng_seed(Rng* rng, uint64_t seed) { rng->state = seed * 0x2545F4914F6CDD1Dull + 0x1234567ull; }
// uniform in [0, 1)
static inline double rng_uniform(Rng* rng) { return (double)(rng_next_u64(rng) >> 11) * (1.0 / 9007199254740992.0); }
// uniform integer in [lo, hi] inclusive
static inline int rng_int(Rng* rng, int lo, int hi) { return lo + (int)(rng_next_u64(rng) % (uint64_t)(hi - lo + 1)); }
// standard normal (Box-Muller; one value per call keeps the stream position simple)
static inline double rng_normal(Rng* rng) {
    double u1 = rng_uniform(rng), u2 = rng_uniform(rng);
    if (u1 < 1e-300) u1 = 1e-300;
    return sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
}

// ----------------------------------------------------------------------------
// timing

static inline double wall_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static inline int ceil_div(int a, int b) { return (a + b - 1) / b; }

// exp(x) for float in plain arithmetic, so loops that call it vectorise (libm's expf is one
// call per element): exp(x) = 2^k exp(r), r = x - k ln2 split in two parts (Cody-Waite),
// exp(r) by a degree-6 polynomial (Cephes' coefficients), about 1 ulp; below -87 it is 0.
// NaN in gives NaN out: it fails both clamp comparisons, so it is replaced by 0 for the
// arithmetic (NaN converted to int is undefined behaviour) and handed back at the end.
static inline float fast_expf(float v) {
    const float in = v;
    const int underflow = v < -87.0f;
    v = v < -87.0f ? -87.0f : (v > 88.0f ? 88.0f : v);
    v = v == v ? v : 0.0f;
    const float k = rintf(v * 1.44269504088896341f);
    const float r = (v - k * 0.693359375f) + k * 2.12194440e-4f;
    float poly = 1.9875691500e-4f;
    poly = poly * r + 1.3981999507e-3f;
    poly = poly * r + 8.3334519073e-3f;
    poly = poly * r + 4.1665795894e-2f;
    poly = poly * r + 1.6666665459e-1f;
    poly = poly * r + 5.0000001201e-1f;
    const float er = poly * r * r + r + 1.0f;
    union { int i; float f; } two_k;
    two_k.i = ((int)k + 127) << 23;
    return underflow ? 0.0f : (in == in ? er * two_k.f : in);
}
