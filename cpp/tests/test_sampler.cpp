// Sampler semantics (cpp/src/sampler.h): greedy, top-k, top-p, temperature,
// repetition penalty, seeding and option validation.
#include <cmath>
#include <random>
#include <vector>

#include "awqcore/awqcore.h"
#include "sampler.h"
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

TEST(plain_argmax_options_sample_the_raw_argmax) {
  // IsPlainArgmax lets the GPU pick the token on the device from the raw
  // logits; it must hold exactly when Sample returns Argmax of them, with a
  // history present (which a penalty would act on).
  std::mt19937 rng(3);
  const int vocab = 50;
  Sampler sampler(vocab);
  const SamplingOptions options[] = {Options(0.0f), Options(0.7f, 1), Options(0.0f, 0, 1.0f, 1.3f),
                                     Options(0.7f), Options(0.7f, 5, 0.9f)};
  const bool plain[] = {true, true, false, false, false};
  for (int i = 0; i < 5; ++i) {
    CHECK(Sampler::IsPlainArgmax(options[i]) == plain[i]);
    if (!plain[i]) continue;
    for (int trial = 0; trial < 20; ++trial) {
      const std::vector<float> logits = RandomLogits(vocab, rng);
      sampler.Start(options[i]);
      for (int token = 0; token < vocab; token += 3) sampler.Observe(token);
      CHECK(SampleCopy(sampler, logits) == Argmax(logits.data(), vocab));
    }
  }
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

TEST(invalid_options_throw_with_the_value) {
  CHECK_THROWS(Sampler::Validate(Options(-1.0f)), InvalidArgument, "temperature must be >= 0 (got -1)");
  CHECK_THROWS(Sampler::Validate(Options(NAN)), InvalidArgument, "temperature must be >= 0");
  CHECK_THROWS(Sampler::Validate(Options(1.0f, -3)), InvalidArgument, "top_k must be >= 0 (got -3)");
  CHECK_THROWS(Sampler::Validate(Options(1.0f, 0, 1.5f)), InvalidArgument, "top_p must be in (0, 1] (got 1.5)");
  CHECK_THROWS(Sampler::Validate(Options(1.0f, 0, 0.0f)), InvalidArgument, "top_p must be in (0, 1] (got 0)");
  CHECK_THROWS(Sampler::Validate(Options(1.0f, 0, 1.0f, 0.0f)), InvalidArgument, "repetition_penalty must be > 0 (got 0)");
  Sampler::Validate(Options(0.0f, 0, 1.0f, 1.0f));  // the defaults are valid
  Sampler::Validate(SamplingOptions{});
}

AWQCORE_TEST_MAIN()
