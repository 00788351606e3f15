// The row kernels behind the linear ops (int4_linear.h, embedding_table.h): each
// computes output rows [row0, row0 + rows) for num_tokens tokens, the unit of
// work the ops split across the thread pool:
//
//   y[t * ldy + r] = sum_c W[row0 + r, c] x[t * ldx + c] (+ bias[row0 + r]),  r < rows
//
// x: [num_tokens, ldx] (ldx >= in), y: [num_tokens, ldy]; y must not alias x.
// *Scalar: portable C++ (int4_linear.cpp, embedding_table.cpp).
// *Avx2:   AVX2 + FMA + F16C (*_avx2.cpp, compiled with those flags; call only
//          when IsaSupported(Isa::kAvx2)).
// *Avx512, *Avx512Vnni: the AVX-512 levels (cpu_features.h; *_avx512.cpp,
//          *_avx512vnni.cpp), only where they pay; call only when the CPU
//          supports the level.
// Int4Rows, Int4RowsQ8, TableRows, TableRowsQ8 (no suffix, `isa` last): the
//          kernel of the best level at or below `isa`, the one dispatch point
//          of the ops and the tests.
// The int4 kernels of the AVX2 and AVX-512 (no VNNI) levels read only the
// row layout of the codes (RequireRowLayout); the scalar and the AVX-512 VNNI
// ones read both (model_weights.h: Int4Layout).
// *Q8*:    the same sum for activations rounded to int8 (ops/q8_activations.h),
//          y[t * ldy + r] = sum_c W[row0 + r, c] d_b(c) q_t[c] (+ bias): the
//          decode path (W4A8).
#pragma once

#include <cstdint>
#include <string>
#include <type_traits>

#include "cpu_features.h"
#include "model_weights.h"
#include "ops/q8_activations.h"

namespace awqcore {

// The blocking every row kernel shares. The pool hands out rows in blocks of
// kRowBlock, a multiple of the AVX2 kernels' 4-row register blocking, so only
// a matrix's last block is short. With several tokens, a tile of kRowBlock x
// kTileColumns weights is converted to f32 once (4 KiB: L1-resident) and reused
// for every token, so the dot products vectorize (measured ~2x faster for int4
// than dequantizing inside the dot product). kTileColumns is a multiple of
// every allowed group size and of the int8 tables' 32-column blocks.
constexpr int kRowBlock = 4;
constexpr int kTileColumns = 256;
// From this many tokens the AVX2 row kernels dequantize a tile that serves
// them all (GEMM); below, a GEMV per token (unpacking per token is cheaper
// than a tile pass).
constexpr int kTileMinTokens = 4;
// The GEMV kernels stream 4 rows at a time and prefetch the next 4 rows (the
// next row block, contiguous after these) at the offset they read, one block
// ahead. Into L1 while a block is at most this many bytes (a quarter of a
// 32 KiB L1, so the lines stay there until used), into L2 beyond: with
// Qwen2.5-1.5B's down projection (8960 columns, 17.5 KiB blocks) L1
// prefetches that far ahead evict each other, and the L2 hint streams
// 1.3-1.7x more bytes per CPU-second (tools/isa_bench.cpp, Zen 4; at 4096
// columns both hints measure the same).
constexpr int kL1PrefetchBlockBytes = 8192;

void Int4RowsScalar(const Int4Linear& layer, int row0, int rows, const float* x, int ldx,
                    int num_tokens, float* y, int ldy);
void Int4RowsAvx2(const Int4Linear& layer, int row0, int rows, const float* x, int ldx,
                  int num_tokens, float* y, int ldy);
void Int4RowsQ8Scalar(const Int4Linear& layer, int row0, int rows, const Q8Activations& x,
                      float* y, int ldy);
void Int4RowsQ8Avx2(const Int4Linear& layer, int row0, int rows, const Q8Activations& x,
                    float* y, int ldy);
void Int4RowsQ8Avx512(const Int4Linear& layer, int row0, int rows, const Q8Activations& x,
                      float* y, int ldy);
// The W4A8 GEMM (int4_gemm_q8_avx512vnni.cpp, AVX-512 F/BW/VL/DQ + VNNI; call
// only when the CPU has them): any number of tokens, 16 rows x 8 tokens per
// register block, for prefill (and, as Int4DecodeQ8Avx512Vnni, decode). The integer dots are the scalar Q8 kernel's;
// the float sums run in another order than the GEMVs' (within f32 rounding,
// test_gemm_kernels). A token's outputs are bit-identical whatever other
// tokens share the call.
void Int4GemmQ8Avx512Vnni(const Int4Linear& layer, int row0, int rows, const Q8Activations& x,
                          float* y, int ldy);
// The GEMM's lanes and arithmetic for decode, 1 to kQ8MaxTokens tokens per
// pass (int4_decode_q8_avx512vnni.cpp, same CPU needs): each block's codes
// transposed in registers and used at once by every token, no tile buffer.
// Outputs bit-identical to Int4GemmQ8Avx512Vnni's.
void Int4DecodeQ8Avx512Vnni(const Int4Linear& layer, int row0, int rows, const Q8Activations& x,
                            float* y, int ldy);
// The same GEMM at AVX2 (int4_gemm_q8_avx2.cpp; 8 rows x 2 tokens per
// register block), for CPUs without AVX-512 VNNI; the same arithmetic at 8
// lanes, so its outputs equal Int4GemmQ8Avx512Vnni's bit for bit.
void Int4GemmQ8Avx2(const Int4Linear& layer, int row0, int rows, const Q8Activations& x, float* y,
                    int ldy);
// The row kernels `isa` picks (int4_linear.cpp): the one dispatch of the ops
// that split rows themselves (int4_linear.cpp, ops/moe_experts.cpp). Either
// layout of the codes (Int4Layout): the AVX-512 VNNI W4A8 kernels and the
// scalar ones read both; a tile-layout layer reaches the other kernels a
// tile's rows at a time, regrouped back into rows (ops/int4_tiles.h).
void Int4Rows(const Int4Linear& layer, int row0, int rows, const float* x, int ldx, int num_tokens,
              float* y, int ldy, Isa isa);
void Int4RowsQ8(const Int4Linear& layer, int row0, int rows, const Q8Activations& x, float* y,
                int ldy, Isa isa);

// W: the table [table.rows, table.d], f16 or int8 (no bias). A token's
// outputs are bit-identical whatever num_tokens is (the GEMV and the tiled
// GEMM paths do the same arithmetic).
void TableRowsScalar(const EmbeddingTable& table, int row0, int rows, const float* x, int ldx,
                     int num_tokens, float* y, int ldy);
void TableRowsAvx2(const EmbeddingTable& table, int row0, int rows, const float* x, int ldx,
                   int num_tokens, float* y, int ldy);
// W8A8: an int8 table (table.q8 or q8_tiles) times activations rounded to int8 in
// Q8Layout::kNatural, per 32-column block b the integer dot product scaled
// by the weights' and the activations' scales:
//   y[t * ldy + r] = sum_b (s[row0 + r, b] d_b) (sum_{c in b} q[row0 + r, c] q_t[c])
void TableRowsQ8Scalar(const EmbeddingTable& table, int row0, int rows, const Q8Activations& x,
                       float* y, int ldy);
void TableRowsQ8Avx2(const EmbeddingTable& table, int row0, int rows, const Q8Activations& x,
                     float* y, int ldy);
// The scalar kernels above read both int8 layouts (q8 and q8_tiles), the
// AVX2 ones only q8 (rows).
// AVX-512 VNNI kernels of a tiled table (table.q8_tiles; built for and run
// on the AVX-512 VNNI level only; embedding_table_avx512vnni.cpp): a zmm lane per
// row of a 16-row tile, the tiles read in order, 1 to kQ8MaxTokens tokens
// per pass over them. A token's outputs are bit-identical whatever other
// tokens share the call; they equal the scalar kernels' up to float
// summation order. Rows need not start or end on a tile.
void TableTilesQ8Avx512Vnni(const EmbeddingTable& table, int row0, int rows, const Q8Activations& x,
                            float* y, int ldy);
void TableTilesAvx512Vnni(const EmbeddingTable& table, int row0, int rows, const float* x, int ldx,
                          int num_tokens, float* y, int ldy);
void TableRows(const EmbeddingTable& table, int row0, int rows, const float* x, int ldx,
               int num_tokens, float* y, int ldy, Isa isa);
void TableRowsQ8(const EmbeddingTable& table, int row0, int rows, const Q8Activations& x, float* y,
                 int ldy, Isa isa);

// The entry check of the kernels that read only the row layout
// (Int4Layout::kRows): the dispatchers Int4Rows and Int4RowsQ8 hand them a
// tile-layout layer's rows regrouped back, so a direct call with one is a bug.
inline void RequireRowLayout(const Int4Linear& layer, const char* kernel) {
  if (layer.layout != Int4Layout::kRows) {
    throw Error(std::string("internal: ") + kernel + " reads the row layout, not this layer's tile layout");
  }
}

// Calls f(std::integral_constant<int, n>{}) for a token count n in [1, 8]
// (anything else: 1), so that a call's count, known at run time, picks the
// kernel instance compiled for it (register blocks sized by the count).
template <typename F>
inline void WithTokenCount(int n, F&& f) {
  switch (n) {
    case 8: f(std::integral_constant<int, 8>{}); break;
    case 7: f(std::integral_constant<int, 7>{}); break;
    case 6: f(std::integral_constant<int, 6>{}); break;
    case 5: f(std::integral_constant<int, 5>{}); break;
    case 4: f(std::integral_constant<int, 4>{}); break;
    case 3: f(std::integral_constant<int, 3>{}); break;
    case 2: f(std::integral_constant<int, 2>{}); break;
    default: f(std::integral_constant<int, 1>{}); break;
  }
}

}  // namespace awqcore
