#include "ops/activation.h"

#include <cmath>

namespace awqcore {

void SwiGlu(const float* gate, const float* up, int n, float* out, Isa isa) {
  if (isa == Isa::kAvx2) {
    SwiGluAvx2(gate, up, n, out);
    return;
  }
  SwiGluScalar(gate, up, n, out);
}

void SwiGluScalar(const float* gate, const float* up, int n, float* out) {
  for (int i = 0; i < n; ++i) {
    // For gate << 0, e^-gate overflows to inf and the quotient is -0: the
    // correct limit, so no clamping is needed.
    const float silu = gate[i] / (1.0f + std::exp(-gate[i]));
    out[i] = silu * up[i];
  }
}

void SwiGluReference(const float* gate, const float* up, int n, float* out) {
  for (int i = 0; i < n; ++i) {
    const double g = gate[i];
    out[i] = static_cast<float>(g / (1.0 + std::exp(-g)) * up[i]);
  }
}

}  // namespace awqcore
