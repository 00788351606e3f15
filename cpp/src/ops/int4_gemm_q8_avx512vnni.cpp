// AVX-512 VNNI W4A8 GEMM: int4 weights times int8 activations
// (ops/q8_activations.h) for many tokens at once (prefill, > kQ8MaxTokens
// tokens per call); contract in linear_kernels.h. Compiled with -mavx512f
// -mavx512bw -mavx512vl -mavx512vnni (and the AVX2 flags); call only when the
// CPU has them.
//
// Why this blocking: prefill is compute-bound, and an int32 dot must become
// float once per 32-column activation block (each block has its own scale
// d_b). With a zmm lane per row, one block of 16 rows is 8 vpdpbusd (16
// lanes x 4 columns x 8) into one int32 accumulator, then 1 convert + 1 FMA
// by d_b: 8 multiply uops per 2 float uops. (Lanes that split a row's block,
// as the GEMV's [row a | row b] halves do, convert after every 2 vpdpbusd:
// 2 per 2.) Per 128-column group and token add 2 FMAs (the weight scale and
// the zero-point term), so 32 vpdpbusd carry 10 other vector uops.
//
// Lanes per row need the codes transposed: a tile of kTileRows rows is
// unpacked once per call to bytes (one code per byte, 0..15) in the order
// [block][quad i][row r][4 codes] (from the loader's tile layout,
// ops/int4_tiles.h: 4 loads and the nibble split per block; from the rows: a
// transpose), and then serves every token of the call
// (a prefill chunk: up to 128 tokens), its 8 quads of a block held in
// registers across kTokenBlock tokens. Unpacking costs ~80 uops per 64
// columns of the tile against ~21 x tokens for the dots, plus the wait for
// the codes, which prefill streams from DRAM: the next tile's are prefetched
// while this one computes. The activations come from the caller's rows (L2:
// tokens x in bytes) as the broadcast operand of vpdpbusd: 4 int8
// activations per instruction, no shuffle. A quad's 4 codes are the 4 columns whose activations sit at 4
// consecutive bytes of the permuted span (q8_activations.h): position p < 32
// of a span is the low nibble of code byte p, position 32 + p its high
// nibble, so block h of a span reads positions 16h..16h+15 (low nibbles of
// code bytes 16h..16h+15) and 32+16h..32+16h+15 (their high nibbles).
//
// Arithmetic per row r and token (the scalar Q8 kernel's, in this order):
// for each group g, f = sum over its blocks b of d_b * float(dot_b) (FMA
// chain), then acc = s_g * f + acc and acc = acc - (s_g z_g) * gsum_g (s_g z_g
// is exact in f32: an 11-bit significand times a 4-bit integer); y = acc +
// bias. A token's outputs depend on nothing but its own activations (not on
// the number of tokens in the call or its slot in a register block): prefill
// gives the same logits however its tokens are chunked.
//
// GCC 12's AVX-512 intrinsics start from _mm512_undefined_*() and warn about
// it where they are inlined (GCC bug 105593, fixed in GCC 13): silenced for
// this file.
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
#include "ops/int4_tiles.h"
#include "ops/linear_kernels.h"

namespace awqcore {
namespace {

constexpr int kTileRows = 16;    // int32 lanes of a zmm: one row each
static_assert(kTileRows == kInt4TileRows, "a register tile is a tile of the tile layout");
constexpr int kTokenBlock = 8;   // tokens per register block: 8 quads + 2 x 8 accumulators
constexpr int kQuadsPerBlock = kQ8Block / 4;

using Zmm = Lanes<kTileRows>;
using Tile = GemmTile<kTileRows>;

// The unpacked codes of span sp for rows codes[0..15] (32 code bytes each):
// out[8h + i] (h: the span's block, i < 4) = low nibbles of code bytes
// 16h + 4i .. 16h + 4i + 3 of each row, out[8h + 4 + i] = their high
// nibbles; lane r of each = row r.
void UnpackSpan(const uint8_t* const* codes, int sp, Zmm* out) {
  const __m512i nibble = _mm512_set1_epi8(15);
  for (int h = 0; h < 2; ++h) {
    // x[i]'s 128-bit lane k: code bytes 16h..16h+15 (4 dwords) of row i + 4k.
    __m512i x[4];
    for (int i = 0; i < 4; ++i) {
      const int offset = sp * 32 + h * 16;
      x[i] = _mm512_castsi128_si512(_mm_loadu_si128(reinterpret_cast<const __m128i*>(codes[i] + offset)));
      x[i] = _mm512_inserti32x4(x[i], _mm_loadu_si128(reinterpret_cast<const __m128i*>(codes[i + 4] + offset)), 1);
      x[i] = _mm512_inserti32x4(x[i], _mm_loadu_si128(reinterpret_cast<const __m128i*>(codes[i + 8] + offset)), 2);
      x[i] = _mm512_inserti32x4(x[i], _mm_loadu_si128(reinterpret_cast<const __m128i*>(codes[i + 12] + offset)), 3);
    }
    // A 4x4 dword transpose inside each 128-bit lane: dword c of row i + 4k
    // goes to lane 4k + i of y[c], so lane r of y[c] holds row r.
    const __m512i t0 = _mm512_unpacklo_epi32(x[0], x[1]), t1 = _mm512_unpackhi_epi32(x[0], x[1]);
    const __m512i t2 = _mm512_unpacklo_epi32(x[2], x[3]), t3 = _mm512_unpackhi_epi32(x[2], x[3]);
    const __m512i y[4] = {_mm512_unpacklo_epi64(t0, t2), _mm512_unpackhi_epi64(t0, t2),
                          _mm512_unpacklo_epi64(t1, t3), _mm512_unpackhi_epi64(t1, t3)};
    for (int c = 0; c < 4; ++c) {
      _mm512_store_si512(out + 8 * h + c, _mm512_and_si512(y[c], nibble));
      _mm512_store_si512(out + 8 * h + 4 + c, _mm512_and_si512(_mm512_srli_epi16(y[c], 4), nibble));
    }
  }
}

// UnpackSpan's quads for the 16 rows of a tile-layout tile (codes: its
// bytes, all 16 rows; the last tile padded).
void UnpackTiles(const uint8_t* codes, int blocks, Zmm* out) {
  const __m512i nibble = _mm512_set1_epi8(15);
  for (int b = 0; b < blocks; ++b) {
    for (int c = 0; c < 4; ++c) {
      const __m512i y = _mm512_loadu_si512(codes + (4 * b + c) * 64);
      _mm512_store_si512(out + 8 * b + c, _mm512_and_si512(y, nibble));
      _mm512_store_si512(out + 8 * b + 4 + c, _mm512_and_si512(_mm512_srli_epi16(y, 4), nibble));
    }
  }
}

// Tokens t .. t + kTokens - 1 times the tile: y[(t + k) * ldy + i] = lane
// lane0 + i, lanes [lane0, lane_end) (first: the tile's first row in the
// layer, for the bias). next_codes: the next tile's codes (16 rows x in / 2
// bytes, contiguous), to prefetch into L2 while this tile computes, or
// nullptr.
template <int kTokens>
void TileTimesTokens(const Int4Linear& layer, const Tile& tile, int first, int lane0, int lane_end,
                     const Q8Activations& x, int t, float* y, int ldy, const uint8_t* next_codes) {
  const int gs = layer.group_size;
  const int groups = layer.in / gs;
  const int blocks_per_group = gs / kQ8Block;
  const size_t in = layer.in;
  const int8_t* xq = x.q + t * in;                                            // [kTokens, in]
  const float* d = x.block_scales + t * (in / kQ8Block);                      // [kTokens, in / 32]
  const float* group_sums = x.group_sums + static_cast<size_t>(t) * groups;   // [kTokens, groups]
  __m512 acc[kTokens];
  #pragma GCC unroll 8
  for (int k = 0; k < kTokens; ++k) acc[k] = _mm512_setzero_ps();
  for (int g = 0; g < groups; ++g) {
    __m512 group_acc[kTokens];
    #pragma GCC unroll 8
    for (int k = 0; k < kTokens; ++k) group_acc[k] = _mm512_setzero_ps();
    for (int b = g * blocks_per_group; b < (g + 1) * blocks_per_group; ++b) {
      if (next_codes) {  // 16 x 16 code bytes per block: 4 lines
        for (int line = 0; line < 4; ++line) {
          _mm_prefetch(reinterpret_cast<const char*>(next_codes + b * 256 + line * 64), _MM_HINT_T1);
        }
      }
      const Zmm* quads = tile.quads.data() + static_cast<size_t>(b) * kQuadsPerBlock;
      __m512i w[kQuadsPerBlock];
      #pragma GCC unroll 8
      for (int i = 0; i < kQuadsPerBlock; ++i) w[i] = _mm512_load_si512(quads + i);
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
    const __m512 s = _mm512_load_ps(tile.scales[g].bytes);
    const __m512 sz = _mm512_load_ps(tile.zero_terms[g].bytes);
    #pragma GCC unroll 8
    for (int k = 0; k < kTokens; ++k) {
      acc[k] = _mm512_fmadd_ps(s, group_acc[k], acc[k]);
      acc[k] = _mm512_fnmadd_ps(sz, _mm512_set1_ps(group_sums[k * groups + g]), acc[k]);
    }
  }
  // Lanes [lane0, lane_end) moved down to lanes [0, lane_end - lane0).
  const __mmask16 lanes = static_cast<__mmask16>(((1u << lane_end) - 1) & ~((1u << lane0) - 1));
  const __mmask16 stored = static_cast<__mmask16>((1u << (lane_end - lane0)) - 1);
  const __m512 bias = layer.bias ? _mm512_maskz_loadu_ps(lanes, layer.bias + first) : _mm512_setzero_ps();
  #pragma GCC unroll 8
  for (int k = 0; k < kTokens; ++k) {
    const __m512 out = _mm512_maskz_compress_ps(lanes, _mm512_add_ps(acc[k], bias));
    _mm512_mask_storeu_ps(y + static_cast<size_t>(t + k) * ldy, stored, out);
  }
}

}  // namespace

void Int4GemmQ8Avx512Vnni(const Int4Linear& layer, int row0, int rows, const Q8Activations& x,
                          float* y, int ldy) {
  thread_local Tile tile;
  thread_local std::vector<uint8_t> padded;  // the last tile of a tile layout, 16 rows
  const size_t row_bytes = layer.in / 2;
  const bool tiles = layer.layout == Int4Layout::kTiles;
  for (int r = row0; r < row0 + rows;) {
    // Register tiles: from row0 in the row layout, the layer's own tiles in
    // the tile layout (a call's rows outside them computed and not stored).
    const int first = tiles ? r / kTileRows * kTileRows : r;
    const int lane0 = r - first, lane_end = std::min(kTileRows, row0 + rows - first);
    const int tile_rows = std::min(kTileRows, layer.out - first);
    if (tiles) {
      UnpackTileScales(layer, first, tile_rows, tile);
      UnpackTiles(Int4FullTile(layer, first, padded), layer.in / kQ8Block, tile.quads.data());
    } else {
      UnpackTile(layer, first, lane_end, tile, UnpackSpan);
    }
    // Prefill streams every weight from DRAM once per call: the next tile's
    // codes are prefetched during this tile's first register block, so
    // unpacking does not wait for them.
    const int next = first + kTileRows;
    const uint8_t* next_codes = next < row0 + rows ? layer.qweight + static_cast<size_t>(next) * row_bytes : nullptr;
    float* y_tile = y + (r - row0);
    int t = 0;
    for (; t + kTokenBlock <= x.num_tokens; t += kTokenBlock) {
      TileTimesTokens<kTokenBlock>(layer, tile, first, lane0, lane_end, x, t, y_tile, ldy,
                                   t == 0 ? next_codes : nullptr);
    }
    if (t < x.num_tokens) {
      const uint8_t* prefetch = t == 0 ? next_codes : nullptr;
      WithTokenCount(x.num_tokens - t, [&](auto n) {
        TileTimesTokens<n()>(layer, tile, first, lane0, lane_end, x, t, y_tile, ldy, prefetch);
      });
    }
    r = first + lane_end;
  }
}

}  // namespace awqcore
