// Session: argument validation, the KV-cache-backed forward pass and the
// generation loops (one sequence, and a batch of them). Everything a decode
// step touches (KV caches, activations, logits, sampler buffers) is
// allocated in the constructor.
#include <algorithm>
#include <chrono>
#include <string>
#include <thread>

#include "awqbin_file.h"
#include "awqcore/awqcore.h"
#include "cpu_memory.h"
#include "cuda_backend.h"
#include "model_impl.h"
#include "op_profile.h"
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

// The forward pass of a Session on its device, chosen once here: the CPU
// Transformer or the CUDA backend (cuda_backend.h), both behind ForwardPass.
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

using Clock = std::chrono::steady_clock;
double SecondsSince(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

// On the GPU the token is picked on the device unless a repetition penalty
// must first change the logits (sampler.h; it stays on the host, so those
// logits cross).
bool PicksOnDevice(const ForwardPass& forward, const SamplingOptions& sampling) {
  return forward.picks_on_device() && sampling.repetition_penalty == 1.0f;
}

bool IsStop(const std::vector<int>& stop_ids, int token) {
  return std::find(stop_ids.begin(), stop_ids.end(), token) != stop_ids.end();
}

// Marks a Session busy for the length of one call, so that a call from inside
// Generate's on_token (the same thread; a Session is not thread-safe) is an
// Error instead of corrupting the caches the outer call is using.
class BusyScope {
 public:
  BusyScope(bool& busy, const char* method) : busy_(busy) {
    if (busy_) {
      throw Error(std::string("Session::") + method +
                  " called while this Session is generating (from its on_token callback?); "
                  "a Session runs one call at a time: use a second Session on the same Model");
    }
    busy_ = true;
  }
  ~BusyScope() { busy_ = false; }
  BusyScope(const BusyScope&) = delete;
  BusyScope& operator=(const BusyScope&) = delete;

 private:
  bool& busy_;
};

}  // namespace

struct Session::Impl {
  Impl(std::shared_ptr<const Model> model_in, int max_seq_len, int num_threads, Device device_in,
       int max_batch_in, CpuActivations activations)
      : model(std::move(model_in)),
        config(model->impl().config),
        device(device_in),
        max_batch(max_batch_in),
        pool(device_in == Device::kCpu ? num_threads : 1),
        forward_pass(CreateForwardPass(*model, max_seq_len, max_batch_in, pool, device_in, activations)),
        transformer(*forward_pass),
        logits(static_cast<size_t>(max_batch_in) * config.vocab_size),
        step_picks(max_batch_in),
        slot_prompt(max_batch_in, -1) {
    // Built in place: a copy of a Sampler would not keep the reserved
    // capacity that lets Observe run without allocating.
    samplers.reserve(max_batch_in);
    for (int i = 0; i < max_batch_in; ++i) samplers.emplace_back(config.vocab_size);
  }

  // Throws InvalidArgument unless ids can be appended at `start_position`;
  // `where` prefixes the message (GenerateBatch names the prompt).
  void ValidateIds(const std::vector<int>& ids, int start_position, const char* what,
                   const std::string& where = "") const {
    if (ids.empty()) throw InvalidArgument(where + "empty " + what);
    for (size_t i = 0; i < ids.size(); ++i) {
      if (ids[i] < 0 || ids[i] >= config.vocab_size) {
        throw InvalidArgument(where + "token id " + std::to_string(ids[i]) + " at position " +
                              std::to_string(i) + " is out of range [0, " +
                              std::to_string(config.vocab_size) + ")");
      }
    }
    const size_t total = static_cast<size_t>(start_position) + ids.size();
    if (total > static_cast<size_t>(transformer.max_seq_len())) {
      throw InvalidArgument(where + "sequence of " + std::to_string(total) +
                            " tokens exceeds max_seq_len " +
                            std::to_string(transformer.max_seq_len()));
    }
  }

  // Throws Error when the logits row of sequence `seq` (just computed for its
  // next token) holds a NaN or infinity: sampling from it would return an
  // arbitrary token (greedy: the last id) for every step after.
  void CheckLogitsFinite(const float* row, int seq) const {
    // vocab floats just written by the lm_head: microseconds against the
    // milliseconds of the decode step that produced them.
    const int64_t bad = FirstNonFiniteF32(row, static_cast<uint64_t>(config.vocab_size));
    if (bad < 0) return;
    const std::string whose =
        slot_prompt[seq] >= 0 ? "prompt " + std::to_string(slot_prompt[seq]) + "'s" : "the";
    throw Error("the logits of " + whose + " next token are not finite (token id " +
                std::to_string(bad) + ": " + std::to_string(row[bad]) +
                "); the weights are corrupt or the arithmetic overflowed. Check the file with "
                "`awqcore inspect --verify`");
  }

  // Appends ids[0 .. n) to sequence `seq` and returns the token samplers[seq]
  // picks after them: on the device when it can (only the id crosses), else
  // from the last logits on the host (Error if not finite). Adds the forward
  // pass's wall time to `seconds`.
  int ForwardAndPick(int seq, const int* ids, int n, bool device_pick, double& seconds) {
    Sampler& sampler = samplers[seq];
    const Clock::time_point start = Clock::now();
    if (device_pick) {
      const int token = transformer.ForwardPick(seq, ids, n, sampler.NextPick());
      seconds += SecondsSince(start);
      return token;
    }
    transformer.Forward(seq, ids, n, ForwardPass::Logits::kLastOnly, logits.data());
    seconds += SecondsSince(start);
    OpLap lap;  // a decode step's sampling, for the op profile (op_profile.h)
    lap.Start(n == 1 && OpProfilingEnabled());
    CheckLogitsFinite(logits.data(), seq);
    const int token = sampler.Sample(logits.data());
    lap.Lap(Op::kSampling);
    return token;
  }

  // Appends ids[k] to sequence seqs[k] for k < n in one step and writes the
  // token samplers[seqs[k]] picks after each to tokens[k], as ForwardAndPick.
  void DecodeStepAndPick(const int* seqs, const int* ids, int n, bool device_pick, int* tokens,
                         double& seconds) {
    if (device_pick) {
      for (int k = 0; k < n; ++k) step_picks[k] = samplers[seqs[k]].NextPick();
    }
    const Clock::time_point start = Clock::now();
    if (device_pick) {
      transformer.DecodeStepPick(seqs, ids, n, step_picks.data(), tokens);
      seconds += SecondsSince(start);
      return;
    }
    transformer.DecodeStep(seqs, ids, n, logits.data());
    seconds += SecondsSince(start);
    OpLap lap;
    lap.Start(OpProfilingEnabled());
    for (int k = 0; k < n; ++k) {
      float* row = logits.data() + static_cast<size_t>(k) * config.vocab_size;
      CheckLogitsFinite(row, seqs[k]);
      tokens[k] = samplers[seqs[k]].Sample(row);
    }
    lap.Lap(Op::kSampling);
  }

  // New tokens a prompt may get: prompt + generated never exceeds
  // max_seq_len, so every returned token has a place in the cache.
  int Budget(const GenerateOptions& options, size_t prompt_length) const {
    return std::min(options.max_new_tokens,
                    transformer.max_seq_len() - static_cast<int>(prompt_length));
  }

  // Why a sequence that produced `tokens` stopped when the loop ended it
  // without a callback: its last token is a stop id, or it used its budget
  // (max_new_tokens, or fewer because the context is full).
  static StopReason ReasonAfter(const std::vector<int>& tokens, const std::vector<int>& stop_ids,
                                const GenerateOptions& options) {
    if (!tokens.empty() && IsStop(stop_ids, tokens.back())) return StopReason::kStopToken;
    return static_cast<int>(tokens.size()) == options.max_new_tokens ? StopReason::kMaxNewTokens
                                                                     : StopReason::kContextFull;
  }

  std::shared_ptr<const Model> model;  // keeps the weights mapped
  const ModelConfig& config;
  const Device device;
  const int max_batch;
  ThreadPool pool;      // CPU matrix products (one idle thread on the GPU)
  std::unique_ptr<ForwardPass> forward_pass;  // KV caches + activation scratch
  ForwardPass& transformer;                   // *forward_pass
  std::vector<Sampler> samplers;  // [max_batch] one per sequence slot
  Session::Timing timing;         // of the last Generate / GenerateBatch
  std::vector<float> logits;      // [max_batch, vocab] of the positions being sampled
  std::vector<TokenPick> step_picks;  // [max_batch] a device decode step's picks
  std::vector<StopReason> stop_reasons;  // of the last Generate / GenerateBatch, per prompt
  std::vector<int> slot_prompt;          // [max_batch] GenerateBatch's prompt in each slot, -1: none
  bool busy = false;                     // a call is running (BusyScope)
};

Session::Session(std::shared_ptr<const Model> model, int max_seq_len, int num_threads,
                 Device device, int max_batch, CpuActivations activations) {
  if (!model) throw InvalidArgument("model is null");
  CheckMaxSeqLen(max_seq_len);
  CheckMaxBatch(max_batch);
  const int threads = ResolveThreadCount(num_threads);
  if (device == Device::kCpu) {
    CheckCpuSessionFits(model->impl().config, max_seq_len, max_batch,
                        activations == CpuActivations::kInt8Decode, QueryMachineMemory());
  }
  impl_ = std::make_unique<Impl>(std::move(model), max_seq_len, threads, device, max_batch,
                                 activations);
}

Session::~Session() = default;

std::vector<float> Session::Forward(const std::vector<int>& ids) {
  BusyScope busy(impl_->busy, "Forward");
  impl_->ValidateIds(ids, impl_->transformer.position(0), "input");
  std::vector<float> logits(ids.size() * static_cast<size_t>(impl_->config.vocab_size));
  impl_->transformer.Forward(0, ids.data(), static_cast<int>(ids.size()),
                             ForwardPass::Logits::kAll, logits.data());
  return logits;
}

std::vector<int> Session::Generate(const std::vector<int>& prompt, const GenerateOptions& options,
                                   const TokenCallback& on_token) {
  Impl& s = *impl_;
  BusyScope busy(s.busy, "Generate");
  s.stop_reasons.clear();
  // Validate everything before touching the cache.
  CheckMaxNewTokens(options.max_new_tokens);
  Sampler::Validate(options.sampling);
  s.ValidateIds(prompt, 0, "prompt");
  const std::vector<int>& stop_ids = options.stop_ids ? *options.stop_ids : s.config.eos_token_ids;

  Sampler& sampler = s.samplers[0];
  s.slot_prompt.assign(s.max_batch, -1);
  s.transformer.Reset();
  sampler.Start(options.sampling);
  for (int token : prompt) sampler.Observe(token);
  const bool device_pick = PicksOnDevice(s.transformer, options.sampling);
  s.timing = {};
  const int after_prompt = s.ForwardAndPick(0, prompt.data(), static_cast<int>(prompt.size()), device_pick,
                                            s.timing.prefill_seconds);

  // A token is fed back only when another one is wanted after it: the last
  // token is returned without a forward pass of its own.
  const int budget = s.Budget(options, prompt.size());
  std::vector<int> generated;
  generated.reserve(budget);
  bool callback_stopped = false;
  for (int i = 0; i < budget; ++i) {
    const int token =
        i == 0 ? after_prompt : s.ForwardAndPick(0, &generated.back(), 1, device_pick, s.timing.decode_seconds);
    generated.push_back(token);
    sampler.Observe(token);
    if (on_token && !on_token(token)) {
      callback_stopped = true;
      break;
    }
    if (IsStop(stop_ids, token)) break;
  }
  s.stop_reasons.assign(1, callback_stopped ? StopReason::kCallback
                                            : Impl::ReasonAfter(generated, stop_ids, options));
  return generated;
}

std::vector<std::vector<int>> Session::GenerateBatch(const std::vector<std::vector<int>>& prompts,
                                                     const GenerateOptions& options) {
  Impl& s = *impl_;
  BusyScope busy(s.busy, "GenerateBatch");
  s.stop_reasons.clear();
  // Validate everything before touching the caches.
  if (prompts.empty()) throw InvalidArgument("no prompts: pass at least one");
  CheckMaxNewTokens(options.max_new_tokens);
  Sampler::Validate(options.sampling);
  for (size_t i = 0; i < prompts.size(); ++i) {
    s.ValidateIds(prompts[i], 0, "prompt", "prompt " + std::to_string(i) + ": ");
  }
  const std::vector<int>& stop_ids = options.stop_ids ? *options.stop_ids : s.config.eos_token_ids;
  const int num_prompts = static_cast<int>(prompts.size());

  // Sequence slots (KV cache + sampler): slot_prompt[slot] is the prompt a
  // slot generates for, -1 when free; `live` lists the slots in the next
  // decode step, step_ids their last tokens. Sized once here, so the decode
  // loop allocates nothing beyond the results' reserved storage.
  std::vector<std::vector<int>> results(prompts.size());
  std::vector<int> budgets(prompts.size());
  std::vector<int>& slot_prompt = s.slot_prompt;
  slot_prompt.assign(s.max_batch, -1);
  std::vector<int> live;  // [<= max_batch]
  live.reserve(s.max_batch);
  std::vector<int> step_ids(s.max_batch);
  std::vector<int> step_tokens(s.max_batch);
  s.transformer.Reset();
  s.timing = {};
  const bool device_pick = PicksOnDevice(s.transformer, options.sampling);

  // Appends `token` to the sequence in `slot`; returns whether that sequence
  // wants another one.
  auto accept = [&](int slot, int token) {
    const int i = slot_prompt[slot];
    results[i].push_back(token);
    s.samplers[slot].Observe(token);
    return static_cast<int>(results[i].size()) < budgets[i] && !IsStop(stop_ids, token);
  };

  int next_prompt = 0;
  while (next_prompt < num_prompts || !live.empty()) {
    // Waiting prompts take the free slots: prefill alone, first token sampled.
    while (next_prompt < num_prompts && static_cast<int>(live.size()) < s.max_batch) {
      const int i = next_prompt++;
      const std::vector<int>& prompt = prompts[i];
      budgets[i] = s.Budget(options, prompt.size());
      if (budgets[i] == 0) continue;
      results[i].reserve(budgets[i]);
      const int slot = static_cast<int>(std::find(slot_prompt.begin(), slot_prompt.end(), -1) -
                                        slot_prompt.begin());
      slot_prompt[slot] = i;
      SamplingOptions sampling = options.sampling;
      if (sampling.seed) *sampling.seed += static_cast<uint64_t>(i);  // stream i, mod 2^64
      s.samplers[slot].Start(sampling);
      for (int token : prompt) s.samplers[slot].Observe(token);
      s.transformer.Reset(slot);
      const int token = s.ForwardAndPick(slot, prompt.data(), static_cast<int>(prompt.size()), device_pick,
                                         s.timing.prefill_seconds);
      if (accept(slot, token)) {
        live.push_back(slot);
      } else {
        slot_prompt[slot] = -1;
      }
    }
    if (live.empty()) continue;

    // One decode step over every live sequence; row k of the logits is live[k]'s.
    const int n = static_cast<int>(live.size());
    for (int k = 0; k < n; ++k) step_ids[k] = results[slot_prompt[live[k]]].back();
    s.DecodeStepAndPick(live.data(), step_ids.data(), n, device_pick, step_tokens.data(), s.timing.decode_seconds);
    int kept = 0;
    for (int k = 0; k < n; ++k) {
      const int slot = live[k];
      if (accept(slot, step_tokens[k])) {
        live[kept++] = slot;
      } else {
        slot_prompt[slot] = -1;
      }
    }
    live.resize(kept);
  }
  s.stop_reasons.reserve(results.size());
  for (const std::vector<int>& tokens : results) {
    s.stop_reasons.push_back(Impl::ReasonAfter(tokens, stop_ids, options));
  }
  return results;
}

Session::Timing Session::last_timing() const { return impl_->timing; }
const std::vector<StopReason>& Session::last_stop_reasons() const { return impl_->stop_reasons; }
void Session::Reset() {
  BusyScope busy(impl_->busy, "Reset");
  impl_->transformer.Reset();
}
int Session::position() const { return impl_->transformer.position(0); }
int Session::max_seq_len() const { return impl_->transformer.max_seq_len(); }
int Session::max_batch() const { return impl_->max_batch; }
int Session::num_threads() const { return impl_->pool.num_threads(); }
Device Session::device() const { return impl_->device; }
uint64_t Session::device_memory_bytes() const { return impl_->transformer.device_bytes(); }
const Model& Session::model() const { return *impl_->model; }

const char* StopReasonName(StopReason reason) {
  switch (reason) {
    case StopReason::kStopToken: return "stop_token";
    case StopReason::kMaxNewTokens: return "max_new_tokens";
    case StopReason::kContextFull: return "context_full";
    case StopReason::kCallback: return "callback";
  }
  return "unknown";
}

}  // namespace awqcore
