// What every generation loop shares (Session::Generate, Session::GenerateBatch
// and the Engine's continuous batching): a ForwardPass with max_batch
// sequence slots (one KV cache each), a Sampler per slot, the logits buffer,
// and the steps that append tokens to slots and pick each slot's next token;
// plus the argument checks and stopping rules both APIs apply.
//
// Thread safety: none. A SequenceRunner is owned by one Session or one Engine
// and used by one thread at a time (the Session's caller, the Engine's
// thread); its ThreadPool's workers run inside its calls only.
#pragma once

#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include "awqcore/awqcore.h"
#include "forward_pass.h"
#include "sampler.h"
#include "thread_pool.h"

namespace awqcore {

// num_threads 0: all hardware threads; InvalidArgument when negative.
int ResolveThreadCount(int num_threads);
// InvalidArgument naming the value unless it is in range.
void CheckMaxSeqLen(int max_seq_len);        // >= 1
void CheckMaxBatch(int max_batch);           // >= 1
void CheckMaxNewTokens(int max_new_tokens);  // >= 0

bool IsStop(const std::vector<int>& stop_ids, int token);

// The stop ids a generation uses: options.stop_ids, or the model's eos ids.
const std::vector<int>& StopIds(const GenerateOptions& options, const ModelConfig& config);

// Why a sequence that produced `tokens` stopped when the loop ended it
// without a callback: its last token is a stop id, or it used its budget
// (max_new_tokens, or fewer because the context is full).
StopReason ReasonAfter(const std::vector<int>& tokens, const std::vector<int>& stop_ids,
                       const GenerateOptions& options);

using Clock = std::chrono::steady_clock;
double SecondsSince(Clock::time_point start);

class SequenceRunner {
 public:
  // A pick's result when the logits it would sample from hold a NaN or an
  // infinity (NonFiniteLogitsError says which).
  static constexpr int kNonFinite = Sampler::kNonFiniteLogits;

  // Validates model, max_seq_len, max_batch and num_threads (InvalidArgument)
  // and, on the CPU, that the caches fit in memory (Error naming the sizes)
  // before allocating; then allocates everything a decode step touches.
  SequenceRunner(std::shared_ptr<const Model> model, int max_seq_len, int num_threads,
                 Device device, int max_batch, CpuActivations activations);

  // Throws InvalidArgument unless ids can be appended at `start_position`;
  // `where` prefixes the message (e.g. "prompt 3: ").
  void ValidateIds(const std::vector<int>& ids, int start_position, const char* what,
                   const std::string& where = "") const;

  // New tokens a prompt may get: prompt + generated never exceeds
  // max_seq_len, so every returned token has a place in the cache.
  int Budget(const GenerateOptions& options, size_t prompt_length) const;

  // On the GPU the token is picked on the device unless a repetition penalty
  // must first change the logits (sampler.h; it stays on the host, so those
  // logits cross).
  bool PicksOnDevice(const SamplingOptions& sampling) const;

  // Appends ids[0 .. n) to sequence `seq` without picking a token (a prompt
  // chunk that is not the prompt's last). Adds the wall time to `seconds`.
  void Append(int seq, const int* ids, int n, double& seconds);

  // Appends ids[0 .. n) to sequence `seq` and returns the token
  // sampler(seq) picks after them: on the device when it can (only the id
  // crosses), else from the last logits on the host (kNonFinite when they are
  // not finite: logits row 0). Adds the forward pass's wall time to `seconds`.
  int ForwardAndPick(int seq, const int* ids, int n, bool device_pick, double& seconds);

  // Appends ids[k] to sequence seqs[k] for k < n in one step and writes the
  // token sampler(seqs[k]) picks after each to tokens[k], as ForwardAndPick
  // (kNonFinite for a row k whose logits are not finite; the others are
  // sampled all the same).
  void DecodeStepAndPick(const int* seqs, const int* ids, int n, bool device_pick, int* tokens,
                         double& seconds);

  // The error for logits row `row` of the last pick that returned kNonFinite:
  // `whose` names the sequence ("the", "prompt 3's", "request 7's").
  std::string NonFiniteLogitsError(int row, const std::string& whose) const;

  Sampler& sampler(int seq) { return samplers_[seq]; }
  ForwardPass& forward() { return *forward_pass_; }
  const ForwardPass& forward() const { return *forward_pass_; }
  const Model& model() const { return *model_; }
  const ModelConfig& config() const { return model_->config(); }
  Device device() const { return device_; }
  int max_batch() const { return max_batch_; }
  int max_seq_len() const { return forward_pass_->max_seq_len(); }
  int num_threads() const { return pool_.num_threads(); }

 private:
  std::shared_ptr<const Model> model_;  // keeps the weights mapped
  Device device_;
  int max_batch_;
  ThreadPool pool_;                             // CPU matrix products (one idle thread on the GPU)
  std::unique_ptr<ForwardPass> forward_pass_;   // KV caches + activation scratch
  std::vector<Sampler> samplers_;               // [max_batch] one per sequence slot
  std::vector<float> logits_;                   // [max_batch, vocab] of the positions being sampled
  std::vector<TokenPick> step_picks_;           // [max_batch] a device decode step's picks
};

}  // namespace awqcore
