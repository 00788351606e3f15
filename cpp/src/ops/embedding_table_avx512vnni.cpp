// AVX-512 VNNI W8A8 table rows for several tokens (contract: TableRowsQ8* in
// linear_kernels.h): the int8 lm_head of batched decode.
//
// One token's W8A8 GEMV streams the table at the rate memory delivers, but
// each further token of a batch repeated the whole integer and float work on
// rows already in L1, so a batch of 8 spent 8x the ALU work on one pass over
// the table (the lm_head took 2-4x its batch-1 time per step). Here a block
// of 4 rows times up to 4 tokens is held in registers (16 accumulators), so
// each load of table codes, its offset and its scale serve every token of the
// block; tokens 5-8 take a second pass over the 4 rows, then in L1 (4 x d
// bytes: 6 KiB at Qwen2.5-1.5B's 1536).
//
// Each token's arithmetic is exactly that of the AVX2 single-token kernel
// (GemvFourRowsQ8Q8, embedding_table_avx2.cpp): per row the same 8 int32
// lanes per 32-column block (lane l: the exact integer dot of columns 4l..4l+3),
// converted and multiplied into one 8-lane accumulator by the same rounded
// f32 product s_b d_b, blocks in order, then the same Hsum4 tree. So a
// token's logits are bit-identical to those it gets alone (batched decode
// relies on it) and the op can send one token to the AVX2 kernel, which
// streams one token as fast.
//
// vpdpbusd multiplies unsigned by signed bytes and AVX-512 has no vpsignb,
// so the weights go in offset by 128 (w + 128 = w xor 0x80, in [0, 255]) and
// the activations signed:
//   sum_c (w_c + 128) x_c = sum_c w_c x_c + 128 sum_c x_c,
// so each token's lanes start from -128 sum_c x_c (one vpdpbusd of 128 by
// the activations per token and block, shared by the 4 rows; the weights'
// offset is one xor per row and block, shared by the tokens). Every lane sums
// 4 products: |sum| <= 4 * 255 * 127 + 4 * 128 * 127 < 2^31, exact, and
// equal to the AVX2 kernel's vpmaddubsw + vpmaddwd lane. Per block, row and
// token: vpdpbusd, convert, multiply, FMA, on 256-bit vectors (AVX-512 VL):
// Zen 4 runs two 256-bit or one 512-bit operation per cycle, so the wider
// vectors would only change the float lanes, and the sums with them.
// GCC 12 flags its own AVX-512 intrinsics as uninitialized (int4_q8_avx512.h).
#if defined(__GNUC__) && !defined(__clang__) && __GNUC__ < 13
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include <immintrin.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>

#include "ops/linear_kernels.h"
#include "ops/simd_avx2.h"

namespace awqcore {
namespace {

constexpr int kBlock = EmbeddingTable::kBlock;
constexpr int kBlockTokens = 4;  // tokens per register block

using avx2::Hsum4;

// kTokens (1..4) tokens from t of 4 rows (repeated where fewer remain):
// y[k][r] = W[rows[r]] . a_{t+k}.
template <int kTokens>
void FourRowsQ8(const EmbeddingTable& table, const int* rows, const Q8Activations& x, int t,
                float (*y)[4]) {
  const int d = table.d;
  const int blocks = d / kBlock;
  const int8_t* q[4];
  const uint16_t* s[4];
  #pragma GCC unroll 4
  for (int r = 0; r < 4; ++r) {
    q[r] = table.q8 + static_cast<size_t>(rows[r]) * d;
    s[r] = table.q8_scales + static_cast<size_t>(rows[r]) * blocks;
  }
  const int8_t* xq[kTokens];
  const float* dx[kTokens];
  #pragma GCC unroll 4
  for (int k = 0; k < kTokens; ++k) {
    xq[k] = x.q + static_cast<size_t>(t + k) * d;
    dx[k] = x.block_scales + static_cast<size_t>(t + k) * blocks;
  }
  const __m256i offset = _mm256_set1_epi8(static_cast<char>(0x80));
  // The next 4 rows follow these (a short final block's repeats aside): 128
  // bytes of them per block, as the AVX2 kernel prefetches them.
  const bool near = 4 * d <= kL1PrefetchBlockBytes;
  __m256 acc[kTokens][4];
  #pragma GCC unroll 4
  for (int k = 0; k < kTokens; ++k) {
    #pragma GCC unroll 4
    for (int r = 0; r < 4; ++r) acc[k][r] = _mm256_setzero_ps();
  }
  for (int b = 0; b < blocks; ++b) {
    const char* next = reinterpret_cast<const char*>(q[0] + 4 * static_cast<size_t>(d) + 4 * b * kBlock);
    if (near) {
      _mm_prefetch(next, _MM_HINT_T0);
      _mm_prefetch(next + 64, _MM_HINT_T0);
    } else {
      _mm_prefetch(next, _MM_HINT_T1);
      _mm_prefetch(next + 64, _MM_HINT_T1);
    }
    __m256i xs[kTokens], start[kTokens];
    #pragma GCC unroll 4
    for (int k = 0; k < kTokens; ++k) {
      xs[k] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xq[k] + b * kBlock));
      start[k] = _mm256_sub_epi32(_mm256_setzero_si256(),
                                  _mm256_dpbusd_epi32(_mm256_setzero_si256(), offset, xs[k]));
    }
    #pragma GCC unroll 4
    for (int r = 0; r < 4; ++r) {
      const __m256i w = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(q[r] + b * kBlock));
      const __m256i wu = _mm256_xor_si256(w, offset);
      const float sr = _cvtsh_ss(s[r][b]);
      #pragma GCC unroll 4
      for (int k = 0; k < kTokens; ++k) {
        const __m256 dot = _mm256_cvtepi32_ps(_mm256_dpbusd_epi32(start[k], wu, xs[k]));
        acc[k][r] = _mm256_fmadd_ps(dot, _mm256_set1_ps(sr * dx[k][b]), acc[k][r]);
      }
    }
  }
  #pragma GCC unroll 4
  for (int k = 0; k < kTokens; ++k) _mm_storeu_ps(y[k], Hsum4(acc[k][0], acc[k][1], acc[k][2], acc[k][3]));
}

}  // namespace

void TableRowsQ8Avx512Vnni(const EmbeddingTable& table, int row0, int rows, const Q8Activations& x,
                           float* y, int ldy) {
  for (int r0 = 0; r0 < rows; r0 += 4) {
    const int block_rows = std::min(4, rows - r0);
    int block[4];  // the last row repeated where fewer than 4 remain
    for (int r = 0; r < 4; ++r) block[r] = row0 + r0 + std::min(r, block_rows - 1);
    for (int t = 0; t < x.num_tokens; t += kBlockTokens) {
      const int tokens = std::min(kBlockTokens, x.num_tokens - t);
      float sums[kBlockTokens][4];
      switch (tokens) {
        case 4: FourRowsQ8<4>(table, block, x, t, sums); break;
        case 3: FourRowsQ8<3>(table, block, x, t, sums); break;
        case 2: FourRowsQ8<2>(table, block, x, t, sums); break;
        default: FourRowsQ8<1>(table, block, x, t, sums); break;
      }
      for (int k = 0; k < tokens; ++k) {
        std::copy_n(sums[k], block_rows, y + static_cast<size_t>(t + k) * ldy + r0);
      }
    }
  }
}

}  // namespace awqcore
