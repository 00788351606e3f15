// The AVX2 W4A8 int4 GEMV for group sizes 64 and 128 (contract: Int4RowsQ8*
// in linear_kernels.h; the arithmetic is described in int4_linear_avx2.cpp),
// included by int4_linear_avx2.cpp (AVX2 + FMA + F16C). Everything here has
// internal linkage.
#pragma once

#include <immintrin.h>

#include <cstddef>
#include <cstdint>
#include <cstring>

#include "ops/linear_kernels.h"
#include "ops/simd_avx2.h"

namespace awqcore {
namespace {

using avx2::Hsum;
using avx2::Hsum4;
using avx2::PrefetchBytes;
using avx2::PrefetchBytesToL2;

// The codes, scales and zeros of kRows consecutive rows from `row`.
template <int kRows>
struct RowPointers {
  RowPointers(const Int4Linear& layer, int row) {
    const int groups = layer.in / layer.group_size;
    #pragma GCC unroll 4
    for (int r = 0; r < kRows; ++r) {
      codes[r] = layer.qweight + static_cast<size_t>(row + r) * (layer.in / 2);
      scales[r] = layer.scales + static_cast<size_t>(row + r) * groups;
      zeros[r] = layer.zeros + static_cast<size_t>(row + r) * groups;
    }
  }
  const uint8_t* codes[kRows];
  const uint16_t* scales[kRows];
  const uint8_t* zeros[kRows];
};

// sum_g s[g] z[g] group_sums[g] over one row's groups, 8 groups per step as a
// vector (the caller subtracts it from the row's accumulator before the one
// horizontal sum). A scalar loop here would be one dependent FMA per group,
// ~4 cycles each: 40% of the W4A8 GEMV's time at g = 64 (perf annotate).
inline __m256 ZeroTerms(const uint16_t* scales, const uint8_t* zeros, const float* group_sums,
                        int groups) {
  __m256 sum = _mm256_setzero_ps();
  int g = 0;
  for (; g + 8 <= groups; g += 8) {
    const __m256 s = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(scales + g)));
    const __m256 z = _mm256_cvtepi32_ps(
        _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(zeros + g))));
    sum = _mm256_fmadd_ps(_mm256_mul_ps(s, z), _mm256_loadu_ps(group_sums + g), sum);
  }
  __m128 tail = _mm_setzero_ps();
  for (; g + 4 <= groups; g += 4) {
    uint32_t four_zeros;
    std::memcpy(&four_zeros, zeros + g, sizeof(four_zeros));
    const __m128 s = _mm_cvtph_ps(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(scales + g)));
    const __m128 z = _mm_cvtepi32_ps(_mm_cvtepu8_epi32(_mm_cvtsi32_si128(static_cast<int>(four_zeros))));
    tail = _mm_fmadd_ps(_mm_mul_ps(s, z), _mm_loadu_ps(group_sums + g), tail);
  }
  float last = 0.f;
  for (; g < groups; ++g) last += _cvtsh_ss(scales[g]) * static_cast<float>(zeros[g]) * group_sums[g];
  tail = _mm_add_ss(tail, _mm_set_ss(last));
  return _mm256_add_ps(sum, _mm256_castps128_ps256(tail));
}

// y[r] = sum(acc[r]) + bias[row + r]: the end of both GEMVs, whose
// accumulators already hold minus the zero-point terms (ZeroTerms).
template <int kRows>
void StoreRows(const Int4Linear& layer, int row, const __m256* acc, float* y) {
  float sums[kRows];
  if constexpr (kRows == 4) {
    _mm_storeu_ps(sums, Hsum4(acc[0], acc[1], acc[2], acc[3]));
  } else {
    for (int r = 0; r < kRows; ++r) sums[r] = Hsum(acc[r]);
  }
  for (int r = 0; r < kRows; ++r) {
    y[r] = sums[r] + (layer.bias ? layer.bias[row + r] : 0.f);
  }
}

// 64 weights of one row (32 code bytes at p) times the span's activations
// (xe: its even columns, xo: its odd ones) -> 8 int32: lanes 0-3 sum columns
// [0, 32) of the span, lanes 4-7 columns [32, 64).
// Dot64 in two steps, so that a batch splits each span's codes once:
// 32 code bytes -> their low nibbles (even columns) and high nibbles (odd).
struct Nibbles {
  __m256i lo, hi;
};
inline Nibbles SplitNibbles(const uint8_t* p) {
  const __m256i nibble = _mm256_set1_epi8(15);
  const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  return {_mm256_and_si256(v, nibble), _mm256_and_si256(_mm256_srli_epi16(v, 4), nibble)};
}
inline __m256i DotNibbles(Nibbles n, __m256i xe, __m256i xo) {
  const __m256i pairs = _mm256_add_epi16(_mm256_maddubs_epi16(n.lo, xe), _mm256_maddubs_epi16(n.hi, xo));
  return _mm256_madd_epi16(pairs, _mm256_set1_epi16(1));
}
inline __m256i Dot64(const uint8_t* p, __m256i xe, __m256i xo) {
  return DotNibbles(SplitNibbles(p), xe, xo);
}

// [d_0 x4, d_1 x4] for the two 32-column blocks of a span.
inline __m256 HalfSpanPair(float d0, float d1) {
  return _mm256_insertf128_ps(_mm256_castps128_ps256(_mm_set1_ps(d0)), _mm_set1_ps(d1), 1);
}

// kRows (1 or 4) rows from `row`, kTokens (1, 2 or 4) tokens from t, group
// sizes 64 and 128 (one or two spans per group, a weight scale per group):
// y[k][r] = W[row + r] . a_{t+k} (+ bias). With two tokens (batched decode)
// each span's codes are loaded and split into nibbles once for both; the
// per-token arithmetic is the same for kTokens 1 and 2, so a token's outputs
// do not depend on its batch (bit for bit).
// GCC does not fully unroll the row loops by itself; left as loops, the
// accumulators live on the stack (a load and a store around every FMA) and
// the kernel measured 1.35x slower (10.3 vs 7.6 GMAC/s, one core, in L2).
template <int kRows, int kTokens>
void Q8GemvGroups(const Int4Linear& layer, int row, const Q8Activations& x, int t,
                  float* const* y) {
  const int gs = layer.group_size;
  const int groups = layer.in / gs;
  const int spans_per_group = gs / kQ8Span;
  const int8_t* xq[kTokens];         // [in], permuted
  const float* d[kTokens];           // [in / 32]
  const float* group_sums[kTokens];  // [groups]
  for (int k = 0; k < kTokens; ++k) {
    xq[k] = x.q + static_cast<size_t>(t + k) * layer.in;
    d[k] = x.block_scales + static_cast<size_t>(t + k) * (layer.in / kQ8Block);
    group_sums[k] = x.group_sums + static_cast<size_t>(t + k) * groups;
  }
  const RowPointers<kRows> rows(layer, row);
  const bool near = 2 * layer.in <= kL1PrefetchBlockBytes;  // the next block's 4 rows, in / 2 bytes each
  __m256 acc[kTokens][kRows];
  #pragma GCC unroll 2
  for (int k = 0; k < kTokens; ++k) {
    #pragma GCC unroll 4
    for (int r = 0; r < kRows; ++r) acc[k][r] = _mm256_setzero_ps();
  }
  for (int g = 0; g < groups; ++g) {
    __m256 group_acc[kTokens][kRows];
    #pragma GCC unroll 2
    for (int k = 0; k < kTokens; ++k) {
      #pragma GCC unroll 4
      for (int r = 0; r < kRows; ++r) group_acc[k][r] = _mm256_setzero_ps();
    }
    for (int sp = g * spans_per_group; sp < (g + 1) * spans_per_group; ++sp) {
      if (kRows == 4) {  // the next 4 rows' codes, 128 bytes per span (see header)
        const uint8_t* next = rows.codes[0] + 2 * layer.in + sp * 128;
        if (near) {
          PrefetchBytes(next, 128);
        } else {
          PrefetchBytesToL2(next, 128);
        }
      }
      __m256 dv[kTokens];
      #pragma GCC unroll 2
      for (int k = 0; k < kTokens; ++k) dv[k] = HalfSpanPair(d[k][2 * sp], d[k][2 * sp + 1]);
      #pragma GCC unroll 4
      for (int r = 0; r < kRows; ++r) {
        const Nibbles codes = SplitNibbles(rows.codes[r] + sp * 32);
        #pragma GCC unroll 2
        for (int k = 0; k < kTokens; ++k) {
          const __m256i xe = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xq[k] + sp * kQ8Span));
          const __m256i xo = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xq[k] + sp * kQ8Span + 32));
          const __m256 dots = _mm256_cvtepi32_ps(DotNibbles(codes, xe, xo));
          group_acc[k][r] = _mm256_fmadd_ps(dots, dv[k], group_acc[k][r]);
        }
      }
    }
    #pragma GCC unroll 4
    for (int r = 0; r < kRows; ++r) {
      const __m256 s = _mm256_set1_ps(_cvtsh_ss(rows.scales[r][g]));
      #pragma GCC unroll 2
      for (int k = 0; k < kTokens; ++k) acc[k][r] = _mm256_fmadd_ps(s, group_acc[k][r], acc[k][r]);
    }
  }
  #pragma GCC unroll 2
  for (int k = 0; k < kTokens; ++k) {
    #pragma GCC unroll 4
    for (int r = 0; r < kRows; ++r) {  // minus sum_g s z (sum of a over g)
      acc[k][r] = _mm256_sub_ps(acc[k][r], ZeroTerms(rows.scales[r], rows.zeros[r], group_sums[k], groups));
    }
    StoreRows<kRows>(layer, row, acc[k], y[k]);
  }
}

}  // namespace
}  // namespace awqcore
