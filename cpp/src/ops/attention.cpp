#include "ops/attention.h"

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <vector>

#include "ops/vec.h"

namespace awqcore {
namespace {

float DotKv(const float* q, const float* k, int n) { return DotF32(q, k, n); }
float DotKv(const float* q, const uint16_t* k, int n) {
  float sum = 0.f;
  for (int i = 0; i < n; ++i) sum += q[i] * F16ToF32(k[i]);
  return sum;
}
void AxpyKv(float a, const float* v, float* y, int n) { AxpyF32(a, v, y, n); }
void AxpyKv(float a, const uint16_t* v, float* y, int n) {
  for (int i = 0; i < n; ++i) y[i] += a * F16ToF32(v[i]);
}

}  // namespace

template <typename CacheT>
void AttentionForward(const AttentionShape& shape, const float* q, const CacheT* const* k_caches,
                      const CacheT* const* v_caches, const int* positions, int num_tokens,
                      float* scores, float* out, ThreadPool& pool, Isa isa) {
  const int hd = shape.head_dim;
  const int q_stride = shape.num_heads * hd;      // floats per token in q and out
  const int kv_stride = shape.num_kv_heads * hd;  // floats per position in a cache
  const int heads_per_kv = shape.num_heads / shape.num_kv_heads;
  const int max_keys = *std::max_element(positions, positions + num_tokens) + 1;
  const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
  pool.ParallelFor(shape.num_heads, [&](int64_t head_begin, int64_t head_end) {
#ifdef AWQCORE_HAVE_AVX2_KERNELS  // else attention_avx2.cpp is not built: the portable loop
    if (isa == Isa::kAvx2 && hd % 8 == 0) {
      AttentionHeadsAvx2(shape, q, k_caches, v_caches, positions, num_tokens, max_keys, scores,
                         out, static_cast<int>(head_begin), static_cast<int>(head_end));
      return;
    }
#endif
    for (int h = static_cast<int>(head_begin); h < head_end; ++h) {
      const int kv_offset = (h / heads_per_kv) * hd;
      float* head_scores = scores + static_cast<size_t>(h) * max_keys;  // [max_keys]
      for (int t = 0; t < num_tokens; ++t) {
        const float* query = q + static_cast<size_t>(t) * q_stride + h * hd;
        const CacheT* k_cache = k_caches[t] + kv_offset;
        const CacheT* v_cache = v_caches[t] + kv_offset;
        const int num_keys = positions[t] + 1;  // causal: positions 0 .. positions[t]
        float max_score = -INFINITY;
        for (int j = 0; j < num_keys; ++j) {
          const float s = DotKv(query, k_cache + static_cast<size_t>(j) * kv_stride, hd) * scale;
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
          AxpyKv(head_scores[j], v_cache + static_cast<size_t>(j) * kv_stride, head_out, hd);
        }
        // sum >= 1: the maximum contributes exp(0).
        const float inv_sum = 1.0f / sum;
        for (int i = 0; i < hd; ++i) head_out[i] *= inv_sum;
      }
    }
  });
}

template <typename CacheT>
void AttentionReference(const AttentionShape& shape, const float* q, const CacheT* k_cache,
                        const CacheT* v_cache, int start_position, int num_tokens, float* out) {
  const int hd = shape.head_dim;
  const int kv_stride = shape.num_kv_heads * hd;
  for (int t = 0; t < num_tokens; ++t) {
    const int num_keys = start_position + t + 1;
    for (int h = 0; h < shape.num_heads; ++h) {
      const int kv_head = h / (shape.num_heads / shape.num_kv_heads);
      const float* query = q + (static_cast<size_t>(t) * shape.num_heads + h) * hd;
      std::vector<double> weights(num_keys);  // softmax over keys
      double max_score = -INFINITY;
      for (int j = 0; j < num_keys; ++j) {
        double dot = 0.0;
        for (int i = 0; i < hd; ++i) {
          dot += static_cast<double>(query[i]) *
                 KvToF32(k_cache[static_cast<size_t>(j) * kv_stride + kv_head * hd + i]);
        }
        weights[j] = dot / std::sqrt(static_cast<double>(hd));
        max_score = std::max(max_score, weights[j]);
      }
      double sum = 0.0;
      for (double& w : weights) sum += (w = std::exp(w - max_score));
      for (int i = 0; i < hd; ++i) {
        double value = 0.0;
        for (int j = 0; j < num_keys; ++j) {
          value += weights[j] * KvToF32(v_cache[static_cast<size_t>(j) * kv_stride + kv_head * hd + i]);
        }
        out[(static_cast<size_t>(t) * shape.num_heads + h) * hd + i] = static_cast<float>(value / sum);
      }
    }
  }
}

#define AWQCORE_INSTANTIATE_ATTENTION(CacheT)                                                      \
  template void AttentionForward<CacheT>(const AttentionShape&, const float*,                   \
                                         const CacheT* const*, const CacheT* const*, const int*, \
                                         int, float*, float*, ThreadPool&, Isa);                 \
  template void AttentionReference<CacheT>(const AttentionShape&, const float*, const CacheT*,   \
                                           const CacheT*, int, int, float*);
AWQCORE_INSTANTIATE_ATTENTION(float)
AWQCORE_INSTANTIATE_ATTENTION(uint16_t)
#undef AWQCORE_INSTANTIATE_ATTENTION

}  // namespace awqcore
