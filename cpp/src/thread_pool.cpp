#include "thread_pool.h"

namespace awqcore {
namespace {

// Chunk i of k over [0, n): [n*i/k, n*(i+1)/k), sizes floor(n/k) or ceil(n/k).
int64_t ChunkBegin(int64_t n, int num_chunks, int chunk_index) {
  return n * chunk_index / num_chunks;
}

}  // namespace

ThreadPool::ThreadPool(int num_threads) : num_threads_(num_threads < 1 ? 1 : num_threads) {
  workers_.reserve(num_threads_ - 1);
  for (int chunk_index = 1; chunk_index < num_threads_; ++chunk_index) {
    workers_.emplace_back([this, chunk_index] { WorkerLoop(chunk_index); });
  }
}

ThreadPool::~ThreadPool() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stop_ = true;
  }
  work_ready_.notify_all();
  for (std::thread& worker : workers_) worker.join();
}

void ThreadPool::Run(int64_t n, ChunkFn fn, const void* context) {
  const int num_chunks = n < num_threads_ ? static_cast<int>(n) : num_threads_;
  if (num_chunks > 1) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      job_fn_ = fn;
      job_context_ = context;
      job_n_ = n;
      job_chunks_ = num_chunks;
      pending_ = num_chunks - 1;
      ++generation_;
    }
    work_ready_.notify_all();
  }
  fn(context, 0, ChunkBegin(n, num_chunks, 1));
  if (num_chunks > 1) {
    std::unique_lock<std::mutex> lock(mutex_);
    work_done_.wait(lock, [this] { return pending_ == 0; });
  }
}

void ThreadPool::WorkerLoop(int chunk_index) {
  uint64_t seen_generation = 0;
  std::unique_lock<std::mutex> lock(mutex_);
  for (;;) {
    work_ready_.wait(lock, [&] { return stop_ || generation_ != seen_generation; });
    if (stop_) return;
    seen_generation = generation_;
    if (chunk_index >= job_chunks_) continue;  // fewer chunks than threads
    const ChunkFn fn = job_fn_;
    const void* context = job_context_;
    const int64_t begin = ChunkBegin(job_n_, job_chunks_, chunk_index);
    const int64_t end = ChunkBegin(job_n_, job_chunks_, chunk_index + 1);
    lock.unlock();
    fn(context, begin, end);
    lock.lock();
    if (--pending_ == 0) work_done_.notify_one();
  }
}

}  // namespace awqcore
