// AVX2 form of QuantizeRowScalar (q8_activations.h), bit-identical to it:
// the same d = max|x| / 127 and inv = 127 / max|x| in f32, and vcvtps2dq
// rounds x * inv to nearest even under the default MXCSR, as the scalar
// code's 1.5 * 2^23 trick does. A block holding a NaN or inf goes through
// the scalar code (d NaN, q 0).
//
// Per 32-column block: 4 loads, 4 and + 3 max + a horizontal max for |x|,
// 4 multiplies and converts, two packs and a dword permute back to column
// order; the int4 layout then splits even and odd columns with one byte
// shuffle and a qword permute (q8_activations.h's layout).
#include <immintrin.h>

#include <cstdint>

#include "ops/q8_activations.h"

namespace awqcore {

void QuantizeRowAvx2(const float* x, int in, Q8Layout layout, int8_t* q, float* block_scales,
                     int* block_sums) {
  const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
  const __m256i column_order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
  // Within each 16-byte lane: the 8 even bytes, then the 8 odd ones.
  const __m256i even_odd = _mm256_setr_epi8(0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15,
                                            0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15);
  for (int b = 0; b < in / kQ8Block; ++b) {
    const float* xb = x + b * kQ8Block;
    __m256 v[4];
    __m256 finite = _mm256_castsi256_ps(_mm256_set1_epi32(-1));
    __m256 magnitude = _mm256_setzero_ps();
    for (int k = 0; k < 4; ++k) {
      v[k] = _mm256_loadu_ps(xb + 8 * k);
      // x - x is 0 for finite x, NaN for inf and NaN.
      finite = _mm256_and_ps(finite, _mm256_cmp_ps(_mm256_sub_ps(v[k], v[k]), _mm256_setzero_ps(), _CMP_EQ_OQ));
      magnitude = _mm256_max_ps(magnitude, _mm256_and_ps(v[k], abs_mask));
    }
    if (_mm256_movemask_ps(finite) != 0xff) {
      int8_t block_q[kQ8Block];
      QuantizeRowScalar(xb, kQ8Block, Q8Layout::kNatural, block_q, block_scales + b, block_sums + b);
      for (int i = 0; i < kQ8Block; ++i) {
        const int c = b * kQ8Block + i;
        q[layout == Q8Layout::kNatural ? c : Q8Position(c)] = block_q[i];
      }
      continue;
    }
    __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(magnitude), _mm256_extractf128_ps(magnitude, 1));
    m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
    m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
    const float amax = _mm_cvtss_f32(m4);
    const float inv = amax > 0.f ? 127.f / amax : 0.f;
    const __m256 scale = _mm256_set1_ps(inv);
    __m256i r[4];
    __m256i sum = _mm256_setzero_si256();
    for (int k = 0; k < 4; ++k) {
      r[k] = _mm256_cvtps_epi32(_mm256_mul_ps(v[k], scale));
      sum = _mm256_add_epi32(sum, r[k]);
    }
    const __m256i bytes = _mm256_permutevar8x32_epi32(
        _mm256_packs_epi16(_mm256_packs_epi32(r[0], r[1]), _mm256_packs_epi32(r[2], r[3])),
        column_order);  // q of columns 0..31 in order
    if (layout == Q8Layout::kNatural) {
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(q + b * kQ8Block), bytes);
    } else {
      // [16 even columns | 16 odd columns] of the block.
      const __m256i split = _mm256_permute4x64_epi64(_mm256_shuffle_epi8(bytes, even_odd), 0xd8);
      int8_t* span = q + (b / 2) * kQ8Span + (b % 2) * (kQ8Block / 2);
      _mm_storeu_si128(reinterpret_cast<__m128i*>(span), _mm256_castsi256_si128(split));
      _mm_storeu_si128(reinterpret_cast<__m128i*>(span + kQ8Block), _mm256_extracti128_si256(split, 1));
    }
    __m128i s4 = _mm_add_epi32(_mm256_castsi256_si128(sum), _mm256_extracti128_si256(sum, 1));
    s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0x4e));
    s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0xb1));
    block_scales[b] = amax / 127.f;
    block_sums[b] = _mm_cvtsi128_si32(s4);
  }
}

}  // namespace awqcore
