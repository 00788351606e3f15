// A persistent fork-join pool for the data-parallel loops of the forward pass.
//
// ParallelFor(n, fn) splits [0, n) into at most num_threads() contiguous
// chunks, runs chunk 0 on the calling thread and the others on the workers,
// and returns when all are done. Contiguous chunks keep each thread on its own
// rows of a weight matrix (no false sharing of outputs, sequential reads).
// A call allocates nothing: `fn` is passed by address, not wrapped in a
// std::function.
//
// Thread safety: ParallelFor must be called by one thread at a time (the
// owner; a Session is single-threaded) and not from inside `fn`. `fn` must not
// throw: it runs on worker threads that have nowhere to report an exception.
// The pool's shared state is guarded by `mutex_`; the job's arguments are
// written under the lock before the generation counter moves, so a worker that
// sees the new generation also sees them.
#pragma once

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

  std::mutex mutex_;
  std::condition_variable work_ready_;  // generation_ moved or stop_ set
  std::condition_variable work_done_;   // pending_ reached 0
  uint64_t generation_ = 0;             // one per ParallelFor call
  int pending_ = 0;                     // worker chunks of this job not yet finished
  bool stop_ = false;
  // The current job.
  ChunkFn job_fn_ = nullptr;
  const void* job_context_ = nullptr;
  int64_t job_n_ = 0;
  int job_chunks_ = 0;  // min(n, num_threads)
};

}  // namespace awqcore
