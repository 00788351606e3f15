// The ops' *Avx512Vnni entry points in a build without the AVX-512 VNNI files
// (the compiler lacks -mavx512vnni, or a level below is left out):
// CMakeLists.txt compiles this file exactly when it leaves the
// *_avx512vnni.cpp files out. Such a build's DetectedIsa() never returns
// Isa::kAvx512Vnni, so the ops never reach these; a caller that names the
// level itself gets the AVX-512 result (avx512_unavailable.cpp: AVX2 or
// scalar where that is left out too).
#include "ops/linear_kernels.h"

namespace awqcore {

// The AVX2 GEMV's results: the GEMM's up to f32 rounding (linear_kernels.h).
void Int4GemmQ8Avx512Vnni(const Int4Linear& layer, int row0, int rows, const Q8Activations& x,
                          float* y, int ldy) {
  Int4RowsQ8Avx2(layer, row0, rows, x, y, ldy);
}

// The GEMM's results (above).
void Int4DecodeQ8Avx512Vnni(const Int4Linear& layer, int row0, int rows, const Q8Activations& x,
                            float* y, int ldy) {
  Int4GemmQ8Avx512Vnni(layer, row0, rows, x, y, ldy);
}

// The scalar kernels, which read the tiles too (a tiled table exists only
// where DetectedIsa() is kAvx512Vnni, so only a test that names the level
// reaches these).
void TableTilesQ8Avx512Vnni(const EmbeddingTable& table, int row0, int rows, const Q8Activations& x,
                            float* y, int ldy) {
  TableRowsQ8Scalar(table, row0, rows, x, y, ldy);
}

void TableTilesAvx512Vnni(const EmbeddingTable& table, int row0, int rows, const float* x, int ldx,
                          int num_tokens, float* y, int ldy) {
  TableRowsScalar(table, row0, rows, x, ldx, num_tokens, y, ldy);
}

}  // namespace awqcore
