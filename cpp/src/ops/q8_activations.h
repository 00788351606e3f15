// Activations rounded to int8 in blocks of 32 columns (like llama.cpp's
// Q8_1), the input of the int4 decode kernels (W4A8).
//
// Why: a token's int4 GEMV in f32 spends 4 ALU uops per 8 weights on
// unpacking (shift, and, convert) and the FMA, 32 per 64 weights; with int8
// activations 64 weights cost 9 (int4_linear_avx2.cpp). On one core of this
// 2-vCPU Xeon, 1536 x 576 in L2: 9.7 vs 6.2 GMAC/s at g = 64, 7.7 vs 4.3 at
// g = 32 (the kernels are not purely ALU-bound: loads and the per-group work
// remain).
//
// Cost in accuracy: x[c] ~ d_b * q[c], d_b = max_{c in b} |x[c]| / 127, so
// each activation moves by at most d_b / 2, i.e. <= 1/254 of its block's
// largest value. The weights are unchanged; only the activations are rounded.
// A linear's outputs move by ~3.4e-3 of their scale (test_simd_kernels);
// SmolLM2's next-token distributions by a mean KL of 2.6e-3 nats
// (test_runtime_vs_reference); perplexity: README.
//
// Layout per token: spans of 64 columns, each stored as 64 int8 in the order
//   [even columns of block 0 (16) | even of block 1 (16) | odd of block 0 | odd of block 1]
// which is the order in which a 32-byte load of int4 codes (low nibble = even
// column) yields them after `and 15` (low nibbles) and `>> 4` (high nibbles),
// so the AVX2 kernel multiplies codes and activations with no shuffle.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "awqcore/awqcore.h"

namespace awqcore {

constexpr int kQ8Block = 32;  // columns per activation scale
constexpr int kQ8Span = 64;   // columns per permuted span (see layout above)

// Calls with at most this many tokens (decode; batched decode of up to 8
// sequences) compute their logits W8A8 with an int8 lm_head; longer ones
// (all of a prompt's logits) multiply the table by f32 activations. Public as
// awqcore::kInt8DecodeMaxTokens (the perplexity tool feeds calls of this size).
constexpr int kQ8MaxTokens = kInt8DecodeMaxTokens;

// Position of column c within its token's permuted row.
inline int Q8Position(int c) {
  const int span = c / kQ8Span, in_span = c % kQ8Span;
  const int block = in_span / kQ8Block, in_block = in_span % kQ8Block;
  return span * kQ8Span + (in_block % 2) * kQ8Block + block * (kQ8Block / 2) + in_block / 2;
}

// Where column c of a token's row is stored: kInt4Spans, the permuted spans
// above (the int4 kernels; `in` a multiple of kQ8Span); kNatural, at c (the
// int8 lm_head, whose weights are in column order; `in` a multiple of
// kQ8Block).
enum class Q8Layout { kInt4Spans, kNatural };

// Quantized activations of num_tokens tokens of width `in`; group sums are
// per weight group of `group_size` columns. A view: Tokens() takes a range of
// its tokens without copying.
struct Q8Activations {
  int num_tokens = 0;
  int in = 0;
  int group_size = 0;
  Q8Layout layout = Q8Layout::kInt4Spans;
  const int8_t* q = nullptr;           // [num_tokens, in], in `layout` order
  const float* block_scales = nullptr; // [num_tokens, in/32]   d_b
  const float* group_sums = nullptr;   // [num_tokens, in/g]    sum_c d_b q[c] over the group

  // Index of column c within a token's row of q.
  int position(int c) const { return layout == Q8Layout::kNatural ? c : Q8Position(c); }

  // Tokens [t0, t0 + count) as a call of their own.
  Q8Activations Tokens(int t0, int count) const {
    Q8Activations slice = *this;
    slice.num_tokens = count;
    slice.q += static_cast<size_t>(t0) * in;
    slice.block_scales += static_cast<size_t>(t0) * (in / kQ8Block);
    slice.group_sums += static_cast<size_t>(t0) * (in / group_size);
    return slice;
  }
};

// One token's row x [in] rounded as above: q [in] in `layout` order,
// block_scales [in/32] the d_b, block_sums [in/32] the sums of each block's
// q. *Scalar is the reference; *Avx2 (q8_activations_avx2.cpp, call only
// when IsaSupported(Isa::kAvx2)) gives bit-identical results several times
// faster (README): the rounding runs on the calling thread between two
// parallel ops while the workers wait, so its time adds to every decode step
// (1536 columns: 7.2 us scalar, 1.1 us AVX2).
void QuantizeRowScalar(const float* x, int in, Q8Layout layout, int8_t* q, float* block_scales,
                       int* block_sums);
void QuantizeRowAvx2(const float* x, int in, Q8Layout layout, int8_t* q, float* block_scales,
                     int* block_sums);

// Owns the storage of a Q8Activations; grows on first use only, so a decode
// loop that reuses one buffer does not allocate. Not thread-safe.
class Q8Buffer {
 public:
  // Rounds x [num_tokens, in] (row stride ldx). Requires group_size in {32,
  // 64, 128} dividing in, and in % kQ8Span == 0 for kInt4Spans. A non-finite
  // value in a block makes its scale NaN or inf, so the outputs that read it
  // are non-finite too (never silently finite).
  const Q8Activations& Quantize(const float* x, int ldx, int num_tokens, int in, int group_size,
                                Q8Layout layout = Q8Layout::kInt4Spans);

 private:
  std::vector<int8_t> q_;
  std::vector<float> block_scales_, group_sums_;
  std::vector<int> block_sums_;  // [in/32], one token's
  Q8Activations view_;
};

// Whether a call of the int4 ops takes the W4A8 path in the int8 mode: every
// call (decode, batched decode, prefill) whose width is a multiple of the
// 64-column span.
inline bool UsesQ8Activations(int in) { return in % kQ8Span == 0; }

}  // namespace awqcore
