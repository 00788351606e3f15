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

}  // namespace awqcore
