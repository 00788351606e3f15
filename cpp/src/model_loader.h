// From a validated AwqbinFile to the typed config and weight pointers the
// forward pass uses (docs/format.md). The only place the runtime reads the
// file's metadata and tensor directory: the ops and the forward pass see
// ModelConfig and ModelWeights alone.
#pragma once

#include <string>

#include "awqbin_file.h"
#include "awqcore/awqcore.h"
#include "model_weights.h"

namespace awqcore {

// Reads ModelConfig from the metadata, the decoder-layer description
// included. Throws FormatError naming the bad or missing key, e.g.
// "unknown architecture 'x' (supported: llama, mistral, qwen2, qwen3, gemma3, mixtral, qwen3_moe)"
// or a description value that contradicts the architecture.
ModelConfig ReadModelConfig(const AwqbinFile& file);

// Throws FormatError "unknown architecture 'x' (supported: ...)" unless the
// runtime knows `architecture`.
void RequireKnownArchitecture(const std::string& architecture);

// Fills the decoder-layer description of `config` (architecture, num_layers
// and head_dim already read) from the optional model.* keys, checked against
// the architecture's fixed features (layer_description.cpp).
void ReadLayerDescription(const AwqbinFile& file, ModelConfig& config);

// Resolves every tensor the config needs, checking dtype and shape, and
// rejects a description tensor (q/k norm, feed-forward norms) the config does
// not use. Throws FormatError naming the tensor. Then adds the layouts this
// CPU's kernels read (ops/int4_linear.h: AddTileScales, ops/embedding_table.h:
// AddTableTiles, ops/int4_tiles.h: AddInt4Tiles, which regroups the int4
// codes in place: the loaded copy's code bytes are no longer the file's).
ModelWeights LoadModelWeights(const AwqbinFile& file, const ModelConfig& config);

}  // namespace awqcore
