// AVX-512 VNNI W4A8 decode: int4 weights times the int8 activations of 1 to
// kQ8MaxTokens tokens (a decode step of one sequence or of a batch), with the
// prefill GEMM's lanes and arithmetic (int4_gemm_q8_avx512vnni.cpp): a zmm
// lane per row, 8 vpdpbusd per 32-column block of 16 rows, then one convert
// and one FMA by the block's activation scale. Contract in linear_kernels.h.
//
// Why not the GEMV at 8 tokens: its lanes split a row's block (4 lanes per
// block), so every 2 vpdpbusd of a token need a convert, a multiply and an
// FMA; lanes per row need 8 vpdpbusd per 2 float uops. The GEMM unpacks a
// 16-row tile to bytes in memory once per call, which a 128-token chunk
// repays; a decode step has at most 8 tokens, so here each block's codes are
// unpacked in registers and used at once by every token of the call. From
// the loader's tile layout (ops/int4_tiles.h) that is 4 contiguous loads,
// and + shift + and: ~16 uops per 16 x 32 codes, one sequential stream per
// tile. From the rows (AWQCORE_MAP_WEIGHTS=1, tests) it is 16 loads from 16
// row streams and the GEMM's 4x4 dword transpose: ~36 uops. Either against
// ~11 per token (8 vpdpbusd, convert, FMA) and the GEMV's ~48 at 8 tokens
// (12 per 128 columns and row, 4 rows per load). GCC 12 loads each 4-byte
// activation broadcast with its own vpbroadcastd; folding them into
// vpdpbusd's memory operand ({1to16}, inline asm) measured the same at 8
// tokens (isa_bench, Zen 4, three interleaved runs: the broadcast is a load,
// no vector ALU uop), so the intrinsics stay.
//
// A token's arithmetic is the GEMM's, in its order (per group: an FMA chain
// over its blocks, then the weight scale and the zero-point term), so a
// token's outputs depend on nothing but its own activations: a batch decodes
// bit for bit as its sequences alone, and the same as the GEMM.
//
// The tiles are the layer's 16-row tiles (rows 16i .. 16i + 15), so that a
// tile's weight scales and zero points come as vectors from the loader's
// transposed copy (ops/int4_linear.h: Int4TileScales), 48 bytes per group;
// a layer without one (tests) gets its tile's built per call, the same
// bytes. A call's rows need not start or end on a tile: the lanes outside
// them are computed and not stored.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "ops/int4_gemm_tile.h"
#include "ops/int4_linear.h"
#include "ops/int4_tiles.h"
#include "ops/linear_kernels.h"

namespace awqcore {
namespace {

constexpr int kTileRows = kTileScaleRows;  // int32 lanes of a zmm: one row each
static_assert(kTileRows == kInt4TileRows, "the scales' tiles are the codes' tiles");
constexpr int kQuadsPerBlock = kQ8Block / 4;
constexpr int kL1Ahead = 128;  // bytes of a row prefetched into L1 ahead of its block
constexpr int kBlockBytes = kTileRows * kQ8Block / 2;  // a block of a tile: 256 code bytes
// The tile layout streams one tile: its lines prefetched into L1 this far
// ahead (4 blocks: at 1 token from DRAM, Qwen2.5-1.5B's down projection
// streamed at 1.0-1.1x the rows' GB per CPU-second with it, 0.8-0.95x with
// 2 blocks, 0.7-0.8x with no prefetch into L1 or L2 (the next tile's lines,
// below); tools/isa_bench.cpp, Zen 4, a loaded machine).
constexpr int kL1AheadTiles = 4 * kBlockBytes;

// Lane r of out[i] (i < 4) = the low nibbles of code bytes 4i .. 4i + 3 at
// p + r * stride (row r of the tile), out[4 + i] = their high nibbles: the 32
// codes of one activation block (p: the block's first code byte in row 0).
// Inlined always, so `out` stays in registers.
[[gnu::always_inline]] inline void UnpackRowsBlock(const uint8_t* p, size_t stride, __m512i* out) {
  const __m512i nibble = _mm512_set1_epi8(15);
  // Rows 4k + i sit at p + 4k * stride + i * stride: four row pointers and
  // three index registers address all 16.
  const uint8_t* rows_of_lane[4] = {p, p + 4 * stride, p + 8 * stride, p + 12 * stride};
  // x[i]'s 128-bit lane k: the 16 code bytes of row i + 4k.
  __m512i x[4];
  #pragma GCC unroll 4
  for (int i = 0; i < 4; ++i) {
    const size_t at = i * stride;
    x[i] = _mm512_castsi128_si512(_mm_loadu_si128(reinterpret_cast<const __m128i*>(rows_of_lane[0] + at)));
    x[i] = _mm512_inserti32x4(x[i], _mm_loadu_si128(reinterpret_cast<const __m128i*>(rows_of_lane[1] + at)), 1);
    x[i] = _mm512_inserti32x4(x[i], _mm_loadu_si128(reinterpret_cast<const __m128i*>(rows_of_lane[2] + at)), 2);
    x[i] = _mm512_inserti32x4(x[i], _mm_loadu_si128(reinterpret_cast<const __m128i*>(rows_of_lane[3] + at)), 3);
  }
  // A 4x4 dword transpose inside each 128-bit lane: dword c of row i + 4k
  // goes to lane 4k + i of y[c].
  const __m512i t0 = _mm512_unpacklo_epi32(x[0], x[1]), t1 = _mm512_unpackhi_epi32(x[0], x[1]);
  const __m512i t2 = _mm512_unpacklo_epi32(x[2], x[3]), t3 = _mm512_unpackhi_epi32(x[2], x[3]);
  const __m512i y[4] = {_mm512_unpacklo_epi64(t0, t2), _mm512_unpackhi_epi64(t0, t2),
                        _mm512_unpacklo_epi64(t1, t3), _mm512_unpackhi_epi64(t1, t3)};
  #pragma GCC unroll 4
  for (int c = 0; c < 4; ++c) {
    out[c] = _mm512_and_si512(y[c], nibble);
    out[4 + c] = _mm512_and_si512(_mm512_srli_epi16(y[c], 4), nibble);
  }
}

// UnpackRowsBlock's result from the tile layout (p: the block's 256 bytes,
// the 4 vectors before the nibbles are split).
[[gnu::always_inline]] inline void UnpackTileBlock(const uint8_t* p, __m512i* out) {
  const __m512i nibble = _mm512_set1_epi8(15);
  #pragma GCC unroll 4
  for (int c = 0; c < 4; ++c) {
    const __m512i y = _mm512_loadu_si512(p + 64 * c);
    out[c] = _mm512_and_si512(y, nibble);
    out[4 + c] = _mm512_and_si512(_mm512_srli_epi16(y, 4), nibble);
  }
}

// All kTokens tokens of x times the 16 rows of a tile: lanes [lane0,
// lane_end) are stored, lane i at y[k * ldy + i - lane0]. codes: the tile's
// rows at a stride of in / 2 bytes; params: its Int4TileScales entries
// [groups][48 bytes]; bias: the tile's first row's, or nullptr; next: the
// codes to prefetch into L2 while this tile computes (the next tile: 256
// bytes per block). kLayout: the order of `codes` (kTiles: the tile's 16 rows
// in the tile layout).
template <int kTokens, Int4Layout kLayout>
void TileTimesTokens(const Int4Linear& layer, const uint8_t* codes, const uint8_t* params, const float* bias,
                     const uint8_t* next, int lane0, int lane_end, const Q8Activations& x, float* y, int ldy) {
  const int gs = layer.group_size;
  const int groups = layer.in / gs;
  const int blocks_per_group = gs / kQ8Block;
  const size_t in = layer.in;
  const size_t row_bytes = in / 2;
  const int8_t* xq = x.q;                  // [kTokens, in], permuted
  const float* d = x.block_scales;         // [kTokens, in / 32]
  const float* group_sums = x.group_sums;  // [kTokens, groups]
  __m512 acc[kTokens];
  #pragma GCC unroll 8
  for (int k = 0; k < kTokens; ++k) acc[k] = _mm512_setzero_ps();
  for (int g = 0; g < groups; ++g) {
    __m512 group_acc[kTokens];
    #pragma GCC unroll 8
    for (int k = 0; k < kTokens; ++k) group_acc[k] = _mm512_setzero_ps();
    for (int b = g * blocks_per_group; b < (g + 1) * blocks_per_group; ++b) {
      // Block b: code bytes 16b .. 16b + 15 of each row (span b / 2, half b % 2).
      #pragma GCC unroll 4
      for (int i = 0; i < 4; ++i) {
        _mm_prefetch(reinterpret_cast<const char*>(next + b * kBlockBytes + i * 64), _MM_HINT_T1);
        if (kLayout == Int4Layout::kTiles) {
          _mm_prefetch(reinterpret_cast<const char*>(codes + b * kBlockBytes + i * 64 + kL1AheadTiles), _MM_HINT_T0);
        } else {
          // Into L1, two lines ahead: each block of 4 rows' lines, every 4 blocks all 16.
          const size_t r = 4 * (b % 4) + i;
          _mm_prefetch(reinterpret_cast<const char*>(codes + r * row_bytes + (b / 4) * 64 + kL1Ahead), _MM_HINT_T0);
        }
      }
      __m512i w[kQuadsPerBlock];
      if (kLayout == Int4Layout::kTiles) {
        UnpackTileBlock(codes + static_cast<size_t>(b) * kBlockBytes, w);
      } else {
        UnpackRowsBlock(codes + 16 * b, row_bytes, w);
      }
      const int first = (b / 2) * kQ8Span + (b % 2) * (kQ8Block / 2);  // block b's first position
      #pragma GCC unroll 8
      for (int k = 0; k < kTokens; ++k) {
        const int8_t* xb = xq + k * in + first;
        __m512i dot = _mm512_setzero_si512();
        #pragma GCC unroll 8
        for (int i = 0; i < kQuadsPerBlock; ++i) {
          int32_t four;
          std::memcpy(&four, xb + kQuadOffset[i], sizeof(four));
          dot = _mm512_dpbusd_epi32(dot, w[i], _mm512_set1_epi32(four));
        }
        group_acc[k] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), _mm512_set1_ps(d[k * (in / kQ8Block) + b]),
                                       group_acc[k]);
      }
    }
    const uint8_t* entry = params + static_cast<size_t>(g) * kTileScaleBytes;
    const __m512 s = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(entry)));
    const __m512i z = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(entry + 32)));
    const __m512 sz = _mm512_mul_ps(s, _mm512_cvtepi32_ps(z));  // exact: 11 x 4 bits
    #pragma GCC unroll 8
    for (int k = 0; k < kTokens; ++k) {
      acc[k] = _mm512_fmadd_ps(s, group_acc[k], acc[k]);
      acc[k] = _mm512_fnmadd_ps(sz, _mm512_set1_ps(group_sums[k * groups + g]), acc[k]);
    }
  }
  // Lanes [lane0, lane_end) moved down to lanes [0, lane_end - lane0).
  const __mmask16 lanes = static_cast<__mmask16>(((1u << lane_end) - 1) & ~((1u << lane0) - 1));
  const __mmask16 stored = static_cast<__mmask16>((1u << (lane_end - lane0)) - 1);
  const __m512 bias_v = bias ? _mm512_maskz_loadu_ps(lanes, bias) : _mm512_setzero_ps();
  #pragma GCC unroll 8
  for (int k = 0; k < kTokens; ++k) {
    const __m512 out = _mm512_maskz_compress_ps(lanes, _mm512_add_ps(acc[k], bias_v));
    _mm512_mask_storeu_ps(y + static_cast<size_t>(k) * ldy, stored, out);
  }
}

}  // namespace

void Int4DecodeQ8Avx512Vnni(const Int4Linear& layer, int row0, int rows, const Q8Activations& x,
                            float* y, int ldy) {
  thread_local std::vector<uint8_t> padded;  // [16][in / 2]: a tile that runs past the layer's rows
  thread_local std::vector<uint8_t> params;  // a tile's Int4TileScales entries, for a layer without them
  const size_t row_bytes = layer.in / 2;
  const int groups = layer.in / layer.group_size;
  for (int t = 0; t < x.num_tokens; t += kQ8MaxTokens) {
    const Q8Activations part = x.Tokens(t, std::min(kQ8MaxTokens, x.num_tokens - t));
    float* y_part = y + static_cast<size_t>(t) * ldy;
    for (int r = row0; r < row0 + rows;) {
      const int tile = r / kTileRows, first = tile * kTileRows;
      const int lane0 = r - first, lane_end = std::min(kTileRows, row0 + rows - first);
      const uint8_t* codes = Int4FullTile(layer, first, padded);
      const uint8_t* tile_params = nullptr;
      if (layer.tile_scales) {
        tile_params = layer.tile_scales + static_cast<size_t>(tile) * groups * kTileScaleBytes;
      } else {
        params.resize(static_cast<size_t>(groups) * kTileScaleBytes);
        for (int g = 0; g < groups; ++g) {
          for (int i = 0; i < kTileRows; ++i) {
            const size_t index = static_cast<size_t>(std::min(first + i, layer.out - 1)) * groups + g;
            std::memcpy(params.data() + g * kTileScaleBytes + 2 * i, &layer.scales[index], 2);
            params[g * kTileScaleBytes + 2 * kTileRows + i] = layer.zeros[index];
          }
        }
        tile_params = params.data();
      }
      const float* bias = layer.bias ? layer.bias + first : nullptr;
      const uint8_t* next = layer.qweight + (first + kTileRows) * row_bytes;  // a prefetch never faults
      float* y_tile = y_part + (r - row0);
      WithTokenCount(part.num_tokens, [&](auto n) {
        if (layer.layout == Int4Layout::kTiles) {
          TileTimesTokens<n(), Int4Layout::kTiles>(layer, codes, tile_params, bias, next, lane0, lane_end, part,
                                                   y_tile, ldy);
        } else {
          TileTimesTokens<n(), Int4Layout::kRows>(layer, codes, tile_params, bias, next, lane0, lane_end, part,
                                                  y_tile, ldy);
        }
      });
      r = first + lane_end;
    }
  }
}

}  // namespace awqcore
