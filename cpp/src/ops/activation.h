// The gated MLP activations: out = act(gate) * up, with
//   SiLU (Llama, Qwen, Mistral; SwiGLU): silu(x) = x * sigmoid(x) = x / (1 + e^-x)
//   GELU, tanh approximation (Gemma 3; GeGLU):
//     gelu_tanh(x) = 0.5 x (1 + tanh(u)),  u = sqrt(2/pi) (x + 0.044715 x^3)
//                  = x * sigmoid(2u)       (as 1 + tanh(u) = 2 sigmoid(2u))
// so both are x * sigmoid(z) with z = x or z = 2u, and share one kernel body.
#pragma once

#include "awqcore/awqcore.h"
#include "cpu_features.h"

namespace awqcore {

// gate, up, out: [n]; out may equal gate or up. Dispatches to the AVX2
// versions (activation_avx2.cpp) when isa is kAvx2 or above.
void GatedActivation(Activation activation, const float* gate, const float* up, int n, float* out,
                     Isa isa = DetectedIsa());

// The portable loops (libm expf per element: ~3.5% of a SmolLM2 prefill
// profile at context 2000 with the loop around it) and AVX2 + FMA.
void SwiGluScalar(const float* gate, const float* up, int n, float* out);
void SwiGluAvx2(const float* gate, const float* up, int n, float* out);
void GeGluScalar(const float* gate, const float* up, int n, float* out);
void GeGluAvx2(const float* gate, const float* up, int n, float* out);

// Scalar oracles in double, from the definitions above (GeGLU through tanh
// where that is exact in double, i.e. for u >= 0).
void SwiGluReference(const float* gate, const float* up, int n, float* out);
void GeGluReference(const float* gate, const float* up, int n, float* out);

}  // namespace awqcore
