// Causal grouped-query attention over the KV cache.
//
// Query head h reads kv head h / (H / KV). Token t of a call sits at position
// positions[t] of its own sequence, whose cache starts at k_caches[t] /
// v_caches[t], and attends to that cache's rows 0 .. positions[t]: the cache
// already holds the token's own key and value. The tokens of a prefill chunk
// share one cache (positions p, p + 1, ...); a batched decode step has one
// token per sequence, each with its own cache, so position and cache are per
// token. softmax(q . k / sqrt(hd)) is taken in f32 with the row maximum
// subtracted (so exp never overflows), then applied to V.
#pragma once

#include "cpu_features.h"
#include "thread_pool.h"

namespace awqcore {

struct AttentionShape {
  int num_heads = 0;     // H
  int num_kv_heads = 0;  // KV, divides H
  int head_dim = 0;      // hd
};

// q, out: [num_tokens, H * hd]; k_caches, v_caches, positions: [num_tokens],
// cache t: [> positions[t], KV * hd]. scores: scratch of H * max_keys floats,
// max_keys = max_t positions[t] + 1. Work is split by query head.
void AttentionForward(const AttentionShape& shape, const float* q, const float* const* k_caches,
                      const float* const* v_caches, const int* positions, int num_tokens,
                      float* scores, float* out, ThreadPool& pool, Isa isa = DetectedIsa());

// Heads [head_begin, head_end) of AttentionForward with AVX2 + FMA
// (attention_avx2.cpp); used by it when isa is kAvx2 and head_dim % 8 == 0.
// Head h uses scores[h * max_keys ..].
void AttentionHeadsAvx2(const AttentionShape& shape, const float* q,
                        const float* const* k_caches, const float* const* v_caches,
                        const int* positions, int num_tokens, int max_keys, float* scores,
                        float* out, int head_begin, int head_end);

// The naive computation in double (full softmax per query, no scratch reuse),
// for the tokens of one sequence at positions p .. p + num_tokens - 1
// (p = start_position) of one cache [>= p + num_tokens, KV * hd]. The
// per-token form of AttentionForward is checked against one call per token.
void AttentionReference(const AttentionShape& shape, const float* q, const float* k_cache,
                        const float* v_cache, int start_position, int num_tokens, float* out);

}  // namespace awqcore
