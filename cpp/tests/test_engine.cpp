// awqcore::Engine (engine.h): continuous batching checked against
// Session::Generate one request at a time (the independent reference),
// cancellation, the bounded queue, per-request seeds, Shutdown, and the
// callbacks' exactly-once contract. Run under ThreadSanitizer by
// tools/sanitizers.sh (submits, cancels and stats from several threads while
// the engine thread decodes).
#include <sys/resource.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "awqbin_test_writer.h"
#include "test_harness.h"

using awqcore::CpuActivations;
using awqcore::Engine;
using awqcore::EngineOptions;
using awqcore::GenerateOptions;
using awqcore::InvalidArgument;
using awqcore::Session;
using awqcore::StopReason;

namespace {

// What the callbacks of one request saw. Thread-safe: written by the engine
// thread, read by the test's threads.
struct Outcome {
  std::mutex mutex;
  std::condition_variable changed;
  std::vector<int> tokens;
  int finishes = 0;
  int tokens_after_finish = 0;
  StopReason reason = StopReason::kCallback;
  std::string error;

  awqcore::TokenCallback OnToken(std::function<bool(int)> also = nullptr) {
    return [this, also](int token) {
      {
        std::lock_guard<std::mutex> lock(mutex);
        tokens.push_back(token);
        if (finishes > 0) ++tokens_after_finish;
        changed.notify_all();
      }
      return also ? also(token) : true;
    };
  }
  awqcore::FinishCallback OnFinish() {
    return [this](StopReason r, const std::string& e) {
      std::lock_guard<std::mutex> lock(mutex);
      ++finishes;
      reason = r;
      error = e;
      changed.notify_all();
    };
  }
  void WaitFinished() {
    std::unique_lock<std::mutex> lock(mutex);
    changed.wait(lock, [&] { return finishes > 0; });
  }
  void WaitTokens(size_t n) {
    std::unique_lock<std::mutex> lock(mutex);
    changed.wait(lock, [&] { return tokens.size() >= n || finishes > 0; });
  }
  size_t Count() {
    std::lock_guard<std::mutex> lock(mutex);
    return tokens.size();
  }
};

Engine::RequestId Submit(Engine& engine, Outcome& outcome, const std::vector<int>& prompt,
                         const GenerateOptions& options) {
  return engine.Submit(prompt, options, outcome.OnToken(), outcome.OnFinish());
}

// Each token's callback sleeps 10 ms, so 200 tokens take at least 2 s: a
// Shutdown the test calls right after the first tokens finds the request
// still running, however the threads are scheduled.
Engine::RequestId SubmitSlowly(Engine& engine, Outcome& outcome, const std::vector<int>& prompt,
                               const GenerateOptions& options) {
  return engine.Submit(prompt, options, outcome.OnToken([](int) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
    return true;
  }), outcome.OnFinish());
}

std::vector<int> Prompt(int length, int salt) {
  std::vector<int> prompt;
  for (int i = 0; i < length; ++i) prompt.push_back((7 * i + 11 * salt + 1) % 50);
  return prompt;
}

EngineOptions Options(int max_batch, int max_seq_len, int prefill_chunk = 64) {
  EngineOptions options;
  options.max_batch = max_batch;
  options.max_seq_len = max_seq_len;
  options.prefill_chunk = prefill_chunk;
  options.num_threads = 2;
  return options;
}

}  // namespace

TEST(concurrent_greedy_requests_equal_generate_one_by_one) {
  for (const char* arch : {"llama", "qwen2"}) {
    auto model = TinySaneModel(arch);
    // Prompts of 1 .. 23 tokens (<= prefill_chunk), budgets 0 .. 20; half stop
    // at the file's eos ids, half produce exactly max_new_tokens.
    std::vector<std::vector<int>> prompts;
    std::vector<GenerateOptions> options;
    for (int i = 0; i < 12; ++i) {
      prompts.push_back(Prompt(1 + (i * 5) % 23, i));
      GenerateOptions o = Exactly(i == 3 ? 0 : 4 + (i * 7) % 17);
      if (i % 2 == 1) o.stop_ids.reset();
      options.push_back(o);
    }
    prompts[5] = Prompt(30, 5);  // room for 2 new tokens in 32: ends kContextFull
    options[5] = Exactly(10);
    Session single(model, 32, 2);
    std::vector<std::vector<int>> expected;
    std::vector<StopReason> expected_reasons;
    for (size_t i = 0; i < prompts.size(); ++i) {
      expected.push_back(single.Generate(prompts[i], options[i]));
      expected_reasons.push_back(single.last_stop_reasons()[0]);
    }
    CHECK(expected_reasons[5] == StopReason::kContextFull);
    CHECK(std::count(expected_reasons.begin(), expected_reasons.end(), StopReason::kStopToken) > 0);
    // max_batch 8 (decode steps of <= 8: each token as alone), 3 (requests
    // wait for slots that finished ones free), 1.
    for (int max_batch : {8, 3, 1}) {
      Engine engine(model, Options(max_batch, 32, 23));
      std::vector<std::unique_ptr<Outcome>> outcomes;
      for (size_t i = 0; i < prompts.size(); ++i) outcomes.push_back(std::make_unique<Outcome>());
      // Three threads submit at once.
      std::vector<std::thread> threads;
      for (int t = 0; t < 3; ++t) {
        threads.emplace_back([&, t] {
          for (size_t i = t; i < prompts.size(); i += 3) Submit(engine, *outcomes[i], prompts[i], options[i]);
        });
      }
      for (std::thread& thread : threads) thread.join();
      for (size_t i = 0; i < prompts.size(); ++i) {
        Outcome& o = *outcomes[i];
        o.WaitFinished();
        std::lock_guard<std::mutex> lock(o.mutex);
        CHECK(o.tokens == expected[i]);
        CHECK(o.reason == expected_reasons[i]);
        CHECK(o.error.empty());
        if (o.tokens != expected[i] || o.reason != expected_reasons[i]) {
          std::printf("  %s max_batch %d request %zu differs\n", arch, max_batch, i);
        }
      }
      const Engine::Stats stats = engine.stats();
      CHECK(stats.submitted == prompts.size() && stats.finished == prompts.size());
      CHECK(stats.waiting == 0 && stats.running == 0 && stats.max_batch == max_batch);
      uint64_t generated = 0, prompt_tokens = 0;
      for (size_t i = 0; i < prompts.size(); ++i) {
        generated += expected[i].size();
        if (options[i].max_new_tokens > 0) prompt_tokens += prompts[i].size();
      }
      CHECK(stats.generated_tokens == generated);
      CHECK(stats.prompt_tokens == prompt_tokens);
      CHECK(stats.decode_steps > 0 && stats.decode_seconds > 0 && stats.prefill_seconds > 0);
    }
  }
}

TEST(a_long_prompt_prefilled_in_chunks_gives_generates_tokens) {
  // Exact in both arithmetics: the int4 linears compute each token of a call
  // of more than 8 tokens the same whatever the call's length (the prompt
  // GEMM), the int8 rounding is per token, and a token's attention sums over
  // the same cached keys in the same order. The chunks here hold more than 8
  // tokens: a chunk of <= 8 runs the decode kernels, whose int8 sums come in
  // another order on AVX-512 (engine.h).
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
    std::mutex gate_mutex;
    std::condition_variable gate;
    bool long_submitted = false;
    engine.Submit(short_prompt, Exactly(100), short_outcome.OnToken([&](int) {
      std::unique_lock<std::mutex> lock(gate_mutex);
      gate.wait(lock, [&] { return long_submitted; });
      return true;
    }), short_outcome.OnFinish());
    std::atomic<size_t> short_at_first_long{0};
    engine.Submit(long_prompt, Exactly(12), long_outcome.OnToken([&](int) {
      if (short_at_first_long == 0) short_at_first_long = short_outcome.Count();
      return true;
    }), long_outcome.OnFinish());
    {
      std::lock_guard<std::mutex> lock(gate_mutex);
      long_submitted = true;
      gate.notify_all();
    }
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
  std::mutex gate_mutex;
  std::condition_variable gate;
  bool burst_submitted = false;
  Outcome gate_outcome;
  engine.Submit(Prompt(3, 9), Exactly(1), gate_outcome.OnToken(),
                [&](StopReason, const std::string&) {
                  std::unique_lock<std::mutex> lock(gate_mutex);
                  gate.wait(lock, [&] { return burst_submitted; });
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
  {
    std::lock_guard<std::mutex> lock(gate_mutex);
    burst_submitted = true;
    gate.notify_all();
  }
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

TEST(a_prompt_arriving_mid_stream_is_prefilled_in_streaming_chunks) {
  // streaming_prefill_chunk 10 while a request streams: a 45-token prompt
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
    options.streaming_prefill_chunk = 10;
    options.activations = activations;
    Engine engine(model, options);
    // The streaming request's third token holds the engine thread until the
    // other is queued, so the count below does not depend on the machine.
    std::mutex gate_mutex;
    std::condition_variable gate;
    bool submitted = false;
    Outcome streaming, arriving;
    engine.Submit(stream_prompt, Exactly(40), streaming.OnToken([&](int) {
      if (streaming.Count() == 3) {
        std::unique_lock<std::mutex> lock(gate_mutex);
        gate.wait(lock, [&] { return submitted; });
      }
      return true;
    }), streaming.OnFinish());
    streaming.WaitTokens(3);
    std::atomic<size_t> streamed_at_first{0};
    engine.Submit(arriving_prompt, Exactly(4), arriving.OnToken([&](int) {
      if (streamed_at_first == 0) streamed_at_first = streaming.Count();
      return true;
    }), arriving.OnFinish());
    {
      std::lock_guard<std::mutex> lock(gate_mutex);
      submitted = true;
      gate.notify_all();
    }
    streaming.WaitFinished();
    arriving.WaitFinished();
    CHECK(streaming.tokens == expected_stream);
    CHECK(arriving.tokens == expected_arriving);
    // 3 tokens, then one per chunk but the last: 6 (a single 45-token chunk: 3).
    CHECK(streamed_at_first == 6);
    if (streamed_at_first != 6) std::printf("  streamed %zu tokens\n", streamed_at_first.load());
  }
}

TEST(cancel_ends_a_request_within_one_step_and_frees_its_slot) {
  auto model = TinySaneModel("llama");
  Engine engine(model, Options(2, 200));
  Session single(model, 200, 2);
  for (int round = 0; round < 2; ++round) {
    Outcome cancelled, stopped_by_callback, other;
    // The third token's callback holds the engine thread until Cancel has
    // been called, so the request cannot finish first however the threads
    // are scheduled.
    std::mutex gate_mutex;
    std::condition_variable gate;
    bool cancel_called = false;
    const Engine::RequestId id =
        engine.Submit(Prompt(4, 1), Exactly(150), cancelled.OnToken([&](int) {
          if (cancelled.Count() == 3) {
            std::unique_lock<std::mutex> lock(gate_mutex);
            gate.wait(lock, [&] { return cancel_called; });
          }
          return true;
        }), cancelled.OnFinish());
    engine.Submit(Prompt(6, 2), Exactly(150),
                  stopped_by_callback.OnToken([](int) { return false; }),
                  stopped_by_callback.OnFinish());
    cancelled.WaitTokens(3);
    CHECK(engine.Cancel(id));
    {
      std::lock_guard<std::mutex> lock(gate_mutex);
      cancel_called = true;
      gate.notify_all();
    }
    const size_t seen = cancelled.Count();
    CHECK(!engine.Cancel(id));  // already cancelled
    cancelled.WaitFinished();
    stopped_by_callback.WaitFinished();
    CHECK(cancelled.reason == StopReason::kCancelled && cancelled.error.empty());
    // At most the decode step running when Cancel came adds a token.
    CHECK(cancelled.Count() <= seen + 1);
    CHECK(stopped_by_callback.reason == StopReason::kCancelled && stopped_by_callback.tokens.size() == 1);
    CHECK(!engine.Cancel(id));       // finished
    CHECK(!engine.Cancel(id + 100));  // unknown
    // Both slots are free again: two more requests run, with Generate's tokens.
    Outcome a, b;
    Submit(engine, a, Prompt(3, 5), Exactly(10));
    Submit(engine, b, Prompt(9, 6), Exactly(10));
    a.WaitFinished();
    b.WaitFinished();
    CHECK(a.tokens == single.Generate(Prompt(3, 5), Exactly(10)));
    CHECK(b.tokens == single.Generate(Prompt(9, 6), Exactly(10)));
    CHECK(engine.stats().running == 0);
  }
}

TEST(free_slots_accept_requests_even_with_no_queue) {
  // A burst of max_batch requests fits in the slots whatever the engine
  // thread has admitted so far, so max_queue 0 refuses none of them.
  auto model = TinySaneModel("llama");
  EngineOptions options = Options(2, 64);
  options.max_queue = 0;
  Engine engine(model, options);
  Outcome first, second;
  Submit(engine, first, Prompt(3, 1), Exactly(4));
  Submit(engine, second, Prompt(2, 2), Exactly(4));
  first.WaitFinished();
  second.WaitFinished();
  CHECK(first.tokens.size() == 4 && second.tokens.size() == 4);
  CHECK(engine.stats().finished == 2);
}

TEST(a_full_queue_refuses_at_once_and_a_waiting_request_can_be_cancelled) {
  auto model = TinySaneModel("llama");
  EngineOptions options = Options(1, 64);
  options.max_queue = 2;
  Engine engine(model, options);
  // The running request's first token holds the engine thread until released,
  // so the queue's length is known.
  std::mutex gate_mutex;
  std::condition_variable gate;
  bool entered = false, released = false;
  Outcome running, queued1, queued2;
  engine.Submit(Prompt(3, 1), Exactly(5), running.OnToken([&](int) {
    std::unique_lock<std::mutex> lock(gate_mutex);
    entered = true;
    gate.notify_all();
    gate.wait(lock, [&] { return released; });
    return true;
  }), running.OnFinish());
  {
    std::unique_lock<std::mutex> lock(gate_mutex);
    gate.wait(lock, [&] { return entered; });
  }
  Submit(engine, queued1, Prompt(2, 2), Exactly(3));
  const Engine::RequestId second = Submit(engine, queued2, Prompt(2, 3), Exactly(3));
  Outcome refused;
  CHECK_THROWS(Submit(engine, refused, Prompt(2, 4), Exactly(3)), awqcore::QueueFull,
               "the request queue is full (2 requests waiting");
  Engine::Stats stats = engine.stats();
  CHECK(stats.waiting == 2 && stats.running == 1 && stats.submitted == 3 && stats.max_queue == 2);
  CHECK(engine.Cancel(second));
  {
    std::lock_guard<std::mutex> lock(gate_mutex);
    released = true;
    gate.notify_all();
  }
  running.WaitFinished();
  queued1.WaitFinished();
  queued2.WaitFinished();
  CHECK(running.tokens.size() == 5 && queued1.tokens.size() == 3);
  CHECK(queued2.tokens.empty() && queued2.reason == StopReason::kCancelled);
  CHECK(refused.finishes == 0);  // a refused request gets no callback
  // Room again.
  Outcome later;
  Submit(engine, later, Prompt(2, 4), Exactly(3));
  later.WaitFinished();
  CHECK(later.tokens.size() == 3);
}

TEST(seeded_requests_reproduce_generate_whatever_runs_beside_them) {
  auto model = TinySaneModel("qwen2");
  Session single(model, 64, 2);
  auto sampled = [](uint64_t seed) {
    GenerateOptions o = Exactly(16);
    o.sampling.temperature = 1.0f;
    o.sampling.top_k = 20;
    o.sampling.seed = seed;
    return o;
  };
  const std::vector<int> prompt = Prompt(5, 1);
  const std::vector<int> expected7 = single.Generate(prompt, sampled(7));
  const std::vector<int> expected8 = single.Generate(prompt, sampled(8));
  CHECK(expected7 != expected8);
  Engine engine(model, Options(8, 64));
  // Alone, then beside others (same seed twice, another seed, a greedy one).
  Outcome alone;
  Submit(engine, alone, prompt, sampled(7));
  alone.WaitFinished();
  CHECK(alone.tokens == expected7);
  Outcome a, b, c, greedy;
  Submit(engine, a, prompt, sampled(7));
  Submit(engine, greedy, Prompt(9, 2), Exactly(20));
  Submit(engine, b, prompt, sampled(8));
  Submit(engine, c, prompt, sampled(7));
  for (Outcome* o : {&a, &b, &c, &greedy}) o->WaitFinished();
  CHECK(a.tokens == expected7 && c.tokens == expected7);
  CHECK(b.tokens == expected8);
}

TEST(shutdown_cancels_waiting_and_running_requests_once_each) {
  auto model = TinySaneModel("llama");
  std::vector<std::unique_ptr<Outcome>> outcomes;
  {
    EngineOptions options = Options(2, 256);
    Engine engine(model, options);
    for (int i = 0; i < 5; ++i) {
      outcomes.push_back(std::make_unique<Outcome>());
      SubmitSlowly(engine, *outcomes.back(), Prompt(3 + i, i), Exactly(200));
    }
    outcomes[0]->WaitTokens(2);
    engine.Shutdown();
    engine.Shutdown();  // idempotent
    CHECK_THROWS(Submit(engine, *outcomes[0], Prompt(2, 1), Exactly(2)), awqcore::Error,
                 "the engine is shut down");
    const Engine::Stats stats = engine.stats();
    CHECK(stats.finished == 5 && stats.running == 0 && stats.waiting == 0);
  }
  for (const auto& o : outcomes) {
    CHECK(o->finishes == 1 && o->tokens_after_finish == 0);
    CHECK(o->reason == StopReason::kCancelled && o->error.empty());
    CHECK(o->tokens.size() < 200);
  }
  CHECK(outcomes[4]->tokens.empty());  // it was still waiting
  // The destructor shuts a running engine down the same way.
  Outcome last;
  {
    Engine engine(model, Options(1, 256));
    SubmitSlowly(engine, last, Prompt(3, 1), Exactly(200));
    last.WaitTokens(1);
  }
  CHECK(last.finishes == 1 && last.reason == StopReason::kCancelled);
}

TEST(bad_requests_are_refused_naming_the_problem) {
  auto model = TinySaneModel("llama");
  CHECK_THROWS(Engine(model, Options(0, 16)), InvalidArgument, "max_batch must be >= 1 (got 0)");
  CHECK_THROWS(Engine(model, Options(1, 0)), InvalidArgument, "max_seq_len must be >= 1 (got 0)");
  CHECK_THROWS(Engine(model, Options(1, 16, 0)), InvalidArgument, "prefill_chunk must be >= 1");
  EngineOptions negative_chunk = Options(1, 16);
  negative_chunk.streaming_prefill_chunk = -1;
  CHECK_THROWS(Engine(model, negative_chunk), InvalidArgument,
               "streaming_prefill_chunk must be >= 0");
  EngineOptions negative_queue = Options(1, 16);
  negative_queue.max_queue = -1;
  CHECK_THROWS(Engine(model, negative_queue), InvalidArgument, "max_queue must be >= 0 (got -1)");
  Engine engine(model, Options(2, 16));
  Outcome o;
  CHECK_THROWS(Submit(engine, o, {}, Exactly(2)), InvalidArgument, "empty prompt");
  CHECK_THROWS(Submit(engine, o, {1, 50}, Exactly(2)), InvalidArgument,
               "token id 50 at position 1 is out of range [0, 50)");
  CHECK_THROWS(Submit(engine, o, Prompt(16, 1), Exactly(2)), InvalidArgument,
               "prompt of 16 tokens leaves no room for a new token in max_seq_len 16");
  CHECK_THROWS(Submit(engine, o, {1}, Exactly(-1)), InvalidArgument, "max_new_tokens must be >= 0");
  GenerateOptions cold = Exactly(2);
  cold.sampling.top_p = 0.f;
  CHECK_THROWS(Submit(engine, o, {1}, cold), InvalidArgument, "top_p");
  CHECK(engine.stats().submitted == 0 && o.finishes == 0);
  // A prompt of max_seq_len - 1 tokens gets one token.
  Submit(engine, o, Prompt(15, 1), Exactly(5));
  o.WaitFinished();
  CHECK(o.tokens.size() == 1 && o.reason == StopReason::kContextFull);
}

TEST(non_finite_logits_fail_the_request_not_the_engine) {
  auto model = OverflowingLogitsModel();
  Engine engine(model, Options(2, 16));
  for (int round = 0; round < 2; ++round) {
    Outcome o;
    const Engine::RequestId id = Submit(engine, o, {1, 5, 7}, Exactly(3));
    o.WaitFinished();
    CHECK(o.tokens.empty() && o.finishes == 1 && o.reason == StopReason::kCancelled);
    CHECK(o.error.find("the logits of request " + std::to_string(id) +
                       "'s next token are not finite") != std::string::npos);
  }
  CHECK(engine.stats().finished == 2);
}

TEST(callbacks_may_submit_and_cancel_but_not_shut_down) {
  auto model = TinySaneModel("llama");
  Engine engine(model, Options(2, 64));
  Outcome first, chained;
  std::atomic<bool> shutdown_refused{false};
  engine.Submit(Prompt(3, 1), Exactly(3), first.OnToken([&](int) {
    if (first.Count() == 1) {
      Submit(engine, chained, Prompt(4, 2), Exactly(4));
      try {
        engine.Shutdown();
      } catch (const awqcore::Error& e) {
        shutdown_refused = std::strstr(e.what(), "cannot join itself") != nullptr;
      }
    }
    return true;
  }), first.OnFinish());
  first.WaitFinished();
  chained.WaitFinished();
  CHECK(shutdown_refused);
  CHECK(first.tokens.size() == 3 && chained.tokens.size() == 4);
}

TEST(an_idle_engine_sleeps) {
  // A busy-waiting engine thread would burn ~all of the 300 ms below; a
  // sleeping one uses microseconds. CPU time of this process, not wall time,
  // so a loaded machine does not change it.
  auto model = TinySaneModel("llama");
  Engine engine(model, Options(2, 32));
  Outcome o;
  Submit(engine, o, Prompt(3, 1), Exactly(2));
  o.WaitFinished();
  auto cpu_seconds = [] {
    rusage usage{};
    getrusage(RUSAGE_SELF, &usage);
    return usage.ru_utime.tv_sec + usage.ru_stime.tv_sec +
           1e-6 * (usage.ru_utime.tv_usec + usage.ru_stime.tv_usec);
  };
  const double before = cpu_seconds();
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  CHECK_LE(cpu_seconds() - before, 0.1, "CPU seconds used by an idle engine in 0.3 s");
}

AWQCORE_TEST_MAIN()
