// AVX2 + FMA gated activations (activation.h), 8 elements at a time, both as
// x * sigmoid(z) * up (z = x for SiLU, z = 2 sqrt(2/pi)(x + 0.044715 x^3) for
// GELU-tanh).
//
// e^-z overflows for z < -88, so the exponential is taken of -|z| <= 0 only
// (avx2::ExpNonPositive, ~1e-7 relative), e = e^-|z| in (0, 1]:
//   z >= 0: sigmoid(z) = 1 / (1 + e)
//   z <  0: sigmoid(z) = e / (1 + e)
// ExpNonPositive clamps its argument at -87; below z = -87 the true
// x * sigmoid(z) is under |x| e^-87 in magnitude (SiLU: 87 e^-87 ~ 1.4e-36;
// GELU: z = -87 at x ~ -9.9, so ~1.6e-37), so those lanes return -0 exactly
// (the scalar loop's limit) rather than a value off by that much.
//
// Error of GELU-tanh against its double definition: z carries ~3 roundings
// (relative 2e-7) and sigmoid's relative sensitivity to z is
// |z| (1 - sigmoid(z)), so for x < 0 the relative error grows like
// 2e-7 |z| + 3e-7 (1e-5 at z = -40, where the value is ~1e-17 |x| and
// absolutely negligible); for x >= 0 it stays ~4e-7.
#include <immintrin.h>

#include "ops/activation.h"
#include "ops/simd_avx2.h"

namespace awqcore {

namespace {

__m256 SigmoidGate8(__m256 x, __m256 z, __m256 up) {
  const __m256 one = _mm256_set1_ps(1.f);
  const __m256 e = avx2::ExpNonPositive(_mm256_or_ps(z, _mm256_set1_ps(-0.f)));  // e^-|z|
  const __m256 negative = _mm256_cmp_ps(z, _mm256_setzero_ps(), _CMP_LT_OQ);
  __m256 numerator = _mm256_blendv_ps(one, e, negative);
  numerator = _mm256_andnot_ps(_mm256_cmp_ps(z, _mm256_set1_ps(-87.f), _CMP_LT_OQ), numerator);
  const __m256 gated = _mm256_div_ps(_mm256_mul_ps(x, numerator), _mm256_add_ps(one, e));
  return _mm256_mul_ps(gated, up);
}

struct SwiGlu8 {
  static __m256 Apply(__m256 x, __m256 up) { return SigmoidGate8(x, x, up); }
};

struct GeGlu8 {
  static __m256 Apply(__m256 x, __m256 up) {
    const __m256 slope = _mm256_fmadd_ps(_mm256_set1_ps(1.5957691216057308f * 0.044715f),
                                         _mm256_mul_ps(x, x), _mm256_set1_ps(1.5957691216057308f));
    return SigmoidGate8(x, _mm256_mul_ps(x, slope), up);
  }
};

template <typename Gate8>
void Gated(const float* gate, const float* up, int n, float* out) {
  int i = 0;
  for (; i + 8 <= n; i += 8) {
    _mm256_storeu_ps(out + i, Gate8::Apply(_mm256_loadu_ps(gate + i), _mm256_loadu_ps(up + i)));
  }
  if (i == n) return;
  // The tail through the same arithmetic, so an element's result does not
  // depend on where a thread's slice boundary falls.
  alignas(32) float gate_tail[8] = {}, up_tail[8] = {}, out_tail[8];
  for (int j = 0; j < n - i; ++j) {
    gate_tail[j] = gate[i + j];
    up_tail[j] = up[i + j];
  }
  _mm256_store_ps(out_tail, Gate8::Apply(_mm256_load_ps(gate_tail), _mm256_load_ps(up_tail)));
  for (int j = 0; j < n - i; ++j) out[i + j] = out_tail[j];
}

}  // namespace

void SwiGluAvx2(const float* gate, const float* up, int n, float* out) { Gated<SwiGlu8>(gate, up, n, out); }
void GeGluAvx2(const float* gate, const float* up, int n, float* out) { Gated<GeGlu8>(gate, up, n, out); }

}  // namespace awqcore
