// The tile layout of an int4 linear's codes (Int4Layout::kTiles,
// model_weights.h), which the AVX-512 VNNI kernels read in place of the rows.
//
// Why: those kernels hold one row per int32 lane of a zmm, so a 32-column
// block of 16 rows must reach vpdpbusd as 4 vectors, vector c holding the
// 4 code bytes 4c .. 4c + 3 of the block (8 codes: two quads of columns)
// of row 0, then of row 1, ..., row 15. From the rows that is 16 loads, 12
// inserts and a 4x4 dword transpose per block (~36 uops, against ~11 per
// token for the dots); stored in that order it is 4 contiguous 64-byte
// loads, and a tile is one sequential stream instead of 16.
//
// Layout: tile i holds rows 16i .. 16i + n - 1 (n = 16, or what is left in
// the last tile) at the bytes the rows occupy (16i x in / 2 on): per block b
// (columns 32b .. 32b + 31, code bytes 16b .. 16b + 15 of each row), 16 n
// bytes: for each c < 4, the 4 bytes 16b + 4c .. 16b + 4c + 3 of row 0,
// then of row 1, ..., row n - 1. The same bytes as the rows (nothing is
// added), regrouped within each tile; the scales, zeros and bias keep the
// rows' layout.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "model_weights.h"

namespace awqcore {

constexpr int kInt4TileRows = 16;  // rows per tile: the int32 lanes of a zmm
constexpr int kInt4TileBlock = 32;  // columns per block (16 code bytes of a row)

// Rows in tile `tile` of a layer with `out` rows.
inline int Int4TileRowCount(int out, int tile) {
  const int left = out - tile * kInt4TileRows;
  return left < kInt4TileRows ? left : kInt4TileRows;
}

// Where code byte `byte` (columns 2 byte, 2 byte + 1) of `row` lies, from the
// layer's first code byte, in the tile layout of a layer of `out` rows of
// in / 2 code bytes.
inline size_t Int4TileByteOffset(int out, int in, int row, int byte) {
  const int tile = row / kInt4TileRows, lane = row % kInt4TileRows;
  const size_t n = static_cast<size_t>(Int4TileRowCount(out, tile));
  const int block = byte / (kInt4TileBlock / 2), within = byte % (kInt4TileBlock / 2);
  return static_cast<size_t>(tile) * kInt4TileRows * (in / 2) + block * n * 16 + (within / 4) * n * 4 +
         lane * 4 + within % 4;
}

// Code byte `byte` of `row`, in either layout: for the scalar kernels.
inline uint8_t Int4CodeByte(const Int4Linear& layer, int row, int byte) {
  if (layer.layout == Int4Layout::kRows) return layer.qweight[static_cast<size_t>(row) * (layer.in / 2) + byte];
  return layer.qweight[Int4TileByteOffset(layer.out, layer.in, row, byte)];
}

// Whether a layer's shape can take the tile layout: whole 32-column blocks.
inline bool Int4TilesFit(const Int4Linear& layer) { return layer.out > 0 && layer.in % kInt4TileBlock == 0; }

// Rows [row0, row0 + rows) of a tile-layout layer in the row layout:
// out[rows][in / 2].
void Int4TileRowsToRows(const Int4Linear& layer, int row0, int rows, uint8_t* out);

// The codes of the tile whose first row is `first`, in the layer's layout,
// as 16 rows: in place, or (the last tile, short of 16 rows) its rows and the
// last one repeated, into `padded` ([16][in / 2] bytes in that layout).
const uint8_t* Int4FullTile(const Int4Linear& layer, int first, std::vector<uint8_t>& padded);

// The whole layer's codes in the row layout ([out][in / 2]; a copy of
// qweight for a row-layout layer): for readers of rows, such as the CUDA
// upload.
std::vector<uint8_t> Int4RowCodes(const Int4Linear& layer);

// Regroups `codes` (the layer's out x in / 2 code bytes, the row layout) into
// the tile layout in place, one tile at a time through a tile-sized buffer.
// Requires Int4TilesFit(layer).
void RegroupInt4Tiles(const Int4Linear& layer, uint8_t* codes);

// At the AVX-512 VNNI level (DetectedIsa), regroups the codes of every int4
// linear of `weights` that the VNNI W4A8 kernels read (experts and an int4
// lm_head too; widths that take int8 activations: UsesQ8Activations) into the
// tile layout, in place in the loaded copy of the file (made writable for the
// regrouping, read-only again after), and marks each layer kTiles. Skipped,
// keeping the rows, when AWQCORE_MAP_WEIGHTS=1 keeps the weights in the
// shared file mapping (cpu_memory.h: KeepWeightsMapped: other processes read
// the same pages), and for a layer whose pages cannot be made writable.
void AddInt4Tiles(ModelWeights& weights);

}  // namespace awqcore
