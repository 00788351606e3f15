// Random inputs and int4 weights for the kernel tests (test_ops,
// test_simd_kernels, test_cuda_kernels), so each kernel family is tested on
// data built the same way.
#pragma once

#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include "half.h"
#include "model_weights.h"

namespace awqtest {

inline std::vector<float> RandomFloats(size_t n, std::mt19937& rng, float lo = -1.f, float hi = 1.f) {
  std::uniform_real_distribution<float> dist(lo, hi);
  std::vector<float> v(n);
  for (float& x : v) x = dist(rng);
  return v;
}

// An Int4Linear with random codes, zero points and f16 scales, owning its
// storage. `offset` extra elements before each array let a test hand kernels
// pointers aligned to no more than their element type.
struct RandomInt4 {
  std::vector<uint8_t> qweight;  // [offset + out*in/2]
  std::vector<uint16_t> scales;  // [offset + out*in/g]
  std::vector<uint8_t> zeros;    // [offset + out*in/g]
  std::vector<float> bias;       // [offset + out] or empty
  awqcore::Int4Linear layer;     // points past the offset

  RandomInt4(int out, int in, int group_size, bool with_bias, std::mt19937& rng, size_t offset = 0) {
    std::uniform_int_distribution<int> byte(0, 255), nibble(0, 15);
    std::uniform_real_distribution<float> scale(0.002f, 0.05f);
    const size_t groups = static_cast<size_t>(out) * (in / group_size);
    qweight.resize(offset + static_cast<size_t>(out) * in / 2);
    for (uint8_t& b : qweight) b = static_cast<uint8_t>(byte(rng));
    scales.resize(offset + groups);
    for (uint16_t& s : scales) s = awqcore::F32ToF16(scale(rng));
    zeros.resize(offset + groups);
    for (uint8_t& z : zeros) z = static_cast<uint8_t>(nibble(rng));
    if (with_bias) bias = RandomFloats(offset + out, rng);
    layer = awqcore::Int4Linear{out, in, group_size, qweight.data() + offset, scales.data() + offset,
                                zeros.data() + offset, with_bias ? bias.data() + offset : nullptr};
  }

  // sum_c |W[r, c] x[c]|: the scale of the rounding-error bound of output r.
  double AbsProductSum(int r, const float* x) const {
    double sum = 0.0;
    for (int c = 0; c < layer.in; ++c) {
      const uint8_t b = layer.qweight[static_cast<size_t>(r) * layer.in / 2 + c / 2];
      const int q = c % 2 == 0 ? (b & 15) : (b >> 4);
      const size_t g = static_cast<size_t>(r) * (layer.in / layer.group_size) + c / layer.group_size;
      sum += std::fabs((q - layer.zeros[g]) * awqcore::F16ToF32(layer.scales[g]) * x[c]);
    }
    return sum;
  }
};

}  // namespace awqtest
