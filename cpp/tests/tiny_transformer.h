// A tiny random model held in memory (ModelWeights pointing into the
// struct's own buffers) and the forward pass written out with the reference
// ops, for the forward-pass tests (test_forward.cpp, test_moe_forward.cpp).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <utility>
#include <vector>

#include "half.h"
#include "model_weights.h"
#include "ops/activation.h"
#include "ops/attention.h"
#include "ops/embedding_table.h"
#include "ops/int4_linear.h"
#include "ops/moe_router.h"
#include "ops/rmsnorm.h"
#include "ops/rope.h"
#include "random_weights.h"
#include "test_harness.h"
#include "thread_pool.h"
#include "transformer.h"

namespace awqtest {

using namespace awqcore;

// What every tiny test model shares: d 64, 4 query and 2 key/value heads of
// 16, a vocabulary of 97, int4 groups of 32. The tests set the family, the
// layer count and the MLP width.
inline ModelConfig TinyBaseConfig() {
  ModelConfig config;
  config.vocab_size = 97;
  config.hidden_size = 64;
  config.num_heads = 4;
  config.num_kv_heads = 2;
  config.head_dim = 16;
  config.max_position_embeddings = 256;
  config.rope_theta = 10000.0f;
  config.rms_norm_eps = 1e-5f;
  config.group_size = 32;
  return config;
}

// Random weights owning their storage; `weights` points into it. Scales of
// ~1/(8 sqrt(in)) keep activations O(1) through the layers. The embedding and
// lm_head tables are f16, or int8 with `int8_tables`.
struct TinyModel {
  ModelConfig config;
  ModelWeights weights;
  std::vector<std::vector<uint8_t>> bytes;
  std::vector<std::vector<int8_t>> codes;
  std::vector<std::vector<uint16_t>> halves;
  std::vector<std::vector<float>> floats;
  std::mt19937 rng{123};

  // int4_lm_head: the lm_head is a 4-bit linear [vocab, d] (an untied file's
  // `--lm-head int4` form) and `lm_head` stays empty.
  explicit TinyModel(ModelConfig model_config, bool int8_tables = false, bool int4_lm_head = false)
      : config(std::move(model_config)) {
    const int d = config.hidden_size, hd = config.head_dim;
    const bool bias = config.attention_bias;
    // Gemma's embedding scale multiplies x by sqrt(d) = 8: a table 8x
    // smaller keeps the residual stream O(1) as in the other families.
    weights.embed = Table(int8_tables, 1.0f / config.embedding_scale);
    if (int4_lm_head) {
      config.tie_word_embeddings = false;
      weights.lm_head_int4 = Linear(config.vocab_size, d, false);
    } else {
      weights.lm_head = Table(int8_tables, 0.3f);
    }
    weights.final_norm = Floats(d, 0.8f, 1.2f);
    const bool sandwich = config.norm_placement == NormPlacement::kSandwich;
    for (int l = 0; l < config.num_layers; ++l) {
      LayerWeights layer;
      layer.input_norm = Floats(d, 0.8f, 1.2f);
      layer.q = Linear(config.num_heads * hd, d, bias);
      layer.k = Linear(config.num_kv_heads * hd, d, bias);
      layer.v = Linear(config.num_kv_heads * hd, d, bias);
      if (config.qk_norm) {
        layer.q_norm = Floats(hd, 0.5f, 1.5f);
        layer.k_norm = Floats(hd, 0.5f, 1.5f);
      }
      layer.o = Linear(d, config.num_heads * hd, false);
      layer.post_norm = Floats(d, 0.8f, 1.2f);
      if (sandwich) {
        layer.pre_ffn_norm = Floats(d, 0.8f, 1.2f);
        layer.post_ffn_norm = Floats(d, 0.8f, 1.2f);
      }
      if (config.num_experts > 0 && (config.moe_layers.empty() || config.moe_layers[l])) {
        // Router rows in [-0.5, 0.5] over a normalized h give logits spread
        // by ~2 (d = 64): routing that differs from token to token.
        const int f = config.moe_intermediate_size;
        layer.moe.router = Floats(static_cast<size_t>(config.num_experts) * d, -0.5f, 0.5f);
        for (int e = 0; e < config.num_experts; ++e) {
          layer.moe.gate.push_back(Linear(f, d, false));
          layer.moe.up.push_back(Linear(f, d, false));
          layer.moe.down.push_back(Linear(d, f, false));
        }
      } else {
        layer.gate = Linear(config.intermediate_size, d, false);
        layer.up = Linear(config.intermediate_size, d, false);
        layer.down = Linear(d, config.intermediate_size, false);
      }
      weights.layers.push_back(layer);
    }
  }

  const float* Floats(size_t n, float lo, float hi) {
    std::uniform_real_distribution<float> dist(lo, hi);
    floats.emplace_back(n);
    for (float& v : floats.back()) v = dist(rng);
    return floats.back().data();
  }
  const uint16_t* Halves(size_t n, float range) {
    std::uniform_real_distribution<float> dist(-range, range);
    halves.emplace_back(n);
    for (uint16_t& v : halves.back()) v = F32ToF16(dist(rng));
    return halves.back().data();
  }
  // [vocab, d] with weights in about [-range, range].
  EmbeddingTable Table(bool int8, float range) {
    const int rows = config.vocab_size, d = config.hidden_size;
    const size_t n = static_cast<size_t>(rows) * d;
    if (!int8) return EmbeddingTable{rows, d, Halves(n, range), nullptr, nullptr};
    std::uniform_int_distribution<int> code(-127, 127);
    codes.emplace_back(n);
    for (int8_t& q : codes.back()) q = static_cast<int8_t>(code(rng));
    std::uniform_real_distribution<float> scale(0.5f * range / 127, 1.5f * range / 127);
    halves.emplace_back(n / EmbeddingTable::kBlock);
    for (uint16_t& s : halves.back()) s = F32ToF16(scale(rng));
    return EmbeddingTable{rows, d, nullptr, codes.back().data(), halves.back().data()};
  }
  Int4Linear Linear(int out, int in, bool with_bias) {
    const int g = config.group_size;
    std::uniform_int_distribution<int> byte(0, 255), nibble(0, 15);
    const float scale = 1.0f / (8.0f * std::sqrt(static_cast<float>(in)));
    Int4Linear layer{out, in, g, nullptr, nullptr, nullptr, nullptr};
    bytes.emplace_back(static_cast<size_t>(out) * in / 2);
    for (uint8_t& b : bytes.back()) b = static_cast<uint8_t>(byte(rng));
    layer.qweight = bytes.back().data();
    bytes.emplace_back(static_cast<size_t>(out) * in / g);
    for (uint8_t& z : bytes.back()) z = static_cast<uint8_t>(nibble(rng));
    layer.zeros = bytes.back().data();
    layer.scales = Halves(static_cast<size_t>(out) * in / g, 0.0f);
    std::uniform_real_distribution<float> scale_dist(0.5f * scale, 1.5f * scale);
    for (size_t i = 0; i < halves.back().size(); ++i) halves.back()[i] = F32ToF16(scale_dist(rng));
    if (with_bias) layer.bias = Floats(out, -0.5f, 0.5f);
    return layer;
  }
};

// What an int4 linear multiplies: x [n, layer.in], rounded to int8 in the
// int8 mode (every call of the runtime's int4 linears, ops/int4_linear.h).
std::vector<float> LinearInput(const Int4Linear& layer, const float* x, int n, bool int8) {
  return Int4OpInput(std::vector<float>(x, x + static_cast<size_t>(n) * layer.in), n, layer.in,
                     layer.group_size, int8);
}

// y [n, d] = down(act(gate(x)) * up(x)) for x [n, in] with the reference ops;
// int8: the int8 mode's rounding of each linear's input.
void NaiveMlp(Activation activation, const Int4Linear& gate_proj, const Int4Linear& up_proj,
              const Int4Linear& down_proj, const float* x, int n, float* y, bool int8) {
  const size_t width = static_cast<size_t>(n) * gate_proj.out;
  std::vector<float> gate(width), up(width);
  Int4LinearReference(gate_proj, LinearInput(gate_proj, x, n, int8).data(), n, gate.data());
  Int4LinearReference(up_proj, LinearInput(up_proj, x, n, int8).data(), n, up.data());
  if (activation == Activation::kSilu) {
    SwiGluReference(gate.data(), up.data(), static_cast<int>(width), gate.data());
  } else {
    GeGluReference(gate.data(), up.data(), static_cast<int>(width), gate.data());
  }
  Int4LinearReference(down_proj, LinearInput(down_proj, gate.data(), n, int8).data(), n, y);
}

// A mixture-of-experts MLP, token by token as docs/format.md defines it: the
// reference router's k experts, each run alone on the token, summed in rank
// order with their weights (in double). x, y: [n, d].
void NaiveExperts(const ModelConfig& c, const MoeWeights& moe, const float* x, int n, float* y,
                  bool int8) {
  const int d = c.hidden_size, k = c.num_experts_per_tok;
  std::vector<int> experts(k);
  std::vector<float> weights(k), expert_out(d);
  std::vector<double> sum(d);
  for (int t = 0; t < n; ++t) {
    const float* xt = x + static_cast<size_t>(t) * d;
    MoeRouterReference(moe.router, c.num_experts, d, xt, 1, k, c.norm_topk_prob, experts.data(),
                       weights.data());
    std::fill(sum.begin(), sum.end(), 0.0);
    for (int r = 0; r < k; ++r) {
      const int e = experts[r];
      NaiveMlp(c.activation, moe.gate[e], moe.up[e], moe.down[e], xt, 1, expert_out.data(), int8);
      for (int i = 0; i < d; ++i) sum[i] += static_cast<double>(weights[r]) * expert_out[i];
    }
    for (int i = 0; i < d; ++i) y[static_cast<size_t>(t) * d + i] = static_cast<float>(sum[i]);
  }
}

// The forward pass written out with the reference ops, whole sequence at once:
// logits [ids.size(), vocab]. int8: the int8 mode's numerics, every int4
// linear's input rounded to int8 (LinearInput) and keys and values rounded
// to f16 as its cache stores them (the lm_head stays f32: a call of more
// than kQ8MaxTokens tokens, as the tests run it).
std::vector<float> NaiveForward(const TinyModel& model, const std::vector<int>& ids, bool int8) {
  const ModelConfig& c = model.config;
  const int n = static_cast<int>(ids.size()), d = c.hidden_size;
  const int q_width = c.num_heads * c.head_dim, kv_width = c.num_kv_heads * c.head_dim;
  const bool sandwich = c.norm_placement == NormPlacement::kSandwich;
  std::vector<float> x(static_cast<size_t>(n) * d), h(x.size()), q(static_cast<size_t>(n) * q_width);
  std::vector<float> k(static_cast<size_t>(n) * kv_width), v(k.size()), attn(q.size()), proj(x.size());
  EmbeddingGather(model.weights.embed, ids.data(), n, x.data());
  for (float& e : x) e *= c.embedding_scale;
  for (int l = 0; l < c.num_layers; ++l) {
    const LayerWeights& w = model.weights.layers[l];
    const bool sliding = !c.layer_sliding.empty() && c.layer_sliding[l];
    RmsNormReference(x.data(), w.input_norm, d, c.rms_norm_eps, n, h.data());
    Int4LinearReference(w.q, LinearInput(w.q, h.data(), n, int8).data(), n, q.data());
    Int4LinearReference(w.k, LinearInput(w.k, h.data(), n, int8).data(), n, k.data());
    Int4LinearReference(w.v, LinearInput(w.v, h.data(), n, int8).data(), n, v.data());
    if (c.qk_norm) {  // every head of every token is a row of hd
      RmsNormReference(q.data(), w.q_norm, c.head_dim, c.rms_norm_eps, n * c.num_heads, q.data());
      RmsNormReference(k.data(), w.k_norm, c.head_dim, c.rms_norm_eps, n * c.num_kv_heads, k.data());
    }
    const bool local = sliding && c.rope_local_theta > 0.0f;
    const float theta = local ? c.rope_local_theta : c.rope_theta;
    const RopeScaling scaling = local ? RopeScaling{} : c.rope_scaling;
    RopeReference(q.data(), n, c.num_heads, c.head_dim, theta, 0, scaling);
    RopeReference(k.data(), n, c.num_kv_heads, c.head_dim, theta, 0, scaling);
    if (int8) {
      for (float& e : k) e = F16ToF32(F32ToF16(e));
      for (float& e : v) e = F16ToF32(F32ToF16(e));
    }
    const AttentionShape shape{c.num_heads, c.num_kv_heads, c.head_dim, c.attention_scale,
                               sliding ? c.sliding_window : 0};
    AttentionReference(shape, q.data(), k.data(), v.data(), 0, n, attn.data());
    Int4LinearReference(w.o, LinearInput(w.o, attn.data(), n, int8).data(), n, proj.data());
    if (sandwich) RmsNormReference(proj.data(), w.post_norm, d, c.rms_norm_eps, n, proj.data());
    for (size_t i = 0; i < x.size(); ++i) x[i] += proj[i];
    RmsNormReference(x.data(), sandwich ? w.pre_ffn_norm : w.post_norm, d, c.rms_norm_eps, n, h.data());
    if (w.moe.router != nullptr) {
      NaiveExperts(c, w.moe, h.data(), n, proj.data(), int8);
    } else {
      NaiveMlp(c.activation, w.gate, w.up, w.down, h.data(), n, proj.data(), int8);
    }
    if (sandwich) RmsNormReference(proj.data(), w.post_ffn_norm, d, c.rms_norm_eps, n, proj.data());
    for (size_t i = 0; i < x.size(); ++i) x[i] += proj[i];
  }
  RmsNormReference(x.data(), model.weights.final_norm, d, c.rms_norm_eps, n, h.data());
  std::vector<float> logits(static_cast<size_t>(n) * c.vocab_size);
  if (model.weights.lm_head_int4.out > 0) {
    Int4LinearReference(model.weights.lm_head_int4, h.data(), n, logits.data());
  } else {
    TableLinearReference(model.weights.lm_head, h.data(), n, logits.data());
  }
  if (c.final_logit_softcap > 0.0f) {
    const double cap = c.final_logit_softcap;
    for (float& e : logits) e = static_cast<float>(cap * std::tanh(e / cap));
  }
  return logits;
}

std::vector<int> RandomIds(int n, int vocab, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int> id(0, vocab - 1);
  std::vector<int> ids(n);
  for (int& t : ids) t = id(rng);
  return ids;
}

// All logits [ids.size(), vocab] of `ids` fed to `transformer` in calls of
// `chunk` tokens (1: token-by-token decode; ids.size(): one prefill call),
// continuing from its current position.
inline std::vector<float> ForwardInChunks(Transformer& transformer, const std::vector<int>& ids, int chunk,
                                          int vocab) {
  const int n = static_cast<int>(ids.size());
  std::vector<float> logits(static_cast<size_t>(n) * vocab);
  for (int t = 0; t < n; t += chunk) {
    transformer.Forward(&ids[t], std::min(chunk, n - t), Transformer::Logits::kAll,
                        logits.data() + static_cast<size_t>(t) * vocab);
  }
  return logits;
}

// The int8 decode path of `model` on 20 random tokens: {relative error of
// prefill in chunks of kQ8MaxTokens against token-by-token decode, relative
// error of that decode against all-f32 decode}.
inline std::pair<double, double> Int8DecodeErrors(const TinyModel& model) {
  const int vocab = model.config.vocab_size, n = 20;
  ThreadPool pool(2);
  Transformer decode(model.config, model.weights, n, pool);
  Transformer chunked(model.config, model.weights, n, pool);
  Transformer exact(model.config, model.weights, n, pool, 1, /*int8_decode=*/false);
  const std::vector<int> ids = RandomIds(n, vocab, 6);
  const std::vector<float> decode_logits = ForwardInChunks(decode, ids, 1, vocab);
  const std::vector<float> chunked_logits = ForwardInChunks(chunked, ids, kQ8MaxTokens, vocab);
  const std::vector<float> exact_logits = ForwardInChunks(exact, ids, 1, vocab);
  return {RelativeError(chunked_logits, decode_logits), RelativeError(decode_logits, exact_logits)};
}

// Tolerance between two f32 evaluations of the network in different orders
// (or against the double-accumulating references). Each op is within
// gamma(width + 8) ~ 6e-6 relative of exact for widths <= 96 (test_ops); two
// layers of ~10 ops, with RMSNorm re-normalizing between blocks, compound
// that to well under 1e-4 of the logits' scale.
constexpr double kLogitTolerance = 1e-4;

}  // namespace awqtest
