#include "sampler.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <string>

namespace awqcore {
namespace {

std::string Format(float value) {
  char text[32];
  std::snprintf(text, sizeof(text), "%g", static_cast<double>(value));
  return text;
}

}  // namespace

int Argmax(const float* logits, int n) {
  int best = 0;
  for (int i = 1; i < n; ++i) {
    // Strict >: ties keep the lower id. A NaN at `best` is always replaced.
    if (logits[i] > logits[best] || std::isnan(logits[best])) best = i;
  }
  return best;
}

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
