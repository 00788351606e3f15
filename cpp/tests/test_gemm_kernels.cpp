// The W4A8 row kernels with many tokens (prefill and batched decode: the
// int8 GEMM) at every instruction set this CPU runs, against the scalar
// reference (Int4LinearReference on the rounded activations), over odd
// shapes: 1..40 tokens (not multiples of the 8-token register blocking),
// rows not a multiple of the 4- and 16-row blocks, group sizes 32,
// 64 and 128, weights and activations at pointers aligned to their element
// type only, strided outputs. Each token's outputs must also equal, bit for
// bit, those of the same kernel called with that token alone: a token's
// result never depends on the other tokens of its call (batched decode
// computes each sequence as alone; prefill gives the same logits however its
// tokens are chunked). The GEMMs of all levels and the AVX-512 VNNI decode
// kernel (the GEMM's lanes, 8 tokens per pass) give the same bits (one
// arithmetic at 8 and 16 lanes), so prefill does not depend on the CPU, and
// decode at that level equals prefill; the VNNI kernels also on the tile
// layout of the codes (test_int4_tiles.cpp: the layout itself).
//
// Tolerance (a-priori, as in test_simd_kernels.cpp): the integer dots are
// exact; per output the float work is one product by d_b per 32 columns, the
// group and zero-point terms and the bias, in some order, so |kernel - exact|
// <= gamma(in + 2 groups + in / 32 + 2) * sum_c s (|q| + z) |a_c| (+ |bias|).
// A wrong nibble, row, token or scale gives errors of the outputs' size,
// ~1e6 times this.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "cpu_features.h"
#include "half.h"
#include "model_weights.h"
#include "ops/int4_linear.h"
#include "ops/linear_kernels.h"
#include "ops/q8_activations.h"
#include "random_weights.h"
#include "test_harness.h"

using namespace awqcore;

namespace {

constexpr int kMaxTokens = 40;

// A row kernel: rows [row0, row0 + rows) of every token of x into y (stride ldy).
using RowKernel = std::function<void(const Int4Linear&, int, int, const Q8Activations&, float*, int)>;

struct Level {
  std::string name;
  RowKernel kernel;
  bool gemm = false;  // a level of the prefill GEMM (Int4GemmQ8*)
};

// The W4A8 row kernels with several tokens at every supported level
// (cpu_features.h).
std::vector<Level> LevelsToTest() {
  std::vector<Level> levels = {{"scalar", Int4RowsQ8Scalar}};
  if (IsaSupported(Isa::kAvx2)) {
    levels.push_back({"avx2", Int4RowsQ8Avx2});
    levels.push_back({"avx2 gemm", Int4GemmQ8Avx2, true});
  }
  if (IsaSupported(Isa::kAvx512Vnni)) {
    levels.push_back({"avx512vnni gemm", Int4GemmQ8Avx512Vnni, true});
    levels.push_back({"avx512vnni decode", Int4DecodeQ8Avx512Vnni, true});
    // With the loader's transposed scales (the layer's own tiles).
    levels.push_back({"avx512vnni decode, tile scales",
                      [](const Int4Linear& layer, int row0, int rows, const Q8Activations& x, float* y, int ldy) {
                        const std::vector<uint8_t> tile_scales = Int4TileScales(layer);
                        Int4Linear with = layer;
                        with.tile_scales = tile_scales.data();
                        Int4DecodeQ8Avx512Vnni(with, row0, rows, x, y, ldy);
                      },
                      true});
    // On the loader's tile layout of the codes (ops/int4_tiles.h), codes at
    // an odd address.
    levels.push_back({"avx512vnni gemm, tile layout",
                      [](const Int4Linear& layer, int row0, int rows, const Q8Activations& x, float* y, int ldy) {
                        const awqtest::TiledInt4 tiled(layer);
                        Int4GemmQ8Avx512Vnni(tiled.layer, row0, rows, x, y, ldy);
                      },
                      true});
    levels.push_back({"avx512vnni decode, tile layout and scales",
                      [](const Int4Linear& layer, int row0, int rows, const Q8Activations& x, float* y, int ldy) {
                        awqtest::TiledInt4 tiled(layer);
                        const std::vector<uint8_t> tile_scales = Int4TileScales(layer);
                        tiled.layer.tile_scales = tile_scales.data();
                        Int4DecodeQ8Avx512Vnni(tiled.layer, row0, rows, x, y, ldy);
                      },
                      true});
  }
  return levels;
}

// The bound on |kernel - exact| for output row r of activations a (header).
double Bound(const Int4Linear& layer, int r, const float* a) {
  const int groups = layer.in / layer.group_size;
  double sum = layer.bias ? std::fabs(layer.bias[r]) : 0.0;
  for (int c = 0; c < layer.in; ++c) {
    const uint8_t b = layer.qweight[static_cast<size_t>(r) * layer.in / 2 + c / 2];
    const int q = c % 2 == 0 ? (b & 15) : (b >> 4);
    const size_t g = static_cast<size_t>(r) * groups + c / layer.group_size;
    sum += F16ToF32(layer.scales[g]) * (q + layer.zeros[g]) * std::fabs(a[c]);
  }
  return awqtest::Gamma(layer.in + 2 * groups + layer.in / kQ8Block + 2) * sum;
}

// A copy of x whose arrays start one element past an aligned allocation.
struct MisalignedQ8 {
  explicit MisalignedQ8(const Q8Activations& x)
      : q(1 + static_cast<size_t>(x.num_tokens) * x.in),
        block_scales(1 + static_cast<size_t>(x.num_tokens) * (x.in / kQ8Block)),
        group_sums(1 + static_cast<size_t>(x.num_tokens) * (x.in / x.group_size)),
        view(x) {
    std::copy_n(x.q, q.size() - 1, q.begin() + 1);
    std::copy_n(x.block_scales, block_scales.size() - 1, block_scales.begin() + 1);
    std::copy_n(x.group_sums, group_sums.size() - 1, group_sums.begin() + 1);
    view.q = q.data() + 1;
    view.block_scales = block_scales.data() + 1;
    view.group_sums = group_sums.data() + 1;
  }
  std::vector<int8_t> q;
  std::vector<float> block_scales, group_sums;
  Q8Activations view;
};

}  // namespace

TEST(w4a8_gemm_matches_reference_and_each_token_alone) {
  std::mt19937 rng(16);
  Q8Buffer buffer;
  const std::vector<Level> levels = LevelsToTest();
  std::vector<int> checked(levels.size()), bad(levels.size()), unequal(levels.size());
  std::vector<double> worst(levels.size());
  int gemm_outputs = 0, gemm_levels_differ = 0;  // the GEMM levels against the first
  for (int g : {32, 64, 128}) {
    // 832: 13 groups of 64 (the zero-point term's 8-, 4- and 1-group steps);
    // 1280: 10 groups of 128.
    for (int in : {64, 128, 192, 576, 832, 1280}) {
      if (in % g != 0) continue;
      for (int out : {1, 3, 4, 6, 13, 37}) {
        const bool with_bias = (out + in / g) % 2 == 1;
        awqtest::RandomInt4 w(out, in, g, with_bias, rng, /*offset=*/1);
        const awqtest::StridedTokens xs(kMaxTokens, in, rng);
        const MisalignedQ8 x(buffer.Quantize(xs.x(), xs.stride, kMaxTokens, in, g));
        const std::vector<float> a = awqtest::Dequantized(x.view);
        std::vector<float> ref(static_cast<size_t>(kMaxTokens) * out);
        Int4LinearReference(w.layer, a.data(), kMaxTokens, ref.data());
        // Rows [row0, out), as the pool hands a thread its rows.
        const int row0 = out > 4 ? 1 : 0, ldy = out + 2;
        std::vector<float> first_gemm;  // the first GEMM level's tokens alone
        for (size_t l = 0; l < levels.size(); ++l) {
          // Each token alone through the same kernel.
          std::vector<float> alone(ref.size());
          for (int t = 0; t < kMaxTokens; ++t) {
            levels[l].kernel(w.layer, row0, out - row0, awqtest::TokenAlone(x.view, t),
                             alone.data() + t * out + row0, out);
          }
          if (levels[l].gemm && first_gemm.empty()) {
            first_gemm = alone;
          } else if (levels[l].gemm) {
            gemm_outputs += static_cast<int>(alone.size());
            for (size_t i = 0; i < alone.size(); ++i) gemm_levels_differ += alone[i] != first_gemm[i];
          }
          // The scalar reference kernel is slow: a few token counts suffice.
          for (int tokens = 1; tokens <= kMaxTokens; tokens += l == 0 ? 13 : 1) {
            Q8Activations view = x.view;
            view.num_tokens = tokens;
            std::vector<float> y(static_cast<size_t>(tokens) * ldy, -7.f);
            levels[l].kernel(w.layer, row0, out - row0, view, y.data() + row0, ldy);
            std::vector<float> got, want;
            for (int t = 0; t < tokens; ++t) {
              for (int r = 0; r < row0; ++r) bad[l] += y[t * ldy + r] != -7.f;  // untouched
              for (int r = row0; r < out; ++r) {
                const float v = y[t * ldy + r];
                const double diff = std::fabs(static_cast<double>(v) - ref[t * out + r]);
                const double bound = Bound(w.layer, r, a.data() + static_cast<size_t>(t) * in);
                if (!(diff <= bound) && ++bad[l] <= 3) {  // the first few cases, named
                  CHECK_LE(diff, bound, awqtest::Case(levels[l].name, " g=", g, " in=", in, " out=", out,
                                                      " tokens=", tokens, " t=", t, " r=", r));
                }
                unequal[l] += v != alone[t * out + r];
                got.push_back(v);
                want.push_back(ref[t * out + r]);
                ++checked[l];
              }
            }
            worst[l] = std::max(worst[l], awqtest::RelativeError(got, want));
          }
        }
      }
    }
  }
  for (size_t l = 0; l < levels.size(); ++l) {
    std::printf("  %s W4A8 rows, 1..%d tokens: %d outputs, %d outside the bound, %d unequal to the "
                "token alone, max relative error %.3g\n", levels[l].name.c_str(), kMaxTokens,
                checked[l], bad[l], unequal[l], worst[l]);
    CHECK(bad[l] == 0);
    CHECK(unequal[l] == 0);
  }
  std::printf("  GEMM levels: %d of %d outputs differ from the first GEMM level's\n", gemm_levels_differ,
              gemm_outputs);
  CHECK(gemm_levels_differ == 0);
}

AWQCORE_TEST_MAIN()
