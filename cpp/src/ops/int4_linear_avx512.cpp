// AVX-512 (F + BW + VL + DQ) W4A8 int4 GEMV: the body in int4_q8_avx512.h,
// here with vpmaddubsw + vpmaddwd as the integer dot product.
#include "ops/int4_q8_avx512.h"

namespace awqcore {

void Int4RowsQ8Avx512(const Int4Linear& layer, int row0, int rows, const Q8Activations& x,
                      float* y, int ldy) {
  RequireRowLayout(layer, "Int4RowsQ8Avx512");
  Int4RowsQ8Avx512Body(layer, row0, rows, x, y, ldy);
}

}  // namespace awqcore
