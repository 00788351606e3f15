#include "ops/rope.h"

#include <cmath>
#include <cstddef>
#include <vector>

namespace awqcore {

RopeTable::RopeTable(int head_dim, float theta, int max_positions)
    : head_dim_(head_dim),
      cos_(static_cast<size_t>(max_positions) * (head_dim / 2)),
      sin_(static_cast<size_t>(max_positions) * (head_dim / 2)) {
  const int half = head_dim / 2;
  // theta^(-2i/hd) and the angles in double: pos * frequency reaches ~1e5 rad
  // at long contexts, where an f32 product would be off by up to 4e-3 rad.
  std::vector<double> frequencies(half);  // [hd / 2]
  for (int i = 0; i < half; ++i) frequencies[i] = std::pow(static_cast<double>(theta), -2.0 * i / head_dim);
  for (int pos = 0; pos < max_positions; ++pos) {
    for (int i = 0; i < half; ++i) {
      const double angle = pos * frequencies[i];
      cos_[static_cast<size_t>(pos) * half + i] = static_cast<float>(std::cos(angle));
      sin_[static_cast<size_t>(pos) * half + i] = static_cast<float>(std::sin(angle));
    }
  }
}

void RopeTable::Apply(float* x, int num_tokens, int num_heads, const int* positions) const {
  for (int t = 0; t < num_tokens; ++t) {
    for (int h = 0; h < num_heads; ++h) {
      float* head = x + (static_cast<size_t>(t) * num_heads + h) * head_dim_;
      RotateHead(head, positions[t], head);
    }
  }
}

void RopeTable::RotateHead(const float* x, int position, float* out) const {
  const int half = head_dim_ / 2;
  const float* cos_row = cos_.data() + static_cast<size_t>(position) * half;
  const float* sin_row = sin_.data() + static_cast<size_t>(position) * half;
  for (int i = 0; i < half; ++i) {
    const float first = x[i];
    const float second = x[i + half];
    out[i] = first * cos_row[i] - second * sin_row[i];
    out[i + half] = second * cos_row[i] + first * sin_row[i];
  }
}

void RopeReference(float* x, int num_tokens, int num_heads, int head_dim, float theta,
                   int start_position) {
  const int half = head_dim / 2;
  for (int t = 0; t < num_tokens; ++t) {
    for (int h = 0; h < num_heads; ++h) {
      float* head = x + (static_cast<size_t>(t) * num_heads + h) * head_dim;
      for (int i = 0; i < half; ++i) {
        // Written out again (not Frequency()) so the oracle shares no code with the table.
        const double angle = (start_position + t) * std::pow(static_cast<double>(theta), -2.0 * i / head_dim);
        const double first = head[i];
        const double second = head[i + half];
        head[i] = static_cast<float>(first * std::cos(angle) - second * std::sin(angle));
        head[i + half] = static_cast<float>(second * std::cos(angle) + first * std::sin(angle));
      }
    }
  }
}

}  // namespace awqcore
