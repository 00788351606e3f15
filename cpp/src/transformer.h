// The decoder-only forward pass shared by Llama and Qwen2 (they differ only in
// the q/k/v biases, which Int4Linear carries when present):
//
//   x = embed[ids]
//   per layer:  h = rmsnorm(x) * w_in
//               q, k, v = q_proj(h), k_proj(h), v_proj(h); rope(q), rope(k)
//               cache[pos] = k, v;  x += o_proj(attention(q, cache))
//               h = rmsnorm(x) * w_post
//               x += down_proj(silu(gate_proj(h)) * up_proj(h))
//   logits = lm_head(rmsnorm(x) * w_final)
//
// Inputs longer than kChunkTokens run through the layers in chunks so the
// scratch stays bounded; results do not depend on the chunking beyond f32
// summation order.
//
// A layer makes 5 fork-join passes over the thread pool: q/k/v as one pass,
// attention, o_proj, gate/up/SiLU·mul as one pass, down_proj (int4_linear.h);
// the norms, rotary and residual adds run on the calling thread (O(d) each).
//
// Thread safety: none (owned by one Session). Forward allocates nothing.
#pragma once

#include <vector>

#include "awqcore/awqcore.h"
#include "model_weights.h"
#include "ops/attention.h"
#include "ops/rope.h"
#include "thread_pool.h"

namespace awqcore {

class Transformer {
 public:
  static constexpr int kChunkTokens = 64;

  enum class Logits { kAll, kLastOnly };

  // `config`, `weights` and `pool` must outlive the Transformer. Allocates the
  // KV cache (2 * layers * max_seq_len * KV * hd floats) and the scratch.
  Transformer(const ModelConfig& config, const ModelWeights& weights, int max_seq_len,
              ThreadPool& pool);

  // Appends ids[0 .. n) at positions position() .. position() + n - 1 and
  // writes logits [n, vocab] (kAll) or those of the last token only [vocab]
  // (kLastOnly). The caller has validated: n >= 1, ids in [0, vocab),
  // position() + n <= max_seq_len().
  void Forward(const int* ids, int n, Logits which, float* logits);

  void Reset() { position_ = 0; }
  int position() const { return position_; }
  int max_seq_len() const { return max_seq_len_; }

 private:
  // Runs n <= kChunkTokens tokens through all layers, leaving the final
  // residual stream in x_.
  void ForwardChunk(const int* ids, int n);
  void Layer(int layer, int n);
  float* LayerCache(std::vector<float>& cache, int layer);

  const ModelConfig& config_;
  const ModelWeights& weights_;
  ThreadPool& pool_;
  const int max_seq_len_;
  const int chunk_tokens_;  // min(kChunkTokens, max_seq_len)
  const AttentionShape attention_shape_;
  const RopeTable rope_;
  int position_ = 0;

  // KV cache: [layers, max_seq_len, KV * hd] each.
  std::vector<float> k_cache_;
  std::vector<float> v_cache_;

  // Scratch, C = chunk_tokens_.
  std::vector<float> x_;         // [C, d]      residual stream
  std::vector<float> h_;         // [C, d]      normalized input of a block
  std::vector<float> q_;         // [C, H * hd]
  std::vector<float> attn_;      // [C, H * hd] attention output
  std::vector<float> proj_;      // [C, d]      o_proj / down_proj output
  std::vector<float> gate_;      // [C, ffn]    silu(gate) * up
  std::vector<float> scores_;    // [H, max_seq_len] attention weights
};

}  // namespace awqcore
