// Tests of Session (session.cpp): argument validation before any state change,
// greedy generation equal to step-by-step Forward + argmax, stop rules and
// stop reasons, the cache-capacity limit, callbacks (and calls from inside
// them), non-finite logits, memory errors, seeded sampling, and batched
// generation equal to one-by-one generation.
#include <algorithm>
#include <climits>
#include <cmath>
#include <cstring>
#include <random>
#include <stdexcept>
#include <vector>

#include "awqbin_test_writer.h"
#include "cpu_memory.h"
#include "half.h"
#include "sampler.h"
#include "test_harness.h"

using awqcore::GenerateOptions;
using awqcore::InvalidArgument;
using awqcore::Session;
using awqcore::StopReason;

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
  CHECK_THROWS(s.Generate({1}, cold), InvalidArgument, "temperature must be >= 0 and finite (got -1)");
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
  using Reasons = std::vector<StopReason>;
  const std::vector<int> free = s.Generate({1, 5, 7}, Exactly(6));
  CHECK(s.last_stop_reasons() == Reasons{StopReason::kMaxNewTokens});
  // prompt + generated never exceeds max_seq_len: 14 of 16 leaves 2 tokens,
  // and the reason says the context, not max_new_tokens, ended it.
  CHECK(s.Generate(std::vector<int>(14, 4), Exactly(6)).size() == 2);
  CHECK(s.last_stop_reasons() == Reasons{StopReason::kContextFull});
  CHECK(s.Generate(std::vector<int>(16, 4), Exactly(6)).empty());
  CHECK(s.last_stop_reasons() == Reasons{StopReason::kContextFull});
  // Exactly filling the context with the tokens asked for is max_new_tokens.
  CHECK(s.Generate(std::vector<int>(10, 4), Exactly(6)).size() == 6);
  CHECK(s.last_stop_reasons() == Reasons{StopReason::kMaxNewTokens});
  // A callback returning false stops; the token it saw is included.
  int calls = 0;
  CHECK(s.Generate({1, 5, 7}, Exactly(6), [&](int) { return ++calls < 3; }).size() == 3);
  CHECK(calls == 3);
  CHECK(s.last_stop_reasons() == Reasons{StopReason::kCallback});
  CHECK_THROWS(s.Generate({1}, Exactly(6), [](int) -> bool { throw std::out_of_range("boom"); }),
               std::out_of_range, "boom");
  CHECK(s.last_stop_reasons().empty());
  // An explicit stop id ends generation at its first occurrence, included.
  GenerateOptions stop_at = Exactly(6);
  stop_at.stop_ids = std::vector<int>{free[2]};
  std::vector<int> stopped = s.Generate({1, 5, 7}, stop_at);
  CHECK(!stopped.empty() && stopped.back() == free[2] && stopped.size() <= 3);
  CHECK(s.last_stop_reasons() == Reasons{StopReason::kStopToken});
  CHECK(std::string(awqcore::StopReasonName(StopReason::kContextFull)) == "context_full");
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

// Prompts of different lengths: 1 token, a few, one that leaves room for only
// 2 new tokens in a 24-token cache, and one that leaves none.
std::vector<std::vector<int>> BatchPrompts() {
  std::vector<std::vector<int>> prompts = {{1, 5, 7}, {9}, {4, 4, 8, 15, 16, 23, 42, 11}, {}, {}, {30, 2, 6}};
  for (int i = 0; i < 22; ++i) prompts[3].push_back((7 * i + 3) % 50);
  for (int i = 0; i < 24; ++i) prompts[4].push_back((5 * i + 1) % 50);
  return prompts;
}

TEST(batched_greedy_generation_equals_one_by_one) {
  for (const char* arch : {"llama", "qwen2"}) {
    auto model = TinySaneModel(arch);
    const std::vector<std::vector<int>> prompts = BatchPrompts();
    // Fixed lengths, and the file's stop ids (sequences leave at different steps).
    GenerateOptions defaults;
    defaults.max_new_tokens = 12;
    for (const GenerateOptions& options : {Exactly(12), defaults}) {
      Session single(model, 24, 2);
      std::vector<std::vector<int>> expected;
      for (const std::vector<int>& prompt : prompts) expected.push_back(single.Generate(prompt, options));
      CHECK(!expected[3].empty() && expected[3].size() <= 2);
      CHECK(expected[4].empty());  // a full cache leaves no room
      // max_batch 3: at most 3 live (bitwise the GEMV path of one-by-one);
      // 2: prompts wait for a slot that a finished one frees; 6: all at once
      // (the GEMM path from 4 live sequences on); 1: one at a time.
      for (int max_batch : {3, 2, 6, 1}) {
        Session batched(model, 24, 2, awqcore::Device::kCpu, max_batch);
        CHECK(batched.max_batch() == max_batch);
        const std::vector<std::vector<int>> got = batched.GenerateBatch(prompts, options);
        CHECK(got == expected);
        if (got != expected) std::printf("  %s: max_batch %d differs\n", arch, max_batch);
      }
    }
  }
}

TEST(batched_generation_rejects_bad_input_naming_the_prompt) {
  auto model = TinySaneModel("llama");
  CHECK_THROWS(Session(model, 8, 1, awqcore::Device::kCpu, 0), InvalidArgument,
               "max_batch must be >= 1 (got 0)");
  Session s(model, 8, 2, awqcore::Device::kCpu, 2);
  CHECK(s.Forward({1, 2}).size() == 2 * 50);
  CHECK_THROWS(s.GenerateBatch({}, Exactly(2)), InvalidArgument, "no prompts");
  CHECK_THROWS(s.GenerateBatch({{1}, {}}, Exactly(2)), InvalidArgument, "prompt 1: empty prompt");
  CHECK_THROWS(s.GenerateBatch({{1}, {2}, {3, 50}}, Exactly(2)), InvalidArgument,
               "prompt 2: token id 50 at position 1 is out of range [0, 50)");
  CHECK_THROWS(s.GenerateBatch({std::vector<int>(9, 1), {2}}, Exactly(2)), InvalidArgument,
               "prompt 0: sequence of 9 tokens exceeds max_seq_len 8");
  CHECK_THROWS(s.GenerateBatch({{1}}, Exactly(-1)), InvalidArgument, "max_new_tokens must be >= 0");
  GenerateOptions cold = Exactly(2);
  cold.sampling.top_p = 0.f;
  CHECK_THROWS(s.GenerateBatch({{1}}, cold), InvalidArgument, "top_p");
  CHECK(s.position() == 2);  // no rejected call touched the caches
  CHECK(s.GenerateBatch({{1}, {2, 3}}, Exactly(0)) == (std::vector<std::vector<int>>{{}, {}}));
}

TEST(batched_sampling_uses_one_stream_per_prompt) {
  auto model = TinySaneModel("qwen2");
  GenerateOptions sampled = Exactly(10);
  sampled.sampling.temperature = 1.0f;
  sampled.sampling.top_k = 20;
  sampled.sampling.seed = 41;
  const std::vector<std::vector<int>> prompts = {{1, 2}, {3}, {4, 5, 6}};
  Session batched(model, 32, 2, awqcore::Device::kCpu, 3);
  const std::vector<std::vector<int>> got = batched.GenerateBatch(prompts, sampled);
  // Prompt i draws from seed + i, whoever shares the batch (3 live: the
  // per-token GEMV path, so logits are those of Generate bit for bit).
  Session single(model, 32, 2);
  for (int i = 0; i < 3; ++i) {
    GenerateOptions own = sampled;
    own.sampling.seed = 41 + i;
    CHECK(got[i] == single.Generate(prompts[i], own));
  }
  CHECK(batched.GenerateBatch({prompts[0]}, sampled)[0] == got[0]);
  CHECK(batched.GenerateBatch(prompts, sampled) == got);
}

TEST(batch_reports_a_stop_reason_per_prompt) {
  auto model = TinySaneModel("llama");
  Session s(model, 16, 2, awqcore::Device::kCpu, 2);
  const std::vector<int> short_prompt = {1, 5, 7}, long_prompt(14, 9), full_prompt(16, 9);
  const std::vector<int> a = s.Generate(short_prompt, Exactly(6));
  const std::vector<int> b = s.Generate(long_prompt, Exactly(6));  // room for 2
  // A stop id that prompt 0 produces and prompt 1 does not.
  const auto stop = std::find_if(a.begin(), a.end(), [&](int t) {
    return std::find(b.begin(), b.end(), t) == b.end();
  });
  CHECK(stop != a.end());
  GenerateOptions options = Exactly(6);
  options.stop_ids = std::vector<int>{*stop};
  s.GenerateBatch({short_prompt, long_prompt, full_prompt}, options);
  const std::vector<StopReason> expected = {StopReason::kStopToken, StopReason::kContextFull,
                                            StopReason::kContextFull};
  CHECK(s.last_stop_reasons() == expected);
  s.GenerateBatch({short_prompt, full_prompt}, Exactly(0));
  CHECK(s.last_stop_reasons() == std::vector<StopReason>(2, StopReason::kMaxNewTokens));
}

TEST(calls_from_inside_on_token_are_errors_not_corruption) {
  auto model = TinySaneModel("llama");
  Session s(model, 32, 2);
  const std::vector<int> expected = s.Generate({1, 5, 7}, Exactly(4));
  auto reenter = [&](const char* method) {
    CHECK_THROWS(s.Generate({1, 5, 7}, Exactly(4),
                            [&](int) -> bool {
                              if (std::string(method) == "Generate") s.Generate({2}, Exactly(1));
                              if (std::string(method) == "Forward") s.Forward({2});
                              if (std::string(method) == "Reset") s.Reset();
                              if (std::string(method) == "GenerateBatch") {
                                s.GenerateBatch({{2}}, Exactly(1));
                              }
                              return true;
                            }),
                 awqcore::Error, std::string("Session::") + method + " called while");
  };
  for (const char* method : {"Generate", "Forward", "Reset", "GenerateBatch"}) reenter(method);
  // The outer call unwound cleanly: the Session works and gives the same tokens.
  CHECK(s.Generate({1, 5, 7}, Exactly(4)) == expected);
}

TEST(non_finite_logits_are_an_error_not_a_token) {
  // Greedy over inf/NaN logits would pick an arbitrary id at every step.
  auto model = OverflowingLogitsModel();
  for (auto activations : {awqcore::CpuActivations::kInt8Decode, awqcore::CpuActivations::kFloat32}) {
    Session s(model, 16, 1, awqcore::Device::kCpu, 2, activations);
    CHECK_THROWS(s.Generate({1, 5, 7}, Exactly(3)), awqcore::Error,
                 "the logits of the next token are not finite");
    CHECK_THROWS(s.GenerateBatch({{1, 5}, {4}}, Exactly(3)), awqcore::Error,
                 "the logits of prompt 0's next token are not finite");
    // Forward returns the logits as computed, for the caller to inspect.
    const std::vector<float> logits = s.Forward({1});
    CHECK(!std::isfinite(*std::max_element(logits.begin(), logits.end(), [](float a, float b) {
      return !std::isfinite(b) ? true : (std::isfinite(a) && a < b);
    })));
  }
}

TEST(memory_errors_name_the_sizes_before_allocating) {
  auto model = TinySaneModel("llama");
  const awqcore::ModelConfig& c = model->config();
  // The KV cache's size, computed here from its definition: k and v, per
  // sequence, layer, position and key/value head, hd elements of 2 bytes.
  const uint64_t kv_bytes = 2ull * 3 * c.num_layers * 100000 * c.num_kv_heads * c.head_dim * 2;
  const awqcore::CpuSessionBytes bytes = awqcore::CpuSessionMemory(c, 100000, 3, true);
  CHECK(bytes.kv_cache == kv_bytes);
  CHECK(awqcore::CpuSessionMemory(c, 100000, 3, false).kv_cache == 2 * kv_bytes);
  CHECK(bytes.scratch > 0);
  awqcore::MachineMemory small;
  small.available = 1 << 20;
  small.total = 2 << 20;
  small.source = "MemAvailable";
  CHECK_THROWS(awqcore::CheckCpuSessionFits(c, 100000, 3, true, small), awqcore::Error,
               "KV cache " + std::to_string((kv_bytes + (1 << 20) - 1) >> 20) +
                   " MiB for max_seq_len 100000 x max_batch 3 in f16");
  CHECK_THROWS(awqcore::CheckCpuSessionFits(c, 100000, 3, true, small), awqcore::Error,
               "but the machine has 1 MiB (MemAvailable of 2 MiB physical)");
  awqcore::CheckCpuSessionFits(c, 10, 1, true, awqcore::MachineMemory{});  // unknown: no check
  // Through the Session, on this machine: the KV cache of 2^19 sequences of
  // 2^31 - 1 tokens is ~2^58 bytes, more than any machine has; INT_MAX
  // sequences make it ~2^70, which must be an Error too, not a size wrapped
  // around to something small.
  CHECK_THROWS(Session(model, INT_MAX, 1, awqcore::Device::kCpu, 1 << 19), awqcore::Error,
               "lower max_seq_len or max_batch");
  CHECK_THROWS(Session(model, INT_MAX, 1, awqcore::Device::kCpu, INT_MAX), awqcore::Error,
               "overflows 64 bits");
}

AWQCORE_TEST_MAIN()
