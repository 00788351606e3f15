// The ops the decoder-layer description adds (docs/format.md): scaled rotary
// tables (linear, llama3, yarn) against the direct formula and against the
// inverse frequencies transformers computes, and attention with a score
// scale and a sliding window on both kernels (scalar, AVX2), head dims up to
// Gemma 3's 256. The GeGLU activation is tested with SwiGLU in
// test_simd_kernels.cpp.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "attention_tokens.h"
#include "cpu_features.h"
#include "ops/attention.h"
#include "ops/rope.h"
#include "random_weights.h"
#include "test_harness.h"
#include "thread_pool.h"

using namespace awqcore;

using awqtest::AsCache;
using awqtest::AttentionReferencePerToken;
using awqtest::AttentionTokens;
using awqtest::Gamma;
using awqtest::kUnitRoundoff;
using awqtest::RandomFloats;

namespace {

std::vector<Isa> IsasToTest() {
  std::vector<Isa> isas = {Isa::kScalar};
  if (IsaSupported(Isa::kAvx2)) isas.push_back(Isa::kAvx2);
  return isas;
}

RopeScaling Linear(double factor) {
  RopeScaling s;
  s.type = RopeScaling::Type::kLinear;
  s.factor = factor;
  return s;
}

RopeScaling Llama3(double factor, int original, double low, double high) {
  RopeScaling s;
  s.type = RopeScaling::Type::kLlama3;
  s.factor = factor;
  s.original_max_position_embeddings = original;
  s.low_freq_factor = low;
  s.high_freq_factor = high;
  return s;
}

RopeScaling Yarn(double factor, int original, bool truncate, double beta_fast, double beta_slow) {
  RopeScaling s;
  s.type = RopeScaling::Type::kYarn;
  s.factor = factor;
  s.original_max_position_embeddings = original;
  s.truncate = truncate;
  s.beta_fast = beta_fast;
  s.beta_slow = beta_slow;
  s.attention_factor = 0.1 * std::log(factor) + 1.0;  // what the writer resolves
  return s;
}

// f_i as the table holds it: rotate e_i to a position where the angle
// p f_i lies in [1, 3) and read the angle back (atan2 of the stored a cos
// and a sin, whose f32 rounding moves it by <= 2^-24 rad: relative 6e-8).
double TableFrequency(int head_dim, float theta, const RopeScaling& scaling, int i, double guess) {
  const int position = std::max(1, static_cast<int>(2.0 / guess));
  const RopeTable table(head_dim, theta, position + 1, scaling);
  std::vector<float> e(head_dim, 0.f);
  e[i] = 1.f;
  table.RotateHead(e.data(), position, e.data());
  return std::atan2(e[i + head_dim / 2], e[i]) / position;
}

}  // namespace

TEST(scaled_rope_matches_direct_formula) {
  std::mt19937 rng(21);
  const std::vector<RopeScaling> scalings = {Linear(4.0), Llama3(8.0, 64, 1.0, 4.0),
                                             Llama3(32.0, 8192, 1.0, 4.0), Yarn(4.0, 64, true, 32, 1),
                                             Yarn(8.0, 256, false, 16, 2)};
  const std::vector<std::vector<int>> position_sets = {{0, 1, 2, 3}, {1093, 0, 17, 17}, {1096, 1097, 1098, 1099}};
  double worst = 0.0;
  for (const RopeScaling& scaling : scalings) {
    for (int head_dim : {16, 64, 256}) {
      for (float theta : {10000.f, 500000.f}) {
        const RopeTable table(head_dim, theta, 1100, scaling);
        for (const std::vector<int>& positions : position_sets) {
          const int tokens = static_cast<int>(positions.size()), heads = 2;
          const size_t width = static_cast<size_t>(heads) * head_dim;
          const std::vector<float> x = RandomFloats(tokens * width, rng);
          std::vector<float> y = x, ref = x;
          table.Apply(y.data(), tokens, heads, positions.data());
          for (int t = 0; t < tokens; ++t) {
            RopeReference(ref.data() + t * width, 1, heads, head_dim, theta, positions[t], scaling);
          }
          // a cos and a sin rounded to f32 (u each), then two products and a
          // sum: <= 4u a (|x_i| + |x_pair|) (a: yarn's attention factor).
          // Pairs rotated by a wrong frequency at these positions are off by O(1).
          for (size_t j = 0; j < y.size(); ++j) {
            const int i = static_cast<int>(j % head_dim);
            const size_t pair = i < head_dim / 2 ? j + head_dim / 2 : j - head_dim / 2;
            const double bound = 4 * kUnitRoundoff * scaling.attention_factor * (std::fabs(x[j]) + std::fabs(x[pair]));
            const double diff = std::fabs(static_cast<double>(y[j]) - ref[j]);
            if (!(diff <= bound)) {
              std::printf("  FAILED case: type %d factor %g hd %d theta %g element %zu: %.9g vs %.9g\n",
                          static_cast<int>(scaling.type), scaling.factor, head_dim, theta, j, y[j], ref[j]);
            }
            CHECK(diff <= bound);
          }
          worst = std::max(worst, awqtest::RelativeError(y, ref));
        }
      }
    }
  }
  std::printf("  scaled rope: max relative error %.3g\n", worst);
}

TEST(scaled_rope_frequencies_match_transformers) {
  // inv_freq from transformers 5.25's ROPE_INIT_FUNCTIONS (float32, printed
  // in double) for head_dim 16, rope_theta 10000:
  //   llama3 factor 8, low 1, high 4, original 64: i = 1, 2 smoothed, i >= 3 divided;
  //   linear factor 4;
  //   yarn factor 4, original 64 (ramp over dims [0, 3]; attention_factor 1.1386);
  //   yarn factor 4, original 64, truncate False, beta_fast 16, beta_slow 2.
  // The table's f_i (double) may differ from these by their f32 rounding
  // (2^-24 relative) plus the readback's 6e-8: 2e-7 relative.
  struct Case {
    const char* name;
    RopeScaling scaling;
    std::vector<double> inv_freq;
  };
  const std::vector<Case> cases = {
      {"llama3", Llama3(8.0, 64, 1.0, 4.0),
       {1.0, 0.24438458681106567, 0.013042256236076355, 0.0039528473280370235, 0.0012499999720603228,
        0.00039528473280370235, 0.0001250000059371814, 3.9528473280370235e-05}},
      {"linear", Linear(4.0),
       {0.25, 0.07905694097280502, 0.02500000037252903, 0.007905694656074047, 0.0024999999441206455,
        0.0007905694656074047, 0.0002500000118743628, 7.905694656074047e-05}},
      {"yarn", Yarn(4.0, 64, true, 32.0, 1.0),
       {1.0, 0.23717081546783447, 0.04999999701976776, 0.007905694656074047, 0.0024999999441206455,
        0.0007905694656074047, 0.0002500000118743628, 7.905694656074047e-05}},
      {"yarn, no truncation", Yarn(4.0, 64, false, 16.0, 2.0),
       {1.0, 0.14849025011062622, 0.02500000037252903, 0.007905694656074047, 0.0024999999441206455,
        0.0007905694656074047, 0.0002500000118743628, 7.905694656074047e-05}},
  };
  CHECK_NEAR(Yarn(4.0, 64, true, 32, 1).attention_factor, 1.138629436111989, 1e-12);
  for (const Case& c : cases) {
    double worst = 0.0;
    for (int i = 0; i < 8; ++i) {
      const double got = TableFrequency(16, 10000.f, c.scaling, i, c.inv_freq[i]);
      const double error = std::fabs(got / c.inv_freq[i] - 1.0);
      if (!(error <= 2e-7)) std::printf("  FAILED case: %s f_%d = %.10g, transformers %.10g\n", c.name, i, got, c.inv_freq[i]);
      CHECK(error <= 2e-7);
      worst = std::max(worst, error);
    }
    std::printf("  %s: max relative difference from transformers' inv_freq %.3g\n", c.name, worst);
  }
}

TEST(yarn_attention_factor_scales_cos_and_sin) {
  const RopeScaling yarn = Yarn(4.0, 64, true, 32, 1);
  const RopeTable table(16, 10000.f, 4, yarn);
  std::vector<float> e(16, 0.f);
  e[0] = 1.f;
  const int zero = 0;
  table.Apply(e.data(), 1, 1, &zero);  // position 0: cos 1, sin 0, times a
  CHECK_NEAR(e[0], yarn.attention_factor, 1e-7);
  CHECK(e[8] == 0.f);
}

TEST(windowed_scaled_attention_matches_reference) {
  // Both kernels over head dims 8 .. 256 (Gemma 3 270M's), the default
  // 1/sqrt(hd) scale and an explicit one, and windows of 1 key up to more
  // than the context. Cache rows a call may not read hold NaN: before the
  // earliest window start of its tokens and after its last position, so a
  // kernel that reads (rather than just masks) a key outside its window
  // returns NaN. Bound: |q|, |k|, |v| <= 1, so |score| <= S = scale * hd;
  // as in test_ops' attention test, an output (a convex combination of v
  // rows) is off by <= 2 (2 gamma(hd + 1) S + 2 gamma(keys + 4)). A window
  // one key too short or too long moves an output by ~|v| / W: >= 3e-3 for
  // the windows up to 300 here, far above the bound at these sizes (<= 2e-3
  // at hd 256 with scale 0.3, ~1e-5 at hd 16).
  std::mt19937 rng(22);
  ThreadPool pool(2);
  struct Shape {
    int heads, kv_heads, hd;
  };
  for (Isa isa : IsasToTest()) {
    double worst = 0.0;
    int cases = 0;
    for (const Shape s : {Shape{4, 1, 256}, Shape{6, 2, 16}, Shape{3, 1, 72}, Shape{18, 1, 64}}) {
      for (float scale : {0.0f, 0.3f}) {
        for (int window : {1, 3, 32, 300, 5000}) {
          const AttentionShape shape{s.heads, s.kv_heads, s.hd, scale, window};
          const size_t kv_width = static_cast<size_t>(shape.num_kv_heads) * shape.head_dim;
          const double score_bound = shape.ScoreScale() * shape.head_dim;
          for (int start : {0, 5, 126, 700}) {
            for (int tokens : {1, 3, 17}) {
              if (s.hd == 256 && tokens == 17 && start == 700) continue;  // time
              const int end = start + tokens;
              const int first = shape.FirstKey(start);  // the earliest key any token reads
              std::vector<float> k = RandomFloats(end * kv_width, rng), v = RandomFloats(k.size(), rng);
              // What the reference reads: the same values, without the NaN sentinels.
              const std::vector<float> q = RandomFloats(static_cast<size_t>(tokens) * shape.num_heads * shape.head_dim, rng);
              std::vector<float> ref(q.size()), out(q.size());
              AttentionTokens<float> ref_tokens;
              ref_tokens.Add(k.data(), v.data(), start, tokens);
              AttentionReferencePerToken(shape, q.data(), ref_tokens, ref.data());
              std::fill(k.begin(), k.begin() + first * kv_width, NAN);
              std::fill(v.begin(), v.begin() + first * kv_width, NAN);
              k.resize(k.size() + 64 * kv_width, NAN);  // rows past the last position
              v.resize(k.size(), NAN);
              AttentionTokens<float> tokens_list;
              tokens_list.Add(k.data(), v.data(), start, tokens);
              std::vector<float> scratch(tokens_list.ScratchSize(shape));
              AttentionForward(shape, q.data(), tokens_list.k.data(), tokens_list.v.data(),
                               tokens_list.positions.data(), tokens, scratch.data(), out.data(), pool, isa);
              const double bound = 2 * (2 * Gamma(shape.head_dim + 1) * score_bound + 2 * Gamma(end + 4));
              double error = 0.0;
              for (size_t i = 0; i < ref.size(); ++i) {
                const double diff = std::fabs(static_cast<double>(out[i]) - ref[i]);
                error = std::isnan(diff) ? INFINITY : std::max(error, diff);
              }
              ++cases;
              if (!(error <= bound)) {
                std::printf("  FAILED case: %s H=%d KV=%d hd=%d scale=%g window=%d start=%d tokens=%d: error %.3g > %.3g\n",
                            IsaName(isa), s.heads, s.kv_heads, s.hd, scale, window, start, tokens, error, bound);
              }
              CHECK(error <= bound);
              worst = std::max(worst, error);
            }
          }
        }
      }
    }
    std::printf("  %s: %d windowed attention cases, max error %.3g (units of max|v|)\n", IsaName(isa), cases, worst);
  }
}

TEST(windowed_attention_tokens_of_several_sequences) {
  // A batched decode step with a window: each token reads its own cache's
  // last W rows, whatever the others' positions (the call's key span covers
  // all of them, each item only its own rows).
  std::mt19937 rng(23);
  ThreadPool pool(3);
  const AttentionShape shape{4, 2, 32, 0.0f, 8};
  const size_t kv_width = static_cast<size_t>(shape.num_kv_heads) * shape.head_dim;
  const std::vector<int> positions = {600, 0, 9, 7};
  for (Isa isa : IsasToTest()) {
    std::vector<std::vector<float>> ks, vs;
    AttentionTokens<float> tokens;
    for (int p : positions) {
      ks.push_back(RandomFloats((p + 1) * kv_width, rng));
      vs.push_back(RandomFloats((p + 1) * kv_width, rng));
    }
    const std::vector<float> q = RandomFloats(positions.size() * shape.num_heads * shape.head_dim, rng);
    std::vector<float> ref(q.size()), out(q.size());
    for (size_t s = 0; s < positions.size(); ++s) tokens.Add(ks[s].data(), vs[s].data(), positions[s]);
    AttentionReferencePerToken(shape, q.data(), tokens, ref.data());
    for (size_t s = 0; s < positions.size(); ++s) {  // NaN before each token's window
      const int first = shape.FirstKey(positions[s]);
      std::fill(ks[s].begin(), ks[s].begin() + first * kv_width, NAN);
      std::fill(vs[s].begin(), vs[s].begin() + first * kv_width, NAN);
    }
    std::vector<float> scratch(tokens.ScratchSize(shape));
    AttentionForward(shape, q.data(), tokens.k.data(), tokens.v.data(), tokens.positions.data(),
                     tokens.size(), scratch.data(), out.data(), pool, isa);
    double error = 0.0;
    for (size_t i = 0; i < ref.size(); ++i) {
      const double diff = std::fabs(static_cast<double>(out[i]) - ref[i]);
      error = std::isnan(diff) ? INFINITY : std::max(error, diff);
    }
    // The bound of the test above for W = 8 keys at hd 32.
    const double bound = 2 * (2 * Gamma(33) * shape.ScoreScale() * 32 + 2 * Gamma(8 + 4));
    std::printf("  %s: windowed batched decode, max error %.3g (bound %.3g)\n", IsaName(isa), error, bound);
    CHECK(error <= bound);
  }
}

AWQCORE_TEST_MAIN()
