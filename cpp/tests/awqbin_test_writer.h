// A .awqbin writer for the C++ tests, written from docs/format.md and sharing
// no code with the reader (it has its own bitwise CRC-32), so a misreading of
// the spec on one side is caught by the other. Also builds the tiny Llama/Qwen2
// models the reader, loader, session and engine tests load.
#pragma once

#include <unistd.h>

#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <random>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "awqbin_file.h"
#include "half.h"
#include "awqcore/awqcore.h"

using awqcore::AwqbinFile;
using awqcore::DType;
using awqcore::Error;
using awqcore::FormatError;
using awqcore::MetaValue;
using awqcore::Model;
using Bytes = std::vector<uint8_t>;

namespace {

// ---- the writer ----

uint32_t ReferenceCrc32(const uint8_t* data, size_t n) {
  uint32_t crc = 0xFFFFFFFFu;
  for (size_t i = 0; i < n; ++i) {
    crc ^= data[i];
    for (int bit = 0; bit < 8; ++bit) crc = (crc & 1) ? (crc >> 1) ^ 0xEDB88320u : crc >> 1;
  }
  return ~crc;
}

void Put(Bytes& out, uint64_t value, int width) {
  for (int i = 0; i < width; ++i) out.push_back(static_cast<uint8_t>(value >> (8 * i)));
}
void Patch(Bytes& out, size_t at, uint64_t value, int width) {
  for (int i = 0; i < width; ++i) out[at + i] = static_cast<uint8_t>(value >> (8 * i));
}
uint64_t RoundUp64(uint64_t n) { return (n + 63) / 64 * 64; }

MetaValue Int(int64_t v) { return {MetaValue::Type::kInt, v, 0.0, {}, {}}; }
MetaValue Float(double v) { return {MetaValue::Type::kFloat, 0, v, {}, {}}; }
MetaValue Str(std::string v) { return {MetaValue::Type::kString, 0, 0.0, std::move(v), {}}; }
MetaValue Ints(std::vector<int64_t> v) { return {MetaValue::Type::kIntArray, 0, 0.0, {}, v}; }

struct TensorEntry {
  std::string name;
  DType dtype;
  std::vector<uint64_t> dims;
  Bytes bytes;
  // Directory values that differ from the real layout, to build bad files.
  std::optional<uint64_t> offset_override;
  std::optional<uint64_t> nbytes_override;
};

struct FileSpec {
  uint32_t version = 1;
  std::vector<std::pair<std::string, MetaValue>> meta;  // in file order; may repeat
  std::vector<TensorEntry> tensors;
};

struct Sections {
  Bytes meta, dir, data;
  std::vector<uint64_t> offsets;  // where each tensor's bytes really are in `data`
};

Sections Encode(const FileSpec& spec) {
  Sections s;
  Put(s.meta, spec.meta.size(), 4);
  for (const auto& [key, value] : spec.meta) {
    Put(s.meta, key.size(), 2);
    s.meta.insert(s.meta.end(), key.begin(), key.end());
    Put(s.meta, static_cast<uint8_t>(value.type), 1);
    switch (value.type) {
      case MetaValue::Type::kInt: Put(s.meta, static_cast<uint64_t>(value.i), 8); break;
      case MetaValue::Type::kFloat: {
        uint64_t bits;
        std::memcpy(&bits, &value.f, 8);
        Put(s.meta, bits, 8);
        break;
      }
      case MetaValue::Type::kString:
        Put(s.meta, value.s.size(), 8);
        s.meta.insert(s.meta.end(), value.s.begin(), value.s.end());
        break;
      case MetaValue::Type::kIntArray:
        Put(s.meta, value.ints.size(), 8);
        for (int64_t v : value.ints) Put(s.meta, static_cast<uint64_t>(v), 8);
        break;
    }
  }
  Put(s.dir, spec.tensors.size(), 4);
  for (const TensorEntry& t : spec.tensors) {
    uint64_t offset = RoundUp64(s.data.size());
    s.offsets.push_back(offset);
    s.data.resize(offset, 0);
    s.data.insert(s.data.end(), t.bytes.begin(), t.bytes.end());
    Put(s.dir, t.name.size(), 2);
    s.dir.insert(s.dir.end(), t.name.begin(), t.name.end());
    Put(s.dir, static_cast<uint8_t>(t.dtype), 1);
    Put(s.dir, t.dims.size(), 1);
    for (uint64_t dim : t.dims) Put(s.dir, dim, 8);
    Put(s.dir, t.offset_override.value_or(offset), 8);
    Put(s.dir, t.nbytes_override.value_or(t.bytes.size()), 8);
    Put(s.dir, ReferenceCrc32(t.bytes.data(), t.bytes.size()), 4);
  }
  return s;
}

uint64_t DataOffset(const Sections& s) { return RoundUp64(128 + s.meta.size() + s.dir.size()); }

Bytes Assemble(const Sections& s, uint32_t version = 1) {
  const uint64_t dir_offset = 128 + s.meta.size();
  const uint64_t data_offset = DataOffset(s);
  Bytes file = {'A', 'W', 'Q', 'C', 'O', 'R', 'E', '\0'};
  Put(file, version, 4);
  Put(file, 128, 4);
  Put(file, 128, 8);
  Put(file, s.meta.size(), 8);
  Put(file, dir_offset, 8);
  Put(file, s.dir.size(), 8);
  Put(file, data_offset, 8);
  Put(file, s.data.size(), 8);
  Put(file, data_offset + s.data.size(), 8);
  Put(file, ReferenceCrc32(s.meta.data(), s.meta.size()), 4);
  Put(file, ReferenceCrc32(s.dir.data(), s.dir.size()), 4);
  Put(file, ReferenceCrc32(file.data(), 80), 4);
  file.resize(128, 0);
  file.insert(file.end(), s.meta.begin(), s.meta.end());
  file.insert(file.end(), s.dir.begin(), s.dir.end());
  file.resize(data_offset, 0);
  file.insert(file.end(), s.data.begin(), s.data.end());
  return file;
}

Bytes Build(const FileSpec& spec) { return Assemble(Encode(spec), spec.version); }

// Sets a preamble field and re-signs the preamble, so only that field is wrong.
void PatchPreamble(Bytes& file, size_t at, uint64_t value, int width) {
  Patch(file, at, value, width);
  Patch(file, 80, ReferenceCrc32(file.data(), 80), 4);
}

// ---- the tiny model: d=64, 2 layers, heads 4/2, hd 16, ffn 128, vocab 50, g=32 ----

constexpr uint64_t kD = 64, kLayers = 2, kHeads = 4, kKvHeads = 2, kHeadDim = 16, kFfn = 128,
                   kVocab = 50, kGroup = 32;
const char kTokenizerJson[] = R"({"version":"1.0","model":{"type":"BPE","vocab":{}}})";

// Distinct, reproducible bytes per tensor (FNV-1a of the name as the seed).
Bytes Pattern(const std::string& name, uint64_t n) {
  uint32_t seed = 2166136261u;
  for (char c : name) seed = (seed ^ static_cast<uint8_t>(c)) * 16777619u;
  Bytes bytes(n);
  for (uint64_t i = 0; i < n; ++i) bytes[i] = static_cast<uint8_t>(seed + i * 7 + (seed >> 8));
  return bytes;
}

void AddTensor(FileSpec& spec, const std::string& name, DType dtype, std::vector<uint64_t> dims) {
  const uint64_t width = awqcore::DTypeSize(dtype);
  uint64_t n = width;
  for (uint64_t dim : dims) n *= dim;
  Bytes bytes = Pattern(name, n);
  // The reader rejects NaN and infinity: clearing the top exponent bit (bit 6
  // of the high byte, little-endian) keeps every f16/f32 value finite, below 2.
  if (dtype == DType::kF16 || dtype == DType::kF32) {
    for (uint64_t high = width - 1; high < n; high += width) bytes[high] &= 0xBF;
  }
  spec.tensors.push_back({name, dtype, std::move(dims), std::move(bytes), {}, {}});
}

void AddLinear(FileSpec& spec, const std::string& prefix, uint64_t out, uint64_t in, bool bias) {
  AddTensor(spec, prefix + ".qweight", DType::kU8, {out, in / 2});
  AddTensor(spec, prefix + ".scales", DType::kF16, {out, in / kGroup});
  AddTensor(spec, prefix + ".zeros", DType::kU8, {out, in / kGroup});
  for (uint8_t& zero : spec.tensors.back().bytes) zero &= 15;  // 4-bit codes
  if (bias) AddTensor(spec, prefix + ".bias", DType::kF32, {out});
}

// The table `prefix` [vocab, d] in f16, or in int8 with one f16 scale per 32
// columns (docs/format.md).
void AddTable(FileSpec& spec, const std::string& prefix, bool int8) {
  if (!int8) {
    AddTensor(spec, prefix + ".weight", DType::kF16, {kVocab, kD});
    return;
  }
  AddTensor(spec, prefix + ".weight_q8", DType::kI8, {kVocab, kD});
  AddTensor(spec, prefix + ".weight_q8_scales", DType::kF16, {kVocab, kD / 32});
}

// llama: untied lm_head, no biases. qwen2: tied embeddings, q/k/v biases.
// mistral: llama with a sliding window of 8 on every layer. qwen3: tied,
// q/k norms. gemma3: tied, the whole Gemma 3 description (sandwich norms,
// GeGLU, q/k norms, scales, soft-cap, layer 0 sliding with a local base).
// The embedding and lm_head tables are f16, or int8 with `int8_tables`.
FileSpec TinyModel(const std::string& arch, bool int8_tables = false) {
  const bool qwen2 = arch == "qwen2";
  const bool gemma3 = arch == "gemma3";
  const bool qk_norm = arch == "qwen3" || gemma3;
  const bool tied = qwen2 || qk_norm;
  FileSpec spec;
  spec.meta = {
      {"general.architecture", Str(arch)},
      {"general.name", Str("tiny-" + arch)},
      {"general.source", Str("test_awqbin_file.cpp")},
      {"model.vocab_size", Int(kVocab)},
      {"model.hidden_size", Int(kD)},
      {"model.intermediate_size", Int(kFfn)},
      {"model.num_layers", Int(kLayers)},
      {"model.num_heads", Int(kHeads)},
      {"model.num_kv_heads", Int(kKvHeads)},
      {"model.head_dim", Int(kHeadDim)},
      {"model.max_position_embeddings", Int(256)},
      {"model.rope_theta", Float(1e6)},
      {"model.rms_norm_eps", Float(1e-6)},
      {"model.tie_word_embeddings", Int(tied)},
      {"model.attention_bias", Int(qwen2)},
      {"quant.method", Str("awq")},
      {"quant.bits", Int(4)},
      {"quant.group_size", Int(kGroup)},
      {"quant.zero_point", Int(1)},
      {"tokenizer.json", Str(kTokenizerJson)},
      {"tokenizer.chat_template", Str("")},
      {"tokenizer.bos_token_id", Int(1)},
      {"tokenizer.eos_token_ids", Ints({2, 3})},
  };
  if (arch == "mistral") spec.meta.emplace_back("model.sliding_window", Int(8));
  if (qk_norm) spec.meta.emplace_back("model.qk_norm", Int(1));
  if (gemma3) {
    spec.meta.emplace_back("model.norm_placement", Str("sandwich"));
    spec.meta.emplace_back("model.activation", Str("gelu_tanh"));
    spec.meta.emplace_back("model.attention_scale", Float(0.2));
    spec.meta.emplace_back("model.embedding_scale", Float(8.0));
    spec.meta.emplace_back("model.final_logit_softcap", Float(30.0));
    spec.meta.emplace_back("model.sliding_window", Int(4));
    spec.meta.emplace_back("model.layer_types", Ints({1, 0}));
    spec.meta.emplace_back("model.rope_local_theta", Float(10000.0));
  }
  AddTable(spec, "model.embed_tokens", int8_tables);
  for (uint64_t l = 0; l < kLayers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    AddTensor(spec, p + "input_layernorm.weight", DType::kF32, {kD});
    AddLinear(spec, p + "self_attn.q_proj", kHeads * kHeadDim, kD, qwen2);
    AddLinear(spec, p + "self_attn.k_proj", kKvHeads * kHeadDim, kD, qwen2);
    AddLinear(spec, p + "self_attn.v_proj", kKvHeads * kHeadDim, kD, qwen2);
    if (qk_norm) {
      AddTensor(spec, p + "self_attn.q_norm.weight", DType::kF32, {kHeadDim});
      AddTensor(spec, p + "self_attn.k_norm.weight", DType::kF32, {kHeadDim});
    }
    AddLinear(spec, p + "self_attn.o_proj", kD, kHeads * kHeadDim, false);
    AddTensor(spec, p + "post_attention_layernorm.weight", DType::kF32, {kD});
    if (gemma3) {
      AddTensor(spec, p + "pre_feedforward_layernorm.weight", DType::kF32, {kD});
      AddTensor(spec, p + "post_feedforward_layernorm.weight", DType::kF32, {kD});
    }
    AddLinear(spec, p + "mlp.gate_proj", kFfn, kD, false);
    AddLinear(spec, p + "mlp.up_proj", kFfn, kD, false);
    AddLinear(spec, p + "mlp.down_proj", kD, kFfn, false);
  }
  AddTensor(spec, "model.norm.weight", DType::kF32, {kD});
  if (!tied) AddTable(spec, "lm_head", int8_tables);
  return spec;
}

size_t TensorIndex(const FileSpec& spec, const std::string& name) {
  for (size_t i = 0; i < spec.tensors.size(); ++i) {
    if (spec.tensors[i].name == name) return i;
  }
  throw std::logic_error("test bug: no tensor " + name);
}
void SetMeta(FileSpec& spec, const std::string& key, MetaValue value) {
  for (auto& entry : spec.meta) {
    if (entry.first == key) {
      entry.second = std::move(value);
      return;
    }
  }
  throw std::logic_error("test bug: no key " + key);
}

// The int4 linears of E experts stacked expert-major (docs/format.md):
// P.qweight [E, out, in/2], P.scales, P.zeros [E, out, in/g].
void AddExperts(FileSpec& spec, const std::string& prefix, uint64_t experts, uint64_t out, uint64_t in) {
  AddTensor(spec, prefix + ".qweight", DType::kU8, {experts, out, in / 2});
  AddTensor(spec, prefix + ".scales", DType::kF16, {experts, out, in / kGroup});
  AddTensor(spec, prefix + ".zeros", DType::kU8, {experts, out, in / kGroup});
  for (uint8_t& zero : spec.tensors.back().bytes) zero &= 15;  // 4-bit codes
}

// A mixture-of-experts model: mixtral (Mistral's attention, window 8, every
// layer MoE, renormalized) or qwen3_moe (Qwen3's, layer 0 a dense MLP, no
// renormalization), with kExperts experts of width kExpertFfn, top-2.
constexpr uint64_t kExperts = 4, kExpertsPerToken = 2, kExpertFfn = 64;
FileSpec TinyMoeModel(const std::string& arch) {
  const bool mixtral = arch == "mixtral";
  FileSpec dense = TinyModel(mixtral ? "mistral" : "qwen3");
  FileSpec spec;
  spec.meta = dense.meta;
  SetMeta(spec, "general.architecture", Str(arch));
  SetMeta(spec, "general.name", Str("tiny-" + arch));
  spec.meta.emplace_back("model.num_experts", Int(kExperts));
  spec.meta.emplace_back("model.num_experts_per_tok", Int(kExpertsPerToken));
  spec.meta.emplace_back("model.moe_intermediate_size", Int(kExpertFfn));
  spec.meta.emplace_back("model.norm_topk_prob", Int(mixtral));
  spec.meta.emplace_back("model.moe_layers", Ints({mixtral ? 1 : 0, 1}));
  for (TensorEntry& t : dense.tensors) {
    const bool layer0 = t.name.rfind("model.layers.0.", 0) == 0;
    if (t.name.find(".mlp.") != std::string::npos && (mixtral || !layer0)) continue;
    spec.tensors.push_back(std::move(t));
  }
  for (uint64_t l = mixtral ? 0 : 1; l < kLayers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".mlp.";
    AddTensor(spec, p + "gate.weight", DType::kF32, {kExperts, kD});
    AddExperts(spec, p + "experts.gate_proj", kExperts, kExpertFfn, kD);
    AddExperts(spec, p + "experts.up_proj", kExperts, kExpertFfn, kD);
    AddExperts(spec, p + "experts.down_proj", kExperts, kD, kExpertFfn);
  }
  return spec;
}

// ---- files on disk ----

// A per-process scratch directory, removed at exit.
class ScratchDir {
 public:
  ScratchDir()
      : path_((std::filesystem::temp_directory_path() /
               ("awqcore_test_awqbin_" + std::to_string(::getpid())))
                  .string()) {
    std::filesystem::create_directories(path_);
  }
  ~ScratchDir() { std::filesystem::remove_all(path_); }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

const std::string& TempDir() {
  static const ScratchDir dir;
  return dir.path();
}

std::string WriteFile(const Bytes& bytes, const std::string& name = "model.awqbin") {
  std::string path = TempDir() + "/" + name;
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(bytes.data()),
            static_cast<std::streamsize>(bytes.size()));
  if (!out) throw std::runtime_error("test bug: cannot write " + path);
  return path;
}

std::shared_ptr<const Model> Load(const Bytes& bytes, bool verify = true) {
  return Model::Load(WriteFile(bytes), awqcore::LoadOptions{verify});
}

// Whether `got` holds the first n bytes of `want` (a tensor's bytes).
bool SameBytes(const void* got, const Bytes& want, size_t n) {
  return got != nullptr && std::memcmp(got, want.data(), n) == 0;
}

// ---- a model that computes finite logits ----

// The writer's pattern bytes are finite but nothing like trained weights
// (scales up to 2, zero points up to 255); a session test needs a model that
// computes finite logits, so give every tensor sane random values: scales
// ~0.02 (weights of the magnitude of a trained model's), norms ~1, zero points
// in 0..15.
FileSpec TinySaneSpec(FileSpec spec) {
  std::mt19937 rng(5);
  std::uniform_real_distribution<float> uniform(-1.0f, 1.0f);
  for (TensorEntry& t : spec.tensors) {
    const bool is_scale = t.name.find(".scales") != std::string::npos;
    const bool is_zero = t.name.find(".zeros") != std::string::npos;
    const bool is_norm = t.name.find("norm") != std::string::npos;
    if (t.dtype == DType::kF16) {
      for (size_t i = 0; i < t.bytes.size(); i += 2) {
        uint16_t h = awqcore::F32ToF16(is_scale ? 0.02f * (1.5f + uniform(rng)) : uniform(rng));
        std::memcpy(&t.bytes[i], &h, 2);
      }
    } else if (t.dtype == DType::kF32) {
      for (size_t i = 0; i < t.bytes.size(); i += 4) {
        float f = is_norm ? 1.0f + 0.2f * uniform(rng) : 0.3f * uniform(rng);
        std::memcpy(&t.bytes[i], &f, 4);
      }
    } else if (is_zero) {
      for (uint8_t& b : t.bytes) b &= 15;
    }
  }
  return spec;
}

FileSpec TinySaneSpec(const char* arch) { return TinySaneSpec(TinyModel(arch)); }

std::shared_ptr<const Model> TinySaneModel(const char* arch) {
  return Load(Build(TinySaneSpec(arch)));
}

// Options that generate exactly n tokens: no stop ids end a request early.
awqcore::GenerateOptions Exactly(int n) {
  awqcore::GenerateOptions options;
  options.max_new_tokens = n;
  options.stop_ids = std::vector<int>{};
  return options;
}

// The sane llama with every final-norm weight 3e38: finite, so the file
// loads, but the normalized activations times it overflow f32 and the logits
// become inf/NaN, for the tests of how a non-finite step fails.
std::shared_ptr<const Model> OverflowingLogitsModel() {
  FileSpec spec = TinySaneSpec("llama");
  const float huge = 3e38f;
  TensorEntry& norm = spec.tensors[TensorIndex(spec, "model.norm.weight")];
  for (size_t i = 0; i < norm.bytes.size(); i += 4) std::memcpy(&norm.bytes[i], &huge, 4);
  return Load(Build(spec));
}

}  // namespace
