// AVX2 W4A8 GEMM: int4 weights times int8 activations (ops/q8_activations.h)
// for many tokens at once (prefill, > kQ8MaxTokens tokens per call) on CPUs
// without AVX-512 VNNI; contract in linear_kernels.h. Compiled with the AVX2
// + FMA + F16C flags; call only when the CPU has them.
//
// The blocking of int4_gemm_q8_avx512vnni.cpp at 8 lanes: a ymm lane per
// row, a tile of kTileRows rows unpacked once per call to one code per byte
// in the order [block][quad i][row r][4 codes], so a 32-column block of 8
// rows and one token is 8 vpmaddubsw (codes times the broadcast activation
// dword: int16 pairs of at most 2 * 15 * 127 = 3810), 7 vpaddw (the 8 pairs
// of a lane sum to at most 30480 < 2^15: no saturation), 1 vpmaddwd by ones
// (-> int32 per row, exact), 1 convert, 1 FMA by d_b: 18 uops per 256
// multiply-adds, where the GEMV's token pairs (int4_linear_avx2.cpp) spend
// ~30 (their lanes split a row's block, so they convert every 2 vpmaddubsw,
// and split nibbles per row and span). Per group and token 2 more FMAs (the
// weight scale, the zero-point term). 16 ymm hold the 8 quads of a block and
// 2 accumulators for each of kTokenBlock tokens.
//
// Arithmetic per row and token, in this order (the AVX-512 GEMM's): per
// group g, f = sum over its blocks of d_b * float(dot_b), acc = s_g f + acc,
// acc = acc - (s_g z_g) gsum_g; y = acc + bias. A token's outputs depend on
// its own activations only, not on the call's other tokens.
#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "ops/int4_gemm_tile.h"
#include "ops/linear_kernels.h"

namespace awqcore {
namespace {

constexpr int kTileRows = 8;     // int32 lanes of a ymm: one row each
constexpr int kTokenBlock = 2;   // tokens per register block: 8 quads + 2 x 2 accumulators
constexpr int kQuadsPerBlock = kQ8Block / 4;

using Ymm = Lanes<kTileRows>;
using Tile = GemmTile<kTileRows>;

// The unpacked codes of span sp for rows codes[0..7] (32 code bytes each):
// out[8h + i] (h: the span's block, i < 4) = low nibbles of code bytes
// 16h + 4i .. 16h + 4i + 3 of each row, out[8h + 4 + i] = their high
// nibbles; lane r of each = row r (positions: int4_gemm_q8_avx512vnni.cpp).
void UnpackSpan(const uint8_t* const* codes, int sp, Ymm* out) {
  // An 8x8 dword transpose: row r's 8 dwords -> lane r of y[j].
  __m256i x[8];
  for (int r = 0; r < 8; ++r) x[r] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(codes[r] + sp * 32));
  __m256i t[8], u[8];
  for (int i = 0; i < 4; ++i) {
    t[2 * i] = _mm256_unpacklo_epi32(x[2 * i], x[2 * i + 1]);
    t[2 * i + 1] = _mm256_unpackhi_epi32(x[2 * i], x[2 * i + 1]);
  }
  for (int i = 0; i < 2; ++i) {  // rows 4i..4i+3
    u[4 * i + 0] = _mm256_unpacklo_epi64(t[4 * i], t[4 * i + 2]);
    u[4 * i + 1] = _mm256_unpackhi_epi64(t[4 * i], t[4 * i + 2]);
    u[4 * i + 2] = _mm256_unpacklo_epi64(t[4 * i + 1], t[4 * i + 3]);
    u[4 * i + 3] = _mm256_unpackhi_epi64(t[4 * i + 1], t[4 * i + 3]);
  }
  // u[c] (c < 4): dwords c and c + 4 of rows 0..3; u[4 + c]: of rows 4..7.
  const __m256i nibble = _mm256_set1_epi8(15);
  for (int c = 0; c < 4; ++c) {
    const __m256i y[2] = {_mm256_permute2x128_si256(u[c], u[4 + c], 0x20),   // dword c
                          _mm256_permute2x128_si256(u[c], u[4 + c], 0x31)};  // dword c + 4
    for (int h = 0; h < 2; ++h) {
      _mm256_store_si256(reinterpret_cast<__m256i*>(out + 8 * h + c), _mm256_and_si256(y[h], nibble));
      _mm256_store_si256(reinterpret_cast<__m256i*>(out + 8 * h + 4 + c),
                         _mm256_and_si256(_mm256_srli_epi16(y[h], 4), nibble));
    }
  }
}


// Tokens t .. t + kTokens - 1 times the tile: y[(t + k) * ldy + r] for the
// first `rows` rows (row0: the tile's first row in the layer, for the bias).
template <int kTokens>
void TileTimesTokens(const Int4Linear& layer, const Tile& tile, int row0, int rows,
                     const Q8Activations& x, int t, float* y, int ldy) {
  const int gs = layer.group_size;
  const int groups = layer.in / gs;
  const int blocks_per_group = gs / kQ8Block;
  const size_t in = layer.in;
  const int8_t* xq = x.q + t * in;                                            // [kTokens, in]
  const float* d = x.block_scales + t * (in / kQ8Block);                      // [kTokens, in / 32]
  const float* group_sums = x.group_sums + static_cast<size_t>(t) * groups;   // [kTokens, groups]
  const __m256i ones = _mm256_set1_epi16(1);
  __m256 acc[kTokens];
  for (int k = 0; k < kTokens; ++k) acc[k] = _mm256_setzero_ps();
  for (int g = 0; g < groups; ++g) {
    __m256 group_acc[kTokens];
    for (int k = 0; k < kTokens; ++k) group_acc[k] = _mm256_setzero_ps();
    for (int b = g * blocks_per_group; b < (g + 1) * blocks_per_group; ++b) {
      const Ymm* quads = tile.quads.data() + static_cast<size_t>(b) * kQuadsPerBlock;
      __m256i w[kQuadsPerBlock];
      #pragma GCC unroll 8
      for (int i = 0; i < kQuadsPerBlock; ++i) w[i] = _mm256_load_si256(reinterpret_cast<const __m256i*>(quads + i));
      const int first = (b / 2) * kQ8Span + (b % 2) * (kQ8Block / 2);  // block b's first position
      #pragma GCC unroll 2
      for (int k = 0; k < kTokens; ++k) {
        const int8_t* xb = xq + k * in + first;
        __m256i pairs[kQuadsPerBlock];
        #pragma GCC unroll 8
        for (int i = 0; i < kQuadsPerBlock; ++i) {
          int32_t four;
          std::memcpy(&four, xb + kQuadOffset[i], sizeof(four));
          pairs[i] = _mm256_maddubs_epi16(w[i], _mm256_set1_epi32(four));
        }
        const __m256i sum16 = _mm256_add_epi16(
            _mm256_add_epi16(_mm256_add_epi16(pairs[0], pairs[1]), _mm256_add_epi16(pairs[2], pairs[3])),
            _mm256_add_epi16(_mm256_add_epi16(pairs[4], pairs[5]), _mm256_add_epi16(pairs[6], pairs[7])));
        const __m256i dot = _mm256_madd_epi16(sum16, ones);
        group_acc[k] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), _mm256_set1_ps(d[k * (in / kQ8Block) + b]),
                                       group_acc[k]);
      }
    }
    const __m256 s = _mm256_load_ps(reinterpret_cast<const float*>(tile.scales[g].bytes));
    const __m256 sz = _mm256_load_ps(reinterpret_cast<const float*>(tile.zero_terms[g].bytes));
    for (int k = 0; k < kTokens; ++k) {
      acc[k] = _mm256_fmadd_ps(s, group_acc[k], acc[k]);
      acc[k] = _mm256_fnmadd_ps(sz, _mm256_set1_ps(group_sums[k * groups + g]), acc[k]);
    }
  }
  alignas(32) float bias[kTileRows] = {};
  if (layer.bias) std::copy_n(layer.bias + row0, rows, bias);
  const __m256 bias_v = _mm256_load_ps(bias);
  for (int k = 0; k < kTokens; ++k) {
    alignas(32) float out[kTileRows];
    _mm256_store_ps(out, _mm256_add_ps(acc[k], bias_v));
    std::copy_n(out, rows, y + static_cast<size_t>(t + k) * ldy);
  }
}

}  // namespace

void Int4GemmQ8Avx2(const Int4Linear& layer, int row0, int rows, const Q8Activations& x, float* y,
                    int ldy) {
  RequireRowLayout(layer, "Int4GemmQ8Avx2");
  thread_local Tile tile;
  for (int r = 0; r < rows; r += kTileRows) {
    const int tile_rows = std::min(kTileRows, rows - r);
    UnpackTile(layer, row0 + r, tile_rows, tile, UnpackSpan);
    float* y_tile = y + r;
    int t = 0;
    for (; t + kTokenBlock <= x.num_tokens; t += kTokenBlock) {
      TileTimesTokens<kTokenBlock>(layer, tile, row0 + r, tile_rows, x, t, y_tile, ldy);
    }
    if (t < x.num_tokens) TileTimesTokens<1>(layer, tile, row0 + r, tile_rows, x, t, y_tile, ldy);
  }
}

}  // namespace awqcore
