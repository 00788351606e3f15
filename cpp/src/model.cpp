// Model: a loaded, validated, immutable .awqbin file (see awqcore.h).

#include <string>
#include <utility>

#include "awqcore/awqcore.h"
#include "model_impl.h"
#include "model_loader.h"
#include "text_checks.h"

namespace awqcore {

std::shared_ptr<const Model> Model::Load(const std::string& path, const LoadOptions& options) {
  auto impl = std::make_unique<Impl>();
  try {
    impl->file = AwqbinFile::Open(path, options.verify_checksums);
    impl->config = ReadModelConfig(*impl->file);
    impl->weights = LoadModelWeights(*impl->file, impl->config);
  } catch (const FormatError& e) {
    // The message names the field; the path says which file, for a caller
    // that loads several ("awqbin: 'x.awqbin': tensor 'y': ...").
    const std::string message = e.what();
    const std::string prefix = "awqbin: ";
    const std::string rest = message.rfind(prefix, 0) == 0 ? message.substr(prefix.size()) : message;
    throw FormatError(prefix + "'" + EscapeForMessage(path, 4096) + "': " + rest);
  }
  // The constructor is private, so std::make_shared cannot reach it.
  return std::shared_ptr<const Model>(new Model(std::move(impl)));
}

Model::Model(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

Model::~Model() = default;

const ModelConfig& Model::config() const { return impl_->config; }

std::optional<std::string> Model::metadata_string(const std::string& key) const {
  // Not AwqbinFile::GetString, which throws on a non-string entry: asking the
  // public API for "model.hidden_size" as a string simply has no answer.
  const auto& metadata = impl_->file->metadata();
  auto it = metadata.find(key);
  if (it == metadata.end() || it->second.type != MetaValue::Type::kString) return std::nullopt;
  return it->second.s;
}

uint64_t Model::weight_bytes() const { return impl_->file->data_size(); }

namespace {

// Codes, f16 scales, zero points and bias of a 4-bit linear (docs/format.md).
uint64_t LinearBytes(const Int4Linear& w) {
  const uint64_t weights = static_cast<uint64_t>(w.out) * w.in;
  return weights / 2 + 3 * (weights / w.group_size) + (w.bias ? 4 * static_cast<uint64_t>(w.out) : 0);
}

// One row of a table: d f16, or d int8 with an f16 scale per 32 columns.
uint64_t TableRowBytes(const EmbeddingTable& t) {
  return t.f16 != nullptr ? 2 * static_cast<uint64_t>(t.d) : static_cast<uint64_t>(t.d) + 2 * (t.d / EmbeddingTable::kBlock);
}

}  // namespace

uint64_t Model::active_bytes_per_token() const {
  const ModelConfig& c = impl_->config;
  const ModelWeights& w = impl_->weights;
  const uint64_t d = c.hidden_size;
  const uint64_t norm = 4 * d, head_norm = 4 * static_cast<uint64_t>(c.head_dim);
  uint64_t bytes = TableRowBytes(w.embed) + norm;
  bytes += w.lm_head_int4.out > 0 ? LinearBytes(w.lm_head_int4) : TableRowBytes(w.lm_head) * w.lm_head.rows;
  for (const LayerWeights& layer : w.layers) {
    bytes += LinearBytes(layer.q) + LinearBytes(layer.k) + LinearBytes(layer.v) + LinearBytes(layer.o);
    bytes += norm * (layer.pre_ffn_norm != nullptr ? 4 : 2);
    if (layer.q_norm != nullptr) bytes += 2 * head_norm;
    if (layer.moe.router != nullptr) {
      const uint64_t expert = LinearBytes(layer.moe.gate[0]) + LinearBytes(layer.moe.up[0]) +
                              LinearBytes(layer.moe.down[0]);
      bytes += 4 * static_cast<uint64_t>(c.num_experts) * d + static_cast<uint64_t>(c.num_experts_per_tok) * expert;
    } else {
      bytes += LinearBytes(layer.gate) + LinearBytes(layer.up) + LinearBytes(layer.down);
    }
  }
  return bytes;
}

}  // namespace awqcore
