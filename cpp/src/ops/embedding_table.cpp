#include "ops/f16_linear.h"

#include <algorithm>
#include <cstddef>

#include "half.h"
#include "ops/linear_kernels.h"
#include "ops/vec.h"

namespace awqcore {
namespace {

// Tiles as in int4_linear.cpp: 4 rows x 256 columns (4 KiB) of f32, reused
// for every token; converting a tile first lets the dot product vectorize.
constexpr int kRowBlock = 4;
constexpr int kTileColumns = 256;

void ConvertF16Span(const uint16_t* in, int n, float* out) {
  for (int i = 0; i < n; ++i) out[i] = F16ToF32(in[i]);
}

// Output rows [row0, row0 + rows), rows <= kRowBlock, for all tokens;
// weight: [rows_total, d], x: [num_tokens, ldx], y: [num_tokens, ldy] (row0 at y[0]).
void F16RowBlock(const uint16_t* weight, int d, int row0, int rows, const float* x, int ldx,
                 int num_tokens, float* y, int ldy) {
  for (int t = 0; t < num_tokens; ++t) std::fill_n(y + static_cast<size_t>(t) * ldy, rows, 0.f);
  float tile[kRowBlock][kTileColumns];  // f32(W[row0 + r, column0 + i])
  for (int column0 = 0; column0 < d; column0 += kTileColumns) {
    const int width = std::min(kTileColumns, d - column0);
    for (int r = 0; r < rows; ++r) {
      ConvertF16Span(weight + static_cast<size_t>(row0 + r) * d + column0, width, tile[r]);
    }
    for (int t = 0; t < num_tokens; ++t) {
      const float* x_tile = x + static_cast<size_t>(t) * ldx + column0;
      float* y_row = y + static_cast<size_t>(t) * ldy;
      for (int r = 0; r < rows; ++r) y_row[r] += DotF32(tile[r], x_tile, width);
    }
  }
}

}  // namespace

void EmbeddingGather(const uint16_t* table, int d, const int* ids, int num_tokens, float* out) {
  for (int t = 0; t < num_tokens; ++t) {
    ConvertF16Span(table + static_cast<size_t>(ids[t]) * d, d, out + static_cast<size_t>(t) * d);
  }
}

void F16RowsScalar(const uint16_t* weight, int d, int row0, int rows, const float* x, int ldx,
                   int num_tokens, float* y, int ldy) {
  for (int r = 0; r < rows; r += kRowBlock) {
    F16RowBlock(weight, d, row0 + r, std::min(kRowBlock, rows - r), x, ldx, num_tokens, y + r, ldy);
  }
}

void F16LinearForward(const uint16_t* weight, int rows, int d, const float* x, int num_tokens,
                      float* y, ThreadPool& pool, Isa isa) {
  const int num_blocks = (rows + kRowBlock - 1) / kRowBlock;
  pool.ParallelFor(num_blocks, [&](int64_t begin, int64_t end) {
    const int row0 = static_cast<int>(begin) * kRowBlock;
    const int row1 = std::min(rows, static_cast<int>(end) * kRowBlock);
    if (isa == Isa::kAvx2) {
      F16RowsAvx2(weight, d, row0, row1 - row0, x, d, num_tokens, y + row0, rows);
    } else {
      F16RowsScalar(weight, d, row0, row1 - row0, x, d, num_tokens, y + row0, rows);
    }
  });
}

void F16LinearReference(const uint16_t* weight, int rows, int d, const float* x, int num_tokens,
                        float* y) {
  for (int t = 0; t < num_tokens; ++t) {
    for (int r = 0; r < rows; ++r) {
      double sum = 0.0;
      for (int c = 0; c < d; ++c) {
        sum += static_cast<double>(F16ToF32(weight[static_cast<size_t>(r) * d + c])) *
               x[static_cast<size_t>(t) * d + c];
      }
      y[static_cast<size_t>(t) * rows + r] = static_cast<float>(sum);
    }
  }
}

}  // namespace awqcore
