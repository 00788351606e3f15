// The decoder-only forward pass of every supported family, driven by the
// decoder-layer description in ModelConfig (docs/format.md); it branches on
// the description's fields only, never on the architecture's name:
//
//   x = embed[ids] * embedding_scale
//   per layer l:
//     h = rmsnorm(x) * input_norm
//     q, k, v = q_proj(h), k_proj(h), v_proj(h)       (+ biases when present)
//     qk_norm: q, k = rmsnorm(q) * q_norm, rmsnorm(k) * k_norm, per head [hd]
//     rope(q), rope(k): rope_theta with rope_scaling, or on a sliding layer
//       with rope_local_theta set, that base unscaled
//     cache[pos] = k, v
//     a = o_proj(attention(q, cache)): scores (q . k) * attention_scale over
//       keys 0 .. pos, or pos - W + 1 .. pos on a sliding layer (W =
//       sliding_window)
//     pre:      x += a;                h = rmsnorm(x) * post_norm
//     sandwich: x += rmsnorm(a) * post_norm;  h = rmsnorm(x) * pre_ffn_norm
//     m = down_proj(act(gate_proj(h)) * up_proj(h)), act = SiLU or GELU-tanh;
//       in a mixture-of-experts layer (moe_layers), m = the weighted sum of
//       the k experts the router picks for the token (ops/moe_router.h,
//       ops/moe_experts.h)
//     pre: x += m;   sandwich: x += rmsnorm(m) * post_ffn_norm
//   logits = lm_head(rmsnorm(x) * final_norm)
//   final_logit_softcap c > 0: logits = c * tanh(logits / c)
//
// The Llama/Qwen2 description (pre norms, SiLU, no q/k norm, no window, unit
// embedding scale, no soft-cap) takes none of the optional steps.
//
// Inputs longer than kChunkTokens run through the layers in chunks so the
// scratch stays bounded; results do not depend on the chunking beyond f32
// summation order.
//
// Several sequences: the Transformer holds max_sequences independent KV caches
// (slots). Forward(seq, ...) appends tokens to one sequence (prefill); a
// DecodeStep appends one token to each of several sequences, and every linear
// runs once over all of them: one fork-join pass per op instead of B, and
// from 4 tokens on the tiled GEMM path dequantizes each weight tile once for
// the whole batch (below 4, the GEMV path re-reads a thread's rows per token,
// mostly from its cache). Inside a chunk each token carries its own
// (sequence, position): rotary, the cache row its k/v go to and the keys it
// attends to are per token; everything else is per row and does not care.
//
// A layer makes 5 fork-join passes over the thread pool: q/k/v as one pass,
// attention, o_proj, gate/up/act·mul as one pass, down_proj (int4_linear.h);
// a mixture-of-experts layer's MLP makes one for the router, then 2 over the
// chosen experts' rows together in decode, 2 per chosen expert in prefill
// (ops/moe_experts.h); the norms (q/k and sandwich norms included), rotary, cache writes, residual
// adds and the soft-cap run on the calling thread (O(d) per token each, the
// soft-cap O(vocab)).
//
// Thread safety: none (owned by one Session). Forward and DecodeStep allocate
// nothing.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <vector>

#include "awqcore/awqcore.h"
#include "forward_pass.h"
#include "model_weights.h"
#include "op_profile.h"
#include "ops/attention.h"
#include "ops/moe_experts.h"
#include "ops/rope.h"
#include "thread_pool.h"

namespace awqcore {

class Transformer final : public ForwardPass {
 public:
  // Prefill streams every weight once per chunk, and the int8 GEMM unpacks
  // each 16-row tile once per call (ops/linear_kernels.h): 128 tokens made a
  // 509-token Qwen2.5-1.5B prefill ~15-25% faster than 64 (and as fast as
  // 256; awqcore-cli, 2 threads, alternated runs), for ~4 MB more scratch
  // per 1k of context there.
  static constexpr int kChunkTokens = 128;

  // `config`, `weights` and `pool` must outlive the Transformer. Allocates the
  // KV caches (2 * max_sequences * layers * max_seq_len * KV * hd elements)
  // and the scratch. max_seq_len >= 1, max_sequences >= 1.
  // int8_decode: every call runs the int4 linears W4A8 (ops/int4_linear.h),
  // calls of <= kQ8MaxTokens tokens an int8 lm_head W8A8
  // (ops/embedding_table.h); the KV cache is f16 (ops/attention.h). false:
  // f32 throughout, the cache included.
  Transformer(const ModelConfig& config, const ModelWeights& weights, int max_seq_len,
              ThreadPool& pool, int max_sequences = 1, bool int8_decode = true);

  // ForwardPass (forward_pass.h).
  void Forward(int seq, const int* ids, int n, Logits which, float* logits) override;
  // The single-sequence form: sequence 0.
  void Forward(const int* ids, int n, Logits which, float* logits) {
    Forward(0, ids, n, which, logits);
  }

  void DecodeStep(const int* seqs, const int* ids, int n, float* logits) override;

  void Reset() override;
  void Truncate(int seq, int length) override { positions_[seq] = length; }
  int position(int seq = 0) const override { return positions_[seq]; }
  int max_seq_len() const override { return max_seq_len_; }
  int max_sequences() const { return static_cast<int>(positions_.size()); }

 private:
  // Runs tokens [0, n) as described by token_seq_ / token_pos_ through the
  // layers in chunks, writing logits as Forward documents.
  void Run(const int* ids, int n, Logits which, float* logits);
  // Runs tokens [first, first + n), n <= chunk_tokens_, through all layers,
  // leaving the final residual stream in x_.
  void ForwardChunk(const int* ids, int first, int n);
  void Layer(int layer, const int* seqs, const int* positions, int n);
  // logits [n, vocab] = lm_head(h [n, d]), whichever form the lm_head has;
  // int8: the activations of a short call are rounded to int8 (W8A8 / W4A8).
  void LmHead(const float* h, int n, float* logits, bool int8);
  // The KV caches of one element type, [max_sequences, layers, max_seq_len,
  // KV * hd] each, and the per-token cache pointers of a call.
  template <typename CacheT>
  struct KvCaches {
    void Resize(size_t elements, int chunk_tokens) {
      k.resize(elements);
      v.resize(elements);
      token_k.resize(chunk_tokens);
      token_v.resize(chunk_tokens);
    }
    std::vector<CacheT> k, v;
    std::vector<CacheT*> token_k;  // [C] this layer's k cache of token t's sequence
    std::vector<CacheT*> token_v;  // [C] same for v
  };

  // Points caches.token_k / token_v at `layer`'s cache of each token's
  // sequence and, for a decode-sized call, requests the lines the cache
  // write and the rotary will touch (PrefetchRopeAndStoreKv), so that they
  // arrive during the q/k/v projection.
  template <typename CacheT>
  void PrepareCaches(KvCaches<CacheT>& caches, int layer, const AttentionShape& shape,
                     const RopeTable& rope, const int* seqs, const int* positions, int n);
  // Rotates q_ and k_, writes the tokens' k_ and v_ rows to their rows of
  // `caches` (pointed by PrepareCaches) and runs attention over them into attn_.
  template <typename CacheT>
  void Attend(KvCaches<CacheT>& caches, const AttentionShape& shape, const RopeTable& rope,
              const int* positions, int n);

  const ModelConfig& config_;
  const ModelWeights& weights_;
  ThreadPool& pool_;
  const bool int8_decode_;
  const int max_seq_len_;
  const int chunk_tokens_;  // min(kChunkTokens, max_sequences * max_seq_len)
  const AttentionShape full_shape_;     // all keys
  const AttentionShape sliding_shape_;  // window config.sliding_window (layer_sliding layers)
  const RopeTable rope_;                // rope_theta with config.rope_scaling
  const std::optional<RopeTable> local_rope_;  // sliding layers' with rope_local_theta > 0
  std::vector<int> positions_;  // [max_sequences] tokens in each sequence's cache
  OpLap lap_;  // per-op timing of decode calls while op profiling is on (op_profile.h)

  // Only the one the mode uses is allocated.
  KvCaches<float> f32_caches_;      // int8_decode_ false
  KvCaches<uint16_t> f16_caches_;   // int8_decode_ true: IEEE binary16

  // The tokens of a Forward or DecodeStep call, T = max(max_seq_len, max_sequences).
  std::vector<int> token_seq_;  // [T] sequence of token t
  std::vector<int> token_pos_;  // [T] its position in that sequence

  // Scratch, C = chunk_tokens_ (cpu_memory.cpp counts these buffers for the
  // memory check a Session makes before constructing the Transformer).
  std::vector<float> x_;         // [C, d]       residual stream
  std::vector<float> h_;         // [C, d]       normalized input of a block
  std::vector<float> q_;         // [C, H * hd]
  std::vector<float> k_;         // [C, KV * hd] new keys, before they go to their caches
  std::vector<float> v_;         // [C, KV * hd] new values
  std::vector<float> attn_;      // [C, H * hd]  attention output
  std::vector<float> proj_;      // [C, d]       o_proj / down_proj output
  std::vector<float> gate_;      // [C, ffn]     act(gate) * up
  // Mixture-of-experts layers only (empty without experts), E experts, k per token.
  std::vector<float> router_scores_;  // [C, E]  router probabilities
  std::vector<int> route_experts_;    // [C, k]  chosen experts, rank order
  std::vector<float> route_weights_;  // [C, k]  their weights
  MoeScratch moe_scratch_;            // ops/moe_experts.h, C tokens
  std::vector<float> attention_scratch_;  // [C, H, splits, hd + 2] (attention.h)
};

}  // namespace awqcore
