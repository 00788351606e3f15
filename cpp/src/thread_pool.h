// A persistent fork-join pool for the data-parallel loops of the forward pass.
//
// ParallelFor(n, fn) splits [0, n) into at most kChunksPerThread *
// num_threads() contiguous chunks, which the calling thread and the workers
// claim one at a time from a shared counter, and returns when all are done.
// Contiguous chunks keep a thread on a run of rows of a weight matrix (no
// false sharing of outputs, sequential reads). Claiming instead of one fixed
// chunk per thread: two threads streaming weights do not get equal shares of
// the memory bus, and with fixed halves the faster one waited for the other;
// the caller's and workers' waits fell from 11-13% to 9-10% of a SmolLM2
// decode step's samples (perf, prompt 512; 2 threads).
// A call allocates nothing: `fn` is passed by address, not wrapped in a
// std::function.
//
// Waking a thread blocked on a condition variable costs a futex system call
// and a scheduler hop, ~5-50 us; a decode step of a 30-layer model makes ~150
// ParallelFor calls, so blocking waits alone could add milliseconds per token.
// Workers therefore spin (with `pause`) for up to kSpinMicros after a job, and
// only then block; the caller spins for its workers the same way. A spinning
// thread that finds nothing within kSpinMicros sleeps, so an idle Session
// costs no CPU.
//
// Thread safety: ParallelFor must be called by one thread at a time (the
// owner; a Session is single-threaded) and not from inside `fn`. `fn` must not
// throw: it runs on worker threads that have nowhere to report an exception.
// The job's arguments are written before the (seq_cst) increment of
// `generation_` publishes them; a worker reads them after seeing the new
// generation. Sleeping uses `mutex_`/`work_ready_`: a worker registers in
// `sleepers_` before re-checking the generation under the lock, and Run reads
// `sleepers_` after the increment, so one of the two always sees the other
// (no lost wake-up).
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <thread>
#include <vector>

namespace awqcore {

class ThreadPool {
 public:
  // num_threads >= 1 (the caller counts as one); starts num_threads - 1 workers.
  explicit ThreadPool(int num_threads);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int num_threads() const { return num_threads_; }

  // Calls fn(begin, end) for contiguous chunks covering [0, n), on any of
  // the threads: one chunk [0, n) with one thread or n = 1, else
  // min(n, kChunksPerThread * num_threads()) chunks whose sizes differ by at
  // most 1.
  static constexpr int kChunksPerThread = 4;
  template <class Fn>
  void ParallelFor(int64_t n, const Fn& fn) {
    if (n <= 0) return;
    Run(n, [](const void* context, int64_t begin, int64_t end) {
          (*static_cast<const Fn*>(context))(begin, end);
        },
        &fn);
  }

 private:
  using ChunkFn = void (*)(const void* context, int64_t begin, int64_t end);

  void Run(int64_t n, ChunkFn fn, const void* context);
  void RunChunks();  // claims chunks of the current job until none is left
  void WorkerLoop();
  void StopWorkers();  // sets stop_ and joins every started worker

  int num_threads_;
  std::vector<std::thread> workers_;  // [num_threads - 1]

  static constexpr int kSpinMicros = 300;

  std::mutex mutex_;
  std::condition_variable work_ready_;  // generation_ moved or stop_ set
  std::atomic<uint64_t> generation_{0};  // one per multi-chunk ParallelFor call
  std::atomic<int> pending_{0};          // workers not yet done with this job
  std::atomic<int> sleepers_{0};         // workers blocked (or about to block) on work_ready_
  std::atomic<bool> stop_{false};
  // The current job, published by the increment of generation_.
  ChunkFn job_fn_ = nullptr;
  const void* job_context_ = nullptr;
  int64_t job_n_ = 0;
  int job_chunks_ = 0;  // min(n, kChunksPerThread * num_threads)
  std::atomic<int> next_chunk_{0};  // the next unclaimed chunk of the job
};

}  // namespace awqcore
