// A persistent fork-join pool for the data-parallel loops of the forward pass.
//
// ParallelFor(n, fn) splits [0, n) into at most num_threads() contiguous
// chunks, runs chunk 0 on the calling thread and the others on the workers,
// and returns when all are done. Contiguous chunks keep each thread on its own
// rows of a weight matrix (no false sharing of outputs, sequential reads).
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

  // Calls fn(begin, end) for contiguous chunks covering [0, n), at most one
  // chunk per thread; chunk sizes differ by at most 1.
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
  void WorkerLoop(int chunk_index);

  int num_threads_;
  std::vector<std::thread> workers_;  // [num_threads - 1]; worker i runs chunk i + 1

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
  int job_chunks_ = 0;  // min(n, num_threads)
};

}  // namespace awqcore
