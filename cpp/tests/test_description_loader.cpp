// The decoder-layer description as the loader reads it (docs/format.md, "The
// decoder-layer description"): each family's file loads into the config and
// weights the forward pass expects, a file without the keys reads as Llama,
// and every value that is out of range or contradicts the architecture, and
// every description tensor the config does not use, is a FormatError naming
// the key or tensor. Files come from the spec-written test writer.
#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "awqbin_test_writer.h"
#include "model_impl.h"
#include "test_harness.h"

using awqcore::Activation;
using awqcore::NormPlacement;
using awqcore::RopeScaling;

namespace {

void AddMeta(FileSpec& spec, const std::string& key, MetaValue value) {
  spec.meta.emplace_back(key, std::move(value));
}

void RemoveMeta(FileSpec& spec, const std::string& key) {
  for (auto it = spec.meta.begin(); it != spec.meta.end(); ++it) {
    if (it->first == key) {
      spec.meta.erase(it);
      return;
    }
  }
  throw std::logic_error("test bug: no key " + key);
}

// Sets `key` whether or not the file has it.
void PutMeta(FileSpec& spec, const std::string& key, MetaValue value) {
  for (auto& entry : spec.meta) {
    if (entry.first == key) {
      entry.second = std::move(value);
      return;
    }
  }
  AddMeta(spec, key, std::move(value));
}

FileSpec Llama3Scaled() {
  FileSpec spec = TinyModel("llama");
  AddMeta(spec, "model.rope_scaling.type", Str("llama3"));
  AddMeta(spec, "model.rope_scaling.factor", Float(8.0));
  AddMeta(spec, "model.rope_scaling.original_max_position_embeddings", Int(8192));
  AddMeta(spec, "model.rope_scaling.low_freq_factor", Float(1.0));
  AddMeta(spec, "model.rope_scaling.high_freq_factor", Float(4.0));
  return spec;
}

}  // namespace

TEST(each_family_loads_its_description) {
  {  // no description keys: Llama's description, 1/sqrt(hd) scores
    const auto model = Load(Build(TinyModel("llama")));
    const awqcore::ModelConfig& c = model->config();
    CHECK(c.norm_placement == NormPlacement::kPre && c.activation == Activation::kSilu);
    CHECK(!c.qk_norm && c.sliding_window == 0 && c.layer_sliding.empty());
    CHECK(c.attention_scale == 0.25f && c.embedding_scale == 1.0f && c.final_logit_softcap == 0.0f);
    CHECK(c.rope_scaling.type == RopeScaling::Type::kNone && c.rope_local_theta == 0.0f);
    const awqcore::LayerWeights& layer = model->impl().weights.layers[0];
    CHECK(layer.q_norm == nullptr && layer.pre_ffn_norm == nullptr && layer.post_ffn_norm == nullptr);
  }
  {  // mistral: a window and no layer_types, so every layer slides
    const auto model = Load(Build(TinyModel("mistral")));
    CHECK(model->config().sliding_window == 8);
    CHECK((model->config().layer_sliding == std::vector<uint8_t>{1, 1}));
  }
  {
    const auto model = Load(Build(TinyModel("qwen3")));
    CHECK(model->config().qk_norm);
    const awqcore::LayerWeights& layer = model->impl().weights.layers[1];
    CHECK(layer.q_norm != nullptr && layer.k_norm != nullptr && layer.q_norm != layer.k_norm);
  }
  {
    const auto model = Load(Build(TinyModel("gemma3", true)));
    const awqcore::ModelConfig& c = model->config();
    CHECK(c.norm_placement == NormPlacement::kSandwich && c.activation == Activation::kGeluTanh);
    CHECK(c.qk_norm && c.attention_scale == 0.2f && c.embedding_scale == 8.0f);
    CHECK(c.final_logit_softcap == 30.0f && c.sliding_window == 4 && c.rope_local_theta == 10000.0f);
    CHECK((c.layer_sliding == std::vector<uint8_t>{1, 0}));
    const awqcore::LayerWeights& layer = model->impl().weights.layers[0];
    CHECK(layer.pre_ffn_norm != nullptr && layer.post_ffn_norm != nullptr && layer.q_norm != nullptr);
    // The session runs it end to end (every path of the one forward pass).
    awqcore::Session session(model, 16, 1);
    const std::vector<float> logits = session.Forward({1, 5, 7, 9, 11, 13});
    CHECK(logits.size() == 6 * kVocab);
  }
  {
    const auto model = Load(Build(Llama3Scaled()));
    const RopeScaling& s = model->config().rope_scaling;
    CHECK(s.type == RopeScaling::Type::kLlama3 && s.factor == 8.0);
    CHECK(s.original_max_position_embeddings == 8192 && s.low_freq_factor == 1.0 && s.high_freq_factor == 4.0);
  }
  {  // yarn: beta, truncate and attention_factor default as docs/format.md says
    FileSpec spec = TinyModel("qwen3");
    AddMeta(spec, "model.rope_scaling.type", Str("yarn"));
    AddMeta(spec, "model.rope_scaling.factor", Float(4.0));
    AddMeta(spec, "model.rope_scaling.original_max_position_embeddings", Int(32768));
    const RopeScaling s = Load(Build(spec))->config().rope_scaling;
    CHECK(s.type == RopeScaling::Type::kYarn && s.beta_fast == 32.0 && s.beta_slow == 1.0);
    CHECK(s.truncate && s.attention_factor == 1.0);
  }
}

TEST(description_errors_are_named) {
  struct Case {
    std::string what;
    std::string arch;
    std::function<void(FileSpec&)> edit;
    std::string message;
  };
  const std::vector<Case> cases = {
      {"gemma3 without its placement", "gemma3", [](FileSpec& s) { RemoveMeta(s, "model.norm_placement"); },
       "model.norm_placement='pre' contradicts architecture gemma3 (expected sandwich)"},
      {"llama with GeGLU", "llama", [](FileSpec& s) { AddMeta(s, "model.activation", Str("gelu_tanh")); },
       "model.activation='gelu_tanh' contradicts architecture llama (expected silu)"},
      {"unknown activation", "llama", [](FileSpec& s) { AddMeta(s, "model.activation", Str("relu")); },
       "model.activation='relu' (expected silu or gelu_tanh)"},
      {"unknown placement", "llama", [](FileSpec& s) { AddMeta(s, "model.norm_placement", Str("post")); },
       "model.norm_placement='post' (expected pre or sandwich)"},
      {"qwen3 without q/k norm", "qwen3", [](FileSpec& s) { SetMeta(s, "model.qk_norm", Int(0)); },
       "model.qk_norm=0 contradicts architecture qwen3 (expected 1)"},
      {"qk_norm 2", "qwen3", [](FileSpec& s) { SetMeta(s, "model.qk_norm", Int(2)); },
       "model.qk_norm=2 must be in 0..1"},
      {"qwen2 without biases", "qwen2", [](FileSpec& s) { SetMeta(s, "model.attention_bias", Int(0)); },
       "model.attention_bias=0 contradicts architecture qwen2 (expected 1)"},
      {"llama with a window", "llama", [](FileSpec& s) { AddMeta(s, "model.sliding_window", Int(4)); },
       "model.sliding_window=4 contradicts architecture llama"},
      {"negative window", "mistral", [](FileSpec& s) { SetMeta(s, "model.sliding_window", Int(-1)); },
       "model.sliding_window=-1 must be in 0..2147483647"},
      {"mistral with mixed layers", "mistral",
       [](FileSpec& s) { AddMeta(s, "model.layer_types", Ints({1, 0})); },
       "model.layer_types=(mixed full and sliding) contradicts architecture mistral"},
      {"layer_types too long", "gemma3", [](FileSpec& s) { SetMeta(s, "model.layer_types", Ints({1, 0, 0})); },
       "model.layer_types has 3 entries, model.num_layers=2"},
      {"layer type 2", "gemma3", [](FileSpec& s) { SetMeta(s, "model.layer_types", Ints({1, 2})); },
       "model.layer_types[1]=2 (expected 0 full or 1 sliding)"},
      {"sliding layer without a window", "gemma3", [](FileSpec& s) { SetMeta(s, "model.sliding_window", Int(0)); },
       "model.layer_types[0]=1 (sliding) requires model.sliding_window > 0"},
      {"layer_types not an array", "gemma3", [](FileSpec& s) { SetMeta(s, "model.layer_types", Int(1)); },
       "metadata key 'model.layer_types' has type i64, expected i64 array"},
      {"embedding scale NaN", "gemma3", [](FileSpec& s) { SetMeta(s, "model.embedding_scale", Float(std::nan(""))); },
       "model.embedding_scale=nan must be positive and finite"},
      {"embedding scale 0", "gemma3", [](FileSpec& s) { SetMeta(s, "model.embedding_scale", Float(0.0)); },
       "model.embedding_scale=0 must be positive and finite"},
      {"attention scale inf", "gemma3", [](FileSpec& s) { SetMeta(s, "model.attention_scale", Float(INFINITY)); },
       "model.attention_scale=inf must be positive and finite"},
      {"llama with another attention scale", "llama", [](FileSpec& s) { AddMeta(s, "model.attention_scale", Float(0.5)); },
       "model.attention_scale=0.500000 contradicts architecture llama"},
      {"llama with an embedding scale", "llama", [](FileSpec& s) { AddMeta(s, "model.embedding_scale", Float(2.0)); },
       "model.embedding_scale=2.000000 contradicts architecture llama"},
      {"negative soft-cap", "gemma3", [](FileSpec& s) { SetMeta(s, "model.final_logit_softcap", Float(-1.0)); },
       "model.final_logit_softcap=-1 must be 0 (off) or positive and finite"},
      {"qwen2 with a soft-cap", "qwen2", [](FileSpec& s) { AddMeta(s, "model.final_logit_softcap", Float(30.0)); },
       "model.final_logit_softcap=30.000000 contradicts architecture qwen2"},
      {"llama with a local base", "llama", [](FileSpec& s) { AddMeta(s, "model.rope_local_theta", Float(1e4)); },
       "model.rope_local_theta=10000.000000 contradicts architecture llama"},
      {"local base 0", "gemma3", [](FileSpec& s) { SetMeta(s, "model.rope_local_theta", Float(0.0)); },
       "model.rope_local_theta=0 must be positive and finite"},
      {"unknown rope type", "llama", [](FileSpec& s) { AddMeta(s, "model.rope_scaling.type", Str("dynamic")); },
       "model.rope_scaling.type='dynamic' is not supported (expected none, linear, llama3 or yarn)"},
      {"llama3 without low_freq_factor", "llama",
       [](FileSpec& s) { s = Llama3Scaled(); RemoveMeta(s, "model.rope_scaling.low_freq_factor"); },
       "metadata key 'model.rope_scaling.low_freq_factor' is missing"},
      {"llama3 high <= low", "llama",
       [](FileSpec& s) { s = Llama3Scaled(); SetMeta(s, "model.rope_scaling.high_freq_factor", Float(1.0)); },
       "model.rope_scaling.high_freq_factor=1 must exceed model.rope_scaling.low_freq_factor=1"},
      {"factor below 1", "llama",
       [](FileSpec& s) { s = Llama3Scaled(); SetMeta(s, "model.rope_scaling.factor", Float(0.5)); },
       "model.rope_scaling.factor=0.5 must be >= 1"},
      {"linear without factor", "llama", [](FileSpec& s) { AddMeta(s, "model.rope_scaling.type", Str("linear")); },
       "metadata key 'model.rope_scaling.factor' is missing"},
      {"yarn truncate 2", "qwen3",
       [](FileSpec& s) {
         AddMeta(s, "model.rope_scaling.type", Str("yarn"));
         AddMeta(s, "model.rope_scaling.factor", Float(4.0));
         AddMeta(s, "model.rope_scaling.original_max_position_embeddings", Int(4096));
         AddMeta(s, "model.rope_scaling.truncate", Int(2));
       },
       "model.rope_scaling.truncate=2 must be in 0..1"},
      {"yarn context 0", "qwen3",
       [](FileSpec& s) {
         AddMeta(s, "model.rope_scaling.type", Str("yarn"));
         AddMeta(s, "model.rope_scaling.factor", Float(4.0));
         AddMeta(s, "model.rope_scaling.original_max_position_embeddings", Int(0));
       },
       "model.rope_scaling.original_max_position_embeddings=0 must be in 1.."},
      // Tensors: a description tensor the config does not use, or one it needs.
      {"llama with q_norm", "llama",
       [](FileSpec& s) { AddTensor(s, "model.layers.0.self_attn.q_norm.weight", DType::kF32, {kHeadDim}); },
       "tensor 'model.layers.0.self_attn.q_norm.weight' is not used by this model (model.qk_norm=0)"},
      {"llama with a feed-forward norm", "llama",
       [](FileSpec& s) { AddTensor(s, "model.layers.1.post_feedforward_layernorm.weight", DType::kF32, {kD}); },
       "tensor 'model.layers.1.post_feedforward_layernorm.weight' is not used by this model (model.norm_placement=pre)"},
      {"qwen3 without k_norm", "qwen3",
       [](FileSpec& s) { s.tensors.erase(s.tensors.begin() + TensorIndex(s, "model.layers.1.self_attn.k_norm.weight")); },
       "missing tensor 'model.layers.1.self_attn.k_norm.weight' required by architecture qwen3"},
      {"gemma3 q_norm of width d", "gemma3",
       [](FileSpec& s) {
         const size_t i = TensorIndex(s, "model.layers.0.self_attn.q_norm.weight");
         s.tensors[i].dims = {kD};
         s.tensors[i].bytes.resize(kD * 4);
       },
       "tensor 'model.layers.0.self_attn.q_norm.weight'"},
  };
  for (const Case& c : cases) {
    FileSpec spec = TinyModel(c.arch);
    c.edit(spec);
    std::printf("  %s\n", c.what.c_str());
    CHECK_THROWS(Load(Build(spec)), FormatError, c.message);
  }
  // A stored default is no contradiction: llama with 1/sqrt(hd) rounded to f32.
  FileSpec spec = TinyModel("llama");
  PutMeta(spec, "model.attention_scale", Float(static_cast<float>(1.0 / std::sqrt(16.0))));
  PutMeta(spec, "model.embedding_scale", Float(1.0));
  PutMeta(spec, "model.final_logit_softcap", Float(0.0));
  CHECK(Load(Build(spec))->config().attention_scale == 0.25f);
}

AWQCORE_TEST_MAIN()
