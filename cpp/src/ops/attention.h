// Causal grouped-query attention over the KV cache, tiled with an online
// softmax (flash attention's recurrence) and split along the keys.
//
// Query head h reads kv head h / (H / KV). Token t of a call sits at position
// p = positions[t] of its own sequence, whose cache starts at k_caches[t] /
// v_caches[t], and attends to that cache's rows 0 .. p (the cache already
// holds the token's own key and value), or with a sliding window W to rows
// max(0, p - W + 1) .. p only: W keys, itself included, as transformers'
// sliding-window mask (kv > q - W). Scores are (q . k) * scale. The tokens of a prefill chunk
// share one cache (positions p, p + 1, ...); a batched decode step has one
// token per sequence, each with its own cache, so position and cache are per
// token.
//
// Work items. A "row" is one (token, query head) pair. An item takes up to
// kMaxRows rows of one cache: the H / KV heads of a group times several
// tokens when the call's tokens share one cache (a prefill chunk), or the
// groups of several consecutive kv heads for one token (a decode step), and a
// range of at most AttentionSplitKeys(max_keys) keys. It walks its keys in
// blocks: the block's K and V rows come from memory once and serve every row
// of the item from L1, so a kv head's cache is read once per item rather
// than once per query head and token (SmolLM2's 3 query heads per kv head
// would read it 3 times per decode step), and a decode item reads whole
// cache rows of its kv heads, contiguous memory, rather than one head's
// slice of each row (the profile shares are in the README).
// Splitting the keys gives threads work when a token's heads fill few items
// (one on SmolLM2 and Qwen2.5-1.5B, whose 9 and 12 heads fit kMaxRows). The splits
// cover only the keys some token of the call reads, and an item only the
// keys its own rows read, so a sliding layer's work is O(W) per token
// whatever the position.
//
// Per row the item keeps the running maximum m, the sum l of e^(s - m) and
// acc = sum e^(s - m) v; a block with a larger maximum m' rescales l and acc
// by e^(m - m') (<= 1, so nothing overflows). Items write (m, l, acc) to the
// scratch, and a combine pass gives out = sum_i e^(m_i - M) acc_i /
// sum_i e^(m_i - M) l_i over the splits i that read a key, M = max m_i. Scores are taken in
// f32 with the maximum subtracted before exp, so exp never overflows. The
// items and their key ranges depend on the call alone, never on the thread
// count, so any pool gives bit-identical outputs.
//
// The cache element type CacheT is float (the exact f32 mode) or uint16_t,
// IEEE binary16 (the int8-decode mode, as llama.cpp's default cache): decode
// at context p streams 2 * p * KV * hd elements per layer, on SmolLM2 at
// p = 512 26 MB per token in f32 against ~88 MB of weights, so f16 saves 11%
// of the bytes there. Values are converted exactly (F16ToF32) and all
// arithmetic stays f32; only the cache write rounds (StoreKv).
#pragma once

#include <cstddef>
#include <cstdint>

#include "cpu_features.h"
#include "half.h"
#include "ops/rope.h"
#include "thread_pool.h"

namespace awqcore {

struct AttentionShape {
  int num_heads = 0;     // H
  int num_kv_heads = 0;  // KV, divides H
  int head_dim = 0;      // hd
  float scale = 0.0f;    // scores = (q . k) * scale; 0: 1/sqrt(hd)
  int window = 0;        // 0: keys 0 .. p; W > 0: keys max(0, p - W + 1) .. p

  float ScoreScale() const;
  // The first key a query at `position` reads.
  int FirstKey(int position) const { return window > 0 && position >= window ? position - window + 1 : 0; }
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
// The f16 StoreKv with F16C (attention_avx2.cpp; call only when the CPU has
// AVX2 + F16C), 8 values per vcvtps2ph: the same bits, since vcvtps2ph rounds
// to nearest even and quiets a NaN keeping its payload's top 10 bits, as
// F32ToF16 does. F32ToF16 branches per value (~3 ns): a batch of 8 decode
// tokens on SmolLM2 writes 8 * 2 * 192 values per layer, 0.3 ms per step.
void StoreKvF16Avx2(const float* src, int n, uint16_t* dst);
// StoreKv by the best kernel at or below `isa`.
inline void StoreKv(const float* src, int n, float* dst, Isa) { StoreKv(src, n, dst); }
inline void StoreKv(const float* src, int n, uint16_t* dst, Isa isa) {
  if (isa >= Isa::kAvx2) {
    StoreKvF16Avx2(src, n, dst);
  } else {
    StoreKv(src, n, dst);
  }
}

// Rotary and the cache write in one pass over the new rows, token by token
// while its rows are in L1: q [n, H * hd] and k [n, KV * hd] are rotated in
// place, then k and v [n, KV * hd] go to row positions[t] of k_caches[t] and
// v_caches[t] (rounded by StoreKv, the kernel of `isa`).
template <typename CacheT>
void RopeAndStoreKv(const AttentionShape& shape, const RopeTable& rope, const int* positions,
                    int num_tokens, float* q, float* k, const float* v, CacheT* const* k_caches,
                    CacheT* const* v_caches, Isa isa = DetectedIsa());

// Requests the cache lines RopeAndStoreKv will touch for these tokens: with
// write intent, the k and v rows at positions[t] of k_caches[t] / v_caches[t],
// and the rope table's rows for positions[t]. A batched decode step writes one
// row in each of its sequences' caches, lines the weights streamed since the
// sequence's last step have evicted; requested before the q/k/v projection,
// they arrive while it computes. Only hints: no values change.
template <typename CacheT>
void PrefetchRopeAndStoreKv(const AttentionShape& shape, const RopeTable& rope, const int* positions,
                            int num_tokens, CacheT* const* k_caches, CacheT* const* v_caches);

// Tiling constants (see the top comment). kBlockKeys = 32: a block's K and V
// rows are 2 * 32 * hd elements, 16 KiB in f32 at hd = 64, half of L1.
// A split covers at least kMinSplitKeys keys: each split pays its own
// prefetch ramp and (m, l, acc) traffic, and in the decode microbenchmark
// (SmolLM2 shape, 2 threads, min of 6 runs) 256 beat 128 and 512 at both
// 512 and 2048 keys (us per layer: 48.1 / 229.9 against 52.1 / 238.6 and
// 49.2 / 253.9). At most kMaxSplits splits bounds the scratch.
constexpr int kMaxRows = 16;
constexpr int kBlockKeys = 32;
constexpr int kMinSplitKeys = 256;
constexpr int kMaxSplits = 16;
// Rows of keys (K and V) of a batched decode step's next work item requested
// before the current item runs; its kernel requests the rest as it goes.
constexpr int kPrefetchItemRows = 32;

// Keys per split for a call whose tokens read keys from a span of max_keys
// positions: a multiple of kBlockKeys, >= kMinSplitKeys, and enough for
// kMaxSplits splits.
int AttentionSplitKeys(int max_keys);

// Floats of scratch AttentionForward needs for num_tokens tokens reading
// keys from a span of at most max_keys positions: (m, l, acc) of every row
// and split, num_tokens * H * splits * (hd + 2), splits bounded for any call
// whose span is up to max_keys keys.
size_t AttentionScratchFloats(const AttentionShape& shape, int num_tokens, int max_keys);

// q, out: [num_tokens, H * hd] (q already rotated); k_caches, v_caches,
// positions: [num_tokens], cache t: [> positions[t], KV * hd]. scratch:
// AttentionScratchFloats(shape, num_tokens, max_t positions[t] + 1) floats.
// shape.window selects the keys (top comment).
// Instantiated for CacheT = float and uint16_t (f16).
template <typename CacheT>
void AttentionForward(const AttentionShape& shape, const float* q, const CacheT* const* k_caches,
                      const CacheT* const* v_caches, const int* positions, int num_tokens,
                      float* scratch, float* out, ThreadPool& pool, Isa isa = DetectedIsa());

// One work item: `count` rows reading one cache, whose positions are rows
// kv_stride elements apart from k / v; row r reads the kv head kv_offset[r]
// elements into a position's row, and the item's rows together read the
// kv_span elements from k / v on (the span the kernels prefetch). Rows
// reading one kv head are consecutive. Row r reads keys
// [max(key_begin, first_key[r]), min(key_end, num_keys[r])), its scores
// multiplied by `scale`, and updates its state state[r]: [m, l, acc[hd]]
// (acc unnormalised), which the caller sets to (-inf, 0, 0) first; l stays
// 0 when the row reads no key.
struct AttentionRows {
  int count = 0;
  float scale = 0.0f;            // AttentionShape::ScoreScale()
  int kv_span = 0;               // elements of a position the rows read, from k / v
  const float* query[kMaxRows];  // [hd] each
  int kv_offset[kMaxRows];       // the row's kv head: elements from k / v
  int first_key[kMaxRows];       // window start: AttentionShape::FirstKey(positions[t])
  int num_keys[kMaxRows];        // causal limit: positions[t] + 1
  float* state[kMaxRows];        // [2 + hd] each
};

// The item kernels: the portable loop (attention.cpp) and AVX2 + FMA + F16C
// (attention_avx2.cpp, used when isa is kAvx2 or above and hd % 8 == 0).
// An AVX-512 body (keys converted once per GQA group into an f32 block,
// 16-key transpose reductions, 64-key softmax blocks) ran 8-10% slower than
// the AVX2 one on Zen 4 (tools/attention_bench, SmolLM2's shape, 1 thread,
// CPU time, interleaved: 1.46 / 1.53 ms against 1.34 / 1.42 per step at 512
// keys): there a zmm FMA is two 256-bit halves, so it does no more
// arithmetic per cycle, and the decode step waits on memory, not on
// instructions.
template <typename CacheT>
void AttendRowsScalar(const AttentionRows& rows, const CacheT* k, const CacheT* v, int kv_stride,
                      int hd, int key_begin, int key_end);
template <typename CacheT>
void AttendRowsAvx2(const AttentionRows& rows, const CacheT* k, const CacheT* v, int kv_stride,
                    int hd, int key_begin, int key_end);

// The naive computation in double (full softmax per query over the keys its
// window admits, no scratch reuse), for the tokens of one sequence at
// positions p .. p + num_tokens - 1 (p = start_position) of one cache
// [>= p + num_tokens, KV * hd]. The per-token form of AttentionForward is
// checked against one call per token.
template <typename CacheT>
void AttentionReference(const AttentionShape& shape, const float* q, const CacheT* k_cache,
                        const CacheT* v_cache, int start_position, int num_tokens, float* out);

}  // namespace awqcore
