// AVX2 + FMA SwiGlu (activation.h), 8 elements at a time.
//
// e^-x overflows for x < -88, so the exponential is taken of -|x| <= 0 only
// (avx2::ExpNonPositive, ~1e-7 relative), e = e^-|x| in (0, 1]:
//   x >= 0: sigmoid(x) = 1 / (1 + e)
//   x <  0: sigmoid(x) = e / (1 + e)
// ExpNonPositive clamps its argument at -87; below x = -87 the true SiLU is
// under 87 e^-87 ~ 1.4e-36 in magnitude, so those lanes return -0 exactly
// (the scalar loop's limit) rather than a value off by that much.
#include <immintrin.h>

#include "ops/activation.h"
#include "ops/simd_avx2.h"

namespace awqcore {

namespace {

__m256 SwiGlu8(__m256 x, __m256 up) {
  const __m256 one = _mm256_set1_ps(1.f);
  const __m256 e = avx2::ExpNonPositive(_mm256_or_ps(x, _mm256_set1_ps(-0.f)));  // e^-|x|
  const __m256 negative = _mm256_cmp_ps(x, _mm256_setzero_ps(), _CMP_LT_OQ);
  __m256 numerator = _mm256_blendv_ps(one, e, negative);
  numerator = _mm256_andnot_ps(_mm256_cmp_ps(x, _mm256_set1_ps(-87.f), _CMP_LT_OQ), numerator);
  const __m256 silu = _mm256_div_ps(_mm256_mul_ps(x, numerator), _mm256_add_ps(one, e));
  return _mm256_mul_ps(silu, up);
}

}  // namespace

void SwiGluAvx2(const float* gate, const float* up, int n, float* out) {
  int i = 0;
  for (; i + 8 <= n; i += 8) {
    _mm256_storeu_ps(out + i, SwiGlu8(_mm256_loadu_ps(gate + i), _mm256_loadu_ps(up + i)));
  }
  if (i == n) return;
  // The tail through the same arithmetic, so an element's result does not
  // depend on where a thread's slice boundary falls.
  alignas(32) float gate_tail[8] = {}, up_tail[8] = {}, out_tail[8];
  for (int j = 0; j < n - i; ++j) {
    gate_tail[j] = gate[i + j];
    up_tail[j] = up[i + j];
  }
  _mm256_store_ps(out_tail, SwiGlu8(_mm256_load_ps(gate_tail), _mm256_load_ps(up_tail)));
  for (int j = 0; j < n - i; ++j) out[i + j] = out_tail[j];
}

}  // namespace awqcore
