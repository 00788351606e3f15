// Session: argument validation, the KV-cache-backed forward pass and the
// generation loop. Everything a decode step touches (KV cache, activations,
// logits, sampler buffers) is allocated in the constructor.
#include <algorithm>
#include <string>
#include <thread>

#include "awqcore/awqcore.h"
#include "cuda_backend.h"
#include "model_impl.h"
#include "sampler.h"
#include "thread_pool.h"
#include "transformer.h"

namespace awqcore {
namespace {

int ResolveThreadCount(int num_threads) {
  if (num_threads < 0) {
    throw InvalidArgument("num_threads must be >= 0 (got " + std::to_string(num_threads) + ")");
  }
  if (num_threads > 0) return num_threads;
  const unsigned hardware = std::thread::hardware_concurrency();  // 0: unknown
  return hardware > 0 ? static_cast<int>(hardware) : 1;
}

void CheckMaxSeqLen(int max_seq_len) {
  if (max_seq_len < 1) {
    throw InvalidArgument("max_seq_len must be >= 1 (got " + std::to_string(max_seq_len) + ")");
  }
}

// The forward pass of a Session on its device: the CPU Transformer or the
// CUDA backend (cuda_backend.h), behind the Transformer's interface.
class Backend {
 public:
  Backend(const Model& model, int max_seq_len, ThreadPool& pool, Device device) {
    if (device == Device::kCpu) {
      cpu_ = std::make_unique<Transformer>(model.impl().config, model.impl().weights, max_seq_len, pool);
      return;
    }
#ifdef AWQCORE_WITH_CUDA
    gpu_ = CreateCudaForward(model.impl().config, model.impl().weights, max_seq_len);
#else
    throw Error("awqcore was built without CUDA");
#endif
  }
  void Forward(const int* ids, int n, Transformer::Logits which, float* logits) {
    if (cpu_) return cpu_->Forward(ids, n, which, logits);
    gpu_->Forward(ids, n, which == Transformer::Logits::kAll, logits);
  }
  void Reset() { cpu_ ? cpu_->Reset() : gpu_->Reset(); }
  int position() const { return cpu_ ? cpu_->position() : gpu_->position(); }
  int max_seq_len() const { return cpu_ ? cpu_->max_seq_len() : gpu_->max_seq_len(); }

 private:
  std::unique_ptr<Transformer> cpu_;  // exactly one of the two is set
  std::unique_ptr<CudaForward> gpu_;
};

}  // namespace

struct Session::Impl {
  Impl(std::shared_ptr<const Model> model_in, int max_seq_len, int num_threads, Device device_in)
      : model(std::move(model_in)),
        config(model->impl().config),
        device(device_in),
        pool(device_in == Device::kCpu ? num_threads : 1),
        transformer(*model, max_seq_len, pool, device_in),
        sampler(config.vocab_size),
        logits(config.vocab_size) {}

  // Throws InvalidArgument unless ids can be appended at `start_position`.
  void ValidateIds(const std::vector<int>& ids, int start_position, const char* what) const {
    if (ids.empty()) throw InvalidArgument(std::string("empty ") + what);
    for (size_t i = 0; i < ids.size(); ++i) {
      if (ids[i] < 0 || ids[i] >= config.vocab_size) {
        throw InvalidArgument("token id " + std::to_string(ids[i]) + " at position " +
                              std::to_string(i) + " is out of range [0, " +
                              std::to_string(config.vocab_size) + ")");
      }
    }
    const size_t total = static_cast<size_t>(start_position) + ids.size();
    if (total > static_cast<size_t>(transformer.max_seq_len())) {
      throw InvalidArgument("sequence of " + std::to_string(total) + " tokens exceeds max_seq_len " +
                            std::to_string(transformer.max_seq_len()));
    }
  }

  std::shared_ptr<const Model> model;  // keeps the weights mapped
  const ModelConfig& config;
  const Device device;
  ThreadPool pool;      // CPU matrix products (one idle thread on the GPU)
  Backend transformer;  // KV cache + activation scratch
  Sampler sampler;
  std::vector<float> logits;  // [vocab] of the position being sampled
};

Session::Session(std::shared_ptr<const Model> model, int max_seq_len, int num_threads,
                 Device device) {
  if (!model) throw InvalidArgument("model is null");
  CheckMaxSeqLen(max_seq_len);
  const int threads = ResolveThreadCount(num_threads);
  impl_ = std::make_unique<Impl>(std::move(model), max_seq_len, threads, device);
}

Session::~Session() = default;

std::vector<float> Session::Forward(const std::vector<int>& ids) {
  impl_->ValidateIds(ids, impl_->transformer.position(), "input");
  std::vector<float> logits(ids.size() * static_cast<size_t>(impl_->config.vocab_size));
  impl_->transformer.Forward(ids.data(), static_cast<int>(ids.size()), Transformer::Logits::kAll,
                             logits.data());
  return logits;
}

std::vector<int> Session::Generate(const std::vector<int>& prompt, const GenerateOptions& options,
                                   const TokenCallback& on_token) {
  Impl& s = *impl_;
  // Validate everything before touching the cache.
  if (options.max_new_tokens < 0) {
    throw InvalidArgument("max_new_tokens must be >= 0 (got " +
                          std::to_string(options.max_new_tokens) + ")");
  }
  Sampler::Validate(options.sampling);
  s.ValidateIds(prompt, 0, "prompt");
  const std::vector<int>& stop_ids = options.stop_ids ? *options.stop_ids : s.config.eos_token_ids;

  s.transformer.Reset();
  s.sampler.Start(options.sampling);
  for (int token : prompt) s.sampler.Observe(token);
  const int prompt_length = static_cast<int>(prompt.size());
  s.transformer.Forward(prompt.data(), prompt_length, Transformer::Logits::kLastOnly,
                        s.logits.data());

  // prompt + generated never exceeds max_seq_len, so every returned token has
  // a place in the cache. A token is fed back only when another one is wanted
  // after it: the last token is returned without a forward pass of its own.
  const int budget = std::min(options.max_new_tokens, s.transformer.max_seq_len() - prompt_length);
  std::vector<int> generated;
  generated.reserve(budget);
  for (int i = 0; i < budget; ++i) {
    if (i > 0) {
      s.transformer.Forward(&generated.back(), 1, Transformer::Logits::kLastOnly, s.logits.data());
    }
    const int token = s.sampler.Sample(s.logits.data());
    generated.push_back(token);
    s.sampler.Observe(token);
    if (on_token && !on_token(token)) break;
    if (std::find(stop_ids.begin(), stop_ids.end(), token) != stop_ids.end()) break;
  }
  return generated;
}

void Session::Reset() { impl_->transformer.Reset(); }
int Session::position() const { return impl_->transformer.position(); }
int Session::max_seq_len() const { return impl_->transformer.max_seq_len(); }
int Session::num_threads() const { return impl_->pool.num_threads(); }
Device Session::device() const { return impl_->device; }
const Model& Session::model() const { return *impl_->model; }

}  // namespace awqcore
