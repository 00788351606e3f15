// AVX-512 body of the attention work item (AttendRowsAvx512, attention.h)
// for head_dim % 16 == 0 and hd <= kAvx512MaxHeadDim. A block takes
// 4096 / hd keys (at most 64: 64 at hd 64, 32 at 128, 16 at 256), and per
// run of rows reading one kv head (a GQA group; several tokens of a prefill
// chunk):
//   keys: an f16 block converts to f32 once per run (vcvtph2ps: 16 halves ->
//     16 floats, exact) into an L1 buffer the run's rows share, instead of
//     once per row; an f32 cache is read in place;
//   scores: per row and 16 keys, 16 accumulators (hd/16 FMAs each) reduced
//     together by a transpose tree (46 shuffles and adds for 16 dots, ~3 per
//     dot instead of ~8 for a reduction per key) into one vector of 16
//     scores; the maximum, exp and sum of the online softmax take the whole
//     block at once, so their latency is paid once per 64 keys, not per 16
//     (16-key blocks ran 15% slower than AVX2 in the L2-resident case);
//   values: up to kValueRows rows of the run at once, each with 64 columns of
//     acc in 4 zmm registers: a V row's 64 columns convert once for all of
//     them, and a key costs 4 conversions and 4 FMAs per row.
// Rows whose keys in the block differ (the causal diagonal of a prefill
// chunk, a window's edge) accumulate values one row at a time over their own
// keys, so a key a row does not read never enters its sums (not even as
// 0 * v, which is NaN for an infinite f16 value).
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstddef>

#include "ops/attention.h"

namespace awqcore {
namespace {

constexpr int kKeys = 16;          // keys per score vector
constexpr int kMaxBlockKeys = 64;  // keys per block at most
constexpr int kBlockFloats = 4096; // a block's f32 keys: 16 KiB of L1
constexpr int kValueRows = 4;      // rows per value pass: 4 x 4 accumulators
constexpr int kPrefetchKeys = 32;  // how far ahead (in keys) a block requests rows, at least

// e^x for 16 lanes of x <= 0 (the scores minus their maximum), as the AVX2
// ExpNonPositive (simd_avx2.h): Cephes' expf, x clamped at -87 so 2^n stays
// normal; relative error ~1e-7.
inline __m512 ExpNonPositive(__m512 x) {
  x = _mm512_max_ps(_mm512_set1_ps(-87.0f), x);
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.9875691500e-4f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
  const __m512 y = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.f)));
  return _mm512_scalef_ps(y, n);  // y * 2^n
}

inline __m512 Load16(const float* p) { return _mm512_loadu_ps(p); }
inline __m512 Load16(const uint16_t* p) {
  return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
}

// Requests [p, p + bytes) into L2. The weights streamed since the last
// token have evicted the cache rows; into L1 (T0) a block's requests wait
// for its few fill buffers, and without requests the hardware prefetcher
// leaves the kernel waiting on DRAM: per decode step at SmolLM2's shape
// (attention_bench, 1 thread, CPU time, interleaved runs), L2 requests 1.39
// / 1.41 ms at 512 keys against 1.46 / 1.56 into L1 and 1.94 / 2.14 with
// none.
inline void Prefetch(const void* p, int bytes) {
  const char* c = static_cast<const char*>(p);
  for (int b = 0; b < bytes; b += 64) _mm_prefetch(c + b, _MM_HINT_T1);
}

// The cache rows a value pass requests as it goes: rows j < `rows` of
// k / v, `bytes` from each (the item's kv heads), `stride` elements apart.
template <typename CacheT>
struct Ahead {
  const CacheT* k = nullptr;
  const CacheT* v = nullptr;
  int rows = 0, stride = 0, bytes = 0;
};

// Pairs (x[2i], x[2i + 1]) -> one vector whose 128-bit lanes hold partial
// sums: lanes 0-1 of x[2i], lanes 2-3 of x[2i + 1].
inline __m512 FoldHalves(__m512 a, __m512 b) {
  return _mm512_add_ps(_mm512_shuffle_f32x4(a, b, 0x44), _mm512_shuffle_f32x4(a, b, 0xEE));
}
inline __m512 FoldLanes(__m512 a, __m512 b) {
  return _mm512_add_ps(_mm512_shuffle_f32x4(a, b, 0x88), _mm512_shuffle_f32x4(a, b, 0xDD));
}

// [sum(x[0]), ..., sum(x[15])]. After the two lane folds z[i] holds keys
// 4i .. 4i + 3 in its four 128-bit lanes; the in-lane folds leave key
// l + 4e in lane l, element e, which the final permutation puts in order.
inline __m512 Sum16(const __m512* x) {
  __m512 y[8], z[4];
  for (int i = 0; i < 8; ++i) y[i] = FoldHalves(x[2 * i], x[2 * i + 1]);
  for (int i = 0; i < 4; ++i) z[i] = FoldLanes(y[2 * i], y[2 * i + 1]);
  const __m512 w0 = _mm512_add_ps(_mm512_unpacklo_ps(z[0], z[1]), _mm512_unpackhi_ps(z[0], z[1]));
  const __m512 w1 = _mm512_add_ps(_mm512_unpacklo_ps(z[2], z[3]), _mm512_unpackhi_ps(z[2], z[3]));
  const __m512d d0 = _mm512_castps_pd(w0), d1 = _mm512_castps_pd(w1);
  const __m512 u = _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(d0, d1)),
                                 _mm512_castpd_ps(_mm512_unpackhi_pd(d0, d1)));
  // Element 4l + e holds key l + 4e; key j sits at 4 (j % 4) + j / 4.
  const __m512i order = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
  return _mm512_permutexvar_ps(order, u);
}

// The block's 16 scores of one row: q . key_rows[j] for j < 16 (rows past
// the block's end point at a valid row; the caller masks them).
inline __m512 Scores16(const float* query, const float* const* key_rows, int hd) {
  __m512 sums[kKeys];
  const __m512 q0 = _mm512_loadu_ps(query);
  for (int j = 0; j < kKeys; ++j) sums[j] = _mm512_mul_ps(q0, _mm512_loadu_ps(key_rows[j]));
  for (int c = 16; c < hd; c += 16) {
    const __m512 qc = _mm512_loadu_ps(query + c);
    for (int j = 0; j < kKeys; ++j) sums[j] = _mm512_fmadd_ps(qc, _mm512_loadu_ps(key_rows[j] + c), sums[j]);
  }
  return Sum16(sums);
}

// acc_r[c .. c + 16 kVecs) = rescale[r] acc_r[c ..] + sum_{j in [j0, j1)}
// weights[r][j] v_j[c ..] for kRows rows; v_rows[j] points at key j's value
// row of the rows' kv head. kRows x kVecs <= 16 accumulators.
template <int kRows, int kVecs, typename CacheT>
void AccumulateValues(float* const* acc, const float* const* weights, const float* rescale,
                      const CacheT* const* v_rows, int j0, int j1, int c, const Ahead<CacheT>& ahead) {
  __m512 sums[kRows][kVecs];
  for (int r = 0; r < kRows; ++r) {
    const __m512 s = _mm512_set1_ps(rescale[r]);
    for (int k = 0; k < kVecs; ++k) sums[r][k] = _mm512_mul_ps(s, _mm512_loadu_ps(acc[r] + c + 16 * k));
  }
  for (int j = j0; j < j1; ++j) {
    if (j < ahead.rows) {
      Prefetch(ahead.k + static_cast<size_t>(j) * ahead.stride, ahead.bytes);
      Prefetch(ahead.v + static_cast<size_t>(j) * ahead.stride, ahead.bytes);
    }
    __m512 value[kVecs];
    for (int k = 0; k < kVecs; ++k) value[k] = Load16(v_rows[j] + c + 16 * k);
    for (int r = 0; r < kRows; ++r) {
      const __m512 w = _mm512_set1_ps(weights[r][j]);
      for (int k = 0; k < kVecs; ++k) sums[r][k] = _mm512_fmadd_ps(w, value[k], sums[r][k]);
    }
  }
  for (int r = 0; r < kRows; ++r) {
    for (int k = 0; k < kVecs; ++k) _mm512_storeu_ps(acc[r] + c + 16 * k, sums[r][k]);
  }
}

template <int kRows, typename CacheT>
void AccumulateColumns(float* const* acc, const float* const* weights, const float* rescale,
                       const CacheT* const* v_rows, int j0, int j1, int hd, const Ahead<CacheT>& ahead) {
  const Ahead<CacheT> none{};
  int c = 0;
  for (; c + 64 <= hd; c += 64) {
    AccumulateValues<kRows, 4>(acc, weights, rescale, v_rows, j0, j1, c, c == 0 ? ahead : none);
  }
  for (; c < hd; c += 16) {
    AccumulateValues<kRows, 1>(acc, weights, rescale, v_rows, j0, j1, c, c == 0 ? ahead : none);
  }
}

// AccumulateColumns for count (1 .. kValueRows) rows.
template <typename CacheT>
void AccumulateRows(int count, float* const* acc, const float* const* weights, const float* rescale,
                    const CacheT* const* v_rows, int j0, int j1, int hd, const Ahead<CacheT>& ahead) {
  switch (count) {
    case 1: AccumulateColumns<1>(acc, weights, rescale, v_rows, j0, j1, hd, ahead); break;
    case 2: AccumulateColumns<2>(acc, weights, rescale, v_rows, j0, j1, hd, ahead); break;
    case 3: AccumulateColumns<3>(acc, weights, rescale, v_rows, j0, j1, hd, ahead); break;
    default: AccumulateColumns<4>(acc, weights, rescale, v_rows, j0, j1, hd, ahead); break;
  }
}

}  // namespace

template <typename CacheT>
void AttendRowsAvx512(const AttentionRows& rows, const CacheT* k, const CacheT* v, int kv_stride,
                      int hd, int key_begin, int key_end) {
  // Keys per block: kBlockFloats / hd of them, a multiple of 16, at most
  // kMaxBlockKeys (64 at hd <= 64, 32 at 128, 16 at 256).
  const int block_keys = std::min(kMaxBlockKeys, std::max(kKeys, kBlockFloats / hd / kKeys * kKeys));
  // The run's keys as f32 rows: [block_keys, hd] (an f16 cache; f32 is read in place).
  alignas(64) float key_buffer[kBlockFloats];
  alignas(64) float weights[kMaxRows][kMaxBlockKeys];
  float rescale[kMaxRows];
  int lo[kMaxRows], hi[kMaxRows];  // the row's keys in the block: [lo, hi) of 0 .. block_keys
  const float* key_rows[kMaxBlockKeys];
  const CacheT* value_rows[kMaxBlockKeys];
  const int span_bytes = rows.kv_span * static_cast<int>(sizeof(CacheT));
  const int ahead = std::max(kPrefetchKeys, block_keys);
  for (int j = key_begin; j < std::min(key_end, key_begin + ahead); ++j) {
    Prefetch(k + static_cast<size_t>(j) * kv_stride, span_bytes);
    Prefetch(v + static_cast<size_t>(j) * kv_stride, span_bytes);
  }
  for (int block = key_begin; block < key_end; block += block_keys) {
    const int n = std::min(block_keys, key_end - block);
    const int vectors = (n + kKeys - 1) / kKeys;  // score vectors per row
    // The rows `ahead` keys on, every kv head of the item, requested by the
    // first value pass of the block as it goes (a burst of requests at the
    // block's start waits for free fill buffers).
    Ahead<CacheT> next;
    next.k = k + static_cast<size_t>(block + ahead) * kv_stride;
    next.v = v + static_cast<size_t>(block + ahead) * kv_stride;
    next.rows = std::max(0, std::min(block_keys, key_end - block - ahead));
    next.stride = kv_stride;
    next.bytes = span_bytes;
    for (int r = 0; r < rows.count; ++r) {
      lo[r] = std::max(0, rows.first_key[r] - block);
      hi[r] = std::min(n, rows.num_keys[r] - block);
    }
    for (int run = 0; run < rows.count;) {
      int run_end = run + 1;
      while (run_end < rows.count && rows.kv_offset[run_end] == rows.kv_offset[run]) ++run_end;
      const int offset = rows.kv_offset[run];
      for (int j = 0; j < vectors * kKeys; ++j) {
        const int key = std::min(j, n - 1);  // keys past the block's end repeat its last (masked)
        const size_t row = static_cast<size_t>(block + key) * kv_stride + offset;
        value_rows[j] = v + row;
        if constexpr (sizeof(CacheT) == sizeof(float)) {
          key_rows[j] = reinterpret_cast<const float*>(k + row);
        } else {
          key_rows[j] = key_buffer + static_cast<size_t>(key) * hd;
          if (j < n) {
            for (int c = 0; c < hd; c += 16) _mm512_store_ps(key_buffer + j * hd + c, Load16(k + row + c));
          }
        }
      }
      // Scores and the online softmax: the block's maximum and exp over all
      // its score vectors at once.
      for (int r = run; r < run_end; ++r) {
        if (hi[r] <= lo[r]) continue;  // reads no key of this block
        const uint64_t reads = (hi[r] == 64 ? ~0ull : (1ull << hi[r]) - 1) & ~((1ull << lo[r]) - 1);
        __m512 scores[kMaxBlockKeys / kKeys];
        __m512 block_max = _mm512_set1_ps(-INFINITY);
        for (int i = 0; i < vectors; ++i) {
          const __mmask16 mask = static_cast<__mmask16>(reads >> (kKeys * i));
          scores[i] = _mm512_mul_ps(Scores16(rows.query[r], key_rows + kKeys * i, hd), _mm512_set1_ps(rows.scale));
          block_max = _mm512_mask_max_ps(block_max, mask, block_max, scores[i]);
        }
        float* state = rows.state[r];
        const float new_max = std::max(state[0], _mm512_reduce_max_ps(block_max));
        const __m512 max16 = _mm512_set1_ps(new_max);
        // e^(m - m') for the acc so far: 0 for the first block (m = -inf,
        // clamped to e^-87 times an acc and l of 0).
        rescale[r] = _mm512_cvtss_f32(ExpNonPositive(_mm512_set1_ps(state[0] - new_max)));
        __m512 sum = _mm512_setzero_ps();
        for (int i = 0; i < vectors; ++i) {
          const __mmask16 mask = static_cast<__mmask16>(reads >> (kKeys * i));
          const __m512 e = _mm512_maskz_mov_ps(mask, ExpNonPositive(_mm512_sub_ps(scores[i], max16)));
          _mm512_store_ps(weights[r] + kKeys * i, e);
          sum = _mm512_add_ps(sum, e);
        }
        state[0] = new_max;
        state[1] = state[1] * rescale[r] + _mm512_reduce_add_ps(sum);
      }
      // Values: rows reading the same keys together, the others alone.
      for (int r = run; r < run_end;) {
        if (hi[r] <= lo[r]) {
          ++r;
          continue;
        }
        float* acc[kValueRows];
        const float* row_weights[kValueRows];
        int count = 0;
        for (; r < run_end && count < kValueRows; ++r) {
          if (count > 0 && (lo[r] != lo[r - count] || hi[r] != hi[r - count])) break;
          acc[count] = rows.state[r] + 2;
          row_weights[count++] = weights[r];
        }
        AccumulateRows(count, acc, row_weights, rescale + (r - count), value_rows, lo[r - count],
                       hi[r - count], hd, next);
        next.rows = 0;
      }
      run = run_end;
    }
  }
}

template void AttendRowsAvx512<float>(const AttentionRows&, const float*, const float*, int, int,
                                      int, int);
template void AttendRowsAvx512<uint16_t>(const AttentionRows&, const uint16_t*, const uint16_t*,
                                         int, int, int, int);

}  // namespace awqcore
