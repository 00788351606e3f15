#include "ops/moe_experts.h"

#include <algorithm>
#include <cstddef>
#include <cstring>

#include "ops/activation.h"
#include "ops/int4_linear.h"
#include "ops/linear_kernels.h"
#include "ops/vec.h"

namespace awqcore {
namespace {

size_t Floats(int a, int b) { return static_cast<size_t>(a) * static_cast<size_t>(b); }

int NumBlocks(int rows) { return (rows + kRowBlock - 1) / kRowBlock; }

// Calls fn(e, row0, rows) for the rows of blocks [begin, end) of the row
// blocks of `linears` of the active experts, numbered expert after expert; a
// range may span several experts.
template <class Fn>
void ForActiveRows(const std::vector<Int4Linear>& linears, const int* active, int num_active,
                   int64_t begin, int64_t end, const Fn& fn) {
  int64_t first_block = 0;  // of active[i]
  for (int i = 0; i < num_active && begin < end; ++i) {
    const Int4Linear& layer = linears[active[i]];
    const int blocks = NumBlocks(layer.out);
    const int64_t lo = std::max<int64_t>(begin, first_block);
    const int64_t hi = std::min<int64_t>(end, first_block + blocks);
    if (lo < hi) {
      const int row0 = static_cast<int>(lo - first_block) * kRowBlock;
      const int row1 = std::min(layer.out, static_cast<int>(hi - first_block) * kRowBlock);
      fn(active[i], row0, row1 - row0);
    }
    first_block += blocks;
  }
}

}  // namespace

MoeScratch::MoeScratch(int max_tokens, int k, int num_experts, int d, int f)
    : group_begin_(num_experts + 1),
      token_slot_(Floats(max_tokens, k)),
      active_(num_experts),
      x_(Floats(max_tokens * k, d)),
      act_(Floats(max_tokens * k, f)),
      out_(Floats(max_tokens * k, d)) {}

uint64_t MoeScratch::Bytes(int max_tokens, int k, int num_experts, int d, int f) {
  const uint64_t slots = static_cast<uint64_t>(max_tokens) * k;
  const uint64_t ints = 2 * static_cast<uint64_t>(num_experts) + 1 + slots;
  const uint64_t floats = slots * (2 * static_cast<uint64_t>(d) + f);
  // The int8 roundings (x_q8_, act_q8_) hold at most kQ8MaxTokens * k slots
  // of ~1.2 bytes per column: small next to the f32 buffers.
  const uint64_t q8 = static_cast<uint64_t>(kQ8MaxTokens) * k * (d + f) * 2;
  return 4 * (ints + floats) + q8;
}

void MoeExpertsForward(const MoeWeights& moe, Activation activation, const float* x,
                       int num_tokens, const int* experts, const float* weights, int k, float* y,
                       MoeScratch& s, ThreadPool& pool, Isa isa, bool int8_decode) {
  const int num_experts = static_cast<int>(moe.gate.size());
  const int d = moe.down[0].out, f = moe.gate[0].out, group_size = moe.gate[0].group_size;
  const int slots = num_tokens * k;

  // Counting sort of the (token, rank) pairs by expert, tokens ascending
  // within a group: slot order is deterministic.
  std::fill(s.group_begin_.begin(), s.group_begin_.end(), 0);
  for (int i = 0; i < slots; ++i) ++s.group_begin_[experts[i] + 1];
  int num_active = 0;
  for (int e = 0; e < num_experts; ++e) {
    if (s.group_begin_[e + 1] > 0) s.active_[num_active++] = e;
    s.group_begin_[e + 1] += s.group_begin_[e];
  }
  // group_begin_[e] is e's next free slot while filling, e + 1's first after.
  for (int i = 0; i < slots; ++i) {
    const int slot = s.group_begin_[experts[i]]++;
    s.token_slot_[i] = slot;
    std::memcpy(s.x_.data() + Floats(slot, d), x + Floats(i / k, d), sizeof(float) * d);
  }
  for (int e = num_experts; e > 0; --e) s.group_begin_[e] = s.group_begin_[e - 1];
  s.group_begin_[0] = 0;

  const bool q8 = int8_decode && num_tokens <= kQ8MaxTokens && UsesQ8Activations(d) &&
                  UsesQ8Activations(f);
  if (q8) {
    // Every slot's row is rounded on its own, so a group's rows are a call
    // of that group alone: the per-expert results are those of
    // Int4GatedMlpForward / Int4LinearForward on the group.
    const Q8Activations& xq = s.x_q8_.Quantize(s.x_.data(), d, slots, d, group_size);
    pool.ParallelFor(static_cast<int64_t>(num_active) * NumBlocks(f), [&](int64_t begin, int64_t end) {
      ForActiveRows(moe.gate, s.active_.data(), num_active, begin, end, [&](int e, int row0, int rows) {
        const int first = s.group_begin_[e], count = s.group_begin_[e + 1] - first;
        const Q8Activations group = xq.Tokens(first, count);
        // Up rows go to a stack buffer in slices of 32 rows (count <= 8
        // tokens x 32 = 1 KiB), gate rows straight to act_.
        constexpr int kSliceRows = 32;
        float up_rows[kQ8MaxTokens * kSliceRows];  // [count, kSliceRows]
        for (int r = row0; r < row0 + rows; r += kSliceRows) {
          const int n = std::min(kSliceRows, row0 + rows - r);
          float* act = s.act_.data() + Floats(first, f) + r;
          Int4RowsQ8(moe.gate[e], r, n, group, act, f, isa);
          Int4RowsQ8(moe.up[e], r, n, group, up_rows, kSliceRows, isa);
          for (int t = 0; t < count; ++t) {
            GatedActivation(activation, act + Floats(t, f), up_rows + t * kSliceRows, n,
                            act + Floats(t, f), isa);
          }
        }
      });
    });
    const Q8Activations& aq = s.act_q8_.Quantize(s.act_.data(), f, slots, f, group_size);
    pool.ParallelFor(static_cast<int64_t>(num_active) * NumBlocks(d), [&](int64_t begin, int64_t end) {
      ForActiveRows(moe.down, s.active_.data(), num_active, begin, end, [&](int e, int row0, int rows) {
        const int first = s.group_begin_[e], count = s.group_begin_[e + 1] - first;
        Int4RowsQ8(moe.down[e], row0, rows, aq.Tokens(first, count),
                   s.out_.data() + Floats(first, d) + row0, d, isa);
      });
    });
  } else {
    for (int i = 0; i < num_active; ++i) {
      const int e = s.active_[i];
      const int first = s.group_begin_[e], count = s.group_begin_[e + 1] - first;
      float* act = s.act_.data() + Floats(first, f);
      Int4GatedMlpForward(moe.gate[e], moe.up[e], activation, s.x_.data() + Floats(first, d), count,
                          act, pool, isa, int8_decode);
      Int4LinearForward(moe.down[e], act, count, s.out_.data() + Floats(first, d), pool, isa,
                        int8_decode);
    }
  }

  for (int t = 0; t < num_tokens; ++t) {
    float* out = y + Floats(t, d);
    std::fill(out, out + d, 0.0f);
    for (int r = 0; r < k; ++r) {
      AxpyF32(weights[t * k + r], s.out_.data() + Floats(s.token_slot_[t * k + r], d), out, d);
    }
  }
}

}  // namespace awqcore
