// The AVX2 W4A8 GEMV rebuilt with AVX-512 VL + VNNI for batched decode
// (int4_q8_avx2.h): the shapes where the ops keep the AVX2 body at the VNNI
// level (Avx512Pays, int4_linear.cpp: Qwen2.5-1.5B's 1536-column linears,
// SmolLM2's down projection) get two vpdpbusd per span and token instead of
// vpmaddubsw + vpaddw + vpmaddwd, with the AVX2 kernel's bits: 1.29x per
// CPU-second at 4 and 8 tokens (interleaved, Zen 4). Tokens stay in pairs:
// in fours the accumulators spill (0.7x).
// GCC 12 flags its own AVX-512 intrinsics as uninitialized (int4_q8_avx512.h).
#if defined(__GNUC__) && !defined(__clang__) && __GNUC__ < 13
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include "ops/int4_q8_avx2.h"

namespace awqcore {

void Int4RowsQ8Avx2Vnni(const Int4Linear& layer, int row0, int rows, const Q8Activations& x,
                        float* y, int ldy) {
  if (layer.group_size == kQ8Block) {  // Q8GemvGroups' group sizes are 64 and 128
    Int4RowsQ8Avx2(layer, row0, rows, x, y, ldy);
    return;
  }
  auto out = [&](int t, int r) { return y + static_cast<size_t>(t) * ldy + r; };
  int r = 0;
  for (; r + 4 <= rows; r += 4) {
    int t = 0;
    for (; t + 2 <= x.num_tokens; t += 2) {
      float* const ys[2] = {out(t, r), out(t + 1, r)};
      Q8GemvGroups<4, 2>(layer, row0 + r, x, t, ys);
    }
    for (; t < x.num_tokens; ++t) {
      float* const ys[1] = {out(t, r)};
      Q8GemvGroups<4, 1>(layer, row0 + r, x, t, ys);
    }
  }
  for (; r < rows; ++r) {
    for (int t = 0; t < x.num_tokens; ++t) {
      float* const ys[1] = {out(t, r)};
      Q8GemvGroups<1, 1>(layer, row0 + r, x, t, ys);
    }
  }
}

}  // namespace awqcore
