#include "ops/rope.h"

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <vector>

namespace awqcore {
namespace {

constexpr double kPi = 3.14159265358979323846;

// f_i for i < hd/2 (rope.h), in double.
std::vector<double> InverseFrequencies(int head_dim, double theta, const RopeScaling& s) {
  const int half = head_dim / 2;
  std::vector<double> f(half);  // [hd / 2]
  for (int i = 0; i < half; ++i) f[i] = std::pow(theta, -2.0 * i / head_dim);
  switch (s.type) {
    case RopeScaling::Type::kNone:
      break;
    case RopeScaling::Type::kLinear:
      for (double& fi : f) fi /= s.factor;
      break;
    case RopeScaling::Type::kLlama3: {
      const double context = s.original_max_position_embeddings;
      const double low_freq_wavelength = context / s.low_freq_factor;
      const double high_freq_wavelength = context / s.high_freq_factor;
      for (double& fi : f) {
        const double wavelength = 2.0 * kPi / fi;
        if (wavelength < high_freq_wavelength) continue;  // high frequencies: kept
        if (wavelength > low_freq_wavelength) {           // low frequencies: interpolated
          fi /= s.factor;
          continue;
        }
        const double smooth =
            (context / wavelength - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor);
        fi = (1.0 - smooth) * fi / s.factor + smooth * fi;
      }
      break;
    }
    case RopeScaling::Type::kYarn: {
      // The dimension whose frequency turns `rotations` times over the
      // original context: hd ln(L / (2 pi rotations)) / (2 ln theta).
      auto correction_dim = [&](double rotations) {
        return head_dim * std::log(s.original_max_position_embeddings / (rotations * 2.0 * kPi)) /
               (2.0 * std::log(theta));
      };
      double lo = correction_dim(s.beta_fast), hi = correction_dim(s.beta_slow);
      if (s.truncate) {
        lo = std::floor(lo);
        hi = std::ceil(hi);
      }
      lo = std::max(lo, 0.0);
      hi = std::min(hi, static_cast<double>(head_dim - 1));
      if (lo == hi) hi += 0.001;  // as transformers: no division by zero
      for (int i = 0; i < half; ++i) {
        const double ramp = std::clamp((i - lo) / (hi - lo), 0.0, 1.0);
        f[i] = f[i] / s.factor * ramp + f[i] * (1.0 - ramp);
      }
      break;
    }
  }
  return f;
}

}  // namespace

RopeTable::RopeTable(int head_dim, float theta, int max_positions, const RopeScaling& scaling)
    : head_dim_(head_dim),
      cos_(static_cast<size_t>(max_positions) * (head_dim / 2)),
      sin_(static_cast<size_t>(max_positions) * (head_dim / 2)) {
  const int half = head_dim / 2;
  // The frequencies and angles in double: pos * frequency reaches ~1e5 rad
  // at long contexts, where an f32 product would be off by up to 4e-3 rad.
  const std::vector<double> frequencies = InverseFrequencies(head_dim, theta, scaling);
  const double a = scaling.attention_factor;
  for (int pos = 0; pos < max_positions; ++pos) {
    for (int i = 0; i < half; ++i) {
      const double angle = pos * frequencies[i];
      cos_[static_cast<size_t>(pos) * half + i] = static_cast<float>(a * std::cos(angle));
      sin_[static_cast<size_t>(pos) * half + i] = static_cast<float>(a * std::sin(angle));
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

namespace {

// One f_i written out again from rope.h's formulas (not InverseFrequencies),
// so the oracle shares no code with the table.
double ReferenceFrequency(int i, int head_dim, double theta, const RopeScaling& s) {
  const double base = 1.0 / std::pow(theta, 2.0 * i / head_dim);
  if (s.type == RopeScaling::Type::kLinear) return base / s.factor;
  if (s.type == RopeScaling::Type::kLlama3) {
    // In "rotations over the original context" L / w_i = L f_i / (2 pi):
    // above high_freq_factor kept, below low_freq_factor divided.
    const double rotations = s.original_max_position_embeddings * base / (2.0 * kPi);
    if (rotations > s.high_freq_factor) return base;
    if (rotations < s.low_freq_factor) return base / s.factor;
    const double smooth = (rotations - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor);
    return smooth * base + (1.0 - smooth) * base / s.factor;
  }
  if (s.type == RopeScaling::Type::kYarn) {
    const double log_context = std::log(static_cast<double>(s.original_max_position_embeddings));
    const double fast = head_dim * (log_context - std::log(2.0 * kPi * s.beta_fast)) / (2.0 * std::log(theta));
    const double slow = head_dim * (log_context - std::log(2.0 * kPi * s.beta_slow)) / (2.0 * std::log(theta));
    double lo = s.truncate ? std::floor(fast) : fast;
    double hi = s.truncate ? std::ceil(slow) : slow;
    if (lo < 0.0) lo = 0.0;
    if (hi > head_dim - 1) hi = head_dim - 1;
    if (hi == lo) hi = lo + 0.001;
    double interpolated_weight = (i - lo) / (hi - lo);
    if (interpolated_weight < 0.0) interpolated_weight = 0.0;
    if (interpolated_weight > 1.0) interpolated_weight = 1.0;
    return base * (1.0 - interpolated_weight) + base / s.factor * interpolated_weight;
  }
  return base;
}

}  // namespace

void RopeReference(float* x, int num_tokens, int num_heads, int head_dim, float theta,
                   int start_position, const RopeScaling& scaling) {
  const int half = head_dim / 2;
  for (int t = 0; t < num_tokens; ++t) {
    for (int h = 0; h < num_heads; ++h) {
      float* head = x + (static_cast<size_t>(t) * num_heads + h) * head_dim;
      for (int i = 0; i < half; ++i) {
        const double angle = (start_position + t) * ReferenceFrequency(i, head_dim, theta, scaling);
        const double a = scaling.attention_factor;
        const double first = head[i];
        const double second = head[i + half];
        head[i] = static_cast<float>(a * (first * std::cos(angle) - second * std::sin(angle)));
        head[i + half] = static_cast<float>(a * (second * std::cos(angle) + first * std::sin(angle)));
      }
    }
  }
}

}  // namespace awqcore
