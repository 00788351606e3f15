// The model as the forward pass sees it: typed pointers into the mapped file.
// Built and validated by LoadModelWeights (model_loader.h); the compute code
// (transformer.cpp) trusts these shapes.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "awqcore/awqcore.h"

namespace awqcore {

// How an int4 linear's code bytes are ordered: kRows, the file's [out][in/2]
// (low nibble = even column); kTiles, regrouped at load for the AVX-512 VNNI
// kernels (ops/int4_tiles.h), the same bytes within each 16-row tile.
enum class Int4Layout : uint8_t { kRows, kTiles };

// A 4-bit linear y = W x (+ b), W of shape [out, in], quantized per group of
// `group_size` input columns:  W[r, c] = (q[r, c] - z[r, c/g]) * s[r, c/g].
struct Int4Linear {
  int out = 0;
  int in = 0;
  int group_size = 0;
  const uint8_t* qweight = nullptr;  // [out, in/2]   low nibble = even column, ordered by `layout`
  const uint16_t* scales = nullptr;  // [out, in/g]   f16 bits
  const uint8_t* zeros = nullptr;    // [out, in/g]   0..15
  const float* bias = nullptr;       // [out] or nullptr
  // The scales and zeros again, transposed per 16-row tile for the AVX-512
  // VNNI decode kernel (ops/int4_linear.h: Int4TileScales), or nullptr: that
  // kernel then transposes a tile's at each call (the same values, slower).
  const uint8_t* tile_scales = nullptr;
  // The order of qweight's bytes. Only the AVX-512 VNNI W4A8 kernels and the
  // scalar kernels read kTiles; the dispatchers (linear_kernels.h) hand the
  // other row kernels a tile's rows regrouped back.
  Int4Layout layout = Int4Layout::kRows;
};

// The token embedding or lm_head table W [rows, d] in one of its two stored
// forms (docs/format.md): f16, or int8 in blocks of 32 columns,
// W[r, c] = q[r, c] * s[r, c/32] (exact in f32: 7 + 11 significant bits).
// Exactly one of `f16`, `q8` and `q8_tiles` is set; the int8 forms imply
// d % 32 == 0.
//
// q8_tiles: the int8 form regrouped for the AVX-512 VNNI kernels
// (ops/embedding_table.h: TileTable). Tile i holds rows 16i .. 16i + 15 (the
// last row repeated past `rows`); per 32-column block b, 512 bytes: for each
// 4-column group j (columns 32b + 4j .. 32b + 4j + 3), the 4 codes of row 0,
// then of row 1, ..., row 15, each code stored as q + 128 (unsigned). That is
// the operand vpdpbusd multiplies, one int32 lane per row, so the lm_head
// reads the tiles in order. Their scales: 16 f16 per tile and block.
struct EmbeddingTable {
  static constexpr int kBlock = 32;     // columns per int8 scale
  static constexpr int kTileRows = 16;  // rows per q8_tiles tile

  int rows = 0;
  int d = 0;
  const uint16_t* f16 = nullptr;             // [rows, d]      f16 bits, or nullptr
  const int8_t* q8 = nullptr;                // [rows, d]      or nullptr
  const uint16_t* q8_scales = nullptr;       // [rows, d/32]   f16 bits (with q8)
  const uint8_t* q8_tiles = nullptr;         // [tiles, d/32, 8, 16, 4] q + 128, or nullptr
  const uint16_t* q8_tile_scales = nullptr;  // [tiles, d/32, 16]       f16 bits (with q8_tiles)

  // The first byte of the table: two tables are one (tied) when these match.
  const void* data() const {
    if (f16 != nullptr) return f16;
    return q8 != nullptr ? static_cast<const void*>(q8) : q8_tiles;
  }
  int tiles() const { return (rows + kTileRows - 1) / kTileRows; }
};

// The MLP of a mixture-of-experts layer (docs/format.md): a router and E
// gated experts of width f. The file stacks each projection of all experts
// expert-major, so expert e's rows are one contiguous slice laid out as a
// 4-bit linear of its own; gate[e], up[e], down[e] are views of those slices.
struct MoeWeights {
  const float* router = nullptr;  // [E, d] f32; nullptr: the layer's MLP is dense
  std::vector<Int4Linear> gate;   // [E] expert e's [f, d]
  std::vector<Int4Linear> up;     // [E] expert e's [f, d]
  std::vector<Int4Linear> down;   // [E] expert e's [d, f]
};

// Norm weights are the multipliers of the normalized vector (Gemma's 1 + w
// already added in the file). The norms' roles follow the file's names:
//   pre placement:      x += o(attn(input_norm(x)));  x += mlp(post_norm(x))
//   sandwich placement: x += post_norm(o(attn(input_norm(x))));
//                       x += post_ffn_norm(mlp(pre_ffn_norm(x)))
struct LayerWeights {
  const float* input_norm = nullptr;     // [d]
  Int4Linear q;                          // [H*hd, d]
  Int4Linear k;                          // [KV*hd, d]
  Int4Linear v;                          // [KV*hd, d]
  const float* q_norm = nullptr;         // [hd] with qk_norm, else nullptr
  const float* k_norm = nullptr;         // [hd] with qk_norm, else nullptr
  Int4Linear o;                          // [d, H*hd]
  const float* post_norm = nullptr;      // [d] post_attention_layernorm
  const float* pre_ffn_norm = nullptr;   // [d] sandwich only, else nullptr
  const float* post_ffn_norm = nullptr;  // [d] sandwich only, else nullptr
  // A dense layer's MLP (moe.router == nullptr), else unset (out == 0).
  Int4Linear gate;                       // [ffn, d]
  Int4Linear up;                         // [ffn, d]
  Int4Linear down;                       // [d, ffn]
  MoeWeights moe;                        // a mixture-of-experts layer's MLP
};

struct ModelWeights {
  EmbeddingTable embed;                  // [vocab, d]
  EmbeddingTable lm_head;                // [vocab, d] (a copy of embed when tied); empty
                                         // (rows 0) when lm_head_int4 is set
  Int4Linear lm_head_int4;               // [vocab, d] when the file stores the lm_head as
                                         // a 4-bit linear (out > 0), else out == 0
  const float* final_norm = nullptr;     // [d]
  std::vector<LayerWeights> layers;      // [num_layers]
  // Owns the linears' tile_scales (shared: copies of the weights keep them).
  std::vector<std::shared_ptr<const std::vector<uint8_t>>> tile_scale_storage;
  // Owns the lm_head's q8_tiles and q8_tile_scales, when it has them.
  std::shared_ptr<const uint8_t> table_tile_storage;
};

}  // namespace awqcore
