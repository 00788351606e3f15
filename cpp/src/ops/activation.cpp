#include "ops/activation.h"

#include <cmath>

namespace awqcore {
namespace {

// z of gelu_tanh(x) = x * sigmoid(z) (activation.h): 2 sqrt(2/pi) (x + 0.044715 x^3).
constexpr float kGeluLinear = 1.5957691216057308f;          // 2 sqrt(2/pi)
constexpr float kGeluCubic = 1.5957691216057308f * 0.044715f;

}  // namespace

void GatedActivation(Activation activation, const float* gate, const float* up, int n, float* out,
                     Isa isa) {
  const bool silu = activation == Activation::kSilu;
  if (isa >= Isa::kAvx2) {
    silu ? SwiGluAvx2(gate, up, n, out) : GeGluAvx2(gate, up, n, out);
    return;
  }
  silu ? SwiGluScalar(gate, up, n, out) : GeGluScalar(gate, up, n, out);
}

void SwiGluScalar(const float* gate, const float* up, int n, float* out) {
  for (int i = 0; i < n; ++i) {
    // For gate << 0, e^-gate overflows to inf and the quotient is -0: the
    // correct limit, so no clamping is needed.
    const float silu = gate[i] / (1.0f + std::exp(-gate[i]));
    out[i] = silu * up[i];
  }
}

void GeGluScalar(const float* gate, const float* up, int n, float* out) {
  for (int i = 0; i < n; ++i) {
    const float x = gate[i];
    const float z = x * (kGeluLinear + kGeluCubic * x * x);
    // As in SwiGluScalar, e^-z overflowing to inf gives the limit -0.
    out[i] = x / (1.0f + std::exp(-z)) * up[i];
  }
}

void SwiGluReference(const float* gate, const float* up, int n, float* out) {
  for (int i = 0; i < n; ++i) {
    const double g = gate[i];
    out[i] = static_cast<float>(g / (1.0 + std::exp(-g)) * up[i]);
  }
}

void GeGluReference(const float* gate, const float* up, int n, float* out) {
  const double sqrt_2_over_pi = std::sqrt(2.0 / 3.14159265358979323846);
  for (int i = 0; i < n; ++i) {
    const double g = gate[i];
    const double u = sqrt_2_over_pi * (g + 0.044715 * g * g * g);
    // 0.5 (1 + tanh(u)): for u < 0 the sum cancels (at u = -18 double keeps
    // no digit of it), so it is taken as 1 - tanh(|u|) = 2 / (1 + e^(2|u|)).
    const double half_one_plus_tanh = u >= 0.0 ? 0.5 * (1.0 + std::tanh(u)) : 1.0 / (1.0 + std::exp(-2.0 * u));
    out[i] = static_cast<float>(g * half_one_plus_tanh * up[i]);
  }
}

}  // namespace awqcore
