// The router of a mixture-of-experts layer (docs/format.md): per token x [d],
//   logits = W x            W [E, d] f32, computed in f32
//   p = softmax(logits)     f32
//   the k largest p, in descending order; among equal p the lower expert
//     index first (the format's rule: torch.topk has no stable order for
//     exact ties, so transformers has none; such ties need equal router rows)
//   w_i = p_i, divided by the sum of the k chosen p when `normalize`
//   (norm_topk_prob).
// The experts then run on the tokens routed to them (ops/moe_experts.h).
#pragma once

#include "thread_pool.h"

namespace awqcore {

// x: [num_tokens, d]; scores: [num_tokens, E] scratch (holds the
// probabilities p on return); experts, weights: [num_tokens, k], rank
// order; 1 <= k <= E. The GEMV's rows (token, expert) are split across the
// pool when there are more than 2^16 weights to read, else computed on the
// calling thread; a token's logits are computed alike either way, so its
// routing does not depend on the other tokens of the call.
void MoeRouterForward(const float* router, int num_experts, int d, const float* x, int num_tokens,
                      int k, bool normalize, float* scores, int* experts, float* weights,
                      ThreadPool& pool);

// Softmax, top-k and normalization of one token's router logits (the part
// of MoeRouterForward after the GEMV): scores [E] holds the logits on entry
// and p on return; experts, weights [k].
void MoeRouteToken(float* scores, int num_experts, int k, bool normalize, int* experts,
                   float* weights);

// The oracle: logits accumulated in double (rounded to f32), softmax in
// double, the experts sorted by (p descending, index ascending) with a stable
// sort. Weights agree with MoeRouterForward to f32 rounding; the experts
// agree exactly unless two p differ by less than that rounding.
void MoeRouterReference(const float* router, int num_experts, int d, const float* x,
                        int num_tokens, int k, bool normalize, int* experts, float* weights);

}  // namespace awqcore
