// SequenceRunner (sequence_runner.h): the forward pass chosen for the
// device, one sampler per slot, and the append/pick steps of every
// generation loop.
#include "sequence_runner.h"

#include <algorithm>
#include <string>
#include <thread>

#include "awqbin_file.h"
#include "cpu_memory.h"
#include "cuda_backend.h"
#include "model_impl.h"
#include "op_profile.h"
#include "transformer.h"

namespace awqcore {

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

void CheckMaxBatch(int max_batch) {
  if (max_batch < 1) {
    throw InvalidArgument("max_batch must be >= 1 (got " + std::to_string(max_batch) + ")");
  }
}

void CheckMaxNewTokens(int max_new_tokens) {
  if (max_new_tokens < 0) {
    throw InvalidArgument("max_new_tokens must be >= 0 (got " + std::to_string(max_new_tokens) +
                          ")");
  }
}

bool IsStop(const std::vector<int>& stop_ids, int token) {
  return std::find(stop_ids.begin(), stop_ids.end(), token) != stop_ids.end();
}

const std::vector<int>& StopIds(const GenerateOptions& options, const ModelConfig& config) {
  return options.stop_ids ? *options.stop_ids : config.eos_token_ids;
}

StopReason ReasonAfter(const std::vector<int>& tokens, const std::vector<int>& stop_ids,
                       const GenerateOptions& options) {
  if (!tokens.empty() && IsStop(stop_ids, tokens.back())) return StopReason::kStopToken;
  return static_cast<int>(tokens.size()) == options.max_new_tokens ? StopReason::kMaxNewTokens
                                                                   : StopReason::kContextFull;
}

double SecondsSince(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

namespace {

// The forward pass on its device, chosen once here: the CPU Transformer or
// the CUDA backend (cuda_backend.h), both behind ForwardPass.
std::unique_ptr<ForwardPass> CreateForwardPass(const Model& model, int max_seq_len, int max_batch,
                                               ThreadPool& pool, Device device,
                                               CpuActivations activations) {
  if (device == Device::kCpu) {
    return std::make_unique<Transformer>(model.impl().config, model.impl().weights, max_seq_len,
                                         pool, max_batch,
                                         activations == CpuActivations::kInt8Decode);
  }
  if (model.impl().weights.lm_head_int4.out > 0) {
    throw Error("device cuda does not run an int4 lm_head (this file was quantized with "
                "--lm-head int4); use device cpu, or quantize with --lm-head table");
  }
  return CreateCudaForward(model.impl().config, model.impl().weights, max_seq_len, max_batch);
}

// The pool's thread count after every check that must come before allocating.
int CheckedThreadCount(const std::shared_ptr<const Model>& model, int max_seq_len,
                       int num_threads, Device device, int max_batch,
                       CpuActivations activations) {
  if (!model) throw InvalidArgument("model is null");
  CheckMaxSeqLen(max_seq_len);
  CheckMaxBatch(max_batch);
  const int threads = ResolveThreadCount(num_threads);
  if (device == Device::kCpu) {
    CheckCpuSessionFits(model->impl().config, max_seq_len, max_batch,
                        activations == CpuActivations::kInt8Decode, QueryMachineMemory());
  }
  return device == Device::kCpu ? threads : 1;
}

}  // namespace

SequenceRunner::SequenceRunner(std::shared_ptr<const Model> model, int max_seq_len,
                               int num_threads, Device device, int max_batch,
                               CpuActivations activations)
    : model_(std::move(model)),
      device_(device),
      max_batch_(max_batch),
      pool_(CheckedThreadCount(model_, max_seq_len, num_threads, device, max_batch, activations)),
      forward_pass_(CreateForwardPass(*model_, max_seq_len, max_batch, pool_, device, activations)),
      logits_(static_cast<size_t>(max_batch) * model_->config().vocab_size),
      step_picks_(max_batch) {
  // Built in place: a copy of a Sampler would not keep the reserved capacity
  // that lets Observe run without allocating.
  samplers_.reserve(max_batch);
  for (int i = 0; i < max_batch; ++i) samplers_.emplace_back(config().vocab_size);
}

void SequenceRunner::ValidateIds(const std::vector<int>& ids, int start_position,
                                 const char* what, const std::string& where) const {
  const int vocab = config().vocab_size;
  if (ids.empty()) throw InvalidArgument(where + "empty " + what);
  for (size_t i = 0; i < ids.size(); ++i) {
    if (ids[i] < 0 || ids[i] >= vocab) {
      throw InvalidArgument(where + "token id " + std::to_string(ids[i]) + " at position " +
                            std::to_string(i) + " is out of range [0, " + std::to_string(vocab) +
                            ")");
    }
  }
  const size_t total = static_cast<size_t>(start_position) + ids.size();
  if (total > static_cast<size_t>(max_seq_len())) {
    throw InvalidArgument(where + "sequence of " + std::to_string(total) +
                          " tokens exceeds max_seq_len " + std::to_string(max_seq_len()));
  }
}

int SequenceRunner::Budget(const GenerateOptions& options, size_t prompt_length) const {
  return std::min(options.max_new_tokens, max_seq_len() - static_cast<int>(prompt_length));
}

bool SequenceRunner::PicksOnDevice(const SamplingOptions& sampling) const {
  return forward_pass_->picks_on_device() && sampling.repetition_penalty == 1.0f;
}

void SequenceRunner::Append(int seq, const int* ids, int n, double& seconds) {
  const Clock::time_point start = Clock::now();
  forward_pass_->Forward(seq, ids, n, ForwardPass::Logits::kLastOnly, logits_.data());
  seconds += SecondsSince(start);
}

int SequenceRunner::ForwardAndPick(int seq, const int* ids, int n, bool device_pick,
                                   double& seconds) {
  Sampler& sampler = samplers_[seq];
  const Clock::time_point start = Clock::now();
  if (device_pick) {
    const int token = forward_pass_->ForwardPick(seq, ids, n, sampler.NextPick());
    seconds += SecondsSince(start);
    return token;
  }
  forward_pass_->Forward(seq, ids, n, ForwardPass::Logits::kLastOnly, logits_.data());
  seconds += SecondsSince(start);
  OpLap lap;  // a decode step's sampling, for the op profile (op_profile.h)
  lap.Start(n == 1 && OpProfilingEnabled());
  const int token = sampler.SampleFinite(logits_.data());
  lap.Lap(Op::kSampling);
  return token;
}

void SequenceRunner::DecodeStepAndPick(const int* seqs, const int* ids, int n, bool device_pick,
                                       int* tokens, double& seconds) {
  if (device_pick) {
    for (int k = 0; k < n; ++k) step_picks_[k] = samplers_[seqs[k]].NextPick();
  }
  const Clock::time_point start = Clock::now();
  if (device_pick) {
    forward_pass_->DecodeStepPick(seqs, ids, n, step_picks_.data(), tokens);
    seconds += SecondsSince(start);
    return;
  }
  forward_pass_->DecodeStep(seqs, ids, n, logits_.data());
  seconds += SecondsSince(start);
  OpLap lap;
  lap.Start(OpProfilingEnabled());
  const int vocab = config().vocab_size;
  for (int k = 0; k < n; ++k) {
    float* row = logits_.data() + static_cast<size_t>(k) * vocab;
    tokens[k] = samplers_[seqs[k]].SampleFinite(row);
  }
  lap.Lap(Op::kSampling);
}

std::string SequenceRunner::NonFiniteLogitsError(int row, const std::string& whose) const {
  const int vocab = config().vocab_size;
  const float* logits = logits_.data() + static_cast<size_t>(row) * vocab;
  const int64_t bad = std::max<int64_t>(0, FirstNonFiniteF32(logits, static_cast<uint64_t>(vocab)));
  return "the logits of " + whose + " next token are not finite (token id " +
         std::to_string(bad) + ": " + std::to_string(logits[bad]) +
         "); the weights are corrupt or the arithmetic overflowed. Check the file with "
         "`awqcore inspect --verify`";
}

}  // namespace awqcore
