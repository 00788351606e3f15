#include "ops/embedding_table.h"

#include <algorithm>
#include <cstddef>

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
  const int8_t* q = table.q8 + start;
  const uint16_t* scales = table.q8_scales + static_cast<size_t>(row) * (table.d / EmbeddingTable::kBlock);
  for (int i = 0; i < n; ++i) {
    out[i] = static_cast<float>(q[i]) * F16ToF32(scales[(column0 + i) / EmbeddingTable::kBlock]);
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
      const int8_t* q = table.q8 + static_cast<size_t>(r) * d;
      const uint16_t* scales = table.q8_scales + static_cast<size_t>(r) * blocks;
      float sum = 0.f;
      for (int b = 0; b < blocks; ++b) {
        int dot = 0;  // |dot| <= 32 * 128 * 127 < 2^24: exact also as a float
        for (int c = b * EmbeddingTable::kBlock; c < (b + 1) * EmbeddingTable::kBlock; ++c) {
          dot += q[c] * xq[c];
        }
        sum += F16ToF32(scales[b]) * dx[b] * static_cast<float>(dot);
      }
      y[static_cast<size_t>(t) * ldy + (r - row0)] = sum;
    }
  }
}

void TableRows(const EmbeddingTable& table, int row0, int rows, const float* x, int ldx,
               int num_tokens, float* y, int ldy, Isa isa) {
  if (isa >= Isa::kAvx2) {
    TableRowsAvx2(table, row0, rows, x, ldx, num_tokens, y, ldy);
  } else {
    TableRowsScalar(table, row0, rows, x, ldx, num_tokens, y, ldy);
  }
}

void TableRowsQ8(const EmbeddingTable& table, int row0, int rows, const Q8Activations& x, float* y,
                 int ldy, Isa isa) {
  // Both kernels give a token the same bits (linear_kernels.h); one token
  // streams as fast through the AVX2 GEMV, a batch 1.2-1.9x faster (2-8
  // tokens) through the VNNI one, which reads each row once for all of them.
  if (isa >= Isa::kAvx512Vnni && x.num_tokens >= 2) {
    TableRowsQ8Avx512Vnni(table, row0, rows, x, y, ldy);
  } else if (isa >= Isa::kAvx2) {
    TableRowsQ8Avx2(table, row0, rows, x, y, ldy);
  } else {
    TableRowsQ8Scalar(table, row0, rows, x, y, ldy);
  }
}

void TableLinearForward(const EmbeddingTable& table, const float* x, int num_tokens, float* y,
                        ThreadPool& pool, Isa isa, bool int8_activations) {
  const int rows = table.rows;
  const int num_blocks = (rows + kRowBlock - 1) / kRowBlock;
  // W8A8: x rounded once per call, before the row split; the buffer is per
  // calling thread and only grows (as the int4 ops' buffer, int4_linear.cpp).
  const Q8Activations* xq = nullptr;
  if (int8_activations && table.q8 != nullptr) {
    thread_local Q8Buffer buffer;
    xq = &buffer.Quantize(x, table.d, num_tokens, table.d, kQ8Block, Q8Layout::kNatural);
  }
  pool.ParallelFor(num_blocks, [&](int64_t begin, int64_t end) {
    const int row0 = static_cast<int>(begin) * kRowBlock;
    const int n = std::min(rows, static_cast<int>(end) * kRowBlock) - row0;
    if (xq != nullptr) {
      TableRowsQ8(table, row0, n, *xq, y + row0, rows, isa);
    } else {
      TableRows(table, row0, n, x, table.d, num_tokens, y + row0, rows, isa);
    }
  });
}

void TableLinearReference(const EmbeddingTable& table, const float* x, int num_tokens, float* y) {
  const int d = table.d;
  const int blocks = d / EmbeddingTable::kBlock;  // per row, int8 form only
  for (int t = 0; t < num_tokens; ++t) {
    for (int r = 0; r < table.rows; ++r) {
      double sum = 0.0;
      for (int c = 0; c < d; ++c) {
        const size_t i = static_cast<size_t>(r) * d + c;
        const double w = table.f16 != nullptr
                             ? F16ToF32(table.f16[i])
                             : table.q8[i] * static_cast<double>(F16ToF32(
                                   table.q8_scales[static_cast<size_t>(r) * blocks + c / EmbeddingTable::kBlock]));
        sum += w * x[static_cast<size_t>(t) * d + c];
      }
      y[static_cast<size_t>(t) * table.rows + r] = static_cast<float>(sum);
    }
  }
}

}  // namespace awqcore
