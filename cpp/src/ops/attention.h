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
//
// The cache element type CacheT is float (the exact f32 mode) or uint16_t,
// IEEE binary16 (the int8-decode mode, as llama.cpp's default cache): decode
// at context p streams 2 * p * KV * hd elements per layer, on SmolLM2 at
// p = 512 26 MB per token in f32 against ~88 MB of weights, so f16 saves 11%
// of the bytes there. Values are converted exactly (F16ToF32) and all
// arithmetic stays f32; only the cache write rounds (StoreKv).
#pragma once

#include <cstdint>

#include "cpu_features.h"
#include "half.h"
#include "thread_pool.h"

namespace awqcore {

struct AttentionShape {
  int num_heads = 0;     // H
  int num_kv_heads = 0;  // KV, divides H
  int head_dim = 0;      // hd
};

inline float KvToF32(float x) { return x; }
inline float KvToF32(uint16_t h) { return F16ToF32(h); }

// dst[0 .. n) = src rounded to the cache type (f16: to nearest, ties to even).
inline void StoreKv(const float* src, int n, float* dst) {
  for (int i = 0; i < n; ++i) dst[i] = src[i];
}
inline void StoreKv(const float* src, int n, uint16_t* dst) {
  for (int i = 0; i < n; ++i) dst[i] = F32ToF16(src[i]);
}

// q, out: [num_tokens, H * hd]; k_caches, v_caches, positions: [num_tokens],
// cache t: [> positions[t], KV * hd]. scores: scratch of H * max_keys floats,
// max_keys = max_t positions[t] + 1. Work is split by query head.
// Instantiated for CacheT = float and uint16_t (f16).
template <typename CacheT>
void AttentionForward(const AttentionShape& shape, const float* q, const CacheT* const* k_caches,
                      const CacheT* const* v_caches, const int* positions, int num_tokens,
                      float* scores, float* out, ThreadPool& pool, Isa isa = DetectedIsa());

// Heads [head_begin, head_end) of AttentionForward with AVX2 + FMA
// (attention_avx2.cpp); used by it when isa is kAvx2 and head_dim % 8 == 0.
// Head h uses scores[h * max_keys ..].
template <typename CacheT>
void AttentionHeadsAvx2(const AttentionShape& shape, const float* q,
                        const CacheT* const* k_caches, const CacheT* const* v_caches,
                        const int* positions, int num_tokens, int max_keys, float* scores,
                        float* out, int head_begin, int head_end);

// The naive computation in double (full softmax per query, no scratch reuse),
// for the tokens of one sequence at positions p .. p + num_tokens - 1
// (p = start_position) of one cache [>= p + num_tokens, KV * hd]. The
// per-token form of AttentionForward is checked against one call per token.
template <typename CacheT>
void AttentionReference(const AttentionShape& shape, const float* q, const CacheT* k_cache,
                        const CacheT* v_cache, int start_position, int num_tokens, float* out);

}  // namespace awqcore
