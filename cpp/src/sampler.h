// Turns a row of logits into a token id (SamplingOptions, awqcore.h):
//   1. repetition penalty (CTRL, Keskar et al. 2019) on every distinct token of
//      the sequence so far: logit > 0 -> logit / p, else logit * p;
//   2. temperature 0 (or top_k 1): argmax, lowest id on ties;
//   3. otherwise softmax(logits / temperature) restricted to the top_k most
//      likely tokens (0: all), then to the smallest most-likely prefix whose
//      probability reaches top_p (at least one token), renormalized, and a
//      draw from a std::mt19937_64.
//
// Thread safety: none (owned by one Session). Sample allocates nothing: the
// candidate buffers are sized for the vocabulary at construction.
#pragma once

#include <cstdint>
#include <random>
#include <vector>

#include "awqcore/awqcore.h"

namespace awqcore {

class Sampler {
 public:
  explicit Sampler(int vocab_size);

  // Throws InvalidArgument naming the first bad field and its value.
  static void Validate(const SamplingOptions& options);

  // True when Sample is Argmax of the raw logits (greedy, no penalty): the
  // GPU then picks the token on the device (CudaForward::ForwardArgmax).
  static bool IsPlainArgmax(const SamplingOptions& options);

  // Starts a new sequence: options (validated by the caller), an empty history,
  // the generator seeded from options.seed or std::random_device.
  void Start(const SamplingOptions& options);

  // Adds a token (prompt or generated) to the history the penalty applies to.
  void Observe(int token);

  // Picks the next token from logits [vocab]; the penalty is applied to
  // `logits` in place.
  int Sample(float* logits);

 private:
  void ApplyRepetitionPenalty(float* logits) const;
  int SampleFromDistribution(const float* logits);
  // Sorts candidates_ until its most likely prefix holds top_p of the mass;
  // returns that prefix's length.
  int NucleusSize(double total_mass);
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

}  // namespace awqcore
