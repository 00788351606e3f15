// RMSNorm (Llama/Qwen2): y = x / sqrt(mean(x^2) + eps) * weight, per token.
#pragma once

namespace awqcore {

// x, y: [num_tokens, d] (y may equal x); weight: [d].
void RmsNorm(const float* x, const float* weight, int d, float eps, int num_tokens, float* y);

// Scalar oracle (double accumulation).
void RmsNormReference(const float* x, const float* weight, int d, float eps, int num_tokens,
                      float* y);

}  // namespace awqcore
