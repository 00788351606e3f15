#include "transformer.h"

#include <algorithm>
#include <cstddef>

#include "ops/embedding_table.h"
#include "ops/int4_linear.h"
#include "ops/rmsnorm.h"
#include "ops/vec.h"

namespace awqcore {
namespace {

size_t Floats(int a, int b) { return static_cast<size_t>(a) * static_cast<size_t>(b); }

}  // namespace

Transformer::Transformer(const ModelConfig& config, const ModelWeights& weights, int max_seq_len,
                         ThreadPool& pool)
    : config_(config),
      weights_(weights),
      pool_(pool),
      max_seq_len_(max_seq_len),
      chunk_tokens_(std::min(kChunkTokens, max_seq_len)),
      attention_shape_{config.num_heads, config.num_kv_heads, config.head_dim},
      rope_(config.head_dim, config.rope_theta, max_seq_len) {
  const int d = config.hidden_size;
  const int q_width = config.num_heads * config.head_dim;
  const int kv_width = config.num_kv_heads * config.head_dim;
  const size_t cache_floats = Floats(config.num_layers, max_seq_len) * kv_width;
  k_cache_.resize(cache_floats);
  v_cache_.resize(cache_floats);
  x_.resize(Floats(chunk_tokens_, d));
  h_.resize(Floats(chunk_tokens_, d));
  q_.resize(Floats(chunk_tokens_, q_width));
  attn_.resize(Floats(chunk_tokens_, q_width));
  proj_.resize(Floats(chunk_tokens_, d));
  gate_.resize(Floats(chunk_tokens_, config.intermediate_size));
  scores_.resize(Floats(config.num_heads, max_seq_len));
}

float* Transformer::LayerCache(std::vector<float>& cache, int layer) {
  return cache.data() + Floats(layer, max_seq_len_) * (config_.num_kv_heads * config_.head_dim);
}

void Transformer::Forward(const int* ids, int n, Logits which, float* logits) {
  const int d = config_.hidden_size;
  const int vocab = config_.vocab_size;
  for (int done = 0; done < n;) {
    const int chunk = std::min(chunk_tokens_, n - done);
    ForwardChunk(ids + done, chunk);
    const bool last_chunk = done + chunk == n;
    if (which == Logits::kAll) {
      RmsNorm(x_.data(), weights_.final_norm, d, config_.rms_norm_eps, chunk, h_.data());
      TableLinearForward(weights_.lm_head, h_.data(), chunk, logits + Floats(done, vocab), pool_);
    } else if (last_chunk) {
      const float* last_x = x_.data() + Floats(chunk - 1, d);
      RmsNorm(last_x, weights_.final_norm, d, config_.rms_norm_eps, 1, h_.data());
      TableLinearForward(weights_.lm_head, h_.data(), 1, logits, pool_);
    }
    done += chunk;
  }
}

void Transformer::ForwardChunk(const int* ids, int n) {
  EmbeddingGather(weights_.embed, ids, n, x_.data());
  for (int layer = 0; layer < config_.num_layers; ++layer) Layer(layer, n);
  position_ += n;
}

void Transformer::Layer(int layer, int n) {
  const LayerWeights& w = weights_.layers[layer];
  const int d = config_.hidden_size;
  const int kv_width = config_.num_kv_heads * config_.head_dim;
  const float eps = config_.rms_norm_eps;

  // Attention block. k and v are written straight into the cache rows of
  // positions position_ .. position_ + n - 1 (contiguous: [max_seq_len, KV*hd]).
  float* k_rows = LayerCache(k_cache_, layer) + Floats(position_, kv_width);
  float* v_rows = LayerCache(v_cache_, layer) + Floats(position_, kv_width);
  RmsNorm(x_.data(), w.input_norm, d, eps, n, h_.data());
  const Int4Linear* qkv[] = {&w.q, &w.k, &w.v};
  float* qkv_out[] = {q_.data(), k_rows, v_rows};
  Int4LinearsForward(qkv, qkv_out, 3, h_.data(), n, pool_);
  rope_.Apply(q_.data(), n, config_.num_heads, position_);
  rope_.Apply(k_rows, n, config_.num_kv_heads, position_);
  AttentionForward(attention_shape_, q_.data(), LayerCache(k_cache_, layer),
                   LayerCache(v_cache_, layer), position_, n, scores_.data(), attn_.data(), pool_);
  Int4LinearForward(w.o, attn_.data(), n, proj_.data(), pool_);
  AddF32(proj_.data(), x_.data(), n * d);

  // MLP block: gate, up and SiLU(gate) * up in one pass.
  RmsNorm(x_.data(), w.post_norm, d, eps, n, h_.data());
  Int4SwiGluForward(w.gate, w.up, h_.data(), n, gate_.data(), pool_);
  Int4LinearForward(w.down, gate_.data(), n, proj_.data(), pool_);
  AddF32(proj_.data(), x_.data(), n * d);
}

}  // namespace awqcore
