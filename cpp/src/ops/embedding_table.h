// Ops on f16 matrices stored [rows, d]: the token embedding (a row gather) and
// the output projection (lm_head, a GEMV/GEMM producing logits).
//
// The lm_head is the largest single read of a decode step for small models
// (SmolLM2-135M: 49152 x 576 x 2 B = 57 MB, half of all bytes per token), so
// its kernel is a plain streaming GEMV: F16C converts 8 halves per
// instruction and 4 rows share each load of x (linear_kernels.h).
#pragma once

#include <cstdint>

#include "cpu_features.h"
#include "thread_pool.h"

namespace awqcore {

// out[t, :] = f32(table[ids[t], :]);  table: [rows, d] f16 bits, out: [num_tokens, d].
// ids must be valid row indices (the caller validates them).
void EmbeddingGather(const uint16_t* table, int d, const int* ids, int num_tokens, float* out);

// y[t, r] = sum_c W[r, c] x[t, c];  W: [rows, d] f16 bits, x: [num_tokens, d],
// y: [num_tokens, rows]. Rows are split across the pool; for several tokens a
// block of rows is converted to f32 once per call and reused for every token.
void F16LinearForward(const uint16_t* weight, int rows, int d, const float* x, int num_tokens,
                      float* y, ThreadPool& pool, Isa isa = DetectedIsa());

// Scalar oracle of F16LinearForward (double accumulator).
void F16LinearReference(const uint16_t* weight, int rows, int d, const float* x, int num_tokens,
                        float* y);

}  // namespace awqcore
