// AVX2 + FMA body of AttentionForward (attention.h) for head_dim % 8 == 0.
//
// Decode at context p reads the layer's cache once per query head sharing
// it: 2 * p * hd floats per head (p = 512, hd = 64: 256 KiB per head, L2-
// resident across the heads of a kv group). The portable loop (SSE2 via the
// compiler) measured ~17 ms per token at p = 512 on SmolLM2 with one thread;
// here q.k and the V accumulation are 8-wide FMAs with the query (hd <= 256)
// and the output row held in registers/L1. An f16 cache row converts with
// F16C (vcvtph2ps: 8 halves -> 8 floats, exact), 1 uop per 8 elements.
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstddef>

#include "ops/attention.h"
#include "ops/simd_avx2.h"

namespace awqcore {
namespace {

inline __m256 LoadKv8(const float* p) { return _mm256_loadu_ps(p); }
inline __m256 LoadKv8(const uint16_t* p) {
  return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}

}  // namespace

template <typename CacheT>
void AttentionHeadsAvx2(const AttentionShape& shape, const float* q,
                        const CacheT* const* k_caches, const CacheT* const* v_caches,
                        const int* positions, int num_tokens, int max_keys, float* scores,
                        float* out, int head_begin, int head_end) {
  const int hd = shape.head_dim;
  const int q_stride = shape.num_heads * hd;
  const int kv_stride = shape.num_kv_heads * hd;
  const int heads_per_kv = shape.num_heads / shape.num_kv_heads;
  const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
  for (int h = head_begin; h < head_end; ++h) {
    const int kv_offset = (h / heads_per_kv) * hd;
    float* head_scores = scores + static_cast<size_t>(h) * max_keys;  // [max_keys]
    for (int t = 0; t < num_tokens; ++t) {
      const float* query = q + static_cast<size_t>(t) * q_stride + h * hd;
      const CacheT* k_cache = k_caches[t] + kv_offset;
      const CacheT* v_cache = v_caches[t] + kv_offset;
      const int num_keys = positions[t] + 1;
      float max_score = -INFINITY;
      for (int j = 0; j < num_keys; ++j) {
        const CacheT* key = k_cache + static_cast<size_t>(j) * kv_stride;
        __m256 a = _mm256_mul_ps(_mm256_loadu_ps(query), LoadKv8(key));
        for (int i = 8; i < hd; i += 8) {
          a = _mm256_fmadd_ps(_mm256_loadu_ps(query + i), LoadKv8(key + i), a);
        }
        const float s = avx2::Hsum(a) * scale;
        head_scores[j] = s;
        max_score = std::max(max_score, s);
      }
      float sum = 0.f;
      for (int j = 0; j < num_keys; ++j) {
        head_scores[j] = std::exp(head_scores[j] - max_score);
        sum += head_scores[j];
      }
      float* head_out = out + static_cast<size_t>(t) * q_stride + h * hd;
      std::fill_n(head_out, hd, 0.f);
      for (int j = 0; j < num_keys; ++j) {
        const CacheT* value = v_cache + static_cast<size_t>(j) * kv_stride;
        const __m256 w = _mm256_set1_ps(head_scores[j]);
        for (int i = 0; i < hd; i += 8) {
          _mm256_storeu_ps(head_out + i, _mm256_fmadd_ps(w, LoadKv8(value + i),
                                                         _mm256_loadu_ps(head_out + i)));
        }
      }
      // sum >= 1: the maximum contributes exp(0).
      const __m256 inv_sum = _mm256_set1_ps(1.0f / sum);
      for (int i = 0; i < hd; i += 8) {
        _mm256_storeu_ps(head_out + i, _mm256_mul_ps(_mm256_loadu_ps(head_out + i), inv_sum));
      }
    }
  }
}

template void AttentionHeadsAvx2<float>(const AttentionShape&, const float*, const float* const*,
                                        const float* const*, const int*, int, int, float*, float*,
                                        int, int);
template void AttentionHeadsAvx2<uint16_t>(const AttentionShape&, const float*,
                                           const uint16_t* const*, const uint16_t* const*,
                                           const int*, int, int, float*, float*, int, int);

}  // namespace awqcore
