// Axis routing: "attend over axis a" of the (B, R, C, E) activations becomes a batch of
// sequences with strides, handed to the flash kernels without copies.
//   features: B*R sequences of length C (every cell sees every cell of its row)
//   rows:     B*C sequences of length R, keys and values the train rows [0, S) only
// q, k, v live interleaved in one fused projection buffer qkv (B, R, C, 3E): q at offset 0,
// k at E, v at 2E of each cell; head h uses dims [h*d, (h+1)*d) of each.
// This file holds no tensor access of its own: it only builds layouts.
#pragma once
#include "axis_layout.h"
#include "attention_ops.h"
#include "../model/ops.h"

// layout of the feature axis of a (B, R, C, width) buffer
static inline AxisLayout feature_axis_layout(int C, int width) {
    AxisLayout layout = {(long)C * width, 0, (long)width, 1};
    return layout;
}

// layout of the row axis of a (B, R, C, width) buffer: sequence n = b * C + c
static inline AxisLayout row_axis_layout(int R, int C, int width) {
    AxisLayout layout = {(long)R * C * width, (long)width, (long)C * width, C};
    return layout;
}

// o (B, R, C, E), lse (B*R, heads, C), qkv (B, R, C, 3E)
static void feature_attention_forward(float* o, float* lse, const float* qkv, int B, int R, int C, int E, int heads) {
    int d = E / heads;
    AxisLayout qkv_layout = feature_axis_layout(C, 3 * E), o_layout = feature_axis_layout(C, E);
    flash_attention_forward(o, lse, qkv, qkv + E, qkv + 2 * E, qkv_layout, qkv_layout, o_layout, B * R, heads, C, C, d,
                            1.0f / sqrtf((float)d));
}

// dqkv (B, R, C, 3E) is overwritten
static void feature_attention_backward(float* dqkv, const float* dout, const float* o, const float* lse,
                                       const float* qkv, int B, int R, int C, int E, int heads) {
    int d = E / heads;
    AxisLayout qkv_layout = feature_axis_layout(C, 3 * E), o_layout = feature_axis_layout(C, E);
    device_memset_zero(dqkv, (size_t)B * R * C * 3 * E * sizeof(float));
    flash_attention_backward(dqkv, dqkv + E, dqkv + 2 * E, dout, o, lse, qkv, qkv + E, qkv + 2 * E, qkv_layout,
                             qkv_layout, o_layout, B * R, heads, C, C, d, 1.0f / sqrtf((float)d));
}

// The pruned last layer (model/tabpfn.h): only the target cell of each row queries; keys and
// values still come from every cell of the row. One query per sequence:
// o, q (B*R, E); kv (B, R, C, 2E) with k at offset 0 and v at E of each cell; lse (B*R, heads)
static void feature_attention_target_forward(float* o, float* lse, const float* q, const float* kv, int B, int R,
                                             int C, int E, int heads) {
    int d = E / heads;
    AxisLayout q_layout = feature_axis_layout(1, E), kv_layout = feature_axis_layout(C, 2 * E);
    flash_attention_forward(o, lse, q, kv, kv + E, q_layout, kv_layout, q_layout, B * R, heads, 1, C, d,
                            1.0f / sqrtf((float)d));
}

// dq (B*R, E) and dkv (B, R, C, 2E) are overwritten
static void feature_attention_target_backward(float* dq, float* dkv, const float* dout, const float* o,
                                              const float* lse, const float* q, const float* kv, int B, int R, int C,
                                              int E, int heads) {
    int d = E / heads;
    AxisLayout q_layout = feature_axis_layout(1, E), kv_layout = feature_axis_layout(C, 2 * E);
    device_memset_zero(dq, (size_t)B * R * E * sizeof(float));
    device_memset_zero(dkv, (size_t)B * R * C * 2 * E * sizeof(float));
    flash_attention_backward(dq, dkv, dkv + E, dout, o, lse, q, kv, kv + E, q_layout, kv_layout, q_layout, B * R, heads,
                             1, C, d, 1.0f / sqrtf((float)d));
}

// The row axis with whole tables on this rank ("local" strategy): all R rows query the
// train rows [0, S). o (B, R, C, E), lse (B*C, heads, R), qkv (B, R, C, 3E)
static void row_attention_local_forward(float* o, float* lse, const float* qkv, int B, int R, int C, int S, int E,
                                        int heads) {
    int d = E / heads;
    AxisLayout qkv_layout = row_axis_layout(R, C, 3 * E), o_layout = row_axis_layout(R, C, E);
    flash_attention_forward(o, lse, qkv, qkv + E, qkv + 2 * E, qkv_layout, qkv_layout, o_layout, B * C, heads, R, S, d,
                            1.0f / sqrtf((float)d));
}

// dqkv (B, R, C, 3E) is overwritten; test rows get no dk, dv (they are never keys)
static void row_attention_local_backward(float* dqkv, const float* dout, const float* o, const float* lse,
                                         const float* qkv, int B, int R, int C, int S, int E, int heads) {
    int d = E / heads;
    AxisLayout qkv_layout = row_axis_layout(R, C, 3 * E), o_layout = row_axis_layout(R, C, E);
    device_memset_zero(dqkv, (size_t)B * R * C * 3 * E * sizeof(float));
    flash_attention_backward(dqkv, dqkv + E, dqkv + 2 * E, dout, o, lse, qkv, qkv + E, qkv + 2 * E, qkv_layout,
                             qkv_layout, o_layout, B * C, heads, R, S, d, 1.0f / sqrtf((float)d));
}
