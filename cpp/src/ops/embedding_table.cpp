#include "ops/embedding_table.h"

#include <algorithm>
#include <cstddef>
#include <cstring>
#include <new>
#include <string>

#include "awqcore/awqcore.h"
#include "cpu_memory.h"
#include "half.h"
#include "ops/linear_kernels.h"
#include "ops/vec.h"

namespace awqcore {
namespace {

// Tiles of kRowBlock x kTileColumns weights in f32 (linear_kernels.h).

// out[i] = W[row, column0 + i] in f32 for i < n. Exact: an f16 widens
// exactly, and q * s has at most 7 + 11 significant bits (< f32's 24).
void ConvertSpan(const EmbeddingTable& table, int row, int column0, int n, float* out) {
  const size_t start = static_cast<size_t>(row) * table.d + column0;
  if (table.f16 != nullptr) {
    for (int i = 0; i < n; ++i) out[i] = F16ToF32(table.f16[start + i]);
    return;
  }
  constexpr int kBlock = EmbeddingTable::kBlock;
  if (table.q8 != nullptr) {
    const int8_t* q = table.q8 + start;
    const uint16_t* scales = table.q8_scales + static_cast<size_t>(row) * (table.d / kBlock);
    for (int i = 0; i < n; ++i) out[i] = static_cast<float>(q[i]) * F16ToF32(scales[(column0 + i) / kBlock]);
    return;
  }
  // Tiles: column0 and n are multiples of 32 (int8 widths and every caller's
  // spans are), so a block's scale is converted once and its codes are the
  // row's lane of 8 groups, 64 bytes apart (model_weights.h). Any other span
  // would lose its last columns, so it is an error, not a short output.
  if (column0 % kBlock != 0 || n % kBlock != 0) {
    throw Error("tiled int8 table: span of columns [" + std::to_string(column0) + ", " +
                std::to_string(column0 + n) + ") is not made of whole 32-column blocks (d = " +
                std::to_string(table.d) + ")");
  }
  constexpr int kRows = EmbeddingTable::kTileRows;
  const uint8_t* tile = table.q8_tiles + static_cast<size_t>(row / kRows) * kRows * table.d + 4 * (row % kRows);
  for (int b = column0 / kBlock; b < (column0 + n) / kBlock; ++b) {
    const float scale = F16ToF32(TableScale(table, row, b));
    const uint8_t* groups = tile + static_cast<size_t>(b) * kRows * kBlock;
    float* block = out + (b * kBlock - column0);
    for (int c = 0; c < kBlock; ++c) block[c] = static_cast<float>(groups[c / 4 * (kRows * 4) + c % 4] - 128) * scale;
  }
}

// Output rows [row0, row0 + rows), rows <= kRowBlock, for all tokens;
// x: [num_tokens, ldx], y: [num_tokens, ldy] (row0 at y[0]).
void RowBlock(const EmbeddingTable& table, int row0, int rows, const float* x, int ldx,
              int num_tokens, float* y, int ldy) {
  for (int t = 0; t < num_tokens; ++t) std::fill_n(y + static_cast<size_t>(t) * ldy, rows, 0.f);
  float tile[kRowBlock][kTileColumns];  // f32(W[row0 + r, column0 + i])
  for (int column0 = 0; column0 < table.d; column0 += kTileColumns) {
    const int width = std::min(kTileColumns, table.d - column0);
    for (int r = 0; r < rows; ++r) ConvertSpan(table, row0 + r, column0, width, tile[r]);
    for (int t = 0; t < num_tokens; ++t) {
      const float* x_tile = x + static_cast<size_t>(t) * ldx + column0;
      float* y_row = y + static_cast<size_t>(t) * ldy;
      for (int r = 0; r < rows; ++r) y_row[r] += DotF32(tile[r], x_tile, width);
    }
  }
}

}  // namespace

int TableCode(const EmbeddingTable& table, int r, int c) {
  if (table.q8 != nullptr) return table.q8[static_cast<size_t>(r) * table.d + c];
  constexpr int kRows = EmbeddingTable::kTileRows, kBlock = EmbeddingTable::kBlock;
  const size_t at = static_cast<size_t>(r / kRows) * kRows * table.d  // the tile
                    + static_cast<size_t>(c / kBlock) * kRows * kBlock  // its block
                    + (c % kBlock) / 4 * (kRows * 4) + (r % kRows) * 4 + c % 4;
  return static_cast<int>(table.q8_tiles[at]) - 128;
}

uint16_t TableScale(const EmbeddingTable& table, int r, int block) {
  const int blocks = table.d / EmbeddingTable::kBlock;
  if (table.q8 != nullptr) return table.q8_scales[static_cast<size_t>(r) * blocks + block];
  constexpr int kRows = EmbeddingTable::kTileRows;
  return table.q8_tile_scales[(static_cast<size_t>(r / kRows) * blocks + block) * kRows + r % kRows];
}

EmbeddingTable TileTable(const EmbeddingTable& table, std::shared_ptr<const uint8_t>& storage,
                         bool release_rows) {
  constexpr int kRows = EmbeddingTable::kTileRows, kBlock = EmbeddingTable::kBlock;
  const int d = table.d, blocks = d / kBlock, tiles = table.tiles();
  const size_t tile_bytes = static_cast<size_t>(kRows) * d;  // codes per tile
  const size_t code_bytes = tiles * tile_bytes;             // a multiple of 512: the scales stay aligned
  std::shared_ptr<uint8_t> buffer = HugePageBuffer(code_bytes + static_cast<size_t>(tiles) * blocks * kRows * 2);
  uint8_t* codes = buffer.get();
  uint16_t* scales = reinterpret_cast<uint16_t*>(codes + code_bytes);
  // Rows already regrouped are released every this many tiles (~8 MB), so
  // the load's peak is the table plus one chunk, not two tables.
  const int tiles_per_release = std::max<int>(1, static_cast<int>((8 << 20) / tile_bytes));
  for (int tile = 0; tile < tiles; ++tile) {
    for (int lane = 0; lane < kRows; ++lane) {
      const int r = std::min(tile * kRows + lane, table.rows - 1);  // the last row pads the last tile
      const int8_t* row = table.q8 + static_cast<size_t>(r) * d;
      uint8_t* out = codes + tile * tile_bytes + 4 * lane;
      for (int c = 0; c < d; c += 4) {  // group c / 4 of the row: 4 codes, each + 128 (flip the sign bit)
        uint32_t four;
        std::memcpy(&four, row + c, 4);
        four ^= 0x80808080u;
        std::memcpy(out + (c / kBlock) * kRows * kBlock + (c % kBlock) / 4 * (kRows * 4), &four, 4);
      }
      for (int b = 0; b < blocks; ++b) {
        scales[(static_cast<size_t>(tile) * blocks + b) * kRows + lane] = table.q8_scales[static_cast<size_t>(r) * blocks + b];
      }
    }
    if (release_rows && (tile + 1) % tiles_per_release == 0) {  // tiles [tile + 1 - tiles_per_release, tile] are done
      const size_t first_row = static_cast<size_t>(tile + 1 - tiles_per_release) * kRows;
      const size_t end_row = std::min<size_t>(static_cast<size_t>(tile + 1) * kRows, table.rows);
      ReleasePages(table.q8 + first_row * d, static_cast<uint64_t>(end_row - first_row) * d);
    }
  }
  if (release_rows) {  // whatever the chunks left, and the scales
    ReleasePages(table.q8, static_cast<uint64_t>(table.rows) * d);
    ReleasePages(table.q8_scales, static_cast<uint64_t>(table.rows) * blocks * 2);
  }
  SealReadOnly(buffer.get(), code_bytes + static_cast<size_t>(tiles) * blocks * kRows * 2);
  EmbeddingTable tiled;
  tiled.rows = table.rows;
  tiled.d = d;
  tiled.q8_tiles = codes;
  tiled.q8_tile_scales = scales;
  storage = std::move(buffer);
  return tiled;
}

void AddTableTiles(ModelWeights& weights) {
  if (DetectedIsa() != Isa::kAvx512Vnni || weights.lm_head.q8 == nullptr || KeepWeightsMapped()) return;
  const EmbeddingTable rows = weights.lm_head;
  const bool tied = weights.embed.data() == rows.data();
  try {
    // No table of the model points at the row layout afterwards.
    weights.lm_head = TileTable(rows, weights.table_tile_storage, /*release_rows=*/true);
  } catch (const std::bad_alloc&) {
    // The tiles are a speed-up: without memory for them the rows serve (the
    // buffer is allocated before any row is released).
    return;
  }
  if (tied) weights.embed = weights.lm_head;
}

void EmbeddingGather(const EmbeddingTable& table, const int* ids, int num_tokens, float* out) {
  for (int t = 0; t < num_tokens; ++t) {
    ConvertSpan(table, ids[t], 0, table.d, out + static_cast<size_t>(t) * table.d);
  }
}

void TableRowsScalar(const EmbeddingTable& table, int row0, int rows, const float* x, int ldx,
                     int num_tokens, float* y, int ldy) {
  for (int r = 0; r < rows; r += kRowBlock) {
    RowBlock(table, row0 + r, std::min(kRowBlock, rows - r), x, ldx, num_tokens, y + r, ldy);
  }
}

void TableRowsQ8Scalar(const EmbeddingTable& table, int row0, int rows, const Q8Activations& x,
                       float* y, int ldy) {
  const int d = table.d, blocks = d / EmbeddingTable::kBlock;
  for (int t = 0; t < x.num_tokens; ++t) {
    const int8_t* xq = x.q + static_cast<size_t>(t) * d;
    const float* dx = x.block_scales + static_cast<size_t>(t) * blocks;
    for (int r = row0; r < row0 + rows; ++r) {
      float sum = 0.f;
      for (int b = 0; b < blocks; ++b) {
        int dot = 0;  // |dot| <= 32 * 128 * 127 < 2^24: exact also as a float
        for (int c = b * EmbeddingTable::kBlock; c < (b + 1) * EmbeddingTable::kBlock; ++c) {
          dot += TableCode(table, r, c) * xq[c];
        }
        sum += F16ToF32(TableScale(table, r, b)) * dx[b] * static_cast<float>(dot);
      }
      y[static_cast<size_t>(t) * ldy + (r - row0)] = sum;
    }
  }
}

void TableRows(const EmbeddingTable& table, int row0, int rows, const float* x, int ldx,
               int num_tokens, float* y, int ldy, Isa isa) {
  if (table.q8_tiles != nullptr) {  // only the VNNI level reads tiles fast
    if (isa >= Isa::kAvx512Vnni) {
      TableTilesAvx512Vnni(table, row0, rows, x, ldx, num_tokens, y, ldy);
    } else {
      TableRowsScalar(table, row0, rows, x, ldx, num_tokens, y, ldy);
    }
  } else if (isa >= Isa::kAvx2) {
    TableRowsAvx2(table, row0, rows, x, ldx, num_tokens, y, ldy);
  } else {
    TableRowsScalar(table, row0, rows, x, ldx, num_tokens, y, ldy);
  }
}

void TableRowsQ8(const EmbeddingTable& table, int row0, int rows, const Q8Activations& x, float* y,
                 int ldy, Isa isa) {
  if (table.q8_tiles != nullptr) {
    if (isa >= Isa::kAvx512Vnni) {
      TableTilesQ8Avx512Vnni(table, row0, rows, x, y, ldy);
    } else {
      TableRowsQ8Scalar(table, row0, rows, x, y, ldy);
    }
  } else if (isa >= Isa::kAvx2) {
    TableRowsQ8Avx2(table, row0, rows, x, y, ldy);
  } else {
    TableRowsQ8Scalar(table, row0, rows, x, y, ldy);
  }
}

void TableLinearForward(const EmbeddingTable& table, const float* x, int num_tokens, float* y,
                        ThreadPool& pool, Isa isa, bool int8_activations) {
  const int rows = table.rows;
  // The pool hands out whole tiles of a tiled table (a tile's 16 lanes are
  // computed together), else the row kernels' blocks.
  const int unit = table.q8_tiles != nullptr ? EmbeddingTable::kTileRows : kRowBlock;
  const int units = (rows + unit - 1) / unit;
  // W8A8: x rounded once per call, before the row split; the buffer is per
  // calling thread and only grows (as the int4 ops' buffer, int4_linear.cpp).
  const Q8Activations* xq = nullptr;
  if (int8_activations && table.f16 == nullptr) {
    thread_local Q8Buffer buffer;
    xq = &buffer.Quantize(x, table.d, num_tokens, table.d, kQ8Block, Q8Layout::kNatural);
  }
  pool.ParallelFor(units, [&](int64_t begin, int64_t end) {
    const int row0 = static_cast<int>(begin) * unit;
    const int n = std::min(rows, static_cast<int>(end) * unit) - row0;
    if (xq != nullptr) {
      TableRowsQ8(table, row0, n, *xq, y + row0, rows, isa);
    } else {
      TableRows(table, row0, n, x, table.d, num_tokens, y + row0, rows, isa);
    }
  });
}

void TableLinearReference(const EmbeddingTable& table, const float* x, int num_tokens, float* y) {
  const int d = table.d;
  for (int t = 0; t < num_tokens; ++t) {
    for (int r = 0; r < table.rows; ++r) {
      double sum = 0.0;
      for (int c = 0; c < d; ++c) {
        const double w = table.f16 != nullptr
                             ? F16ToF32(table.f16[static_cast<size_t>(r) * d + c])
                             : TableCode(table, r, c) * static_cast<double>(F16ToF32(
                                   TableScale(table, r, c / EmbeddingTable::kBlock)));
        sum += w * x[static_cast<size_t>(t) * d + c];
      }
      y[static_cast<size_t>(t) * table.rows + r] = static_cast<float>(sum);
    }
  }
}

}  // namespace awqcore
