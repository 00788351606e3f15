// The weight tile of the W4A8 GEMMs (int4_gemm_q8_avx2.cpp: 8 rows, a ymm;
// int4_gemm_q8_avx512vnni.cpp: 16 rows, a zmm; layout and arithmetic are
// described in the latter): a tile's codes unpacked to one per byte in the
// order [block][quad][row][4 codes], and each group's f32 weight scales and
// zero terms of its rows, one lane per row. Include ONLY from those two
// files and the VNNI decode kernel (int4_decode_q8_avx512vnni.cpp), all
// compiled with F16C at least: everything here has internal linkage, so the
// copies built with different flags never meet.
#pragma once

#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "ops/linear_kernels.h"

namespace awqcore {
namespace {

// The activation bytes of quad i of a 32-column block, from the block's
// first position in its 64-column span: the order in which the unpacked
// codes hold a block's quads (described in int4_gemm_q8_avx512vnni.cpp).
constexpr int kQuadOffset[kQ8Block / 4] = {0, 4, 8, 12, 32, 36, 40, 44};

// kRows int32 lanes, one vector register: a quad of kRows rows (4 codes
// each), or the rows' f32 scales of a group.
template <int kRows>
struct alignas(4 * kRows) Lanes {
  uint8_t bytes[4 * kRows];
};

// A tile of kRows rows unpacked for the dots; reused (grown, never shrunk)
// by the calls of one thread.
template <int kRows>
struct GemmTile {
  std::vector<Lanes<kRows>> quads;       // [in / 32][8]: the codes, [row][4 columns] per quad
  std::vector<Lanes<kRows>> scales;      // [groups]: s_g of the rows, f32
  std::vector<Lanes<kRows>> zero_terms;  // [groups]: s_g z_g of the rows, f32
};

// Sizes `tile` for `layer` and fills its scales and zero terms from rows
// [row, row + rows) (rows <= kRows); lanes past `rows` repeat the last row
// (computed, never stored).
template <int kRows>
void UnpackTileScales(const Int4Linear& layer, int row, int rows, GemmTile<kRows>& tile) {
  constexpr int kQuadsPerSpan = 2 * kQ8Block / 4;
  const int groups = layer.in / layer.group_size;
  tile.quads.resize(static_cast<size_t>(layer.in / kQ8Span) * kQuadsPerSpan);
  tile.scales.resize(groups);
  tile.zero_terms.resize(groups);
  for (int r = 0; r < kRows; ++r) {
    const size_t base = static_cast<size_t>(row + std::min(r, rows - 1)) * groups;
    for (int g = 0; g < groups; ++g) {
      const float s = _cvtsh_ss(layer.scales[base + g]);
      const float sz = s * static_cast<float>(layer.zeros[base + g]);
      std::memcpy(tile.scales[g].bytes + 4 * r, &s, 4);
      std::memcpy(tile.zero_terms[g].bytes + 4 * r, &sz, 4);
    }
  }
}

// Unpacks rows [row, row + rows) (rows <= kRows) of a row-layout layer into
// `tile`, the codes of each 64-column span sp by unpack_span(codes, sp, out)
// (codes: the kRows rows' first code bytes; out: the span's 16 quads); lanes
// past `rows` repeat the last row (computed, never stored).
template <int kRows, typename UnpackSpan>
void UnpackTile(const Int4Linear& layer, int row, int rows, GemmTile<kRows>& tile, UnpackSpan unpack_span) {
  constexpr int kQuadsPerSpan = 2 * kQ8Block / 4;
  UnpackTileScales(layer, row, rows, tile);
  const uint8_t* codes[kRows];
  for (int r = 0; r < kRows; ++r) {
    codes[r] = layer.qweight + static_cast<size_t>(row + std::min(r, rows - 1)) * (layer.in / 2);
  }
  const int spans = layer.in / kQ8Span;
  for (int sp = 0; sp < spans; ++sp) unpack_span(codes, sp, tile.quads.data() + sp * kQuadsPerSpan);
}

}  // namespace
}  // namespace awqcore
