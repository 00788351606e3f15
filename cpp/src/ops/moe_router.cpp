#include "ops/moe_router.h"

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <numeric>
#include <vector>

#include "ops/vec.h"

namespace awqcore {

void MoeRouteToken(float* scores, int num_experts, int k, bool normalize, int* experts,
                   float* weights) {
  float max_logit = scores[0];
  for (int e = 1; e < num_experts; ++e) max_logit = std::max(max_logit, scores[e]);
  float sum = 0.0f;
  for (int e = 0; e < num_experts; ++e) sum += (scores[e] = std::exp(scores[e] - max_logit));
  for (int e = 0; e < num_experts; ++e) scores[e] /= sum;
  // Rank r takes the largest p not yet chosen; the strict > keeps the first
  // (lowest) index among equal p. O(k E): E is at most a few hundred.
  float chosen_sum = 0.0f;
  for (int r = 0; r < k; ++r) {
    int best = -1;
    for (int e = 0; e < num_experts; ++e) {
      if (std::find(experts, experts + r, e) != experts + r) continue;
      if (best < 0 || scores[e] > scores[best]) best = e;
    }
    experts[r] = best;
    weights[r] = scores[best];
    chosen_sum += scores[best];
  }
  if (normalize) {
    for (int r = 0; r < k; ++r) weights[r] /= chosen_sum;
  }
}

void MoeRouterForward(const float* router, int num_experts, int d, const float* x, int num_tokens,
                      int k, bool normalize, float* scores, int* experts, float* weights,
                      ThreadPool& pool) {
  const auto logits = [&](int64_t begin, int64_t end) {  // items t * E + e
    for (int64_t i = begin; i < end; ++i) {
      const int64_t t = i / num_experts, e = i % num_experts;
      scores[i] = DotF32(router + e * d, x + t * d, d);
    }
  };
  // E x d f32 per token: Mixtral 8 x 4096 (128 KiB), Qwen3-30B-A3B 128 x
  // 2048 (1 MiB). A fork-join costs microseconds on an idle machine and
  // milliseconds on a loaded one (measured ~2 ms per call at load 20 on 2
  // cores, against 1-14 us for 8 x 1024 to 64 x 1024 on the calling thread),
  // so up to 256 KiB the calling thread computes the logits alone.
  constexpr int64_t kInlineFloats = int64_t{1} << 16;
  const int64_t items = static_cast<int64_t>(num_tokens) * num_experts;
  if (items * d <= kInlineFloats) {
    logits(0, items);
  } else {
    pool.ParallelFor(items, logits);
  }
  for (int t = 0; t < num_tokens; ++t) {
    MoeRouteToken(scores + static_cast<size_t>(t) * num_experts, num_experts, k, normalize,
                  experts + static_cast<size_t>(t) * k, weights + static_cast<size_t>(t) * k);
  }
}

void MoeRouterReference(const float* router, int num_experts, int d, const float* x,
                        int num_tokens, int k, bool normalize, int* experts, float* weights) {
  std::vector<double> p(num_experts);
  std::vector<int> order(num_experts);
  for (int t = 0; t < num_tokens; ++t) {
    for (int e = 0; e < num_experts; ++e) {
      double dot = 0.0;
      for (int c = 0; c < d; ++c) {
        dot += static_cast<double>(router[static_cast<size_t>(e) * d + c]) * x[static_cast<size_t>(t) * d + c];
      }
      p[e] = static_cast<float>(dot);
    }
    const double max_logit = *std::max_element(p.begin(), p.end());
    double sum = 0.0;
    for (double& v : p) sum += (v = std::exp(v - max_logit));
    for (double& v : p) v /= sum;
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return p[a] > p[b]; });
    double chosen = 0.0;
    for (int r = 0; r < k; ++r) chosen += p[order[r]];
    for (int r = 0; r < k; ++r) {
      experts[static_cast<size_t>(t) * k + r] = order[r];
      weights[static_cast<size_t>(t) * k + r] = static_cast<float>(normalize ? p[order[r]] / chosen : p[order[r]]);
    }
  }
}

}  // namespace awqcore
