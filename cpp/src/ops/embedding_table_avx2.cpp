// AVX2 + FMA + F16C f16 row kernel (contract in linear_kernels.h): the lm_head.
//
// Decode: SmolLM2's lm_head is 49152 rows x 576 halves = 57 MB per token, a
// pure stream. Per 8 weights: one 16-byte load + vcvtph2ps and one FMA; 4
// rows share each 32-byte load of x. At ~5 GB/s per core that is ~5.5 ms on
// two cores, far above the ~1 cycle per 8 weights of arithmetic.
// Prefill with all logits (perplexity): 4 x 256 tiles converted to f32 once
// and reused for every token by the shared 4x2 micro-kernel (simd_avx2.h).
#include <immintrin.h>

#include <algorithm>
#include <cstdint>

#include "ops/linear_kernels.h"
#include "ops/simd_avx2.h"

namespace awqcore {
namespace {

using avx2::kTileColumns;

constexpr int kGemmMinTokens = 4;

inline __m256 Halves8(const uint16_t* p) {
  return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}

// One token, 4 rows (row_ptrs may repeat a row to pad a short block):
// y[r] = W[r] . x. The arithmetic is exactly that of the tile path (per
// 256-column tile one FMA chain per row, Hsum4, a scalar FMA tail, then
// y += tile sum), so a token's logits do not depend on how many tokens share
// the call (Transformer's last-only logits equal the last row of all logits).
// One chain per row and 4 rows give 4 FMAs in flight, half the FMA peak but
// ~16 GB/s of f16 per core: still above what memory delivers.
void GemvFourRows(const uint16_t* const* row_ptrs, int d, const float* x, float* y) {
  __m128 total = _mm_setzero_ps();
  for (int column0 = 0; column0 < d; column0 += kTileColumns) {
    const int width = std::min(kTileColumns, d - column0);
    const uint16_t* w0 = row_ptrs[0] + column0;
    const uint16_t* w1 = row_ptrs[1] + column0;
    const uint16_t* w2 = row_ptrs[2] + column0;
    const uint16_t* w3 = row_ptrs[3] + column0;
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

void ConvertTile(const uint16_t* weight, int d, int row, int rows, int column0, int width,
                 float* tile) {
  for (int r = 0; r < 4; ++r) {
    float* out = tile + r * kTileColumns;
    if (r >= rows) {
      std::fill_n(out, width, 0.f);
      continue;
    }
    const uint16_t* in = weight + static_cast<size_t>(row + r) * d + column0;
    int c = 0;
    for (; c + 8 <= width; c += 8) _mm256_store_ps(out + c, Halves8(in + c));
    for (; c < width; ++c) out[c] = _cvtsh_ss(in[c]);
  }
}

}  // namespace

void F16RowsAvx2(const uint16_t* weight, int d, int row0, int rows, const float* x, int ldx,
                 int num_tokens, float* y, int ldy) {
  if (num_tokens < kGemmMinTokens) {
    for (int r0 = 0; r0 < rows; r0 += 4) {
      const int block_rows = std::min(4, rows - r0);
      const uint16_t* row_ptrs[4];
      for (int r = 0; r < 4; ++r) {
        row_ptrs[r] = weight + static_cast<size_t>(row0 + r0 + std::min(r, block_rows - 1)) * d;
      }
      for (int t = 0; t < num_tokens; ++t) {
        float sums[4];
        GemvFourRows(row_ptrs, d, x + static_cast<size_t>(t) * ldx, sums);
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
    for (int column0 = 0; column0 < d; column0 += kTileColumns) {
      const int width = std::min(kTileColumns, d - column0);
      ConvertTile(weight, d, row0 + r0, block_rows, column0, width, tile);
      avx2::AccumulateTile(tile, width, block_rows, x + column0, ldx, num_tokens, y + r0, ldy);
    }
  }
}

}  // namespace awqcore
