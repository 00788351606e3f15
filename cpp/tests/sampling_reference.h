// The token pick of sampler.h recomputed independently in double precision,
// for test_sampler (against Sampler::Pick) and test_cuda_kernels (against the
// device's PickTokens), with the cases on which two correct implementations
// may disagree marked. Also the logit rows and options both tests sweep.
//
// Tolerance. Both implementations compute the same f32 argument
// x = (logit - max) / T (IEEE subtraction and division), then p = exp(x) in
// f32: glibc's expf is within 1 ulp, CUDA's expf (no fast math) within 2, so
// each p is within 2^-22 p + 2^-148 (two subnormal ulps) of exp(x). Every
// decision compares a cumulative sum C <= total with theta * total (theta =
// the uniform, or top_p), and each side moves by at most 2^-22 total + n
// 2^-148 from the p's; on top of that come n 2^-53 total per double sum
// (host, this reference) and up to n 2^-F per side from the device's
// fixed-point weights (each p rounded up to a unit of 2^-F, F = min(52,
// 63 - ceil(log2 n)): FixedPointBits). So
//   tol = total (2^-21 + 3 n 2^-53) + n (2^-147 + 2^-(F-1))
// bounds |C - theta total| on every case the implementations can decide
// differently; total >= 1 (the maximum weighs 1), so that is ~4.8e-7 of the
// mass, nearly all of it from expf. A pick is marked near_boundary when a
// decision it depends on is that close (the target to a CDF step, the top_p
// mass to a nucleus cut), or when two tokens of different logit straddling
// the nucleus cut have p within 2 x 2 ulp, so that the p-desc order (hence the
// nucleus) may differ. Ties of equal logit give equal p everywhere and are
// broken by id everywhere, so they never need a tolerance.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <random>
#include <vector>

#include "sampler.h"

namespace awqtest {

// F of the device's fixed-point weights (cuda/sampling.cu): n weights of at
// most 2^F sum below 2^63.
inline int FixedPointBits(int n) {
  int ceil_log2 = 0;
  while ((int64_t{1} << ceil_log2) < n) ++ceil_log2;
  return std::min(52, 63 - ceil_log2);
}

class ReferencePick {
 public:
  struct Answer {
    int token;
    bool near_boundary;
  };

  ReferencePick(const std::vector<float>& logits, const awqcore::TokenPick& pick)
      : n_(static_cast<int>(logits.size())) {
    if (pick.temperature == 0.0f || pick.top_k == 1) {
      // Argmax: largest non-NaN, lowest id on ties; all NaN gives the last id.
      greedy_ = n_ - 1;
      for (int i = n_ - 1; i >= 0; --i)
        if (!std::isnan(logits[i]) && (std::isnan(logits[greedy_]) || logits[i] >= logits[greedy_])) greedy_ = i;
      return;
    }
    std::vector<float> rank(n_);
    for (int i = 0; i < n_; ++i) rank[i] = std::isnan(logits[i]) ? -INFINITY : logits[i];
    // Top-k: the k first by (logit desc, id asc); stable_sort keeps ids ascending within ties.
    std::vector<int> set(n_);
    std::iota(set.begin(), set.end(), 0);
    std::stable_sort(set.begin(), set.end(), [&](int a, int b) { return rank[a] > rank[b]; });
    if (pick.top_k > 0 && pick.top_k < n_) set.resize(pick.top_k);
    const float max = rank[set[0]];
    std::vector<double> p(n_, 0.0);
    std::vector<float> x(n_, 0.0f);
    double total = 0.0;
    for (int i : set) {
      // SamplingWeight's cases, with exp of its f32 argument taken in double.
      if (rank[i] == max) {
        p[i] = 1.0;
      } else if (rank[i] != -INFINITY && max != INFINITY) {
        x[i] = (rank[i] - max) / pick.temperature;
        p[i] = std::exp(static_cast<double>(x[i]));
      }
      total += p[i];
    }
    if (pick.top_p < 1.0f) {
      std::stable_sort(set.begin(), set.end(), [&](int a, int b) {
        return p[a] > p[b] || (p[a] == p[b] && a < b);
      });
      const double needed = static_cast<double>(pick.top_p) * total, tol = Tolerance(total);
      size_t size = set.size();
      double cumulative = 0.0;
      for (size_t j = 0; j < set.size(); ++j) {
        cumulative += p[set[j]];
        if (std::fabs(cumulative - needed) <= tol) nucleus_near_ = true;
        if (cumulative >= needed && size == set.size()) size = j + 1;
      }
      if (size < set.size()) {
        const int a = set[size - 1], b = set[size];
        if (x[a] != x[b] && p[a] - p[b] <= 0x1p-21 * p[a] + 0x1p-147) nucleus_near_ = true;
      }
      set.resize(size);
    }
    std::sort(set.begin(), set.end());
    kept_ = set;
    kept_p_.resize(set.size());
    total_ = 0.0;
    for (size_t j = 0; j < set.size(); ++j) total_ += (kept_p_[j] = p[set[j]]);
  }

  // The token for `uniform`: the first kept token (id order) whose
  // cumulative weight exceeds uniform * total, else the last.
  Answer Token(double uniform) const {
    if (kept_.empty()) return {greedy_, false};
    const double target = uniform * total_, tol = Tolerance(total_);
    Answer answer{kept_.back(), nucleus_near_};
    double cumulative = 0.0;
    bool found = false;
    for (size_t j = 0; j + 1 < kept_.size(); ++j) {
      cumulative += kept_p_[j];
      if (std::fabs(cumulative - target) <= tol) answer.near_boundary = true;
      if (!found && target < cumulative) {
        answer.token = kept_[j];
        found = true;
      }
    }
    return answer;
  }

 private:
  double Tolerance(double total) const {
    return total * (0x1p-21 + 3.0 * n_ * 0x1p-53) + n_ * (0x1p-147 + std::ldexp(1.0, 1 - FixedPointBits(n_)));
  }

  int n_;
  int greedy_ = 0;               // the pick when greedy (kept_ empty)
  std::vector<int> kept_;        // kept token ids, ascending
  std::vector<double> kept_p_;   // their weights, exp in double
  double total_ = 0.0;
  bool nucleus_near_ = false;
};

// The rows both tests sweep, [6][vocab]: N(0, 3) logits; the same rounded to
// multiples of 0.5 (~40 distinct values: ties at every top-k and top-p cut);
// one logit of 1e4 among N(0, 3) (every other weight underflows to 0);
// N(0, 3) with NaN, -inf and +-0 sprinkled in; the same with two +inf (they
// share the mass); NaN and -inf only (every kept token weighs 1).
inline std::vector<std::vector<float>> SamplingRows(int vocab, std::mt19937& rng) {
  std::normal_distribution<float> normal(0.f, 3.f);
  std::vector<std::vector<float>> rows(6, std::vector<float>(vocab));
  for (int i = 0; i < vocab; ++i) {
    rows[0][i] = normal(rng);
    rows[1][i] = std::round(normal(rng) * 2.f) / 2.f;
    rows[2][i] = normal(rng);
    rows[3][i] = i % 7 == 3 ? NAN : i % 11 == 5 ? -INFINITY : i % 13 == 1 ? -0.0f : i % 13 == 2 ? 0.0f : normal(rng);
    rows[5][i] = i % 3 == 1 ? NAN : -INFINITY;
  }
  rows[2][rng() % vocab] = 1e4f;
  rows[4] = rows[3];
  rows[4][rng() % vocab] = INFINITY;
  rows[4][rng() % vocab] = INFINITY;
  return rows;
}

// 1 - 2^-53, the largest uniform Sampler draws, 0, and three random draws.
inline std::vector<double> SamplingUniforms(std::mt19937_64& rng) {
  std::vector<double> u = {0.0, 1.0 - 0x1p-53};
  for (int i = 0; i < 3; ++i) u.push_back(static_cast<double>(rng() >> 11) * 0x1p-53);
  return u;
}

}  // namespace awqtest
