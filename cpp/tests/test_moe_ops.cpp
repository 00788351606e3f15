// The mixture-of-experts ops (ops/moe_router.h, ops/moe_experts.h) against
// their references: the router's top-k (ties to the lower index, checked on
// hand-made logits), and the experts' grouped computation against each token
// run through each of its experts alone, over expert counts, k, token counts
// (decode, batched decode, prefill), widths that do and do not take the W4A8
// path, and thread counts.
#include <algorithm>
#include <cstdio>
#include <numeric>
#include <string>
#include <tuple>
#include <memory>
#include <random>
#include <vector>

#include "cpu_features.h"
#include "ops/activation.h"
#include "ops/int4_linear.h"
#include "ops/moe_experts.h"
#include "ops/moe_router.h"
#include "ops/vec.h"
#include "random_weights.h"
#include "test_harness.h"
#include "thread_pool.h"

using namespace awqcore;
using awqtest::Case;
using awqtest::RandomFloats;
using awqtest::RandomInt4;

namespace {

// Routes `tokens` tokens through the pool's forward and the reference:
// identical experts, weights within `tolerance`.
void CheckRouter(const std::vector<float>& router, int num_experts, int d, const std::vector<float>& x,
                 int tokens, int k, bool normalize, ThreadPool& pool, const std::string& what) {
  std::vector<float> scores(static_cast<size_t>(tokens) * num_experts), weights(tokens * k), want_weights(tokens * k);
  std::vector<int> experts(tokens * k), want_experts(tokens * k);
  MoeRouterForward(router.data(), num_experts, d, x.data(), tokens, k, normalize, scores.data(),
                   experts.data(), weights.data(), pool);
  MoeRouterReference(router.data(), num_experts, d, x.data(), tokens, k, normalize,
                     want_experts.data(), want_weights.data());
  CHECK(experts == want_experts);
  // The softmax in f32: each exp within a few ulp, the sum of E terms within
  // gamma(E) relative, one division: for E <= 64 well under 1e-5 of a weight
  // (<= 1); the logits' f32 dot products (gamma(d) ~ 1e-5 relative for
  // d <= 200, |logit| <~ 3) move p by a similar amount.
  double worst = 0.0;
  for (int i = 0; i < tokens * k; ++i) worst = std::max(worst, std::fabs(double{weights[i]} - want_weights[i]));
  CHECK_LE(worst, 2e-5, what);
  if (normalize) {
    for (int t = 0; t < tokens; ++t) {
      double sum = 0.0;
      for (int r = 0; r < k; ++r) sum += weights[t * k + r];
      CHECK_LE(std::fabs(sum - 1.0), 1e-5, what + Case(" token ", t, " weights sum ", sum));
    }
  }
}

}  // namespace

TEST(router_matches_reference) {
  std::mt19937 rng(7);
  ThreadPool pool(2);
  for (int num_experts : {1, 3, 8, 60}) {
    for (int d : {5, 64, 200}) {
      for (int k : {1, 2, num_experts}) {
        if (k > num_experts) continue;
        for (bool normalize : {true, false}) {
          const int tokens = 9;
          // Router rows in [-0.5, 0.5], x in [-1, 1]: logits spread by ~sqrt(d)/3.
          const std::vector<float> router = RandomFloats(static_cast<size_t>(num_experts) * d, rng, -0.5f, 0.5f);
          const std::vector<float> x = RandomFloats(static_cast<size_t>(tokens) * d, rng);
          CheckRouter(router, num_experts, d, x, tokens, k, normalize, pool,
                      Case("E=", num_experts, " d=", d, " k=", k, " normalize=", normalize));
        }
      }
    }
  }
}

TEST(router_breaks_ties_to_the_lower_index) {
  // x = e_0 makes logit e = router[e, 0]: logits {1, 3, 2, 3, 0.5, 2}. The
  // order by p descending, equal p by ascending index (docs/format.md), is
  // 1, 3, 2, 5, 0, 4.
  const int num_experts = 6, d = 4;
  const float column0[num_experts] = {1.0f, 3.0f, 2.0f, 3.0f, 0.5f, 2.0f};
  std::vector<float> router(num_experts * d, 0.0f), x = {1.0f, 0.0f, 0.0f, 0.0f};
  for (int e = 0; e < num_experts; ++e) router[e * d] = column0[e];
  ThreadPool pool(2);
  const int order[num_experts] = {1, 3, 2, 5, 0, 4};
  for (int k = 1; k <= num_experts; ++k) {
    std::vector<float> scores(num_experts), weights(k);
    std::vector<int> experts(k);
    MoeRouterForward(router.data(), num_experts, d, x.data(), 1, k, true, scores.data(), experts.data(),
                     weights.data(), pool);
    for (int r = 0; r < k; ++r) CHECK(experts[r] == order[r]);
    CheckRouter(router, num_experts, d, x, 1, k, true, pool, Case("ties, k=", k));
    CheckRouter(router, num_experts, d, x, 1, k, false, pool, Case("ties, k=", k));
  }
  // All logits equal: experts 0 .. k-1, each weight 1/E (1/k normalized).
  std::fill(router.begin(), router.end(), 0.25f);
  std::vector<float> scores(num_experts), weights(3);
  std::vector<int> experts(3);
  MoeRouterForward(router.data(), num_experts, d, x.data(), 1, 3, false, scores.data(), experts.data(),
                   weights.data(), pool);
  CHECK((experts == std::vector<int>{0, 1, 2}));
  for (float w : weights) CHECK_NEAR(w, 1.0 / num_experts, 1e-7);
}

namespace {

// E random experts of width f over d, owning their storage.
struct RandomExperts {
  std::vector<std::unique_ptr<RandomInt4>> storage;
  MoeWeights moe;
  RandomExperts(int num_experts, int d, int f, int group_size, std::mt19937& rng) {
    for (int e = 0; e < num_experts; ++e) {
      for (auto [out, in, list] : {std::tuple{f, d, &moe.gate}, std::tuple{f, d, &moe.up},
                                   std::tuple{d, f, &moe.down}}) {
        storage.push_back(std::make_unique<RandomInt4>(out, in, group_size, false, rng));
        list->push_back(storage.back()->layer);
      }
    }
  }
};

// Random routing: k distinct experts per token (rank order arbitrary, as a
// router's), weights in (0, 1).
void RandomRouting(int tokens, int k, int num_experts, std::mt19937& rng, std::vector<int>& experts,
                   std::vector<float>& weights) {
  experts.resize(tokens * k);
  weights = RandomFloats(tokens * k, rng, 0.05f, 1.0f);
  std::vector<int> all(num_experts);
  for (int t = 0; t < tokens; ++t) {
    std::iota(all.begin(), all.end(), 0);
    std::shuffle(all.begin(), all.end(), rng);
    std::copy_n(all.begin(), k, experts.begin() + t * k);
  }
}

}  // namespace

TEST(experts_match_each_token_through_each_expert_alone) {
  std::mt19937 rng(11);
  struct Shape { int num_experts, k, d, f, group_size; };
  // d, f multiples of 64 take the one-pass W4A8 path in decode; f = 96 and
  // d = 96 do not (their int8 rounding needs 64-column spans).
  const Shape shapes[] = {{4, 2, 64, 128, 32}, {8, 3, 128, 64, 64}, {5, 5, 64, 96, 32},
                          {6, 1, 96, 128, 32}, {16, 4, 128, 128, 128}};
  for (const Shape& s : shapes) {
    const RandomExperts experts(s.num_experts, s.d, s.f, s.group_size, rng);
    for (int threads : {1, 3}) {
      ThreadPool pool(threads);
      for (int tokens : {1, 3, 8, 13}) {
        for (bool int8_decode : {true, false}) {
          const std::string what = Case("E=", s.num_experts, " k=", s.k, " d=", s.d, " f=", s.f, " g=",
                                        s.group_size, " tokens=", tokens, " threads=", threads,
                                        " int8_decode=", int8_decode);
          std::vector<int> routes;
          std::vector<float> weights;
          RandomRouting(tokens, s.k, s.num_experts, rng, routes, weights);
          const std::vector<float> x = RandomFloats(static_cast<size_t>(tokens) * s.d, rng);
          MoeScratch scratch(tokens, s.k, s.num_experts, s.d, s.f);
          std::vector<float> y(static_cast<size_t>(tokens) * s.d);
          MoeExpertsForward(experts.moe, Activation::kSilu, x.data(), tokens, routes.data(), weights.data(),
                            s.k, y.data(), scratch, pool, DetectedIsa(), int8_decode);
          // The same ops one token and one expert at a time, in the call's
          // activation mode (the int8 mode rounds every call's input).
          const bool call_int8 = int8_decode;
          std::vector<float> alone(y.size(), 0.0f), act(s.f), out(s.d);
          std::vector<float> exact(y.size(), 0.0f);
          for (int t = 0; t < tokens; ++t) {
            const float* xt = x.data() + static_cast<size_t>(t) * s.d;
            for (int r = 0; r < s.k; ++r) {
              const int e = routes[t * s.k + r];
              const float w = weights[t * s.k + r];
              Int4GatedMlpForward(experts.moe.gate[e], experts.moe.up[e], Activation::kSilu, xt, 1,
                                  act.data(), pool, DetectedIsa(), call_int8);
              Int4LinearForward(experts.moe.down[e], act.data(), 1, out.data(), pool, DetectedIsa(), call_int8);
              AxpyF32(w, out.data(), alone.data() + static_cast<size_t>(t) * s.d, s.d);
              // The definition with the scalar oracles, on what the linears
              // multiply: x, or its int8 rounding on the W4A8 path.
              const std::vector<float> x_in = awqtest::Int4OpInput(
                  std::vector<float>(xt, xt + s.d), 1, s.d, s.group_size, call_int8);
              std::vector<float> gate(s.f), up(s.f);
              Int4LinearReference(experts.moe.gate[e], x_in.data(), 1, gate.data());
              Int4LinearReference(experts.moe.up[e], x_in.data(), 1, up.data());
              SwiGluReference(gate.data(), up.data(), s.f, gate.data());
              const std::vector<float> act_in = awqtest::Int4OpInput(gate, 1, s.f, s.group_size, call_int8);
              Int4LinearReference(experts.moe.down[e], act_in.data(), 1, out.data());
              AxpyF32(w, out.data(), exact.data() + static_cast<size_t>(t) * s.d, s.d);
            }
          }
          // Grouping changes which tokens share a kernel call, never a
          // token's arithmetic, on the W4A8 path (every linear's input a
          // multiple of 64 columns wide) in calls of decode size and the f32
          // GEMV (< 4 tokens per group); the tiled f32 GEMM (4 or more) sums
          // in another order, within the f32 bound below, and so does the
          // W4A8 GEMM (more than kQ8MaxTokens tokens, AVX-512 VNNI CPUs),
          // which can then move an int8 rounding of act by one step: within
          // the 1e-3 bound below.
          const double grouped_error = awqtest::RelativeError(y, alone);
          // Each linear within gamma(in + 8) ~ 1e-5 of exact for in <= 128,
          // three in a row and a sum of k weighted terms: < 1e-4. On the
          // W4A8 path the kernel's act and the oracle's differ by that much,
          // which can move an int8 rounding of act by one step (1/254 of its
          // block's max) on a few elements: 1e-3 still catches a wrong expert
          // or slot (O(1)).
          const double exact_error = awqtest::RelativeError(y, exact);
          const bool all_int8 = call_int8 && s.d % kQ8Span == 0 && s.f % kQ8Span == 0;
          std::printf("  %s: vs alone %.3g, vs reference %.3g\n", what.c_str(), grouped_error, exact_error);
          if ((all_int8 && tokens <= kQ8MaxTokens) || tokens < 4) {
            CHECK(y == alone);
          } else if (all_int8) {
            CHECK_LE(grouped_error, 1e-3, what);
          } else {
            CHECK_LE(grouped_error, 1e-5, what);
          }
          CHECK_LE(exact_error, call_int8 ? 1e-3 : 1e-4, what);
        }
      }
    }
  }
}

AWQCORE_TEST_MAIN()
