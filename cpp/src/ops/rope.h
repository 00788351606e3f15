// Rotary position embedding, "rotate half" convention of the Hugging Face
// Llama/Qwen2 models: within each head of width hd, for i < hd/2 the pair
// (x[i], x[i + hd/2]) is rotated by the angle pos * theta^(-2i/hd):
//   x'[i]        = x[i] cos - x[i + hd/2] sin
//   x'[i + hd/2] = x[i + hd/2] cos + x[i] sin
#pragma once

#include <vector>

namespace awqcore {

class RopeTable {
 public:
  // Precomputes cos/sin for positions [0, max_positions); head_dim is even.
  RopeTable(int head_dim, float theta, int max_positions);

  // Rotates x: [num_tokens, num_heads * head_dim] in place; token t is at
  // positions[t] (< max_positions). Positions are per token because a batched
  // decode step holds one token of each sequence, each at its own position;
  // a prefill chunk passes p, p + 1, ....
  void Apply(float* x, int num_tokens, int num_heads, const int* positions) const;

  // out[0 .. head_dim) = one head's x[0 .. head_dim) rotated to `position`;
  // out may be x.
  void RotateHead(const float* x, int position, float* out) const;

  int head_dim() const { return head_dim_; }
  // The tables [max_positions, head_dim / 2], as Apply reads them (the CUDA
  // backend uploads these, so both devices rotate by the same factors).
  const std::vector<float>& cos_table() const { return cos_; }
  const std::vector<float>& sin_table() const { return sin_; }

 private:
  int head_dim_;
  std::vector<float> cos_;  // [max_positions, head_dim / 2]
  std::vector<float> sin_;  // [max_positions, head_dim / 2]
};

// The direct formula, angles computed per call in double: the tests' oracle.
// Token t is at start_position + t; the per-token form of RopeTable::Apply is
// checked against one call per token.
void RopeReference(float* x, int num_tokens, int num_heads, int head_dim, float theta,
                   int start_position);

}  // namespace awqcore
