// Ops on f16 matrices stored [rows, d]: the token embedding (a row gather) and
// the output projection (lm_head, a GEMV/GEMM producing logits).
#pragma once

#include <cstdint>

#include "thread_pool.h"

namespace awqcore {

// out[t, :] = f32(table[ids[t], :]);  table: [rows, d] f16 bits, out: [num_tokens, d].
// ids must be valid row indices (the caller validates them).
void EmbeddingGather(const uint16_t* table, int d, const int* ids, int num_tokens, float* out);

// y[t, r] = sum_c W[r, c] x[t, c];  W: [rows, d] f16 bits, x: [num_tokens, d],
// y: [num_tokens, rows]. Rows are split across the pool; a block of rows is
// converted to f32 once per call and reused for every token.
void F16LinearForward(const uint16_t* weight, int rows, int d, const float* x, int num_tokens,
                      float* y, ThreadPool& pool);

// Scalar oracle of F16LinearForward (double accumulator).
void F16LinearReference(const uint16_t* weight, int rows, int d, const float* x, int num_tokens,
                        float* y);

}  // namespace awqcore
