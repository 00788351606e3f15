#include "thread_pool.h"

#include <algorithm>
#include <chrono>
#include <string>
#include <system_error>

#include "awqcore/awqcore.h"

#if defined(__x86_64__) || defined(_M_X64) || defined(__i386__)
#include <immintrin.h>
#define AWQCORE_CPU_RELAX() _mm_pause()
#else
#define AWQCORE_CPU_RELAX() std::this_thread::yield()
#endif

namespace awqcore {
namespace {

// Chunk i of k over [0, n): [n*i/k, n*(i+1)/k), sizes floor(n/k) or ceil(n/k).
int64_t ChunkBegin(int64_t n, int num_chunks, int chunk_index) {
  return n * chunk_index / num_chunks;
}

// Spins until done() or ~spin_micros have passed (the clock is read every 64
// pauses, ~10 us); returns done().
template <class Done>
bool SpinUntil(const Done& done, int spin_micros) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::microseconds(spin_micros);
  for (;;) {
    for (int i = 0; i < 64; ++i) {
      if (done()) return true;
      AWQCORE_CPU_RELAX();
    }
    if (std::chrono::steady_clock::now() > deadline) return done();
  }
}

}  // namespace

ThreadPool::ThreadPool(int num_threads) : num_threads_(num_threads < 1 ? 1 : num_threads) {
  workers_.reserve(num_threads_ - 1);
  // A thread that cannot be created (EAGAIN: a process or cgroup thread
  // limit) throws std::system_error after others have started. The destructor
  // does not run for a constructor that throws, and the members would be
  // destroyed under the started workers (work_ready_ while they wait on it,
  // then joinable std::threads, which terminates): stop and join them here,
  // and say which thread failed.
  int started = 0;
  try {
    for (int i = 1; i < num_threads_; ++i, ++started) workers_.emplace_back([this] { WorkerLoop(); });
  } catch (const std::system_error& e) {
    StopWorkers();
    throw Error("cannot start worker thread " + std::to_string(started + 1) + " of " +
                std::to_string(num_threads_ - 1) + " (num_threads=" + std::to_string(num_threads_) +
                "): " + e.what());
  }
}

ThreadPool::~ThreadPool() { StopWorkers(); }

void ThreadPool::StopWorkers() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stop_ = true;
  }
  work_ready_.notify_all();
  for (std::thread& worker : workers_) worker.join();
}

void ThreadPool::RunChunks() {
  for (;;) {
    const int chunk = next_chunk_.fetch_add(1, std::memory_order_relaxed);
    if (chunk >= job_chunks_) return;
    job_fn_(job_context_, ChunkBegin(job_n_, job_chunks_, chunk), ChunkBegin(job_n_, job_chunks_, chunk + 1));
  }
}

void ThreadPool::Run(int64_t n, ChunkFn fn, const void* context) {
  if (num_threads_ == 1 || n == 1) {
    fn(context, 0, n);
    return;
  }
  job_fn_ = fn;
  job_context_ = context;
  job_n_ = n;
  job_chunks_ = static_cast<int>(std::min<int64_t>(n, int64_t{kChunksPerThread} * num_threads_));
  next_chunk_.store(0, std::memory_order_relaxed);
  // Every worker reports, also one that finds no chunk left, so no worker can
  // still be reading this job's fields when the next Run overwrites them.
  pending_.store(num_threads_ - 1);
  generation_.fetch_add(1);  // seq_cst: publishes the job, ordered before the read below
  if (sleepers_.load() > 0) {
    std::lock_guard<std::mutex> lock(mutex_);
    work_ready_.notify_all();
  }
  RunChunks();
  // The last chunks are small: spin briefly, then yield the core (a
  // descheduled worker on a busy machine needs it).
  while (!SpinUntil([this] { return pending_.load(std::memory_order_acquire) == 0; },
                    kSpinMicros)) {
    std::this_thread::yield();
  }
}

void ThreadPool::WorkerLoop() {
  uint64_t seen_generation = 0;
  for (;;) {
    const auto job_ready = [&] { return stop_.load() || generation_.load() != seen_generation; };
    if (!SpinUntil(job_ready, kSpinMicros)) {
      std::unique_lock<std::mutex> lock(mutex_);
      sleepers_.fetch_add(1);  // seq_cst: before the predicate's read of generation_
      work_ready_.wait(lock, job_ready);
      sleepers_.fetch_sub(1);
    }
    if (stop_.load()) return;
    seen_generation = generation_.load();
    RunChunks();
    pending_.fetch_sub(1, std::memory_order_release);
  }
}

}  // namespace awqcore
