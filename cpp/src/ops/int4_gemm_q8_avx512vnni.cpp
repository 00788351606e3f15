// AVX-512 VNNI W4A8 GEMM: int4 weights times int8 activations
// (ops/q8_activations.h) for many tokens at once (prefill, batched decode);
// contract in linear_kernels.h. Compiled with -mavx512f -mavx512bw
// -mavx512vl -mavx512vnni (and the AVX2 flags); call only when the CPU has
// them.
//
// Why: prefill is compute-bound. The f32 tile GEMM does 8 multiply-adds per
// uop (one ymm FMA); here one vpdpbusd multiplies 64 unsigned 4-bit codes by
// 64 int8 activations and adds them in groups of four to 16 int32 lanes, so
// two rows x 64 columns of one token cost 2 vpdpbusd (low and high nibbles)
// + 1 convert + 1 FMA by the activation scales: 32 multiply-adds per uop.
// The weights of a 4-row block are loaded and split into nibbles once per
// span and used for up to kChunkTokens tokens from registers; the block's
// codes (4 x in / 2 bytes) stay in L1 for the next chunk of tokens, and a
// slice of kSliceTokens tokens' activations (kSliceTokens x in bytes) in L2
// for the next row block.
//
// Register layout: a zmm holds two rows' 64-column span, [row a | row b],
// each half exactly the ymm of the AVX2 W4A8 GEMV (int4_linear_avx2.cpp):
// int32 lane j of a half sums the products of code bytes 4j..4j+3 (low and
// high nibbles), i.e. lanes 0-3 the columns of the span's first 32-column
// block, lanes 4-7 of its second; the float accumulation per lane (by d_b,
// then by the group's weight scale, or by d_b s per half span at g = 32),
// the zero-point term and the horizontal sums repeat the GEMV's operations
// in its order. So every token's outputs are bit-identical to the GEMV's for
// that token alone, whatever the number of tokens in the call (batched
// decode computes each sequence exactly as alone; test_gemm_kernels checks
// it bit for bit).
// GCC 12's AVX-512 intrinsics (inserti64x4, permutexvar, broadcast_i64x4,
// cvtepi32_ps) start from _mm512_undefined_*() and warn about it where they
// are inlined (GCC bug 105593, fixed in GCC 13): silenced for this file.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <cstring>

#include "ops/linear_kernels.h"

namespace awqcore {
namespace {

constexpr int kChunkTokens = 4;   // tokens per micro-kernel call: 4 rows x 4 tokens
constexpr int kSliceTokens = 64;  // tokens whose activations stay in L2 across row blocks

// The helpers below repeat int4_linear_avx2.cpp's (HalfSpanPair, ZeroTerms,
// StoreRows and simd_avx2.h's Hsum4/Hsum) operation for operation, so the
// results are the GEMV's bit for bit. Internal linkage: this file is
// compiled with AVX-512 flags, so its inline functions must not merge with
// the AVX2 files' (one-definition rule).

// [sum(a), sum(b), sum(c), sum(d)]
__m128 Hsum4(__m256 a, __m256 b, __m256 c, __m256 d) {
  const __m256 abcd = _mm256_hadd_ps(_mm256_hadd_ps(a, b), _mm256_hadd_ps(c, d));
  return _mm_add_ps(_mm256_castps256_ps128(abcd), _mm256_extractf128_ps(abcd, 1));
}

float Hsum(__m256 a) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// sum_g s[g] z[g] group_sums[g] over one row's groups, as 8 lanes (8 groups
// per step), then 4, then a scalar tail in lane 0.
__m256 ZeroTerms(const uint16_t* scales, const uint8_t* zeros, const float* group_sums,
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
  float last = 0.f;  // the same expression as the GEMV's, so the compiler contracts it alike
  for (; g < groups; ++g) last += _cvtsh_ss(scales[g]) * static_cast<float>(zeros[g]) * group_sums[g];
  tail = _mm_add_ss(tail, _mm_set_ss(last));
  return _mm256_add_ps(sum, _mm256_castps128_ps256(tail));
}

// The codes, scales and zeros of a 4-row block; rows past the matrix's end
// (a short last block) repeat its last row, computed and never stored.
struct BlockRows {
  BlockRows(const Int4Linear& layer, int row, int rows) {
    const int groups = layer.in / layer.group_size;
    for (int r = 0; r < 4; ++r) {
      const size_t rr = static_cast<size_t>(row + std::min(r, rows - 1));
      codes[r] = layer.qweight + rr * (layer.in / 2);
      scales[r] = layer.scales + rr * groups;
      zeros[r] = layer.zeros + rr * groups;
    }
  }
  const uint8_t* codes[4];
  const uint16_t* scales[4];
  const uint8_t* zeros[4];
};

// Rows a and b's 32 code bytes of one span as [a | b], split into low
// nibbles (even columns) and high nibbles (odd columns).
struct PairNibbles {
  __m512i lo, hi;
};
inline PairNibbles LoadPair(const uint8_t* a, const uint8_t* b) {
  const __m512i v = _mm512_inserti64x4(
      _mm512_zextsi256_si512(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(a))),
      _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b)), 1);
  const __m512i nibble = _mm512_set1_epi8(15);
  return {_mm512_and_si512(v, nibble), _mm512_and_si512(_mm512_srli_epi16(v, 4), nibble)};
}

// The exact int32 dots of both rows with one token's span (xe: its even
// columns, xo: its odd ones, as in q8_activations.h): the GEMV's DotNibbles
// per half.
inline __m512 PairDots(const PairNibbles& w, __m512i xe, __m512i xo) {
  const __m512i dots = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(_mm512_setzero_si512(), w.lo, xe), w.hi, xo);
  return _mm512_cvtepi32_ps(dots);
}

// [v0 x4, v1 x4, v0 x4, v1 x4] (v: two floats): the GEMV's HalfSpanPair(v0, v1)
// in both halves.
inline __m512 SpreadPair(const float* v) {
  const __m512i index = _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 0, 0, 0, 0, 1, 1, 1, 1);
  double pair;
  std::memcpy(&pair, v, sizeof(pair));
  return _mm512_permutexvar_ps(index, _mm512_zextps128_ps512(_mm_castpd_ps(_mm_set_sd(pair))));
}

// [s_a x8 | s_b x8] from two f16 weight scales.
inline __m512 SpreadRowScales(uint16_t a, uint16_t b) {
  return _mm512_insertf32x8(_mm512_zextps256_ps512(_mm256_set1_ps(_cvtsh_ss(a))),
                            _mm256_set1_ps(_cvtsh_ss(b)), 1);
}

// g = 32, a span's two groups: [s_a(2sp) x4, s_a(2sp+1) x4 | s_b(...) likewise].
inline __m512 SpreadSpanScales(const uint16_t* a, const uint16_t* b) {
  const __m512i index = _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3);
  uint32_t pa, pb;
  std::memcpy(&pa, a, sizeof(pa));
  std::memcpy(&pb, b, sizeof(pb));
  const __m128 four = _mm_cvtph_ps(_mm_setr_epi32(static_cast<int>(pa), static_cast<int>(pb), 0, 0));
  return _mm512_permutexvar_ps(index, _mm512_zextps128_ps512(four));
}

// One 4-row block (rows valid of them) x kTokens tokens from t, all columns:
// y[k][r] = W[row + r] . a_{t+k} (+ bias), as the GEMV computes it.
template <int kTokens>
void BlockTimesTokens(const Int4Linear& layer, int row, int rows, const Q8Activations& x, int t,
                      float* y, int ldy) {
  const int gs = layer.group_size;
  const int groups = layer.in / gs;
  const int spans_per_group = std::max(1, gs / kQ8Span);
  const int groups_per_span = kQ8Span / std::min(gs, kQ8Span);  // 2 at g = 32, else 1
  const BlockRows b(layer, row, rows);
  const int8_t* xq[kTokens];         // [in], permuted
  const float* d[kTokens];           // [in / 32]
  for (int k = 0; k < kTokens; ++k) {
    xq[k] = x.q + static_cast<size_t>(t + k) * layer.in;
    d[k] = x.block_scales + static_cast<size_t>(t + k) * (layer.in / kQ8Block);
  }
  __m512 acc[kTokens][2];  // [token][row pair]
  #pragma GCC unroll 4
  for (int k = 0; k < kTokens; ++k) acc[k][0] = acc[k][1] = _mm512_setzero_ps();
  // At g >= 64, per group (spans_per_group spans); at g = 32, per span (two groups).
  const int steps = groups / groups_per_span;
  for (int step = 0; step < steps; ++step) {
    __m512 group_acc[kTokens][2];
    #pragma GCC unroll 4
    for (int k = 0; k < kTokens; ++k) group_acc[k][0] = group_acc[k][1] = _mm512_setzero_ps();
    const int sp0 = step * spans_per_group;
    for (int sp = sp0; sp < sp0 + spans_per_group; ++sp) {
      // The next block's codes, 128 bytes per span (int4_linear_avx2.cpp).
      _mm_prefetch(reinterpret_cast<const char*>(b.codes[0] + 2 * layer.in + sp * 128), _MM_HINT_T0);
      _mm_prefetch(reinterpret_cast<const char*>(b.codes[0] + 2 * layer.in + sp * 128 + 64), _MM_HINT_T0);
      const PairNibbles w01 = LoadPair(b.codes[0] + sp * 32, b.codes[1] + sp * 32);
      const PairNibbles w23 = LoadPair(b.codes[2] + sp * 32, b.codes[3] + sp * 32);
      __m512 scale01 = _mm512_setzero_ps(), scale23 = scale01;  // g = 32 only: s per half span
      if (groups_per_span == 2) {
        scale01 = SpreadSpanScales(b.scales[0] + 2 * sp, b.scales[1] + 2 * sp);
        scale23 = SpreadSpanScales(b.scales[2] + 2 * sp, b.scales[3] + 2 * sp);
      }
      #pragma GCC unroll 4
      for (int k = 0; k < kTokens; ++k) {
        const int8_t* xs = xq[k] + sp * kQ8Span;
        const __m512i xe = _mm512_broadcast_i64x4(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(xs)));
        const __m512i xo = _mm512_broadcast_i64x4(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(xs + 32)));
        const __m512 dv = SpreadPair(d[k] + 2 * sp);
        if (groups_per_span == 2) {
          acc[k][0] = _mm512_fmadd_ps(PairDots(w01, xe, xo), _mm512_mul_ps(dv, scale01), acc[k][0]);
          acc[k][1] = _mm512_fmadd_ps(PairDots(w23, xe, xo), _mm512_mul_ps(dv, scale23), acc[k][1]);
        } else {
          group_acc[k][0] = _mm512_fmadd_ps(PairDots(w01, xe, xo), dv, group_acc[k][0]);
          group_acc[k][1] = _mm512_fmadd_ps(PairDots(w23, xe, xo), dv, group_acc[k][1]);
        }
      }
    }
    if (groups_per_span == 1) {
      const __m512 s01 = SpreadRowScales(b.scales[0][step], b.scales[1][step]);
      const __m512 s23 = SpreadRowScales(b.scales[2][step], b.scales[3][step]);
      #pragma GCC unroll 4
      for (int k = 0; k < kTokens; ++k) {
        acc[k][0] = _mm512_fmadd_ps(s01, group_acc[k][0], acc[k][0]);
        acc[k][1] = _mm512_fmadd_ps(s23, group_acc[k][1], acc[k][1]);
      }
    }
  }
  for (int k = 0; k < kTokens; ++k) {
    const float* group_sums = x.group_sums + static_cast<size_t>(t + k) * groups;
    __m256 row_acc[4] = {_mm512_castps512_ps256(acc[k][0]), _mm512_extractf32x8_ps(acc[k][0], 1),
                         _mm512_castps512_ps256(acc[k][1]), _mm512_extractf32x8_ps(acc[k][1], 1)};
    for (int r = 0; r < 4; ++r) {  // minus sum_g s z (sum of a over g)
      row_acc[r] = _mm256_sub_ps(row_acc[r], ZeroTerms(b.scales[r], b.zeros[r], group_sums, groups));
    }
    float sums[4];
    if (rows == 4) {
      _mm_storeu_ps(sums, Hsum4(row_acc[0], row_acc[1], row_acc[2], row_acc[3]));
    } else {
      for (int r = 0; r < rows; ++r) sums[r] = Hsum(row_acc[r]);
    }
    float* y_t = y + static_cast<size_t>(t + k) * ldy;
    for (int r = 0; r < rows; ++r) y_t[r] = sums[r] + (layer.bias ? layer.bias[row + r] : 0.f);
  }
}

}  // namespace

void Int4GemmQ8Avx512Vnni(const Int4Linear& layer, int row0, int rows, const Q8Activations& x,
                          float* y, int ldy) {
  for (int t0 = 0; t0 < x.num_tokens; t0 += kSliceTokens) {
    const int t_end = std::min(x.num_tokens, t0 + kSliceTokens);
    for (int r = 0; r < rows; r += 4) {
      const int block_rows = std::min(4, rows - r);
      float* y_block = y + r;
      int t = t0;
      for (; t + kChunkTokens <= t_end; t += kChunkTokens) {
        BlockTimesTokens<kChunkTokens>(layer, row0 + r, block_rows, x, t, y_block, ldy);
      }
      switch (t_end - t) {
        case 3: BlockTimesTokens<3>(layer, row0 + r, block_rows, x, t, y_block, ldy); break;
        case 2: BlockTimesTokens<2>(layer, row0 + r, block_rows, x, t, y_block, ldy); break;
        case 1: BlockTimesTokens<1>(layer, row0 + r, block_rows, x, t, y_block, ldy); break;
        default: break;
      }
    }
  }
}

}  // namespace awqcore
