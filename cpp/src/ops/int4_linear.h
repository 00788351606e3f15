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
// decodes bit-identically to the sequences one at a time. With AVX-512 VNNI
// this holds at any count (decode and the prefill GEMM share one
// arithmetic); on AVX2 CPUs longer calls take the GEMM, whose sums agree
// with the GEMV's to f32 rounding.
#pragma once

#include <cstdint>
#include <vector>

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

// The AVX-512 VNNI decode kernel (linear_kernels.h: Int4DecodeQ8Avx512Vnni)
// holds one row per zmm lane, so it needs each group's weight scales and zero
// points of 16 rows as a vector. In the file they lie row by row (a stride
// of in / g), so the loader adds a copy per tile of kTileScaleRows rows:
// [ceil(out / 16)][in / g][16 f16 scales | 16 zero bytes], 48 bytes per tile
// and group (3 bytes per group and row, as the originals: for Qwen2.5-1.5B
// 32 MB on top of its 1.2 GB); rows past `out` repeat the last row.
constexpr int kTileScaleRows = 16;
constexpr int kTileScaleBytes = 3 * kTileScaleRows;  // per tile and group
std::vector<uint8_t> Int4TileScales(const Int4Linear& layer);
// Gives every int4 linear of `weights` (experts too) its tile_scales, when
// this CPU runs the kernel that reads them.
void AddTileScales(ModelWeights& weights);

// The obvious scalar loop (one weight at a time, double accumulator): the
// oracle the tests compare the kernels with.
void Int4LinearReference(const Int4Linear& layer, const float* x, int num_tokens, float* y);

}  // namespace awqcore
