// Sampler semantics (cpp/src/sampler.h): greedy, top-k, top-p, temperature,
// repetition penalty, seeding, option validation, non-finite logits, and Pick
// against an independent double-precision reference (sampling_reference.h).
#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "awqcore/awqcore.h"
#include "sampler.h"
#include "sampling_reference.h"
#include "test_harness.h"

using namespace awqcore;

namespace {

SamplingOptions Options(float temperature, int top_k = 0, float top_p = 1.0f,
                        float repetition_penalty = 1.0f, std::optional<uint64_t> seed = 42) {
  SamplingOptions options;
  options.temperature = temperature;
  options.top_k = top_k;
  options.top_p = top_p;
  options.repetition_penalty = repetition_penalty;
  options.seed = seed;
  return options;
}

// Sample() may change its argument (penalty), so each draw gets a copy.
int SampleCopy(Sampler& sampler, const std::vector<float>& logits) {
  std::vector<float> copy = logits;
  return sampler.Sample(copy.data());
}

std::vector<float> RandomLogits(int n, std::mt19937& rng) {
  std::normal_distribution<float> dist(0.f, 3.f);
  std::vector<float> logits(n);
  for (float& l : logits) l = dist(rng);
  return logits;
}

}  // namespace

TEST(greedy_is_argmax_with_lowest_index_on_ties) {
  Sampler sampler(6);
  sampler.Start(Options(0.0f));
  CHECK(SampleCopy(sampler, {0.f, 2.f, -1.f, 5.f, 5.f, 1.f}) == 3);
  CHECK(SampleCopy(sampler, {-3.f, -2.f, -2.f, -9.f, -4.f, -2.5f}) == 1);
  CHECK(Argmax(std::vector<float>{1.f, 1.f}.data(), 2) == 0);
  CHECK(Argmax(std::vector<float>{NAN, 1.f, 2.f, NAN}.data(), 4) == 2);
  std::mt19937 rng(1);
  for (int trial = 0; trial < 20; ++trial) {
    const std::vector<float> logits = RandomLogits(6, rng);
    CHECK(SampleCopy(sampler, logits) == static_cast<int>(std::max_element(logits.begin(), logits.end()) - logits.begin()));
  }
}

TEST(argmax_matches_a_plain_scan) {
  // Argmax against the obvious one-pass scan (strict >, a NaN best always
  // replaced) on rows that cross its blocks at every kind of boundary:
  // lengths around 2048 and 4096, ties of the maximum in different blocks,
  // signed zeros, infinities, NaNs (quiet, signalling, negative), all-NaN
  // and all-equal rows. FiniteArgmax against the same scan preceded by a
  // plain std::isfinite check of every logit.
  const auto scan = [](const std::vector<float>& x) {
    int best = 0;
    for (int i = 1; i < static_cast<int>(x.size()); ++i) {
      if (x[i] > x[best] || std::isnan(x[best])) best = i;
    }
    return best;
  };
  const auto finite_scan = [&scan](const std::vector<float>& x) {
    for (float v : x) {
      if (!std::isfinite(v)) return static_cast<int>(Sampler::kNonFiniteLogits);
    }
    return scan(x);
  };
  std::mt19937 rng(11);
  const float specials[] = {0.f, -0.f, INFINITY, -INFINITY, NAN, -NAN,
                            std::numeric_limits<float>::signaling_NaN(), 3.f, -3.f,
                            std::numeric_limits<float>::denorm_min(), -std::numeric_limits<float>::max()};
  int cases = 0, non_finite_rows = 0;
  for (int n : {1, 2, 3, 17, 2047, 2048, 2049, 4095, 4097, 49152}) {
    for (int trial = 0; trial < 24; ++trial) {
      std::vector<float> x = RandomLogits(n, rng);
      std::uniform_int_distribution<int> index(0, n - 1), special(0, 10);
      const int kind = trial % 6;
      if (kind == 1) {  // the maximum repeated, maybe in another block
        const float top = x[index(rng)] = 100.f;
        x[index(rng)] = top;
      } else if (kind == 2) {  // sprinkled special values
        for (int k = 0; k < 1 + n / 64; ++k) x[index(rng)] = specials[special(rng)];
      } else if (kind == 3) {  // NaNs everywhere but a few numbers
        for (float& v : x) v = NAN;
        for (int k = 0; k < trial % 3; ++k) x[index(rng)] = specials[special(rng)];
      } else if (kind == 4) {  // equal values: zeros of both signs or one constant
        for (float& v : x) v = trial % 2 ? -0.f : 1.5f;
        x[index(rng)] = 0.f;
      } else if (kind == 5) {  // -inf and the lowest finite only
        for (float& v : x) v = index(rng) % 2 ? -INFINITY : -std::numeric_limits<float>::max();
      }
      const int got = Argmax(x.data(), n), want = scan(x);
      if (got != want) {
        std::printf("  n=%d trial=%d: Argmax %d (%g) vs scan %d (%g)\n", n, trial, got, x[got], want, x[want]);
      }
      CHECK(got == want);
      const int got_finite = FiniteArgmax(x.data(), n), want_finite = finite_scan(x);
      if (got_finite != want_finite) {
        std::printf("  n=%d trial=%d: FiniteArgmax %d vs scan %d\n", n, trial, got_finite, want_finite);
      }
      CHECK(got_finite == want_finite);
      non_finite_rows += want_finite == Sampler::kNonFiniteLogits;
      ++cases;
    }
  }
  std::printf("  argmax: %d rows match the scan (%d of them not finite)\n", cases, non_finite_rows);
  CHECK(non_finite_rows > 0 && non_finite_rows < cases);
}

TEST(finite_argmax_sees_one_non_finite_logit_anywhere) {
  // A single NaN, +inf or -inf at every position class of a 49,152-row
  // (first, last, block edges at 2048, mid-block) makes the row non-finite;
  // the largest finite float does not.
  std::mt19937 rng(12);
  const int n = 49152;
  const std::vector<float> clean = RandomLogits(n, rng);
  CHECK(FiniteArgmax(clean.data(), n) == Argmax(clean.data(), n));
  for (int at : {0, 1, 2047, 2048, 2049, 30000, n - 2, n - 1}) {
    for (float bad : {NAN, -NAN, INFINITY, -INFINITY}) {
      std::vector<float> x = clean;
      x[at] = bad;
      if (FiniteArgmax(x.data(), n) != Sampler::kNonFiniteLogits) {
        std::printf("  %g at %d not seen\n", bad, at);
        CHECK(false);
      }
    }
    std::vector<float> x = clean;
    x[at] = std::numeric_limits<float>::max();
    CHECK(FiniteArgmax(x.data(), n) == at);
    x[at] = -std::numeric_limits<float>::max();
    CHECK(FiniteArgmax(x.data(), n) == Argmax(x.data(), n));
  }
}

TEST(sample_finite_rejects_non_finite_rows_untouched_and_otherwise_samples) {
  // SampleFinite is Sample on finite rows, for greedy picks with and without
  // a penalty and for sampled ones (same seed, same draws), and
  // kNonFiniteLogits on a row holding a NaN or an infinity, which it leaves
  // as it was (the penalty not applied), for every kind of pick.
  std::mt19937 rng(13);
  const int vocab = 5000;
  for (SamplingOptions options : {Options(0.0f), Options(0.7f, 1), Options(0.0f, 0, 1.0f, 1.3f),
                                  Options(1.0f), Options(0.8f, 40, 0.9f, 1.2f)}) {
    Sampler a(vocab), b(vocab);
    a.Start(options);
    b.Start(options);
    for (int token : {3, 17, 4999}) {
      a.Observe(token);
      b.Observe(token);
    }
    for (int trial = 0; trial < 20; ++trial) {
      const std::vector<float> logits = RandomLogits(vocab, rng);
      std::vector<float> x = logits, y = logits;
      CHECK(a.SampleFinite(x.data()) == b.Sample(y.data()));
      CHECK(x == y);  // the same penalty applied
    }
    for (float bad : {NAN, INFINITY, -INFINITY}) {
      std::vector<float> x = RandomLogits(vocab, rng);
      x[17] = bad;  // a penalized token
      x[2500] = bad;
      const std::vector<float> before = x;
      CHECK(a.SampleFinite(x.data()) == Sampler::kNonFiniteLogits);
      CHECK(std::memcmp(x.data(), before.data(), vocab * sizeof(float)) == 0);
    }
  }
}

TEST(top_k_one_and_tiny_top_p_are_greedy_at_any_temperature) {
  std::mt19937 rng(2);
  const int vocab = 1000;
  Sampler sampler(vocab);
  for (float temperature : {0.5f, 1.0f, 5.0f, 100.0f}) {
    for (int trial = 0; trial < 20; ++trial) {
      const std::vector<float> logits = RandomLogits(vocab, rng);
      const int greedy = Argmax(logits.data(), vocab);
      sampler.Start(Options(temperature, /*top_k=*/1));
      CHECK(SampleCopy(sampler, logits) == greedy);
      sampler.Start(Options(temperature, 0, /*top_p=*/1e-6f));
      CHECK(SampleCopy(sampler, logits) == greedy);
    }
  }
  // A temperature so small that 1 / T overflows still picks the maximum.
  std::vector<float> logits = RandomLogits(vocab, rng);
  sampler.Start(Options(1e-40f));
  CHECK(SampleCopy(sampler, logits) == Argmax(logits.data(), vocab));
}

TEST(seeded_sampling_is_reproducible) {
  std::mt19937 rng(3);
  const std::vector<float> logits = RandomLogits(500, rng);
  for (SamplingOptions options : {Options(1.0f), Options(0.8f, 40), Options(1.2f, 0, 0.9f),
                                  Options(1.0f, 50, 0.95f, 1.3f)}) {
    Sampler a(500), b(500);
    a.Start(options);
    b.Start(options);
    std::vector<int> draws_a, draws_b;
    for (int i = 0; i < 200; ++i) {
      draws_a.push_back(SampleCopy(a, logits));
      draws_b.push_back(SampleCopy(b, logits));
    }
    CHECK(draws_a == draws_b);
    // Restarting with the same seed replays the same sequence; another seed
    // gives another sequence (200 draws at temperature ~1 over 500 tokens).
    a.Start(options);
    std::vector<int> replay;
    for (int i = 0; i < 200; ++i) replay.push_back(SampleCopy(a, logits));
    CHECK(replay == draws_a);
    options.seed = 43;
    a.Start(options);
    std::vector<int> other;
    for (int i = 0; i < 200; ++i) other.push_back(SampleCopy(a, logits));
    CHECK(other != draws_a);
  }
}

// Draws `draws` tokens and checks every token's frequency against `expected`
// probabilities within 4.5 binomial standard deviations (a false alarm for a
// correct sampler has probability ~7e-6 per token).
void CheckFrequencies(Sampler& sampler, const std::vector<float>& logits,
                      const std::vector<double>& expected, int draws) {
  std::vector<int> counts(logits.size(), 0);
  for (int i = 0; i < draws; ++i) counts[SampleCopy(sampler, logits)]++;
  for (size_t token = 0; token < logits.size(); ++token) {
    const double p = expected[token];
    const double sigma = std::sqrt(draws * p * (1 - p));
    if (p == 0.0) {
      CHECK(counts[token] == 0);
    } else {
      CHECK(std::fabs(counts[token] - draws * p) <= 4.5 * sigma);
    }
  }
}

TEST(temperature_one_frequencies_match_softmax) {
  const std::vector<float> logits = {1.0f, 2.0f, 0.5f, -1.0f, 2.5f, 0.0f};
  const int draws = 20000;
  for (float temperature : {1.0f, 2.0f}) {
    std::vector<double> expected(logits.size());
    double sum = 0.0;
    for (size_t i = 0; i < logits.size(); ++i) sum += (expected[i] = std::exp(logits[i] / temperature));
    for (double& p : expected) p /= sum;
    Sampler sampler(static_cast<int>(logits.size()));
    sampler.Start(Options(temperature, 0, 1.0f, 1.0f, 7));
    CheckFrequencies(sampler, logits, expected, draws);
  }
}

TEST(top_k_and_top_p_restrict_and_renormalize) {
  const std::vector<float> logits = {std::log(0.1f), std::log(0.4f), std::log(0.05f),
                                     std::log(0.3f), std::log(0.15f)};
  Sampler sampler(5);
  // top_k = 2 keeps tokens 1 and 3 (0.4 and 0.3): renormalized 4/7 and 3/7.
  sampler.Start(Options(1.0f, 2, 1.0f, 1.0f, 11));
  CheckFrequencies(sampler, logits, {0, 4.0 / 7, 0, 3.0 / 7, 0}, 20000);
  // top_p = 0.8: 0.4 + 0.3 = 0.7 < 0.8, + 0.15 = 0.85 >= 0.8: tokens 1, 3, 4.
  sampler.Start(Options(1.0f, 0, 0.8f, 1.0f, 12));
  CheckFrequencies(sampler, logits, {0, 0.4 / 0.85, 0, 0.3 / 0.85, 0.15 / 0.85}, 20000);
  // top_p = 0.69: the first two already hold 0.7 >= 0.69, so the third is out.
  sampler.Start(Options(1.0f, 0, 0.69f, 1.0f, 13));
  CheckFrequencies(sampler, logits, {0, 4.0 / 7, 0, 3.0 / 7, 0}, 20000);
}

TEST(top_p_over_a_large_vocabulary) {
  // 100 tokens share 90% of the mass, 99,900 the rest: the nucleus search has
  // to widen past its first sorted prefix of 64 to reach top_p = 0.85.
  const int vocab = 100000;
  std::vector<float> logits(vocab, 0.0f);
  const float boost = std::log(0.9f / 100 / (0.1f / (vocab - 100)));
  for (int i = 0; i < 100; ++i) logits[i * 997] = boost;
  Sampler sampler(vocab);
  sampler.Start(Options(1.0f, 0, 0.85f, 1.0f, 5));
  for (int i = 0; i < 200; ++i) CHECK(SampleCopy(sampler, logits) % 997 == 0);
}

TEST(repetition_penalty_divides_positive_and_multiplies_negative_logits) {
  Sampler sampler(5);
  sampler.Start(Options(0.0f, 0, 1.0f, 2.0f));
  sampler.Observe(1);
  sampler.Observe(2);
  sampler.Observe(1);  // repeated tokens are penalized once, not per occurrence
  std::vector<float> logits = {1.0f, 4.0f, -1.0f, 3.0f, 0.0f};
  // Token 1: 4 / 2 = 2; token 2: -1 * 2 = -2; others unchanged. Argmax: token 3.
  CHECK(sampler.Sample(logits.data()) == 3);
  CHECK((logits == std::vector<float>{1.0f, 2.0f, -2.0f, 3.0f, 0.0f}));
  // Start() clears the history.
  sampler.Start(Options(0.0f, 0, 1.0f, 2.0f));
  logits = {1.0f, 4.0f, -1.0f, 3.0f, 0.0f};
  CHECK(sampler.Sample(logits.data()) == 1);
}

TEST(non_finite_logits_weigh_as_documented) {
  // NaN counts as -inf (weight 0), and a +inf maximum leaves the mass to the
  // +inf tokens; a row of NaN and -inf only is uniform. Greedy keeps
  // Argmax's rule (NaN never beats a number).
  Sampler sampler(4);
  sampler.Start(Options(1.0f, 0, 1.0f, 1.0f, 21));
  CheckFrequencies(sampler, {NAN, 0.f, NAN, std::log(3.f)}, {0, 0.25, 0, 0.75}, 20000);
  sampler.Start(Options(1.0f, 0, 1.0f, 1.0f, 22));
  CheckFrequencies(sampler, {1.f, INFINITY, 2.f, INFINITY}, {0, 0.5, 0, 0.5}, 20000);
  sampler.Start(Options(1.0f, 0, 1.0f, 1.0f, 23));
  CheckFrequencies(sampler, {NAN, -INFINITY, NAN, -INFINITY}, {0.25, 0.25, 0.25, 0.25}, 20000);
  // top_k 3 of four equal ranks keeps the lowest ids.
  sampler.Start(Options(1.0f, 3, 1.0f, 1.0f, 24));
  CheckFrequencies(sampler, {NAN, -INFINITY, NAN, -INFINITY}, {1.0 / 3, 1.0 / 3, 1.0 / 3, 0}, 20000);
  sampler.Start(Options(0.0f));
  CHECK(SampleCopy(sampler, {NAN, -INFINITY, NAN, -INFINITY}) == 1);
}

TEST(sample_is_pick_of_next_pick) {
  // Sample == Pick(logits, NextPick()) draw for draw, with the same seed: the
  // generator stream a device pick continues is the one Sample consumes.
  std::mt19937 rng(8);
  const std::vector<float> logits = RandomLogits(300, rng);
  for (SamplingOptions options : {Options(0.0f), Options(0.9f, 1), Options(1.0f),
                                  Options(0.8f, 40), Options(1.2f, 0, 0.9f)}) {
    Sampler a(300), b(300);
    a.Start(options);
    b.Start(options);
    for (int i = 0; i < 100; ++i) {
      const TokenPick pick = b.NextPick();
      CHECK(pick.temperature == options.temperature && pick.top_k == options.top_k &&
            pick.top_p == options.top_p);
      if (options.temperature == 0.0f || options.top_k == 1) CHECK(pick.uniform == 0.0);  // no draw
      CHECK(SampleCopy(a, logits) == b.Pick(logits.data(), pick));
    }
  }
}

TEST(pick_walks_the_kept_tokens_in_id_order) {
  // Kept: ids 1, 3, 4 with weights e^-1, e^-1.5, 1 (most likely last), by
  // top_k 3 or by top_p 0.9 (sorted masses 1, 1.37, 1.59 of 1.67: 0.60,
  // 0.82, 0.95). The inverse CDF runs over ids 1, 3, 4 in that order, so a
  // uniform just below / above each step of that CDF picks the ids on either
  // side. Steps come from the softmax in double; +-1e-6 relative clears the
  // f32 weights' rounding (~1e-7) by 10x.
  const std::vector<float> logits = {-1.f, 1.f, -2.f, 0.5f, 2.f, -3.f};
  const int kept[] = {1, 3, 4};
  double total = 0.0;
  for (int id : kept) total += std::exp(static_cast<double>(logits[id]) - 2.0);
  const double step1 = std::exp(1.0 - 2.0) / total;                    // after id 1
  const double step2 = step1 + std::exp(0.5 - 2.0) / total;            // after id 3
  const double below = 1.0 - 1e-6, above = 1.0 + 1e-6;
  const double uniforms[] = {0.0, step1 * below, step1 * above, step2 * below, step2 * above, 1.0 - 0x1p-53};
  const int expected[] = {1, 1, 3, 3, 4, 4};
  Sampler sampler(6);
  for (const TokenPick options : {TokenPick{1.0f, 3, 1.0f, 0.0}, TokenPick{1.0f, 0, 0.9f, 0.0}}) {
    for (int i = 0; i < 6; ++i) {
      TokenPick pick = options;
      pick.uniform = uniforms[i];
      CHECK(sampler.Pick(logits.data(), pick) == expected[i]);
    }
  }
}

TEST(pick_matches_the_double_precision_reference) {
  // Every option mix on rows with ties and non-finite logits: Pick equals the
  // reference except on picks the reference marks near a boundary (within
  // the tolerance of sampling_reference.h), which are counted.
  std::mt19937 rng(9);
  std::mt19937_64 draws(10);
  int picks = 0, near = 0, near_differ = 0;
  for (int vocab : {1, 37, 1000, 50257}) {
    Sampler sampler(vocab);
    for (const std::vector<float>& row : awqtest::SamplingRows(vocab, rng)) {
      for (float temperature : {0.0f, 0.3f, 1.0f, 2.5f})
        for (int top_k : {0, 1, 5, 1000, vocab + 3})
          for (float top_p : {1.0f, 0.9f, 0.5f, 1e-6f}) {
            const TokenPick options{temperature, top_k, top_p, 0.0};
            const awqtest::ReferencePick reference(row, options);
            for (double uniform : awqtest::SamplingUniforms(draws)) {
              TokenPick pick = options;
              pick.uniform = uniform;
              const int got = sampler.Pick(row.data(), pick);
              const awqtest::ReferencePick::Answer want = reference.Token(uniform);
              ++picks;
              if (want.near_boundary) {
                ++near;
                near_differ += got != want.token;
              } else {
                CHECK(got == want.token);
              }
            }
          }
    }
  }
  std::printf("  %d picks, %d near a boundary (%d of them differ from the reference)\n", picks, near,
              near_differ);
}

TEST(invalid_options_throw_with_the_value) {
  CHECK_THROWS(Sampler::Validate(Options(-1.0f)), InvalidArgument, "temperature must be >= 0 and finite (got -1)");
  CHECK_THROWS(Sampler::Validate(Options(INFINITY)), InvalidArgument, "temperature must be >= 0 and finite (got inf)");
  CHECK_THROWS(Sampler::Validate(Options(NAN)), InvalidArgument, "temperature must be >= 0");
  CHECK_THROWS(Sampler::Validate(Options(1.0f, -3)), InvalidArgument, "top_k must be >= 0 (got -3)");
  CHECK_THROWS(Sampler::Validate(Options(1.0f, 0, 1.5f)), InvalidArgument, "top_p must be in (0, 1] (got 1.5)");
  CHECK_THROWS(Sampler::Validate(Options(1.0f, 0, 0.0f)), InvalidArgument, "top_p must be in (0, 1] (got 0)");
  CHECK_THROWS(Sampler::Validate(Options(1.0f, 0, 1.0f, 0.0f)), InvalidArgument, "repetition_penalty must be > 0 (got 0)");
  Sampler::Validate(Options(0.0f, 0, 1.0f, 1.0f));  // the defaults are valid
  Sampler::Validate(SamplingOptions{});
}

AWQCORE_TEST_MAIN()
