// AVX2 helpers shared by the *_avx2.cpp kernels and the AVX-512 files that
// reuse 256-bit code (int4_q8_avx2.h, embedding_table_avx512vnni.cpp).
// Include ONLY from files compiled with at least -mavx2 -mfma -mf16c
// (CMakeLists.txt). Everything here has internal linkage (an unnamed
// namespace), so copies built with different flags in different files never
// meet (no one-definition-rule clash).
#pragma once

#include <immintrin.h>

#include <cstddef>

#include "ops/linear_kernels.h"  // kTileColumns, the tiles' row stride

namespace awqcore {
namespace avx2 {
namespace {

// [sum(a), sum(b), sum(c), sum(d)]: three hadds and one add instead of four
// separate horizontal reductions.
inline __m128 Hsum4(__m256 a, __m256 b, __m256 c, __m256 d) {
  const __m256 ab = _mm256_hadd_ps(a, b);   // a01 a23 b01 b23 | a45 a67 b45 b67
  const __m256 cd = _mm256_hadd_ps(c, d);
  const __m256 abcd = _mm256_hadd_ps(ab, cd);  // a0-3 b0-3 c0-3 d0-3 | a4-7 ...
  return _mm_add_ps(_mm256_castps256_ps128(abcd), _mm256_extractf128_ps(abcd, 1));
}

inline float Hsum(__m256 a) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// Requests the cache lines of [p, p + bytes) into L1. A prefetch never
// faults, so callers may run past the end of their data (the next rows of
// the last row block, the next keys of the last position).
inline void PrefetchBytes(const void* p, int bytes) {
  const char* c = static_cast<const char*>(p);
  for (int b = 0; b < bytes; b += 64) _mm_prefetch(c + b, _MM_HINT_T0);
}

// PrefetchBytes into L2 (kL1PrefetchBlockBytes, linear_kernels.h).
inline void PrefetchBytesToL2(const void* p, int bytes) {
  const char* c = static_cast<const char*>(p);
  for (int b = 0; b < bytes; b += 64) _mm_prefetch(c + b, _MM_HINT_T1);
}

// e^x for 8 lanes of x <= 0 (attention: scores minus their maximum; SiLU:
// -|x|), as Cephes' expf:
// x = n ln2 + r with |r| <= ln2 / 2 (ln2 split in two so n ln2 is exact),
// e^r = 1 + r + r^2 p(r) with p of degree 5 (relative error ~1e-7), and 2^n
// put in the exponent field. x is clamped at -87 so that 2^n stays normal
// (e^-87 ~ 1.6e-38, no weight of a softmax whose maximum contributes 1);
// NaN passes through (MAXPS returns its second operand when one is NaN).
// libm's expf, called per score, takes ~9% of attention.
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

// The prefill micro-kernel: 4 tile rows (stride kTileColumns) times one or
// two token rows over `width` columns. Accumulators: 4 rows x 2 tokens = 8
// ymm, plus 4 weight and 1-2 x registers (< 16). Per 8 columns it issues 8
// FMAs for 6 loads: FMA-bound (2 per cycle), not load-bound (2 per cycle).
// out[t][r] = sum_c tile[r][c] x_t[c]; a scalar tail covers width % 8.
inline void TileTimesTwoTokens(const float* tile, int width, const float* x0, const float* x1,
                               __m128* out0, __m128* out1) {
  __m256 a00 = _mm256_setzero_ps(), a01 = a00, a02 = a00, a03 = a00;
  __m256 a10 = a00, a11 = a00, a12 = a00, a13 = a00;
  const float* w0 = tile;
  const float* w1 = tile + kTileColumns;
  const float* w2 = tile + 2 * kTileColumns;
  const float* w3 = tile + 3 * kTileColumns;
  int c = 0;
  for (; c + 8 <= width; c += 8) {
    const __m256 v0 = _mm256_loadu_ps(x0 + c), v1 = _mm256_loadu_ps(x1 + c);
    const __m256 r0 = _mm256_load_ps(w0 + c), r1 = _mm256_load_ps(w1 + c);
    const __m256 r2 = _mm256_load_ps(w2 + c), r3 = _mm256_load_ps(w3 + c);
    a00 = _mm256_fmadd_ps(r0, v0, a00);
    a01 = _mm256_fmadd_ps(r1, v0, a01);
    a02 = _mm256_fmadd_ps(r2, v0, a02);
    a03 = _mm256_fmadd_ps(r3, v0, a03);
    a10 = _mm256_fmadd_ps(r0, v1, a10);
    a11 = _mm256_fmadd_ps(r1, v1, a11);
    a12 = _mm256_fmadd_ps(r2, v1, a12);
    a13 = _mm256_fmadd_ps(r3, v1, a13);
  }
  __m128 s0 = Hsum4(a00, a01, a02, a03);
  __m128 s1 = Hsum4(a10, a11, a12, a13);
  for (; c < width; ++c) {
    const __m128 w = _mm_setr_ps(w0[c], w1[c], w2[c], w3[c]);
    s0 = _mm_fmadd_ps(w, _mm_set1_ps(x0[c]), s0);
    s1 = _mm_fmadd_ps(w, _mm_set1_ps(x1[c]), s1);
  }
  *out0 = s0;
  *out1 = s1;
}

// y[t * ldy + r] += (tile x_t)[r] for r < rows (<= 4), every token t; the
// tile (4 x width, stride kTileColumns, 32-byte aligned) holds zeros in rows
// >= rows. Tokens go in pairs (the odd one pairs with itself).
inline void AccumulateTile(const float* tile, int width, int rows, const float* x, int ldx,
                           int num_tokens, float* y, int ldy) {
  for (int t = 0; t < num_tokens; t += 2) {
    const int t1 = t + 1 < num_tokens ? t + 1 : t;
    __m128 s0, s1;
    TileTimesTwoTokens(tile, width, x + static_cast<size_t>(t) * ldx,
                       x + static_cast<size_t>(t1) * ldx, &s0, &s1);
    alignas(16) float sums[2][4];
    _mm_store_ps(sums[0], s0);
    _mm_store_ps(sums[1], s1);
    for (int r = 0; r < rows; ++r) y[static_cast<size_t>(t) * ldy + r] += sums[0][r];
    if (t1 != t) {
      for (int r = 0; r < rows; ++r) y[static_cast<size_t>(t1) * ldy + r] += sums[1][r];
    }
  }
}

}  // namespace
}  // namespace avx2
}  // namespace awqcore
