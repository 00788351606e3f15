// AVX2 + FMA + F16C table row kernels (contract in linear_kernels.h): the
// lm_head, f16 or int8.
//
// Decode: SmolLM2's lm_head is 49152 rows x 576 columns, a pure stream of
// 57 MB (f16) or 28.3 + 1.8 MB (int8) per token. Per 8 weights, f16: one
// 16-byte load + vcvtph2ps and one FMA; int8: one 8-byte vpmovsxbd load,
// vcvtdq2ps, a multiply by the block's scale (broadcast once per 32 columns)
// and one FMA. 4 rows share each 32-byte load of x. That arithmetic turned
// out to bind on this 2 GHz Xeon: the int8 f32 kernel streams 6-8 GB/s on
// two cores, so the int8-decode mode multiplies an int8 table by int8
// activations instead (GemvFourRowsQ8Q8, W8A8, 13-14.5 GB/s with the
// prefetch of the next rows).
// Prefill with all logits (perplexity): 4 x 256 tiles converted to f32 once
// and reused for every token by the shared 4x2 micro-kernel (simd_avx2.h).
//
// The int8 weight q * s is exact in f32 (7 + 11 significant bits), so both
// paths below see the same f32 weights in both forms and do the same
// arithmetic: a token's logits do not depend on how many tokens share the
// call (Transformer's last-only logits equal the last row of all logits).
#include <immintrin.h>

#include <algorithm>
#include <cstdint>

#include "ops/linear_kernels.h"
#include "ops/simd_avx2.h"

namespace awqcore {
namespace {

constexpr int kBlock = EmbeddingTable::kBlock;
static_assert(kTileColumns % kBlock == 0, "a tile holds whole int8 blocks");

inline __m256 Halves8(const uint16_t* p) {
  return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}

// 8 int8 weights times their block's scale, in f32 (exact).
inline __m256 Q8x8(const int8_t* p, __m256 scale) {
  const __m256i q = _mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p)));
  return _mm256_mul_ps(_mm256_cvtepi32_ps(q), scale);
}

// The scale of the block holding `column`, in all 8 lanes.
inline __m256 Scale(const uint16_t* scales_row, int column) {
  return _mm256_set1_ps(_cvtsh_ss(scales_row[column / kBlock]));
}

// One token, 4 f16 rows (rows may repeat to pad a short block): y[r] = W[r] . x.
// Per 256-column tile one FMA chain per row, Hsum4, a scalar FMA tail, then
// y += tile sum: exactly the tile path's arithmetic. One chain per row and 4
// rows give 4 FMAs in flight, half the FMA peak but ~16 GB/s of f16 per core:
// still above what memory delivers.
void GemvFourRowsF16(const EmbeddingTable& table, const int* rows, const float* x, float* y) {
  const int d = table.d;
  __m128 total = _mm_setzero_ps();
  for (int column0 = 0; column0 < d; column0 += kTileColumns) {
    const int width = std::min(kTileColumns, d - column0);
    const uint16_t* w0 = table.f16 + static_cast<size_t>(rows[0]) * d + column0;
    const uint16_t* w1 = table.f16 + static_cast<size_t>(rows[1]) * d + column0;
    const uint16_t* w2 = table.f16 + static_cast<size_t>(rows[2]) * d + column0;
    const uint16_t* w3 = table.f16 + static_cast<size_t>(rows[3]) * d + column0;
    const float* xs = x + column0;
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    int c = 0;
    for (; c + 8 <= width; c += 8) {
      const __m256 v = _mm256_loadu_ps(xs + c);
      a0 = _mm256_fmadd_ps(Halves8(w0 + c), v, a0);
      a1 = _mm256_fmadd_ps(Halves8(w1 + c), v, a1);
      a2 = _mm256_fmadd_ps(Halves8(w2 + c), v, a2);
      a3 = _mm256_fmadd_ps(Halves8(w3 + c), v, a3);
    }
    __m128 sums = avx2::Hsum4(a0, a1, a2, a3);
    for (; c < width; ++c) {
      const __m128 w = _mm_setr_ps(_cvtsh_ss(w0[c]), _cvtsh_ss(w1[c]), _cvtsh_ss(w2[c]),
                                   _cvtsh_ss(w3[c]));
      sums = _mm_fmadd_ps(w, _mm_set1_ps(xs[c]), sums);
    }
    total = _mm_add_ps(total, sums);
  }
  _mm_storeu_ps(y, total);
}

// The same for 4 int8 rows. d and every tile width are multiples of 32, so a
// block's scale is broadcast once per 4 vectors and there is no tail.
void GemvFourRowsQ8(const EmbeddingTable& table, const int* rows, const float* x, float* y) {
  const int d = table.d;
  const int blocks = d / kBlock;  // scales per row
  const int8_t* q[4];
  const uint16_t* s[4];
  for (int r = 0; r < 4; ++r) {
    q[r] = table.q8 + static_cast<size_t>(rows[r]) * d;
    s[r] = table.q8_scales + static_cast<size_t>(rows[r]) * blocks;
  }
  __m128 total = _mm_setzero_ps();
  for (int column0 = 0; column0 < d; column0 += kTileColumns) {
    const int end = std::min(d, column0 + kTileColumns);
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    for (int block0 = column0; block0 < end; block0 += kBlock) {  // the block's first column
      const __m256 s0 = Scale(s[0], block0), s1 = Scale(s[1], block0);
      const __m256 s2 = Scale(s[2], block0), s3 = Scale(s[3], block0);
      for (int c = block0; c < block0 + kBlock; c += 8) {
        const __m256 v = _mm256_loadu_ps(x + c);
        a0 = _mm256_fmadd_ps(Q8x8(q[0] + c, s0), v, a0);
        a1 = _mm256_fmadd_ps(Q8x8(q[1] + c, s1), v, a1);
        a2 = _mm256_fmadd_ps(Q8x8(q[2] + c, s2), v, a2);
        a3 = _mm256_fmadd_ps(Q8x8(q[3] + c, s3), v, a3);
      }
    }
    total = _mm_add_ps(total, avx2::Hsum4(a0, a1, a2, a3));
  }
  _mm_storeu_ps(y, total);
}

// W8A8 for 4 int8 rows and one token (xq: its int8 activations in column
// order, dx: their block scales). vpmaddubsw multiplies unsigned by signed
// bytes, so the weights go in as |w| (unsigned: -128 becomes 128, correct)
// and the activations take w's sign (vpsignb; |x| <= 127, so negating never
// overflows, and x = 0 where w = 0): |w| (x sign w) = w x, in int16 pairs of
// at most 2 * 128 * 127 = 32512 < 2^15, no saturation. Per 32 weights and
// row: abs, sign, maddubs, madd, convert and one FMA by s_b d_b (~7 ALU uops
// against ~12 for the f32 kernel's widen, convert, scale and FMA).
void GemvFourRowsQ8Q8(const EmbeddingTable& table, const int* rows, const int8_t* xq,
                      const float* dx, float* y) {
  const int d = table.d;
  const int blocks = d / kBlock;
  const int8_t* q[4];
  const uint16_t* s[4];
  for (int r = 0; r < 4; ++r) {
    q[r] = table.q8 + static_cast<size_t>(rows[r]) * d;
    s[r] = table.q8_scales + static_cast<size_t>(rows[r]) * blocks;
  }
  const __m256i ones = _mm256_set1_epi16(1);
  const bool near = 4 * d <= kL1PrefetchBlockBytes;  // the next 4 rows (linear_kernels.h)
  __m256 acc[4];
  #pragma GCC unroll 4
  for (int r = 0; r < 4; ++r) acc[r] = _mm256_setzero_ps();
  for (int b = 0; b < blocks; ++b) {
    const __m256i x = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xq + b * kBlock));
    // The next 4 rows follow these (a short final block's repeats aside):
    // 128 bytes of them per block, as the int4 GEMV does and for the same
    // reason (int4_linear_avx2.cpp).
    if (near) {
      avx2::PrefetchBytes(q[0] + 4 * d + 4 * b * kBlock, 4 * kBlock);
    } else {
      avx2::PrefetchBytesToL2(q[0] + 4 * d + 4 * b * kBlock, 4 * kBlock);
    }
    #pragma GCC unroll 4
    for (int r = 0; r < 4; ++r) {
      const __m256i w = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(q[r] + b * kBlock));
      const __m256i pairs = _mm256_maddubs_epi16(_mm256_abs_epi8(w), _mm256_sign_epi8(x, w));
      const __m256 dot = _mm256_cvtepi32_ps(_mm256_madd_epi16(pairs, ones));
      acc[r] = _mm256_fmadd_ps(dot, _mm256_set1_ps(_cvtsh_ss(s[r][b]) * dx[b]), acc[r]);
    }
  }
  _mm_storeu_ps(y, avx2::Hsum4(acc[0], acc[1], acc[2], acc[3]));
}

// The 4 rows from `row`, the last of them repeated where fewer remain (a
// short final block).
void FourRows(int row, int rows_left, int* block) {
  for (int r = 0; r < 4; ++r) block[r] = row + std::min(r, rows_left - 1);
}

// tile[r][i] = W[row + r, column0 + i] in f32 for r < rows, 0 for the rest
// of the 4 rows; tile: [4, kTileColumns], 32-byte aligned.
void ConvertTile(const EmbeddingTable& table, int row, int rows, int column0, int width,
                 float* tile) {
  for (int r = 0; r < 4; ++r) {
    float* out = tile + r * kTileColumns;
    if (r >= rows) {
      std::fill_n(out, width, 0.f);
      continue;
    }
    const size_t start = static_cast<size_t>(row + r) * table.d + column0;
    if (table.f16 != nullptr) {
      const uint16_t* in = table.f16 + start;
      int c = 0;
      for (; c + 8 <= width; c += 8) _mm256_store_ps(out + c, Halves8(in + c));
      for (; c < width; ++c) out[c] = _cvtsh_ss(in[c]);
    } else {
      const int8_t* in = table.q8 + start;
      const uint16_t* scales = table.q8_scales + static_cast<size_t>(row + r) * (table.d / kBlock);
      for (int block0 = 0; block0 < width; block0 += kBlock) {  // relative to column0
        const __m256 scale = Scale(scales, column0 + block0);
        for (int c = block0; c < block0 + kBlock; c += 8) _mm256_store_ps(out + c, Q8x8(in + c, scale));
      }
    }
  }
}

}  // namespace

void TableRowsAvx2(const EmbeddingTable& table, int row0, int rows, const float* x, int ldx,
                   int num_tokens, float* y, int ldy) {
  if (num_tokens < kTileMinTokens) {
    for (int r0 = 0; r0 < rows; r0 += 4) {
      const int block_rows = std::min(4, rows - r0);
      int block[4];
      FourRows(row0 + r0, block_rows, block);
      for (int t = 0; t < num_tokens; ++t) {
        float sums[4];
        const float* xt = x + static_cast<size_t>(t) * ldx;
        if (table.f16 != nullptr) {
          GemvFourRowsF16(table, block, xt, sums);
        } else {
          GemvFourRowsQ8(table, block, xt, sums);
        }
        std::copy_n(sums, block_rows, y + static_cast<size_t>(t) * ldy + r0);
      }
    }
    return;
  }
  alignas(32) float tile[4 * kTileColumns];  // [4, kTileColumns]
  for (int r0 = 0; r0 < rows; r0 += 4) {
    const int block_rows = std::min(4, rows - r0);
    for (int t = 0; t < num_tokens; ++t) {
      std::fill_n(y + static_cast<size_t>(t) * ldy + r0, block_rows, 0.f);
    }
    for (int column0 = 0; column0 < table.d; column0 += kTileColumns) {
      const int width = std::min(kTileColumns, table.d - column0);
      ConvertTile(table, row0 + r0, block_rows, column0, width, tile);
      avx2::AccumulateTile(tile, width, block_rows, x + column0, ldx, num_tokens, y + r0, ldy);
    }
  }
}

void TableRowsQ8Avx2(const EmbeddingTable& table, int row0, int rows, const Q8Activations& x,
                     float* y, int ldy) {
  const int blocks = table.d / kBlock;
  for (int r0 = 0; r0 < rows; r0 += 4) {
    const int block_rows = std::min(4, rows - r0);
    int block[4];
    FourRows(row0 + r0, block_rows, block);
    for (int t = 0; t < x.num_tokens; ++t) {
      float sums[4];
      GemvFourRowsQ8Q8(table, block, x.q + static_cast<size_t>(t) * table.d,
                       x.block_scales + static_cast<size_t>(t) * blocks, sums);
      std::copy_n(sums, block_rows, y + static_cast<size_t>(t) * ldy + r0);
    }
  }
}

}  // namespace awqcore
