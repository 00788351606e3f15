// awqcore::Engine scheduling (engine.h): prompts prefilled in chunks, a burst
// of arrivals before the first decode step, arrivals mid-stream in streaming
// chunks, the burst rule's bound, and prefix reuse; each answer checked against
// Session::Generate one request at a time. Run under ThreadSanitizer by
// tools/sanitizers.sh.
#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdio>
#include <functional>
#include <memory>
#include <mutex>
#include <utility>
#include <vector>

#include "awqbin_test_writer.h"
#include "engine_test_support.h"
#include "test_harness.h"

using awqcore::CpuActivations;
using awqcore::Session;

TEST(a_long_prompt_prefilled_in_chunks_gives_generates_tokens) {
  // Exact in both arithmetics: the int4 linears compute each token of a call
  // of more than 8 tokens the same whatever the call's length (the prompt
  // GEMM), the int8 rounding is per token, and a token's attention sums over
  // the same cached keys in the same order. The chunks here hold more than 8
  // tokens: a chunk of <= 8 runs the decode kernels, whose int8 sums come in
  // another order below AVX-512 VNNI (engine.h).
  auto model = TinySaneModel("llama");
  for (CpuActivations activations : {CpuActivations::kFloat32, CpuActivations::kInt8Decode}) {
    Session single(model, 128, 2, awqcore::Device::kCpu, 1, activations);
    const std::vector<int> long_prompt = Prompt(75, 3), short_prompt = Prompt(5, 4);
    const std::vector<int> expected_long = single.Generate(long_prompt, Exactly(12));
    const std::vector<int> expected_short = single.Generate(short_prompt, Exactly(100));
    EngineOptions options = Options(4, 128, 16);  // 75 tokens: chunks 16, 16, 16, 16, 11
    options.activations = activations;
    Engine engine(model, options);
    Outcome short_outcome, long_outcome;
    // The short request decodes while the long one is prefilled between its
    // steps. Its first token holds the engine thread until the long request
    // is queued, so the count below does not depend on the machine's speed.
    Gate long_submitted;
    engine.Submit(short_prompt, Exactly(100), short_outcome.OnToken([&](int) {
      long_submitted.Wait();
      return true;
    }), short_outcome.OnFinish());
    std::atomic<size_t> short_at_first_long{0};
    engine.Submit(long_prompt, Exactly(12), long_outcome.OnToken([&](int) {
      if (short_at_first_long == 0) short_at_first_long = short_outcome.Count();
      return true;
    }), long_outcome.OnFinish());
    long_submitted.Open();
    long_outcome.WaitFinished();
    short_outcome.WaitFinished();
    CHECK(long_outcome.tokens == expected_long);
    CHECK(short_outcome.tokens == expected_short);
    // The short stream kept going during the long prefill: its first token,
    // then a decode step after each of the first 4 chunks before the last
    // chunk's token (at least: the long one may be admitted a step later).
    CHECK(short_at_first_long >= 5);
  }
}

TEST(a_burst_of_prompts_goes_in_before_the_first_decode_step) {
  // Three requests arrive together while nothing streams: all three first
  // tokens come before any second token (one decode step after the last
  // prefill), and each answer is still Generate's.
  auto model = TinySaneModel("llama");
  Session single(model, 64, 2);
  Engine engine(model, Options(4, 64, 32));
  // The gate request's finish holds the engine thread until the burst is
  // queued, so the three are admitted in one iteration on any machine.
  Gate burst_submitted;
  Outcome gate_outcome;
  engine.Submit(Prompt(3, 9), Exactly(1), gate_outcome.OnToken(),
                [&](StopReason, const std::string&) {
                  burst_submitted.Wait();
                });
  gate_outcome.WaitTokens(1);
  std::mutex order_mutex;
  std::vector<std::pair<int, size_t>> order;  // (request, its token count) per token
  Outcome outcomes[3];
  std::vector<std::vector<int>> expected;
  for (int r = 0; r < 3; ++r) {
    const std::vector<int> prompt = Prompt(12 + 7 * r, r);  // 12, 19, 26 tokens: one chunk each
    expected.push_back(single.Generate(prompt, Exactly(6)));
    engine.Submit(prompt, Exactly(6), outcomes[r].OnToken([&, r](int) {
      std::lock_guard<std::mutex> lock(order_mutex);
      order.emplace_back(r, outcomes[r].Count());
      return true;
    }), outcomes[r].OnFinish());
  }
  burst_submitted.Open();
  for (int r = 0; r < 3; ++r) {
    outcomes[r].WaitFinished();
    CHECK(outcomes[r].tokens == expected[r]);
  }
  CHECK(order.size() == 18);
  for (size_t k = 0; k < 3 && k < order.size(); ++k) {
    CHECK(order[k].second == 1);  // first tokens only
    if (order[k].second != 1) std::printf("  token %zu is request %d's token %zu\n", k,
                                          order[k].first, order[k].second);
  }
}

TEST(arrivals_that_end_at_their_first_token_cannot_hold_a_second_token) {
  // Max batch 3: request A and two chains of requests that each end at their
  // first token and submit the next. After every prefill another prompt
  // waits for its own and nothing streams yet, the burst rule's condition for
  // skipping the decode step; the engine skips at most max_batch steps in a
  // row, so A's second token comes after a few chain requests, not all 40.
  auto model = TinySaneModel("llama");
  Engine engine(model, Options(3, 64, 32));
  constexpr int kChain = 40;
  std::mutex mutex;
  std::condition_variable changed;
  Gate burst_submitted;
  int chain_submitted = 0, chain_finished = 0, chain_finished_at_second = -1;
  // The gate request's finish holds the engine thread until A and the first
  // two chain requests are queued, so they are admitted together.
  Outcome gate_outcome;
  engine.Submit(Prompt(3, 9), Exactly(1), gate_outcome.OnToken(),
                [&](StopReason, const std::string&) { burst_submitted.Wait(); });
  gate_outcome.WaitTokens(1);
  std::function<void()> submit_chain = [&] {
    {
      std::lock_guard<std::mutex> lock(mutex);
      if (chain_submitted == kChain) return;
      ++chain_submitted;
    }
    engine.Submit(Prompt(4, 3), Exactly(1), [&](int) {
      submit_chain();
      return true;
    }, [&](StopReason, const std::string&) {
      std::lock_guard<std::mutex> lock(mutex);
      ++chain_finished;
      changed.notify_all();
    });
  };
  Outcome a;
  engine.Submit(Prompt(5, 1), Exactly(3), a.OnToken([&](int) {
    const size_t count = a.Count();
    std::lock_guard<std::mutex> lock(mutex);
    if (count == 2) chain_finished_at_second = chain_finished;
    return true;
  }), a.OnFinish());
  submit_chain();
  submit_chain();
  burst_submitted.Open();
  a.WaitFinished();
  {
    std::unique_lock<std::mutex> lock(mutex);
    changed.wait(lock, [&] { return chain_finished == kChain; });
  }
  CHECK(a.tokens.size() == 3 && a.reason != StopReason::kCancelled);
  CHECK(chain_finished_at_second >= 0 && chain_finished_at_second <= 3 + 1);
  std::printf("  A's second token came after %d of %d chain requests\n", chain_finished_at_second,
              kChain);
}

TEST(a_prompt_arriving_mid_stream_is_prefilled_in_budget_chunks) {
  // prefill_budget 10 while a request streams: a 45-token prompt
  // goes in as 10, 10, 10 and 15 (no chunk leaves 1..8 tokens behind), with
  // a decode step of the streaming request after each of the first three;
  // both answers are Generate's.
  auto model = TinySaneModel("llama");
  for (CpuActivations activations : {CpuActivations::kFloat32, CpuActivations::kInt8Decode}) {
    Session single(model, 128, 2, awqcore::Device::kCpu, 1, activations);
    const std::vector<int> stream_prompt = Prompt(5, 1), arriving_prompt = Prompt(45, 2);
    const std::vector<int> expected_stream = single.Generate(stream_prompt, Exactly(40));
    const std::vector<int> expected_arriving = single.Generate(arriving_prompt, Exactly(4));
    EngineOptions options = Options(4, 128, 64);
    options.prefill_budget = 10;
    options.activations = activations;
    Engine engine(model, options);
    // The streaming request's third token holds the engine thread until the
    // other is queued, so the count below does not depend on the machine.
    Gate submitted;
    Outcome streaming, arriving;
    engine.Submit(stream_prompt, Exactly(40), streaming.OnToken([&](int) {
      if (streaming.Count() == 3) {
        submitted.Wait();
      }
      return true;
    }), streaming.OnFinish());
    streaming.WaitTokens(3);
    std::atomic<size_t> streamed_at_first{0};
    engine.Submit(arriving_prompt, Exactly(4), arriving.OnToken([&](int) {
      if (streamed_at_first == 0) streamed_at_first = streaming.Count();
      return true;
    }), arriving.OnFinish());
    submitted.Open();
    streaming.WaitFinished();
    arriving.WaitFinished();
    CHECK(streaming.tokens == expected_stream);
    CHECK(arriving.tokens == expected_arriving);
    // 3 tokens, then one per chunk but the last: 6 (a single 45-token chunk: 3).
    CHECK(streamed_at_first == 6);
    if (streamed_at_first != 6) std::printf("  streamed %zu tokens\n", streamed_at_first.load());
  }
}


// Runs `prompt` alone on `engine` and returns its tokens and the prompt
// tokens the engine reused for it: its on_start's count, checked against
// the engine's counter (which only this request moves).
std::pair<std::vector<int>, uint64_t> RunAlone(Engine& engine, const std::vector<int>& prompt,
                                               int tokens) {
  const uint64_t reused_before = engine.stats().reused_prompt_tokens;
  Outcome outcome;
  Submit(engine, outcome, prompt, Exactly(tokens));
  outcome.WaitFinished();
  const uint64_t counted = engine.stats().reused_prompt_tokens - reused_before;
  CHECK(outcome.starts == 1);
  CHECK(outcome.cached_prompt_tokens >= 0 &&
        static_cast<uint64_t>(outcome.cached_prompt_tokens) == counted);
  return {outcome.tokens, counted};
}

std::vector<int> Concat(std::vector<int> a, const std::vector<int>& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

TEST(a_lone_prompt_takes_the_full_chunk_whatever_the_budget) {
  // prefill_chunk 32, prefill_budget 10: with nothing decoding, nobody waits
  // for a prefill, so a 45-token prompt goes in as 32 and 13, not in chunks
  // of 10; its answer is Generate's.
  auto model = TinySaneModel("llama");
  Session single(model, 128, 2);
  const std::vector<int> prompt = Prompt(45, 3);
  EngineOptions options = Options(4, 128, 32);
  options.prefill_budget = 10;
  Engine engine(model, options);
  const auto [tokens, reused] = RunAlone(engine, prompt, 4);
  CHECK(reused == 0 && tokens == single.Generate(prompt, Exactly(4)));
  const Engine::Stats stats = engine.stats();
  CHECK(stats.prompt_tokens == 45 && stats.prefill_chunks == 2);
  if (stats.prefill_chunks != 2) std::printf("  %llu chunks\n", (unsigned long long)stats.prefill_chunks);
}

TEST(a_prompt_starting_with_a_free_slots_cached_prompt_keeps_it_and_gets_generates_tokens) {
  // One slot, requests one after another: each finds the last one's prompt
  // rows in the cache. Exact in both arithmetics for the reason of the
  // chunked-prefill test: keeping rows is cutting the prompt there, and the
  // rest (more than 8 tokens) is a prompt-sized call.
  auto model = TinySaneModel("llama");
  for (CpuActivations activations : {CpuActivations::kFloat32, CpuActivations::kInt8Decode}) {
    Session single(model, 128, 2, awqcore::Device::kCpu, 1, activations);
    const std::vector<int> a = Prompt(40, 1);
    const std::vector<int> a_then_more = Concat(a, Prompt(20, 2));
    const std::vector<int> expected_a = single.Generate(a, Exactly(6));
    // a's answer: its rows were written by decode steps, which are not kept.
    const std::vector<int> a_answered = Concat(Concat(a, expected_a), Prompt(12, 3));
    const std::vector<int> a_start = Concat(std::vector<int>(a.begin(), a.begin() + 20),
                                            Prompt(30, 5));  // Prompt(30, 5)[0] != a[20]
    const std::vector<int> nine = Prompt(9, 6);
    // A prompt of 5 runs as one decode-sized call, whose rows are not kept.
    const std::vector<int> five = Prompt(5, 9);
    const std::vector<int> five_then_more = Concat(five, Prompt(12, 10));
    struct Case {
      const char* name;
      const std::vector<int>& prompt;
      uint64_t reused;  // tokens kept from the previous case's prompt
    };
    const Case cases[] = {
        {"a (empty cache)", a, 0},
        {"a then 20 more", a_then_more, 40},
        {"a again: 9 tokens are prefilled", a, 31},
        {"a, its answer, 12 more", a_answered, 40},
        {"a's first 20 then others", a_start, 20},
        {"9 tokens", nine, 0},
        {"the same 9 tokens", nine, 0},
        {"5 tokens", five, 0},
        {"those 5, then 12 more", five_then_more, 0},
    };
    EngineOptions options = Options(1, 128, 16);
    options.activations = activations;
    Engine engine(model, options);
    for (const Case& c : cases) {
      const auto [tokens, reused] = RunAlone(engine, c.prompt, 6);
      CHECK(reused == c.reused);
      CHECK(tokens == single.Generate(c.prompt, Exactly(6)));
      if (reused != c.reused) std::printf("  %s: reused %llu\n", c.name, (unsigned long long)reused);
    }
    CHECK(engine.stats().prompt_tokens == 40 + 20 + 9 + 18 + 30 + 9 + 9 + 5 + 17);

    // Chunks of 8 are decode-sized calls too: none of their rows is kept.
    EngineOptions small_chunks = options;
    small_chunks.prefill_chunk = 8;
    Engine eights(model, small_chunks);
    RunAlone(eights, a, 6);
    CHECK(RunAlone(eights, a_then_more, 6).second == 0);

    options.prefix_reuse = false;
    Engine no_reuse(model, options);
    RunAlone(no_reuse, a, 6);
    const auto [tokens, reused] = RunAlone(no_reuse, a_then_more, 6);
    CHECK(reused == 0);
    CHECK(tokens == single.Generate(a_then_more, Exactly(6)));
  }
}

TEST(a_request_goes_to_the_free_slot_whose_cache_holds_its_prompts_start) {
  // Two slots: a in slot 0 and b in slot 1 (a's first token holds the engine
  // thread until b is queued, so a still holds slot 0 when b is admitted).
  // A prompt that starts with b then takes slot 1; the first free slot, 0,
  // holds nothing of it.
  auto model = TinySaneModel("llama");
  Session single(model, 128, 2);
  const std::vector<int> a = Prompt(40, 1), b = Prompt(40, 7);  // a[0] != b[0]
  const std::vector<int> b_then_more = Concat(b, Prompt(15, 8));
  Engine engine(model, Options(2, 128, 64));
  Gate b_submitted;
  Outcome a_outcome, b_outcome;
  engine.Submit(a, Exactly(4), a_outcome.OnToken([&](int) {
    b_submitted.Wait();
    return true;
  }), a_outcome.OnFinish());
  a_outcome.WaitTokens(1);
  Submit(engine, b_outcome, b, Exactly(4));
  b_submitted.Open();
  a_outcome.WaitFinished();
  b_outcome.WaitFinished();
  const auto [tokens, reused] = RunAlone(engine, b_then_more, 5);
  CHECK(reused == 40);
  CHECK(tokens == single.Generate(b_then_more, Exactly(5)));
}

AWQCORE_TEST_MAIN()
