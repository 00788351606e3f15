// The CUDA linear, norm, activation and sampling kernels against their CPU
// scalar references (cpp/src/ops/*.h, Sampler::Pick for the token picks) on
// random data over odd shapes; tolerances as cuda_checks.h derives them.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "cuda_checks.h"
#include "cuda_testing.h"
#include "half.h"
#include "ops/activation.h"
#include "ops/embedding_table.h"
#include "ops/int4_linear.h"
#include "ops/rmsnorm.h"
#include "random_weights.h"
#include "sampler.h"
#include "sampling_reference.h"
#include "test_harness.h"

using namespace awqcore;
using namespace awqtest;

namespace {

// One int4 linear case: (out, in, group, tokens, bias, residual) through
// cuda_test::Int4Linear against the double reference. product_error: the
// relative rounding of each product w x before the f32 sums (0 for the f32
// GEMV; 2^-10 for the tensor-core GEMM, which rounds x and w to f16).
void CheckInt4Linear(const int (&c)[6], double product_error, std::mt19937& rng) {
  const int out = c[0], in = c[1], g = c[2], n = c[3];
  RandomInt4 w(out, in, g, c[4], rng);
  std::vector<float> x = RandomFloats(static_cast<size_t>(n) * in, rng);
  std::vector<float> residual = RandomFloats(static_cast<size_t>(n) * out, rng);
  std::vector<float> want(static_cast<size_t>(n) * out), got(want.size());
  Int4LinearReference(w.layer, x.data(), n, want.data());
  std::vector<double> tol(want.size());
  for (int t = 0; t < n; ++t)
    for (int r = 0; r < out; ++r) {
      const size_t i = static_cast<size_t>(t) * out + r;
      // Chunk sums of 32, scaled, then summed over in/32 chunks and lanes:
      // at most in + 3 roundings along any path; + bias/residual adds.
      tol[i] = (product_error + Gamma(in + 3)) * w.AbsProductSum(r, x.data() + static_cast<size_t>(t) * in) +
               4 * kU * (std::fabs(want[i]) + 2.0);
      if (c[5]) want[i] += residual[i];
    }
  cuda_test::Int4LinearForward(w.layer, x.data(), n, c[5] ? residual.data() : nullptr, got.data());
  const std::string what = "int4 " + std::to_string(out) + "x" + std::to_string(in) + " g" +
                           std::to_string(g) + " n" + std::to_string(n);
  CheckClose(what.c_str(), got, want, tol);
}

TEST(int4_gemv_matches_reference) {
  std::mt19937 rng(1);
  // (out, in, group, tokens, bias, residual): rows not a multiple of the
  // 8 / 16 / 32 per block, in not a multiple of 1024 (partial last warp
  // step), every tile shape (1, 2, 3..4, 5..8 tokens) and a remainder
  // (11 = 8 + 3), every group size.
  const int cases[][6] = {{7, 32, 32, 1, 0, 0},      {33, 96, 32, 3, 1, 0},
                          {130, 256, 64, 8, 0, 1},   {61, 384, 128, 11, 1, 1},
                          {45, 1056, 32, 2, 0, 0},   {300, 2176, 128, 1, 0, 1},
                          {17, 4096, 128, 5, 1, 0},  {70, 3136, 64, 4, 1, 1}};
  for (const auto& c : cases) CheckInt4Linear(c, 0.0, rng);
}

TEST(int4_gemm_matches_reference) {
  // Int4Linear with >= kTensorCoreMinTokens (16) tokens: the tensor-core kernel.
  // x and (q - z) s are each rounded to f16 (2^-11 relative), so a product
  // is off by <= 2^-10 + 2^-22 of itself before the f32 sums. Cases: tokens
  // and rows not multiples of the 64 x 128 block (zero-filled edges), one
  // 32-column step (fewer steps than pipeline stages), every group size,
  // several blocks along both M and N, bias and residual.
  std::mt19937 rng(11);
  const int cases[][6] = {{130, 256, 64, 16, 0, 0},  {61, 384, 128, 17, 1, 1},
                          {128, 32, 32, 65, 0, 1},   {257, 96, 32, 100, 1, 0},
                          {300, 2176, 128, 64, 0, 1}, {1000, 1024, 64, 130, 1, 1}};
  for (const auto& c : cases) CheckInt4Linear(c, std::ldexp(1.0, -10) + std::ldexp(1.0, -22), rng);
}

TEST(f16_gemv_and_embedding_match_reference) {
  std::mt19937 rng(2);
  const int cases[][3] = {{300, 64, 1}, {1001, 576, 4}, {77, 264, 7}};  // rows, d, tokens
  for (const auto& c : cases) {
    const int rows = c[0], d = c[1], n = c[2];
    std::vector<uint16_t> w(static_cast<size_t>(rows) * d);
    std::vector<float> wf = RandomFloats(w.size(), rng);
    for (size_t i = 0; i < w.size(); ++i) w[i] = F32ToF16(wf[i]);
    std::vector<float> x = RandomFloats(static_cast<size_t>(n) * d, rng);
    std::vector<float> want(static_cast<size_t>(n) * rows), got(want.size());
    const EmbeddingTable table{rows, d, w.data(), nullptr, nullptr};
    TableLinearReference(table, x.data(), n, want.data());
    std::vector<double> tol(want.size());
    for (int t = 0; t < n; ++t)
      for (int r = 0; r < rows; ++r) {
        double s = 0.0;
        for (int k = 0; k < d; ++k) s += std::fabs(F16ToF32(w[static_cast<size_t>(r) * d + k]) * x[static_cast<size_t>(t) * d + k]);
        tol[static_cast<size_t>(t) * rows + r] = Gamma(d + 1) * s;
      }
    cuda_test::F16Linear(w.data(), rows, d, x.data(), n, got.data());
    CheckClose(("f16 linear " + std::to_string(rows) + "x" + std::to_string(d)).c_str(), got, want, tol);

    std::vector<int> ids(n);
    for (int& id : ids) id = static_cast<int>(rng() % rows);
    // Scaled as Gemma's sqrt(d): one f32 product per element on both sides.
    const float scale = std::sqrt(static_cast<float>(d));
    std::vector<float> emb_want(static_cast<size_t>(n) * d), emb_got(emb_want.size());
    EmbeddingGather(table, ids.data(), n, emb_want.data());
    for (float& e : emb_want) e *= scale;
    cuda_test::Embedding(w.data(), rows, d, ids.data(), n, scale, emb_got.data());
    CheckClose("embedding x sqrt(d) (exact)", emb_got, emb_want, std::vector<double>(emb_want.size(), 0.0));
  }
}

TEST(rmsnorm_matches_reference) {
  // Rows of d = 64 .. 4100, and rows of hd = 256 as the per-head q/k norms
  // run them (n * heads rows); with a residual: the sandwich norms' add.
  std::mt19937 rng(3);
  const int cases[][2] = {{64, 3}, {576, 3}, {4100, 3}, {256, 4 * 7}};  // d, rows
  for (const auto& c : cases) {
    const int d = c[0], n = c[1];
    std::vector<float> x = RandomFloats(static_cast<size_t>(n) * d, rng, -3.f, 3.f), w = RandomFloats(d, rng);
    std::vector<float> residual = RandomFloats(x.size(), rng, -3.f, 3.f);
    std::vector<float> want(x.size()), got(x.size());
    RmsNormReference(x.data(), w.data(), d, 1e-5f, n, want.data());
    cuda_test::RmsNorm(x.data(), w.data(), d, 1e-5f, n, nullptr, got.data());
    // Sum of d squares (gamma(d)), rsqrt (2 ulp), two products.
    std::vector<double> tol(want.size());
    for (size_t i = 0; i < tol.size(); ++i) tol[i] = (Gamma(d) + 8 * kU) * std::fabs(want[i]) + 1e-30;
    CheckClose(("rmsnorm d" + std::to_string(d)).c_str(), got, want, tol);
    // + residual: one more rounding, of the sum.
    for (size_t i = 0; i < tol.size(); ++i) {
      want[i] += residual[i];
      tol[i] += kU * (std::fabs(want[i]) + tol[i]);
    }
    cuda_test::RmsNorm(x.data(), w.data(), d, 1e-5f, n, residual.data(), got.data());
    CheckClose(("residual + rmsnorm d" + std::to_string(d)).c_str(), got, want, tol);
  }
}

TEST(gated_activations_match_reference) {
  std::mt19937 rng(13);
  const int n = 10007;
  std::vector<float> g = RandomFloats(n, rng, -8.f, 8.f), u = RandomFloats(n, rng, -2.f, 2.f);
  std::vector<float> want(n), got(n);
  SwiGluReference(g.data(), u.data(), n, want.data());
  cuda_test::GatedActivation(Activation::kSilu, g.data(), u.data(), n, got.data());
  std::vector<double> tol(n);
  for (int i = 0; i < n; ++i) tol[i] = 8 * kU * std::fabs(want[i]) + 1e-30;  // expf, 1 div, 2 mul
  CheckClose("swiglu", got, want, tol);

  // GELU-tanh against GeGluReference (double): with u = sqrt(2/pi) (g +
  // 0.044715 g^3), the device's f32 u carries ~4 roundings (4 u |u|
  // relative); d/du tanh(u) = 1 - tanh^2 <= 1 moves 1 + tanh by <= 4 u |u|,
  // tanhf adds 2 ulp of tanh, and the products 3 roundings: checked at
  // (4 |u| + 8) u |g up|.
  GeGluReference(g.data(), u.data(), n, want.data());
  for (int i = 0; i < n; ++i) {
    const double x = g[i], inner = std::sqrt(2.0 / 3.141592653589793) * (x + 0.044715 * x * x * x);
    tol[i] = (4 * std::fabs(inner) + 8) * kU * std::fabs(x * u[i]) + 1e-30;
  }
  cuda_test::GatedActivation(Activation::kGeluTanh, g.data(), u.data(), n, got.data());
  CheckClose("gelu-tanh gate", got, want, tol);
}

TEST(soft_cap_matches_reference) {
  // cap tanh(x / cap) against double: 1/cap, the product, tanhf (2 ulp; tanh
  // passes its argument's relative error on at most 1x) and the final
  // product: <= 6 ulp, checked at 8 u |want|. Values on both sides of the
  // cap, Gemma 2's 30 and 50.
  std::mt19937 rng(14);
  for (float cap : {30.f, 50.f}) {
    const int n = 4099;
    std::vector<float> x = RandomFloats(n, rng, -4 * cap, 4 * cap), got(n), want(n);
    std::vector<double> tol(n);
    for (int i = 0; i < n; ++i) {
      want[i] = static_cast<float>(cap * std::tanh(static_cast<double>(x[i]) / cap));
      tol[i] = 8 * kU * std::fabs(want[i]) + 1e-30;
    }
    cuda_test::SoftCap(x.data(), n, cap, got.data());
    CheckClose(("soft-cap " + std::to_string(static_cast<int>(cap))).c_str(), got, want, tol);
  }
}

TEST(pick_tokens_match_the_host_sampler) {
  // PickTokens against Sampler::Pick and the double-precision reference
  // (sampling_reference.h) for vocab sizes up to Qwen2.5's 151936, every mix
  // of greedy, temperature, top_k (none, 1, small, large, > vocab) and top_p
  // (none, 0.9, 0.5, one token), on rows with ties at the cuts, a single
  // huge logit and non-finite logits, for uniforms 0, 1 - 2^-53 and random.
  // All three must agree unless the reference marks the pick near a boundary:
  // within its tolerance (~4.8e-7 of the mass: f32 expf on either side is
  // within 2 ulp, plus double and fixed-point summation) of a CDF step or a
  // nucleus cut; those are counted, with how many differ.
  std::mt19937 rng(5);
  std::mt19937_64 draws(6);
  for (int vocab : {1, 37, 1000, 50257, 151936}) {
    int picks = 0, near = 0, near_differ = 0, far_differ = 0;
    Sampler sampler(vocab);
    const std::vector<std::vector<float>> rows = awqtest::SamplingRows(vocab, rng);
    for (size_t r = 0; r < rows.size(); ++r) {
      for (float temperature : {0.0f, 0.3f, 1.0f, 2.5f}) {
        for (int top_k : {0, 1, 5, 1000, vocab + 3}) {
          // One launch per (row, temperature, top_k): every top_p x uniform.
          std::vector<TokenPick> batch;
          std::vector<awqtest::ReferencePick::Answer> want;
          for (float top_p : {1.0f, 0.9f, 0.5f, 1e-6f}) {
            const TokenPick options{temperature, top_k, top_p, 0.0};
            const awqtest::ReferencePick reference(rows[r], options);
            for (double uniform : awqtest::SamplingUniforms(draws)) {
              batch.push_back(options);
              batch.back().uniform = uniform;
              want.push_back(reference.Token(uniform));
            }
          }
          const int n = static_cast<int>(batch.size());
          std::vector<float> logits;
          logits.reserve(static_cast<size_t>(n) * vocab);
          for (int j = 0; j < n; ++j) logits.insert(logits.end(), rows[r].begin(), rows[r].end());
          std::vector<int> got(n);
          cuda_test::PickTokens(logits.data(), vocab, n, batch.data(), got.data());
          for (int j = 0; j < n; ++j) {
            const int host = sampler.Pick(rows[r].data(), batch[j]);
            ++picks;
            if (want[j].near_boundary) {
              ++near;
              near_differ += got[j] != host;
            } else if (got[j] != host || host != want[j].token) {
              if (++far_differ <= 10) {
                std::printf("  row %zu T %g top_k %d top_p %g uniform %.17g: device %d, host %d, reference %d\n",
                            r, batch[j].temperature, batch[j].top_k, batch[j].top_p, batch[j].uniform, got[j],
                            host, want[j].token);
              }
            }
          }
        }
      }
    }
    std::printf("  vocab %d: %d picks, %d near a boundary (%d of them device != host), %d differ elsewhere\n",
                vocab, picks, near, near_differ, far_differ);
    CHECK(far_differ == 0);
  }
}

}  // namespace

AWQCORE_CUDA_TEST_MAIN()
