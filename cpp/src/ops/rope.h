// Rotary position embedding, "rotate half" convention of the Hugging Face
// models: within each head of width hd, for i < hd/2 the pair
// (x[i], x[i + hd/2]) is rotated by the angle pos * f_i, and scaled by the
// rope scaling's attention factor a (1 except for yarn):
//   x'[i]        = a (x[i] cos - x[i + hd/2] sin)
//   x'[i + hd/2] = a (x[i + hd/2] cos + x[i] sin)
// The inverse frequencies f_i start from theta^(-2i/hd) and are transformed
// as transformers' ROPE_INIT_FUNCTIONS do (modeling_rope_utils.py):
//   linear: f_i / factor
//   llama3: with wavelength w_i = 2 pi / f_i and L = original context,
//     w_i < L / high_freq_factor: f_i;  w_i > L / low_freq_factor: f_i / factor;
//     between: (1 - s) f_i / factor + s f_i,
//     s = (L / w_i - low_freq_factor) / (high_freq_factor - low_freq_factor)
//   yarn: a ramp r_i = clamp((i - lo) / (hi - lo), 0, 1) over the correction
//     range [lo, hi] of dimensions (beta_fast and beta_slow rotations in the
//     original context; floored/ceiled with truncate) blends
//     f_i / factor (weight r_i) and f_i (weight 1 - r_i).
#pragma once

#include <vector>

#include "awqcore/awqcore.h"

namespace awqcore {

class RopeTable {
 public:
  // Precomputes cos/sin for positions [0, max_positions); head_dim is even.
  RopeTable(int head_dim, float theta, int max_positions, const RopeScaling& scaling = {});

  // Rotates x: [num_tokens, num_heads * head_dim] in place; token t is at
  // positions[t] (< max_positions). Positions are per token because a batched
  // decode step holds one token of each sequence, each at its own position;
  // a prefill chunk passes p, p + 1, ....
  void Apply(float* x, int num_tokens, int num_heads, const int* positions) const;

  // out[0 .. head_dim) = one head's x[0 .. head_dim) rotated to `position`;
  // out may be x.
  void RotateHead(const float* x, int position, float* out) const;

  // The tables [max_positions, head_dim / 2], as Apply reads them (the CUDA
  // backend uploads these, so both devices rotate by the same factors).
  const std::vector<float>& cos_table() const { return cos_; }
  const std::vector<float>& sin_table() const { return sin_; }

 private:
  int head_dim_;
  std::vector<float> cos_;  // [max_positions, head_dim / 2]  a * cos(pos * f_i)
  std::vector<float> sin_;  // [max_positions, head_dim / 2]  a * sin(pos * f_i)
};

// The direct formula, frequencies and angles computed per element in double:
// the tests' oracle. Token t is at start_position + t; the per-token form of
// RopeTable::Apply is checked against one call per token.
void RopeReference(float* x, int num_tokens, int num_heads, int head_dim, float theta,
                   int start_position, const RopeScaling& scaling = {});

}  // namespace awqcore
