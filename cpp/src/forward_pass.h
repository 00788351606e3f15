// The forward pass a Session runs, whatever the device: the CPU Transformer
// (transformer.h) or the CUDA backend (cuda_backend.h) implement it, and the
// Session picks one at construction and calls it through this interface.
//
// Several sequences: the pass holds max_sequences independent KV caches
// (slots). Forward appends tokens to one sequence (prefill); DecodeStep
// appends one token to each of several sequences in one pass over the
// weights.
//
// Thread safety: none (owned by one Session, used by one thread at a time).
#pragma once

#include <cstdint>

namespace awqcore {

struct TokenPick;  // sampler.h

class ForwardPass {
 public:
  enum class Logits { kAll, kLastOnly };

  virtual ~ForwardPass() = default;

  // Appends ids[0 .. n) to sequence `seq` at positions position(seq) ..
  // position(seq) + n - 1 and writes logits [n, vocab] (kAll) or those of the
  // last token only [vocab] (kLastOnly). The caller has validated: 0 <= seq <
  // the number of sequences, n >= 1, ids in [0, vocab), position(seq) + n <=
  // max_seq_len().
  virtual void Forward(int seq, const int* ids, int n, Logits which, float* logits) = 0;

  // Appends ids[i] to sequence seqs[i] (at position(seqs[i])) for i < n, in
  // one pass over the weights; logits: [n, vocab]. The caller has validated:
  // 1 <= n <= the number of sequences, the seqs are distinct, ids in [0,
  // vocab), and every position(seqs[i]) < max_seq_len().
  virtual void DecodeStep(const int* seqs, const int* ids, int n, float* logits) = 0;

  // Whether ForwardPick and DecodeStepPick exist: the pass picks tokens where
  // the logits are (the GPU), so only token ids cross to the host.
  virtual bool picks_on_device() const { return false; }
  // Forward with kLastOnly, returning the token Sampler::Pick (sampler.h)
  // takes from the logits for `pick`. Only when picks_on_device().
  virtual int ForwardPick(int seq, const int* ids, int n, const TokenPick& pick);
  // DecodeStep, tokens[i] = Sampler::Pick of row i for picks[i]. Only when
  // picks_on_device().
  virtual void DecodeStepPick(const int* seqs, const int* ids, int n, const TokenPick* picks,
                              int* tokens);

  virtual void Reset() = 0;  // empties every sequence
  // Keeps the first `length` tokens of sequence seq (0 empties it): later
  // calls append at position `length`, over the cache rows after it. The
  // caller has validated 0 <= length <= position(seq).
  virtual void Truncate(int seq, int length) = 0;
  virtual int position(int seq) const = 0;  // tokens in sequence seq's cache
  virtual int max_seq_len() const = 0;
  // Device memory allocated at construction (weights + KV caches + scratch);
  // 0 on the CPU.
  virtual uint64_t device_bytes() const { return 0; }
};

}  // namespace awqcore
