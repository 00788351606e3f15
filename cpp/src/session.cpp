// Session: the single-sequence and the batch generation loops over a
// SequenceRunner (sequence_runner.h), which owns the KV-cache-backed forward
// pass, the samplers and every buffer a decode step touches (allocated in the
// constructor).
#include <algorithm>
#include <string>

#include "awqcore/awqcore.h"
#include "sequence_runner.h"

namespace awqcore {
namespace {

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
  Impl(std::shared_ptr<const Model> model, int max_seq_len, int num_threads, Device device,
       int max_batch, CpuActivations activations)
      : runner(std::move(model), max_seq_len, num_threads, device, max_batch, activations),
        config(runner.config()),
        transformer(runner.forward()),
        slot_prompt(max_batch, -1) {}

  // Throws Error naming the sequence when a pick found non-finite logits (NaN
  // or infinity: sampling would return an arbitrary token, greedy the last id,
  // for every step after); `row` is the logits row the pick read.
  int Checked(int token, int row, int seq) const {
    if (token != SequenceRunner::kNonFinite) return token;
    const std::string whose =
        slot_prompt[seq] >= 0 ? "prompt " + std::to_string(slot_prompt[seq]) + "'s" : "the";
    throw Error(runner.NonFiniteLogitsError(row, whose));
  }

  SequenceRunner runner;  // forward pass (KV caches), samplers, logits
  const ModelConfig& config;
  ForwardPass& transformer;              // runner.forward()
  Session::Timing timing;                // of the last Generate / GenerateBatch
  std::vector<StopReason> stop_reasons;  // of the last Generate / GenerateBatch, per prompt
  std::vector<int> slot_prompt;          // [max_batch] GenerateBatch's prompt in each slot, -1: none
  bool busy = false;                     // a call is running (BusyScope)
};

Session::Session(std::shared_ptr<const Model> model, int max_seq_len, int num_threads,
                 Device device, int max_batch, CpuActivations activations)
    : impl_(std::make_unique<Impl>(std::move(model), max_seq_len, num_threads, device, max_batch,
                                   activations)) {}

Session::~Session() = default;

std::vector<float> Session::Forward(const std::vector<int>& ids) {
  BusyScope busy(impl_->busy, "Forward");
  impl_->runner.ValidateIds(ids, impl_->transformer.position(0), "input");
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
  s.runner.ValidateIds(prompt, 0, "prompt");
  const std::vector<int>& stop_ids = StopIds(options, s.config);

  Sampler& sampler = s.runner.sampler(0);
  s.slot_prompt.assign(s.runner.max_batch(), -1);
  s.transformer.Reset();
  sampler.Start(options.sampling);
  for (int token : prompt) sampler.Observe(token);
  const bool device_pick = s.runner.PicksOnDevice(options.sampling);
  s.timing = {};
  const int after_prompt = s.Checked(
      s.runner.ForwardAndPick(0, prompt.data(), static_cast<int>(prompt.size()), device_pick,
                              s.timing.prefill_seconds),
      0, 0);

  // A token is fed back only when another one is wanted after it: the last
  // token is returned without a forward pass of its own.
  const int budget = s.runner.Budget(options, prompt.size());
  std::vector<int> generated;
  generated.reserve(budget);
  bool callback_stopped = false;
  for (int i = 0; i < budget; ++i) {
    const int token =
        i == 0 ? after_prompt
               : s.Checked(s.runner.ForwardAndPick(0, &generated.back(), 1, device_pick,
                                                   s.timing.decode_seconds),
                           0, 0);
    generated.push_back(token);
    sampler.Observe(token);
    if (on_token && !on_token(token)) {
      callback_stopped = true;
      break;
    }
    if (IsStop(stop_ids, token)) break;
  }
  s.stop_reasons.assign(1, callback_stopped ? StopReason::kCallback
                                            : ReasonAfter(generated, stop_ids, options));
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
    s.runner.ValidateIds(prompts[i], 0, "prompt", "prompt " + std::to_string(i) + ": ");
  }
  const std::vector<int>& stop_ids = StopIds(options, s.config);
  const int max_batch = s.runner.max_batch();
  const int num_prompts = static_cast<int>(prompts.size());

  // Sequence slots (KV cache + sampler): slot_prompt[slot] is the prompt a
  // slot generates for, -1 when free; `live` lists the slots in the next
  // decode step, step_ids their last tokens. Sized once here, so the decode
  // loop allocates nothing beyond the results' reserved storage.
  std::vector<std::vector<int>> results(prompts.size());
  std::vector<int> budgets(prompts.size());
  std::vector<int>& slot_prompt = s.slot_prompt;
  slot_prompt.assign(max_batch, -1);
  std::vector<int> live;  // [<= max_batch]
  live.reserve(max_batch);
  std::vector<int> step_ids(max_batch);
  std::vector<int> step_tokens(max_batch);
  s.transformer.Reset();
  s.timing = {};
  const bool device_pick = s.runner.PicksOnDevice(options.sampling);

  // Appends `token` to the sequence in `slot`; returns whether that sequence
  // wants another one.
  auto accept = [&](int slot, int token) {
    const int i = slot_prompt[slot];
    results[i].push_back(token);
    s.runner.sampler(slot).Observe(token);
    return static_cast<int>(results[i].size()) < budgets[i] && !IsStop(stop_ids, token);
  };

  int next_prompt = 0;
  while (next_prompt < num_prompts || !live.empty()) {
    // Waiting prompts take the free slots: prefill alone, first token sampled.
    while (next_prompt < num_prompts && static_cast<int>(live.size()) < max_batch) {
      const int i = next_prompt++;
      const std::vector<int>& prompt = prompts[i];
      budgets[i] = s.runner.Budget(options, prompt.size());
      if (budgets[i] == 0) continue;
      results[i].reserve(budgets[i]);
      const int slot = static_cast<int>(std::find(slot_prompt.begin(), slot_prompt.end(), -1) -
                                        slot_prompt.begin());
      slot_prompt[slot] = i;
      SamplingOptions sampling = options.sampling;
      if (sampling.seed) *sampling.seed += static_cast<uint64_t>(i);  // stream i, mod 2^64
      s.runner.sampler(slot).Start(sampling);
      for (int token : prompt) s.runner.sampler(slot).Observe(token);
      s.transformer.Truncate(slot, 0);
      const int token = s.Checked(
          s.runner.ForwardAndPick(slot, prompt.data(), static_cast<int>(prompt.size()), device_pick,
                                  s.timing.prefill_seconds),
          0, slot);
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
    s.runner.DecodeStepAndPick(live.data(), step_ids.data(), n, device_pick, step_tokens.data(),
                               s.timing.decode_seconds);
    for (int k = 0; k < n; ++k) s.Checked(step_tokens[k], k, live[k]);
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
    s.stop_reasons.push_back(ReasonAfter(tokens, stop_ids, options));
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
int Session::max_batch() const { return impl_->runner.max_batch(); }
int Session::num_threads() const { return impl_->runner.num_threads(); }
Device Session::device() const { return impl_->runner.device(); }
uint64_t Session::device_memory_bytes() const { return impl_->transformer.device_bytes(); }
const Model& Session::model() const { return impl_->runner.model(); }

const char* StopReasonName(StopReason reason) {
  switch (reason) {
    case StopReason::kStopToken: return "stop_token";
    case StopReason::kMaxNewTokens: return "max_new_tokens";
    case StopReason::kContextFull: return "context_full";
    case StopReason::kCallback: return "callback";
    case StopReason::kCancelled: return "cancelled";
  }
  return "unknown";
}

}  // namespace awqcore
