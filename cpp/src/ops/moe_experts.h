// The experts of a mixture-of-experts layer on routed tokens (docs/format.md):
//   y[t] = sum over ranks r < k, in rank order, of
//          w[t, r] * down_e(act(gate_e(x[t])) * up_e(x[t])),  e = experts[t, r]
// with the routing of ops/moe_router.h.
//
// Each expert's weights are read once per call: the tokens routed to expert
// e are gathered into one contiguous group (a counting sort by expert), e's
// three linears run once on that group (a GEMV for one token, a small GEMM
// for several), and the rows go back to their (token, rank) slots, which the
// weighted sum reads in rank order, so a token's result does not depend on
// which other tokens share the call, up to the summation order of the W4A8
// kernels: on AVX-512 VNNI CPUs a group of more than kQ8MaxTokens tokens runs
// the GEMM, whose float order differs from the GEMVs' (awqcore.h,
// GenerateBatch).
//
// Threads: calls that take the W4A8 path (int8_decode and at most
// kQ8MaxTokens tokens: decode and batched decode) split the rows of all the
// chosen experts in one pass over the pool for gate/up/act and one for down:
// 2 fork-joins per layer, not 2 per chosen expert (16 for top-8). Longer
// calls (prefill) run each expert's group through Int4GatedMlpForward and
// Int4LinearForward (ops/int4_linear.h), whose row split and GEMM tiles
// amortize the two fork-joins over the group's tokens.
//
// Thread safety: a MoeScratch belongs to one caller (one Transformer).
#pragma once

#include <cstdint>
#include <vector>

#include "awqcore/awqcore.h"
#include "cpu_features.h"
#include "model_weights.h"
#include "ops/q8_activations.h"
#include "thread_pool.h"

namespace awqcore {

// Buffers of MoeExpertsForward for calls of up to max_tokens tokens, sized
// once so a forward pass does not allocate; T = max_tokens * k slots.
class MoeScratch {
 public:
  MoeScratch() = default;
  MoeScratch(int max_tokens, int k, int num_experts, int d, int f);
  // Bytes the buffers of these sizes take (cpu_memory.cpp's session check).
  static uint64_t Bytes(int max_tokens, int k, int num_experts, int d, int f);

 private:
  friend void MoeExpertsForward(const MoeWeights&, Activation, const float*, int, const int*,
                                const float*, int, float*, MoeScratch&, ThreadPool&, Isa, bool);
  std::vector<int> group_begin_;  // [E + 1] first slot of expert e's group
  std::vector<int> token_slot_;   // [T] slot of (token t, rank r), index t * k + r
  std::vector<int> active_;       // [E] the experts with tokens, ascending
  std::vector<float> x_;          // [T, d] gathered inputs, grouped by expert
  std::vector<float> act_;        // [T, f] act(gate) * up of each slot
  std::vector<float> out_;        // [T, d] down of each slot
  Q8Buffer x_q8_, act_q8_;        // W4A8 path: x_ and act_ rounded to int8
};

// x: [num_tokens, d]; experts, weights: [num_tokens, k] (MoeRouterForward);
// y: [num_tokens, d], must not alias x. num_tokens <= the scratch's
// max_tokens. int8_decode: calls of <= kQ8MaxTokens tokens multiply W4A8 as
// the dense linears do (each slot's activations rounded on their own).
void MoeExpertsForward(const MoeWeights& moe, Activation activation, const float* x,
                       int num_tokens, const int* experts, const float* weights, int k, float* y,
                       MoeScratch& scratch, ThreadPool& pool, Isa isa = DetectedIsa(),
                       bool int8_decode = true);

}  // namespace awqcore
