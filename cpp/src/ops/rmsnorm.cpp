#include "ops/rmsnorm.h"

#include <cmath>
#include <cstddef>

#include "ops/vec.h"

namespace awqcore {

void RmsNorm(const float* x, const float* weight, int d, float eps, int num_tokens, float* y) {
  for (int t = 0; t < num_tokens; ++t) {
    const float* x_row = x + static_cast<size_t>(t) * d;
    float* y_row = y + static_cast<size_t>(t) * d;
    // The whole sum of squares is read before y_row is written, so y == x works.
    const float mean_square = DotF32(x_row, x_row, d) / static_cast<float>(d);
    const float inv_rms = 1.0f / std::sqrt(mean_square + eps);
    for (int i = 0; i < d; ++i) y_row[i] = x_row[i] * inv_rms * weight[i];
  }
}

void RmsNormReference(const float* x, const float* weight, int d, float eps, int num_tokens,
                      float* y) {
  for (int t = 0; t < num_tokens; ++t) {
    const float* x_row = x + static_cast<size_t>(t) * d;
    double sum_squares = 0.0;
    for (int i = 0; i < d; ++i) sum_squares += static_cast<double>(x_row[i]) * x_row[i];
    const double inv_rms = 1.0 / std::sqrt(sum_squares / d + eps);
    for (int i = 0; i < d; ++i) {
      y[static_cast<size_t>(t) * d + i] = static_cast<float>(x_row[i] * inv_rms * weight[i]);
    }
  }
}

}  // namespace awqcore
