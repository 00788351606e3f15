// The 4-bit grouped linear layer: y[t, r] = sum_c W[r, c] x[t, c] (+ b[r]),
// W[r, c] = (q[r, c] - z[r, c/g]) * s[r, c/g] (model_weights.h).
//
// Decode (one token) is memory-bound: every weight byte is read once per
// token, so the ops make one pass over each matrix and the fused forms below
// cut the fork-join round trips per layer from 8 to 5 (q/k/v as one pass,
// gate/up/activation·mul as one pass). The row kernels are in linear_kernels.h;
// `isa` picks the family (cpu_features.h), default the best the CPU has.
//
// Every call (decode, batched decode, prefill; UsesQ8Activations: widths
// that are multiples of 64) rounds the activations to int8 first (W4A8,
// ops/q8_activations.h) unless int8_decode is false: its results are
// Int4LinearReference's for the rounded activations (Q8Buffer), not for x.
// Prefill calls run a GEMM (each unpacked weight block serves many tokens).
// Each token's result depends only on that token, bit for bit whatever the
// call's token count up to kQ8MaxTokens, so a batch of up to 8 sequences
// decodes bit-identically to the sequences one at a time (on AVX2 CPUs at
// any count; with AVX-512 VNNI longer calls take the GEMM, whose sums agree
// with the GEMV's to f32 rounding).
#pragma once

#include "cpu_features.h"
#include "model_weights.h"
#include "ops/q8_activations.h"
#include "thread_pool.h"

namespace awqcore {

// x: [num_tokens, layer.in], y: [num_tokens, layer.out]; y must not alias x.
// Output rows are split across the pool. Requires group_size in {32, 64, 128}.
// int8_decode false: the f32 path for every call (exact W4A16 numerics).
void Int4LinearForward(const Int4Linear& layer, const float* x, int num_tokens, float* y,
                       ThreadPool& pool, Isa isa = DetectedIsa(), bool int8_decode = true);

// Several linears with the same input in one pass over the pool (q, k, v):
// ys[i]: [num_tokens, layers[i].out]; every layers[i].in is the same.
void Int4LinearsForward(const Int4Linear* const* layers, float* const* ys, int count,
                        const float* x, int num_tokens, ThreadPool& pool,
                        Isa isa = DetectedIsa(), bool int8_decode = true);

// out[t, r] = act(gate(x)[t, r]) * up(x)[t, r] (SwiGLU or GeGLU,
// ops/activation.h): both projections of a row block are computed by the
// same thread, so the [num_tokens, ffn] "up" buffer and a separate
// activation pass disappear. x: [num_tokens, in], out: [num_tokens, ffn];
// gate and up have the same shape.
void Int4GatedMlpForward(const Int4Linear& gate, const Int4Linear& up, Activation activation,
                         const float* x, int num_tokens, float* out, ThreadPool& pool,
                         Isa isa = DetectedIsa(), bool int8_decode = true);

// The obvious scalar loop (one weight at a time, double accumulator): the
// oracle the tests compare the kernels with.
void Int4LinearReference(const Int4Linear& layer, const float* x, int num_tokens, float* y);

}  // namespace awqcore
