// The leaf ops of the build: the CPU ones (model/ops_cpu.h, templates over the element type)
// or, compiled with -DMOSAIC_CUDA, their CUDA twins (model/ops_cuda.cuh, namespace gpu, the
// same names and parameters specialised to float). The orchestration includes only this.
#pragma once
#ifdef MOSAIC_CUDA
#include "ops_cuda.cuh"
using namespace gpu;
#else
#include "ops_cpu.h"
#endif
