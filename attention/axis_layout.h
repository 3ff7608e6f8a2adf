// The strided view of one attention axis, shared by the CPU and CUDA flash kernels and by the
// orchestration that builds it (attention/axis_attention.h).
//
// Sequence n of a batch starts at (n / n_inner) * outer_stride + (n % n_inner) * inner_stride,
// consecutive positions are seq_stride apart, head h sits at offset h * head_dim, and the
// head_dim elements of one position are contiguous.
#pragma once
#include "../model/common.h"

typedef struct {
    long outer_stride; // elements between sequences n and n + n_inner
    long inner_stride; // elements between sequences n and n + 1 within one outer block
    long seq_stride;   // elements between consecutive positions of one sequence
    int n_inner;       // sequences per outer block
} AxisLayout;

MOSAIC_HOST_DEVICE static inline long axis_offset(AxisLayout layout, long n) {
    return (n / layout.n_inner) * layout.outer_stride + (n % layout.n_inner) * layout.inner_stride;
}

// the largest head size the flash kernels (CPU and CUDA) are built for
enum { FA_MAX_HEAD_DIM = 128 };
