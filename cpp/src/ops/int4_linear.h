// The 4-bit grouped linear layer: y[t, r] = sum_c W[r, c] x[t, c] (+ b[r]),
// W[r, c] = (q[r, c] - z[r, c/g]) * s[r, c/g] (model_weights.h).
#pragma once

#include "model_weights.h"
#include "thread_pool.h"

namespace awqcore {

// x: [num_tokens, layer.in], y: [num_tokens, layer.out]; y must not alias x.
// Output rows are split across the pool. A block of rows is dequantized once
// per call and reused for every token, so prefill (num_tokens > 1) does not
// repeat the dequantization per token. Requires an even group_size <= 256
// (the format allows 32, 64, 128).
void Int4LinearForward(const Int4Linear& layer, const float* x, int num_tokens, float* y,
                       ThreadPool& pool);

// The obvious scalar loop (one weight at a time, double accumulator): the
// oracle the tests compare Int4LinearForward with.
void Int4LinearReference(const Int4Linear& layer, const float* x, int num_tokens, float* y);

}  // namespace awqcore
