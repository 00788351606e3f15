// ReadModelConfig / LoadModelWeights (model_loader.h): from a validated
// AwqbinFile to the typed config and weight pointers the forward pass uses
// (docs/format.md).
//
// The file's structure is already known to be sound (AwqbinFile::Open); here
// the hyperparameters are checked for what the compute code assumes (heads
// divide evenly, groups tile every input width, ids index the vocabulary) and
// every tensor is checked to have exactly the dtype and shape those
// hyperparameters imply, so transformer.cpp can trust them without checks.

#include <algorithm>
#include <cstdint>
#include <limits>
#include <optional>
#include <set>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "model_loader.h"
#include "ops/embedding_table.h"
#include "ops/int4_linear.h"
#include "ops/int4_tiles.h"
#include "text_checks.h"
#include "tokenizer/json.h"

namespace awqcore {
namespace {

constexpr int64_t kIntMax = std::numeric_limits<int32_t>::max();

// A size that must be positive and fit the int fields of ModelConfig.
int PositiveInt(const AwqbinFile& file, const char* key) {
  int64_t value = file.RequireInt(key);
  if (value < 1 || value > kIntMax) FailFormat(key, "=", value, " must be in 1..", kIntMax);
  return static_cast<int>(value);
}

// A float in [low, high]: positive and finite is not enough for a value whose
// meaning bounds it; `why` says where the bounds come from.
float FloatInRange(const AwqbinFile& file, const char* key, double low, double high,
                   const char* why) {
  const double value = file.RequireFloat(key);
  if (!(value >= low && value <= high)) {
    FailFormat(key, "=", value, " is outside [", low, ", ", high, "] (", why, ")");
  }
  return static_cast<float>(value);
}

bool Flag(const AwqbinFile& file, const char* key) {
  int64_t value = file.RequireInt(key);
  if (value != 0 && value != 1) FailFormat(key, "=", value, " must be 0 or 1");
  return value == 1;
}

int TokenId(int64_t id, int vocab_size, const char* key) {
  if (id < 0 || id >= vocab_size) {
    FailFormat(key, ": token id ", id, " is outside the vocabulary [0, ", vocab_size, ")");
  }
  return static_cast<int>(id);
}

void RequireDivides(int group_size, int64_t width, const char* what) {
  if (width % group_size != 0) {
    FailFormat("quant.group_size=", group_size, " does not divide ", what, "=", width);
  }
}

// Resolves tensors by name, naming the architecture when one is missing so the
// user can tell an incomplete export from a wrong --arch. Records every name it
// resolves, so that RequireAllUsed can reject what the model never reads.
class TensorResolver {
 public:
  TensorResolver(const AwqbinFile& file, const ModelConfig& config)
      : file_(file), config_(config) {}

  const float* F32(const std::string& name, std::vector<uint64_t> dims) const {
    return reinterpret_cast<const float*>(Get(name, DType::kF32, dims).data);
  }
  // f16 tensors are handed on as raw bits; half.h converts them.
  const uint16_t* F16(const std::string& name, std::vector<uint64_t> dims) const {
    return reinterpret_cast<const uint16_t*>(Get(name, DType::kF16, dims).data);
  }
  const uint8_t* U8(const std::string& name, std::vector<uint64_t> dims) const {
    return Get(name, DType::kU8, dims).data;
  }

  // An f32 tensor of the decoder-layer description: required when `used`,
  // else rejected when present (`unused_because` names the key that leaves it
  // unused), so a weight the forward pass would ignore cannot go unnoticed.
  const float* Optional(const std::string& name, std::vector<uint64_t> dims, bool used,
                        const char* unused_because) const {
    if (used) return F32(name, std::move(dims));
    if (file_.Find(name) != nullptr) {
      FailFormat("tensor '", name, "' is not used by this model (", unused_because, ")");
    }
    return nullptr;
  }

  // The table `prefix` [vocab, d] ("model.embed_tokens" or "lm_head") in
  // whichever form the file holds: prefix.weight f16 [vocab, d], or
  // prefix.weight_q8 i8 [vocab, d] with prefix.weight_q8_scales f16
  // [vocab, d/32]. Either int8 tensor alone selects the int8 form, so a file
  // missing the other is told which one; with no tensor at all, the message
  // names the f16 form, the one every file could have.
  EmbeddingTable Table(const std::string& prefix) const {
    const std::string f16_name = prefix + ".weight";
    const std::string q8_name = prefix + ".weight_q8";
    const std::string scales_name = prefix + ".weight_q8_scales";
    const bool has_q8 = file_.Find(q8_name) != nullptr || file_.Find(scales_name) != nullptr;
    if (has_q8 && file_.Find(f16_name) != nullptr) {
      FailFormat("tensors '", f16_name, "' and '", q8_name,
                 "': the file holds both forms of one table (expected one)");
    }
    const uint64_t vocab = static_cast<uint64_t>(config_.vocab_size);
    const uint64_t d = static_cast<uint64_t>(config_.hidden_size);
    EmbeddingTable table;
    table.rows = config_.vocab_size;
    table.d = config_.hidden_size;
    if (!has_q8) {
      table.f16 = F16(f16_name, {vocab, d});
      return table;
    }
    // ReadModelConfig's d % group_size == 0 implies this for group sizes
    // 32/64/128; checked here too since the int8 kernels rely on it.
    if (d % EmbeddingTable::kBlock != 0) {
      FailFormat("tensor '", q8_name, "': model.hidden_size=", d, " is not a multiple of ",
                 EmbeddingTable::kBlock, " (int8 tables have one scale per 32 columns)");
    }
    table.q8 = reinterpret_cast<const int8_t*>(Get(q8_name, DType::kI8, {vocab, d}).data);
    table.q8_scales = F16(scales_name, {vocab, d / EmbeddingTable::kBlock});
    return table;
  }

  // Whether the file stores the lm_head as a 4-bit linear (docs/format.md):
  // any of its three tensors selects that form, so a file missing another is
  // told which one (Linear). Only an untied file can, and never with a table
  // form of the lm_head as well.
  bool HasInt4LmHead() const {
    std::string present;
    for (const char* suffix : {".qweight", ".scales", ".zeros"}) {
      if (present.empty() && file_.Find(std::string("lm_head") + suffix) != nullptr) {
        present = std::string("lm_head") + suffix;
      }
    }
    if (present.empty()) return false;
    if (config_.tie_word_embeddings) {
      FailFormat("tensor '", present, "': model.tie_word_embeddings=1, but an int4 lm_head is "
                 "stored only in untied files (the embedding table stays a table)");
    }
    for (const char* suffix : {".weight", ".weight_q8", ".weight_q8_scales"}) {
      if (file_.Find(std::string("lm_head") + suffix) != nullptr) {
        FailFormat("tensors '", present, "' and 'lm_head", suffix,
                   "': the file holds two forms of the lm_head (expected one)");
      }
    }
    return true;
  }

  // The three (or four, with a bias) tensors of a 4-bit linear W [out, in]:
  //   P.qweight u8 [out, in/2], P.scales f16 [out, in/g], P.zeros u8 [out, in/g],
  //   P.bias f32 [out].
  // stack > 0: E = stack linears stacked expert-major, each tensor with a
  // leading dimension E; the result is expert 0's view (Experts).
  Int4Linear Linear(const std::string& prefix, int64_t out, int64_t in, bool has_bias,
                    uint64_t stack = 0) const {
    const uint64_t rows = static_cast<uint64_t>(out);
    const uint64_t groups = static_cast<uint64_t>(in / config_.group_size);
    const auto dims = [stack](uint64_t r, uint64_t c) {
      return stack > 0 ? std::vector<uint64_t>{stack, r, c} : std::vector<uint64_t>{r, c};
    };
    Int4Linear linear;
    linear.out = static_cast<int>(out);
    linear.in = static_cast<int>(in);
    linear.group_size = config_.group_size;
    linear.qweight = U8(prefix + ".qweight", dims(rows, static_cast<uint64_t>(in / 2)));
    linear.scales = F16(prefix + ".scales", dims(rows, groups));
    linear.zeros = U8(prefix + ".zeros", dims(rows, groups));
    // Zero points are 4-bit codes (docs/format.md): the kernels subtract them
    // from 4-bit weights in narrow integer lanes, so a larger byte would give
    // results that differ between kernels rather than an error.
    for (uint64_t i = 0; i < std::max<uint64_t>(stack, 1) * rows * groups; ++i) {
      if (linear.zeros[i] > 15) {
        FailFormat("tensor '", prefix, ".zeros': element ", i, " is ", unsigned{linear.zeros[i]},
                   ", outside the 4-bit range 0..15");
      }
    }
    if (has_bias) linear.bias = F32(prefix + ".bias", {rows});
    return linear;
  }

  // Expert e's slice of the stacked tensors P.{qweight,scales,zeros}, shapes
  // [E, out, in/2], [E, out, in/g], [E, out, in/g] (docs/format.md): each of
  // the E views is a 4-bit linear [out, in] of its own. A leading dimension
  // other than E is named as an expert count, the likely misreading.
  std::vector<Int4Linear> Experts(const std::string& prefix, int64_t out, int64_t in) const {
    const uint64_t experts = static_cast<uint64_t>(config_.num_experts);
    for (const char* part : {".qweight", ".scales", ".zeros"}) {
      const TensorView* tensor = file_.Find(prefix + part);
      if (tensor != nullptr && (tensor->dims.empty() || tensor->dims[0] != experts)) {
        FailFormat("tensor '", prefix, part, "' holds ",
                   tensor->dims.empty() ? 0 : tensor->dims[0],
                   " experts (its leading dimension), model.num_experts=", experts);
      }
    }
    const Int4Linear stacked = Linear(prefix, out, in, false, experts);
    const size_t code_bytes = static_cast<size_t>(out) * (in / 2);          // per expert
    const size_t groups = static_cast<size_t>(out) * (in / config_.group_size);
    std::vector<Int4Linear> views(experts, stacked);
    for (size_t e = 0; e < experts; ++e) {
      views[e].qweight = stacked.qweight + e * code_bytes;
      views[e].scales = stacked.scales + e * groups;
      views[e].zeros = stacked.zeros + e * groups;
    }
    return views;
  }

  // A tensor the loader did not resolve is a file that says one thing in its
  // metadata and another in its tensors (num_layers=1 over two layers of
  // weights, a tied file with an lm_head, a bias the config turns off): the
  // model would run without it, silently. Reject it by name.
  void RequireAllUsed() const {
    for (const TensorView& tensor : file_.tensors()) {
      if (used_.count(tensor.name) != 0) continue;
      const std::string name = EscapeForMessage(tensor.name);
      std::string why = "not used by architecture " + config_.architecture;
      if (config_.tie_word_embeddings && tensor.name.rfind("lm_head.", 0) == 0) {
        why = "model.tie_word_embeddings=1: the logits use model.embed_tokens";
      } else if (tensor.name.rfind("model.layers.", 0) == 0) {
        why += " with model.num_layers=" + std::to_string(config_.num_layers) +
               (config_.attention_bias ? "" : ", model.attention_bias=0");
      }
      FailFormat("tensor '", name, "' is in the file but the model does not read it (", why, ")");
    }
  }

 private:
  const TensorView& Get(const std::string& name, DType dtype,
                        const std::vector<uint64_t>& dims) const {
    if (file_.Find(name) == nullptr) {
      FailFormat("missing tensor '", name, "' required by architecture ", config_.architecture);
    }
    used_.insert(name);
    return file_.Require(name, dtype, dims);
  }

  const AwqbinFile& file_;
  const ModelConfig& config_;
  mutable std::set<std::string> used_;  // names Get resolved
};

// Layer l's router and experts (docs/format.md, mixture of experts). A dense
// MLP tensor in the layer is named, as the file's two descriptions of it
// disagree.
void LoadExperts(const AwqbinFile& file, const TensorResolver& tensors, const ModelConfig& config,
                 int l, MoeWeights& moe) {
  const std::string mlp = "model.layers." + std::to_string(l) + ".mlp.";
  for (const char* dense : {"gate_proj", "up_proj", "down_proj"}) {
    const std::string name = mlp + dense + ".qweight";
    if (file.Find(name) != nullptr) {
      FailFormat("tensor '", name, "' is a dense MLP in a mixture-of-experts layer (model.moe_layers[",
                 l, "]=1)");
    }
  }
  const uint64_t experts = static_cast<uint64_t>(config.num_experts);
  const uint64_t d = static_cast<uint64_t>(config.hidden_size);
  const std::string router = mlp + "gate.weight";
  const TensorView* router_tensor = file.Find(router);
  if (router_tensor != nullptr && router_tensor->dims.size() == 2 && router_tensor->dims[0] != experts) {
    FailFormat("tensor '", router, "' (the router) has ", router_tensor->dims[0],
               " rows, model.num_experts=", experts);
  }
  moe.router = tensors.F32(router, {experts, d});
  const int64_t f = config.moe_intermediate_size;
  moe.gate = tensors.Experts(mlp + "experts.gate_proj", f, d);
  moe.up = tensors.Experts(mlp + "experts.up_proj", f, d);
  moe.down = tensors.Experts(mlp + "experts.down_proj", d, f);
}

// A dense layer of a model with experts: a router or expert tensor there is
// named (RequireAllUsed would only call it unused).
void RejectExperts(const AwqbinFile& file, int l, const std::string& mlp) {
  for (const std::string& name : {mlp + "gate.weight", mlp + "experts.gate_proj.qweight",
                                  mlp + "experts.up_proj.qweight", mlp + "experts.down_proj.qweight"}) {
    if (file.Find(name) != nullptr) {
      FailFormat("tensor '", name, "' holds experts but layer ", l,
                 " is a dense MLP layer (model.moe_layers[", l, "]=0)");
    }
  }
}

}  // namespace

ModelConfig ReadModelConfig(const AwqbinFile& file) {
  ModelConfig c;
  c.architecture = file.RequireString("general.architecture");
  RequireKnownArchitecture(c.architecture);
  c.name = file.GetString("general.name").value_or("");

  c.vocab_size = PositiveInt(file, "model.vocab_size");
  c.hidden_size = PositiveInt(file, "model.hidden_size");
  c.intermediate_size = PositiveInt(file, "model.intermediate_size");
  c.num_layers = PositiveInt(file, "model.num_layers");
  c.num_heads = PositiveInt(file, "model.num_heads");
  c.num_kv_heads = PositiveInt(file, "model.num_kv_heads");
  c.head_dim = PositiveInt(file, "model.head_dim");
  c.max_position_embeddings = PositiveInt(file, "model.max_position_embeddings");
  // Published checkpoints use rotary bases of 1e4 (Llama 2, Gemma 3's local
  // layers) to 1e6-1e7 (Qwen, Mistral, long-context Llama), and norm epsilons
  // of 1e-6 to 1e-5; the bounds leave two or more orders of magnitude either
  // side, so what falls outside is a misread field (1e-45 and 3.4e38 are
  // float's smallest denormal and largest value), not a model.
  c.rope_theta = FloatInRange(file, "model.rope_theta", 100.0, 1e10,
                              "a rotary base: 1e4 to 1e7 in published models");
  c.rms_norm_eps = FloatInRange(file, "model.rms_norm_eps", 1e-12, 1e-2,
                                "an epsilon far below the mean square it is added to");
  c.tie_word_embeddings = Flag(file, "model.tie_word_embeddings");
  c.attention_bias = Flag(file, "model.attention_bias");

  // Grouped-query attention maps query head h to kv head h / (H / KV).
  if (c.num_heads % c.num_kv_heads != 0) {
    FailFormat("model.num_kv_heads=", c.num_kv_heads, " does not divide model.num_heads=", c.num_heads);
  }
  // Rotate-half pairs dimension i with i + head_dim/2.
  if (c.head_dim % 2 != 0) FailFormat("model.head_dim=", c.head_dim, " must be even");
  // Head counts and head_dim trade against each other at equal tensor sizes
  // (H=64, KV=32, hd=2 has the q/k/v shapes of H=4, KV=2, hd=32 on d=128), so
  // the shapes cannot catch a corrupt head count. hd = d / H cannot be required
  // either: qwen3, gemma3 and mistral (Nemo) define head_dim independently
  // (Qwen3-0.6B: d=1024, H=16, hd=128). What every family shares is a head
  // wide enough to carry a rotary spectrum: published checkpoints use hd of 64
  // to 256, random test models 8 to 32; a head of 2 or 4 dimensions has one or
  // two rotary frequencies and is a misread count, not a model.
  constexpr int kMinHeadDim = 8;
  if (c.head_dim < kMinHeadDim) {
    FailFormat("model.head_dim=", c.head_dim, " is below ", kMinHeadDim, " (model.num_heads=",
               c.num_heads, ", model.num_kv_heads=", c.num_kv_heads, ", model.hidden_size=",
               c.hidden_size, "): heads this narrow mean a head count that contradicts the model");
  }
  // The q projection's width H*hd is an Int4Linear::out (an int).
  const int64_t q_width = int64_t{c.num_heads} * c.head_dim;
  if (q_width > kIntMax) {
    FailFormat("model.num_heads * model.head_dim = ", q_width, " exceeds ", kIntMax);
  }

  c.quant_method = file.RequireString("quant.method");
  // Informative only: every method stores the same asymmetric int4 groups.
  if (c.quant_method != "rtn" && c.quant_method != "awq" && c.quant_method != "gptq" &&
      c.quant_method != "awq-gptq") {
    FailFormat("quant.method='", EscapeForMessage(c.quant_method),
               "' (expected rtn, awq, gptq or awq-gptq)");
  }
  const int64_t bits = file.RequireInt("quant.bits");
  if (bits != 4) FailFormat("quant.bits=", bits, " is not supported (this runtime reads 4-bit weights)");
  c.bits = 4;
  const int64_t group_size = file.RequireInt("quant.group_size");
  if (group_size != 32 && group_size != 64 && group_size != 128) {
    FailFormat("quant.group_size=", group_size, " (expected 32, 64 or 128)");
  }
  c.group_size = static_cast<int>(group_size);
  // Each linear's input width is cut into whole groups: d feeds q/k/v/gate/up,
  // H*hd feeds o, ffn feeds down.
  RequireDivides(c.group_size, c.hidden_size, "model.hidden_size");
  RequireDivides(c.group_size, c.intermediate_size, "model.intermediate_size");
  RequireDivides(c.group_size, q_width, "model.num_heads * model.head_dim");
  const int64_t zero_point = file.RequireInt("quant.zero_point");
  if (zero_point != 1) {
    FailFormat("quant.zero_point=", zero_point, " is not supported (expected 1: integer zero points)");
  }

  // The tokenizer is optional (an empty string: none), but one that is there
  // must parse, or the error would surface only when Python builds it.
  const std::string tokenizer_json = file.GetString("tokenizer.json").value_or("");
  if (!tokenizer_json.empty()) {
    // The tokenizer's own reader checks the syntax (tokenizer/json.h), so the
    // loader and Tokenizer::FromModel agree on what parses.
    try {
      json::Parse(tokenizer_json, "metadata key 'tokenizer.json'");
    } catch (const FormatError& e) {
      FailFormat(e.what());
    }
  }

  const int64_t bos = file.RequireInt("tokenizer.bos_token_id");
  c.bos_token_id = bos == -1 ? -1 : TokenId(bos, c.vocab_size, "tokenizer.bos_token_id");
  std::optional<std::vector<int64_t>> eos = file.GetIntArray("tokenizer.eos_token_ids");
  if (!eos) FailFormat("metadata key 'tokenizer.eos_token_ids' is missing");
  for (int64_t id : *eos)
    c.eos_token_ids.push_back(TokenId(id, c.vocab_size, "tokenizer.eos_token_ids"));
  ReadLayerDescription(file, c);
  return c;
}

ModelWeights LoadModelWeights(const AwqbinFile& file, const ModelConfig& config) {
  const TensorResolver tensors(file, config);
  const int64_t d = config.hidden_size;
  const int64_t ffn = config.intermediate_size;
  const int64_t q_width = int64_t{config.num_heads} * config.head_dim;      // H*hd
  const int64_t kv_width = int64_t{config.num_kv_heads} * config.head_dim;  // KV*hd
  const std::vector<uint64_t> norm_dims = {static_cast<uint64_t>(d)};
  const std::vector<uint64_t> head_norm_dims = {static_cast<uint64_t>(config.head_dim)};
  const bool sandwich = config.norm_placement == NormPlacement::kSandwich;

  ModelWeights w;
  w.embed = tensors.Table("model.embed_tokens");
  if (tensors.HasInt4LmHead()) {
    w.lm_head_int4 = tensors.Linear("lm_head", config.vocab_size, d, false);
  } else {
    w.lm_head = config.tie_word_embeddings ? w.embed : tensors.Table("lm_head");
  }
  w.final_norm = tensors.F32("model.norm.weight", norm_dims);

  // Layers are appended as their tensors resolve rather than allocated up
  // front: a corrupt num_layers of 16M must fail at the first missing tensor,
  // not first zero 16M * sizeof(LayerWeights) = 6 GB.
  for (int l = 0; l < config.num_layers; ++l) {
    const std::string prefix = "model.layers." + std::to_string(l) + ".";
    const std::string attn = prefix + "self_attn.";
    const std::string mlp = prefix + "mlp.";
    const bool bias = config.attention_bias;  // Qwen2: q/k/v only, never o
    LayerWeights layer;
    layer.input_norm = tensors.F32(prefix + "input_layernorm.weight", norm_dims);
    layer.q = tensors.Linear(attn + "q_proj", q_width, d, bias);
    layer.k = tensors.Linear(attn + "k_proj", kv_width, d, bias);
    layer.v = tensors.Linear(attn + "v_proj", kv_width, d, bias);
    layer.q_norm = tensors.Optional(attn + "q_norm.weight", head_norm_dims, config.qk_norm, "model.qk_norm=0");
    layer.k_norm = tensors.Optional(attn + "k_norm.weight", head_norm_dims, config.qk_norm, "model.qk_norm=0");
    layer.o = tensors.Linear(attn + "o_proj", d, q_width, false);
    layer.post_norm = tensors.F32(prefix + "post_attention_layernorm.weight", norm_dims);
    layer.pre_ffn_norm = tensors.Optional(prefix + "pre_feedforward_layernorm.weight", norm_dims,
                                          sandwich, "model.norm_placement=pre");
    layer.post_ffn_norm = tensors.Optional(prefix + "post_feedforward_layernorm.weight", norm_dims,
                                           sandwich, "model.norm_placement=pre");
    if (config.num_experts > 0 && config.moe_layers[l] != 0) {
      LoadExperts(file, tensors, config, l, layer.moe);
    } else {
      if (config.num_experts > 0) RejectExperts(file, l, mlp);
      layer.gate = tensors.Linear(mlp + "gate_proj", ffn, d, false);
      layer.up = tensors.Linear(mlp + "up_proj", ffn, d, false);
      layer.down = tensors.Linear(mlp + "down_proj", d, ffn, false);
    }
    w.layers.push_back(layer);
  }
  tensors.RequireAllUsed();
  // Load-time layouts for the CPU kernels: copies beside the file's tensors
  // (tile scales), a table moved into tiles, the int4 codes regrouped in
  // place in the loaded copy (ops/int4_tiles.h).
  AddTileScales(w);
  AddTableTiles(w);
  AddInt4Tiles(w);
  return w;
}

}  // namespace awqcore
