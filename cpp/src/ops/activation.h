// The gated MLP activation of Llama/Qwen2: out = SiLU(gate) * up, with
// SiLU(x) = x * sigmoid(x) = x / (1 + e^-x).
#pragma once

namespace awqcore {

// gate, up, out: [n]; out may equal gate or up.
void SwiGlu(const float* gate, const float* up, int n, float* out);

// Scalar oracle (double).
void SwiGluReference(const float* gate, const float* up, int n, float* out);

}  // namespace awqcore
