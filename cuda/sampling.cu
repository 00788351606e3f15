// Token picks on the device, so a decode step sends 4 bytes per sequence to
// the host instead of the vocab * 4 bytes of logits (Qwen2.5: 608 KB, ~25 us
// over PCIe 4 at ~25 GB/s, against a 1.5B model's ~0.3 ms step on an H100).
// The repetition penalty stays on the host (sampler.h).
//
// Argmax: the largest non-NaN logit, lowest id on ties; all NaN gives the
// last id. That is a total order on (value, id) pairs (numbers above NaN;
// numbers by value, then lower id; NaNs by higher id), so any reduction tree
// gives the scalar loop's answer.
//
// PickTokens: Sampler::Pick (sampler.h) for the host's uniform draw, one block
// of 1024 threads per row, shared memory only (no scratch in global memory,
// so it can sit in a captured CUDA graph):
//   (a) top-k: the k-th largest logit by a radix select over order-preserving
//       uint32 keys, 8-bit digits, 4 passes of a 256-bin shared histogram;
//       ties at that key are kept lowest ids first, as the host's (logit desc,
//       id asc) order does (one more pass, only when they straddle the cut);
//   (b) weights p = SamplingWeight(logit, max, T): the host's f32 code, with
//       CUDA's expf (within 2 ulp, glibc's within 1);
//   (c) top-p: the same radix select over the bits of p (as uint32 they sort
//       like the floats, p >= 0), the histogram also summing weights, walked
//       from the top digit until the mass reaches top_p of the total; ties at
//       the final p admit the lowest ids until it does;
//   (d) the first kept token, ascending id, whose cumulative weight exceeds
//       uniform * total.
// Weights are summed as integers in units of 2^-F (F = min(52, 63 -
// ceil(log2 vocab)); 45 for 152k): exact, so the sums do not depend on the
// order the threads add them in, a histogram pass refines the previous one
// exactly, and the answer is deterministic. Rounding each p up to a unit
// moves any cumulative sum by <= vocab 2^-F (4e-9 at 152k) of a total >= 1
// (the maximum weighs 1), 50x below the host/device difference of the p
// themselves (2 ulp = 2.4e-7); the host sums in double. So host and device
// pick the same token unless uniform * total lies within ~5e-7 of the total
// of a CDF step, or top_p * total of a nucleus cut
// (cpp/tests/sampling_reference.h derives the bound).
//
// Cost: every pass reads the row (152k logits: 608 KB, from L2 right after
// the LM head wrote it; ~149 logits per thread). top_k and top_p each cost 4
// passes (+1 for ties across the cut), the maximum 1 when top_k does not find
// it, the final walk 1 pass plus ~5k ids: 2 passes for plain temperature
// sampling, 9-11 with both cuts.
#include "common.cuh"
#include "sampler.h"

namespace awqcore {
namespace cu {
namespace {

constexpr int kThreads = 1024;  // one block per row
constexpr int kWarps = kThreads / 32;
constexpr unsigned kFullMask = 0xffffffffu;
constexpr int kBins = 256;  // 8-bit radix digits
constexpr uint32_t kNoBin = 0xffffffffu;

// ---- Argmax ----

struct Candidate {
  float value;
  int id;
};

__device__ __forceinline__ bool Beats(Candidate a, Candidate b) {
  const bool a_nan = isnan(a.value), b_nan = isnan(b.value);
  if (a_nan != b_nan) return b_nan;
  if (a_nan) return a.id > b.id;
  return a.value > b.value || (a.value == b.value && a.id < b.id);
}

__device__ __forceinline__ Candidate Better(Candidate a, Candidate b) { return Beats(a, b) ? a : b; }

// The best candidate of the warp, in every lane.
__device__ __forceinline__ Candidate WarpBest(Candidate best) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) {
    const Candidate other{__shfl_xor_sync(kFullMask, best.value, offset),
                          __shfl_xor_sync(kFullMask, best.id, offset)};
    best = Better(best, other);
  }
  return best;
}

// Argmax of row [n] (n >= 1), valid in thread 0. warp_best: [kWarps], shared.
__device__ int BlockArgmax(const float* __restrict__ row, int n, Candidate* warp_best) {
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  Candidate best{row[min(tid, n - 1)], min(tid, n - 1)};
  for (int i = tid + kThreads; i < n; i += kThreads) best = Better(best, {row[i], i});
  best = WarpBest(best);
  if (lane == 0) warp_best[warp] = best;
  __syncthreads();
  if (warp == 0) best = WarpBest(warp_best[lane]);  // kWarps == 32: one per lane
  return best.id;
}

// ---- PickTokens ----

// Shared memory of one row (3.6 KB).
struct RowScratch {
  uint32_t count[kBins];            // histogram: tokens per digit
  unsigned long long mass[kBins];   // histogram: their fixed-point weight
  unsigned long long warp_sum[kWarps];
  Candidate warp_best[kWarps];
  // SelectDigit's answer (written by one lane of warp 0).
  uint32_t digit;
  unsigned long long above, in_digit, want;
  int id;  // FirstPastTarget's answer
};

// Logits as uint32 keys that sort like the floats, with NaN as -inf and -0 as
// +0 (the host's ranking: NaN counts as -inf, -0 == +0 ties by id). Sign set:
// flip all bits (more negative -> smaller); else set the sign bit (above
// every negative). LogitKey(-inf) = 0x007fffff > 0.
__device__ __forceinline__ uint32_t LogitKey(float logit) {
  if (isnan(logit)) logit = -INFINITY;
  const uint32_t bits = __float_as_uint(logit == 0.0f ? 0.0f : logit);
  return (bits & 0x80000000u) ? ~bits : bits | 0x80000000u;
}
__device__ __forceinline__ float KeyLogit(uint32_t key) {
  return __uint_as_float((key & 0x80000000u) ? key & 0x7fffffffu : ~key);
}

// F of the fixed-point weights: vocab weights of at most 2^F sum below 2^63,
// and one weight (<= 2^52) splits into the two 26-bit halves Histogram's
// 32-lane reductions take without overflowing 32 bits.
__device__ __forceinline__ int FixedPointBits(int vocab) {
  const int ceil_log2 = vocab > 1 ? 32 - __clz(vocab - 1) : 0;
  return min(52, 63 - ceil_log2);
}
// p * 2^F (exact: scale is a power of two) rounded up, so that a token the
// host can draw (p > 0) keeps a positive weight.
__device__ __forceinline__ unsigned long long ToFixed(float p, float scale) {
  return __float2ull_ru(p * scale);
}

__device__ __forceinline__ unsigned long long WarpInclusiveSum(unsigned long long v) {
  const int lane = threadIdx.x & 31;
#pragma unroll
  for (int offset = 1; offset < 32; offset <<= 1) {
    const unsigned long long up = __shfl_up_sync(kFullMask, v, offset);
    if (lane >= offset) v += up;
  }
  return v;
}

// The block's maximum of v, in every thread.
__device__ uint32_t BlockMax(uint32_t v, RowScratch& s) {
  v = __reduce_max_sync(kFullMask, v);
  if ((threadIdx.x & 31) == 0) s.warp_sum[threadIdx.x >> 5] = v;
  __syncthreads();
  v = 0;
  for (int w = 0; w < kWarps; ++w) v = max(v, static_cast<uint32_t>(s.warp_sum[w]));
  __syncthreads();  // s.warp_sum is rewritten by the next user
  return v;
}

// One radix pass: s.count[d] = the tokens i with bin_of(i, mass) == d, and
// (kMass) s.mass[d] = the sum of their `mass`; kNoBin leaves a token out.
// A warp's tokens that share a digit are summed in registers first
// (match_any, then reduce_add over the matching lanes), so each digit costs
// one shared atomic per warp: early passes put most tokens into a few
// digits, where per-token atomics would serialize.
template <bool kMass, typename BinOf>
__device__ void Histogram(int vocab, RowScratch& s, BinOf bin_of) {
  const int lane = threadIdx.x & 31;
  if (threadIdx.x < kBins) {
    s.count[threadIdx.x] = 0;
    s.mass[threadIdx.x] = 0;
  }
  __syncthreads();
  // Warp-uniform trip count: all 32 lanes reach every match/reduce.
  for (int base = threadIdx.x - lane; base < vocab; base += kThreads) {
    const int i = base + lane;
    unsigned long long mass = 0;
    const uint32_t bin = i < vocab ? bin_of(i, mass) : kNoBin;
    const unsigned peers = __match_any_sync(kFullMask, bin);
    const bool leader = bin != kNoBin && lane == __ffs(peers) - 1;
    if (leader) atomicAdd(&s.count[bin], static_cast<uint32_t>(__popc(peers)));
    if constexpr (kMass) {
      // mass <= 2^52: 32 lanes of either 26-bit half sum below 2^31.
      const unsigned low = __reduce_add_sync(peers, static_cast<unsigned>(mass & 0x3ffffffu));
      const unsigned high = __reduce_add_sync(peers, static_cast<unsigned>(mass >> 26));
      if (leader) atomicAdd(&s.mass[bin], (static_cast<unsigned long long>(high) << 26) + low);
    }
  }
  __syncthreads();
}

// Warp 0, after a Histogram of `values`: the highest digit d with
// above + sum_{j >= d} values[j] >= want, i.e. the digit holding the want-th
// unit counted from the top, where `above` counts the units above the range
// the histogram refined. Publishes d, the units above it, values[d] and want
// in s. want = want_of(total of the histogram): top-p needs the top-k set's
// mass, which the first pass is the first to sum. Exact integer sums make
// the crossing lane unique whenever above < want <= above + total, which the
// callers keep (k < vocab; 1 <= needed <= mass; each pass refines the digit
// the previous one chose).
template <typename T, typename WantOf>
__device__ void SelectDigit(const T* values, unsigned long long above, RowScratch& s, WantOf want_of) {
  const int lane = threadIdx.x & 31;
  // Lane l holds digits 255 - 8l down to 248 - 8l: lanes run from the top.
  unsigned long long v[8], lane_sum = 0;
#pragma unroll
  for (int j = 0; j < 8; ++j) lane_sum += (v[j] = values[kBins - 1 - 8 * lane - j]);
  const unsigned long long inclusive = WarpInclusiveSum(lane_sum);
  const unsigned long long want = want_of(__shfl_sync(kFullMask, inclusive, 31));
  unsigned long long below = above + inclusive - lane_sum;  // units above this lane's digits
  if (below < want && want <= above + inclusive) {
#pragma unroll
    for (int j = 0; j < 8; ++j) {
      if (below + v[j] >= want) {
        s.digit = kBins - 1 - 8 * lane - j;
        s.above = below;
        s.in_digit = v[j];
        s.want = want;
        break;
      }
      below += v[j];
    }
  }
}

// The first id i (ascending) with sum_{j <= i} weight_of(j) > target, where
// target = target_of(sum of all weights), in every thread. Narrows [lo, hi)
// to one of 32 spans per step: each warp sums its span (coalesced, one warp
// reduction), every thread picks the span from the 32 sums in shared memory.
// 152k ids: spans of 4768, 160, 32 ids, then one warp scans the last 32: a
// pass over the row plus ~5k ids. Integer sums make it exact; target <
// total (what the callers give) always finds an id; otherwise it returns the
// last id of the range.
template <typename WeightOf, typename TargetOf>
__device__ int FirstPastTarget(int vocab, RowScratch& s, WeightOf weight_of, TargetOf target_of) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  int lo = 0, hi = vocab;
  unsigned long long below_lo = 0, target = 0;  // below_lo: the weight of ids < lo
  bool have_target = false;
  while (hi - lo > 32) {
    const int span = 32 * ((hi - lo + kThreads - 1) / kThreads);  // kWarps spans cover [lo, hi)
    const int begin = min(lo + warp * span, hi), end = min(begin + span, hi);
    unsigned long long sum = 0;
    for (int i = begin + lane; i < end; i += 32) sum += weight_of(i);
    sum = WarpSum(sum);
    if (lane == 0) s.warp_sum[warp] = sum;
    __syncthreads();
    if (!have_target) {
      unsigned long long total = 0;
      for (int w = 0; w < kWarps; ++w) total += s.warp_sum[w];
      target = target_of(total);
      have_target = true;
    }
    int pick = -1;
    unsigned long long below = below_lo;
    for (int w = 0; w < kWarps; ++w) {
      if (below + s.warp_sum[w] > target) {
        pick = w;
        break;
      }
      below += s.warp_sum[w];
    }
    __syncthreads();  // s.warp_sum is rewritten by the next step
    if (pick < 0) return hi - 1;  // same in every thread
    lo = min(lo + pick * span, hi);
    hi = min(lo + span, hi);
    below_lo = below;
  }
  if (warp == 0) {
    const int i = lo + lane;
    const unsigned long long cumulative = below_lo + WarpInclusiveSum(i < hi ? weight_of(i) : 0);
    if (!have_target) target = target_of(__shfl_sync(kFullMask, cumulative, 31));  // vocab <= 32
    // The first crossing has a positive weight: a token left out (weight 0)
    // repeats the cumulative sum of the one before it.
    const unsigned hits = __ballot_sync(kFullMask, i < hi && cumulative > target);
    if (lane == 0) s.id = hits ? lo + __ffs(hits) - 1 : hi - 1;
  }
  __syncthreads();
  const int id = s.id;
  __syncthreads();  // s.id is rewritten by the next call
  return id;
}

// Fixed-point mass a nucleus must reach: ceil(top_p * total), at least 1 (one
// token). The host compares its double cumulative sums with top_p * total.
__device__ __forceinline__ unsigned long long NeededMass(float top_p, unsigned long long total) {
  const double needed = ceil(static_cast<double>(top_p) * static_cast<double>(total));
  return needed < 1.0 ? 1ull : static_cast<unsigned long long>(needed);
}

// floor(uniform * total) for uniform = draw / 2^53, exactly (128-bit product):
// the host's target uniform * total.
__device__ __forceinline__ unsigned long long ScaledTarget(double uniform, unsigned long long total) {
  // Sampler draws multiples of 2^-53 in [0, 1); clamp anything else into it.
  const unsigned long long draw = !(uniform > 0.0)  ? 0ull
                                  : uniform >= 1.0 ? (1ull << 53) - 1
                                                   : static_cast<unsigned long long>(uniform * 0x1p53);
  return (__umul64hi(draw, total) << 11) | ((draw * total) >> 53);
}

__global__ void __launch_bounds__(kThreads)
    PickKernel(const float* __restrict__ logits, int vocab, const TokenPick* __restrict__ picks, int* out) {
  __shared__ RowScratch s;
  const float* row = logits + static_cast<size_t>(blockIdx.x) * vocab;
  const TokenPick pick = picks[blockIdx.x];
  if (pick.temperature == 0.0f || pick.top_k == 1) {  // block-uniform
    const int id = BlockArgmax(row, vocab, s.warp_best);
    if (threadIdx.x == 0) out[blockIdx.x] = id;
    return;
  }
  const int warp = threadIdx.x >> 5;
  // Read only after a SelectDigit wrote them; set so that no path can read
  // uninitialized shared memory.
  if (threadIdx.x == 0) {
    s.digit = 0;
    s.above = s.in_digit = s.want = 0;
  }

  // (a) top-k keeps key > threshold, and key == threshold for ids <= last_tie.
  // Defaults keep every token (every key > 0).
  uint32_t threshold = 0, max_key = 0;
  int last_tie = vocab;
  if (pick.top_k > 0 && pick.top_k < vocab) {
    const unsigned long long k = pick.top_k;
    uint32_t prefix = 0, mask = 0;  // the digits chosen so far, and where they are
    unsigned long long above = 0, ties = 0;
    for (int shift = 24; shift >= 0; shift -= 8) {
      Histogram<false>(vocab, s, [&](int i, unsigned long long&) {
        const uint32_t key = LogitKey(row[i]);
        if (shift == 24) max_key = max(max_key, key);
        return (key & mask) == prefix ? (key >> shift) & 0xffu : kNoBin;
      });
      if (warp == 0) SelectDigit(s.count, above, s, [k](unsigned long long) { return k; });
      __syncthreads();
      prefix |= s.digit << shift;
      mask |= 0xffu << shift;
      above = s.above;    // keys > prefix
      ties = s.in_digit;  // keys == prefix after the last pass
    }
    threshold = prefix;
    const unsigned long long keep = k - above;  // in [1, ties]
    if (keep < ties) {
      last_tie = FirstPastTarget(
          vocab, s, [&](int i) -> unsigned long long { return LogitKey(row[i]) == threshold; },
          [keep](unsigned long long) { return keep - 1; });
    }
  } else {
    for (int i = threadIdx.x; i < vocab; i += kThreads) max_key = max(max_key, LogitKey(row[i]));
  }
  max_key = BlockMax(max_key, s);

  // (b) A token's weight if top-k keeps it, else -1.
  const float max_logit = KeyLogit(max_key), temperature = pick.temperature;
  const float scale = __int_as_float((127 + FixedPointBits(vocab)) << 23);  // 2^F
  const auto weight = [&](int i) {
    const float logit = row[i];
    const uint32_t key = LogitKey(logit);
    const bool kept = key > threshold || (key == threshold && i <= last_tie);
    return kept ? SamplingWeight(logit, max_logit, temperature) : -1.0f;
  };

  // (c) top-p keeps p > p_threshold, and p == p_threshold for ids <= p_last_tie
  // (p compared as bits). Defaults keep every weight >= 0.
  uint32_t p_threshold = 0;
  int p_last_tie = vocab;
  if (pick.top_p < 1.0f) {
    const float top_p = pick.top_p;
    uint32_t prefix = 0, mask = 0;
    unsigned long long above = 0, needed = 0;
    for (int shift = 24; shift >= 0; shift -= 8) {
      Histogram<true>(vocab, s, [&](int i, unsigned long long& mass) {
        const float p = weight(i);
        const uint32_t bits = __float_as_uint(p);
        if (!(p >= 0.0f) || (bits & mask) != prefix) return kNoBin;
        mass = ToFixed(p, scale);
        return (bits >> shift) & 0xffu;
      });
      if (warp == 0) {
        SelectDigit(s.mass, above, s, [&](unsigned long long total) {
          return shift == 24 ? NeededMass(top_p, total) : needed;
        });
      }
      __syncthreads();
      prefix |= s.digit << shift;
      mask |= 0xffu << shift;
      above = s.above;  // mass of p > prefix
      needed = s.want;
    }
    p_threshold = prefix;
    // Ties at p_threshold each weigh tie_weight; the fewest that reach the
    // needed mass are kept, lowest ids first (above < needed <= above +
    // ties * tie_weight, so tie_weight > 0 and 1 <= keep <= ties).
    const unsigned long long ties = s.count[s.digit];
    const unsigned long long tie_weight = ToFixed(__uint_as_float(p_threshold), scale);
    const unsigned long long keep =
        tie_weight == 0 ? ties : min(ties, (needed - above + tie_weight - 1) / tie_weight);
    if (keep < ties) {
      p_last_tie = FirstPastTarget(
          vocab, s,
          [&](int i) -> unsigned long long {
            const float p = weight(i);
            return p >= 0.0f && __float_as_uint(p) == p_threshold;
          },
          [keep](unsigned long long) { return keep - 1; });
    }
  }

  // (d) The inverse CDF over the kept tokens in id order.
  const double uniform = pick.uniform;
  const int id = FirstPastTarget(
      vocab, s,
      [&](int i) -> unsigned long long {
        const float p = weight(i);
        const uint32_t bits = __float_as_uint(p);
        const bool kept = p >= 0.0f && (bits > p_threshold || (bits == p_threshold && i <= p_last_tie));
        return kept ? ToFixed(p, scale) : 0ull;
      },
      [uniform](unsigned long long total) { return ScaledTarget(uniform, total); });
  if (threadIdx.x == 0) out[blockIdx.x] = id;
}

}  // namespace

void PickTokens(const float* logits, int vocab, int n, const TokenPick* picks, int* out,
                cudaStream_t stream) {
  if (n == 0) return;
  PickKernel<<<n, kThreads, 0, stream>>>(logits, vocab, picks, out);
  AWQ_CUDA_LAUNCH_CHECK();
}

}  // namespace cu
}  // namespace awqcore
