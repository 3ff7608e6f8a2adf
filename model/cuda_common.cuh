// CUDA basics for every kernel file (*.cuh): error checks, the one launch macro, dynamic
// shared memory, and the stream the leaf ops run on.
//
// The same kernel source builds two ways:
//   nvcc                                  the GPU build: the macros below are plain CUDA;
//   clang++ -DMOSAIC_SIMT_EMULATION       test-only: test/simt_emulator.h runs every CUDA
//                                         thread as a fiber on the CPU, so CI executes each
//                                         kernel against its CPU twin without a GPU.
// Rules for kernel code, so that both builds run the same program:
//   - launch only through MOSAIC_LAUNCH (g++ and clang++ cannot parse <<<...>>>), with no comma
//     inside the kernel expression (one template argument, or an alias);
//   - dynamic shared memory only through MOSAIC_DYNAMIC_SHARED (extern __shared__ does not
//     build for the CPU);
//   - fp32 SIMT code: __syncthreads, __syncwarp, __shfl_sync, __shfl_xor_sync,
//     __shfl_down_sync, atomicAdd, and the math functions expf, logf, log1pf, sqrtf, erff,
//     fabsf, fmaxf, fminf, floorf; no mma, wgmma or cp.async (the emulator cannot check them);
//   - every thread of a block reaches every __syncthreads (no early return before a barrier)
//     and every lane named in a shuffle mask reaches the shuffle: the emulator aborts otherwise.
#pragma once
#include <cuda_runtime.h>
#include "common.h"
#ifdef MOSAIC_SIMT_EMULATION
#include "../test/simt_emulator.h"
#endif

// a failed CUDA call names itself, the site and a hint, then takes the job down
#define CUDA_CHECK(call)                                                                                 \
    do {                                                                                                 \
        cudaError_t cuda_status_ = (call);                                                               \
        if (cuda_status_ != cudaSuccess) {                                                               \
            fprintf(stderr, "mosaic: error: %s failed at %s:%d: %s (%s)\n", #call, __FILE__, __LINE__,   \
                    cudaGetErrorString(cuda_status_),                                                    \
                    cuda_status_ == cudaErrorMemoryAllocation ? "out of GPU memory: reduce --batch or rows" \
                                                              : "a kernel fault or a bad launch");       \
            mosaic_exit(1);                                                                              \
        }                                                                                                \
    } while (0)

#ifdef MOSAIC_SIMT_EMULATION
#define MOSAIC_LAUNCH(kernel, grid, block, smem_bytes, stream, ...) \
    simt_launch(#kernel, __FILE__, __LINE__, kernel, dim3(grid), dim3(block), (size_t)(smem_bytes), (stream), __VA_ARGS__)
#define MOSAIC_DYNAMIC_SHARED(type, name) type* name = (type*)simt_dynamic_shared()
#else
#define MOSAIC_LAUNCH(kernel, grid, block, smem_bytes, stream, ...)                        \
    do {                                                                                   \
        kernel<<<(grid), (block), (smem_bytes), (stream)>>>(__VA_ARGS__);                  \
        CUDA_CHECK(cudaGetLastError());                                                    \
    } while (0)
#define MOSAIC_DYNAMIC_SHARED(type, name)                                                  \
    extern __shared__ __align__(16) unsigned char mosaic_dynamic_shared_[];                \
    type* name = (type*)mosaic_dynamic_shared_
#endif

// the stream every leaf op enqueues on (the GPU trainer points it at its compute stream)
static cudaStream_t mosaic_stream = 0;

// without opt-in a block may use at most this much shared memory, static plus dynamic
enum { MOSAIC_MAX_SHARED_BYTES = 48 * 1024, MOSAIC_WARP = 32 };
