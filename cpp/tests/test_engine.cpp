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
#include <cstdio>
#include <cstring>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <thread>
#include <vector>

#include "awqbin_test_writer.h"
#include "engine_test_support.h"
#include "test_harness.h"

using awqcore::CpuActivations;
using awqcore::Engine;
using awqcore::EngineOptions;
using awqcore::GenerateOptions;
using awqcore::InvalidArgument;
using awqcore::Session;
using awqcore::StopReason;


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

TEST(cancel_ends_a_request_within_one_step_and_frees_its_slot) {
  auto model = TinySaneModel("llama");
  Engine engine(model, Options(2, 200));
  Session single(model, 200, 2);
  for (int round = 0; round < 2; ++round) {
    Outcome cancelled, stopped_by_callback, other;
    // The third token's callback holds the engine thread until Cancel has
    // been called, so the request cannot finish first however the threads
    // are scheduled.
    Gate cancel_called;
    const Engine::RequestId id =
        engine.Submit(Prompt(4, 1), Exactly(150), cancelled.OnToken([&](int) {
          if (cancelled.Count() == 3) {
            cancel_called.Wait();
          }
          return true;
        }), cancelled.OnFinish());
    engine.Submit(Prompt(6, 2), Exactly(150),
                  stopped_by_callback.OnToken([](int) { return false; }),
                  stopped_by_callback.OnFinish());
    cancelled.WaitTokens(3);
    CHECK(engine.Cancel(id));
    cancel_called.Open();
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
  Gate entered, released;
  Outcome running, queued1, queued2;
  engine.Submit(Prompt(3, 1), Exactly(5), running.OnToken([&](int) {
    entered.Open();
    released.Wait();
    return true;
  }), running.OnFinish());
  entered.Wait();
  Submit(engine, queued1, Prompt(2, 2), Exactly(3));
  const Engine::RequestId second = Submit(engine, queued2, Prompt(2, 3), Exactly(3));
  Outcome refused;
  CHECK_THROWS(Submit(engine, refused, Prompt(2, 4), Exactly(3)), awqcore::QueueFull,
               "the request queue is full (2 requests waiting");
  Engine::Stats stats = engine.stats();
  CHECK(stats.waiting == 2 && stats.running == 1 && stats.submitted == 3 && stats.max_queue == 2);
  CHECK(engine.Cancel(second));
  released.Open();
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
  EngineOptions no_budget = Options(1, 16);
  no_budget.prefill_budget = 0;
  CHECK_THROWS(Engine(model, no_budget), InvalidArgument, "prefill_budget must be >= 1 (got 0)");
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

TEST(an_on_start_that_throws_fails_its_request_not_the_engine) {
  auto model = TinySaneModel("llama");
  Engine engine(model, Options(2, 32));
  Outcome thrower, next;
  engine.Submit(Prompt(12, 1), Exactly(3), thrower.OnToken(), thrower.OnFinish(),
                [](int) { throw std::runtime_error("no room"); });
  thrower.WaitFinished();
  CHECK(thrower.tokens.empty() && thrower.finishes == 1);
  CHECK(thrower.reason == StopReason::kCancelled && thrower.error == "on_start threw: no room");
  Submit(engine, next, Prompt(12, 2), Exactly(3));
  next.WaitFinished();
  CHECK(next.tokens.size() == 3 && next.starts == 1 && next.cached_prompt_tokens == 0);
  CHECK(engine.stats().running == 0);
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
