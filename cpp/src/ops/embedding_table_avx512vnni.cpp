// AVX-512 VNNI kernels of a tiled int8 table (model_weights.h: q8_tiles;
// contract in linear_kernels.h): the lm_head, W8A8 for decode (one token or
// a batch of up to kQ8MaxTokens) and f32 for the other calls.
//
// Why tiles: row-layout kernels give each (row, token) its own vector of
// partial sums and reduce it horizontally, so a batch of 8 tokens spent ~3x
// more uops on shuffles, converts and FMAs than on multiplies (49 GMAC per
// CPU-second against the int4 decode kernel's ~150). A tile block holds the
// 16 rows x 4 columns that one vpdpbusd multiplies, one int32 lane per row:
// per 16 x 32 block and token, 8 vpdpbusd (each activation dword broadcast
// to all lanes), one convert and one FMA, and the lanes are the logits,
// with no reduction. The tiles are read in order (one stream per thread).
//
// W8A8 arithmetic per token, row and block b: the codes are stored as
// w + 128 (vpdpbusd multiplies unsigned by signed bytes), so the integer dot
// starts from -128 sum_{c in b} x_c:
//   sum_c (w_c + 128) x_c - 128 sum_c x_c = sum_c w_c x_c,
// every partial sum within |32 * 255 * 127| + |128 * 32 * 127| < 2^31, the
// result within 32 * 128 * 127 < 2^24: exact as an int32 and as a float. Then
//   acc = fma(float(dot), s_b * d_b, acc)   (s_b * d_b rounded once)
// over the blocks in order. The integer part is exact whatever its order,
// so the kernel splits it into two chains for 1-2 tokens (8 dependent
// vpdpbusd bind on their latency); the float part is the same sequence of
// operations for every token count, so a token's logits are bit-identical
// whatever other tokens share the call.
//
// f32 activations (prefill's all-logits calls, the f32 mode): each group of
// 4 columns is widened to 4 vectors of exact f32 weights q s (16 rows each)
// and multiplied into two FMA chains per token (even and odd columns),
// added at the end: again the same operations for every token count.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include <immintrin.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <vector>

#include "ops/linear_kernels.h"

namespace awqcore {
namespace {

constexpr int kRows = EmbeddingTable::kTileRows;  // int32 lanes of a zmm: one row each
constexpr int kBlock = EmbeddingTable::kBlock;
constexpr int kGroups = kBlock / 4;                // 4-column groups per block: one vpdpbusd each
constexpr int kBlockBytes = kRows * kBlock;        // one block of a tile
constexpr int kMaxTokens = 8;                      // tokens per pass over a tile
static_assert(kQ8MaxTokens == kMaxTokens, "a decode step's tokens share one pass over the table");

inline __m512 TileScales(const uint16_t* p) {
  return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
}

// The 4 activation bytes at p (any alignment) in every lane: read as one
// int32 so that the compiler folds the broadcast into vpdpbusd's operand.
typedef int32_t UnalignedInt32 __attribute__((aligned(1), may_alias));
inline __m512i Broadcast4(const int8_t* p) { return _mm512_set1_epi32(*reinterpret_cast<const UnalignedInt32*>(p)); }

// Lanes [lane0, lane_end) of v into out[0 .. lane_end - lane0).
inline void StoreLanes(__m512 v, int lane0, int lane_end, float* out) {
  const __mmask16 lanes = static_cast<__mmask16>(((1u << lane_end) - 1) & ~((1u << lane0) - 1));
  const __mmask16 stored = static_cast<__mmask16>((1u << (lane_end - lane0)) - 1);
  _mm512_mask_storeu_ps(out, stored, _mm512_maskz_compress_ps(lanes, v));
}

// kTokens tokens times one tile (codes, scales: its blocks), W8A8: lanes
// [lane0, lane_end) of token k stored at y[k * ldy]. xq: [kTokens, d],
// dx: [kTokens, blocks], corrections: [kTokens, blocks], -128 sum of the
// token's codes in the block.
template <int kTokens>
void TileQ8(const uint8_t* codes, const uint16_t* scales, int blocks, const int8_t* xq, const float* dx,
            const int32_t* corrections, int lane0, int lane_end, float* y, int ldy) {
  const size_t d = static_cast<size_t>(blocks) * kBlock;
  __m512 acc[kTokens];
  #pragma GCC unroll 8
  for (int k = 0; k < kTokens; ++k) acc[k] = _mm512_setzero_ps();
  for (int b = 0; b < blocks; ++b) {
    const uint8_t* block = codes + static_cast<size_t>(b) * kBlockBytes;
    __m512i w[kGroups];
    #pragma GCC unroll 8
    for (int j = 0; j < kGroups; ++j) w[j] = _mm512_loadu_si512(block + 64 * j);
    const __m512 s = TileScales(scales + b * kRows);
    // kChains independent vpdpbusd chains per token (exact integers: the
    // split does not change the sum), the tokens interleaved so that every
    // chain in flight is independent of the next instruction.
    constexpr int kChains = kTokens <= 2 ? 2 : 1;
    __m512i dot[kTokens][kChains];
    #pragma GCC unroll 8
    for (int k = 0; k < kTokens; ++k) {
      dot[k][0] = _mm512_set1_epi32(corrections[k * blocks + b]);
      if constexpr (kChains == 2) dot[k][1] = _mm512_setzero_si512();
    }
    #pragma GCC unroll 8
    for (int j = 0; j < kGroups; ++j) {
      #pragma GCC unroll 8
      for (int k = 0; k < kTokens; ++k) {
        __m512i& chain = dot[k][j % kChains];
        chain = _mm512_dpbusd_epi32(chain, w[j], Broadcast4(xq + k * d + b * kBlock + 4 * j));
      }
    }
    #pragma GCC unroll 8
    for (int k = 0; k < kTokens; ++k) {
      __m512i sum = dot[k][0];
      if constexpr (kChains == 2) sum = _mm512_add_epi32(sum, dot[k][1]);
      const __m512 scale = _mm512_mul_ps(s, _mm512_set1_ps(dx[k * blocks + b]));
      acc[k] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sum), scale, acc[k]);
    }
  }
  #pragma GCC unroll 8
  for (int k = 0; k < kTokens; ++k) StoreLanes(acc[k], lane0, lane_end, y + static_cast<size_t>(k) * ldy);
}

// The same with f32 activations x: [kTokens, ldx].
template <int kTokens>
void TileF32(const uint8_t* codes, const uint16_t* scales, int blocks, const float* x, int ldx, int lane0,
             int lane_end, float* y, int ldy) {
  const __m512i sign_bits = _mm512_set1_epi32(static_cast<int>(0x80808080u));
  __m512 even[kTokens], odd[kTokens];
  #pragma GCC unroll 8
  for (int k = 0; k < kTokens; ++k) even[k] = odd[k] = _mm512_setzero_ps();
  for (int b = 0; b < blocks; ++b) {
    const uint8_t* block = codes + static_cast<size_t>(b) * kBlockBytes;
    const __m512 s = TileScales(scales + b * kRows);
    for (int j = 0; j < kGroups; ++j) {
      // The group's signed codes: byte i of lane r is W[r, c + i] (c below).
      const __m512i q = _mm512_xor_si512(_mm512_loadu_si512(block + 64 * j), sign_bits);
      const __m512 w[4] = {
          _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_srai_epi32(_mm512_slli_epi32(q, 24), 24)), s),
          _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_srai_epi32(_mm512_slli_epi32(q, 16), 24)), s),
          _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_srai_epi32(_mm512_slli_epi32(q, 8), 24)), s),
          _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_srai_epi32(q, 24)), s)};  // exact: 7 + 11 bits
      const int c = b * kBlock + 4 * j;
      #pragma GCC unroll 8
      for (int k = 0; k < kTokens; ++k) {
        const float* xc = x + static_cast<size_t>(k) * ldx + c;
        even[k] = _mm512_fmadd_ps(w[0], _mm512_set1_ps(xc[0]), even[k]);
        odd[k] = _mm512_fmadd_ps(w[1], _mm512_set1_ps(xc[1]), odd[k]);
        even[k] = _mm512_fmadd_ps(w[2], _mm512_set1_ps(xc[2]), even[k]);
        odd[k] = _mm512_fmadd_ps(w[3], _mm512_set1_ps(xc[3]), odd[k]);
      }
    }
  }
  #pragma GCC unroll 8
  for (int k = 0; k < kTokens; ++k) {
    StoreLanes(_mm512_add_ps(even[k], odd[k]), lane0, lane_end, y + static_cast<size_t>(k) * ldy);
  }
}

// Calls visit(first, lane0, lane_end, out_offset) for each tile that rows
// [row0, row0 + rows) touch: its first row, the lanes inside the range, and
// the offset of lane0's output from row0's.
template <typename Visit>
void ForEachTile(int row0, int rows, Visit&& visit) {
  for (int r = row0; r < row0 + rows;) {
    const int first = r / kRows * kRows;
    const int lane_end = std::min(kRows, row0 + rows - first);
    visit(first, r - first, lane_end, r - row0);
    r = first + lane_end;
  }
}

}  // namespace

void TableTilesQ8Avx512Vnni(const EmbeddingTable& table, int row0, int rows, const Q8Activations& x,
                            float* y, int ldy) {
  const int d = table.d, blocks = d / kBlock;
  // [num_tokens, blocks]: -128 x the sum of each block's activation codes.
  thread_local std::vector<int32_t> corrections;
  corrections.resize(static_cast<size_t>(x.num_tokens) * blocks);
  for (int t = 0; t < x.num_tokens; ++t) {
    for (int b = 0; b < blocks; ++b) {
      const int8_t* xb = x.q + static_cast<size_t>(t) * d + b * kBlock;
      int sum = 0;
      for (int c = 0; c < kBlock; ++c) sum += xb[c];
      corrections[static_cast<size_t>(t) * blocks + b] = -128 * sum;
    }
  }
  for (int t = 0; t < x.num_tokens; t += kMaxTokens) {
    const int n = std::min(kMaxTokens, x.num_tokens - t);
    const int8_t* xq = x.q + static_cast<size_t>(t) * d;
    const float* dx = x.block_scales + static_cast<size_t>(t) * blocks;
    const int32_t* corr = corrections.data() + static_cast<size_t>(t) * blocks;
    float* y_part = y + static_cast<size_t>(t) * ldy;
    ForEachTile(row0, rows, [&](int first, int lane0, int lane_end, int out) {
      const uint8_t* codes = table.q8_tiles + static_cast<size_t>(first) * d;
      const uint16_t* scales = table.q8_tile_scales + static_cast<size_t>(first) * blocks;
      float* y_tile = y_part + out;
      WithTokenCount(n, [&](auto k) {
        TileQ8<k()>(codes, scales, blocks, xq, dx, corr, lane0, lane_end, y_tile, ldy);
      });
    });
  }
}

void TableTilesAvx512Vnni(const EmbeddingTable& table, int row0, int rows, const float* x, int ldx,
                          int num_tokens, float* y, int ldy) {
  const int d = table.d, blocks = d / kBlock;
  // Tiles outer: a tile (16 x d bytes) stays in L1/L2 while every group of
  // tokens passes over it.
  ForEachTile(row0, rows, [&](int first, int lane0, int lane_end, int out) {
    const uint8_t* codes = table.q8_tiles + static_cast<size_t>(first) * d;
    const uint16_t* scales = table.q8_tile_scales + static_cast<size_t>(first) * blocks;
    for (int t = 0; t < num_tokens; t += kMaxTokens) {
      const float* xt = x + static_cast<size_t>(t) * ldx;
      float* y_tile = y + static_cast<size_t>(t) * ldy + out;
      WithTokenCount(std::min(kMaxTokens, num_tokens - t), [&](auto k) {
        TileF32<k()>(codes, scales, blocks, xt, ldx, lane0, lane_end, y_tile, ldy);
      });
    }
  });
}

}  // namespace awqcore
