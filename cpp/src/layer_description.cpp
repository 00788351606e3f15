// ReadLayerDescription (model_loader.h): the optional model.* keys of
// docs/format.md's "The decoder-layer description", their ranges, and the
// features each architecture fixes. A file without the keys reads as Llama's
// description, so files written before the keys existed load unchanged.

#include <cmath>
#include <cstdint>
#include <limits>
#include <optional>
#include <string>
#include <vector>

#include "model_loader.h"
#include "text_checks.h"

namespace awqcore {
namespace {

// What an architecture's definition fixes (docs/format.md, the table after
// the keys). Everything not listed here is free for every architecture.
struct ArchitectureRules {
  const char* name;
  NormPlacement norm_placement;
  Activation activation;
  bool qk_norm;
  int attention_bias;      // 0 or 1: fixed; -1: either
  bool sliding_layers;     // sliding_window may be set
  bool mixed_layer_types;  // layer_types may mix full and sliding layers
  bool gemma_scales;       // embedding_scale, attention_scale, soft-cap, rope_local_theta
  bool experts;            // mixture of experts: model.num_experts >= 1 required, else absent or 0
};

constexpr ArchitectureRules kArchitectures[] = {
    {"llama", NormPlacement::kPre, Activation::kSilu, false, 0, false, false, false, false},
    {"mistral", NormPlacement::kPre, Activation::kSilu, false, 0, true, false, false, false},
    {"qwen2", NormPlacement::kPre, Activation::kSilu, false, 1, false, false, false, false},
    {"qwen3", NormPlacement::kPre, Activation::kSilu, true, -1, false, false, false, false},
    {"gemma3", NormPlacement::kSandwich, Activation::kGeluTanh, true, 0, true, true, true, false},
    // Mistral's attention and Qwen3's, with mixture-of-experts MLPs.
    {"mixtral", NormPlacement::kPre, Activation::kSilu, false, 0, true, false, false, true},
    {"qwen3_moe", NormPlacement::kPre, Activation::kSilu, true, -1, false, false, false, true},
};

const char* PlacementName(NormPlacement p) { return p == NormPlacement::kPre ? "pre" : "sandwich"; }
const char* ActivationName(Activation a) { return a == Activation::kSilu ? "silu" : "gelu_tanh"; }

bool Has(const AwqbinFile& file, const char* key) { return file.metadata().count(key) != 0; }

// A positive finite f64 that stays positive and finite as a float (checked in
// double: narrowing a value beyond FLT_MAX is undefined; NaN fails both tests).
double PositiveFinite(const AwqbinFile& file, const char* key) {
  const double value = file.RequireFloat(key);
  if (!(value > 0.0 && value <= std::numeric_limits<float>::max()) ||
      !(static_cast<float>(value) > 0.0f)) {
    FailFormat(key, "=", value, " must be positive and finite");
  }
  return value;
}

std::optional<double> OptionalPositive(const AwqbinFile& file, const char* key) {
  if (!Has(file, key)) return std::nullopt;
  return PositiveFinite(file, key);
}

int64_t IntInRange(const AwqbinFile& file, const char* key, int64_t lo, int64_t hi) {
  const int64_t value = file.RequireInt(key);
  if (value < lo || value > hi) FailFormat(key, "=", value, " must be in ", lo, "..", hi);
  return value;
}

RopeScaling ReadRopeScaling(const AwqbinFile& file) {
  RopeScaling s;
  const std::string type = file.GetString("model.rope_scaling.type").value_or("none");
  if (type == "none") return s;
  constexpr int64_t kIntMax = std::numeric_limits<int32_t>::max();
  if (type == "linear") {
    s.type = RopeScaling::Type::kLinear;
  } else if (type == "llama3") {
    s.type = RopeScaling::Type::kLlama3;
    s.original_max_position_embeddings = static_cast<int>(
        IntInRange(file, "model.rope_scaling.original_max_position_embeddings", 1, kIntMax));
    s.low_freq_factor = PositiveFinite(file, "model.rope_scaling.low_freq_factor");
    s.high_freq_factor = PositiveFinite(file, "model.rope_scaling.high_freq_factor");
    // The smoothing divides by high - low (transformers requires high > low).
    if (!(s.high_freq_factor > s.low_freq_factor)) {
      FailFormat("model.rope_scaling.high_freq_factor=", s.high_freq_factor,
                 " must exceed model.rope_scaling.low_freq_factor=", s.low_freq_factor);
    }
  } else if (type == "yarn") {
    s.type = RopeScaling::Type::kYarn;
    s.original_max_position_embeddings = static_cast<int>(
        IntInRange(file, "model.rope_scaling.original_max_position_embeddings", 1, kIntMax));
    s.beta_fast = OptionalPositive(file, "model.rope_scaling.beta_fast").value_or(32.0);
    s.beta_slow = OptionalPositive(file, "model.rope_scaling.beta_slow").value_or(1.0);
    if (Has(file, "model.rope_scaling.truncate")) {
      s.truncate = IntInRange(file, "model.rope_scaling.truncate", 0, 1) == 1;
    }
    s.attention_factor = OptionalPositive(file, "model.rope_scaling.attention_factor").value_or(1.0);
  } else {
    FailFormat("model.rope_scaling.type='", type,
               "' is not supported (expected none, linear, llama3 or yarn)");
  }
  // transformers rejects factor < 1 for these three types: it would shrink
  // the context the frequencies cover.
  s.factor = PositiveFinite(file, "model.rope_scaling.factor");
  if (s.factor < 1.0) FailFormat("model.rope_scaling.factor=", s.factor, " must be >= 1");
  return s;
}

// `key` holds a value that only `allowed` architectures may have.
void RequireAllowed(bool allowed, const ModelConfig& c, const char* key, const std::string& value) {
  if (!allowed) {
    FailFormat(key, "=", value, " contradicts architecture ", c.architecture,
               " (its definition has no such feature)");
  }
}

const ArchitectureRules& RulesOf(const std::string& architecture) {
  for (const ArchitectureRules& r : kArchitectures) {
    if (architecture == r.name) return r;
  }
  FailFormat("unknown architecture '", EscapeForMessage(architecture),
             "' (supported: llama, mistral, qwen2, qwen3, gemma3, mixtral, qwen3_moe)");
}

constexpr const char* kMoeKeys[] = {"model.num_experts", "model.num_experts_per_tok",
                                    "model.moe_intermediate_size", "model.norm_topk_prob",
                                    "model.moe_layers"};

// The mixture-of-experts keys (docs/format.md): required by an architecture
// with experts, absent (or num_experts 0) from every other.
void ReadExperts(const AwqbinFile& file, const ArchitectureRules& rules, ModelConfig& c) {
  constexpr int64_t kIntMax = std::numeric_limits<int32_t>::max();
  if (!rules.experts) {
    for (const char* key : kMoeKeys) {
      if (!Has(file, key)) continue;
      if (std::string(key) == "model.num_experts" && file.RequireInt(key) == 0) continue;
      FailFormat(key, " is set but architecture ", c.architecture, " has no experts");
    }
    return;
  }
  c.num_experts = static_cast<int>(IntInRange(file, "model.num_experts", 1, kIntMax));
  const int64_t k = file.RequireInt("model.num_experts_per_tok");
  if (k < 1 || k > c.num_experts) {
    FailFormat("model.num_experts_per_tok=", k, " must be in 1..model.num_experts=", c.num_experts);
  }
  c.num_experts_per_tok = static_cast<int>(k);
  c.moe_intermediate_size = static_cast<int>(IntInRange(file, "model.moe_intermediate_size", 1, kIntMax));
  if (c.moe_intermediate_size % c.group_size != 0) {
    FailFormat("quant.group_size=", c.group_size, " does not divide model.moe_intermediate_size=",
               c.moe_intermediate_size);
  }
  // Mixtral always renormalizes the chosen weights; its files may leave the key out.
  const bool mixtral = std::string(rules.name) == "mixtral";
  c.norm_topk_prob = mixtral && !Has(file, "model.norm_topk_prob")
                         ? true
                         : IntInRange(file, "model.norm_topk_prob", 0, 1) == 1;
  if (mixtral && !c.norm_topk_prob) {
    FailFormat("model.norm_topk_prob=0 contradicts architecture mixtral (expected 1)");
  }
  c.moe_layers.assign(c.num_layers, 1);
  if (Has(file, "model.moe_layers")) {
    const std::optional<std::vector<int64_t>> layers = file.GetIntArray("model.moe_layers");
    if (layers->size() != static_cast<size_t>(c.num_layers)) {
      FailFormat("model.moe_layers has ", layers->size(), " entries, model.num_layers=", c.num_layers);
    }
    for (size_t l = 0; l < layers->size(); ++l) {
      const int64_t kind = (*layers)[l];
      if (kind != 0 && kind != 1) FailFormat("model.moe_layers[", l, "]=", kind, " (expected 0 dense or 1 MoE)");
      if (kind == 0 && mixtral) {
        FailFormat("model.moe_layers[", l, "]=0 contradicts architecture mixtral (every layer is MoE)");
      }
      c.moe_layers[l] = static_cast<uint8_t>(kind);
    }
  }
}

}  // namespace

void RequireKnownArchitecture(const std::string& architecture) { RulesOf(architecture); }

void ReadLayerDescription(const AwqbinFile& file, ModelConfig& c) {
  const ArchitectureRules* rules = &RulesOf(c.architecture);

  const std::string placement = file.GetString("model.norm_placement").value_or("pre");
  if (placement == "pre") {
    c.norm_placement = NormPlacement::kPre;
  } else if (placement == "sandwich") {
    c.norm_placement = NormPlacement::kSandwich;
  } else {
    FailFormat("model.norm_placement='", EscapeForMessage(placement), "' (expected pre or sandwich)");
  }
  const std::string activation = file.GetString("model.activation").value_or("silu");
  if (activation == "silu") {
    c.activation = Activation::kSilu;
  } else if (activation == "gelu_tanh") {
    c.activation = Activation::kGeluTanh;
  } else {
    FailFormat("model.activation='", EscapeForMessage(activation), "' (expected silu or gelu_tanh)");
  }
  c.qk_norm = Has(file, "model.qk_norm") && IntInRange(file, "model.qk_norm", 0, 1) == 1;

  if (c.norm_placement != rules->norm_placement) {
    FailFormat("model.norm_placement='", placement, "' contradicts architecture ", c.architecture,
               " (expected ", PlacementName(rules->norm_placement), ")");
  }
  if (c.activation != rules->activation) {
    FailFormat("model.activation='", activation, "' contradicts architecture ", c.architecture,
               " (expected ", ActivationName(rules->activation), ")");
  }
  if (c.qk_norm != rules->qk_norm) {
    FailFormat("model.qk_norm=", int{c.qk_norm}, " contradicts architecture ", c.architecture,
               " (expected ", int{rules->qk_norm}, ")");
  }
  if (rules->attention_bias >= 0 && int{c.attention_bias} != rules->attention_bias) {
    FailFormat("model.attention_bias=", int{c.attention_bias}, " contradicts architecture ",
               c.architecture, " (expected ", rules->attention_bias, ")");
  }

  // Scores scale: 1/sqrt(hd) unless the file says otherwise. Another value is
  // Gemma's query_pre_attn_scalar^-0.5; for the others a stored value must be
  // 1/sqrt(hd) up to the f32 rounding a writer may have applied.
  const double default_scale = 1.0 / std::sqrt(static_cast<double>(c.head_dim));
  const double attention_scale =
      OptionalPositive(file, "model.attention_scale").value_or(default_scale);
  RequireAllowed(rules->gemma_scales || std::fabs(attention_scale / default_scale - 1.0) <= 1e-6,
                 c, "model.attention_scale", std::to_string(attention_scale));
  c.attention_scale = static_cast<float>(attention_scale);
  c.embedding_scale = static_cast<float>(OptionalPositive(file, "model.embedding_scale").value_or(1.0));
  RequireAllowed(rules->gemma_scales || c.embedding_scale == 1.0f, c, "model.embedding_scale",
                 std::to_string(c.embedding_scale));
  if (Has(file, "model.final_logit_softcap")) {
    const double cap = file.RequireFloat("model.final_logit_softcap");
    // 0 is "off"; a cap beyond float range would divide the logits to 0.
    if (!(cap >= 0.0 && cap <= std::numeric_limits<float>::max())) {
      FailFormat("model.final_logit_softcap=", cap, " must be 0 (off) or positive and finite");
    }
    c.final_logit_softcap = static_cast<float>(cap);
  }
  RequireAllowed(rules->gemma_scales || c.final_logit_softcap == 0.0f, c,
                 "model.final_logit_softcap", std::to_string(c.final_logit_softcap));

  // Sliding-window attention: which layers, and how many keys.
  constexpr int64_t kIntMax = std::numeric_limits<int32_t>::max();
  if (Has(file, "model.sliding_window")) {
    c.sliding_window = static_cast<int>(IntInRange(file, "model.sliding_window", 0, kIntMax));
  }
  RequireAllowed(rules->sliding_layers || c.sliding_window == 0, c, "model.sliding_window",
                 std::to_string(c.sliding_window));
  c.layer_sliding.clear();
  if (Has(file, "model.layer_types")) {
    // Present (Has), so GetIntArray returns it or throws naming its type.
    const std::optional<std::vector<int64_t>> types = file.GetIntArray("model.layer_types");
    if (types->size() != static_cast<size_t>(c.num_layers)) {
      FailFormat("model.layer_types has ", types->size(), " entries, model.num_layers=", c.num_layers);
    }
    for (size_t l = 0; l < types->size(); ++l) {
      const int64_t t = (*types)[l];
      if (t != 0 && t != 1) FailFormat("model.layer_types[", l, "]=", t, " (expected 0 full or 1 sliding)");
      if (t == 1 && c.sliding_window == 0) {
        FailFormat("model.layer_types[", l, "]=1 (sliding) requires model.sliding_window > 0");
      }
      c.layer_sliding.push_back(static_cast<uint8_t>(t));
    }
    bool mixed = false;
    for (uint8_t t : c.layer_sliding) mixed |= t != c.layer_sliding[0];
    RequireAllowed(rules->mixed_layer_types || !mixed, c, "model.layer_types", "(mixed full and sliding)");
  } else if (c.sliding_window > 0) {
    c.layer_sliding.assign(c.num_layers, 1);  // Mistral: every layer slides
  }

  ReadExperts(file, *rules, c);
  c.rope_scaling = ReadRopeScaling(file);
  if (Has(file, "model.rope_local_theta")) {
    c.rope_local_theta = static_cast<float>(PositiveFinite(file, "model.rope_local_theta"));
    RequireAllowed(rules->gemma_scales, c, "model.rope_local_theta", std::to_string(c.rope_local_theta));
  }
}

}  // namespace awqcore
