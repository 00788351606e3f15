// The ops' *Avx512 entry points in a build without the AVX-512 files (the
// compiler lacks the flags, or no AVX2 level either): CMakeLists.txt compiles
// this file exactly when it leaves the *_avx512.cpp files out. Such a build's
// DetectedIsa() never returns Isa::kAvx512 or above, so the ops never reach
// these; a caller that names the level itself gets the AVX2 result (itself
// the scalar one in a build without AVX2), so dispatch code needs no #ifdef.
#include "ops/linear_kernels.h"

namespace awqcore {

void Int4RowsQ8Avx512(const Int4Linear& layer, int row0, int rows, const Q8Activations& x,
                      float* y, int ldy) {
  Int4RowsQ8Avx2(layer, row0, rows, x, y, ldy);
}

}  // namespace awqcore
