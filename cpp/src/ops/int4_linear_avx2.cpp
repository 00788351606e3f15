// AVX2 + FMA + F16C int4 row kernel (contract in linear_kernels.h).
//
// Decode (GEMV, few tokens). SmolLM2-135M streams ~56 MB of int4 codes,
// scales and zeros per token (+57 MB of f16 lm_head); at the ~10-15 GB/s two
// cores read that is 4-6 ms, so the unpacking must cost less than the bytes
// take to arrive. Per 8 weights this kernel issues 1 broadcast load of 4 code
// bytes, 1 variable shift (vpsrlvd), 1 and, 1 int->float convert and 1 FMA:
// no shuffle-port instruction at all (vpmovzxbd would put 1-2 per 8 weights
// on port 5), about 1.3 cycles per 8 weights per core.
//
// The zero point leaves the inner loop: per group g of row r
//   sum_c (q - z) s x_c = s (sum_c q x_c) - s z (sum_c x_c),
// with sum_c x_c (the group sums of x) computed once per call and shared by
// all rows. q is an exact small integer in f32; the two-term form loses at
// most a few ulps more than dequantize-then-dot, because sum q x and z sum x
// are each bounded by 15 sum |x|.
//
// W4A8/W4A16 (activations to int8/int16 per group, vpmaddubsw/vpmaddwd,
// zero point as z * sum(x)) was built and measured: 2.5x fewer ALU uops per
// weight, yet no faster on this 2-vCPU AVX2 machine (best of 3, one thread,
// 40 MB of 1536x576 g64 codes: 14.6 ms vs 15.0 ms for this kernel), so the
// loop is not ALU-bound here; and it rounds the activations (15-bit: 1.5e-4
// relative on the logits of test_forward, above its 1e-4 f32 tolerance). The
// exact f32 form stays.
//
// Prefill (GEMM, >= kGemmMinTokens tokens): a 4-row x 256-column tile is
// dequantized once per call, exactly ((q - z) s = fma(q, s, -z s), see
// int4_linear.cpp), and reused for every token by the 4x2 FMA micro-kernel
// (simd_avx2.h): unpacking is amortised over the tokens and the kernel runs
// at the FMA rate.
#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <cstring>

#include "ops/linear_kernels.h"
#include "ops/simd_avx2.h"

namespace awqcore {
namespace {

using avx2::kTileColumns;

constexpr int kGemmMinTokens = 4;  // below: GEMV per token (unpacking per token is cheaper than a tile pass)
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
  const uint8_t* codes[kRows];
  const uint16_t* scales[kRows];
  const uint8_t* zeros[kRows];
  for (int r = 0; r < kRows; ++r) {
    codes[r] = layer.qweight + static_cast<size_t>(row + r) * (layer.in / 2);
    scales[r] = layer.scales + static_cast<size_t>(row + r) * groups;
    zeros[r] = layer.zeros + static_cast<size_t>(row + r) * groups;
  }
  __m256 acc[kRows];
  float zero_terms[kRows] = {};  // sum_g s z (sum of x over g)
  for (int r = 0; r < kRows; ++r) acc[r] = _mm256_setzero_ps();
  for (int g = 0; g < groups; ++g) {
    const float* xg = x + g * gs;
    __m256 even[kRows], odd[kRows];  // sum q x over the group, 8 lanes
    for (int r = 0; r < kRows; ++r) even[r] = odd[r] = _mm256_setzero_ps();
    for (int c = 0; c < gs; c += 16) {
      const __m256 x0 = _mm256_loadu_ps(xg + c);
      const __m256 x1 = _mm256_loadu_ps(xg + c + 8);
      const int byte = (g * gs + c) / 2;
      for (int r = 0; r < kRows; ++r) {
        even[r] = _mm256_fmadd_ps(Codes8(codes[r] + byte), x0, even[r]);
        odd[r] = _mm256_fmadd_ps(Codes8(codes[r] + byte + 4), x1, odd[r]);
      }
    }
    for (int r = 0; r < kRows; ++r) {
      const float s = _cvtsh_ss(scales[r][g]);
      acc[r] = _mm256_fmadd_ps(_mm256_set1_ps(s), _mm256_add_ps(even[r], odd[r]), acc[r]);
      zero_terms[r] += s * static_cast<float>(zeros[r][g]) * group_sums[g];
    }
  }
  float sums[kRows];
  if constexpr (kRows == 4) {
    _mm_storeu_ps(sums, avx2::Hsum4(acc[0], acc[1], acc[2], acc[3]));
  } else {
    for (int r = 0; r < kRows; ++r) sums[r] = avx2::Hsum(acc[r]);
  }
  for (int r = 0; r < kRows; ++r) {
    y[r] = sums[r] - zero_terms[r] + (layer.bias ? layer.bias[row + r] : 0.f);
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
  const int groups = layer.in / layer.group_size;
  if (num_tokens >= kGemmMinTokens || groups > kMaxGroups) {
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

}  // namespace awqcore
