// The model as the forward pass sees it: config plus typed pointers into the
// mapped file. Built and validated by LoadModelWeights (model_loader.cpp); the
// compute code (transformer.cpp) trusts these shapes.
#pragma once

#include <cstdint>
#include <vector>

#include "awqcore/awqcore.h"
#include "awqbin_file.h"

namespace awqcore {

// A 4-bit linear y = W x (+ b), W of shape [out, in], quantized per group of
// `group_size` input columns:  W[r, c] = (q[r, c] - z[r, c/g]) * s[r, c/g].
struct Int4Linear {
  int out = 0;
  int in = 0;
  int group_size = 0;
  const uint8_t* qweight = nullptr;  // [out, in/2]   low nibble = even column
  const uint16_t* scales = nullptr;  // [out, in/g]   f16 bits
  const uint8_t* zeros = nullptr;    // [out, in/g]   0..15
  const float* bias = nullptr;       // [out] or nullptr
};

struct LayerWeights {
  const float* input_norm = nullptr;  // [d]
  Int4Linear q;                       // [H*hd, d]
  Int4Linear k;                       // [KV*hd, d]
  Int4Linear v;                       // [KV*hd, d]
  Int4Linear o;                       // [d, H*hd]
  const float* post_norm = nullptr;   // [d]
  Int4Linear gate;                    // [ffn, d]
  Int4Linear up;                      // [ffn, d]
  Int4Linear down;                    // [d, ffn]
};

struct ModelWeights {
  const uint16_t* embed = nullptr;       // [vocab, d] f16
  const uint16_t* lm_head = nullptr;     // [vocab, d] f16 (== embed when tied)
  const float* final_norm = nullptr;     // [d]
  std::vector<LayerWeights> layers;      // [num_layers]
};

// Reads ModelConfig from the metadata and resolves every tensor the
// architecture needs, checking dtype and shape. Throws FormatError naming the
// missing/mismatched tensor or bad hyperparameter, and InvalidArgument... never.
// Unknown architecture -> FormatError "unknown architecture 'x' (supported: llama, qwen2)".
ModelConfig ReadModelConfig(const AwqbinFile& file);
ModelWeights LoadModelWeights(const AwqbinFile& file, const ModelConfig& config);

}  // namespace awqcore
