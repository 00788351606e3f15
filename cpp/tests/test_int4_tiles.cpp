// The tile layout of the int4 codes (ops/int4_tiles.h), which the loader
// makes at the AVX-512 VNNI level: the regrouping is a permutation within
// each tile (regrouped back, the rows come out byte for byte; each byte sits
// where Int4TileByteOffset says), and every kernel the dispatchers can pick
// gives, on the tile layout, the same bits as on the rows, at every level
// this CPU runs: the W4A8 kernels (decode 1..8 tokens, the GEMM above) and
// the f32 ones (activations="f32"), over out = 1, 15, 16, 17, 50 (one short
// tile, a whole one, a whole one and a row, three and a short one), widths
// of 1 and several groups at g = 32, 64, 128, and row ranges that start and
// end inside tiles (also ending inside the layer, as the pool splits rows).
// The ops (split over 1 and 3 threads) give the same bits on both layouts.
// The kernels' agreement with the scalar reference on the rows is
// test_gemm_kernels.cpp's and test_simd_kernels.cpp's (there the VNNI
// kernels also run on the tile layout, against the reference).
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "cpu_features.h"
#include "isas_to_test.h"
#include "model_weights.h"
#include "ops/activation.h"
#include "ops/int4_linear.h"
#include "ops/int4_tiles.h"
#include "ops/linear_kernels.h"
#include "ops/q8_activations.h"
#include "random_weights.h"
#include "test_harness.h"
#include "thread_pool.h"

using namespace awqcore;

namespace {

struct Shape {
  int out, in, group_size;
};

// Every (out, in, g) of the header: widths of one group (in = g) and several.
std::vector<Shape> Shapes() {
  std::vector<Shape> shapes;
  for (int g : {32, 64, 128}) {
    for (int in : {64, 128, 192, 576}) {
      if (in % g != 0) continue;
      for (int out : {1, 15, 16, 17, 50}) shapes.push_back({out, in, g});
    }
  }
  return shapes;
}

// Row ranges [begin, end) of a layer of `out` rows: whole, from inside the
// first tile, to inside a tile before the end, one row, tile-aligned.
std::vector<std::pair<int, int>> RowRanges(int out) {
  std::vector<std::pair<int, int>> ranges = {{0, out}};
  if (out > 3) ranges.push_back({3, out});
  if (out > 20) ranges.push_back({5, 20});   // ends inside the second tile
  if (out > 34) ranges.push_back({17, 34});  // starts and ends inside tiles
  if (out > 32) ranges.push_back({16, 32});  // one whole tile
  if (out > 1) ranges.push_back({out - 2, out - 1});
  return ranges;
}

}  // namespace

TEST(tile_layout_round_trips_and_places_each_byte) {
  std::mt19937 rng(161);
  int layers = 0, misplaced = 0, unequal = 0, range_unequal = 0;
  for (const Shape& s : Shapes()) {
    awqtest::RandomInt4 w(s.out, s.in, s.group_size, false, rng);
    const awqtest::TiledInt4 tiled(w.layer);
    const size_t row_bytes = s.in / 2;
    // The same bytes, moved: each where the layout says, and back.
    for (int r = 0; r < s.out; ++r) {
      for (size_t b = 0; b < row_bytes; ++b) {
        const uint8_t want = w.layer.qweight[r * row_bytes + b];
        misplaced += tiled.layer.qweight[Int4TileByteOffset(s.out, s.in, r, static_cast<int>(b))] != want;
        misplaced += Int4CodeByte(tiled.layer, r, static_cast<int>(b)) != want;
      }
    }
    const std::vector<uint8_t> rows = Int4RowCodes(tiled.layer);
    unequal += !std::equal(rows.begin(), rows.end(), w.layer.qweight);
    // Rows [r0, r1) regrouped back, some across a tile's end.
    for (int r0 = 0; r0 < s.out; r0 += 5) {
      const int r1 = std::min(s.out, r0 + 13);
      std::vector<uint8_t> part((r1 - r0) * row_bytes);
      Int4TileRowsToRows(tiled.layer, r0, r1 - r0, part.data());
      range_unequal += !std::equal(part.begin(), part.end(), w.layer.qweight + r0 * row_bytes);
    }
    ++layers;
  }
  std::printf("  %d layers: %d bytes misplaced, %d layers and %d row ranges unequal regrouped back\n", layers,
              misplaced, unequal, range_unequal);
  CHECK(misplaced == 0);
  CHECK(unequal == 0);
  CHECK(range_unequal == 0);
}

TEST(kernels_give_the_same_bits_on_tiles_and_rows) {
  std::mt19937 rng(162);
  Q8Buffer buffer;
  const std::vector<Isa> isas = awqtest::IsasToTest();
  long checked = 0, unequal = 0, untouched_changed = 0;
  for (const Shape& s : Shapes()) {
    const bool with_bias = (s.out + s.in / s.group_size) % 2 == 1;
    awqtest::RandomInt4 w(s.out, s.in, s.group_size, with_bias, rng, /*offset=*/1);
    const awqtest::TiledInt4 tiled(w.layer);
    for (int tokens : {1, 3, 8, 20}) {
      const awqtest::StridedTokens xs(tokens, s.in, rng);
      const Q8Activations& x = buffer.Quantize(xs.x(), xs.stride, tokens, s.in, s.group_size);
      const int ldy = s.out + 3;
      for (Isa isa : isas) {
        for (bool int8 : {true, false}) {
          for (const auto& [begin, end] : RowRanges(s.out)) {
            std::vector<float> y_rows(static_cast<size_t>(tokens) * ldy, -7.f), y_tiles = y_rows;
            auto run = [&](const Int4Linear& layer, std::vector<float>& y) {
              if (int8) {
                Int4RowsQ8(layer, begin, end - begin, x, y.data() + begin, ldy, isa);
              } else {
                Int4Rows(layer, begin, end - begin, xs.x(), xs.stride, tokens, y.data() + begin, ldy, isa);
              }
            };
            run(w.layer, y_rows);
            run(tiled.layer, y_tiles);
            int bad = 0;
            for (int t = 0; t < tokens; ++t) {
              for (int r = 0; r < ldy; ++r) {
                const size_t i = static_cast<size_t>(t) * ldy + r;
                if (r < begin || r >= end) {
                  untouched_changed += y_tiles[i] != -7.f;
                } else {
                  bad += std::memcmp(&y_tiles[i], &y_rows[i], sizeof(float)) != 0;
                  ++checked;
                }
              }
            }
            if (bad > 0 && unequal < 3) {
              std::printf("  FAIL case: %s %s out=%d in=%d g=%d tokens=%d rows [%d, %d): %d unequal\n",
                          IsaName(isa), int8 ? "int8" : "f32", s.out, s.in, s.group_size, tokens, begin, end, bad);
            }
            unequal += bad;
          }
        }
      }
    }
  }
  std::printf("  %ld outputs (every level, int8 and f32 activations): %ld differ between the layouts, %ld "
              "outside the rows changed\n", checked, unequal, untouched_changed);
  CHECK(checked > 0);
  CHECK(unequal == 0);
  CHECK(untouched_changed == 0);
}

TEST(ops_on_tiles_split_over_1_and_3_threads_match_rows) {
  std::mt19937 rng(163);
  ThreadPool one(1), three(3);
  const std::vector<Isa> isas = awqtest::IsasToTest();
  long checked = 0, unequal = 0;
  for (const Shape& s : {Shape{50, 192, 64}, Shape{17, 576, 32}, Shape{37, 128, 128}}) {
    awqtest::RandomInt4 gate(s.out, s.in, s.group_size, false, rng), up(s.out, s.in, s.group_size, false, rng);
    const awqtest::TiledInt4 gate_tiles(gate.layer), up_tiles(up.layer);
    for (int tokens : {1, 8, 20}) {
      const std::vector<float> x = awqtest::RandomFloats(static_cast<size_t>(tokens) * s.in, rng);
      for (Isa isa : isas) {
        for (bool int8 : {true, false}) {
          // [layout][pool]: the linear's and the gated MLP's outputs.
          std::vector<float> linear[2][2], mlp[2][2];
          for (int tiles : {0, 1}) {
            const Int4Linear& g = tiles ? gate_tiles.layer : gate.layer;
            const Int4Linear& u = tiles ? up_tiles.layer : up.layer;
            for (int p : {0, 1}) {
              ThreadPool& pool = p ? three : one;
              linear[tiles][p].assign(static_cast<size_t>(tokens) * s.out, 0.f);
              mlp[tiles][p].assign(static_cast<size_t>(tokens) * s.out, 0.f);
              Int4LinearForward(g, x.data(), tokens, linear[tiles][p].data(), pool, isa, int8);
              Int4GatedMlpForward(g, u, Activation::kSilu, x.data(), tokens, mlp[tiles][p].data(), pool, isa, int8);
            }
          }
          for (const auto* outputs : {&linear, &mlp}) {
            for (int tiles : {0, 1}) {
              for (int p : {0, 1}) {
                const std::vector<float>& got = (*outputs)[tiles][p];
                const std::vector<float>& want = (*outputs)[0][0];
                const bool same = std::memcmp(got.data(), want.data(), got.size() * sizeof(float)) == 0;
                if (!same && unequal < 3) {
                  std::printf("  FAIL case: %s %s out=%d in=%d g=%d tokens=%d %s on %s, %d thread(s)\n", IsaName(isa),
                              int8 ? "int8" : "f32", s.out, s.in, s.group_size, tokens,
                              outputs == &linear ? "linear" : "gated MLP", tiles ? "tiles" : "rows", p ? 3 : 1);
                }
                unequal += !same;
                ++checked;
              }
            }
          }
        }
      }
    }
  }
  std::printf("  %ld op outputs (linear, gated MLP; rows and tiles; 1 and 3 threads): %ld differ from rows "
              "on 1 thread\n", checked, unequal);
  CHECK(unequal == 0);
}

TEST(row_layout_kernels_refuse_the_tile_layout) {
  std::mt19937 rng(164);
  awqtest::RandomInt4 w(17, 128, 64, false, rng);
  const awqtest::TiledInt4 tiled(w.layer);
  Q8Buffer buffer;
  const std::vector<float> x = awqtest::RandomFloats(128, rng);
  const Q8Activations& q = buffer.Quantize(x.data(), 128, 1, 128, 64);
  std::vector<float> y(17);
  if (IsaSupported(Isa::kAvx2)) {
    CHECK_THROWS(Int4RowsAvx2(tiled.layer, 0, 17, x.data(), 128, 1, y.data(), 17), Error, "tile layout");
    CHECK_THROWS(Int4RowsQ8Avx2(tiled.layer, 0, 17, q, y.data(), 17), Error, "tile layout");
  }
  if (IsaSupported(Isa::kAvx512)) {
    CHECK_THROWS(Int4RowsQ8Avx512(tiled.layer, 0, 17, q, y.data(), 17), Error, "tile layout");
  }
}

AWQCORE_TEST_MAIN()
