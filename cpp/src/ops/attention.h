// Causal grouped-query attention over the KV cache.
//
// Query head h reads kv head h / (H / KV). Token t of the call sits at
// position p + t (p = start_position) and attends to cache positions
// 0 .. p + t: the cache already holds this call's keys and values.
// softmax(q . k / sqrt(hd)) is taken in f32 with the row maximum subtracted
// (so exp never overflows), then applied to V.
#pragma once

#include "cpu_features.h"
#include "thread_pool.h"

namespace awqcore {

struct AttentionShape {
  int num_heads = 0;     // H
  int num_kv_heads = 0;  // KV, divides H
  int head_dim = 0;      // hd
};

// q, out: [num_tokens, H * hd]; k_cache, v_cache: [>= p + num_tokens, KV * hd];
// scores: scratch of H * (p + num_tokens) floats. Work is split by query head.
void AttentionForward(const AttentionShape& shape, const float* q, const float* k_cache,
                      const float* v_cache, int start_position, int num_tokens, float* scores,
                      float* out, ThreadPool& pool, Isa isa = DetectedIsa());

// Heads [head_begin, head_end) of AttentionForward with AVX2 + FMA
// (attention_avx2.cpp); used by it when isa is kAvx2 and head_dim % 8 == 0.
void AttentionHeadsAvx2(const AttentionShape& shape, const float* q, const float* k_cache,
                        const float* v_cache, int start_position, int num_tokens, float* scores,
                        float* out, int head_begin, int head_end);

// The naive computation in double (full softmax per query, no scratch reuse).
void AttentionReference(const AttentionShape& shape, const float* q, const float* k_cache,
                        const float* v_cache, int start_position, int num_tokens, float* out);

}  // namespace awqcore
