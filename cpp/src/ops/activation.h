// The gated MLP activation of Llama/Qwen2: out = SiLU(gate) * up, with
// SiLU(x) = x * sigmoid(x) = x / (1 + e^-x).
#pragma once

#include "cpu_features.h"

namespace awqcore {

// gate, up, out: [n]; out may equal gate or up. Dispatches to the AVX2
// version (activation_avx2.cpp) when isa is kAvx2.
void SwiGlu(const float* gate, const float* up, int n, float* out, Isa isa = DetectedIsa());

// The portable loop (libm expf per element: ~3.5% of a SmolLM2 prefill
// profile at context 2000 with the loop around it) and AVX2 + FMA.
void SwiGluScalar(const float* gate, const float* up, int n, float* out);
void SwiGluAvx2(const float* gate, const float* up, int n, float* out);

// Scalar oracle (double).
void SwiGluReference(const float* gate, const float* up, int n, float* out);

}  // namespace awqcore
