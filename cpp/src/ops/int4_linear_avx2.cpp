// AVX2 + FMA + F16C int4 row kernels (contract in linear_kernels.h).
//
// Decode streams every weight once per token: SmolLM2-135M's linears are
// ~56 MB of int4 codes, scales and zeros, ~4 ms at the 13-14 GB/s two cores
// can read, so unpacking must cost less than the bytes take to arrive.
//
// W4A8 GEMV (Int4RowsQ8Avx2, <= kQ8MaxTokens tokens, the default decode):
// with the activations in int8 (ops/q8_activations.h), 64 weights of one
// row cost
//   1 load of 32 code bytes, and + shift + and (low, high nibbles),
//   2 vpmaddubsw (codes x int8 activations -> int16 pairs, <= 2*15*127),
//   1 vpaddw, 1 vpmaddwd by ones (-> 8 int32), 1 convert, 1 FMA by d_b:
// 9 uops, and no shuffle, as the activations come pre-permuted into the
// order the nibbles fall out in. Lanes 0-3 of the int32 sums belong to
// columns [0, 32) of the span, lanes 4-7 to [32, 64): the FMA multiplies them
// by [d_0 x4, d_1 x4]. Weight scales apply per group (g = 64, 128: once per
// group; g = 32: per half span, as [s_0 x4, s_1 x4]), and the zero point
// leaves the loop: sum_c (q - z) s a_c = s (sum_c q a_c) - s z (sum_c a_c),
// with the group sums of the rounded activations a_c = d_b q8_c precomputed.
// The integer parts are exact; the float sums differ from the scalar Q8
// kernel's only in order. Two things the loop alone does not show would
// otherwise take most of the time (perf annotate; Qwen2.5-1.5B shapes, g128,
// weights in DRAM, 2 threads; the GB/s gained are in the README):
//   - the zero-point term sum_g s z (sum of a over g): as a scalar loop it is
//     one dependent FMA per group and row, so ZeroTerms takes 8 groups per
//     vector;
//   - 4 rows are 4 interleaved streams through the same pages, which the
//     hardware prefetcher follows poorly when rows are short (1536 columns:
//     768 bytes): each span prefetches 128 bytes of the next 4 rows, which
//     lie right after these (rows are contiguous), so the next block arrives
//     while this one computes: into L1, or L2 for long rows
//     (kL1PrefetchBlockBytes). Prefetching past the matrix's end is harmless
//     (a prefetch never faults).
//
// Exact f32 GEMV (Int4RowsAvx2, < kTileMinTokens tokens; the kFloat32 mode
// and widths that are no multiple of 64): per 8 weights 1 broadcast load of 4
// code bytes, vpsrlvd, and, convert, FMA (32 ALU uops per 64 weights, ~3.5x
// the W4A8 kernel's), the zero point out of the loop as above with exact
// group sums of x.
//
// Prefill (GEMM, more tokens): a 4-row x 256-column tile is dequantized once
// per call, exactly ((q - z) s = fma(q, s, -z s), see int4_linear.cpp), and
// reused for every token by the 4x2 FMA micro-kernel (simd_avx2.h):
// unpacking is amortised over the tokens and the kernel runs at the FMA rate.
#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <cstring>

#include "ops/linear_kernels.h"
#include "ops/int4_q8_avx2.h"
#include "ops/simd_avx2.h"

namespace awqcore {
namespace {

constexpr int kMaxGroups = 2048;   // group sums on the stack (8 KiB): in <= 65536 at g = 32

// 8 codes (4 bytes, little-endian: code k in bits 4k..4k+3, which is column k
// of the span) -> 8 floats in column order.
inline __m256 Codes8(const uint8_t* p) {
  uint32_t word;
  std::memcpy(&word, p, sizeof(word));
  const __m256i shifts = _mm256_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28);
  const __m256i v = _mm256_srlv_epi32(_mm256_set1_epi32(static_cast<int>(word)), shifts);
  return _mm256_cvtepi32_ps(_mm256_and_si256(v, _mm256_set1_epi32(15)));
}

// group_sums[g] = sum of x over group g; x: [in].
void GroupSums(const float* x, int in, int group_size, float* group_sums) {
  for (int g = 0; g < in / group_size; ++g) {
    const float* xg = x + g * group_size;
    __m256 a = _mm256_loadu_ps(xg), b = _mm256_loadu_ps(xg + 8);
    for (int c = 16; c < group_size; c += 16) {
      a = _mm256_add_ps(a, _mm256_loadu_ps(xg + c));
      b = _mm256_add_ps(b, _mm256_loadu_ps(xg + c + 8));
    }
    group_sums[g] = avx2::Hsum(_mm256_add_ps(a, b));
  }
}

// kRows (1 or 4) rows from `row`, one token: y[r] = W[row + r] . x (+ bias).
// Two accumulators per row (even/odd 8-column steps) keep 2 * kRows FMA
// chains in flight against the 4-cycle FMA latency.
template <int kRows>
void GemvRows(const Int4Linear& layer, int row, const float* x, const float* group_sums,
              float* y) {
  const int gs = layer.group_size;
  const int groups = layer.in / gs;
  const RowPointers<kRows> rows(layer, row);
  const uint8_t* const* codes = rows.codes;
  const uint16_t* const* scales = rows.scales;
  const uint8_t* const* zeros = rows.zeros;
  __m256 acc[kRows];
  for (int r = 0; r < kRows; ++r) acc[r] = _mm256_setzero_ps();
  for (int g = 0; g < groups; ++g) {
    const float* xg = x + g * gs;
    __m256 even[kRows], odd[kRows];  // sum q x over the group, 8 lanes
    #pragma GCC unroll 4
    for (int r = 0; r < kRows; ++r) even[r] = odd[r] = _mm256_setzero_ps();
    for (int c = 0; c < gs; c += 16) {
      const __m256 x0 = _mm256_loadu_ps(xg + c);
      const __m256 x1 = _mm256_loadu_ps(xg + c + 8);
      const int byte = (g * gs + c) / 2;
      #pragma GCC unroll 4
      for (int r = 0; r < kRows; ++r) {
        even[r] = _mm256_fmadd_ps(Codes8(codes[r] + byte), x0, even[r]);
        odd[r] = _mm256_fmadd_ps(Codes8(codes[r] + byte + 4), x1, odd[r]);
      }
    }
    #pragma GCC unroll 4
    for (int r = 0; r < kRows; ++r) {
      const __m256 s = _mm256_set1_ps(_cvtsh_ss(scales[r][g]));
      acc[r] = _mm256_fmadd_ps(s, _mm256_add_ps(even[r], odd[r]), acc[r]);
    }
  }
  #pragma GCC unroll 4
  for (int r = 0; r < kRows; ++r) {  // minus sum_g s z (sum of x over g)
    acc[r] = _mm256_sub_ps(acc[r], ZeroTerms(scales[r], zeros[r], group_sums, groups));
  }
  StoreRows<kRows>(layer, row, acc, y);
}

// kRows (1 or 4) rows from `row`, token t, group size 32: a span holds two
// groups, so the weight scales apply per half span, as [s_0 x4, s_1 x4].
template <int kRows>
void Q8GemvRowsG32(const Int4Linear& layer, int row, const Q8Activations& x, int t, float* y) {
  const int groups = layer.in / kQ8Block;
  const int spans = layer.in / kQ8Span;
  const int8_t* xq = x.q + static_cast<size_t>(t) * layer.in;          // [in], permuted
  const float* d = x.block_scales + static_cast<size_t>(t) * groups;
  const float* group_sums = x.group_sums + static_cast<size_t>(t) * groups;
  const RowPointers<kRows> rows(layer, row);
  __m256 acc[kRows];
  #pragma GCC unroll 4
  for (int r = 0; r < kRows; ++r) acc[r] = _mm256_setzero_ps();
  // f16 pair [s_0, s_1] -> [s_0 x4, s_1 x4]
  const __m128i spread = _mm_setr_epi8(0, 1, 0, 1, 0, 1, 0, 1, 2, 3, 2, 3, 2, 3, 2, 3);
  const bool near = 2 * layer.in <= kL1PrefetchBlockBytes;  // the next block's 4 rows, in / 2 bytes each
  for (int sp = 0; sp < spans; ++sp) {
    if (kRows == 4) {  // the next 4 rows' codes, 128 bytes per span (see header)
      const uint8_t* next = rows.codes[0] + 2 * layer.in + sp * 128;
      if (near) {
        avx2::PrefetchBytes(next, 128);
      } else {
        avx2::PrefetchBytesToL2(next, 128);
      }
    }
    const __m256i xe = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xq + sp * kQ8Span));
    const __m256i xo = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xq + sp * kQ8Span + 32));
    const __m256 dv = HalfSpanPair(d[2 * sp], d[2 * sp + 1]);
    #pragma GCC unroll 4
    for (int r = 0; r < kRows; ++r) {
      uint32_t pair;
      std::memcpy(&pair, rows.scales[r] + 2 * sp, sizeof(pair));
      const __m256 sv = _mm256_cvtph_ps(_mm_shuffle_epi8(_mm_cvtsi32_si128(static_cast<int>(pair)), spread));
      const __m256 dots = _mm256_cvtepi32_ps(Dot64(rows.codes[r] + sp * 32, xe, xo));
      acc[r] = _mm256_fmadd_ps(dots, _mm256_mul_ps(dv, sv), acc[r]);
    }
  }
  #pragma GCC unroll 4
  for (int r = 0; r < kRows; ++r) {  // minus sum_g s z (sum of a over g)
    acc[r] = _mm256_sub_ps(acc[r], ZeroTerms(rows.scales[r], rows.zeros[r], group_sums, groups));
  }
  StoreRows<kRows>(layer, row, acc, y);
}

// kRows rows from `row`, token t, any group size.
template <int kRows>
void Q8GemvRows(const Int4Linear& layer, int row, const Q8Activations& x, int t, float* y) {
  if (layer.group_size == kQ8Block) {
    Q8GemvRowsG32<kRows>(layer, row, x, t, y);
  } else {
    Q8GemvGroups<kRows, 1>(layer, row, x, t, &y);
  }
}

// tile[r][0 .. width) = exact dequantized W[row + r, column0 ..), r < rows;
// rows rows..3 are zeroed so the 4-row micro-kernel can run over them.
void DequantizeTile(const Int4Linear& layer, int row, int rows, int column0, int width,
                    float* tile) {
  const int gs = layer.group_size;
  const int groups = layer.in / gs;
  for (int r = 0; r < 4; ++r) {
    float* out = tile + r * kTileColumns;
    if (r >= rows) {
      std::fill_n(out, width, 0.f);
      continue;
    }
    const uint8_t* codes = layer.qweight + static_cast<size_t>(row + r) * (layer.in / 2);
    const size_t group_base = static_cast<size_t>(row + r) * groups;
    for (int c0 = 0; c0 < width; c0 += gs) {
      const int g = (column0 + c0) / gs;
      const float s = _cvtsh_ss(layer.scales[group_base + g]);
      const __m256 scale = _mm256_set1_ps(s);
      const __m256 offset = _mm256_set1_ps(-static_cast<float>(layer.zeros[group_base + g]) * s);
      for (int c = c0; c < c0 + gs; c += 8) {
        _mm256_store_ps(out + c, _mm256_fmadd_ps(Codes8(codes + (column0 + c) / 2), scale, offset));
      }
    }
  }
}

void GemmRows(const Int4Linear& layer, int row0, int rows, const float* x, int ldx,
              int num_tokens, float* y, int ldy) {
  const int tile_columns = kTileColumns / layer.group_size * layer.group_size;
  alignas(32) float tile[4 * kTileColumns];  // [4, kTileColumns]
  for (int r0 = 0; r0 < rows; r0 += 4) {
    const int block_rows = std::min(4, rows - r0);
    float* y_block = y + r0;
    for (int t = 0; t < num_tokens; ++t) {
      for (int r = 0; r < block_rows; ++r) {
        y_block[static_cast<size_t>(t) * ldy + r] =
            layer.bias ? layer.bias[row0 + r0 + r] : 0.f;
      }
    }
    for (int column0 = 0; column0 < layer.in; column0 += tile_columns) {
      const int width = std::min(tile_columns, layer.in - column0);
      DequantizeTile(layer, row0 + r0, block_rows, column0, width, tile);
      avx2::AccumulateTile(tile, width, block_rows, x + column0, ldx, num_tokens, y_block, ldy);
    }
  }
}

}  // namespace

void Int4RowsAvx2(const Int4Linear& layer, int row0, int rows, const float* x, int ldx,
                  int num_tokens, float* y, int ldy) {
  RequireRowLayout(layer, "Int4RowsAvx2");
  const int groups = layer.in / layer.group_size;
  if (num_tokens >= kTileMinTokens || groups > kMaxGroups) {
    GemmRows(layer, row0, rows, x, ldx, num_tokens, y, ldy);
    return;
  }
  float group_sums[kMaxGroups];
  for (int t = 0; t < num_tokens; ++t) {
    const float* x_t = x + static_cast<size_t>(t) * ldx;
    float* y_t = y + static_cast<size_t>(t) * ldy;
    GroupSums(x_t, layer.in, layer.group_size, group_sums);
    int r = 0;
    for (; r + 4 <= rows; r += 4) GemvRows<4>(layer, row0 + r, x_t, group_sums, y_t + r);
    for (; r < rows; ++r) GemvRows<1>(layer, row0 + r, x_t, group_sums, y_t + r);
  }
}

// Tokens inside the row block: its codes (4 rows x in/2 bytes) stay in L1/L2
// while every token reads them, so a batch shares one pass over the weights.
void Int4RowsQ8Avx2(const Int4Linear& layer, int row0, int rows, const Q8Activations& x,
                    float* y, int ldy) {
  RequireRowLayout(layer, "Int4RowsQ8Avx2");
  const bool pairs = layer.group_size > kQ8Block;  // Q8GemvGroups' group sizes
  int r = 0;
  for (; r + 4 <= rows; r += 4) {
    int t = 0;
    for (; pairs && t + 2 <= x.num_tokens; t += 2) {
      float* const ys[2] = {y + static_cast<size_t>(t) * ldy + r, y + static_cast<size_t>(t + 1) * ldy + r};
      Q8GemvGroups<4, 2>(layer, row0 + r, x, t, ys);
    }
    for (; t < x.num_tokens; ++t) {
      Q8GemvRows<4>(layer, row0 + r, x, t, y + static_cast<size_t>(t) * ldy + r);
    }
  }
  for (; r < rows; ++r) {
    for (int t = 0; t < x.num_tokens; ++t) {
      Q8GemvRows<1>(layer, row0 + r, x, t, y + static_cast<size_t>(t) * ldy + r);
    }
  }
}

}  // namespace awqcore
