// Helpers of the Engine tests (test_engine.cpp, test_engine_scheduling.cpp):
// what one request's callbacks saw, and the tiny prompts and options.
#pragma once

#include <condition_variable>
#include <chrono>
#include <functional>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "awqbin_test_writer.h"

using awqcore::Engine;
using awqcore::EngineOptions;
using awqcore::GenerateOptions;
using awqcore::StopReason;

namespace {

// A latch that opens once: an engine callback Waits on it to hold the engine
// thread until the test has done something (submitted, cancelled), so what
// the test checks does not depend on how the threads are scheduled.
struct Gate {
  std::mutex mutex;
  std::condition_variable opened_changed;
  bool opened = false;

  void Open() {
    {
      std::lock_guard<std::mutex> lock(mutex);
      opened = true;
    }
    opened_changed.notify_all();
  }
  void Wait() {
    std::unique_lock<std::mutex> lock(mutex);
    opened_changed.wait(lock, [&] { return opened; });
  }
};

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
  int starts = 0;
  int cached_prompt_tokens = -1;  // on_start's count; -1: not called

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
  awqcore::StartCallback OnStart() {
    return [this](int cached) {
      std::lock_guard<std::mutex> lock(mutex);
      ++starts;
      cached_prompt_tokens = cached;
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
  return engine.Submit(prompt, options, outcome.OnToken(), outcome.OnFinish(), outcome.OnStart());
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

// No prefill budget (prefill_budget = prefill_chunk): the tests that check
// the budget set it.
EngineOptions Options(int max_batch, int max_seq_len, int prefill_chunk = 64) {
  EngineOptions options;
  options.max_batch = max_batch;
  options.max_seq_len = max_seq_len;
  options.prefill_chunk = prefill_chunk;
  options.prefill_budget = prefill_chunk;
  options.num_threads = 2;
  return options;
}

}  // namespace
