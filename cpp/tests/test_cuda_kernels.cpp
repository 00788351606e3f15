// Each CUDA kernel family against its CPU scalar reference (cpp/src/ops/*.h,
// Sampler::Pick for the token picks) on random data over odd shapes. Without CUDA (build or device) it prints
// "skipped: ..." and exits 77, which ctest reports as skipped.
//
// Tolerances: a sum of n f32 products in any order is within
// gamma(n) * sum|a_i b_i| of the exact sum, gamma(n) = n u / (1 - n u),
// u = 2^-24 (Higham 3.1); the references accumulate in double. The attention
// test gives the reference the same f16-rounded cache the GPU holds, so only
// f32 ordering and __expf (2 ulp) remain; the tensor-core prefill attention's
// reference also gets its f16-rounded q, and its bound adds p's f16 rounding
// (derived at the test). A wrong nibble, group, head or position gives errors
// the size of the values, far above these bounds.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "cuda_testing.h"
#include "half.h"
#include "ops/activation.h"
#include "ops/attention.h"
#include "ops/embedding_table.h"
#include "ops/int4_linear.h"
#include "ops/moe_router.h"
#include "ops/rmsnorm.h"
#include "ops/rope.h"
#include "random_weights.h"
#include "sampler.h"
#include "sampling_reference.h"
#include "test_harness.h"

using namespace awqcore;

using awqtest::RandomFloats;
using awqtest::RandomInt4;

namespace {

constexpr double kU = 5.9604644775390625e-08;  // 2^-24
double Gamma(int n) { return n * kU / (1.0 - n * kU); }

// Checks |a - b| <= tol[i] elementwise; prints the worst relative error.
void CheckClose(const char* what, const std::vector<float>& got, const std::vector<float>& want,
                const std::vector<double>& tol) {
  double worst = 0.0, max_ref = 0.0;
  int bad = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    const double diff = std::fabs(static_cast<double>(got[i]) - want[i]);
    if (!(diff <= tol[i])) ++bad;  // NaN (an unwritten output) fails too
    worst = std::max(worst, diff);
    max_ref = std::max(max_ref, std::fabs(static_cast<double>(want[i])));
  }
  std::printf("  %s: max|diff|/max|ref| = %.3g, %d of %zu over tolerance\n", what,
              worst / (max_ref > 0 ? max_ref : 1), bad, want.size());
  CHECK(bad == 0);
}

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

// The rotary table of a test case: its base and scaling.
struct RopeOptions {
  float theta = 10000.f;
  RopeScaling scaling;
};

// One case through cuda_test::RopeAttention on random data: `start` cached
// rows, then n new tokens of sequence `sequence`.
struct AttentionRun {
  std::vector<float> q, k;          // inputs before rotary: [n, H*hd], [n, KV*hd]
  std::vector<float> q_gpu, k_gpu;  // q rotated on the device; k rotated as stored (f16)
  std::vector<float> kc, vc;        // the sequence's cache as the device holds it: [start + n, KV*hd]
  std::vector<float> out;           // attention output [n, H*hd]
};
AttentionRun RunRopeAttention(const AttentionShape& shape, const RopeOptions& rope_options, int start, int n,
                              int sequence, bool prefill_kernel, std::mt19937& rng) {
  const size_t qw = static_cast<size_t>(shape.num_heads) * shape.head_dim;
  const size_t kvw = static_cast<size_t>(shape.num_kv_heads) * shape.head_dim;
  AttentionRun r;
  std::vector<float> cache_k = RandomFloats(start * kvw, rng), cache_v = RandomFloats(start * kvw, rng);
  r.q = RandomFloats(n * qw, rng, -2.f, 2.f);
  r.k = RandomFloats(n * kvw, rng);
  std::vector<float> v = RandomFloats(n * kvw, rng);
  r.q_gpu = r.q;
  r.k_gpu.resize(n * kvw);
  r.out.resize(n * qw);
  const RopeTable rope(shape.head_dim, rope_options.theta, start + n, rope_options.scaling);
  cuda_test::RopeAttention(shape, rope, start, n, cache_k.data(), cache_v.data(), r.q_gpu.data(), r.k.data(),
                           v.data(), r.k_gpu.data(), r.out.data(), sequence, prefill_kernel);
  // f16 values of the old rows and of v; the GPU's rotated k rows.
  r.kc.resize((start + n) * kvw);
  r.vc.resize(r.kc.size());
  for (size_t i = 0; i < start * kvw; ++i) {
    r.kc[i] = F16ToF32(F32ToF16(cache_k[i]));
    r.vc[i] = F16ToF32(F32ToF16(cache_v[i]));
  }
  for (size_t i = 0; i < n * kvw; ++i) {
    r.kc[start * kvw + i] = r.k_gpu[i];
    r.vc[start * kvw + i] = F16ToF32(F32ToF16(v[i]));
  }
  return r;
}

std::string AttentionCase(const char* what, const AttentionShape& shape, int start, int n, int sequence) {
  return std::string(what) + " H" + std::to_string(shape.num_heads) + " KV" + std::to_string(shape.num_kv_heads) +
         " hd" + std::to_string(shape.head_dim) + " scale " + std::to_string(shape.ScoreScale()) +
         " window " + std::to_string(shape.window) + " @" + std::to_string(start) + "+" + std::to_string(n) +
         " seq" + std::to_string(sequence);
}

RopeScaling Scaling(RopeScaling::Type type, double factor, int original, double attention_factor = 1.0) {
  RopeScaling s;
  s.type = type;
  s.factor = factor;
  s.original_max_position_embeddings = original;
  s.attention_factor = attention_factor;
  return s;
}

TEST(rope_and_attention_match_reference) {
  std::mt19937 rng(4);
  // (H, KV, hd, cached positions, new tokens, sequence), the layer's scale
  // and window, the rotary base and scaling: GQA groups of 1..4, splits of
  // 256 crossed (300 + 3, 700 + 1), a multi-token prefill from empty;
  // sequences 0 .. 3 of a multi-sequence cache; head_dim 256 (Gemma 3 270M;
  // its chunks never take the tensor-core kernel); Gemma 3's scale 24^-0.5
  // and a local base; windows that start inside a split, skip whole splits
  // (600: keys 345 .. 604), cover the whole context, or are a few keys of a
  // prefill chunk (7 of 70 tokens); llama3, yarn (attention factor on cos and
  // sin) and linear rope scaling, past their original context of 32.
  struct Case {
    int dims[6];
    float scale;
    int window;
    RopeOptions rope;
  };
  using T = RopeScaling::Type;
  const Case cases[] = {
      {{4, 2, 16, 0, 5, 0}, 0.f, 0, {}},
      {{9, 3, 64, 300, 3, 1}, 0.f, 0, {}},
      {{2, 1, 128, 700, 1, 3}, 0.f, 0, {}},
      {{3, 3, 8, 0, 70, 1}, 0.f, 0, {}},
      {{4, 1, 256, 300, 3, 1}, 0.f, 0, {}},
      {{8, 2, 256, 0, 40, 0}, 0.0625f, 16, {1e6f, {}}},
      {{4, 2, 64, 600, 5, 2}, 0.f, 256, {500000.f, Scaling(T::kLlama3, 8.0, 32)}},
      {{4, 2, 32, 40, 9, 0}, 0.2041241452f, 16, {1e6f, Scaling(T::kYarn, 4.0, 32, 0.1 * std::log(4.0) + 1.0)}},
      {{3, 3, 8, 0, 70, 1}, 0.f, 7, {10000.f, Scaling(T::kLinear, 4.0, 0)}},
      {{6, 2, 16, 20, 4, 3}, 0.f, 512, {}}};
  for (const Case& c : cases) {
    const AttentionShape shape{c.dims[0], c.dims[1], c.dims[2], c.scale, c.window};
    const int start = c.dims[3], n = c.dims[4], total = start + n;
    const AttentionRun run = RunRopeAttention(shape, c.rope, start, n, c.dims[5], false, rng);
    // Rotation: the GPU applies the host's f32 cos/sin table (RopeTable, the
    // scaling's attention factor a included) vs angles in double: a few ulp.
    std::vector<float> q_ref = run.q, k_ref = run.k;
    RopeReference(q_ref.data(), n, shape.num_heads, shape.head_dim, c.rope.theta, start, c.rope.scaling);
    RopeReference(k_ref.data(), n, shape.num_kv_heads, shape.head_dim, c.rope.theta, start, c.rope.scaling);
    // a |a cos - b sin| <= a (|a| + |b|): a few roundings of values up to 4a (q) or 2a (k).
    const double a = c.rope.scaling.attention_factor;
    std::vector<double> q_tol(q_ref.size(), 16 * kU * 4 * a), k_tol(k_ref.size());
    CheckClose("rope q", run.q_gpu, q_ref, q_tol);
    for (size_t i = 0; i < k_ref.size(); ++i) k_tol[i] = std::fabs(k_ref[i]) / 1024.0 + 16 * kU * 2 * a;  // + 1 f16 ulp
    CheckClose("rope k as stored (f16)", run.k_gpu, k_ref, k_tol);
    // Attention over the cache the GPU holds: f16 values, GPU's rotated rows;
    // the reference reads each token's window with the shape's scale.
    std::vector<float> want(run.out.size());
    AttentionReference(shape, run.q_gpu.data(), run.kc.data(), run.vc.data(), start, n, want.data());
    // Outputs are convex combinations of |v| <= 1: softmax weights carry
    // relative errors of ~gamma(hd) |score| (|score| <= 2 a^2 hd scale with
    // |q| <= 2 a, |k| <= a after rotation) plus __expf's 2 ulp, and the sum
    // over <= total terms adds gamma(total).
    const double max_score = 2.0 * a * a * shape.head_dim * shape.ScoreScale();
    const double tol = 4 * (Gamma(shape.head_dim) * max_score + Gamma(total) + 4 * kU);
    CheckClose(AttentionCase("attention", shape, start, n, c.dims[5]).c_str(), run.out, want,
               std::vector<double>(want.size(), tol));
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

TEST(attention_prefill_matches_reference) {
  // AttentionPrefill (tensor cores, one sequence per call) over head dims 64
  // and 128, GQA groups 1, 3, 4, token counts below, at and across the 64-row
  // query tile (1, 17, 64, 100, 300) and starts on and off the 64-key tile
  // (0, 5, 64, 700: the diagonal then spans two key tiles, and the last key
  // tile runs past start + n, where the next sequence's rows are NaN: those
  // keys must be zero-filled, never read); sequences 0 and 2.
  //
  // The kernel rounds q to f16: the reference gets the same f16 q (as it gets
  // the f16 cache), so what remains is, per output, with E = ||q|| max||k||
  // / sqrt(hd) >= |every score| (Cauchy-Schwarz) and T = ceil(total / 64):
  //  - exponent error of each weight: delta = 2 gamma(hd) E (the mma's f32
  //    sums, truncating adds: 2u each) + (2T + 4) 4u (E + 1) (the f32 roundings
  //    of the exponent and of each tile's rescale, ex2.approx's 2 ulp); the
  //    normalised weights then move by <= 2 delta (1.01) of themselves;
  //  - p rounded to f16 for PV: 2^-11 relative, or 2^-25 absolute below 2^-14
  //    (l >= 1, so <= total 2^-25 in all);
  //  - f32 sums of PV and l over <= total keys, T rescales, one division:
  //    4 gamma(total + T + 1);
  // each times max|v|. At hd 128, total 1000: ~(4.9 + 0.3 + 4.5 + 2.4)e-4
  // max|v|. In a host emulation of the kernel a skipped key tile at 700 keys,
  // a mask off by one, h % KV for the kv head or a 0.2% scale error on l
  // each failed cases here; another sequence's row gives NaN.
  //
  // Scales and windows: every (n, start) pair runs with 1/sqrt(hd) and no
  // window, and with one of: a window of 7 keys (inside one 64-key tile for
  // most rows, across two for the rest, and rows whose first tiles are all
  // masked), 100 (a warp's rows start in different tiles) or 64 with the
  // scale 0.1; E below is then ||q|| max||k|| scale.
  std::mt19937 rng(5);
  const int groups[][2] = {{4, 4}, {9, 3}, {8, 2}};  // H, KV
  const int tokens[] = {1, 17, 64, 100, 300};
  const int starts[] = {0, 5, 64, 700};
  const float scales[] = {0.f, 0.f, 0.1f};  // with windows 7, 100, 64
  const int windows[] = {7, 100, 64};
  for (int hd : {64, 128})
    for (int gi = 0; gi < 3; ++gi)
      for (int ni = 0; ni < 5; ++ni)
        for (int si = 0; si < 4; ++si)
          for (int variant = 0; variant < 2; ++variant) {
          const int w = (gi + ni + si) % 3;
          const AttentionShape shape{groups[gi][0], groups[gi][1], hd, variant ? scales[w] : 0.f,
                                     variant ? windows[w] : 0};
          const int start = starts[si], n = tokens[ni], total = start + n;
          const int sequence = 2 * ((gi + ni + si) % 2);  // both for every (n, start) pair
          AttentionRun run = RunRopeAttention(shape, RopeOptions{}, start, n, sequence, true, rng);
          for (float& x : run.q_gpu) x = F16ToF32(F32ToF16(x));
          std::vector<float> want(run.out.size());
          AttentionReference(shape, run.q_gpu.data(), run.kc.data(), run.vc.data(), start, n, want.data());

          const size_t kvw = static_cast<size_t>(shape.num_kv_heads) * hd;
          std::vector<double> k_norm(shape.num_kv_heads, 0.0);  // max over keys of ||k||
          double max_v = 0.0;
          for (int p = 0; p < total; ++p)
            for (int kv = 0; kv < shape.num_kv_heads; ++kv) {
              double sq = 0.0;
              for (int d = 0; d < hd; ++d) {
                const size_t i = p * kvw + kv * hd + d;
                sq += static_cast<double>(run.kc[i]) * run.kc[i];
                max_v = std::max(max_v, std::fabs(static_cast<double>(run.vc[i])));
              }
              k_norm[kv] = std::max(k_norm[kv], std::sqrt(sq));
            }
          const int tiles = (total + 63) / 64;
          std::vector<double> tol(want.size());
          for (int t = 0; t < n; ++t)
            for (int h = 0; h < shape.num_heads; ++h) {
              const size_t row = (static_cast<size_t>(t) * shape.num_heads + h) * hd;
              double sq = 0.0;
              for (int d = 0; d < hd; ++d) sq += static_cast<double>(run.q_gpu[row + d]) * run.q_gpu[row + d];
              const double e = std::sqrt(sq) * k_norm[h / (shape.num_heads / shape.num_kv_heads)] * shape.ScoreScale();
              const double delta = 2 * Gamma(hd) * e + (2 * tiles + 4) * 4 * kU * (e + 1);
              const double bound = max_v * (std::ldexp(1.0, -11) + total * std::ldexp(1.0, -25) + 2.02 * delta +
                                            4 * Gamma(total + tiles + 1));
              for (int d = 0; d < hd; ++d) tol[row + d] = bound + 2 * kU * std::fabs(want[row + d]);
            }
          CheckClose(AttentionCase("prefill attention", shape, start, n, sequence).c_str(), run.out, want, tol);
        }
}

// E random experts of width f over d and a router, owning their storage.
struct RandomMoe {
  std::vector<std::unique_ptr<RandomInt4>> storage;
  std::vector<float> router;  // [E, d]
  MoeWeights moe;
  RandomMoe(int num_experts, int d, int f, int group_size, std::mt19937& rng) {
    // Entries in +-3/sqrt(d) against x in [-1, 1]: logits of std ~1, so
    // the softmax spreads over the experts.
    const float a = 3.f / std::sqrt(static_cast<float>(d));
    router = RandomFloats(static_cast<size_t>(num_experts) * d, rng, -a, a);
    moe.router = router.data();
    for (int e = 0; e < num_experts; ++e) {
      storage.push_back(std::make_unique<RandomInt4>(f, d, group_size, false, rng));
      moe.gate.push_back(storage.back()->layer);
      storage.push_back(std::make_unique<RandomInt4>(f, d, group_size, false, rng));
      moe.up.push_back(storage.back()->layer);
      storage.push_back(std::make_unique<RandomInt4>(d, f, group_size, false, rng));
      moe.down.push_back(storage.back()->layer);
    }
  }
  // expert e's RandomInt4 of projection p (0 gate, 1 up, 2 down).
  const RandomInt4& Linear(int e, int p) const { return *storage[3 * e + p]; }
};

// One case of the MoE block: {E, k, d, f, group, tokens, normalize, residual,
// tied}. tied > 1: router row `tied` is a copy of row 1, so those two
// experts' p are equal for every token and expert 1 must rank first; token
// 0 points along row 1 (x = |x| sign(row 1): logit ~0.75 sqrt(d) against
// ~N(0, 1) for the other rows), so for it the two rank first and second.
void CheckMoe(const int (&c)[9], std::mt19937& rng) {
  const int num_experts = c[0], k = c[1], d = c[2], f = c[3], g = c[4], n = c[5], tied = c[8];
  const bool normalize = c[6] != 0, with_residual = c[7] != 0;
  RandomMoe m(num_experts, d, f, g, rng);
  std::vector<float> x = RandomFloats(static_cast<size_t>(n) * d, rng);
  if (tied) {
    std::copy_n(m.router.begin() + d, d, m.router.begin() + static_cast<size_t>(tied) * d);
    for (int i = 0; i < d; ++i) x[i] = std::copysign(x[i], m.router[static_cast<size_t>(d) + i]);
  }
  const std::vector<float> residual = RandomFloats(static_cast<size_t>(n) * d, rng);
  std::vector<float> y(static_cast<size_t>(n) * d), weights(static_cast<size_t>(n) * k);
  std::vector<int> experts(static_cast<size_t>(n) * k);
  cuda_test::MoeForward(m.moe, k, normalize, Activation::kSilu, x.data(), n,
                        with_residual ? residual.data() : nullptr, y.data(), experts.data(), weights.data());
  std::vector<int> want_experts(experts.size());
  std::vector<float> unused(weights.size());
  MoeRouterReference(m.router.data(), num_experts, d, x.data(), n, k, normalize, want_experts.data(), unused.data());

  // n <= 15 tokens: the f32 GEMV; from 16 on the tensor-core GEMM, whose
  // products carry x's and w's f16 roundings (int4_gemm_matches_reference).
  const double product_error = n >= 16 ? std::ldexp(1.0, -10) + std::ldexp(1.0, -22) : 0.0;
  std::vector<float> want(y.size());
  std::vector<double> tol(y.size());
  int near_ties = 0, weight_errors = 0;
  for (int t = 0; t < n; ++t) {
    const float* xt = x.data() + static_cast<size_t>(t) * d;
    // Reference probabilities in double; dL bounds the device's f32 logit
    // error (gamma(d) of sum |r x|), which moves each p by <= p (2 dL + (E +
    // 4) u) (exp 2 ulp, the sum, the division) and a normalized weight by twice that + k u.
    std::vector<double> p(num_experts);
    double max_logit = -1e300, dl = 0.0;
    for (int e = 0; e < num_experts; ++e) {
      double dot = 0.0, abs_sum = 0.0;
      for (int i = 0; i < d; ++i) {
        dot += static_cast<double>(m.router[static_cast<size_t>(e) * d + i]) * xt[i];
        abs_sum += std::fabs(static_cast<double>(m.router[static_cast<size_t>(e) * d + i]) * xt[i]);
      }
      p[e] = dot;
      max_logit = std::max(max_logit, dot);
      dl = std::max(dl, Gamma(d) * abs_sum);
    }
    double sum = 0.0;
    for (double& v : p) sum += (v = std::exp(v - max_logit));
    for (double& v : p) v /= sum;
    const double p_rel = 2 * dl + (num_experts + 4) * kU;
    // Exact ties (equal double p: the copied row) must follow the lower-index
    // rule; ranks whose p differ by less than the device's error may swap.
    std::vector<double> sorted = p;
    std::sort(sorted.begin(), sorted.end(), std::greater<double>());
    bool near = false;
    for (int r = 0; r < k && r + 1 < num_experts; ++r) {
      const double gap = sorted[r] - sorted[r + 1];
      near = near || (gap > 0 && gap <= 2 * sorted[r] * p_rel);
    }
    if (near) {
      ++near_ties;
    } else {
      for (int r = 0; r < k; ++r) CHECK(experts[t * k + r] == want_experts[t * k + r]);
    }
    // The reference output for the experts the device chose (each valid and
    // distinct), with their double weights.
    double chosen = 0.0;
    for (int r = 0; r < k; ++r) {
      const int e = experts[t * k + r];
      CHECK(e >= 0 && e < num_experts);
      if (e < 0 || e >= num_experts) return;
      for (int q = 0; q < r; ++q) CHECK(experts[t * k + q] != e);
      chosen += p[e];
    }
    std::vector<double> acc(d, 0.0), bound(d, 0.0), abs_terms(d, 0.0);
    for (int r = 0; r < k; ++r) {
      const int e = experts[t * k + r];
      const double w = normalize ? p[e] / chosen : p[e];
      const double dw = w * (normalize ? 2 * p_rel + (k + 2) * kU : p_rel);
      if (!(std::fabs(weights[t * k + r] - w) <= dw)) ++weight_errors;
      const RandomInt4 &gate = m.Linear(e, 0), &up = m.Linear(e, 1), &down = m.Linear(e, 2);
      std::vector<float> gv(f), uv(f), act(f), out(d);
      Int4LinearReference(gate.layer, xt, 1, gv.data());
      Int4LinearReference(up.layer, xt, 1, uv.data());
      SwiGluReference(gv.data(), uv.data(), f, act.data());
      Int4LinearReference(down.layer, act.data(), 1, out.data());
      // act = silu(g) u: |silu'| <= 1.1; the device's silu and product 8 u.
      std::vector<float> act_error(f);
      for (int j = 0; j < f; ++j) {
        const double dg = (product_error + Gamma(d + 3)) * gate.AbsProductSum(j, xt) + kU * std::fabs(gv[j]);
        const double du = (product_error + Gamma(d + 3)) * up.AbsProductSum(j, xt) + kU * std::fabs(uv[j]);
        const double silu = gv[j] / (1.0 + std::exp(-static_cast<double>(gv[j])));
        act_error[j] = static_cast<float>(1.1 * std::fabs(uv[j]) * dg + std::fabs(silu) * du + dg * du +
                                          8 * kU * std::fabs(act[j]));
      }
      for (int i = 0; i < d; ++i) {
        const double dout = (product_error + Gamma(f + 3)) * down.AbsProductSum(i, act.data()) +
                            down.AbsProductSum(i, act_error.data()) + kU * std::fabs(out[i]);
        acc[i] += w * out[i];
        abs_terms[i] += std::fabs(w * out[i]);
        bound[i] += w * dout + dw * std::fabs(out[i]);
      }
    }
    for (int i = 0; i < d; ++i) {
      const size_t at = static_cast<size_t>(t) * d + i;
      const double res = with_residual ? residual[at] : 0.0;
      want[at] = static_cast<float>(acc[i] + res);
      tol[at] = bound[i] + Gamma(k + 2) * (abs_terms[i] + std::fabs(res)) + 1e-30;
    }
  }
  const std::string what = "moe E" + std::to_string(num_experts) + " k" + std::to_string(k) + " d" +
                           std::to_string(d) + " f" + std::to_string(f) + " g" + std::to_string(g) + " n" +
                           std::to_string(n) + (normalize ? " normalized" : "") +
                           (with_residual ? " +residual" : "") + (tied ? " row " + std::to_string(tied) + " tied to 1" : "");
  std::printf("  %s: %d tokens near a routing tie (experts not compared), %d weights over tolerance\n",
              what.c_str(), near_ties, weight_errors);
  // Near ties (gaps within ~1e-4 relative) are rare; many of them would
  // mean the comparison above silently skips most tokens.
  CHECK(4 * near_ties <= n);
  if (tied) {  // token 0: expert 1, then its copy (when k > 1), by the index rule
    CHECK(experts[0] == 1);
    if (k > 1) CHECK(experts[1] == tied);
  }
  CHECK(weight_errors == 0);
  CheckClose(what.c_str(), y, want, tol);
}

TEST(moe_block_matches_reference) {
  // MoeForward (router, plan, gather, grouped expert linears, combine)
  // against MoeRouterReference and Int4LinearReference / SwiGluReference per
  // (token, expert) in double, outputs for the device's expert choice.
  // {E, k, d, f, group, tokens, normalize, residual, tied row}: one expert;
  // k = E; k = E over 3, 5, 7 and 11 tokens (every expert takes every
  // token: partial GEMV tiles of 4 and 8 tokens, and 8 + 3); 15 tokens over
  // 3 experts (groups of ~10: two GEMV tiles each); 60 experts (groups of
  // 1-2); d = 2080 (two 2048-column steps of the one-token kernel, the
  // second partial); every group size; 16 tokens (the first through the
  // grouped tensor-core GEMM) over 128 experts, k = 8; 70 tokens over 2
  // experts (GEMM tiles of 64 and 6); tied router rows (ranked by index) in
  // the GEMV and the GEMM paths, across lanes of the top-k warp (rows 1 and
  // E - 1) and within one lane (rows 1 and 33 of 60).
  std::mt19937 rng(21);
  const int cases[][9] = {{1, 1, 64, 32, 32, 1, 1, 0, 0},       {3, 3, 64, 64, 64, 2, 1, 1, 0},
                          {1, 1, 64, 32, 32, 3, 1, 0, 0},       {1, 1, 96, 64, 32, 5, 0, 1, 0},
                          {2, 2, 64, 96, 32, 7, 1, 0, 0},       {2, 2, 128, 64, 64, 11, 0, 1, 0},
                          {3, 2, 96, 64, 32, 15, 0, 1, 0},      {8, 2, 128, 96, 32, 3, 1, 0, 7},
                          {60, 4, 256, 160, 32, 9, 0, 0, 0},    {60, 4, 256, 96, 32, 5, 1, 0, 33},
                          {4, 2, 2080, 1088, 32, 1, 1, 1, 0},   {6, 3, 384, 128, 128, 1, 0, 0, 5},
                          {128, 8, 128, 32, 32, 16, 1, 0, 0},   {5, 2, 128, 64, 64, 40, 1, 1, 0},
                          {2, 2, 96, 128, 32, 70, 0, 0, 0},     {16, 3, 256, 96, 32, 100, 1, 1, 15}};
  for (const auto& c : cases) CheckMoe(c, rng);
  // k > E: refused on the host before any kernel runs (it would rank past the experts).
  RandomMoe m(3, 64, 32, 32, rng);
  const std::vector<float> x = RandomFloats(64, rng);
  std::vector<float> y(64), weights(4);
  std::vector<int> experts(4);
  CHECK_THROWS(cuda_test::MoeForward(m.moe, 4, true, Activation::kSilu, x.data(), 1, nullptr, y.data(),
                                     experts.data(), weights.data()),
               Error, "1 <= k <= E");
}

}  // namespace

int main() {
  const std::string info = CudaDeviceInfo();
  if (!BuiltWithCuda() || info.rfind("no CUDA device", 0) == 0) {
    std::printf("skipped: %s\n", BuiltWithCuda() ? "no CUDA device" : "built without CUDA");
    return awqtest::kSkipReturnCode;
  }
  std::printf("device: %s\n", info.c_str());
  return awqtest::RunAll();
}
