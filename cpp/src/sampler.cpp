#include "sampler.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <cstdio>
#include <string>

#include "awqbin_file.h"

namespace awqcore {
namespace {

std::string Format(float value) {
  char text[32];
  std::snprintf(text, sizeof(text), "%g", static_cast<double>(value));
  return text;
}

// The magnitude bits of +-inf; a NaN's are above them, a finite value's below.
constexpr int32_t kInfinityMagnitude = 0x7f800000;

// x's bits without the sign, copied from memory (see OrderKey).
inline int32_t Magnitude(const float* x) {
  uint32_t bits;
  std::memcpy(&bits, x, sizeof(bits));
  return static_cast<int32_t>(bits & 0x7fffffffu);
}

// A key whose int32 order is the float order of finite and infinite x, with
// -0 equal to +0 (as float comparison has them) and every NaN below all:
// a non-negative x's bits already order as integers, a negative one's
// negated magnitude does, and -0's negated magnitude is 0.
// Branch-free and with the bits copied from memory (not from a float
// value), so GCC vectorizes the loops over it at the baseline ISA.
inline int32_t OrderKey(const float* x) {
  uint32_t bits;
  std::memcpy(&bits, x, sizeof(bits));
  const int32_t magnitude = Magnitude(x);
  const int32_t sign = static_cast<int32_t>(bits) >> 31;                      // 0 or -1
  const int32_t nan = -static_cast<int32_t>(magnitude > kInfinityMagnitude);  // 0 or -1
  return (((magnitude ^ sign) - sign) & ~nan) | (INT32_MIN & nan);
}

// Argmax, and with kCheckFinite also the row's finiteness in the same pass:
// kNonFiniteLogits when a logit is NaN or infinite.
template <bool kCheckFinite>
int ArgmaxOfRow(const float* logits, int n) {
  // The maximum key of each block of kBlock logits (an integer max that
  // compiles to SIMD compares, where an index search branches per element:
  // on Zen 4, 12 us per 49,152-logit row against 27 for the plain scan,
  // medians of 200 interleaved runs), then the first index of the best
  // block holding it. The first block with the maximum wins, so ties keep
  // the lowest id; NaN ranks below every number. The finiteness check adds
  // a compare and an OR per element to the same SIMD loop, on the magnitude
  // OrderKey computes anyway; a check of its own reads the row again (49,152
  // logits at the baseline ISA: 19-22 us for check and argmax, 13.9 fused,
  // 12.8 for the argmax alone; medians of 301 interleaved runs).
  constexpr int kBlock = 2048;
  int32_t best_key = INT32_MIN;
  int best_block = -1;
  for (int begin = 0; begin < n; begin += kBlock) {
    const int end = std::min(n, begin + kBlock);
    int32_t block_max = INT32_MIN;
    [[maybe_unused]] int32_t non_finite = 0;  // -1 once a NaN or an infinity is seen
    for (int i = begin; i < end; ++i) {
      block_max = std::max(block_max, OrderKey(logits + i));
      if constexpr (kCheckFinite) {
        non_finite |= -static_cast<int32_t>(Magnitude(logits + i) >= kInfinityMagnitude);
      }
    }
    if (kCheckFinite && non_finite) return Sampler::kNonFiniteLogits;
    if (best_block < 0 || block_max > best_key) {
      best_key = block_max;
      best_block = begin;
    }
  }
  // Only NaNs (or n <= 0): the last index, as a scan that replaces a NaN
  // best with every later element picks.
  if (best_key == INT32_MIN) return std::max(n - 1, 0);
  int i = best_block;
  while (OrderKey(logits + i) != best_key) ++i;
  return i;
}

}  // namespace

int Argmax(const float* logits, int n) { return ArgmaxOfRow<false>(logits, n); }

int FiniteArgmax(const float* logits, int n) { return ArgmaxOfRow<true>(logits, n); }

Sampler::Sampler(int vocab_size)
    : vocab_size_(vocab_size),
      seen_(vocab_size, 0),
      candidates_(vocab_size),
      probabilities_(vocab_size) {
  history_.reserve(vocab_size);  // so Observe never allocates
}

void Sampler::Validate(const SamplingOptions& options) {
  // The negated comparisons also reject NaN.
  // +inf is rejected too: (logit - max) / inf is NaN for an infinite gap,
  // a weight the host and the device would treat differently.
  if (!(options.temperature >= 0.0f && options.temperature < INFINITY)) {
    throw InvalidArgument("temperature must be >= 0 and finite (got " + Format(options.temperature) + ")");
  }
  if (options.top_k < 0) {
    throw InvalidArgument("top_k must be >= 0 (got " + std::to_string(options.top_k) + ")");
  }
  if (!(options.top_p > 0.0f && options.top_p <= 1.0f)) {
    throw InvalidArgument("top_p must be in (0, 1] (got " + Format(options.top_p) + ")");
  }
  if (!(options.repetition_penalty > 0.0f)) {
    throw InvalidArgument("repetition_penalty must be > 0 (got " +
                          Format(options.repetition_penalty) + ")");
  }
}

void Sampler::Start(const SamplingOptions& options) {
  options_ = options;
  rng_.seed(options.seed ? *options.seed : (static_cast<uint64_t>(std::random_device{}()) << 32 |
                                            std::random_device{}()));
  for (int token : history_) seen_[token] = 0;
  history_.clear();
}

void Sampler::Observe(int token) {
  if (seen_[token]) return;
  seen_[token] = 1;
  history_.push_back(token);
}

void Sampler::ApplyRepetitionPenalty(float* logits) const {
  const float penalty = options_.repetition_penalty;
  for (int token : history_) {
    float& logit = logits[token];
    logit = logit > 0.0f ? logit / penalty : logit * penalty;
  }
}

int Sampler::Sample(float* logits) {
  if (options_.repetition_penalty != 1.0f) ApplyRepetitionPenalty(logits);
  return Pick(logits, NextPick());
}

int Sampler::SampleFinite(float* logits) {
  const bool greedy = options_.temperature == 0.0f || options_.top_k == 1;
  if (greedy && options_.repetition_penalty == 1.0f) return FiniteArgmax(logits, vocab_size_);
  if (FirstNonFiniteF32(logits, static_cast<uint64_t>(vocab_size_)) >= 0) return kNonFiniteLogits;
  return Sample(logits);
}

TokenPick Sampler::NextPick() {
  TokenPick pick{options_.temperature, options_.top_k, options_.top_p, 0.0};
  // Greedy picks draw nothing, as Sample never did for them.
  if (pick.temperature != 0.0f && pick.top_k != 1) pick.uniform = UniformDraw();
  return pick;
}

int Sampler::Pick(const float* logits, const TokenPick& pick) {
  if (pick.temperature == 0.0f || pick.top_k == 1) return Argmax(logits, vocab_size_);
  // Candidates ordered by (logit desc, id asc), NaN ranking as -inf: a total
  // order, so the kept set is reproducible whatever the sort algorithm does
  // with ties (and the device's radix select finds the same one).
  const auto rank = [logits](int token) {
    return std::isnan(logits[token]) ? -INFINITY : logits[token];
  };
  const auto more_likely = [&rank](int a, int b) {
    const float la = rank(a), lb = rank(b);
    return la > lb || (la == lb && a < b);
  };
  for (int i = 0; i < vocab_size_; ++i) candidates_[i] = i;
  int num_candidates = vocab_size_;
  if (pick.top_k > 0 && pick.top_k < vocab_size_) {
    num_candidates = pick.top_k;
    std::nth_element(candidates_.begin(), candidates_.begin() + (num_candidates - 1),
                     candidates_.end(), more_likely);
  }
  // The maximum is among the candidates (top-k keeps it); subtracting it keeps
  // the weights in [0, 1].
  float max_logit = -INFINITY;
  for (int i = 0; i < num_candidates; ++i) max_logit = std::max(max_logit, rank(candidates_[i]));
  double total_mass = 0.0;
  for (int i = 0; i < num_candidates; ++i) {
    const int token = candidates_[i];
    probabilities_[token] = SamplingWeight(logits[token], max_logit, pick.temperature);
    total_mass += probabilities_[token];
  }
  const bool reordered = num_candidates < vocab_size_ || pick.top_p < 1.0f;
  if (pick.top_p < 1.0f) {
    num_candidates = NucleusSize(num_candidates, static_cast<double>(pick.top_p) * total_mass);
    total_mass = 0.0;
    for (int i = 0; i < num_candidates; ++i) total_mass += probabilities_[candidates_[i]];
  }
  // Inverse CDF over the kept tokens in id order (nth_element and
  // partial_sort leave them in an order the standard does not specify). With
  // neither top_k nor top_p they are 0 .. vocab-1 already: no 150k-id sort.
  if (reordered) std::sort(candidates_.begin(), candidates_.begin() + num_candidates);
  const double target = pick.uniform * total_mass;
  double cumulative = 0.0;
  for (int i = 0; i < num_candidates - 1; ++i) {
    cumulative += probabilities_[candidates_[i]];
    if (target < cumulative) return candidates_[i];
  }
  return candidates_[num_candidates - 1];  // the last one absorbs rounding
}

int Sampler::NucleusSize(int num_candidates, double needed) {
  // top_k == 0 leaves the whole vocabulary in play, and sorting 50k-150k ids
  // per token would cost more than a small model's forward pass. The nucleus
  // is usually a few dozen tokens, so sort a prefix and widen it (x8) only
  // while it holds less than top_p of the mass.
  const auto more_probable = [this](int a, int b) {
    return probabilities_[a] > probabilities_[b] || (probabilities_[a] == probabilities_[b] && a < b);
  };
  int sorted = 0;
  double cumulative = 0.0;
  for (int prefix = std::min(64, num_candidates);; prefix = std::min(prefix * 8, num_candidates)) {
    // The first `sorted` entries are already the most probable, in order.
    std::partial_sort(candidates_.begin() + sorted, candidates_.begin() + prefix,
                      candidates_.begin() + num_candidates, more_probable);
    for (; sorted < prefix; ++sorted) {
      cumulative += probabilities_[candidates_[sorted]];
      if (cumulative >= needed) return sorted + 1;
    }
    if (prefix == num_candidates) return num_candidates;  // rounding left it short
  }
}

double Sampler::UniformDraw() {
  // The top 53 bits of a 64-bit draw, scaled by 2^-53: uniform on a grid in
  // [0, 1), the same on every standard library (unlike
  // std::uniform_real_distribution, whose algorithm is unspecified).
  return static_cast<double>(rng_() >> 11) * 0x1.0p-53;
}

}  // namespace awqcore
