// AVX2 + FMA body of the attention work item (AttendRowsAvx2, attention.h)
// for head_dim % 8 == 0. Per block of kBlockKeys keys and per row:
//   scores: 4 keys at a time, hd/8 FMAs each into 4 independent sums and one
//     4-way horizontal add (Hsum4), instead of a dependent reduction per key;
//   values: the row's acc in 8 ymm registers (64 columns at a time), so a
//     key costs 8 loads and 8 FMAs; acc is loaded, rescaled and stored once
//     per block, not per key (a per-key load/store was store-bound).
// The block's K and V rows come from memory for the first row and from L1
// for the others. An f16 cache row converts with F16C (vcvtph2ps: 8 halves
// -> 8 floats, exact), 1 uop per 8 elements.
// Rows that read the same keys of one kv head (a GQA group's query heads for
// one token: 3 on SmolLM2, 6 on Qwen2.5-1.5B) go through a block up to 3 at a
// time (GroupBlock), each converted K and V vector serving all of them, with
// each row's arithmetic unchanged (bit-identical to the row alone): the
// conversion of a key's K and V rows, which otherwise each query head of the
// group repeats, is paid once per block, so decode and prefill attention
// spend less time per key (tools/attention_bench measures it).
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstddef>

#include "ops/attention.h"
#include "ops/simd_avx2.h"

namespace awqcore {
namespace {

// A block's rows are kv_stride elements apart and the weights streamed since
// the last token have evicted them from the caches: the hardware prefetcher
// alone left attention at ~4 GB/s (perf: 24% of a SmolLM2 decode step at
// context ~660). The first row of an item requests the K and V rows
// kPrefetchRows ahead as it goes, spread over its loops (a burst of requests
// at each block start waits for free fill buffers), into L2: requests into
// L1 also waited for fill buffers (tools/attention_bench, SmolLM2's shape,
// 1 thread, CPU time per decode step: 1.43-1.50 ms at 512 keys and 11.4-11.5
// at 4096 against 1.86-1.99 and 14.8-15.4 into L1).
constexpr int kPrefetchRows = 32;
template <typename CacheT>
inline void PrefetchRows(const CacheT* row, int rows, int stride, int elements) {
  for (int r = 0; r < rows; ++r) {
    avx2::PrefetchBytesToL2(row + static_cast<size_t>(r) * stride, elements * static_cast<int>(sizeof(CacheT)));
  }
}

inline __m256 LoadKv8(const float* p) { return _mm256_loadu_ps(p); }
inline __m256 LoadKv8(const uint16_t* p) {
  return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}

// scores[j] = scale * q . k_j for j < num_keys; returns their maximum. Also
// requests the first `span` elements of key rows j + kPrefetchRows for
// j < prefetch_rows.
template <typename CacheT>
float Scores(const float* query, const CacheT* k_cache, int kv_stride, int hd, int num_keys,
             float scale, float* scores, int prefetch_rows, int span) {
  __m128 max4 = _mm_set1_ps(-INFINITY);
  const __m128 scale4 = _mm_set1_ps(scale);
  int j = 0;
  for (; j + 4 <= num_keys; j += 4) {
    const CacheT* key = k_cache + static_cast<size_t>(j) * kv_stride;
    if (j < prefetch_rows) PrefetchRows(key + kPrefetchRows * kv_stride, 4, kv_stride, span);
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

// scores[j] = e^(scores[j] - max_score) for j < num_keys; returns their sum.
float SoftmaxNumerators(float* scores, int num_keys, float max_score) {
  const __m256 max8 = _mm256_set1_ps(max_score);
  __m256 sum8 = _mm256_setzero_ps();
  int j = 0;
  for (; j + 8 <= num_keys; j += 8) {
    const __m256 e = avx2::ExpNonPositive(_mm256_sub_ps(_mm256_loadu_ps(scores + j), max8));
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

// acc[c .. c + 8 * kVecs) = rescale * acc[c ..] + sum_j weights[j] * v_j[c ..],
// the sums in kVecs registers. Also requests value rows j + kPrefetchRows
// (`span` elements each) for j < prefetch_rows.
template <int kVecs, typename CacheT>
void AccumulateValues(const float* weights, const CacheT* v_rows, int kv_stride, int span, int count,
                      int c, float rescale, float* acc, int prefetch_rows) {
  __m256 sums[kVecs];
  const __m256 scale = _mm256_set1_ps(rescale);
  #pragma GCC unroll 8
  for (int k = 0; k < kVecs; ++k) sums[k] = _mm256_mul_ps(scale, _mm256_loadu_ps(acc + c + 8 * k));
  for (int j = 0; j < count; ++j) {
    const CacheT* value = v_rows + static_cast<size_t>(j) * kv_stride + c;
    if (j < prefetch_rows) PrefetchRows(value - c + kPrefetchRows * kv_stride, 1, kv_stride, span);
    const __m256 w = _mm256_set1_ps(weights[j]);
    #pragma GCC unroll 8
    for (int k = 0; k < kVecs; ++k) sums[k] = _mm256_fmadd_ps(w, LoadKv8(value + 8 * k), sums[k]);
  }
  #pragma GCC unroll 8
  for (int k = 0; k < kVecs; ++k) _mm256_storeu_ps(acc + c + 8 * k, sums[k]);
}

// Scores for kRows rows that read the same keys of one kv head (the query
// heads of a GQA group for one token): each key vector is converted once
// and serves every row, where Scores converts it once per row. Per row and
// key the arithmetic is Scores' (the first product, the FMA chain over the
// columns, Hsum4 over 4 keys, the scale), so the scores are bit-identical.
// scores[g][j] for j < num_keys; max_scores[g] their maxima.
template <int kRows, typename CacheT>
void GroupScores(const float* const* queries, const CacheT* k_cache, int kv_stride, int hd, int num_keys,
                 float scale, float (*scores)[kBlockKeys], float* max_scores, int prefetch_rows, int span) {
  __m128 max4[kRows];
  const __m128 scale4 = _mm_set1_ps(scale);
  for (int g = 0; g < kRows; ++g) max4[g] = _mm_set1_ps(-INFINITY);
  int j = 0;
  for (; j + 4 <= num_keys; j += 4) {
    const CacheT* key = k_cache + static_cast<size_t>(j) * kv_stride;
    if (j < prefetch_rows) PrefetchRows(key + kPrefetchRows * kv_stride, 4, kv_stride, span);
    __m256 a[kRows][4];
    #pragma GCC unroll 4
    for (int kk = 0; kk < 4; ++kk) {
      const __m256 kv = LoadKv8(key + kk * kv_stride);
      for (int g = 0; g < kRows; ++g) a[g][kk] = _mm256_mul_ps(_mm256_loadu_ps(queries[g]), kv);
    }
    for (int i = 8; i < hd; i += 8) {
      #pragma GCC unroll 4
      for (int kk = 0; kk < 4; ++kk) {
        const __m256 kv = LoadKv8(key + kk * kv_stride + i);
        for (int g = 0; g < kRows; ++g) a[g][kk] = _mm256_fmadd_ps(_mm256_loadu_ps(queries[g] + i), kv, a[g][kk]);
      }
    }
    for (int g = 0; g < kRows; ++g) {
      const __m128 s4 = _mm_mul_ps(avx2::Hsum4(a[g][0], a[g][1], a[g][2], a[g][3]), scale4);
      _mm_storeu_ps(scores[g] + j, s4);
      max4[g] = _mm_max_ps(max4[g], s4);
    }
  }
  for (int g = 0; g < kRows; ++g) {
    alignas(16) float lanes[4];
    _mm_store_ps(lanes, max4[g]);
    max_scores[g] = std::max(std::max(lanes[0], lanes[1]), std::max(lanes[2], lanes[3]));
    for (int t = j; t < num_keys; ++t) {  // the last keys, one at a time as Scores does
      const CacheT* key = k_cache + static_cast<size_t>(t) * kv_stride;
      __m256 acc = _mm256_mul_ps(_mm256_loadu_ps(queries[g]), LoadKv8(key));
      for (int i = 8; i < hd; i += 8) acc = _mm256_fmadd_ps(_mm256_loadu_ps(queries[g] + i), LoadKv8(key + i), acc);
      scores[g][t] = avx2::Hsum(acc) * scale;
      max_scores[g] = std::max(max_scores[g], scores[g][t]);
    }
  }
}

// AccumulateValues for kRows rows reading the same value rows: each value
// vector is converted once and serves every row. Per row the same sums in
// the same order (rescaled acc, then one FMA per key), so bit-identical.
template <int kRows, int kVecs, typename CacheT>
void GroupAccumulateValues(const float (*weights)[kBlockKeys], const CacheT* v_rows, int kv_stride, int span,
                           int count, int c, const float* rescale, float* const* accs, int prefetch_rows) {
  __m256 sums[kRows][kVecs];
  for (int g = 0; g < kRows; ++g) {
    const __m256 scale = _mm256_set1_ps(rescale[g]);
    #pragma GCC unroll 8
    for (int k = 0; k < kVecs; ++k) sums[g][k] = _mm256_mul_ps(scale, _mm256_loadu_ps(accs[g] + c + 8 * k));
  }
  for (int j = 0; j < count; ++j) {
    const CacheT* value = v_rows + static_cast<size_t>(j) * kv_stride + c;
    if (j < prefetch_rows) PrefetchRows(value - c + kPrefetchRows * kv_stride, 1, kv_stride, span);
    __m256 w[kRows];
    for (int g = 0; g < kRows; ++g) w[g] = _mm256_set1_ps(weights[g][j]);
    #pragma GCC unroll 8
    for (int k = 0; k < kVecs; ++k) {
      const __m256 v = LoadKv8(value + 8 * k);
      for (int g = 0; g < kRows; ++g) sums[g][k] = _mm256_fmadd_ps(w[g], v, sums[g][k]);
    }
  }
  for (int g = 0; g < kRows; ++g) {
    #pragma GCC unroll 8
    for (int k = 0; k < kVecs; ++k) _mm256_storeu_ps(accs[g] + c + 8 * k, sums[g][k]);
  }
}

// One block of keys for rows [r, r + kRows) of `rows`, which read the same
// keys (count of them, from k_row / v_row) of one kv head: the per-row steps
// of AttendRowsAvx2 with the K and V vectors shared.
template <int kRows, typename CacheT>
void GroupBlock(const AttentionRows& rows, int r, const CacheT* k_row, const CacheT* v_row, int kv_stride, int hd,
                int count, int prefetch_rows) {
  alignas(32) float weights[kRows][kBlockKeys];
  float block_max[kRows], rescale[kRows];
  const float* queries[kRows];
  float* accs[kRows];
  for (int g = 0; g < kRows; ++g) queries[g] = rows.query[r + g];
  GroupScores<kRows>(queries, k_row, kv_stride, hd, count, rows.scale, weights, block_max, prefetch_rows,
                     rows.kv_span);
  for (int g = 0; g < kRows; ++g) {
    float* state = rows.state[r + g];
    const float new_max = std::max(state[0], block_max[g]);
    rescale[g] = _mm256_cvtss_f32(avx2::ExpNonPositive(_mm256_set1_ps(state[0] - new_max)));
    state[0] = new_max;
    state[1] = state[1] * rescale[g] + SoftmaxNumerators(weights[g], count, new_max);
    accs[g] = state + 2;
  }
  int c = 0;
  for (; c + 32 <= hd; c += 32) {
    GroupAccumulateValues<kRows, 4>(weights, v_row, kv_stride, rows.kv_span, count, c, rescale, accs,
                                    c == 0 ? prefetch_rows : 0);
  }
  for (; c < hd; c += 8) {
    GroupAccumulateValues<kRows, 1>(weights, v_row, kv_stride, rows.kv_span, count, c, rescale, accs,
                                    c == 0 ? prefetch_rows : 0);
  }
}

// Whether rows a and b read the same keys of the same kv head.
inline bool SameKeys(const AttentionRows& rows, int a, int b) {
  return rows.kv_offset[a] == rows.kv_offset[b] && rows.first_key[a] == rows.first_key[b] &&
         rows.num_keys[a] == rows.num_keys[b];
}

}  // namespace

template <typename CacheT>
void AttendRowsAvx2(const AttentionRows& rows, const CacheT* k, const CacheT* v, int kv_stride,
                    int hd, int key_begin, int key_end) {
  alignas(32) float weights[kBlockKeys];
  // The item's first kPrefetchRows rows, before the loop starts requesting.
  const int first_rows = std::min(kPrefetchRows, key_end - key_begin);
  PrefetchRows(k + static_cast<size_t>(key_begin) * kv_stride, first_rows, kv_stride, rows.kv_span);
  PrefetchRows(v + static_cast<size_t>(key_begin) * kv_stride, first_rows, kv_stride, rows.kv_span);
  for (int block = key_begin; block < key_end; block += kBlockKeys) {
    const int block_end = std::min(block + kBlockKeys, key_end);
    // Rows block + kPrefetchRows + j, j < ahead, are still in the item.
    const int ahead = std::max(0, key_end - block - kPrefetchRows);
    const CacheT* k_rows = k + static_cast<size_t>(block) * kv_stride;
    const CacheT* v_rows = v + static_cast<size_t>(block) * kv_stride;
    for (int r = 0, run = 1; r < rows.count; r += run) {
      // Up to 3 consecutive rows reading the same keys of one kv head go
      // together (GroupBlock); 3 keeps their sums in the 16 ymm registers.
      run = 1;
      while (run < 3 && r + run < rows.count && SameKeys(rows, r, r + run)) ++run;
      const int skip = std::max(0, rows.first_key[r] - block);  // keys before the row's window
      const int count = std::min(block_end, rows.num_keys[r]) - block - skip;
      if (count <= 0) continue;
      // Row 0 (kv_offset 0) requests the next block's rows of every kv head
      // of the item; the other rows find the block in L1.
      const int prefetch_rows = r == 0 ? ahead : 0;
      const CacheT* k_row = k_rows + static_cast<size_t>(skip) * kv_stride + rows.kv_offset[r];
      const CacheT* v_row = v_rows + static_cast<size_t>(skip) * kv_stride + rows.kv_offset[r];
      if (run == 3) {
        GroupBlock<3>(rows, r, k_row, v_row, kv_stride, hd, count, prefetch_rows);
        continue;
      }
      if (run == 2) {
        GroupBlock<2>(rows, r, k_row, v_row, kv_stride, hd, count, prefetch_rows);
        continue;
      }
      float* state = rows.state[r];
      const float block_max =
          Scores(rows.query[r], k_row, kv_stride, hd, count, rows.scale, weights, prefetch_rows, rows.kv_span);
      const float new_max = std::max(state[0], block_max);
      // e^(m - m') for the acc so far: 0 for the first block (m = -inf, clamped
      // to e^-87 times an acc and l of 0).
      const float rescale = _mm256_cvtss_f32(avx2::ExpNonPositive(_mm256_set1_ps(state[0] - new_max)));
      state[0] = new_max;
      state[1] = state[1] * rescale + SoftmaxNumerators(weights, count, new_max);
      float* acc = state + 2;
      int c = 0;
      for (; c + 64 <= hd; c += 64) {
        AccumulateValues<8>(weights, v_row, kv_stride, rows.kv_span, count, c, rescale, acc, c == 0 ? prefetch_rows : 0);
      }
      for (; c < hd; c += 8) {
        AccumulateValues<1>(weights, v_row, kv_stride, rows.kv_span, count, c, rescale, acc, c == 0 ? prefetch_rows : 0);
      }
    }
  }
}

void StoreKvF16Avx2(const float* src, int n, uint16_t* dst) {
  int i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m128i h = _mm256_cvtps_ph(_mm256_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + i), h);
  }
  for (; i < n; ++i) dst[i] = F32ToF16(src[i]);
}

template void AttendRowsAvx2<float>(const AttentionRows&, const float*, const float*, int, int, int,
                                    int);
template void AttendRowsAvx2<uint16_t>(const AttentionRows&, const uint16_t*, const uint16_t*, int,
                                       int, int, int);

}  // namespace awqcore
