#include "ops/attention.h"

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <vector>

#include "ops/vec.h"

namespace awqcore {
namespace {

float DotKv(const float* q, const float* k, int n) { return DotF32(q, k, n); }
float DotKv(const float* q, const uint16_t* k, int n) {
  float sum = 0.f;
  for (int i = 0; i < n; ++i) sum += q[i] * F16ToF32(k[i]);
  return sum;
}
void AxpyKv(float a, const float* v, float* y, int n) { AxpyF32(a, v, y, n); }
void AxpyKv(float a, const uint16_t* v, float* y, int n) {
  for (int i = 0; i < n; ++i) y[i] += a * F16ToF32(v[i]);
}

// a >= 0, b > 0; without forming a + b - 1, which overflows for a near INT_MAX
// (max_seq_len = INT_MAX in the Session memory check: UBSan found it).
int CeilDiv(int a, int b) { return a / b + (a % b != 0 ? 1 : 0); }

// Below this many state floats to combine, the caller combines alone.
constexpr int64_t kInlineCombineFloats = 16384;

int Splits(int max_keys) { return CeilDiv(max_keys, AttentionSplitKeys(max_keys)); }

// How AttentionForward cuts a call into work items (attention.h). An item
// takes tokens_per_tile tokens of one cache times the heads of kv_per_item
// consecutive kv heads (or part of one kv head's group when the group has
// more than kMaxRows heads), up to kMaxRows rows: several tokens of a
// prefill chunk share each K/V row from L1, and a decode token's item reads
// whole cache rows of all its kv heads (contiguous memory the hardware
// prefetcher streams) rather than one head's slice of each row. Items are
// numbered kv tile, then token tile, then head part, then split, so that the
// items a thread claims together read the same kv heads' rows (L2 reuse
// across the tiles of a prefill chunk).
struct ItemGrid {
  ItemGrid(const AttentionShape& shape, int num_tokens, bool shared_cache, int max_keys)
      : group(shape.num_heads / shape.num_kv_heads),
        heads_per_part(std::min(group, kMaxRows)),
        head_parts(CeilDiv(group, heads_per_part)),
        // Tokens of one cache share its K/V rows.
        tokens_per_tile(shared_cache ? std::max(1, std::min(num_tokens, kMaxRows / heads_per_part)) : 1),
        kv_per_item(head_parts > 1 ? 1
                                   : std::max(1, std::min(shape.num_kv_heads,
                                                          kMaxRows / (group * tokens_per_tile)))),
        kv_tiles(CeilDiv(shape.num_kv_heads, kv_per_item)),
        tiles(CeilDiv(num_tokens, tokens_per_tile)),
        split_keys(AttentionSplitKeys(max_keys)),
        splits(Splits(max_keys)),
        items(static_cast<int64_t>(kv_tiles) * tiles * head_parts * splits) {}
  int group, heads_per_part, head_parts, tokens_per_tile, kv_per_item, kv_tiles, tiles, split_keys,
      splits;
  int64_t items;
};

}  // namespace

float AttentionShape::ScoreScale() const {
  return scale > 0.0f ? scale : 1.0f / std::sqrt(static_cast<float>(head_dim));
}

int AttentionSplitKeys(int max_keys) {
  const int per_split = CeilDiv(std::max(max_keys, 1), kMaxSplits);
  return std::max(kMinSplitKeys, CeilDiv(per_split, kBlockKeys) * kBlockKeys);
}

size_t AttentionScratchFloats(const AttentionShape& shape, int num_tokens, int max_keys) {
  // A bound on Splits(k) for every k <= max_keys, which Splits itself is not
  // (k = 2048: 16 splits of 128 keys; k = 2100: 14 of 160). Splits(k) <=
  // ceil(k / kMinSplitKeys) because a split has >= kMinSplitKeys keys.
  const int splits = std::min(kMaxSplits, CeilDiv(std::max(max_keys, 1), kMinSplitKeys));
  return static_cast<size_t>(num_tokens) * shape.num_heads * splits * (shape.head_dim + 2);
}

template <typename CacheT>
void RopeAndStoreKv(const AttentionShape& shape, const RopeTable& rope, const int* positions,
                    int num_tokens, float* q, float* k, const float* v, CacheT* const* k_caches,
                    CacheT* const* v_caches, Isa isa) {
  const size_t kv_width = static_cast<size_t>(shape.num_kv_heads) * shape.head_dim;
  for (int t = 0; t < num_tokens; ++t) {
    rope.Apply(q, 1, shape.num_heads, positions + t);
    rope.Apply(k, 1, shape.num_kv_heads, positions + t);
    StoreKv(k, static_cast<int>(kv_width), k_caches[t] + positions[t] * kv_width, isa);
    StoreKv(v, static_cast<int>(kv_width), v_caches[t] + positions[t] * kv_width, isa);
    q += static_cast<size_t>(shape.num_heads) * shape.head_dim;
    k += kv_width;
    v += kv_width;
  }
}

template <typename CacheT>
void PrefetchRopeAndStoreKv(const AttentionShape& shape, const RopeTable& rope, const int* positions,
                            int num_tokens, CacheT* const* k_caches, CacheT* const* v_caches) {
  const size_t kv_width = static_cast<size_t>(shape.num_kv_heads) * shape.head_dim;
  const size_t half = shape.head_dim / 2;
  auto request = [](const void* p, size_t bytes, bool write) {
    const char* c = static_cast<const char*>(p);
    for (size_t b = 0; b < bytes; b += 64) {
      if (write) {
        __builtin_prefetch(c + b, 1, 3);
      } else {
        __builtin_prefetch(c + b, 0, 3);
      }
    }
  };
  for (int t = 0; t < num_tokens; ++t) {
    const size_t row = static_cast<size_t>(positions[t]) * kv_width;
    request(k_caches[t] + row, kv_width * sizeof(CacheT), true);
    request(v_caches[t] + row, kv_width * sizeof(CacheT), true);
    request(rope.cos_table().data() + positions[t] * half, half * sizeof(float), false);
    request(rope.sin_table().data() + positions[t] * half, half * sizeof(float), false);
  }
}

template <typename CacheT>
void AttendRowsScalar(const AttentionRows& rows, const CacheT* k, const CacheT* v, int kv_stride,
                      int hd, int key_begin, int key_end) {
  float weights[kBlockKeys];
  for (int block = key_begin; block < key_end; block += kBlockKeys) {
    const int block_end = std::min(block + kBlockKeys, key_end);
    for (int r = 0; r < rows.count; ++r) {
      const int first = std::max(block, rows.first_key[r]);  // the row's keys in this block
      const int count = std::min(block_end, rows.num_keys[r]) - first;
      if (count <= 0) continue;
      float* state = rows.state[r];
      float block_max = -INFINITY;
      for (int j = 0; j < count; ++j) {
        weights[j] = DotKv(rows.query[r], k + static_cast<size_t>(first + j) * kv_stride + rows.kv_offset[r], hd) *
                     rows.scale;
        block_max = std::max(block_max, weights[j]);
      }
      const float new_max = std::max(state[0], block_max);
      const float rescale = std::exp(state[0] - new_max);  // 0 for the first block
      float sum = 0.f;
      for (int j = 0; j < count; ++j) sum += (weights[j] = std::exp(weights[j] - new_max));
      state[0] = new_max;
      state[1] = state[1] * rescale + sum;
      float* acc = state + 2;
      for (int i = 0; i < hd; ++i) acc[i] *= rescale;
      for (int j = 0; j < count; ++j) {
        AxpyKv(weights[j], v + static_cast<size_t>(first + j) * kv_stride + rows.kv_offset[r], acc, hd);
      }
    }
  }
}

template <typename CacheT>
void AttentionForward(const AttentionShape& shape, const float* q, const CacheT* const* k_caches,
                      const CacheT* const* v_caches, const int* positions, int num_tokens,
                      float* scratch, float* out, ThreadPool& pool, Isa isa) {
  const int hd = shape.head_dim;
  const int H = shape.num_heads;
  const size_t q_stride = static_cast<size_t>(H) * hd;  // floats per token in q and out
  const int kv_stride = shape.num_kv_heads * hd;         // elements per position in a cache
  // The span of keys any token reads, [call_first, call_end): splits cut it.
  const int call_end = *std::max_element(positions, positions + num_tokens) + 1;
  int call_first = call_end;
  for (int t = 0; t < num_tokens; ++t) call_first = std::min(call_first, shape.FirstKey(positions[t]));
  bool shared_cache = true;
  for (int t = 1; t < num_tokens; ++t) shared_cache &= k_caches[t] == k_caches[0];
  const ItemGrid grid(shape, num_tokens, shared_cache, call_end - call_first);
  const size_t state_floats = hd + 2;
  auto state_of = [&](int t, int h, int split) {  // [2 + hd] in scratch
    return scratch + ((static_cast<size_t>(t) * H + h) * grid.splits + split) * state_floats;
  };
  const bool use_avx2 = isa >= Isa::kAvx2 && hd % 8 == 0;
  const float score_scale = shape.ScoreScale();  // once, not per work item
  // Where an item sits in the grid and the keys its tile's rows read.
  struct ItemPlace {
    int split, part, t_begin, t_end, kv_begin, kv_end, key_begin, key_end;
  };
  auto place_of = [&](int64_t item) {
    ItemPlace p;
    p.split = static_cast<int>(item % grid.splits);
    int64_t rest = item / grid.splits;
    p.part = static_cast<int>(rest % grid.head_parts);
    rest /= grid.head_parts;
    const int tile = static_cast<int>(rest % grid.tiles);
    const int kv_tile = static_cast<int>(rest / grid.tiles);
    p.t_begin = tile * grid.tokens_per_tile;
    p.t_end = std::min(num_tokens, p.t_begin + grid.tokens_per_tile);
    p.kv_begin = kv_tile * grid.kv_per_item;
    p.kv_end = std::min(shape.num_kv_heads, p.kv_begin + grid.kv_per_item);
    int tile_first = call_end, tile_end = 0;  // the keys the tile's rows read
    for (int t = p.t_begin; t < p.t_end; ++t) {
      tile_first = std::min(tile_first, shape.FirstKey(positions[t]));
      tile_end = std::max(tile_end, positions[t] + 1);
    }
    const int split_begin = call_first + p.split * grid.split_keys;
    p.key_begin = std::max(tile_first, split_begin);
    p.key_end = std::min(tile_end, split_begin + grid.split_keys);
    return p;
  };
  pool.ParallelFor(grid.items, [&](int64_t item_begin, int64_t item_end) {
    for (int64_t item = item_begin; item < item_end; ++item) {
      const ItemPlace p = place_of(item);
      if (!shared_cache && item + 1 < grid.items) {
        // A batched decode step's next item reads another sequence's cache,
        // which the weights streamed since its last step have evicted: its
        // first rows are requested now, to arrive while this item computes
        // (whichever thread runs it, they are then in this core's L2 or the
        // shared L3 rather than in DRAM).
        const ItemPlace next = place_of(item + 1);
        const int rows = std::min(kPrefetchItemRows, next.key_end - next.key_begin);
        const size_t span_bytes = static_cast<size_t>(next.kv_end - next.kv_begin) * hd * sizeof(CacheT);
        for (const CacheT* cache : {k_caches[next.t_begin], v_caches[next.t_begin]}) {
          const char* first = reinterpret_cast<const char*>(
              cache + static_cast<size_t>(next.key_begin) * kv_stride + next.kv_begin * hd);
          for (int r = 0; r < rows; ++r) {
            const char* row = first + static_cast<size_t>(r) * kv_stride * sizeof(CacheT);
            for (size_t b = 0; b < span_bytes; b += 64) __builtin_prefetch(row + b, 0, 2);
          }
        }
      }
      AttentionRows rows;
      rows.scale = score_scale;
      rows.kv_span = (p.kv_end - p.kv_begin) * hd;
      for (int kv_head = p.kv_begin; kv_head < p.kv_end; ++kv_head) {
        const int h_begin = kv_head * grid.group + p.part * grid.heads_per_part;
        const int h_end = std::min((kv_head + 1) * grid.group, h_begin + grid.heads_per_part);
        for (int t = p.t_begin; t < p.t_end; ++t) {
          for (int h = h_begin; h < h_end; ++h) {
            rows.query[rows.count] = q + t * q_stride + static_cast<size_t>(h) * hd;
            rows.kv_offset[rows.count] = (kv_head - p.kv_begin) * hd;
            rows.first_key[rows.count] = shape.FirstKey(positions[t]);
            rows.num_keys[rows.count] = positions[t] + 1;
            float* state = state_of(t, h, p.split);
            state[0] = -INFINITY;  // (m, l, acc) before any key
            std::fill_n(state + 1, hd + 1, 0.f);
            rows.state[rows.count++] = state;
          }
        }
      }
      const CacheT* k = k_caches[p.t_begin] + p.kv_begin * hd;
      const CacheT* v = v_caches[p.t_begin] + p.kv_begin * hd;
      if (use_avx2) {
        AttendRowsAvx2(rows, k, v, kv_stride, hd, p.key_begin, p.key_end);
        continue;
      }
      AttendRowsScalar(rows, k, v, kv_stride, hd, p.key_begin, p.key_end);
    }
  });
  // Combine the splits of each row; the split holding the row's own key read
  // it, so some l > 0.
  auto combine = [&](int64_t row_begin, int64_t row_end) {
    for (int64_t row = row_begin; row < row_end; ++row) {
      const int t = static_cast<int>(row / H), h = static_cast<int>(row % H);
      float max_m = -INFINITY;
      for (int s = 0; s < grid.splits; ++s) {
        const float* state = state_of(t, h, s);
        if (state[1] > 0.f) max_m = std::max(max_m, state[0]);
      }
      float* head_out = out + t * q_stride + static_cast<size_t>(h) * hd;
      std::fill_n(head_out, hd, 0.f);
      float denominator = 0.f;
      for (int s = 0; s < grid.splits; ++s) {
        const float* state = state_of(t, h, s);
        if (!(state[1] > 0.f)) continue;  // read no key
        const float weight = std::exp(state[0] - max_m);
        denominator += weight * state[1];
        AxpyF32(weight, state + 2, head_out, hd);
      }
      const float inv = 1.0f / denominator;
      for (int i = 0; i < hd; ++i) head_out[i] *= inv;
    }
  };
  // A decode step's combine is H * splits * hd FMAs (SmolLM2 at 512 keys:
  // 9 * 2 * 64 = 1,152), less than waking the pool costs; a prefill chunk's
  // is 64x that.
  const int64_t rows_total = static_cast<int64_t>(num_tokens) * H;
  if (rows_total * grid.splits * hd < kInlineCombineFloats) {
    combine(0, rows_total);
  } else {
    pool.ParallelFor(rows_total, combine);
  }
}

template <typename CacheT>
void AttentionReference(const AttentionShape& shape, const float* q, const CacheT* k_cache,
                        const CacheT* v_cache, int start_position, int num_tokens, float* out) {
  const int hd = shape.head_dim;
  const int kv_stride = shape.num_kv_heads * hd;
  const double scale = shape.scale > 0.0f ? shape.scale : 1.0 / std::sqrt(static_cast<double>(hd));
  for (int t = 0; t < num_tokens; ++t) {
    const int position = start_position + t;
    // Keys position - W + 1 .. position with a window W (transformers' mask
    // kv > q - W), written out here rather than through FirstKey.
    const int first_key = shape.window > 0 ? std::max(0, position - shape.window + 1) : 0;
    const int num_keys = position + 1 - first_key;
    for (int h = 0; h < shape.num_heads; ++h) {
      const int kv_head = h / (shape.num_heads / shape.num_kv_heads);
      const float* query = q + (static_cast<size_t>(t) * shape.num_heads + h) * hd;
      std::vector<double> weights(num_keys);  // softmax over keys
      double max_score = -INFINITY;
      for (int j = 0; j < num_keys; ++j) {
        double dot = 0.0;
        for (int i = 0; i < hd; ++i) {
          dot += static_cast<double>(query[i]) *
                 KvToF32(k_cache[static_cast<size_t>(first_key + j) * kv_stride + kv_head * hd + i]);
        }
        weights[j] = dot * scale;
        max_score = std::max(max_score, weights[j]);
      }
      double sum = 0.0;
      for (double& w : weights) sum += (w = std::exp(w - max_score));
      for (int i = 0; i < hd; ++i) {
        double value = 0.0;
        for (int j = 0; j < num_keys; ++j) {
          value += weights[j] *
                   KvToF32(v_cache[static_cast<size_t>(first_key + j) * kv_stride + kv_head * hd + i]);
        }
        out[(static_cast<size_t>(t) * shape.num_heads + h) * hd + i] = static_cast<float>(value / sum);
      }
    }
  }
}

#define AWQCORE_INSTANTIATE_ATTENTION(CacheT)                                                      \
  template void RopeAndStoreKv<CacheT>(const AttentionShape&, const RopeTable&, const int*, int,  \
                                       float*, float*, const float*, CacheT* const*,             \
                                       CacheT* const*, Isa);                                     \
  template void PrefetchRopeAndStoreKv<CacheT>(const AttentionShape&, const RopeTable&, const int*, \
                                              int, CacheT* const*, CacheT* const*);               \
  template void AttendRowsScalar<CacheT>(const AttentionRows&, const CacheT*, const CacheT*, int, \
                                         int, int, int);                                         \
  template void AttentionForward<CacheT>(const AttentionShape&, const float*,                   \
                                         const CacheT* const*, const CacheT* const*, const int*, \
                                         int, float*, float*, ThreadPool&, Isa);                 \
  template void AttentionReference<CacheT>(const AttentionShape&, const float*, const CacheT*,   \
                                           const CacheT*, int, int, float*);
AWQCORE_INSTANTIATE_ATTENTION(float)
AWQCORE_INSTANTIATE_ATTENTION(uint16_t)
#undef AWQCORE_INSTANTIATE_ATTENTION

}  // namespace awqcore
