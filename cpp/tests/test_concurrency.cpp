// Sessions on one Model from several threads (awqcore.h: a Model is immutable
// and shared; each Session is used by one thread at a time). Built and run
// under ThreadSanitizer by tools/sanitizers.sh, where a data race between the
// sessions, or between a session's thread pool workers, fails the run.
#include <thread>
#include <vector>

#include "awqbin_test_writer.h"
#include "test_harness.h"

using awqcore::GenerateOptions;
using awqcore::Session;

TEST(two_sessions_on_one_model_in_parallel_match_sequential_runs) {
  auto model = TinySaneModel("llama");
  GenerateOptions options;
  options.max_new_tokens = 12;
  options.stop_ids = std::vector<int>{};
  const std::vector<std::vector<int>> prompts = {{1, 5, 9, 13}, {2, 40, 7}};
  // The sequential answers, one session each, two worker threads each (so
  // the thread pools run in parallel too).
  std::vector<std::vector<int>> expected;
  for (const auto& prompt : prompts) expected.push_back(Session(model, 32, 2).Generate(prompt, options));
  CHECK(expected[0] != expected[1]);
  for (int round = 0; round < 3; ++round) {
    std::vector<std::vector<int>> got(prompts.size());
    std::vector<std::thread> threads;
    for (size_t i = 0; i < prompts.size(); ++i) {
      threads.emplace_back([&, i] {
        Session session(model, 32, 2);
        got[i] = session.Generate(prompts[i], options);
        session.Forward({3, 4});  // keeps going in the same cache
      });
    }
    for (std::thread& thread : threads) thread.join();
    CHECK(got == expected);
  }
}

AWQCORE_TEST_MAIN()
