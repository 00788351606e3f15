// The fast row kernels (ops/linear_kernels.h) of every instruction set this
// CPU runs, against the scalar references, over odd shapes: rows not a
// multiple of the 4-row blocking, K at each group size (and across the
// 256-column tiles), unaligned weight and activation pointers, strided
// outputs, batches 1..8 (the f32 GEMM row kernels and the W4A8 GEMV ones),
// the lm_head table in both forms (f16, int8) and W8A8 (int8 activations);
// plus the fused q/k/v and gate/up/SwiGLU passes and thread-count
// independence. The attention kernels: test_simd_attention.cpp.
//
// Tolerances are a-priori bounds (see test_ops.cpp): a sum of n f32 terms in
// any order is within gamma(n) * sum|terms| of the exact sum. The AVX2 int4
// GEMV computes per group s * (sum q x) - s * z * (sum x), whose terms are
// bounded by s (|q| + z) |x|; with in products, 2 per-group terms and the bias
// that is gamma(in + 2 groups + 2) * sum_c s (|q| + z) |x| (+ |bias|). The
// W4A8 kernels' integer dots are exact, then one product by d_b per 32
// columns: the same bound with |a| (the rounded activations) for |x| and
// in / 32 more terms. A wrong
// nibble, group, row or stride gives errors of the size of the outputs, ~1e6
// times these bounds.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "cpu_features.h"
#include "half.h"
#include "isas_to_test.h"
#include "model_weights.h"
#include "ops/activation.h"
#include "ops/embedding_table.h"
#include "ops/int4_linear.h"
#include "ops/linear_kernels.h"
#include "ops/q8_activations.h"
#include "random_weights.h"
#include "test_harness.h"
#include "thread_pool.h"

using namespace awqcore;

using awqtest::Gamma;
using awqtest::IsasToTest;
using awqtest::kUnitRoundoff;
using awqtest::RandomFloats;
using awqtest::RandomInt4;

namespace {

// Weights start 1 element past their allocation, so the kernels see pointers
// with no alignment beyond that of the element type.
constexpr size_t kMisaligned = 1;

// The W4A8 int4 row kernel of each level itself (the op's dispatcher,
// Int4RowsQ8, may route a level to the one below for some shapes).
using Int4Q8Kernel = void (*)(const Int4Linear&, int, int, const Q8Activations&, float*, int);
Int4Q8Kernel Int4Q8KernelOf(Isa isa) {
  switch (isa) {
    case Isa::kScalar: return Int4RowsQ8Scalar;
    case Isa::kAvx2: return Int4RowsQ8Avx2;
    case Isa::kAvx512: return Int4RowsQ8Avx512;
    case Isa::kAvx512Vnni: return Int4DecodeQ8Avx512Vnni;
  }
  return nullptr;
}

// The bound on |kernel - exact| for output (row r, token x) (header comment).
double Bound(const Int4Linear& layer, int r, const float* x) {
  const int groups = layer.in / layer.group_size;
  const int blocks = layer.in / 32;
  double sum = layer.bias ? std::fabs(layer.bias[r]) : 0.0;
  for (int c = 0; c < layer.in; ++c) {
    const uint8_t b = layer.qweight[static_cast<size_t>(r) * layer.in / 2 + c / 2];
    const int q = c % 2 == 0 ? (b & 15) : (b >> 4);
    const size_t g = static_cast<size_t>(r) * groups + c / layer.group_size;
    sum += F16ToF32(layer.scales[g]) * (q + layer.zeros[g]) * std::fabs(x[c]);
  }
  return Gamma(layer.in + 2 * groups + blocks + 2) * sum;
}

// Checks a W4A8 / W8A8 row kernel the way the pool calls it: rows [row0,
// rows) of every token of a batch into a strided y (row0 = 1 when rows > 4,
// ldy = rows + 2). run(x, row0, ldy, y) runs the kernel on x. Counts
// outputs outside bound(t, r) of ref[t * rows + r], rows before row0 that
// were written, and tokens whose outputs differ, bit for bit, from those of
// the token alone (batched decode relies on it).
struct Q8RowKernelTally {
  int checked = 0, bad = 0, batch_dependent = 0;
  double worst = 0.0;

  // Returns y [tokens, ldy].
  template <typename Run, typename BoundOf>
  std::vector<float> Check(const Q8Activations& q8, int rows, const std::vector<float>& ref, Run run,
                           BoundOf bound) {
    const int row0 = rows > 4 ? 1 : 0, ldy = rows + 2;
    std::vector<float> y(static_cast<size_t>(q8.num_tokens) * ldy, -7.f), got, want;
    run(q8, row0, ldy, y.data());
    for (int t = 0; t < q8.num_tokens; ++t) {
      for (int r = 0; r < row0; ++r) bad += y[t * ldy + r] != -7.f;  // untouched
      for (int r = row0; r < rows; ++r) {
        const double diff = std::fabs(static_cast<double>(y[t * ldy + r]) - ref[t * rows + r]);
        bad += !(diff <= bound(t, r));
        got.push_back(y[t * ldy + r]);
        want.push_back(ref[t * rows + r]);
        ++checked;
      }
      std::vector<float> y_alone(ldy, -7.f);
      run(awqtest::TokenAlone(q8, t), row0, ldy, y_alone.data());
      batch_dependent += !std::equal(y_alone.begin() + row0, y_alone.begin() + rows, y.begin() + t * ldy + row0);
    }
    worst = std::max(worst, awqtest::RelativeError(got, want));
    return y;
  }
};

}  // namespace

TEST(int4_row_kernels_match_reference) {
  std::mt19937 rng(11);
  for (Isa isa : IsasToTest()) {
    double worst = 0.0;
    int checked = 0, bad = 0;
    for (int g : {32, 64, 128}) {
      for (int in : {g, 3 * g, 256 + g, 9 * 64}) {
        if (in % g != 0) continue;
        // 29 and 37 rows: many 4-row blocks and a short one; 13 tokens: an
        // odd count past the 8 of a decode batch (the GEMM pairs tokens).
        for (int out : {1, 3, 5, 13, 29, 37}) {
          const bool with_bias = (out + in / g) % 2 == 1;
          RandomInt4 w(out, in, g, with_bias, rng, kMisaligned);
          for (int tokens : {1, 2, 3, 4, 5, 6, 7, 8, 13}) {
            const awqtest::StridedTokens xs(tokens, in, rng);
            const float* x = xs.x();
            const int ldx = xs.stride, ldy = out + 2;
            std::vector<float> ref(static_cast<size_t>(tokens) * out);
            Int4LinearReference(w.layer, xs.dense.data(), tokens, ref.data());
            // Rows [row0, out) only, into a strided y: the split the pool makes.
            const int row0 = out > 4 ? 1 : 0;
            std::vector<float> y(static_cast<size_t>(tokens) * ldy, -7.f);
            Int4Rows(w.layer, row0, out - row0, x, ldx, tokens, y.data() + row0, ldy, isa);
            double max_diff = 0.0, max_ref = 0.0;
            for (int t = 0; t < tokens; ++t) {
              for (int r = 0; r < row0; ++r) bad += y[t * ldy + r] != -7.f;  // untouched
              for (int r = row0; r < out; ++r) {
                const double diff = std::fabs(static_cast<double>(y[t * ldy + r]) - ref[t * out + r]);
                bad += !(diff <= Bound(w.layer, r, x + t * ldx));
                max_diff = std::max(max_diff, diff);
                max_ref = std::max(max_ref, std::fabs(static_cast<double>(ref[t * out + r])));
                ++checked;
              }
            }
            worst = std::max(worst, max_diff / max_ref);
          }
        }
      }
    }
    std::printf("  %s int4 rows: %d outputs, %d outside the bound, max relative error %.3g\n",
                IsaName(isa), checked, bad, worst);
    CHECK(bad == 0);
  }
}

TEST(q8_rounding_avx2_equals_scalar) {
  // Bit for bit: q, block scales and block sums, both layouts, over blocks of
  // random values, of exact ties (x * inv = k + 0.5, rounded to even), of
  // zeros, and with an inf and a NaN.
  if (!IsaSupported(Isa::kAvx2)) {
    std::printf("  no AVX2 on this CPU: nothing to compare\n");
    return;
  }
  std::mt19937 rng(16);
  for (Q8Layout layout : {Q8Layout::kInt4Spans, Q8Layout::kNatural}) {
    for (int in : {64, 576, 1536}) {
      std::vector<float> x = RandomFloats(static_cast<size_t>(in), rng, -4.f, 4.f);
      // Block 1: 127 and k + 0.5 for k = -4 .. 4, so x * (127 / 127) ties.
      x[32] = 127.f;
      for (int k = -4; k <= 4; ++k) x[33 + k + 4] = static_cast<float>(k) + 0.5f;
      if (in > 64) {
        std::fill_n(x.begin() + 64, 32, 0.f);  // block 2: zeros
        x[100] = INFINITY;                      // block 3
        x[130] = NAN;                           // block 4
      }
      const int blocks = in / kQ8Block;
      std::vector<int8_t> q1(in, 99), q2(in, 99);
      std::vector<float> d1(blocks), d2(blocks);
      std::vector<int> s1(blocks), s2(blocks);
      QuantizeRowScalar(x.data(), in, layout, q1.data(), d1.data(), s1.data());
      QuantizeRowAvx2(x.data(), in, layout, q2.data(), d2.data(), s2.data());
      CHECK(q1 == q2);
      CHECK(s1 == s2);
      for (int b = 0; b < blocks; ++b) {
        CHECK((std::isnan(d1[b]) && std::isnan(d2[b])) || d1[b] == d2[b]);
      }
      auto at = [&](int c) { return q1[layout == Q8Layout::kNatural ? c : Q8Position(c)]; };
      CHECK(at(33) == -4 && at(34) == -2 && at(37) == 0 && at(38) == 2);  // ties to even
      if (in > 64) CHECK(std::isnan(d1[3]) && std::isnan(d1[4]) && d1[2] == 0.f);
    }
  }
}

TEST(int4_q8_row_kernels_match_reference) {
  // W4A8: against the exact products with the rounded activations. Widths
  // are multiples of the 64-column span (UsesQ8Activations), within and
  // across groups, and SmolLM2's 576; 832 has 13 groups of 64 (the zero-point
  // term's 8-, 4- and 1-group steps all run). Each token's outputs must
  // equal, bit for bit, those of the token alone (batched decode relies on
  // it; the AVX2 kernel takes tokens in pairs for g >= 64, the AVX-512 one
  // in fours and pairs, the VNNI one all at once).
  std::mt19937 rng(14);
  Q8Buffer buffer;
  for (Isa isa : IsasToTest()) {
    Q8RowKernelTally tally;
    std::vector<float> all_got, all_f32;  // every output, and its f32 product with x
    for (int g : {32, 64, 128}) {
      for (int in : {64, 128, 192, 384, 576, 832}) {
        if (in % g != 0) continue;
        for (int out : {1, 3, 5, 13}) {
          const bool with_bias = (out + in / g) % 2 == 1;
          RandomInt4 w(out, in, g, with_bias, rng, kMisaligned);
          for (int tokens = 1; tokens <= kQ8MaxTokens; ++tokens) {
            const awqtest::StridedTokens xs(tokens, in, rng);
            const Q8Activations& q8 = buffer.Quantize(xs.x(), xs.stride, tokens, in, g);
            const std::vector<float> a = awqtest::Dequantized(q8);
            std::vector<float> ref(static_cast<size_t>(tokens) * out), exact(ref.size());
            Int4LinearReference(w.layer, a.data(), tokens, ref.data());
            Int4LinearReference(w.layer, xs.dense.data(), tokens, exact.data());
            auto run = [&](const Q8Activations& x, int row0, int ldy, float* ys) {
              Int4Q8KernelOf(isa)(w.layer, row0, out - row0, x, ys + row0, ldy);
            };
            const std::vector<float> y = tally.Check(
                q8, out, ref, run, [&](int t, int r) { return Bound(w.layer, r, a.data() + t * in); });
            const int row0 = out > 4 ? 1 : 0, ldy = out + 2;
            for (int t = 0; t < tokens; ++t) {
              for (int r = row0; r < out; ++r) {
                all_got.push_back(y[t * ldy + r]);
                all_f32.push_back(exact[t * out + r]);
              }
            }
          }
        }
      }
    }
    // The last number is the cost of the int8 rounding itself: max |y - W x|
    // over max |W x|, all outputs.
    std::printf("  %s int4 W4A8 rows: %d outputs, %d outside the bound, %d batch-dependent, max "
                "relative error %.3g (vs the f32 product with x: %.3g)\n", IsaName(isa), tally.checked,
                tally.bad, tally.batch_dependent, tally.worst, awqtest::RelativeError(all_got, all_f32));
    CHECK(tally.bad == 0);
    CHECK(tally.batch_dependent == 0);
  }
}

TEST(int4_q8_row_kernels_are_exact_on_exact_data) {
  // Bit for bit, at every level: activations that are integers in
  // [-127, 127] with 127 in every 32-column block round to themselves (d_b =
  // 1), and weight scales in {1, 2} make every product and partial sum an
  // integer below 2^24 (the kernels' two terms, s sum q a and s z sum a, are
  // each <= 4160 * 15 * 127 * 2 < 1.6e7), all exact in f32 in any order. So
  // each output must equal the exact integer result: the integer dot
  // products, nibble order, zero points, the half step (576 = 4.5 x 128,
  // 4160 = 32.5 x 128) and the long rows' L2 prefetch (4160 columns) are
  // checked with no tolerance.
  std::mt19937 rng(17);
  std::uniform_int_distribution<int> value(-127, 127), power(0, 1);
  Q8Buffer buffer;
  for (Isa isa : IsasToTest()) {
    int checked = 0, bad = 0;
    for (int g : {32, 64, 128}) {
      for (int in : {64, 192, 576, 1536, 4160}) {
        if (in % g != 0) continue;
        for (int out : {1, 5, 13}) {
          RandomInt4 w(out, in, g, false, rng, kMisaligned);
          for (size_t i = 0; i < static_cast<size_t>(out) * (in / g); ++i) {
            w.scales[kMisaligned + i] = F32ToF16(std::ldexp(1.f, power(rng)));
          }
          for (int tokens = 1; tokens <= 3; ++tokens) {
            std::vector<float> x(static_cast<size_t>(tokens) * in);
            for (size_t c = 0; c < x.size(); ++c) x[c] = static_cast<float>(c % kQ8Block == 5 ? 127 : value(rng));
            const Q8Activations& q8 = buffer.Quantize(x.data(), in, tokens, in, g);
            std::vector<float> exact(static_cast<size_t>(tokens) * out);
            Int4LinearReference(w.layer, x.data(), tokens, exact.data());
            std::vector<float> y(static_cast<size_t>(tokens) * out, -7.f);
            Int4Q8KernelOf(isa)(w.layer, 0, out, q8, y.data(), out);
            for (size_t i = 0; i < y.size(); ++i) {
              if (y[i] != exact[i] && bad++ < 3) {
                std::printf("  FAILED case: %s g%d in=%d out=%d tokens=%d output %zu: %.9g, exact %.9g\n",
                            IsaName(isa), g, in, out, tokens, i, y[i], exact[i]);
              }
              ++checked;
            }
          }
        }
      }
    }
    std::printf("  %s int4 W4A8 rows on exact data: %d outputs, %d not exact\n", IsaName(isa), checked, bad);
    CHECK(bad == 0);
  }
}

TEST(table_row_kernels_match_reference_and_ignore_batch_size) {
  // Both forms widen to exact f32 weights, so the bound is gamma(d + 1)
  // sum|w x| (header). int8 widths are multiples of 32 (docs/format.md):
  // within one tile, exactly one, across tiles, and SmolLM2's 576.
  std::mt19937 rng(12);
  for (Isa isa : IsasToTest()) {
    for (bool int8 : {false, true}) {
      double worst = 0.0;
      int checked = 0, bad = 0, batch_dependent = 0;
      const std::vector<int> widths = int8 ? std::vector<int>{32, 64, 256, 288, 576}
                                           : std::vector<int>{1, 7, 8, 9, 64, 255, 257, 576};
      for (int d : widths) {
        for (int rows : {1, 3, 5, 13}) {
          const awqtest::RandomTable w(rows, d, int8, rng, kMisaligned);
          for (int tokens = 1; tokens <= 8; ++tokens) {
            // Rows [row0, rows) only, into a strided y (the split the pool makes).
            const awqtest::StridedTokens xs(tokens, d, rng);
            const float* x = xs.x();
            const int ldx = xs.stride, ldy = rows + 2;
            const int row0 = rows > 4 ? 1 : 0;
            std::vector<float> ref(static_cast<size_t>(tokens) * rows);
            TableLinearReference(w.table, xs.dense.data(), tokens, ref.data());
            std::vector<float> y(static_cast<size_t>(tokens) * ldy, -7.f);
            auto run = [&](const float* xs, int n, float* ys) {
              TableRows(w.table, row0, rows - row0, xs, ldx, n, ys + row0, ldy, isa);
            };
            run(x, tokens, y.data());
            double max_diff = 0.0, max_ref = 0.0;
            for (int t = 0; t < tokens; ++t) {
              for (int r = 0; r < row0; ++r) bad += y[t * ldy + r] != -7.f;  // untouched
              for (int r = row0; r < rows; ++r) {
                const double diff = std::fabs(static_cast<double>(y[t * ldy + r]) - ref[t * rows + r]);
                bad += !(diff <= Gamma(d + 1) * w.AbsProductSum(r, x + t * ldx));
                max_diff = std::max(max_diff, diff);
                max_ref = std::max(max_ref, std::fabs(static_cast<double>(ref[t * rows + r])));
                ++checked;
              }
              // The same token alone gives bit-identical logits (what the
              // transformer's last-only path relies on).
              std::vector<float> alone(ldy, -7.f);
              run(x + t * ldx, 1, alone.data());
              batch_dependent += !std::equal(alone.begin() + row0, alone.begin() + rows,
                                             y.begin() + t * ldy + row0);
            }
            worst = std::max(worst, max_ref > 0 ? max_diff / max_ref : max_diff);
          }
        }
      }
      std::printf("  %s %s table rows: %d outputs, %d outside the bound, %d batch-dependent, "
                  "max relative error %.3g\n",
                  IsaName(isa), int8 ? "int8" : "f16", checked, bad, batch_dependent, worst);
      CHECK(bad == 0);
      CHECK(batch_dependent == 0);
    }
  }
}

TEST(table_q8_row_kernels_match_reference_and_ignore_batch_size) {
  // W8A8 int8 table rows against the exact product with the rounded
  // activations: per 32-column block the integer lane sums are exact, then
  // each is multiplied by one rounded s d_b and the d / 4 terms summed, so
  // the bound is gamma(d / 4 + 2) sum|w a|. Random codes cover -128 (|w| is
  // 128 unsigned in vpmaddubsw, 0 after vpdpbusd's +128 offset). Widths: one
  // block, one tile, across tiles, SmolLM2's 576, and 2080 (rows long enough
  // for the L2 prefetch). The row layout's kernels; the tile layout of the
  // AVX-512 VNNI level: test_table_tiles.cpp.
  std::mt19937 rng(15);
  Q8Buffer buffer;
  for (Isa isa : IsasToTest()) {
    Q8RowKernelTally tally;
    for (int d : {32, 64, 256, 288, 576, 2080}) {
      for (int rows : {1, 3, 5, 13}) {
        const awqtest::RandomTable w(rows, d, /*int8=*/true, rng, kMisaligned);
        for (int tokens = 1; tokens <= kQ8MaxTokens; ++tokens) {
          const awqtest::StridedTokens xs(tokens, d, rng);
          const Q8Activations& q8 =
              buffer.Quantize(xs.x(), xs.stride, tokens, d, kQ8Block, Q8Layout::kNatural);
          const std::vector<float> a = awqtest::Dequantized(q8);
          std::vector<float> ref(static_cast<size_t>(tokens) * rows);
          TableLinearReference(w.table, a.data(), tokens, ref.data());
          auto run = [&](const Q8Activations& x, int row0, int ldy, float* ys) {
            TableRowsQ8(w.table, row0, rows - row0, x, ys + row0, ldy, isa);
          };
          tally.Check(q8, rows, ref, run, [&](int t, int r) {
            return Gamma(d / 4 + 2) * w.AbsProductSum(r, a.data() + t * d);
          });
        }
      }
    }
    std::printf("  %s int8 table rows, int8 activations: %d outputs, %d outside the bound, "
                "%d batch-dependent, max relative error %.3g\n",
                IsaName(isa), tally.checked, tally.bad, tally.batch_dependent, tally.worst);
    CHECK(tally.bad == 0);
    CHECK(tally.batch_dependent == 0);
  }
}

TEST(fused_qkv_and_gated_mlp_match_separate_references) {
  std::mt19937 rng(13);
  ThreadPool pool1(1), pool2(2);
  const int d = 192, kv = 64, ffn = 2 * 192 + 4 * 37 + 3;  // rows not a multiple of 4 or 32
  for (Isa isa : IsasToTest()) {
    for (int g : {32, 64}) {
      RandomInt4 q(d, d, g, true, rng, kMisaligned), k(kv, d, g, true, rng, kMisaligned),
          v(kv + 3, d, g, false, rng, kMisaligned);
      RandomInt4 gate(ffn, d, g, false, rng, kMisaligned), up(ffn, d, g, false, rng, kMisaligned);
      double worst = 0.0;
      for (int tokens : {1, 2, 5, 70}) {  // 70: two token slices of the SwiGLU pass
        const std::vector<float> x = RandomFloats(static_cast<size_t>(tokens) * d, rng);
        // What the ops multiply: x, or its int8 rounding (<= 8 tokens).
        const std::vector<float> a = awqtest::Int4OpInput(x, tokens, d, g);
        const Int4Linear* layers[] = {&q.layer, &k.layer, &v.layer};
        std::vector<float> refs[3], outs1[3], outs2[3];
        float* ys1[3];
        float* ys2[3];
        for (int i = 0; i < 3; ++i) {
          refs[i].resize(static_cast<size_t>(tokens) * layers[i]->out);
          outs1[i].resize(refs[i].size());
          outs2[i].resize(refs[i].size());
          ys1[i] = outs1[i].data();
          ys2[i] = outs2[i].data();
          Int4LinearReference(*layers[i], a.data(), tokens, refs[i].data());
        }
        Int4LinearsForward(layers, ys1, 3, x.data(), tokens, pool1, isa);
        Int4LinearsForward(layers, ys2, 3, x.data(), tokens, pool2, isa);
        for (int i = 0; i < 3; ++i) {
          CHECK(outs1[i] == outs2[i]);
          for (size_t j = 0; j < refs[i].size(); ++j) {
            const int t = static_cast<int>(j) / layers[i]->out, r = static_cast<int>(j) % layers[i]->out;
            const RandomInt4& w = i == 0 ? q : i == 1 ? k : v;
            CHECK_LE(std::fabs(static_cast<double>(outs1[i][j]) - refs[i][j]), Bound(w.layer, r, a.data() + t * d),
                     awqtest::Case(IsaName(isa), " ", "qkv"[i], "_proj group=", g, " tokens=", tokens,
                                   " token=", t, " row=", r));
          }
        }
        // SwiGLU / GeGLU: reference gate and up, then the reference
        // activation. The fused result differs by the linears' rounding
        // (bounded above) amplified by at most |act'| <= 1.13 (GELU-tanh's
        // maximum slope; SiLU's is 1.1) and |up|, |act| factors: a relative
        // 1e-5 of the output scale is ~100x that and ~1e-5 of a bug.
        for (Activation act : {Activation::kSilu, Activation::kGeluTanh}) {
          std::vector<float> g_ref(static_cast<size_t>(tokens) * ffn), u_ref(g_ref.size()), ref(g_ref.size());
          Int4LinearReference(gate.layer, a.data(), tokens, g_ref.data());
          Int4LinearReference(up.layer, a.data(), tokens, u_ref.data());
          if (act == Activation::kSilu) {
            SwiGluReference(g_ref.data(), u_ref.data(), tokens * ffn, ref.data());
          } else {
            GeGluReference(g_ref.data(), u_ref.data(), tokens * ffn, ref.data());
          }
          std::vector<float> y1(ref.size()), y2(ref.size());
          Int4GatedMlpForward(gate.layer, up.layer, act, x.data(), tokens, y1.data(), pool1, isa);
          Int4GatedMlpForward(gate.layer, up.layer, act, x.data(), tokens, y2.data(), pool2, isa);
          CHECK(y1 == y2);
          double max_diff = 0.0, max_ref = 0.0;
          for (size_t j = 0; j < ref.size(); ++j) {
            max_diff = std::max(max_diff, std::fabs(static_cast<double>(y1[j]) - ref[j]));
            max_ref = std::max(max_ref, std::fabs(static_cast<double>(ref[j])));
          }
          const double error = max_diff / max_ref;
          worst = std::max(worst, error);
          if (!(error < 1e-5)) {
            std::printf("  FAILED case: %s g%d %s tokens=%d error %.3g\n", IsaName(isa), g,
                        act == Activation::kSilu ? "silu" : "gelu_tanh", tokens, error);
          }
        }
      }
      std::printf("  %s g%d fused swiglu and geglu: max relative error %.3g\n", IsaName(isa), g, worst);
      CHECK(worst < 1e-5);
    }
  }
}

TEST(gated_activation_kernels_match_reference) {
  // 1,005 elements (8-lane body plus a 5-element tail), read and written one
  // float past an aligned start. Gates past -87 take the AVX2 kernel's
  // underflow branch (GELU: z = -87 near x = -9.9); -1000 underflows in the
  // scalar loop too.
  std::mt19937 rng(5);
  std::vector<float> gate = RandomFloats(1001, rng, -12.f, 12.f);
  gate.insert(gate.begin() + 500, {0.f, -100.f, 100.f, -1000.f, -86.9f, -87.1f, 88.f, -0.f, -9.8f, -10.f});
  gate.insert(gate.begin(), 0.f);  // gate.data() + 1 is misaligned for AVX
  const int n = static_cast<int>(gate.size()) - 1;
  const std::vector<float> up = RandomFloats(gate.size(), rng, -2.f, 2.f);
  for (Activation act : {Activation::kSilu, Activation::kGeluTanh}) {
    const bool silu = act == Activation::kSilu;
    std::vector<float> ref(gate.size());
    (silu ? SwiGluReference : GeGluReference)(gate.data() + 1, up.data() + 1, n, ref.data() + 1);
    for (Isa isa : IsasToTest()) {
      std::vector<float> y(gate.size());
      GatedActivation(act, gate.data() + 1, up.data() + 1, n, y.data() + 1, isa);
      // Both are x * sigmoid(z) * up (activation.h). exp (glibc <= 1 ulp; the
      // AVX2 polynomial ~1e-7 = 2u), 1 + e, the product with x or e, the
      // division, the product with up: <= 8 u relative. GELU's z = x (a +
      // b x^2) carries 3 more roundings (3u |z| absolute), which exp turns
      // into a relative 3u |z| where sigmoid(z) is ~e^z (z < 0): the bound
      // adds 4u |z|. The absolute floor covers z below -87, where the AVX2
      // kernel returns -0 for a true |x sigmoid(z) up| < 12 e^-87 2 < 4e-37
      // (SiLU: < 1.4e-36).
      double worst = 0.0;
      for (int i = 1; i <= n; ++i) {
        const double x = gate[i];
        const double z = silu ? 0.0 : std::fabs(1.5957691216057308 * (x + 0.044715 * x * x * x));
        const double diff = std::fabs(static_cast<double>(y[i]) - ref[i]);
        const double bound = (8 + 4 * z) * kUnitRoundoff * std::fabs(ref[i]) + 1.4e-36;
        CHECK_LE(diff, bound, awqtest::Case(IsaName(isa), " ", silu ? "silu" : "gelu_tanh", " gate=", x,
                                            " up=", up[i], " got=", y[i], " want=", ref[i]));
        if (std::fabs(ref[i]) > 1e-30) worst = std::max(worst, diff / std::fabs(ref[i]));
      }
      std::printf("  %s %s: max relative error %.3g (%.2f u)\n", IsaName(isa), silu ? "swiglu" : "geglu",
                  worst, worst / kUnitRoundoff);
    }
  }
}

AWQCORE_TEST_MAIN()
