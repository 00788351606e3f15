// AVX2 + FMA body of AttentionForward (attention.h) for head_dim % 8 == 0.
//
// Decode at context p reads the layer's cache once per query head sharing
// it: 2 * p * hd elements per head (p = 512, hd = 64: 128 KiB per head in
// f16, L2-resident across the heads of a kv group). Per key and head:
//   scores: 4 keys at a time, hd/8 FMAs each into 4 independent sums and one
//     4-way horizontal add (Hsum4), instead of a dependent reduction per key;
//   values: the output row in 8 ymm registers (64 columns at a time), so a
//     key costs 8 loads and 8 FMAs and no stores (the earlier loop loaded and
//     stored the output row for every key: store-bound, ~45% of attention).
// An f16 cache row converts with F16C (vcvtph2ps: 8 halves -> 8 floats,
// exact), 1 uop per 8 elements.
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstddef>

#include "ops/attention.h"
#include "ops/simd_avx2.h"

namespace awqcore {
namespace {

// Decode reads each kv head's rows with a stride (KV * hd elements apart) and
// the weights streamed since the last token have evicted them from the
// caches: the hardware prefetcher alone left attention at ~4 GB/s (perf: 24%
// of a SmolLM2 decode step at context ~660). Rows kPrefetchRows ahead are
// requested explicitly.
constexpr int kPrefetchRows = 16;
template <typename CacheT>
inline void PrefetchRows(const CacheT* row, int rows, int stride, int elements) {
  for (int r = 0; r < rows; ++r) {
    avx2::PrefetchBytes(row + static_cast<size_t>(r) * stride, elements * static_cast<int>(sizeof(CacheT)));
  }
}

inline __m256 LoadKv8(const float* p) { return _mm256_loadu_ps(p); }
inline __m256 LoadKv8(const uint16_t* p) {
  return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}

// scores[j] = scale * q . k_j for j < num_keys; returns their maximum.
template <typename CacheT>
float Scores(const float* query, const CacheT* k_cache, int kv_stride, int hd, int num_keys,
             float scale, float* scores) {
  __m128 max4 = _mm_set1_ps(-INFINITY);
  const __m128 scale4 = _mm_set1_ps(scale);
  int j = 0;
  for (; j + 4 <= num_keys; j += 4) {
    const CacheT* key = k_cache + static_cast<size_t>(j) * kv_stride;
    PrefetchRows(key + kPrefetchRows * kv_stride, 4, kv_stride, hd);
    const __m256 q0 = _mm256_loadu_ps(query);
    __m256 a0 = _mm256_mul_ps(q0, LoadKv8(key));
    __m256 a1 = _mm256_mul_ps(q0, LoadKv8(key + kv_stride));
    __m256 a2 = _mm256_mul_ps(q0, LoadKv8(key + 2 * kv_stride));
    __m256 a3 = _mm256_mul_ps(q0, LoadKv8(key + 3 * kv_stride));
    for (int i = 8; i < hd; i += 8) {
      const __m256 qi = _mm256_loadu_ps(query + i);
      a0 = _mm256_fmadd_ps(qi, LoadKv8(key + i), a0);
      a1 = _mm256_fmadd_ps(qi, LoadKv8(key + kv_stride + i), a1);
      a2 = _mm256_fmadd_ps(qi, LoadKv8(key + 2 * kv_stride + i), a2);
      a3 = _mm256_fmadd_ps(qi, LoadKv8(key + 3 * kv_stride + i), a3);
    }
    const __m128 s4 = _mm_mul_ps(avx2::Hsum4(a0, a1, a2, a3), scale4);
    _mm_storeu_ps(scores + j, s4);
    max4 = _mm_max_ps(max4, s4);
  }
  alignas(16) float lanes[4];
  _mm_store_ps(lanes, max4);
  float max_score = std::max(std::max(lanes[0], lanes[1]), std::max(lanes[2], lanes[3]));
  for (; j < num_keys; ++j) {
    const CacheT* key = k_cache + static_cast<size_t>(j) * kv_stride;
    __m256 a = _mm256_mul_ps(_mm256_loadu_ps(query), LoadKv8(key));
    for (int i = 8; i < hd; i += 8) a = _mm256_fmadd_ps(_mm256_loadu_ps(query + i), LoadKv8(key + i), a);
    scores[j] = avx2::Hsum(a) * scale;
    max_score = std::max(max_score, scores[j]);
  }
  return max_score;
}

// e^x for 8 lanes of x <= 0 (scores minus their maximum), as Cephes' expf:
// x = n ln2 + r with |r| <= ln2 / 2 (ln2 split in two so n ln2 is exact),
// e^r = 1 + r + r^2 p(r) with p of degree 5 (relative error ~1e-7), and 2^n
// put in the exponent field. x is clamped at -87 so that 2^n stays normal
// (e^-87 ~ 1.6e-38, no weight of a softmax whose maximum contributes 1);
// NaN passes through (MAXPS returns its second operand when one is NaN).
// libm's expf, called per score, was ~9% of attention.
inline __m256 ExpNonPositive(__m256 x) {
  x = _mm256_max_ps(_mm256_set1_ps(-87.0f), x);
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 p = _mm256_set1_ps(1.9875691500e-4f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
  const __m256 y = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.f)));
  const __m256i two_n = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(y, _mm256_castsi256_ps(two_n));
}

// scores[j] = e^(scores[j] - max_score) for j < num_keys; returns their sum.
float SoftmaxNumerators(float* scores, int num_keys, float max_score) {
  const __m256 max8 = _mm256_set1_ps(max_score);
  __m256 sum8 = _mm256_setzero_ps();
  int j = 0;
  for (; j + 8 <= num_keys; j += 8) {
    const __m256 e = ExpNonPositive(_mm256_sub_ps(_mm256_loadu_ps(scores + j), max8));
    _mm256_storeu_ps(scores + j, e);
    sum8 = _mm256_add_ps(sum8, e);
  }
  float sum = avx2::Hsum(sum8);
  for (; j < num_keys; ++j) {
    scores[j] = std::exp(scores[j] - max_score);
    sum += scores[j];
  }
  return sum;
}

// out[c .. c + 8 * kVecs) = inv_sum * sum_j weights[j] * v_j[c ..], the
// partial sums in kVecs registers.
template <int kVecs, typename CacheT>
void WeightedValues(const float* weights, const CacheT* v_cache, int kv_stride, int num_keys,
                    int c, float inv_sum, float* out) {
  __m256 acc[kVecs];
  #pragma GCC unroll 8
  for (int k = 0; k < kVecs; ++k) acc[k] = _mm256_setzero_ps();
  for (int j = 0; j < num_keys; ++j) {
    const CacheT* value = v_cache + static_cast<size_t>(j) * kv_stride + c;
    PrefetchRows(value + kPrefetchRows * kv_stride, 1, kv_stride, 8 * kVecs);
    const __m256 w = _mm256_set1_ps(weights[j]);
    #pragma GCC unroll 8
    for (int k = 0; k < kVecs; ++k) acc[k] = _mm256_fmadd_ps(w, LoadKv8(value + 8 * k), acc[k]);
  }
  const __m256 scale = _mm256_set1_ps(inv_sum);
  #pragma GCC unroll 8
  for (int k = 0; k < kVecs; ++k) _mm256_storeu_ps(out + c + 8 * k, _mm256_mul_ps(acc[k], scale));
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
      const float max_score = Scores(query, k_cache, kv_stride, hd, num_keys, scale, head_scores);
      // sum >= 1: the maximum contributes exp(0) = 1 exactly (r = 0, n = 0).
      const float inv_sum = 1.0f / SoftmaxNumerators(head_scores, num_keys, max_score);
      float* head_out = out + static_cast<size_t>(t) * q_stride + h * hd;
      int c = 0;
      for (; c + 64 <= hd; c += 64) {
        WeightedValues<8>(head_scores, v_cache, kv_stride, num_keys, c, inv_sum, head_out);
      }
      for (; c < hd; c += 8) {
        WeightedValues<1>(head_scores, v_cache, kv_stride, num_keys, c, inv_sum, head_out);
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
