// The ops' *Avx2 entry points in a build without the AVX2 files (not x86-64,
// or not GCC/Clang): CMakeLists.txt compiles this file exactly when it leaves
// the *_avx2.cpp files out. Such a build's DetectedIsa() never returns kAvx2,
// so the ops never reach these; a caller that passes Isa::kAvx2 itself (the
// SIMD tests) gets the scalar result. This is the one fallback for every op,
// so dispatch code chooses by isa alone, with no #ifdef.
#include <cstdint>

#include "ops/activation.h"
#include "ops/attention.h"
#include "ops/linear_kernels.h"
#include "ops/q8_activations.h"

namespace awqcore {

void Int4RowsAvx2(const Int4Linear& layer, int row0, int rows, const float* x, int ldx,
                  int num_tokens, float* y, int ldy) {
  Int4RowsScalar(layer, row0, rows, x, ldx, num_tokens, y, ldy);
}

void Int4RowsQ8Avx2(const Int4Linear& layer, int row0, int rows, const Q8Activations& x,
                    float* y, int ldy) {
  Int4RowsQ8Scalar(layer, row0, rows, x, y, ldy);
}

void Int4GemmQ8Avx2(const Int4Linear& layer, int row0, int rows, const Q8Activations& x, float* y,
                    int ldy) {
  Int4RowsQ8Scalar(layer, row0, rows, x, y, ldy);
}

void TableRowsAvx2(const EmbeddingTable& table, int row0, int rows, const float* x, int ldx,
                   int num_tokens, float* y, int ldy) {
  TableRowsScalar(table, row0, rows, x, ldx, num_tokens, y, ldy);
}

void TableRowsQ8Avx2(const EmbeddingTable& table, int row0, int rows, const Q8Activations& x,
                     float* y, int ldy) {
  TableRowsQ8Scalar(table, row0, rows, x, y, ldy);
}

void QuantizeRowAvx2(const float* x, int in, Q8Layout layout, int8_t* q, float* block_scales,
                     int* block_sums) {
  QuantizeRowScalar(x, in, layout, q, block_scales, block_sums);
}

void SwiGluAvx2(const float* gate, const float* up, int n, float* out) {
  SwiGluScalar(gate, up, n, out);
}

void GeGluAvx2(const float* gate, const float* up, int n, float* out) {
  GeGluScalar(gate, up, n, out);
}

void StoreKvF16Avx2(const float* src, int n, uint16_t* dst) { StoreKv(src, n, dst); }

template <typename CacheT>
void AttendRowsAvx2(const AttentionRows& rows, const CacheT* k, const CacheT* v, int kv_stride,
                    int hd, int key_begin, int key_end) {
  AttendRowsScalar(rows, k, v, kv_stride, hd, key_begin, key_end);
}
template void AttendRowsAvx2<float>(const AttentionRows&, const float*, const float*, int, int,
                                    int, int);
template void AttendRowsAvx2<uint16_t>(const AttentionRows&, const uint16_t*, const uint16_t*,
                                       int, int, int, int);

}  // namespace awqcore
