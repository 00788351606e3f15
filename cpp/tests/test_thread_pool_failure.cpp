// A ThreadPool (and so a Session) whose worker threads cannot all be created
// throws a clear Error and leaves nothing running, instead of hanging or
// terminating while it unwinds.
//
// Thread creation is made to fail by defining pthread_create in this
// executable: the dynamic linker resolves libstdc++'s call to it here first,
// and this one forwards to the real function until the count runs out. A
// sanitizer runtime intercepts pthread_create itself, so sanitized builds skip.
#include <dlfcn.h>
#include <pthread.h>

#include <atomic>
#include <cerrno>
#include <cstdio>

#include "awqbin_test_writer.h"
#include "test_harness.h"
#include "thread_pool.h"

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define AWQCORE_SANITIZED 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
#define AWQCORE_SANITIZED 1
#endif
#endif

namespace {
std::atomic<int> g_creations_left{-1};  // -1: unlimited
std::atomic<int> g_creations_refused{0};
}  // namespace

#ifndef AWQCORE_SANITIZED
extern "C" int pthread_create(pthread_t* thread, const pthread_attr_t* attr, void* (*start)(void*),
                              void* arg) {
  using Real = int (*)(pthread_t*, const pthread_attr_t*, void* (*)(void*), void*);
  static const Real real = reinterpret_cast<Real>(::dlsym(RTLD_NEXT, "pthread_create"));
  int left = g_creations_left.load();
  while (left > 0 && !g_creations_left.compare_exchange_weak(left, left - 1)) {
  }
  if (left == 0) {
    g_creations_refused++;
    return EAGAIN;
  }
  return real(thread, attr, start, arg);
}
#endif

TEST(thread_pool_whose_second_worker_fails_throws_and_joins_the_first) {
  g_creations_left = 1;  // the first worker starts, the second fails
  CHECK_THROWS(awqcore::ThreadPool(4), awqcore::Error,
               "cannot start worker thread 2 of 3 (num_threads=4): ");
  CHECK(g_creations_refused.load() == 1);
  g_creations_left = -1;
  // Pools work again once threads can be created.
  awqcore::ThreadPool pool(3);
  std::atomic<int> sum{0};
  pool.ParallelFor(100, [&](int64_t begin, int64_t end) { sum += static_cast<int>(end - begin); });
  CHECK(sum.load() == 100);
}

TEST(session_whose_threads_fail_throws_an_error) {
  auto model = TinySaneModel("llama");
  g_creations_left = 2;
  CHECK_THROWS(awqcore::Session(model, 16, 8), awqcore::Error, "cannot start worker thread 3 of 7");
  g_creations_left = -1;
  CHECK(awqcore::Session(model, 16, 2).Forward({1, 2}).size() == 2 * kVocab);
}

int main() {
#ifdef AWQCORE_SANITIZED
  std::printf("skipped: a sanitizer runtime owns pthread_create\n");
  return awqtest::kSkipReturnCode;
#else
  return awqtest::RunAll();
#endif
}
