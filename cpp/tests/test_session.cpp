// Tests of Session (session.cpp): argument validation before any state change,
// greedy generation equal to step-by-step Forward + argmax, stop rules, the
// cache-capacity limit, callbacks, and seeded sampling.
#include <cstring>
#include <random>
#include <stdexcept>
#include <vector>

#include "awqbin_test_writer.h"
#include "half.h"
#include "sampler.h"
#include "test_harness.h"

using awqcore::GenerateOptions;
using awqcore::InvalidArgument;
using awqcore::Session;

namespace {

// The writer's pattern bytes make NaN f16 values; a session test needs a model
// that computes finite logits, so give every tensor sane random values: scales
// ~0.02 (weights of the magnitude of a trained model's), norms ~1, zero points
// in 0..15.
std::shared_ptr<const Model> TinySaneModel(const char* arch) {
  FileSpec spec = TinyModel(arch);
  std::mt19937 rng(5);
  std::uniform_real_distribution<float> uniform(-1.0f, 1.0f);
  for (TensorEntry& t : spec.tensors) {
    const bool is_scale = t.name.find(".scales") != std::string::npos;
    const bool is_zero = t.name.find(".zeros") != std::string::npos;
    const bool is_norm = t.name.find("norm") != std::string::npos;
    if (t.dtype == DType::kF16) {
      for (size_t i = 0; i < t.bytes.size(); i += 2) {
        uint16_t h = awqcore::F32ToF16(is_scale ? 0.02f * (1.5f + uniform(rng)) : uniform(rng));
        std::memcpy(&t.bytes[i], &h, 2);
      }
    } else if (t.dtype == DType::kF32) {
      for (size_t i = 0; i < t.bytes.size(); i += 4) {
        float f = is_norm ? 1.0f + 0.2f * uniform(rng) : 0.3f * uniform(rng);
        std::memcpy(&t.bytes[i], &f, 4);
      }
    } else if (is_zero) {
      for (uint8_t& b : t.bytes) b &= 15;
    }
  }
  return Load(Build(spec));
}

GenerateOptions Exactly(int n) {
  GenerateOptions options;
  options.max_new_tokens = n;
  options.stop_ids = std::vector<int>{};  // never stop early
  return options;
}

}  // namespace

TEST(validation_happens_before_any_state_change) {
  auto model = TinySaneModel("llama");
  CHECK_THROWS(Session(model, 0), InvalidArgument, "max_seq_len must be >= 1 (got 0)");
  CHECK_THROWS(Session(model, 8, -1), InvalidArgument, "num_threads must be >= 0 (got -1)");
  CHECK_THROWS(Session(nullptr, 8), InvalidArgument, "model is null");
  Session s(model, 8, 0);
  CHECK(s.num_threads() >= 1);
  CHECK_THROWS(s.Forward({}), InvalidArgument, "empty input");
  CHECK_THROWS(s.Forward({1, 2, 3, 50}), InvalidArgument,
               "token id 50 at position 3 is out of range [0, 50)");
  CHECK_THROWS(s.Forward({1, -1}), InvalidArgument, "token id -1 at position 1");
  CHECK(s.position() == 0);
  CHECK(s.Forward({1, 2, 3, 4, 5}).size() == 5 * 50);
  CHECK_THROWS(s.Forward({1, 2, 3, 4}), InvalidArgument, "sequence of 9 tokens exceeds max_seq_len 8");
  GenerateOptions negative = Exactly(-1);
  CHECK_THROWS(s.Generate({1}, negative), InvalidArgument, "max_new_tokens must be >= 0 (got -1)");
  GenerateOptions cold = Exactly(4);
  cold.sampling.temperature = -1;
  CHECK_THROWS(s.Generate({1}, cold), InvalidArgument, "temperature must be >= 0 (got -1)");
  CHECK_THROWS(s.Generate(std::vector<int>(9, 1), Exactly(1)), InvalidArgument,
               "sequence of 9 tokens exceeds max_seq_len 8");
  CHECK(s.position() == 5);  // none of the rejected calls touched the cache
  s.Reset();
  CHECK(s.position() == 0);
}

TEST(greedy_generate_equals_forward_and_argmax) {
  for (const char* arch : {"llama", "qwen2"}) {
    auto model = TinySaneModel(arch);
    Session session(model, 16, 2);
    std::vector<int> tokens = session.Generate({1, 5, 7}, Exactly(6));
    CHECK(tokens.size() == 6);
    Session stepper(model, 16, 1);
    std::vector<float> logits = stepper.Forward({1, 5, 7});  // [3, 50]
    for (int i = 0; i < 6 && i < static_cast<int>(tokens.size()); ++i) {
      int best = awqcore::Argmax(logits.data() + logits.size() - 50, 50);
      CHECK(best == tokens[i]);
      logits = stepper.Forward({best});
    }
  }
}

TEST(stop_rules_capacity_and_callbacks) {
  auto model = TinySaneModel("qwen2");
  Session s(model, 16, 2);
  const std::vector<int> free = s.Generate({1, 5, 7}, Exactly(6));
  // prompt + generated never exceeds max_seq_len: 14 of 16 leaves 2 tokens.
  CHECK(s.Generate(std::vector<int>(14, 4), Exactly(6)).size() == 2);
  CHECK(s.Generate(std::vector<int>(16, 4), Exactly(6)).empty());
  // A callback returning false stops; the token it saw is included.
  int calls = 0;
  CHECK(s.Generate({1, 5, 7}, Exactly(6), [&](int) { return ++calls < 3; }).size() == 3);
  CHECK(calls == 3);
  CHECK_THROWS(s.Generate({1}, Exactly(6), [](int) -> bool { throw std::out_of_range("boom"); }),
               std::out_of_range, "boom");
  // An explicit stop id ends generation at its first occurrence, included.
  GenerateOptions stop_at = Exactly(6);
  stop_at.stop_ids = std::vector<int>{free[2]};
  std::vector<int> stopped = s.Generate({1, 5, 7}, stop_at);
  CHECK(!stopped.empty() && stopped.back() == free[2] && stopped.size() <= 3);
  // Default stop ids: the file's eos ids {2, 3}.
  GenerateOptions defaults;
  defaults.max_new_tokens = 6;
  size_t expected = free.size();
  for (size_t i = 0; i < free.size(); ++i) {
    if (free[i] == 2 || free[i] == 3) {
      expected = i + 1;
      break;
    }
  }
  CHECK(s.Generate({1, 5, 7}, defaults).size() == expected);
  CHECK(s.Generate({1, 5, 7}, Exactly(0)).empty());
}

TEST(seeded_sampling_is_reproducible) {
  auto model = TinySaneModel("llama");
  Session s(model, 32, 2);
  GenerateOptions sampled = Exactly(12);
  sampled.sampling.temperature = 1.0f;
  sampled.sampling.top_p = 0.9f;
  sampled.sampling.repetition_penalty = 1.2f;
  sampled.sampling.seed = 9;
  CHECK(s.Generate({1, 2}, sampled) == s.Generate({1, 2}, sampled));
}

AWQCORE_TEST_MAIN()
