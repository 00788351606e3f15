// The AVX-512 (F + BW + VL + DQ) W4A8 int4 GEMV (contract: Int4RowsQ8* in
// linear_kernels.h), included by int4_linear_avx512.cpp; everything here has
// internal linkage. (With VNNI, decode takes int4_decode_q8_avx512vnni.cpp's
// lanes per row instead.) Decode is memory-bound, and the ops use this body only for the shapes where
// it streams faster than the AVX2 one (Avx512Pays, int4_linear.cpp).
//
// A step is 128 columns of a row: 64 code bytes, one 512-bit load, which is
// two of the activations' 64-column spans (q8_activations.h: each span holds
// [16 even columns of block 0 | 16 even of block 1 | 16 odd of 0 | 16 odd of
// 1]). The low nibbles of the 64 bytes are the even columns of both spans in
// that order, the high nibbles the odd ones, so with
//   xe = [even halves of span 0 | span 1]  (two 32-byte loads, per token and
//   xo = [odd halves of span 0 | span 1]    step, shared by the rows)
// the 16 int32 lanes of the dot products hold 4 columns each, lanes 4k..4k+3
// belonging to the step's 32-column block k:
//   vpmaddwd(vpmaddubsw(lo, xe) + vpmaddubsw(hi, xo), 1): int16 pairs of at
//   most 2 * 15 * 127 = 3810, their sum 7620 < 2^15, no saturation: exact. Each lane is then converted and multiplied into its row's
// accumulator by d_b s_g ([d_0 x4, .., d_3 x4] times the step's weight
// scales spread the same way: 4, 2 or 1 groups per step at g = 32, 64, 128),
// and the zero point leaves the loop as in the AVX2 kernel:
// sum_c (q - z) s a_c = s (sum_c q a_c) - s z (sum_c a_c), with the group sums
// of the rounded activations precomputed, 16 groups per vector. A width that
// is an odd number of spans ends with a half step: masked loads read its 32
// code bytes, 2 block scales and its groups' weight scales, and never touch
// memory past them. Per step and row: 1 load, shift + 2 and, 2 vpmaddubsw,
// add, vpmaddwd, convert, the scale load, vcvtph2ps, permute, multiply, FMA:
// 13 uops per 128 weights, against the AVX2 kernel's 18.
//
// 4 rows x 1, 2 or 4 tokens share each step: a row block's codes are loaded
// once for up to 4 tokens (batched decode; 16 accumulators, 1.15-1.25x the
// pairs' speed at 4 and 8 tokens per CPU-second, interleaved, Zen 4), and the
// per-token arithmetic is the same in every form, so a token's outputs do not
// depend on its batch (bit for bit). Each step prefetches the next row block's 256 bytes at the same
// offset (the 4 rows are contiguous, so the next block is the next 2 * in
// bytes), keeping the 4 interleaved row streams ahead of the computation as
// the AVX2 kernel does (into L1, or L2 for long rows: kL1PrefetchBlockBytes).
#pragma once

// GCC 12's AVX-512 intrinsics start from _mm512_undefined_*() values, which
// its -Wuninitialized flags after inlining (GCC bug 105593, fixed in 13):
// silenced for this file's user only (the kernel file).
#if defined(__GNUC__) && !defined(__clang__) && __GNUC__ < 13
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include <immintrin.h>

#include <cstddef>
#include <cstdint>

#include "ops/linear_kernels.h"

namespace awqcore {
namespace {

constexpr int kStepColumns = 128;
constexpr int kStepBytes = kStepColumns / 2;

// The 16 int32 dot products of one step (layout above) for one row.
inline __m512i DotStep(__m512i codes, __m512i xe, __m512i xo) {
  const __m512i nibble = _mm512_set1_epi8(15);
  const __m512i lo = _mm512_and_si512(codes, nibble);
  const __m512i hi = _mm512_and_si512(_mm512_srli_epi16(codes, 4), nibble);
  const __m512i pairs = _mm512_add_epi16(_mm512_maddubs_epi16(lo, xe), _mm512_maddubs_epi16(hi, xo));
  return _mm512_madd_epi16(pairs, _mm512_set1_epi16(1));
}

// sum_g s[g] z[g] group_sums[g] over one row's groups, 16 lanes (the caller
// subtracts it from the row's accumulator before the one horizontal sum).
inline __m512 ZeroTerms(const uint16_t* scales, const uint8_t* zeros, const float* group_sums,
                        int groups) {
  __m512 sum = _mm512_setzero_ps();
  for (int g = 0; g < groups; g += 16) {
    const __mmask16 m = groups - g >= 16 ? __mmask16(0xffff) : __mmask16((1u << (groups - g)) - 1);
    const __m512 s = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, scales + g));
    const __m512 z = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(m, zeros + g)));
    sum = _mm512_fmadd_ps(_mm512_mul_ps(s, z), _mm512_maskz_loadu_ps(m, group_sums + g), sum);
  }
  return sum;
}

// kRows (1 or 4) rows from `row`, kTokens (1, 2 or 4) tokens from t:
// y[k][r] = W[row + r] . a_{t+k} (+ bias).
template <int kRows, int kTokens>
void Q8GemvSteps(const Int4Linear& layer, int row, const Q8Activations& x, int t, float* const* y) {
  const int gs = layer.group_size;
  const int groups = layer.in / gs;
  const int row_bytes = layer.in / 2;
  const bool near = 4 * row_bytes <= kL1PrefetchBlockBytes;
  const uint8_t* codes[kRows];
  const uint16_t* scales[kRows];
  const uint8_t* zeros[kRows];
  #pragma GCC unroll 4
  for (int r = 0; r < kRows; ++r) {
    codes[r] = layer.qweight + static_cast<size_t>(row + r) * row_bytes;
    scales[r] = layer.scales + static_cast<size_t>(row + r) * groups;
    zeros[r] = layer.zeros + static_cast<size_t>(row + r) * groups;
  }
  const int8_t* xq[kTokens];  // [in], permuted
  const float* d[kTokens];    // [in / 32]
  #pragma GCC unroll 4
  for (int k = 0; k < kTokens; ++k) {
    xq[k] = x.q + static_cast<size_t>(t + k) * layer.in;
    d[k] = x.block_scales + static_cast<size_t>(t + k) * (layer.in / kQ8Block);
  }
  // Lane l holds columns of block l / 4 of the step: its activation scale is
  // d[l / 4], its weight scale that of group (l / 4) * 32 / gs.
  const __m512i block_of_lane = _mm512_srli_epi32(
      _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15), 2);
  const __m512i group_of_lane = _mm512_srli_epi32(
      _mm512_mullo_epi32(block_of_lane, _mm512_set1_epi32(kQ8Block)), __builtin_ctz(gs));
  __m512 acc[kTokens][kRows];
  #pragma GCC unroll 4
  for (int k = 0; k < kTokens; ++k) {
    #pragma GCC unroll 4
    for (int r = 0; r < kRows; ++r) acc[k][r] = _mm512_setzero_ps();
  }
  for (int c = 0; c < layer.in; c += kStepColumns) {
    const bool half = layer.in - c < kStepColumns;  // one 64-column span left
    const int byte = c / 2;
    if (kRows == 4) {  // the next row block, 4 rows x 64 bytes at this offset
      const char* next = reinterpret_cast<const char*>(codes[0] + 4 * static_cast<size_t>(row_bytes) + 4 * byte);
      if (near) {
        #pragma GCC unroll 4
        for (int i = 0; i < 4; ++i) _mm_prefetch(next + 64 * i, _MM_HINT_T0);
      } else {
        #pragma GCC unroll 4
        for (int i = 0; i < 4; ++i) _mm_prefetch(next + 64 * i, _MM_HINT_T1);
      }
    }
    __m512i xe[kTokens], xo[kTokens];
    __m512 dv[kTokens];
    #pragma GCC unroll 4
    for (int k = 0; k < kTokens; ++k) {
      const int8_t* span = xq[k] + c;
      const __m256i e0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(span));
      const __m256i o0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(span + 32));
      const __m128 d4 = half ? _mm_maskz_loadu_ps(0x3, d[k] + c / kQ8Block)
                             : _mm_loadu_ps(d[k] + c / kQ8Block);
      dv[k] = _mm512_permutexvar_ps(block_of_lane, _mm512_castps128_ps512(d4));
      if (half) {
        xe[k] = _mm512_zextsi256_si512(e0);
        xo[k] = _mm512_zextsi256_si512(o0);
      } else {
        const __m256i e1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(span + 64));
        const __m256i o1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(span + 96));
        xe[k] = _mm512_inserti64x4(_mm512_castsi256_si512(e0), e1, 1);
        xo[k] = _mm512_inserti64x4(_mm512_castsi256_si512(o0), o1, 1);
      }
    }
    const int step_groups = (half ? kStepColumns / 2 : kStepColumns) / gs;  // >= 1
    const __mmask8 scale_mask = static_cast<__mmask8>((1u << step_groups) - 1);
    #pragma GCC unroll 4
    for (int r = 0; r < kRows; ++r) {
      const __m512i w = half ? _mm512_maskz_loadu_epi8(0xffffffffull, codes[r] + byte)
                             : _mm512_loadu_si512(codes[r] + byte);
      const __m128 s4 = _mm_cvtph_ps(_mm_maskz_loadu_epi16(scale_mask, scales[r] + c / gs));
      const __m512 sv = _mm512_permutexvar_ps(group_of_lane, _mm512_castps128_ps512(s4));
      #pragma GCC unroll 4
      for (int k = 0; k < kTokens; ++k) {
        const __m512 dots = _mm512_cvtepi32_ps(DotStep(w, xe[k], xo[k]));
        acc[k][r] = _mm512_fmadd_ps(dots, _mm512_mul_ps(dv[k], sv), acc[k][r]);
      }
    }
  }
  #pragma GCC unroll 4
  for (int k = 0; k < kTokens; ++k) {
    const float* group_sums = x.group_sums + static_cast<size_t>(t + k) * groups;
    #pragma GCC unroll 4
    for (int r = 0; r < kRows; ++r) {  // minus sum_g s z (sum of a over g)
      const __m512 row_sum = _mm512_sub_ps(acc[k][r], ZeroTerms(scales[r], zeros[r], group_sums, groups));
      y[k][r] = _mm512_reduce_add_ps(row_sum) + (layer.bias ? layer.bias[row + r] : 0.f);
    }
  }
}

// The whole Int4RowsQ8* contract: 4-row blocks with tokens in fours, then a
// pair, then the odd token, then the rows left one at a time.
inline void Int4RowsQ8Avx512Body(const Int4Linear& layer, int row0, int rows, const Q8Activations& x,
                                 float* y, int ldy) {
  int r = 0;
  for (; r + 4 <= rows; r += 4) {
    int t = 0;
    for (; t + 4 <= x.num_tokens; t += 4) {
      float* const ys[4] = {y + static_cast<size_t>(t) * ldy + r, y + static_cast<size_t>(t + 1) * ldy + r,
                            y + static_cast<size_t>(t + 2) * ldy + r, y + static_cast<size_t>(t + 3) * ldy + r};
      Q8GemvSteps<4, 4>(layer, row0 + r, x, t, ys);
    }
    for (; t + 2 <= x.num_tokens; t += 2) {
      float* const ys[2] = {y + static_cast<size_t>(t) * ldy + r, y + static_cast<size_t>(t + 1) * ldy + r};
      Q8GemvSteps<4, 2>(layer, row0 + r, x, t, ys);
    }
    for (; t < x.num_tokens; ++t) {
      float* const ys[1] = {y + static_cast<size_t>(t) * ldy + r};
      Q8GemvSteps<4, 1>(layer, row0 + r, x, t, ys);
    }
  }
  for (; r < rows; ++r) {
    for (int t = 0; t < x.num_tokens; ++t) {
      float* const ys[1] = {y + static_cast<size_t>(t) * ldy + r};
      Q8GemvSteps<1, 1>(layer, row0 + r, x, t, ys);
    }
  }
}

}  // namespace
}  // namespace awqcore
