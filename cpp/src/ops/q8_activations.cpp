#include "ops/q8_activations.h"

#include <cmath>

namespace awqcore {

const Q8Activations& Q8Buffer::Quantize(const float* x, int ldx, int num_tokens, int in,
                                        int group_size, Q8Layout layout) {
  view_ = {num_tokens, in, group_size, layout, nullptr, nullptr, nullptr};
  const bool natural = layout == Q8Layout::kNatural;
  const int blocks = in / kQ8Block, groups = in / group_size;
  q_.resize(static_cast<size_t>(num_tokens) * in);
  block_scales_.resize(static_cast<size_t>(num_tokens) * blocks);
  group_sums_.assign(static_cast<size_t>(num_tokens) * groups, 0.f);
  for (int t = 0; t < num_tokens; ++t) {
    const float* xt = x + static_cast<size_t>(t) * ldx;
    int8_t* qt = q_.data() + static_cast<size_t>(t) * in;
    for (int b = 0; b < blocks; ++b) {
      const float* xb = xt + b * kQ8Block;
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
        // not inlined without -fno-math-errno and cost ~3% of a decode
        // step): adding and subtracting 1.5 * 2^23 leaves the integer part
        // for |v| < 2^22. |xb[i] * inv| <= 127 up to one rounding, so the
        // result stays within +-127.
        const float scaled = xb[i] * inv;
        const int v = static_cast<int>((scaled + 12582912.f) - 12582912.f);
        qt[natural ? b * kQ8Block + i : Q8Position(b * kQ8Block + i)] = static_cast<int8_t>(v);
        sum += v;
      }
      block_scales_[static_cast<size_t>(t) * blocks + b] = d;
      group_sums_[static_cast<size_t>(t) * groups + b * kQ8Block / group_size] +=
          d * static_cast<float>(sum);
    }
  }
  view_.q = q_.data();
  view_.block_scales = block_scales_.data();
  view_.group_sums = group_sums_.data();
  return view_;
}

}  // namespace awqcore
