// The CUDA rotary embedding and attention kernels (decode, and the
// tensor-core prefill) against their CPU scalar references (ops/rope.h,
// ops/attention.h) on random data over odd shapes, scales and windows.
//
// The reference gets the same f16-rounded cache the GPU holds, so only f32
// ordering and __expf (2 ulp) remain; the tensor-core prefill attention's
// reference also gets its f16-rounded q, and its bound adds p's f16 rounding
// (derived at the test).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "cuda_checks.h"
#include "cuda_testing.h"
#include "half.h"
#include "ops/attention.h"
#include "ops/rope.h"
#include "random_weights.h"
#include "test_harness.h"

using namespace awqcore;
using namespace awqtest;

namespace {

// The rotary table of a test case: its base and scaling.
struct RopeOptions {
  float theta = 10000.f;
  RopeScaling scaling;
};

// One case through cuda_test::RopeAttention on random data: `start` cached
// rows, then n new tokens of sequence `sequence`.
struct AttentionRun {
  std::vector<float> q, k;          // inputs before rotary: [n, H*hd], [n, KV*hd]
  std::vector<float> q_gpu, k_gpu;  // q rotated on the device; k rotated as stored (f16)
  std::vector<float> kc, vc;        // the sequence's cache as the device holds it: [start + n, KV*hd]
  std::vector<float> out;           // attention output [n, H*hd]
};
AttentionRun RunRopeAttention(const AttentionShape& shape, const RopeOptions& rope_options, int start, int n,
                              int sequence, bool prefill_kernel, std::mt19937& rng) {
  const size_t qw = static_cast<size_t>(shape.num_heads) * shape.head_dim;
  const size_t kvw = static_cast<size_t>(shape.num_kv_heads) * shape.head_dim;
  AttentionRun r;
  std::vector<float> cache_k = RandomFloats(start * kvw, rng), cache_v = RandomFloats(start * kvw, rng);
  r.q = RandomFloats(n * qw, rng, -2.f, 2.f);
  r.k = RandomFloats(n * kvw, rng);
  std::vector<float> v = RandomFloats(n * kvw, rng);
  r.q_gpu = r.q;
  r.k_gpu.resize(n * kvw);
  r.out.resize(n * qw);
  const RopeTable rope(shape.head_dim, rope_options.theta, start + n, rope_options.scaling);
  cuda_test::RopeAttention(shape, rope, start, n, cache_k.data(), cache_v.data(), r.q_gpu.data(), r.k.data(),
                           v.data(), r.k_gpu.data(), r.out.data(), sequence, prefill_kernel);
  // f16 values of the old rows and of v; the GPU's rotated k rows.
  r.kc.resize((start + n) * kvw);
  r.vc.resize(r.kc.size());
  for (size_t i = 0; i < start * kvw; ++i) {
    r.kc[i] = F16ToF32(F32ToF16(cache_k[i]));
    r.vc[i] = F16ToF32(F32ToF16(cache_v[i]));
  }
  for (size_t i = 0; i < n * kvw; ++i) {
    r.kc[start * kvw + i] = r.k_gpu[i];
    r.vc[start * kvw + i] = F16ToF32(F32ToF16(v[i]));
  }
  return r;
}

std::string AttentionCase(const char* what, const AttentionShape& shape, int start, int n, int sequence) {
  return std::string(what) + " H" + std::to_string(shape.num_heads) + " KV" + std::to_string(shape.num_kv_heads) +
         " hd" + std::to_string(shape.head_dim) + " scale " + std::to_string(shape.ScoreScale()) +
         " window " + std::to_string(shape.window) + " @" + std::to_string(start) + "+" + std::to_string(n) +
         " seq" + std::to_string(sequence);
}

RopeScaling Scaling(RopeScaling::Type type, double factor, int original, double attention_factor = 1.0) {
  RopeScaling s;
  s.type = type;
  s.factor = factor;
  s.original_max_position_embeddings = original;
  s.attention_factor = attention_factor;
  return s;
}

TEST(rope_and_attention_match_reference) {
  std::mt19937 rng(4);
  // (H, KV, hd, cached positions, new tokens, sequence), the layer's scale
  // and window, the rotary base and scaling: GQA groups of 1..4, splits of
  // 256 crossed (300 + 3, 700 + 1), a multi-token prefill from empty;
  // sequences 0 .. 3 of a multi-sequence cache; head_dim 256 (Gemma 3 270M;
  // its chunks never take the tensor-core kernel); Gemma 3's scale 24^-0.5
  // and a local base; windows that start inside a split, skip whole splits
  // (600: keys 345 .. 604), cover the whole context, or are a few keys of a
  // prefill chunk (7 of 70 tokens); llama3, yarn (attention factor on cos and
  // sin) and linear rope scaling, past their original context of 32.
  struct Case {
    int dims[6];
    float scale;
    int window;
    RopeOptions rope;
  };
  using T = RopeScaling::Type;
  const Case cases[] = {
      {{4, 2, 16, 0, 5, 0}, 0.f, 0, {}},
      {{9, 3, 64, 300, 3, 1}, 0.f, 0, {}},
      {{2, 1, 128, 700, 1, 3}, 0.f, 0, {}},
      {{3, 3, 8, 0, 70, 1}, 0.f, 0, {}},
      {{4, 1, 256, 300, 3, 1}, 0.f, 0, {}},
      {{8, 2, 256, 0, 40, 0}, 0.0625f, 16, {1e6f, {}}},
      {{4, 2, 64, 600, 5, 2}, 0.f, 256, {500000.f, Scaling(T::kLlama3, 8.0, 32)}},
      {{4, 2, 32, 40, 9, 0}, 0.2041241452f, 16, {1e6f, Scaling(T::kYarn, 4.0, 32, 0.1 * std::log(4.0) + 1.0)}},
      {{3, 3, 8, 0, 70, 1}, 0.f, 7, {10000.f, Scaling(T::kLinear, 4.0, 0)}},
      {{6, 2, 16, 20, 4, 3}, 0.f, 512, {}}};
  for (const Case& c : cases) {
    const AttentionShape shape{c.dims[0], c.dims[1], c.dims[2], c.scale, c.window};
    const int start = c.dims[3], n = c.dims[4], total = start + n;
    const AttentionRun run = RunRopeAttention(shape, c.rope, start, n, c.dims[5], false, rng);
    // Rotation: the GPU applies the host's f32 cos/sin table (RopeTable, the
    // scaling's attention factor a included) vs angles in double: a few ulp.
    std::vector<float> q_ref = run.q, k_ref = run.k;
    RopeReference(q_ref.data(), n, shape.num_heads, shape.head_dim, c.rope.theta, start, c.rope.scaling);
    RopeReference(k_ref.data(), n, shape.num_kv_heads, shape.head_dim, c.rope.theta, start, c.rope.scaling);
    // a |a cos - b sin| <= a (|a| + |b|): a few roundings of values up to 4a (q) or 2a (k).
    const double a = c.rope.scaling.attention_factor;
    std::vector<double> q_tol(q_ref.size(), 16 * kU * 4 * a), k_tol(k_ref.size());
    CheckClose("rope q", run.q_gpu, q_ref, q_tol);
    for (size_t i = 0; i < k_ref.size(); ++i) k_tol[i] = std::fabs(k_ref[i]) / 1024.0 + 16 * kU * 2 * a;  // + 1 f16 ulp
    CheckClose("rope k as stored (f16)", run.k_gpu, k_ref, k_tol);
    // Attention over the cache the GPU holds: f16 values, GPU's rotated rows;
    // the reference reads each token's window with the shape's scale.
    std::vector<float> want(run.out.size());
    AttentionReference(shape, run.q_gpu.data(), run.kc.data(), run.vc.data(), start, n, want.data());
    // Outputs are convex combinations of |v| <= 1: softmax weights carry
    // relative errors of ~gamma(hd) |score| (|score| <= 2 a^2 hd scale with
    // |q| <= 2 a, |k| <= a after rotation) plus __expf's 2 ulp, and the sum
    // over <= total terms adds gamma(total).
    const double max_score = 2.0 * a * a * shape.head_dim * shape.ScoreScale();
    const double tol = 4 * (Gamma(shape.head_dim) * max_score + Gamma(total) + 4 * kU);
    CheckClose(AttentionCase("attention", shape, start, n, c.dims[5]).c_str(), run.out, want,
               std::vector<double>(want.size(), tol));
  }
}

TEST(attention_prefill_matches_reference) {
  // AttentionPrefill (tensor cores, one sequence per call) over head dims 64
  // and 128, GQA groups 1, 3, 4, token counts below, at and across the 64-row
  // query tile (1, 17, 64, 100, 300) and starts on and off the 64-key tile
  // (0, 5, 64, 700: the diagonal then spans two key tiles, and the last key
  // tile runs past start + n, where the next sequence's rows are NaN: those
  // keys must be zero-filled, never read); sequences 0 and 2.
  //
  // The kernel rounds q to f16: the reference gets the same f16 q (as it gets
  // the f16 cache), so what remains is, per output, with E = ||q|| max||k||
  // / sqrt(hd) >= |every score| (Cauchy-Schwarz) and T = ceil(total / 64):
  //  - exponent error of each weight: delta = 2 gamma(hd) E (the mma's f32
  //    sums, truncating adds: 2u each) + (2T + 4) 4u (E + 1) (the f32 roundings
  //    of the exponent and of each tile's rescale, ex2.approx's 2 ulp); the
  //    normalised weights then move by <= 2 delta (1.01) of themselves;
  //  - p rounded to f16 for PV: 2^-11 relative, or 2^-25 absolute below 2^-14
  //    (l >= 1, so <= total 2^-25 in all);
  //  - f32 sums of PV and l over <= total keys, T rescales, one division:
  //    4 gamma(total + T + 1);
  // each times max|v|. At hd 128, total 1000: ~(4.9 + 0.3 + 4.5 + 2.4)e-4
  // max|v|. In a host emulation of the kernel a skipped key tile at 700 keys,
  // a mask off by one, h % KV for the kv head or a 0.2% scale error on l
  // each failed cases here; another sequence's row gives NaN.
  //
  // Scales and windows: every (n, start) pair runs with 1/sqrt(hd) and no
  // window, and with one of: a window of 7 keys (inside one 64-key tile for
  // most rows, across two for the rest, and rows whose first tiles are all
  // masked), 100 (a warp's rows start in different tiles) or 64 with the
  // scale 0.1; E below is then ||q|| max||k|| scale.
  std::mt19937 rng(5);
  const int groups[][2] = {{4, 4}, {9, 3}, {8, 2}};  // H, KV
  const int tokens[] = {1, 17, 64, 100, 300};
  const int starts[] = {0, 5, 64, 700};
  const float scales[] = {0.f, 0.f, 0.1f};  // with windows 7, 100, 64
  const int windows[] = {7, 100, 64};
  for (int hd : {64, 128})
    for (int gi = 0; gi < 3; ++gi)
      for (int ni = 0; ni < 5; ++ni)
        for (int si = 0; si < 4; ++si)
          for (int variant = 0; variant < 2; ++variant) {
          const int w = (gi + ni + si) % 3;
          const AttentionShape shape{groups[gi][0], groups[gi][1], hd, variant ? scales[w] : 0.f,
                                     variant ? windows[w] : 0};
          const int start = starts[si], n = tokens[ni], total = start + n;
          const int sequence = 2 * ((gi + ni + si) % 2);  // both for every (n, start) pair
          AttentionRun run = RunRopeAttention(shape, RopeOptions{}, start, n, sequence, true, rng);
          for (float& x : run.q_gpu) x = F16ToF32(F32ToF16(x));
          std::vector<float> want(run.out.size());
          AttentionReference(shape, run.q_gpu.data(), run.kc.data(), run.vc.data(), start, n, want.data());

          const size_t kvw = static_cast<size_t>(shape.num_kv_heads) * hd;
          std::vector<double> k_norm(shape.num_kv_heads, 0.0);  // max over keys of ||k||
          double max_v = 0.0;
          for (int p = 0; p < total; ++p)
            for (int kv = 0; kv < shape.num_kv_heads; ++kv) {
              double sq = 0.0;
              for (int d = 0; d < hd; ++d) {
                const size_t i = p * kvw + kv * hd + d;
                sq += static_cast<double>(run.kc[i]) * run.kc[i];
                max_v = std::max(max_v, std::fabs(static_cast<double>(run.vc[i])));
              }
              k_norm[kv] = std::max(k_norm[kv], std::sqrt(sq));
            }
          const int tiles = (total + 63) / 64;
          std::vector<double> tol(want.size());
          for (int t = 0; t < n; ++t)
            for (int h = 0; h < shape.num_heads; ++h) {
              const size_t row = (static_cast<size_t>(t) * shape.num_heads + h) * hd;
              double sq = 0.0;
              for (int d = 0; d < hd; ++d) sq += static_cast<double>(run.q_gpu[row + d]) * run.q_gpu[row + d];
              const double e = std::sqrt(sq) * k_norm[h / (shape.num_heads / shape.num_kv_heads)] * shape.ScoreScale();
              const double delta = 2 * Gamma(hd) * e + (2 * tiles + 4) * 4 * kU * (e + 1);
              const double bound = max_v * (std::ldexp(1.0, -11) + total * std::ldexp(1.0, -25) + 2.02 * delta +
                                            4 * Gamma(total + tiles + 1));
              for (int d = 0; d < hd; ++d) tol[row + d] = bound + 2 * kU * std::fabs(want[row + d]);
            }
          CheckClose(AttentionCase("prefill attention", shape, start, n, sequence).c_str(), run.out, want, tol);
        }
}

}  // namespace

AWQCORE_CUDA_TEST_MAIN()
