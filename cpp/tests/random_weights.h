// Random inputs, int4 weights and token tables for the kernel tests (test_ops,
// test_simd_kernels, test_cuda_*), so each kernel family is tested on
// data built the same way.
#pragma once

#include <cmath>
#include <cstdint>
#include <algorithm>
#include <random>
#include <vector>

#include "half.h"
#include "model_weights.h"
#include "ops/int4_tiles.h"
#include "ops/q8_activations.h"

namespace awqtest {

inline std::vector<float> RandomFloats(size_t n, std::mt19937& rng, float lo = -1.f, float hi = 1.f) {
  std::uniform_real_distribution<float> dist(lo, hi);
  std::vector<float> v(n);
  for (float& x : v) x = dist(rng);
  return v;
}

// An Int4Linear with random codes, zero points and f16 scales, owning its
// storage. `offset` extra elements before each array let a test hand kernels
// pointers aligned to no more than their element type.
struct RandomInt4 {
  std::vector<uint8_t> qweight;  // [offset + out*in/2]
  std::vector<uint16_t> scales;  // [offset + out*in/g]
  std::vector<uint8_t> zeros;    // [offset + out*in/g]
  std::vector<float> bias;       // [offset + out] or empty
  awqcore::Int4Linear layer;     // points past the offset

  RandomInt4(int out, int in, int group_size, bool with_bias, std::mt19937& rng, size_t offset = 0) {
    std::uniform_int_distribution<int> byte(0, 255), nibble(0, 15);
    std::uniform_real_distribution<float> scale(0.002f, 0.05f);
    const size_t groups = static_cast<size_t>(out) * (in / group_size);
    qweight.resize(offset + static_cast<size_t>(out) * in / 2);
    for (uint8_t& b : qweight) b = static_cast<uint8_t>(byte(rng));
    scales.resize(offset + groups);
    for (uint16_t& s : scales) s = awqcore::F32ToF16(scale(rng));
    zeros.resize(offset + groups);
    for (uint8_t& z : zeros) z = static_cast<uint8_t>(nibble(rng));
    if (with_bias) bias = RandomFloats(offset + out, rng);
    layer = awqcore::Int4Linear{out, in, group_size, qweight.data() + offset, scales.data() + offset,
                                zeros.data() + offset, with_bias ? bias.data() + offset : nullptr};
  }

  // sum_c |W[r, c] x[c]|: the scale of the rounding-error bound of output r.
  double AbsProductSum(int r, const float* x) const {
    double sum = 0.0;
    for (int c = 0; c < layer.in; ++c) {
      const uint8_t b = layer.qweight[static_cast<size_t>(r) * layer.in / 2 + c / 2];
      const int q = c % 2 == 0 ? (b & 15) : (b >> 4);
      const size_t g = static_cast<size_t>(r) * (layer.in / layer.group_size) + c / layer.group_size;
      sum += std::fabs((q - layer.zeros[g]) * awqcore::F16ToF32(layer.scales[g]) * x[c]);
    }
    return sum;
  }
};

// A copy of a row-layout layer with its codes regrouped into the tile layout
// as the loader does it at the AVX-512 VNNI level (ops/int4_tiles.h), owning
// the codes (scales, zeros and bias: the original's). `offset` as in
// RandomInt4.
struct TiledInt4 {
  std::vector<uint8_t> qweight;  // [offset + out*in/2]
  awqcore::Int4Linear layer;

  explicit TiledInt4(const awqcore::Int4Linear& rows, size_t offset = 1) : layer(rows) {
    const size_t bytes = static_cast<size_t>(rows.out) * (rows.in / 2);
    qweight.assign(offset, 0);
    qweight.insert(qweight.end(), rows.qweight, rows.qweight + bytes);
    awqcore::RegroupInt4Tiles(rows, qweight.data() + offset);
    layer.qweight = qweight.data() + offset;
    layer.layout = awqcore::Int4Layout::kTiles;
  }
};

// Activations for `tokens` tokens of `width` floats as the kernels may see
// them: rows `stride` = width + 3 floats apart, starting 1 float into the
// allocation (no alignment beyond float's); `dense` holds the same values
// packed [tokens, width] for the references.
struct StridedTokens {
  StridedTokens(int tokens, int width, std::mt19937& rng)
      : stride(width + 3),
        store(RandomFloats(1 + static_cast<size_t>(tokens) * stride, rng)),
        dense(static_cast<size_t>(tokens) * width) {
    for (int t = 0; t < tokens; ++t) std::copy_n(x() + t * stride, width, dense.begin() + t * width);
  }
  const float* x() const { return store.data() + 1; }

  int stride;
  std::vector<float> store;  // [1 + tokens * stride]
  std::vector<float> dense;  // [tokens, width]
};

// The rounded activations a[t, c] = d_b q[c] of x, unpermuted: [tokens, in].
inline std::vector<float> Dequantized(const awqcore::Q8Activations& x) {
  std::vector<float> a(static_cast<size_t>(x.num_tokens) * x.in);
  for (int t = 0; t < x.num_tokens; ++t) {
    for (int c = 0; c < x.in; ++c) {
      a[static_cast<size_t>(t) * x.in + c] =
          x.block_scales[static_cast<size_t>(t) * (x.in / awqcore::kQ8Block) + c / awqcore::kQ8Block] *
          x.q[static_cast<size_t>(t) * x.in + x.position(c)];
    }
  }
  return a;
}

// Token t of x as a call of its own (a view into x's storage).
inline awqcore::Q8Activations TokenAlone(const awqcore::Q8Activations& x, int t) {
  return x.Tokens(t, 1);
}

// What the int4 ops multiply for x [tokens, in] (dense): x itself, or, when
// the call takes the W4A8 path (int8 mode and UsesQ8Activations), x's int8
// rounding. Int4LinearReference on this is the exact oracle of either path.
inline std::vector<float> Int4OpInput(const std::vector<float>& x, int tokens, int in,
                                      int group_size, bool int8_decode = true) {
  if (!int8_decode || !awqcore::UsesQ8Activations(in)) return x;
  awqcore::Q8Buffer buffer;
  return Dequantized(buffer.Quantize(x.data(), in, tokens, in, group_size));
}

// An EmbeddingTable [rows, d] with random weights in either form, owning its
// storage: f16 values in [-1, 1), or int8 codes over the whole -128..127
// range (readers accept -128) with f16 scales in [0.002, 0.05). `offset`
// extra elements before each array, as in RandomInt4.
struct RandomTable {
  std::vector<uint16_t> f16;        // [offset + rows*d] (f16 form)
  std::vector<int8_t> q8;           // [offset + rows*d] (int8 form)
  std::vector<uint16_t> q8_scales;  // [offset + rows*d/32]
  awqcore::EmbeddingTable table;    // points past the offset

  RandomTable(int rows, int d, bool int8, std::mt19937& rng, size_t offset = 0) {
    const size_t n = static_cast<size_t>(rows) * d;
    table.rows = rows;
    table.d = d;
    if (!int8) {
      f16.resize(offset + n);
      const std::vector<float> values = RandomFloats(f16.size(), rng);
      for (size_t i = 0; i < f16.size(); ++i) f16[i] = awqcore::F32ToF16(values[i]);
      table.f16 = f16.data() + offset;
      return;
    }
    std::uniform_int_distribution<int> code(-128, 127);
    std::uniform_real_distribution<float> scale(0.002f, 0.05f);
    q8.resize(offset + n);
    for (int8_t& q : q8) q = static_cast<int8_t>(code(rng));
    q8_scales.resize(offset + n / awqcore::EmbeddingTable::kBlock);
    for (uint16_t& s : q8_scales) s = awqcore::F32ToF16(scale(rng));
    table.q8 = q8.data() + offset;
    table.q8_scales = q8_scales.data() + offset;
  }

  // W[r, c] in double, from the stored form.
  double Weight(int r, int c) const {
    const size_t i = static_cast<size_t>(r) * table.d + c;
    if (table.f16 != nullptr) return awqcore::F16ToF32(table.f16[i]);
    const size_t block = static_cast<size_t>(r) * (table.d / awqcore::EmbeddingTable::kBlock) +
                         c / awqcore::EmbeddingTable::kBlock;
    return table.q8[i] * static_cast<double>(awqcore::F16ToF32(table.q8_scales[block]));
  }

  // sum_c |W[r, c] x[c]|: the scale of the rounding-error bound of output r.
  double AbsProductSum(int r, const float* x) const {
    double sum = 0.0;
    for (int c = 0; c < table.d; ++c) sum += std::fabs(Weight(r, c) * x[c]);
    return sum;
  }
};

}  // namespace awqtest
