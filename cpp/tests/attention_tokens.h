// The per-token arguments of AttentionForward (ops/attention.h) for the
// kernel tests (test_ops, test_simd_kernels): tokens of one sequence at
// consecutive positions (a prefill chunk) or of several sequences, each with
// its own cache (a batched decode step), and the reference for any mix.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <vector>

#include "half.h"
#include "ops/attention.h"

namespace awqtest {

// Runs check(CacheT{}) for both KV-cache element types: f32 and f16.
template <typename Check>
void ForEachCacheType(Check check) {
  check(float{});
  check(uint16_t{});
}

// `values` as KV-cache elements: a copy (float) or rounded to f16 (uint16_t,
// with StoreKv, as the runtime writes its cache; NaN stays NaN).
template <typename CacheT>
std::vector<CacheT> AsCache(const std::vector<float>& values) {
  std::vector<CacheT> cache(values.size());
  awqcore::StoreKv(values.data(), static_cast<int>(values.size()), cache.data());
  return cache;
}

// Token t reads caches k[t], v[t] ([> positions[t], KV * hd]) up to positions[t].
template <typename CacheT>
struct AttentionTokens {
  std::vector<const CacheT*> k;
  std::vector<const CacheT*> v;
  std::vector<int> positions;

  // Appends `count` tokens of one sequence at start, start + 1, ....
  AttentionTokens& Add(const CacheT* k_cache, const CacheT* v_cache, int start, int count = 1) {
    for (int t = 0; t < count; ++t) {
      k.push_back(k_cache);
      v.push_back(v_cache);
      positions.push_back(start + t);
    }
    return *this;
  }
  int size() const { return static_cast<int>(positions.size()); }
  // Floats of AttentionForward's scratch for these tokens.
  size_t ScratchSize(const awqcore::AttentionShape& shape) const {
    const int max_keys = *std::max_element(positions.begin(), positions.end()) + 1;
    return awqcore::AttentionScratchFloats(shape, size(), max_keys);
  }
};

// AttentionReference (one sequence, consecutive positions) one token at a
// time, so the oracle of the per-token form shares no code with the kernel.
// q, out: [tokens.size(), H * hd].
template <typename CacheT>
void AttentionReferencePerToken(const awqcore::AttentionShape& shape, const float* q,
                                const AttentionTokens<CacheT>& tokens, float* out) {
  const size_t width = static_cast<size_t>(shape.num_heads) * shape.head_dim;
  for (int t = 0; t < tokens.size(); ++t) {
    awqcore::AttentionReference(shape, q + t * width, tokens.k[t], tokens.v[t], tokens.positions[t],
                                1, out + t * width);
  }
}

}  // namespace awqtest
