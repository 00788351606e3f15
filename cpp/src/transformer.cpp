#include "transformer.h"

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>

#include "ops/embedding_table.h"
#include "ops/int4_linear.h"
#include "ops/moe_router.h"
#include "ops/rmsnorm.h"
#include "ops/vec.h"

namespace awqcore {
namespace {

size_t Floats(int a, int b) { return static_cast<size_t>(a) * static_cast<size_t>(b); }

AttentionShape ShapeOf(const ModelConfig& config, int window) {
  return {config.num_heads, config.num_kv_heads, config.head_dim, config.attention_scale, window};
}

// The sliding layers' table: their own base and no scaling (Gemma 3's
// rope_local_base_freq); absent when every layer uses rope_theta.
std::optional<RopeTable> LocalRope(const ModelConfig& config, int max_seq_len) {
  if (!(config.rope_local_theta > 0.0f)) return std::nullopt;
  return RopeTable(config.head_dim, config.rope_local_theta, max_seq_len);
}

// x[i] = c tanh(x[i] / c) for i < n: the final logit soft-cap.
void SoftCap(float cap, float* x, size_t n) {
  for (size_t i = 0; i < n; ++i) x[i] = cap * std::tanh(x[i] / cap);
}

}  // namespace

Transformer::Transformer(const ModelConfig& config, const ModelWeights& weights, int max_seq_len,
                         ThreadPool& pool, int max_sequences, bool int8_decode)
    : config_(config),
      weights_(weights),
      pool_(pool),
      int8_decode_(int8_decode),
      max_seq_len_(max_seq_len),
      // No call carries more than max_sequences * max_seq_len tokens, so a
      // tiny context does not get 64 rows of scratch.
      chunk_tokens_(static_cast<int>(std::min<int64_t>(
          kChunkTokens, static_cast<int64_t>(max_sequences) * max_seq_len))),
      full_shape_(ShapeOf(config, 0)),
      sliding_shape_(ShapeOf(config, config.sliding_window)),
      rope_(config.head_dim, config.rope_theta, max_seq_len, config.rope_scaling),
      local_rope_(LocalRope(config, max_seq_len)),
      positions_(max_sequences, 0) {
  DetectedIsa();  // a bad AWQCORE_ISA (cpu_features.h) fails here, at load, not mid-generation
  const int d = config.hidden_size;
  const int q_width = config.num_heads * config.head_dim;
  const int kv_width = config.num_kv_heads * config.head_dim;
  const size_t cache_elements = Floats(max_sequences, config.num_layers) * max_seq_len * kv_width;
  if (int8_decode) {
    f16_caches_.Resize(cache_elements, chunk_tokens_);
  } else {
    f32_caches_.Resize(cache_elements, chunk_tokens_);
  }
  token_seq_.resize(std::max(max_seq_len, max_sequences));
  token_pos_.resize(token_seq_.size());
  x_.resize(Floats(chunk_tokens_, d));
  h_.resize(Floats(chunk_tokens_, d));
  q_.resize(Floats(chunk_tokens_, q_width));
  k_.resize(Floats(chunk_tokens_, kv_width));
  v_.resize(Floats(chunk_tokens_, kv_width));
  attn_.resize(Floats(chunk_tokens_, q_width));
  proj_.resize(Floats(chunk_tokens_, d));
  gate_.resize(Floats(chunk_tokens_, config.intermediate_size));
  if (config.num_experts > 0) {
    const int k = config.num_experts_per_tok;
    router_scores_.resize(Floats(chunk_tokens_, config.num_experts));
    route_experts_.resize(Floats(chunk_tokens_, k));
    route_weights_.resize(Floats(chunk_tokens_, k));
    moe_scratch_ = MoeScratch(chunk_tokens_, k, config.num_experts, d, config.moe_intermediate_size);
  }
  attention_scratch_.resize(
      AttentionScratchFloats(full_shape_, chunk_tokens_, max_seq_len));
}

template <typename CacheT>
void Transformer::PrepareCaches(KvCaches<CacheT>& caches, int layer, const AttentionShape& shape,
                                const RopeTable& rope, const int* seqs, const int* positions, int n) {
  const int kv_width = config_.num_kv_heads * config_.head_dim;
  for (int t = 0; t < n; ++t) {
    const size_t layer_offset =
        (Floats(seqs[t], config_.num_layers) + layer) * max_seq_len_ * kv_width;
    caches.token_k[t] = caches.k.data() + layer_offset;
    caches.token_v[t] = caches.v.data() + layer_offset;
  }
  // A prefill chunk writes consecutive rows of one cache, which the hardware
  // prefetcher streams.
  if (n <= kQ8MaxTokens) {
    PrefetchRopeAndStoreKv(shape, rope, positions, n, caches.token_k.data(), caches.token_v.data());
  }
}

template <typename CacheT>
void Transformer::Attend(KvCaches<CacheT>& caches, const AttentionShape& shape,
                         const RopeTable& rope, const int* positions, int n) {
  // Each token's k and v go to row positions[t] of its own sequence's cache,
  // where attention reads them with the earlier rows. The copy is 2 * KV * hd
  // elements per token: 1.5 KB in f32 on SmolLM2, against the ~1.8 MB of
  // weights the layer streams per decode step.
  RopeAndStoreKv(shape, rope, positions, n, q_.data(), k_.data(), v_.data(),
                 caches.token_k.data(), caches.token_v.data());
  lap_.Lap(Op::kRopeCacheWrite);
  AttentionForward(shape, q_.data(), caches.token_k.data(), caches.token_v.data(),
                   positions, n, attention_scratch_.data(), attn_.data(), pool_);
  lap_.Lap(Op::kAttention);
}

void Transformer::Reset() { std::fill(positions_.begin(), positions_.end(), 0); }

void Transformer::Forward(int seq, const int* ids, int n, Logits which, float* logits) {
  for (int t = 0; t < n; ++t) {
    token_seq_[t] = seq;
    token_pos_[t] = positions_[seq] + t;
  }
  lap_.Start(n == 1 && OpProfilingEnabled());
  if (n == 1 && OpProfilingEnabled()) AddDecodeCall(1);
  Run(ids, n, which, logits);
  positions_[seq] += n;
}

void Transformer::DecodeStep(const int* seqs, const int* ids, int n, float* logits) {
  for (int t = 0; t < n; ++t) {
    token_seq_[t] = seqs[t];
    token_pos_[t] = positions_[seqs[t]];
  }
  lap_.Start(OpProfilingEnabled());
  if (OpProfilingEnabled()) AddDecodeCall(n);
  Run(ids, n, Logits::kAll, logits);
  for (int t = 0; t < n; ++t) ++positions_[seqs[t]];
}

void Transformer::Run(const int* ids, int n, Logits which, float* logits) {
  const int d = config_.hidden_size;
  const int vocab = config_.vocab_size;
  for (int done = 0; done < n;) {
    int chunk = std::min(chunk_tokens_, n - done);
    // Every piece of a prompt-sized call stays prompt-sized: a remainder of
    // 1..kQ8MaxTokens tokens would take the decode kernels' arithmetic (and
    // the int8 lm_head), so a prompt's tokens would depend on how it is cut.
    const int rest = n - done - chunk;
    if (rest > 0 && rest <= kQ8MaxTokens && chunk > 2 * kQ8MaxTokens) chunk -= kQ8MaxTokens;
    ForwardChunk(ids + done, done, chunk);
    const bool last_chunk = done + chunk == n;
    // The lm_head takes int8 activations in decode-sized chunks only (<=
    // kQ8MaxTokens tokens, the int8 mode): a prompt's logits keep f32
    // activations, whether it computes all the chunk's logits or the last
    // token's.
    const bool int8_logits = int8_decode_ && chunk <= kQ8MaxTokens;
    const float cap = config_.final_logit_softcap;
    if (which == Logits::kAll) {
      RmsNorm(x_.data(), weights_.final_norm, d, config_.rms_norm_eps, chunk, h_.data());
      lap_.Lap(Op::kNorms);
      LmHead(h_.data(), chunk, logits + Floats(done, vocab), int8_logits);
      if (cap > 0.0f) SoftCap(cap, logits + Floats(done, vocab), Floats(chunk, vocab));
      lap_.Lap(Op::kLmHead);
    } else if (last_chunk) {
      const float* last_x = x_.data() + Floats(chunk - 1, d);
      RmsNorm(last_x, weights_.final_norm, d, config_.rms_norm_eps, 1, h_.data());
      lap_.Lap(Op::kNorms);
      LmHead(h_.data(), 1, logits, int8_logits);
      if (cap > 0.0f) SoftCap(cap, logits, Floats(1, vocab));
      lap_.Lap(Op::kLmHead);
    }
    done += chunk;
  }
}

void Transformer::LmHead(const float* h, int n, float* logits, bool int8) {
  if (weights_.lm_head_int4.out > 0) {
    // `int8` carries the chunk's choice (Run): Int4LinearForward rounds the
    // activations of any call when told to.
    Int4LinearForward(weights_.lm_head_int4, h, n, logits, pool_, DetectedIsa(), int8);
  } else {
    TableLinearForward(weights_.lm_head, h, n, logits, pool_, DetectedIsa(), int8);
  }
}

void Transformer::ForwardChunk(const int* ids, int first, int n) {
  EmbeddingGather(weights_.embed, ids, n, x_.data());
  if (config_.embedding_scale != 1.0f) {
    for (size_t i = 0; i < Floats(n, config_.hidden_size); ++i) x_[i] *= config_.embedding_scale;
  }
  lap_.Lap(Op::kEmbedding);
  for (int layer = 0; layer < config_.num_layers; ++layer) {
    Layer(layer, token_seq_.data() + first, token_pos_.data() + first, n);
  }
}

void Transformer::Layer(int layer, const int* seqs, const int* positions, int n) {
  const LayerWeights& w = weights_.layers[layer];
  const int d = config_.hidden_size;
  const int hd = config_.head_dim;
  const float eps = config_.rms_norm_eps;
  const bool sandwich = config_.norm_placement == NormPlacement::kSandwich;
  const bool sliding = !config_.layer_sliding.empty() && config_.layer_sliding[layer] != 0;

  const AttentionShape& shape = sliding ? sliding_shape_ : full_shape_;
  const RopeTable& rope = sliding && local_rope_ ? *local_rope_ : rope_;
  if (int8_decode_) {
    PrepareCaches(f16_caches_, layer, shape, rope, seqs, positions, n);
  } else {
    PrepareCaches(f32_caches_, layer, shape, rope, seqs, positions, n);
  }

  // Attention block.
  RmsNorm(x_.data(), w.input_norm, d, eps, n, h_.data());
  lap_.Lap(Op::kNorms);
  const Int4Linear* qkv[] = {&w.q, &w.k, &w.v};
  float* qkv_out[] = {q_.data(), k_.data(), v_.data()};
  Int4LinearsForward(qkv, qkv_out, 3, h_.data(), n, pool_, DetectedIsa(), int8_decode_);
  lap_.Lap(Op::kQkv);
  if (config_.qk_norm) {  // per head: q_ is [n * H, hd] rows, k_ [n * KV, hd]
    RmsNorm(q_.data(), w.q_norm, hd, eps, n * config_.num_heads, q_.data());
    RmsNorm(k_.data(), w.k_norm, hd, eps, n * config_.num_kv_heads, k_.data());
    lap_.Lap(Op::kNorms);
  }
  if (int8_decode_) {
    Attend(f16_caches_, shape, rope, positions, n);
  } else {
    Attend(f32_caches_, shape, rope, positions, n);
  }
  Int4LinearForward(w.o, attn_.data(), n, proj_.data(), pool_, DetectedIsa(), int8_decode_);
  lap_.Lap(Op::kO);
  if (sandwich) RmsNorm(proj_.data(), w.post_norm, d, eps, n, proj_.data());
  lap_.Lap(Op::kNorms);
  AddF32(proj_.data(), x_.data(), n * d);
  lap_.Lap(Op::kOther);

  // MLP block: gate, up and act(gate) * up in one pass, then down; or the
  // router and the chosen experts.
  RmsNorm(x_.data(), sandwich ? w.pre_ffn_norm : w.post_norm, d, eps, n, h_.data());
  lap_.Lap(Op::kNorms);
  if (w.moe.router != nullptr) {
    const int k = config_.num_experts_per_tok;
    MoeRouterForward(w.moe.router, config_.num_experts, d, h_.data(), n, k, config_.norm_topk_prob,
                     router_scores_.data(), route_experts_.data(), route_weights_.data(), pool_);
    MoeExpertsForward(w.moe, config_.activation, h_.data(), n, route_experts_.data(),
                      route_weights_.data(), k, proj_.data(), moe_scratch_, pool_, DetectedIsa(),
                      int8_decode_);
    lap_.Lap(Op::kMoe);
  } else {
    Int4GatedMlpForward(w.gate, w.up, config_.activation, h_.data(), n, gate_.data(), pool_,
                        DetectedIsa(), int8_decode_);
    lap_.Lap(Op::kGateUpAct);
    Int4LinearForward(w.down, gate_.data(), n, proj_.data(), pool_, DetectedIsa(), int8_decode_);
    lap_.Lap(Op::kDown);
  }
  if (sandwich) RmsNorm(proj_.data(), w.post_ffn_norm, d, eps, n, proj_.data());
  lap_.Lap(Op::kNorms);
  AddF32(proj_.data(), x_.data(), n * d);
  lap_.Lap(Op::kOther);
}

}  // namespace awqcore
