// The attention leaf ops of the build: flash attention, and the pack/unpack ops of the row
// strategies. CPU (*_cpu.h) or, compiled with -DMOSAIC_CUDA, their CUDA twins (*_cuda.cuh,
// namespace gpu, the same names and parameters specialised to float). The orchestration
// (axis_attention.h, row_*.h) includes only this.
#pragma once
#ifdef MOSAIC_CUDA
#include "flash_attention_cuda.cuh"
#include "shard_ops_cuda.cuh"
#include "a2a_ops_cuda.cuh"
using namespace gpu;
#else
#include "flash_attention_cpu.h"
#include "shard_ops_cpu.h"
#include "a2a_ops_cpu.h"
#endif
