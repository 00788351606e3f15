#include "ops/q8_activations.h"

#include <cmath>

#include "cpu_features.h"

namespace awqcore {

void QuantizeRowScalar(const float* x, int in, Q8Layout layout, int8_t* q, float* block_scales,
                       int* block_sums) {
  const bool natural = layout == Q8Layout::kNatural;
  for (int b = 0; b < in / kQ8Block; ++b) {
    const float* xb = x + b * kQ8Block;
    float amax = 0.f;
    bool finite = true;
    for (int i = 0; i < kQ8Block; ++i) {
      const float magnitude = std::fabs(xb[i]);
      amax = magnitude > amax ? magnitude : amax;
      finite &= std::isfinite(xb[i]);
    }
    // A NaN or inf anywhere makes d NaN: every product with it is NaN.
    const float d = finite ? amax / 127.f : NAN;
    const float inv = finite && amax > 0.f ? 127.f / amax : 0.f;
    int sum = 0;
    for (int i = 0; i < kQ8Block; ++i) {
      // Round to nearest even, as rint, without a libm call (std::lrint is
      // not inlined without -fno-math-errno and cost ~3% of a decode step):
      // adding and subtracting 1.5 * 2^23 leaves the integer part for
      // |v| < 2^22. |xb[i] * inv| <= 127 up to one rounding, so the result
      // stays within +-127. A non-finite block's q are 0 (its d is NaN).
      const float scaled = xb[i] * inv;
      const float rounded = (scaled + 12582912.f) - 12582912.f;
      const int v = finite ? static_cast<int>(rounded) : 0;
      q[natural ? b * kQ8Block + i : Q8Position(b * kQ8Block + i)] = static_cast<int8_t>(v);
      sum += v;
    }
    block_scales[b] = d;
    block_sums[b] = sum;
  }
}

const Q8Activations& Q8Buffer::Quantize(const float* x, int ldx, int num_tokens, int in,
                                        int group_size, Q8Layout layout) {
  view_ = {num_tokens, in, group_size, layout, nullptr, nullptr, nullptr};
  const int blocks = in / kQ8Block, groups = in / group_size;
  q_.resize(static_cast<size_t>(num_tokens) * in);
  block_scales_.resize(static_cast<size_t>(num_tokens) * blocks);
  block_sums_.resize(blocks);
  group_sums_.assign(static_cast<size_t>(num_tokens) * groups, 0.f);
  const bool avx2 = DetectedIsa() >= Isa::kAvx2;
  for (int t = 0; t < num_tokens; ++t) {
    const float* xt = x + static_cast<size_t>(t) * ldx;
    int8_t* qt = q_.data() + static_cast<size_t>(t) * in;
    float* dt = block_scales_.data() + static_cast<size_t>(t) * blocks;
    if (avx2) {
      QuantizeRowAvx2(xt, in, layout, qt, dt, block_sums_.data());
    } else {
      QuantizeRowScalar(xt, in, layout, qt, dt, block_sums_.data());
    }
    for (int b = 0; b < blocks; ++b) {
      group_sums_[static_cast<size_t>(t) * groups + b * kQ8Block / group_size] +=
          dt[b] * static_cast<float>(block_sums_[b]);
    }
  }
  view_.q = q_.data();
  view_.block_scales = block_scales_.data();
  view_.group_sums = group_sums_.data();
  return view_;
}

}  // namespace awqcore
