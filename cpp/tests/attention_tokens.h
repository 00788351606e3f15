// The per-token arguments of AttentionForward (ops/attention.h) for the
// kernel tests (test_ops, test_simd_kernels): tokens of one sequence at
// consecutive positions (a prefill chunk) or of several sequences, each with
// its own cache (a batched decode step), and the reference for any mix.
#pragma once

#include <algorithm>
#include <cstddef>
#include <vector>

#include "ops/attention.h"

namespace awqtest {

// Token t reads caches k[t], v[t] ([> positions[t], KV * hd]) up to positions[t].
struct AttentionTokens {
  std::vector<const float*> k;
  std::vector<const float*> v;
  std::vector<int> positions;

  // Appends `count` tokens of one sequence at start, start + 1, ....
  AttentionTokens& Add(const float* k_cache, const float* v_cache, int start, int count = 1) {
    for (int t = 0; t < count; ++t) {
      k.push_back(k_cache);
      v.push_back(v_cache);
      positions.push_back(start + t);
    }
    return *this;
  }
  int size() const { return static_cast<int>(positions.size()); }
  // Floats of AttentionForward's scores scratch: H * (max position + 1).
  size_t ScoresSize(const awqcore::AttentionShape& shape) const {
    return static_cast<size_t>(shape.num_heads) * (*std::max_element(positions.begin(), positions.end()) + 1);
  }
};

// AttentionReference (one sequence, consecutive positions) one token at a
// time, so the oracle of the per-token form shares no code with the kernel.
// q, out: [tokens.size(), H * hd].
inline void AttentionReferencePerToken(const awqcore::AttentionShape& shape, const float* q,
                                       const AttentionTokens& tokens, float* out) {
  const size_t width = static_cast<size_t>(shape.num_heads) * shape.head_dim;
  for (int t = 0; t < tokens.size(); ++t) {
    awqcore::AttentionReference(shape, q + t * width, tokens.k[t], tokens.v[t], tokens.positions[t],
                                1, out + t * width);
  }
}

}  // namespace awqtest
