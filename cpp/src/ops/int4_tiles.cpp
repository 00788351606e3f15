#include "ops/int4_tiles.h"

#include <algorithm>
#include <cstring>

#include "cpu_features.h"
#include "cpu_memory.h"
#include "ops/q8_activations.h"

namespace awqcore {
namespace {

// One tile of n rows (row bytes `row_bytes`) into the tile layout: its
// 4-byte words in order, word (b, c, r) holding row r's bytes 16b + 4c ..
// 16b + 4c + 3 (rows: rows[r * row_bytes + byte]).
void RowsToTile(const uint8_t* rows, uint8_t* tile, int n, size_t row_bytes) {
  const size_t blocks = row_bytes / (kInt4TileBlock / 2);
  size_t at = 0;  // the tile layout's byte
  for (size_t b = 0; b < blocks; ++b) {
    for (int c = 0; c < 4; ++c) {
      for (int r = 0; r < n; ++r, at += 4) std::memcpy(tile + at, rows + r * row_bytes + 16 * b + 4 * c, 4);
    }
  }
}

}  // namespace

void Int4TileRowsToRows(const Int4Linear& layer, int row0, int rows, uint8_t* out) {
  const size_t row_bytes = layer.in / 2;
  const size_t words = row_bytes / 4;  // per row: word w = block w / 4, dword w % 4
  for (int r = row0; r < row0 + rows; ++r) {
    const int tile = r / kInt4TileRows, lane = r % kInt4TileRows;
    const size_t n = Int4TileRowCount(layer.out, tile);
    const uint8_t* codes = layer.qweight + static_cast<size_t>(tile) * kInt4TileRows * row_bytes + 4 * lane;
    uint8_t* row = out + static_cast<size_t>(r - row0) * row_bytes;
    for (size_t w = 0; w < words; ++w) std::memcpy(row + 4 * w, codes + w * n * 4, 4);
  }
}

const uint8_t* Int4FullTile(const Int4Linear& layer, int first, std::vector<uint8_t>& padded) {
  const size_t row_bytes = layer.in / 2;
  const uint8_t* codes = layer.qweight + first * row_bytes;
  const int n = layer.out - first;
  if (n >= kInt4TileRows) return codes;
  padded.resize(kInt4TileRows * row_bytes);
  if (layer.layout == Int4Layout::kRows) {
    for (int i = 0; i < kInt4TileRows; ++i) {
      std::memcpy(padded.data() + i * row_bytes, codes + std::min(i, n - 1) * row_bytes, row_bytes);
    }
  } else {  // per block and dword c (a 4-byte word of each row): n rows' words, then 16
    for (size_t word = 0; word < row_bytes / 4; ++word) {
      for (int i = 0; i < kInt4TileRows; ++i) {
        std::memcpy(padded.data() + (word * kInt4TileRows + i) * 4, codes + (word * n + std::min(i, n - 1)) * 4, 4);
      }
    }
  }
  return padded.data();
}

std::vector<uint8_t> Int4RowCodes(const Int4Linear& layer) {
  if (layer.layout == Int4Layout::kRows) {
    return std::vector<uint8_t>(layer.qweight, layer.qweight + layer.out * (layer.in / 2));
  }
  std::vector<uint8_t> rows(layer.out * (layer.in / 2));
  Int4TileRowsToRows(layer, 0, layer.out, rows.data());
  return rows;
}

void RegroupInt4Tiles(const Int4Linear& layer, uint8_t* codes) {
  const size_t row_bytes = layer.in / 2;
  std::vector<uint8_t> tile_bytes(kInt4TileRows * row_bytes);  // one tile, regrouped
  for (int tile = 0; tile * kInt4TileRows < layer.out; ++tile) {
    const int n = Int4TileRowCount(layer.out, tile);
    uint8_t* rows = codes + tile * kInt4TileRows * row_bytes;
    RowsToTile(rows, tile_bytes.data(), n, row_bytes);
    std::memcpy(rows, tile_bytes.data(), n * row_bytes);
  }
}

void AddInt4Tiles(ModelWeights& weights) {
  if (DetectedIsa() != Isa::kAvx512Vnni || KeepWeightsMapped()) return;
  auto regroup = [](Int4Linear& layer) {
    if (!Int4TilesFit(layer) || !UsesQ8Activations(layer.in) || layer.layout == Int4Layout::kTiles) return;
    const size_t bytes = static_cast<size_t>(layer.out) * (layer.in / 2);
    // The codes lie in the loaded file's read-only pages (a private copy, or
    // a private mapping whose written pages become private): writable for the
    // regrouping only.
    uint8_t* codes = const_cast<uint8_t*>(layer.qweight);
    if (!SetPagesWritable(codes, bytes, true)) return;
    RegroupInt4Tiles(layer, codes);
    SetPagesWritable(codes, bytes, false);
    layer.layout = Int4Layout::kTiles;
  };
  if (weights.lm_head_int4.out > 0) regroup(weights.lm_head_int4);
  for (LayerWeights& l : weights.layers) {
    for (Int4Linear* layer : {&l.q, &l.k, &l.v, &l.o, &l.gate, &l.up, &l.down}) {
      if (layer->out > 0) regroup(*layer);
    }
    for (std::vector<Int4Linear>* experts : {&l.moe.gate, &l.moe.up, &l.moe.down}) {
      for (Int4Linear& expert : *experts) regroup(expert);
    }
  }
}

}  // namespace awqcore
