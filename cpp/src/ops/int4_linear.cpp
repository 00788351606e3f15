#include "ops/int4_linear.h"

#include <algorithm>
#include <cstddef>

#include "half.h"
#include "ops/vec.h"

namespace awqcore {
namespace {

// Tiles of kRowBlock rows x kTileColumns columns of dequantized weights (4 KiB
// on the stack, L1-resident) are reused across all tokens of the call. For one
// token this still pays: dequantizing into a tile and then running a plain f32
// dot product (which the compiler vectorizes) measured ~2x faster than
// dequantizing inside the dot product.
constexpr int kRowBlock = 4;
constexpr int kTileColumns = 256;  // a multiple of every allowed group size

const uint8_t* RowCodes(const Int4Linear& layer, int row) {
  return layer.qweight + static_cast<size_t>(row) * (layer.in / 2);
}

// Dequantizes W[row, column0 .. column0 + width) into out[width]; column0 and
// width are multiples of the group size.
//
// W = (q - z) * s is computed as q * s + (-z * s). Each term is exact in f32
// (an integer of <= 4 bits times an f16 with 11 significant bits), and so is
// their sum, (q - z) * s, which has at most 15 significant bits: dequantization
// adds no rounding error. The form is branch- and lookup-free so the loop
// vectorizes.
void DequantizeRowSpan(const Int4Linear& layer, int row, int column0, int width, float* out) {
  const uint8_t* codes = RowCodes(layer, row) + column0 / 2;  // [width / 2]
  const size_t groups_per_row = layer.in / layer.group_size;
  for (int c = 0; c < width; c += layer.group_size) {
    const size_t index = static_cast<size_t>(row) * groups_per_row + (column0 + c) / layer.group_size;
    const float scale = F16ToF32(layer.scales[index]);
    const float offset = -static_cast<float>(layer.zeros[index]) * scale;
    const uint8_t* group_codes = codes + c / 2;  // [g / 2]; byte i: columns 2i, 2i + 1
    float* group_out = out + c;                  // [g]
    for (int i = 0; i < layer.group_size / 2; ++i) {
      group_out[2 * i] = static_cast<float>(group_codes[i] & 15) * scale + offset;
      group_out[2 * i + 1] = static_cast<float>(group_codes[i] >> 4) * scale + offset;
    }
  }
}

// Output rows [row0, row0 + rows), rows <= kRowBlock, for all tokens;
// x: [num_tokens, in], y: [num_tokens, out].
void Int4RowBlock(const Int4Linear& layer, int row0, int rows, const float* x,
                  int num_tokens, float* y) {
  const int out = layer.out;
  const int in = layer.in;
  for (int t = 0; t < num_tokens; ++t) {
    for (int r = 0; r < rows; ++r) {
      y[static_cast<size_t>(t) * out + row0 + r] = layer.bias ? layer.bias[row0 + r] : 0.f;
    }
  }
  // Whole groups per tile: 256 columns for g = 32, 64, 128.
  const int tile_columns = kTileColumns / layer.group_size * layer.group_size;
  float tile[kRowBlock][kTileColumns];  // dequantized W[row0 + r, column0 + i]
  for (int column0 = 0; column0 < in; column0 += tile_columns) {
    const int width = std::min(tile_columns, in - column0);
    for (int r = 0; r < rows; ++r) DequantizeRowSpan(layer, row0 + r, column0, width, tile[r]);
    for (int t = 0; t < num_tokens; ++t) {
      const float* x_tile = x + static_cast<size_t>(t) * in + column0;
      float* y_row = y + static_cast<size_t>(t) * out + row0;
      for (int r = 0; r < rows; ++r) y_row[r] += DotF32(tile[r], x_tile, width);
    }
  }
}

}  // namespace

void Int4LinearForward(const Int4Linear& layer, const float* x, int num_tokens, float* y,
                       ThreadPool& pool) {
  const int num_blocks = (layer.out + kRowBlock - 1) / kRowBlock;
  pool.ParallelFor(num_blocks, [&](int64_t begin, int64_t end) {
    for (int block = static_cast<int>(begin); block < end; ++block) {
      const int row0 = block * kRowBlock;
      Int4RowBlock(layer, row0, std::min(kRowBlock, layer.out - row0), x, num_tokens, y);
    }
  });
}

void Int4LinearReference(const Int4Linear& layer, const float* x, int num_tokens, float* y) {
  const int groups_per_row = layer.in / layer.group_size;
  for (int t = 0; t < num_tokens; ++t) {
    for (int r = 0; r < layer.out; ++r) {
      double sum = layer.bias ? layer.bias[r] : 0.0;
      for (int c = 0; c < layer.in; ++c) {
        const uint8_t byte = layer.qweight[static_cast<size_t>(r) * (layer.in / 2) + c / 2];
        const int q = (c % 2 == 0) ? (byte & 15) : (byte >> 4);
        const size_t group_index = static_cast<size_t>(r) * groups_per_row + c / layer.group_size;
        const int z = layer.zeros[group_index];
        const float s = F16ToF32(layer.scales[group_index]);
        const double w = static_cast<double>(q - z) * s;
        sum += w * x[static_cast<size_t>(t) * layer.in + c];
      }
      y[static_cast<size_t>(t) * layer.out + r] = static_cast<float>(sum);
    }
  }
}

}  // namespace awqcore
