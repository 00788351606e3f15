// Turns a row of logits into a token id (SamplingOptions, awqcore.h):
//   1. repetition penalty (CTRL, Keskar et al. 2019) on every distinct token of
//      the sequence so far: logit > 0 -> logit / p, else logit * p;
//   2. temperature 0 (or top_k 1): argmax, lowest id on ties;
//   3. otherwise softmax(logits / temperature) restricted to the top_k most
//      likely tokens (0: all), then to the smallest most-likely prefix whose
//      probability reaches top_p (at least one token), renormalized, and a
//      draw from a std::mt19937_64: the inverse CDF over the kept tokens in
//      ascending id order, an order a GPU reproduces with a prefix sum
//      (cuda/sampling.cu, PickTokens), so both pick the same token for the
//      same draw.
//
// Non-finite logits in step 3 (SamplingWeight): NaN ranks and weighs as -inf;
// -inf weighs 0; if the maximum is +inf, the +inf tokens share the mass; if
// every logit is -inf or NaN, the kept tokens are equally likely. Step 2 keeps
// Argmax's rule instead (NaN never beats a number).
//
// Thread safety: none (owned by one Session). Sample allocates nothing: the
// candidate buffers are sized for the vocabulary at construction.
#pragma once

#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include "awqcore/awqcore.h"

// Compiled by nvcc for the device as well: the host and the device weigh
// tokens with the same code.
#ifdef __CUDACC__
#define AWQCORE_HOST_DEVICE __host__ __device__
#else
#define AWQCORE_HOST_DEVICE
#endif

namespace awqcore {

// One token pick as Sampler::Sample makes it after the repetition penalty: the
// options and this step's uniform draw. Plain data, no CUDA types: the device
// sampler takes an array of these. temperature 0 or top_k 1 means argmax (then
// `uniform` is unused); otherwise top_k 0 or >= vocab keeps every token, top_p
// in (0, 1], and uniform in [0, 1) (the device reads it at 2^-53 resolution,
// the resolution Sampler draws it at).
struct TokenPick {
  float temperature = 0.f;
  int top_k = 0;
  float top_p = 1.f;
  double uniform = 0.0;
};

// The unnormalized probability of a kept token: exp((logit - max) / T) in f32,
// max being the largest kept logit (NaN counted as -inf), so in [0, 1] and 1
// exactly at the maximum. Divides rather than multiplies by 1/T: for a tiny T,
// 1/T is inf and the maximum's 0 * inf would be NaN, while 0 / T stays 0. The
// special cases give non-finite logits the weights described at the top of
// the file; for finite ones they give what exp gives.
AWQCORE_HOST_DEVICE inline float SamplingWeight(float logit, float max_logit, float temperature) {
  if (logit != logit) logit = -INFINITY;  // NaN
  if (logit == max_logit) return 1.0f;
  if (logit == -INFINITY || max_logit == INFINITY) return 0.0f;
  return expf((logit - max_logit) / temperature);
}

class Sampler {
 public:
  explicit Sampler(int vocab_size);

  // Throws InvalidArgument naming the first bad field and its value.
  static void Validate(const SamplingOptions& options);

  // Starts a new sequence: options (validated by the caller), an empty history,
  // the generator seeded from options.seed or std::random_device.
  void Start(const SamplingOptions& options);

  // Adds a token (prompt or generated) to the history the penalty applies to.
  void Observe(int token);

  // What a pick returns for logits holding a NaN or an infinity.
  static constexpr int kNonFiniteLogits = -1;

  // Picks the next token from logits [vocab]; the penalty is applied to
  // `logits` in place. Same as Pick(logits, NextPick()) after the penalty.
  int Sample(float* logits);

  // Sample(logits), or kNonFiniteLogits when a logit is NaN or infinite,
  // checked before the penalty, so such a row is left as it was. A greedy
  // pick without a penalty reads the row once (FiniteArgmax); the others
  // check it in a pass of its own first.
  int SampleFinite(float* logits);

  // The options of this sequence and, unless they are greedy, the next
  // uniform draw: the generator advances exactly as Sample advances it, so a
  // pick made elsewhere (on the device) from it keeps the seeded stream.
  TokenPick NextPick();

  // The token Sample picks from logits [vocab] (penalty already applied) for
  // `pick`: the host reference of the device's PickTokens (common.cuh).
  int Pick(const float* logits, const TokenPick& pick);

 private:
  void ApplyRepetitionPenalty(float* logits) const;
  // Sorts candidates_[0, num_candidates) until its most likely prefix holds
  // `needed` of the mass; returns that prefix's length.
  int NucleusSize(int num_candidates, double needed);
  double UniformDraw();  // in [0, 1)

  int vocab_size_;
  SamplingOptions options_;
  std::mt19937_64 rng_;
  std::vector<uint8_t> seen_;         // [vocab] 1: token is in the history
  std::vector<int> history_;          // distinct tokens of the history, first-seen order
  std::vector<int> candidates_;       // [vocab] token ids still in play
  std::vector<float> probabilities_;  // [vocab] by token id; unnormalized exp
};

// Index of the largest logit, lowest index on ties; NaN never beats a number.
int Argmax(const float* logits, int n);

// Argmax(logits, n) when every logit is finite, else
// Sampler::kNonFiniteLogits, in one pass over the row: the check that guards
// every host pick rides on the greedy pick's own read of the vocab-sized row.
int FiniteArgmax(const float* logits, int n);

}  // namespace awqcore
