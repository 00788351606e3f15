// Each op of the forward pass against its scalar reference (cpp/src/ops/*.h),
// over odd shapes, plus the f16 conversion and the thread pool.
//
// Tolerances are a-priori rounding bounds, not tuned numbers: a sum of n f32
// products computed in any order differs from the exact sum by at most
// gamma(n+1) * sum|a_i b_i|, gamma(n) = n*u/(1 - n*u) with u = 2^-24 (Higham,
// "Accuracy and Stability of Numerical Algorithms", 3.1). The references
// accumulate in double, so they are exact to ~1e-16 at these sizes. A real bug
// (wrong nibble, group, head or position) makes errors of the size of the
// values themselves, orders of magnitude above these bounds.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include "attention_tokens.h"
#include "half.h"
#include "model_weights.h"
#include "ops/activation.h"
#include "ops/attention.h"
#include "ops/embedding_table.h"
#include "ops/int4_linear.h"
#include "ops/rmsnorm.h"
#include "random_weights.h"
#include "test_harness.h"
#include "thread_pool.h"

using namespace awqcore;

using awqtest::AsCache;
using awqtest::AttentionReferencePerToken;
using awqtest::AttentionTokens;
using awqtest::ForEachCacheType;
using awqtest::Gamma;
using awqtest::RandomFloats;
using awqtest::RelativeError;
using awqtest::RandomInt4;

TEST(f16_round_trips_every_half) {
  int mismatches = 0;
  for (uint32_t h = 0; h <= 0xffff; ++h) {
    const float f = F16ToF32(static_cast<uint16_t>(h));
    const uint16_t back = F32ToF16(f);
    const bool is_nan = (h & 0x7c00) == 0x7c00 && (h & 0x3ff) != 0;
    if (is_nan ? !std::isnan(f) || (back & 0x7fff) <= 0x7c00 : back != h) ++mismatches;
  }
  CHECK(mismatches == 0);
}

TEST(f16_edge_values) {
  CHECK(F16ToF32(0x3c00) == 1.0f);
  CHECK(F16ToF32(0xc000) == -2.0f);
  CHECK(F16ToF32(0x7bff) == 65504.0f);                       // largest finite
  CHECK(F16ToF32(0x0400) == std::ldexp(1.0f, -14));          // smallest normal
  CHECK(F16ToF32(0x03ff) == 1023 * std::ldexp(1.0f, -24));   // largest subnormal
  CHECK(F16ToF32(0x0001) == std::ldexp(1.0f, -24));          // smallest subnormal
  CHECK(F16ToF32(0x8000) == 0.0f && std::signbit(F16ToF32(0x8000)));
  CHECK(std::isinf(F16ToF32(0x7c00)) && F16ToF32(0x7c00) > 0);
  CHECK(std::isinf(F16ToF32(0xfc00)) && F16ToF32(0xfc00) < 0);
  CHECK(std::isnan(F16ToF32(0x7e00)));

  CHECK(F32ToF16(65519.0f) == 0x7bff);  // just under the rounding point
  CHECK(F32ToF16(65520.0f) == 0x7c00);  // tie rounds to even = Inf
  CHECK(F32ToF16(1e10f) == 0x7c00);
  CHECK(F32ToF16(-1e10f) == 0xfc00);
  CHECK(F32ToF16(INFINITY) == 0x7c00);
  CHECK((F32ToF16(NAN) & 0x7c00) == 0x7c00 && (F32ToF16(NAN) & 0x3ff) != 0);
  CHECK(F32ToF16(-0.0f) == 0x8000);
  CHECK(F32ToF16(1e-10f) == 0x0000);                             // underflow
  CHECK(F32ToF16(std::ldexp(1.0f, -25)) == 0x0000);              // tie -> even (0)
  CHECK(F32ToF16(std::ldexp(1.0f, -25) * 1.001f) == 0x0001);     // above the tie
  CHECK(F32ToF16(3 * std::ldexp(1.0f, -25)) == 0x0002);          // tie -> even (2)
  CHECK(F32ToF16(1.0f + std::ldexp(1.0f, -11)) == 0x3c00);       // tie -> even
  CHECK(F32ToF16(1.0f + 3 * std::ldexp(1.0f, -11)) == 0x3c02);   // tie -> even
  CHECK(F32ToF16(std::ldexp(1.0f, -14) * 0.99999f) == 0x0400);   // rounds up to normal
}

TEST(f16_rounds_to_nearest) {
  // For random floats across the whole half range (subnormals included), no
  // neighbouring half is closer than the chosen one.
  std::mt19937 rng(1);
  std::uniform_real_distribution<float> exponent(-26.f, 16.f);
  int wrong = 0;
  for (int i = 0; i < 200000; ++i) {
    const float f = std::exp2(exponent(rng)) * (i % 2 ? -1.f : 1.f);
    const uint16_t h = F32ToF16(f);
    const double err = std::fabs(static_cast<double>(F16ToF32(h)) - f);
    for (int step : {-1, 1}) {
      const uint16_t neighbour = static_cast<uint16_t>((h & 0x7fff) + step) | (h & 0x8000);
      if ((h & 0x7fff) + step < 0 || (neighbour & 0x7fff) >= 0x7c00) continue;
      if (std::fabs(static_cast<double>(F16ToF32(neighbour)) - f) < err) ++wrong;
    }
  }
  CHECK(wrong == 0);
}

TEST(thread_pool_covers_each_index_once) {
  for (int threads : {1, 2, 3, 5}) {
    ThreadPool pool(threads);
    CHECK(pool.num_threads() == threads);
    for (int n : {0, 1, 2, 3, 7, 1000}) {
      std::vector<std::atomic<int>> hits(n);
      std::atomic<int> chunks{0};
      for (int repeat = 0; repeat < 3; ++repeat) {
        pool.ParallelFor(n, [&](int64_t begin, int64_t end) {
          CHECK(begin < end);
          chunks++;
          for (int64_t i = begin; i < end; ++i) hits[i]++;
        });
      }
      for (int i = 0; i < n; ++i) CHECK(hits[i] == 3);
      const int expected = n == 0 ? 0 : threads == 1 ? 1 : std::min(n, ThreadPool::kChunksPerThread * threads);
      CHECK(chunks == 3 * expected);
    }
  }
}

TEST(int4_linear_matches_reference) {
  // Both paths: f32 (int8_decode off, or too many tokens, or in % 64 != 0)
  // and W4A8 (<= 8 tokens), each against the exact products with the
  // activations it multiplies (Int4OpInput): x, or its int8 rounding. The
  // W4A8 integer dots are exact, then per 32-column block one product by d_b
  // and per group two terms: within the same f32 bound, with |a| for |x|.
  std::mt19937 rng(2);
  ThreadPool pool1(1), pool2(2);
  struct Shape { int out, in, group_size; };
  for (bool int8_decode : {true, false}) {
    double worst = 0.0;
    for (Shape shape : {Shape{7, 96, 32}, Shape{13, 320, 64}, Shape{37, 640, 128},
                        Shape{1, 128, 128}, Shape{9, 32, 32}, Shape{5, 192, 32}}) {
      for (bool with_bias : {false, true}) {
        RandomInt4 w(shape.out, shape.in, shape.group_size, with_bias, rng);
        for (int tokens : {1, 2, 3, 5, 8, 9}) {
          const std::vector<float> x = RandomFloats(static_cast<size_t>(tokens) * shape.in, rng);
          const std::vector<float> a = awqtest::Int4OpInput(x, tokens, shape.in, shape.group_size, int8_decode);
          std::vector<float> ref(static_cast<size_t>(tokens) * shape.out);
          std::vector<float> y1(ref.size()), y2(ref.size());
          Int4LinearReference(w.layer, a.data(), tokens, ref.data());
          Int4LinearForward(w.layer, x.data(), tokens, y1.data(), pool1, DetectedIsa(), int8_decode);
          Int4LinearForward(w.layer, x.data(), tokens, y2.data(), pool2, DetectedIsa(), int8_decode);
          CHECK(y1 == y2);  // a row's arithmetic does not depend on the split
          const int groups = shape.in / shape.group_size;
          for (int t = 0; t < tokens; ++t) {
            for (int r = 0; r < shape.out; ++r) {
              const size_t i = static_cast<size_t>(t) * shape.out + r;
              // in products, in - 1 additions, + the bias: gamma(in + 2); W4A8
              // adds a product per block and two terms per group.
              const double bound = Gamma(shape.in + 2 + shape.in / 32 + 2 * groups) *
                  (w.AbsProductSum(r, a.data() + static_cast<size_t>(t) * shape.in) + (with_bias ? std::fabs(w.bias[r]) : 0.0));
              CHECK_LE(std::fabs(static_cast<double>(y1[i]) - ref[i]), bound,
                       awqtest::Case("out=", shape.out, " in=", shape.in, " group=", shape.group_size,
                                     " bias=", with_bias, " int8_decode=", int8_decode,
                                     " tokens=", tokens, " token=", t, " row=", r));
            }
          }
          worst = std::max(worst, RelativeError(y1, ref));
        }
      }
    }
    std::printf("  int4_linear (%s decode): max relative error %.3g\n", int8_decode ? "int8" : "f32", worst);
  }
}

TEST(q8_activations_round_within_half_a_step) {
  // The definition (ops/q8_activations.h): per 32-column block, d = max|x| / 127
  // and q = round(x / d) in [-127, 127], so |x - d q| <= d / 2 (+ the f32
  // rounding of x * (127 / max), a few ulps of x); group sums are the sums of d q.
  // Both layouts store the same values, only in another order.
  std::mt19937 rng(21);
  Q8Buffer buffer;
  for (Q8Layout layout : {Q8Layout::kInt4Spans, Q8Layout::kNatural})
  for (int group_size : {32, 64, 128}) {
    const int tokens = 3, in = 384;
    std::vector<float> x = RandomFloats(static_cast<size_t>(tokens) * in, rng, -3.f, 3.f);
    std::fill_n(x.begin() + in + 32, 32, 0.f);  // token 1, block 1: all zero
    const Q8Activations& q8 = buffer.Quantize(x.data(), in, tokens, in, group_size, layout);
    if (layout == Q8Layout::kNatural) CHECK(q8.q[in + 33] == 0 && q8.position(37) == 37);
    const std::vector<float> a = awqtest::Dequantized(q8);
    int bad = 0;
    for (int t = 0; t < tokens; ++t) {
      for (int b = 0; b < in / kQ8Block; ++b) {
        const float d = q8.block_scales[t * (in / kQ8Block) + b];
        for (int c = b * kQ8Block; c < (b + 1) * kQ8Block; ++c) {
          bad += q8.q[t * in + q8.position(c)] < -127;
          bad += !(std::fabs(x[t * in + c] - a[t * in + c]) <= 0.5 * d + 1e-6 * std::fabs(x[t * in + c]));
        }
      }
      for (int g = 0; g < in / group_size; ++g) {
        double sum = 0.0;
        for (int c = g * group_size; c < (g + 1) * group_size; ++c) sum += a[t * in + c];
        bad += !(std::fabs(q8.group_sums[t * (in / group_size) + g] - sum) <= 1e-5 * (1.0 + std::fabs(sum)));
      }
    }
    CHECK(bad == 0);
    CHECK(q8.block_scales[(in / kQ8Block) + 1] == 0.f);  // the zero block
  }
  // Q8Position is a permutation of each 64-column span.
  std::vector<int> seen(128, 0);
  for (int c = 0; c < 128; ++c) seen[Q8Position(c)]++;
  CHECK(std::count(seen.begin(), seen.end(), 1) == 128);
  CHECK(Q8Position(0) == 0 && Q8Position(1) == 32 && Q8Position(32) == 16 && Q8Position(63) == 63);
  // A non-finite activation makes the outputs that read it non-finite.
  std::vector<float> x(64, 0.5f);
  x[40] = NAN;
  RandomInt4 w(3, 64, 32, false, rng);
  std::vector<float> y(3);
  ThreadPool pool(1);
  Int4LinearForward(w.layer, x.data(), 1, y.data(), pool);
  for (float v : y) CHECK(!std::isfinite(v));
}

TEST(int4_linear_decodes_nibbles_and_groups) {
  // One row, in = 64, g = 32: column c has code c % 16, group 0 has zero 3 and
  // scale 0.5, group 1 zero 8 and scale 2. With x = e_c the output is W[0, c].
  std::vector<uint8_t> qweight(32);
  for (int c = 0; c < 64; c += 2) qweight[c / 2] = static_cast<uint8_t>((c % 16) | (((c + 1) % 16) << 4));
  std::vector<uint16_t> scales = {F32ToF16(0.5f), F32ToF16(2.0f)};
  std::vector<uint8_t> zeros = {3, 8};
  Int4Linear layer{1, 64, 32, qweight.data(), scales.data(), zeros.data(), nullptr};
  ThreadPool pool(1);
  for (int c = 0; c < 64; ++c) {
    std::vector<float> x(64, 0.f);
    x[c] = 1.f;
    float y = 0.f;
    Int4LinearForward(layer, x.data(), 1, &y, pool, DetectedIsa(), /*int8_decode=*/false);
    const float expected = c < 32 ? (c % 16 - 3) * 0.5f : (c % 16 - 8) * 2.0f;
    CHECK(y == expected);
    // W4A8: x = 127 e_c rounds to d = 1, q = 127 exactly, so y = 127 W[0, c]
    // (small integers times 0.5 or 2: exact in f32).
    x[c] = 127.f;
    Int4LinearForward(layer, x.data(), 1, &y, pool);
    CHECK(y == 127.f * expected);
  }
}

TEST(table_linear_int8_activations_match_reference) {
  // W8A8 (int8_activations with an int8 table): the exact product of the
  // table with x's int8 rounding (natural layout), within gamma(d / 4 + 2)
  // sum|w a| (per 32-column block 8 exact integer lane sums, each times one
  // rounded s d_b: d / 4 rounded terms summed). Rows split the same way for
  // 1 and 2 threads; an f16 table ignores the flag.
  std::mt19937 rng(23);
  ThreadPool pool1(1), pool2(2);
  Q8Buffer buffer;
  double worst = 0.0;
  for (int rows : {1, 7, 37}) {
    for (int d : {32, 64, 288}) {
      const awqtest::RandomTable w(rows, d, /*int8=*/true, rng);
      const awqtest::RandomTable f16(rows, d, /*int8=*/false, rng);
      for (int tokens = 1; tokens <= 5; ++tokens) {
        const std::vector<float> x = RandomFloats(static_cast<size_t>(tokens) * d, rng);
        const std::vector<float> a = awqtest::Dequantized(
            buffer.Quantize(x.data(), d, tokens, d, kQ8Block, Q8Layout::kNatural));
        std::vector<float> ref(static_cast<size_t>(tokens) * rows), y1(ref.size()), y2(ref.size());
        TableLinearReference(w.table, a.data(), tokens, ref.data());
        TableLinearForward(w.table, x.data(), tokens, y1.data(), pool1, DetectedIsa(), true);
        TableLinearForward(w.table, x.data(), tokens, y2.data(), pool2, DetectedIsa(), true);
        CHECK(y1 == y2);
        for (int t = 0; t < tokens; ++t) {
          for (int r = 0; r < rows; ++r) {
            const size_t i = static_cast<size_t>(t) * rows + r;
            const double bound = Gamma(d / 4 + 2) * w.AbsProductSum(r, a.data() + static_cast<size_t>(t) * d);
            CHECK_LE(std::fabs(static_cast<double>(y1[i]) - ref[i]), bound,
                     awqtest::Case("int8 table rows=", rows, " d=", d, " tokens=", tokens,
                                   " token=", t, " row=", r));
          }
        }
        worst = std::max(worst, RelativeError(y1, ref));
        TableLinearForward(f16.table, x.data(), tokens, y1.data(), pool1, DetectedIsa(), true);
        TableLinearForward(f16.table, x.data(), tokens, y2.data(), pool1);
        CHECK(y1 == y2);
      }
    }
  }
  std::printf("  int8 table, int8 activations: max relative error %.3g\n", worst);
}

TEST(table_linear_matches_reference) {
  // Both table forms widen to exact f32 weights (model_weights.h), so the
  // bound is that of an f32 dot product of d terms: gamma(d + 1) sum|w x|.
  std::mt19937 rng(3);
  ThreadPool pool1(1), pool2(2);
  for (bool int8 : {false, true}) {
    double worst = 0.0;
    const std::vector<int> widths = int8 ? std::vector<int>{32, 64, 288} : std::vector<int>{5, 64, 300};
    for (int rows : {1, 7, 37}) {
      for (int d : widths) {
        const awqtest::RandomTable w(rows, d, int8, rng);
        for (int tokens = 1; tokens <= 5; ++tokens) {
          const std::vector<float> x = RandomFloats(static_cast<size_t>(tokens) * d, rng);
          std::vector<float> ref(static_cast<size_t>(tokens) * rows), y1(ref.size()), y2(ref.size());
          TableLinearReference(w.table, x.data(), tokens, ref.data());
          TableLinearForward(w.table, x.data(), tokens, y1.data(), pool1);
          TableLinearForward(w.table, x.data(), tokens, y2.data(), pool2);
          CHECK(y1 == y2);
          for (int t = 0; t < tokens; ++t) {
            for (int r = 0; r < rows; ++r) {
              const size_t i = static_cast<size_t>(t) * rows + r;
              const double bound = Gamma(d + 1) * w.AbsProductSum(r, x.data() + static_cast<size_t>(t) * d);
              CHECK_LE(std::fabs(static_cast<double>(y1[i]) - ref[i]), bound,
                       awqtest::Case(int8 ? "int8" : "f16", " table rows=", rows, " d=", d,
                                     " tokens=", tokens, " token=", t, " row=", r));
            }
          }
          worst = std::max(worst, RelativeError(y1, ref));
        }
      }
    }
    std::printf("  %s table linear: max relative error %.3g\n", int8 ? "int8" : "f16", worst);
  }
}

TEST(embedding_gather_converts_rows) {
  const int d = 3;
  std::vector<uint16_t> table = {F32ToF16(1), F32ToF16(2), F32ToF16(3),
                                 F32ToF16(-1), F32ToF16(0.5f), F32ToF16(65504)};
  const EmbeddingTable f16{2, d, table.data(), nullptr, nullptr};
  const int ids[] = {1, 0, 1};
  std::vector<float> out(3 * d);
  EmbeddingGather(f16, ids, 3, out.data());
  CHECK((out == std::vector<float>{-1, 0.5f, 65504, 1, 2, 3, -1, 0.5f, 65504}));
}

TEST(embedding_gather_dequantizes_int8_blocks) {
  // Two rows of d = 64: column c holds code c - 32 (row 0) or 127 - c (row 1,
  // whose last column holds -128 instead), with per-block scales 0.5 / 2
  // (row 0) and 0.25 / 0.125 (row 1). Every output is a small integer times a
  // power of two: exact in f32.
  const int d = 64;
  std::vector<int8_t> q(2 * d);
  std::vector<int> code(2 * d);  // q as ints, for the expected values
  for (int c = 0; c < d; ++c) {
    code[c] = c - 32;
    code[d + c] = c == d - 1 ? -128 : 127 - c;
  }
  for (int i = 0; i < 2 * d; ++i) q[i] = static_cast<int8_t>(code[i]);
  const float scale[2][2] = {{0.5f, 2.f}, {0.25f, 0.125f}};
  std::vector<uint16_t> scales = {F32ToF16(scale[0][0]), F32ToF16(scale[0][1]),
                                  F32ToF16(scale[1][0]), F32ToF16(scale[1][1])};
  const EmbeddingTable int8{2, d, nullptr, q.data(), scales.data()};
  const int ids[] = {1, 0};
  std::vector<float> out(2 * d);
  EmbeddingGather(int8, ids, 2, out.data());
  int wrong = 0;
  for (int c = 0; c < d; ++c) {
    wrong += out[c] != code[d + c] * scale[1][c / 32];
    wrong += out[d + c] != code[c] * scale[0][c / 32];
  }
  CHECK(wrong == 0);
}

TEST(rmsnorm_matches_reference) {
  std::mt19937 rng(4);
  double worst = 0.0;
  for (int d : {1, 37, 576}) {
    for (int tokens = 1; tokens <= 5; ++tokens) {
      const std::vector<float> x = RandomFloats(static_cast<size_t>(tokens) * d, rng, -3.f, 3.f);
      const std::vector<float> weight = RandomFloats(d, rng, 0.5f, 1.5f);
      std::vector<float> y(x.size()), ref(x.size()), in_place = x;
      RmsNorm(x.data(), weight.data(), d, 1e-5f, tokens, y.data());
      RmsNorm(in_place.data(), weight.data(), d, 1e-5f, tokens, in_place.data());
      RmsNormReference(x.data(), weight.data(), d, 1e-5f, tokens, ref.data());
      CHECK(in_place == y);
      // Sum of d squares: gamma(d) relative; then /d, +eps, sqrt, 1/x and two
      // products add a few roundings each: gamma(d + 8) relative per element.
      for (size_t i = 0; i < y.size(); ++i) {
        CHECK_LE(std::fabs(static_cast<double>(y[i]) - ref[i]), Gamma(d + 8) * std::fabs(ref[i]),
                 awqtest::Case("d=", d, " tokens=", tokens, " token=", i / d, " column=", i % d));
      }
      worst = std::max(worst, RelativeError(y, ref));
    }
  }
  std::printf("  rmsnorm: max relative error %.3g\n", worst);
}

TEST(attention_matches_naive_softmax) {
  // Both cache types: the reference reads the same (f16-rounded) cache, so
  // the bound below holds for each.
  std::mt19937 rng(8);
  ThreadPool pool1(1), pool2(2);
  ForEachCacheType([&](auto cache_type) {
    using CacheT = decltype(cache_type);
    double worst = 0.0;
    for (AttentionShape shape : {AttentionShape{6, 2, 16}, AttentionShape{4, 4, 8}, AttentionShape{3, 1, 8}}) {
      const int kv_width = shape.num_kv_heads * shape.head_dim;
      const int q_width = shape.num_heads * shape.head_dim;
      const int capacity = 16;
      for (int start : {0, 5}) {
        for (int tokens = 1; tokens <= 5; ++tokens) {
          // Cache rows past start + tokens hold NaN: reading them would show.
          std::vector<float> k_values = RandomFloats(static_cast<size_t>(capacity) * kv_width, rng, -2.f, 2.f);
          std::vector<float> v_values = RandomFloats(k_values.size(), rng);
          std::fill(k_values.begin() + (start + tokens) * kv_width, k_values.end(), NAN);
          std::fill(v_values.begin() + (start + tokens) * kv_width, v_values.end(), NAN);
          const std::vector<CacheT> k_cache = AsCache<CacheT>(k_values);
          const std::vector<CacheT> v_cache = AsCache<CacheT>(v_values);
          const std::vector<float> q = RandomFloats(static_cast<size_t>(tokens) * q_width, rng, -2.f, 2.f);
          AttentionTokens<CacheT> chunk;
          chunk.Add(k_cache.data(), v_cache.data(), start, tokens);
          std::vector<float> scores(chunk.ScratchSize(shape));
          std::vector<float> out1(q.size()), out2(q.size()), ref(q.size());
          AttentionForward(shape, q.data(), chunk.k.data(), chunk.v.data(), chunk.positions.data(), tokens, scores.data(), out1.data(), pool1);
          AttentionForward(shape, q.data(), chunk.k.data(), chunk.v.data(), chunk.positions.data(), tokens, scores.data(), out2.data(), pool2);
          AttentionReference(shape, q.data(), k_cache.data(), v_cache.data(), start, tokens, ref.data());
          CHECK(out1 == out2);
          // |q_i k_i| <= 4, so |score| <= S = 4 hd / sqrt(hd). A score is off by
          // <= gamma(hd + 1) S, a weight exp(s - max)/sum by <= 2x that plus
          // gamma(keys + 4); the output, a weighted mean of |v| <= 1, by the sum
          // of the weight errors plus gamma(keys): all within the bound below.
          const int keys = start + tokens;
          const double score_bound = 4.0 * std::sqrt(static_cast<double>(shape.head_dim));
          const double bound = 2 * (2 * Gamma(shape.head_dim + 1) * score_bound + 2 * Gamma(keys + 4));
          for (size_t i = 0; i < out1.size(); ++i) {
            CHECK_LE(std::fabs(static_cast<double>(out1[i]) - ref[i]), bound,
                     awqtest::Case("H=", shape.num_heads, " KV=", shape.num_kv_heads, " hd=",
                                   shape.head_dim, " start=", start, " tokens=", tokens,
                                   " token=", i / q_width, " column=", i % q_width));
          }
          worst = std::max(worst, RelativeError(out1, ref));
        }
      }
    }
    std::printf("  attention, %s cache: max relative error %.3g\n", sizeof(CacheT) == 2 ? "f16" : "f32", worst);
  });
}

TEST(attention_tokens_read_their_own_sequence) {
  // A batched decode step: each token has its own cache and position, and a
  // prefill chunk (3 tokens of one sequence) rides along. Every cache holds
  // NaN past the last row its tokens may read, so a token reading another
  // sequence's rows or its own future shows as NaN or as a wrong value.
  std::mt19937 rng(9);
  ThreadPool pool1(1), pool2(3);
  ForEachCacheType([&](auto cache_type) {
    using CacheT = decltype(cache_type);
    double worst = 0.0;
    for (AttentionShape shape : {AttentionShape{6, 2, 16}, AttentionShape{3, 1, 8}}) {
      const int kv_width = shape.num_kv_heads * shape.head_dim;
      const int q_width = shape.num_heads * shape.head_dim;
      const int capacity = 16;
      const std::vector<int> last_rows = {9, 0, 5, 12};  // per sequence; sequence 2 gets 3 tokens
      std::vector<std::vector<CacheT>> k_caches, v_caches;
      for (int last : last_rows) {
        std::vector<float> k = RandomFloats(static_cast<size_t>(capacity) * kv_width, rng, -2.f, 2.f);
        std::vector<float> v = RandomFloats(k.size(), rng);
        std::fill(k.begin() + (last + 1) * kv_width, k.end(), NAN);
        std::fill(v.begin() + (last + 1) * kv_width, v.end(), NAN);
        k_caches.push_back(AsCache<CacheT>(k));
        v_caches.push_back(AsCache<CacheT>(v));
      }
      AttentionTokens<CacheT> batch;
      batch.Add(k_caches[0].data(), v_caches[0].data(), 9)
          .Add(k_caches[1].data(), v_caches[1].data(), 0)
          .Add(k_caches[2].data(), v_caches[2].data(), 3, 3)
          .Add(k_caches[3].data(), v_caches[3].data(), 12);
      const std::vector<float> q = RandomFloats(static_cast<size_t>(batch.size()) * q_width, rng, -2.f, 2.f);
      std::vector<float> scores(batch.ScratchSize(shape));
      std::vector<float> out1(q.size()), out2(q.size()), ref(q.size());
      AttentionForward(shape, q.data(), batch.k.data(), batch.v.data(), batch.positions.data(), batch.size(), scores.data(), out1.data(), pool1);
      AttentionForward(shape, q.data(), batch.k.data(), batch.v.data(), batch.positions.data(), batch.size(), scores.data(), out2.data(), pool2);
      AttentionReferencePerToken(shape, q.data(), batch, ref.data());
      CHECK(out1 == out2);
      // The bound of attention_matches_naive_softmax at 13 keys.
      const double score_bound = 4.0 * std::sqrt(static_cast<double>(shape.head_dim));
      const double bound = 2 * (2 * Gamma(shape.head_dim + 1) * score_bound + 2 * Gamma(13 + 4));
      for (size_t i = 0; i < out1.size(); ++i) {
        CHECK_LE(std::fabs(static_cast<double>(out1[i]) - ref[i]), bound,
                 awqtest::Case("H=", shape.num_heads, " KV=", shape.num_kv_heads, " hd=",
                               shape.head_dim, " token=", i / q_width, " column=", i % q_width));
      }
      // The chunk's rows equal those of a call with the chunk alone.
      AttentionTokens<CacheT> chunk;
      chunk.Add(k_caches[2].data(), v_caches[2].data(), 3, 3);
      std::vector<float> chunk_scores(chunk.ScratchSize(shape)), chunk_out(3 * static_cast<size_t>(q_width));
      AttentionForward(shape, q.data() + 2 * q_width, chunk.k.data(), chunk.v.data(), chunk.positions.data(), 3, chunk_scores.data(), chunk_out.data(), pool1);
      CHECK(std::equal(chunk_out.begin(), chunk_out.end(), out1.begin() + 2 * q_width));
      worst = std::max(worst, RelativeError(out1, ref));
    }
    std::printf("  attention, tokens of several sequences, %s cache: max relative error %.3g\n",
                sizeof(CacheT) == 2 ? "f16" : "f32", worst);
  });
}

TEST(attention_scratch_bound_grows_with_keys) {
  // The Transformer sizes the scratch once for max_seq_len and then calls
  // with fewer keys, which is safe only if the bound never shrinks as keys
  // grow (the split count itself does: 16 at 2,048 keys, 14 at 2,100).
  const AttentionShape shape{9, 3, 64};
  size_t previous = 0;
  for (int keys = 1; keys <= 40000; ++keys) {
    const size_t floats = AttentionScratchFloats(shape, 1, keys);
    CHECK(floats >= previous);
    previous = floats;
  }
  // 2,048 keys: 2,048 / kMinSplitKeys splits (within kMaxSplits) of 66 floats per head.
  CHECK(AttentionScratchFloats(shape, 1, 2048) == static_cast<size_t>(9) * (2048 / kMinSplitKeys) * 66);
}

TEST(attention_is_causal_and_grouped) {
  // H = 2 query heads share KV = 1 head, hd = 2. Token 0 (position 0) can see
  // only key 0, so its output is exactly v[0], whatever key 1 holds. Every
  // value here is exact in f16 too.
  const AttentionShape shape{2, 1, 2};
  ForEachCacheType([&](auto cache_type) {
      using CacheT = decltype(cache_type);
      const std::vector<CacheT> k_cache = AsCache<CacheT>({1, 0, 100, 100});
      const std::vector<CacheT> v_cache = AsCache<CacheT>({3, -1, 7, 9});
      const std::vector<float> q = {1, 1, 1, 1, /* token 1 */ 0, 0, 0, 0};
      AttentionTokens<CacheT> chunk;
      chunk.Add(k_cache.data(), v_cache.data(), 0, 2);
      std::vector<float> scores(chunk.ScratchSize(shape)), out(8);
      ThreadPool pool(2);
      AttentionForward(shape, q.data(), chunk.k.data(), chunk.v.data(), chunk.positions.data(), 2, scores.data(), out.data(), pool);
      CHECK((std::vector<float>(out.begin(), out.begin() + 4) == std::vector<float>{3, -1, 3, -1}));
      // Token 1 has q = 0: equal scores, so the mean of both values.
      CHECK((std::vector<float>(out.begin() + 4, out.end()) == std::vector<float>{5, 4, 5, 4}));
  });
}

AWQCORE_TEST_MAIN()
