// The mixture-of-experts block on the GPU (docs/format.md, "Mixture of
// experts"), the device twin of ops/moe_router.h and ops/moe_experts.h, in
// the CPU's steps:
//
//   1. MoeLogitsKernel: the n x E router logits (f32 dot products), one warp
//      per (token, expert) row in ceil(E / 8) blocks per token, so that many
//      SMs share the read of the router's E d 4 bytes (Qwen3-30B-A3B: 1 MiB
//      per layer) even at one token. MoeTopKKernel: per token, one warp, the
//      softmax, the k largest p in descending order with ties to the lower
//      expert index, and their weights (divided by their sum when
//      norm_topk_prob).
//   2. MoePlanKernel: a counting sort of the n k (token, rank) pairs by
//      expert, tokens ascending within an expert's group (the CPU's slot
//      order), and the tiles of up to 8 (GEMV) or 64 (GEMM) slots of one
//      expert that the grouped linears run. One block: warp-parallel counts,
//      one warp's shuffle scans for the groups' and tiles' starts.
//   3. MoeGatherKernel: each slot's input row h[token] into slot order.
//   4. gate and up of each tile (MoeGemvKernel below kTensorCoreMinTokens
//      tokens, else Int4GroupedGemm), act(gate) * up, down of each tile.
//   5. MoeCombineKernel: y[t] (+)= sum over ranks r in rank order of
//      w[t, r] out[slot of (t, r)].
//
// Memory: a decode token reads the router (E d 4 B) and its k experts' three
// linears once; a step of n tokens reads each chosen expert once per tile of
// up to 8 of its tokens, so expert e's weights cross the bus ceil(c_e / 8)
// times for its c_e tokens, not c_e times. The grid sizes depend only on n
// (MoeMaxTiles), never on the routing, so a decode step stays one captured
// CUDA graph: blocks of unused tiles exit at once.
//
// Written and compiled without a GPU at hand: cpp/tests/test_cuda_moe.cpp
// (against the CPU references) and tests/test_cuda.py (whole models against
// the CPU runtime) check it where a device exists (tools/gpu_check.sh).
#include "common.cuh"

namespace awqcore {
namespace cu {
namespace {

constexpr int kLogitWarps = 8;      // router rows per block of the logits kernel, one per warp
constexpr int kPlanThreads = 1024;  // 32 warps, each counting the slots of experts w, w + 32, ...
constexpr int kGemvWarps = 8;       // rows per block of the expert GEMV, one per warp
constexpr int kGemvThreads = kGemvWarps * 32;
constexpr int kChunkCols = 1024;    // columns per step: 32 lanes x 32 columns (16 bytes of nibbles)
constexpr int kElementwiseThreads = 256;

unsigned ElementwiseBlocks(size_t count) {
  const size_t blocks = (count + kElementwiseThreads - 1) / kElementwiseThreads;
  return static_cast<unsigned>(blocks < 4096 ? blocks : 4096);
}

// logits [n, E]: logits[t, e] = router[e, :] . x[t, :] for token t =
// blockIdx.x and expert e = blockIdx.y * 8 + warp, one warp per row. Lane l
// sums columns 4 l + 128 j in ascending j, then the warp sum: the order
// depends on d alone, so a token's logits do not depend on the other tokens
// of the call. d % 4 == 0 and 16-byte aligned rows (d % 8 == 0 on the device).
__global__ void __launch_bounds__(kLogitWarps * 32)
    MoeLogitsKernel(const float* __restrict__ router, int num_experts, int d, const float* __restrict__ x,
                    float* __restrict__ logits) {
  const int lane = threadIdx.x & 31;
  const int e = blockIdx.y * kLogitWarps + (threadIdx.x >> 5);
  if (e >= num_experts) return;  // the whole warp; no barrier follows
  const int t = blockIdx.x;
  const float* row = router + static_cast<size_t>(e) * d;
  const float* xt = x + static_cast<size_t>(t) * d;
  float sum = 0.f;
  for (int c = 4 * lane; c < d; c += 128) {
    const float4 a = __ldg(reinterpret_cast<const float4*>(row + c));
    const float4 b = __ldg(reinterpret_cast<const float4*>(xt + c));
    sum = fmaf(a.x, b.x, sum);
    sum = fmaf(a.y, b.y, sum);
    sum = fmaf(a.z, b.z, sum);
    sum = fmaf(a.w, b.w, sum);
  }
  sum = WarpSum(sum);
  if (lane == 0) logits[static_cast<size_t>(t) * num_experts + e] = sum;
}

// Token blockIdx.x, one warp: the softmax of its row of logits [n, E], the k
// largest p in descending order with ties to the lower expert index, and
// their weights. Shared p [E]; lane l owns experts l, l + 32, ...
__global__ void __launch_bounds__(32)
    MoeTopKKernel(const float* __restrict__ logits, int num_experts, int k, int normalize,
                  int* __restrict__ experts, float* __restrict__ weights) {
  extern __shared__ float p[];  // [E]: logits, then probabilities; -1 marks a chosen expert
  const int lane = threadIdx.x;
  const int t = blockIdx.x;
  const float* token_logits = logits + static_cast<size_t>(t) * num_experts;

  // Softmax as MoeRouteToken: p = exp(l - max) / sum, expf within 2 ulp of exp.
  float max_logit = -INFINITY;
  for (int e = lane; e < num_experts; e += 32) {
    p[e] = token_logits[e];
    max_logit = fmaxf(max_logit, p[e]);
  }
  max_logit = WarpMax(max_logit);
  float sum = 0.f;
  for (int e = lane; e < num_experts; e += 32) {
    const float v = expf(p[e] - max_logit);
    p[e] = v;
    sum += v;
  }
  sum = WarpSum(sum);
  for (int e = lane; e < num_experts; e += 32) p[e] /= sum;
  __syncwarp();

  // Rank r: the largest p not yet chosen, the lower index among equal p.
  // Chosen experts hold -1 (every p is >= 0 or NaN), and !(v < 0) keeps
  // NaN probabilities candidates, so each rank finds an unchosen expert
  // whatever the logits hold.
  int* chosen_experts = experts + static_cast<size_t>(t) * k;
  float* chosen_weights = weights + static_cast<size_t>(t) * k;
  float chosen_sum = 0.f;
  for (int r = 0; r < k; ++r) {
    int best = -1;
    float best_p = 0.f;
    for (int e = lane; e < num_experts; e += 32) {  // ascending: strict > keeps the lower index
      const float v = p[e];
      if (!(v < 0.f) && (best < 0 || v > best_p)) {
        best = e;
        best_p = v;
      }
    }
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) {
      const int other = __shfl_xor_sync(0xffffffffu, best, offset);
      const float other_p = __shfl_xor_sync(0xffffffffu, best_p, offset);
      if (other >= 0 && (best < 0 || other_p > best_p || (other_p == best_p && other < best))) {
        best = other;
        best_p = other_p;
      }
    }
    // (p descending, index ascending) is a total order without NaN, so every
    // lane holds the same pair; lane 0's is taken in any case.
    best = __shfl_sync(0xffffffffu, best, 0);
    best_p = __shfl_sync(0xffffffffu, best_p, 0);
    if (lane == 0) {
      chosen_experts[r] = best;
      chosen_weights[r] = best_p;
      p[best] = -1.f;
    }
    chosen_sum += best_p;  // in rank order, as the CPU
    __syncwarp();          // the mark is seen by the lane owning `best`
  }
  if (normalize && lane == 0) {
    for (int r = 0; r < k; ++r) chosen_weights[r] /= chosen_sum;
  }
}

// One block. experts[i] in [0, E) for every slot i (the router's output).
// Shared begin and first_tile [E + 1] each: after step 2, expert e's slots
// are [begin[e], begin[e + 1]) and its tiles [first_tile[e], first_tile[e + 1]).
__global__ void __launch_bounds__(kPlanThreads)
    MoePlanKernel(const int* __restrict__ experts, int slots, int num_experts, int k, int tile_tokens,
                  int max_tiles, int* __restrict__ slot_of, int* __restrict__ slot_token,
                  MoeTile* __restrict__ tiles) {
  extern __shared__ int begin[];                 // [E + 1]
  int* first_tile = begin + (num_experts + 1);   // [E + 1]
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  // 1. Each expert's slot and tile counts at e + 1: warp w takes experts w,
  // w + 32, ... and scans the slots 32 at a time.
  for (int e = warp; e < num_experts; e += warps) {
    int count = 0;
    for (int base = 0; base < slots; base += 32) {
      const int i = base + lane;
      count += __popc(__ballot_sync(0xffffffffu, i < slots && experts[i] == e));
    }
    if (lane == 0) {
      begin[e + 1] = count;
      first_tile[e + 1] = (count + tile_tokens - 1) / tile_tokens;
    }
  }
  __syncthreads();
  // 2. Both prefix sums in place by warp 0: lane l takes the run of experts
  // [l m, l m + m), m = ceil(E / 32); the warp's inclusive scan of the run
  // totals gives each run's start, and the lane turns its run's counts into
  // running sums (each lane reads and writes only its own run's entries).
  if (warp == 0) {
    const int run = (num_experts + 31) / 32;
    const int lo = min(lane * run, num_experts), hi = min(lo + run, num_experts);
    int run_slots = 0, run_tiles = 0;
    for (int e = lo; e < hi; ++e) {
      run_slots += begin[e + 1];
      run_tiles += first_tile[e + 1];
    }
    int slots_through = run_slots, tiles_through = run_tiles;  // inclusive over runs 0 .. lane
#pragma unroll
    for (int offset = 1; offset < 32; offset <<= 1) {
      const int s = __shfl_up_sync(0xffffffffu, slots_through, offset);
      const int t = __shfl_up_sync(0xffffffffu, tiles_through, offset);
      if (lane >= offset) {
        slots_through += s;
        tiles_through += t;
      }
    }
    int slot = slots_through - run_slots, tile = tiles_through - run_tiles;
    for (int e = lo; e < hi; ++e) {
      slot += begin[e + 1];
      tile += first_tile[e + 1];
      begin[e + 1] = slot;
      first_tile[e + 1] = tile;
    }
    if (lane == 0) begin[0] = first_tile[0] = 0;
  }
  __syncthreads();
  // 3. The tiles, an expert per thread, and the unused ones marked. The
  // grid's max_tiles (MoeMaxTiles) bounds every grouping, so the trap marks
  // a broken bound rather than dropping tokens silently.
  const int num_tiles = first_tile[num_experts];
  if (num_tiles > max_tiles) __trap();
  for (int e = threadIdx.x; e < num_experts; e += blockDim.x) {
    const int first = begin[e], count = begin[e + 1] - first;
    for (int c = 0, i = first_tile[e]; c < count; c += tile_tokens, ++i) {
      tiles[i] = MoeTile{e, first + c, min(tile_tokens, count - c)};
    }
  }
  for (int i = num_tiles + threadIdx.x; i < max_tiles; i += blockDim.x) tiles[i] = MoeTile{-1, 0, 0};
  // 4. Slots: expert e's pairs in slot order (token-major, so tokens ascend
  // within the group), numbered from begin[e] by the ballot's prefix counts.
  for (int e = warp; e < num_experts; e += warps) {
    int next = begin[e];
    for (int base = 0; base < slots; base += 32) {
      const int i = base + lane;
      const bool mine = i < slots && experts[i] == e;
      const unsigned ballot = __ballot_sync(0xffffffffu, mine);
      if (mine) {
        const int slot = next + __popc(ballot & ((1u << lane) - 1u));
        slot_of[i] = slot;
        slot_token[slot] = i / k;
      }
      next += __popc(ballot);
    }
  }
}

// xs[s, :] = x[slot_token[s], :] over slots x d / 4 float4s.
__global__ void MoeGatherKernel(const float* __restrict__ x, int d, const int* __restrict__ slot_token,
                                int slots, float* __restrict__ xs) {
  const int quads = d / 4;
  const size_t count = static_cast<size_t>(slots) * quads;
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < count;
       i += static_cast<size_t>(gridDim.x) * blockDim.x) {
    const size_t s = i / quads, f = i % quads;
    reinterpret_cast<float4*>(xs)[i] =
        __ldg(reinterpret_cast<const float4*>(x + static_cast<size_t>(slot_token[s]) * d) + f);
  }
}

// y[t, c] = (accumulate ? y[t, c] : 0) + sum_r w[t, r] out[slot_of[t, r], c],
// the ranks summed in order from 0, as the CPU's AxpyF32 loop.
__global__ void MoeCombineKernel(const float* __restrict__ out, int d, const int* __restrict__ slot_of,
                                 const float* __restrict__ weights, int n, int k, float* __restrict__ y,
                                 int accumulate) {
  const size_t count = static_cast<size_t>(n) * d;
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < count;
       i += static_cast<size_t>(gridDim.x) * blockDim.x) {
    const size_t t = i / d, c = i % d;
    float sum = 0.f;
    for (int r = 0; r < k; ++r) {
      const size_t pair = t * k + r;
      sum += weights[pair] * out[static_cast<size_t>(slot_of[pair]) * d + c];
    }
    y[i] = accumulate ? y[i] + sum : sum;
  }
}

// The rows of one tile of B or fewer tokens (count <= B): warp w of block
// blockIdx.x computes row blockIdx.x * 8 + w of expert slice `w` for the
// tile's tokens x [count, in] into y [count, out]. int4_gemv.cu's kernel at
// R = 1: lane l dequantizes columns [32 l, 32 l + 32) of each of the D
// 1024-column chunks of a step once for all B tokens, the step's D loads
// issued before the x staging; x is staged swizzled in shared memory (xs
// [B][D * 256] float4). Staged rows past `count` are zero and their sums are
// not stored. Each token's sum runs in the same order whatever B and D: per
// lane, chunk by chunk in column order.
template <int B, int D>
__device__ __forceinline__ void ExpertRows(const DeviceInt4& w, const float* __restrict__ x, int count,
                                           float* __restrict__ y, float4* xs) {
  constexpr int kStepCols = D * kChunkCols, kStepQuads = kStepCols / 4;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int row = blockIdx.x * kGemvWarps + warp;
  const int r = min(row, w.out - 1);  // rows past out: computed, never stored; every lane shuffles
  const size_t row_bytes = w.in / 2;
  const int groups = w.in / w.group_size;
  float acc[B];
#pragma unroll
  for (int b = 0; b < B; ++b) acc[b] = 0.f;

  for (int c0 = 0; c0 < w.in; c0 += kStepCols) {
    uint4 q[D];
    float scale[D], zoff[D];
#pragma unroll
    for (int d = 0; d < D; ++d) {
      const int c = c0 + d * kChunkCols + lane * 32;
      q[d] = make_uint4(0, 0, 0, 0);  // chunks past `in`: zero weights against zero x
      scale[d] = 0.f;
      zoff[d] = 8388608.f;
      if (c < w.in) {
        const size_t gi = static_cast<size_t>(r) * groups + c / w.group_size;
        q[d] = __ldg(reinterpret_cast<const uint4*>(w.qweight + r * row_bytes + c / 2));
        scale[d] = __half2float(__ldg(w.scales + gi));
        zoff[d] = 8388608.f + static_cast<float>(__ldg(w.zeros + gi));  // 2^23 + z
      }
    }
    __syncthreads();  // the previous step's reads of xs are done
    for (int i = threadIdx.x; i < B * kStepQuads; i += kGemvThreads) {
      const int b = i / kStepQuads, f = i % kStepQuads, col = c0 + 4 * f;
      xs[b * kStepQuads + Swz(f)] =
          b < count && col < w.in ? __ldg(reinterpret_cast<const float4*>(x + static_cast<size_t>(b) * w.in + col))
                                  : make_float4(0.f, 0.f, 0.f, 0.f);
    }
    __syncthreads();
#pragma unroll
    for (int d = 0; d < D; ++d) {
      const int j = d * 32 + lane;  // chunk of 32 columns within the step; j & 7 == lane & 7
      float part[B];
#pragma unroll
      for (int b = 0; b < B; ++b) part[b] = 0.f;
#pragma unroll
      for (int kw = 0; kw < 4; ++kw) {  // word kw: columns 8 kw .. 8 kw + 7 of the chunk
        float qz[8];
        Dequant8(kw == 0 ? q[d].x : kw == 1 ? q[d].y : kw == 2 ? q[d].z : q[d].w, zoff[d], qz);
#pragma unroll
        for (int b = 0; b < B; ++b) {
          const float4 x0 = xs[b * kStepQuads + 8 * j + ((2 * kw) ^ (lane & 7))];
          const float4 x1 = xs[b * kStepQuads + 8 * j + ((2 * kw + 1) ^ (lane & 7))];
          const float xv[8] = {x0.x, x0.y, x0.z, x0.w, x1.x, x1.y, x1.z, x1.w};
#pragma unroll
          for (int e = 0; e < 8; ++e) part[b] = fmaf(qz[e], xv[e], part[b]);
        }
      }
#pragma unroll
      for (int b = 0; b < B; ++b) acc[b] = fmaf(part[b], scale[d], acc[b]);
    }
  }
#pragma unroll
  for (int b = 0; b < B; ++b) {
    const float sum = WarpSum(acc[b]);
    if (lane == 0 && row < w.out && b < count) y[static_cast<size_t>(b) * w.out + row] = sum;
  }
}

// Tile blockIdx.y of `tiles`, rows blockIdx.x * 8 .. + 7 of its expert.
// kMaxB = 1 (decode of one token: every tile holds one): 2 chunks per step
// and 4 blocks per SM, int4_gemv.cu's batch-1 shape, for bytes in flight.
// kMaxB = 8: the tile's token count picks the unrolled width (uniform in the
// block), 1 chunk per step, 32 KiB of staged x.
template <int kMaxB>
__global__ void __launch_bounds__(kGemvThreads, kMaxB == 1 ? 4 : 2)
    MoeGemvKernel(DeviceInt4 stacked, const MoeTile* __restrict__ tiles, const float* __restrict__ x,
                  float* __restrict__ y) {
  __shared__ float4 xs[kMaxB == 1 ? 2 * kChunkCols / 4 : kMaxB * kChunkCols / 4];  // 8 or 32 KiB
  const MoeTile tile = tiles[blockIdx.y];
  if (tile.expert < 0) return;  // the whole block: no barrier is left waiting
  const DeviceInt4 w = ExpertSlice(stacked, tile.expert);
  const float* xt = x + static_cast<size_t>(tile.first) * w.in;
  float* yt = y + static_cast<size_t>(tile.first) * w.out;
  if constexpr (kMaxB == 1) {
    ExpertRows<1, 2>(w, xt, 1, yt, xs);
  } else if (tile.count == 1) {
    ExpertRows<1, 1>(w, xt, 1, yt, xs);
  } else if (tile.count == 2) {
    ExpertRows<2, 1>(w, xt, 2, yt, xs);
  } else if (tile.count <= 4) {
    ExpertRows<4, 1>(w, xt, tile.count, yt, xs);
  } else {
    ExpertRows<kMaxB, 1>(w, xt, tile.count, yt, xs);
  }
}

// y = W_e x for every tile's slots, on the kernel the tiles were cut for;
// one_token: a call of one token, whose tiles all hold one slot.
void ExpertLinear(const DeviceInt4& stacked, const MoeTile* tiles, int max_tiles, bool tensor_cores,
                  bool one_token, const float* x, float* y, cudaStream_t stream) {
  if (tensor_cores) {
    Int4GroupedGemm(stacked, tiles, max_tiles, x, y, stream);
    return;
  }
  const dim3 grid((stacked.out + kGemvWarps - 1) / kGemvWarps, max_tiles);
  if (one_token) {
    MoeGemvKernel<1><<<grid, kGemvThreads, 0, stream>>>(stacked, tiles, x, y);
  } else {
    MoeGemvKernel<kMoeGemvTileTokens><<<grid, kGemvThreads, 0, stream>>>(stacked, tiles, x, y);
  }
  AWQ_CUDA_LAUNCH_CHECK();
}

}  // namespace

int MoeMaxTiles(int slots, int num_experts, int tile_tokens) {
  const int active = slots < num_experts ? slots : num_experts;
  return (slots + tile_tokens - 1) / tile_tokens + active;
}

void MoeForward(const DeviceMoe& moe, Activation act, const float* h, int n, const MoeBuffers& buffers,
                float* y, bool accumulate, cudaStream_t stream) {
  const int k = moe.k, num_experts = moe.num_experts;
  const int d = moe.down.out, f = moe.gate.out;
  if (k < 1 || k > num_experts || num_experts > kMaxExperts) {
    throw Error("MoeForward: the CUDA mixture-of-experts block runs 1 <= k <= E <= " + std::to_string(kMaxExperts) +
                " (got k " + std::to_string(k) + ", E " + std::to_string(num_experts) + ")");
  }
  if (n < 0 || n > buffers.max_tokens || k != buffers.k || num_experts != buffers.num_experts ||
      d != buffers.d || f != buffers.f) {
    throw Error("MoeForward: a call of " + std::to_string(n) + " tokens (k " + std::to_string(k) + ", E " +
                std::to_string(num_experts) + ", d " + std::to_string(d) + ", f " + std::to_string(f) +
                ") does not fit MoeBuffers made for " + std::to_string(buffers.max_tokens) + " tokens (k " +
                std::to_string(buffers.k) + ", E " + std::to_string(buffers.num_experts) + ", d " +
                std::to_string(buffers.d) + ", f " + std::to_string(buffers.f) + ")");
  }
  if (n == 0) return;
  const int slots = n * k;
  const bool tensor_cores = n >= kTensorCoreMinTokens;
  const int tile_tokens = tensor_cores ? kGemmTileTokens : kMoeGemvTileTokens;
  const int max_tiles = MoeMaxTiles(slots, num_experts, tile_tokens);
  float* logits = buffers.logits.as<float>();
  int* experts = buffers.experts.as<int>();
  float* weights = buffers.weights.as<float>();
  int* slot_of = buffers.slot_of.as<int>();
  int* slot_token = buffers.slot_token.as<int>();
  MoeTile* tiles = buffers.tiles.as<MoeTile>();

  const dim3 logit_grid(n, (num_experts + kLogitWarps - 1) / kLogitWarps);
  MoeLogitsKernel<<<logit_grid, kLogitWarps * 32, 0, stream>>>(moe.router, num_experts, d, h, logits);
  AWQ_CUDA_LAUNCH_CHECK();
  MoeTopKKernel<<<n, 32, num_experts * sizeof(float), stream>>>(logits, num_experts, k, moe.normalize ? 1 : 0,
                                                                experts, weights);
  AWQ_CUDA_LAUNCH_CHECK();
  MoePlanKernel<<<1, kPlanThreads, 2 * (num_experts + 1) * sizeof(int), stream>>>(
      experts, slots, num_experts, k, tile_tokens, max_tiles, slot_of, slot_token, tiles);
  AWQ_CUDA_LAUNCH_CHECK();
  MoeGatherKernel<<<ElementwiseBlocks(static_cast<size_t>(slots) * d / 4), kElementwiseThreads, 0, stream>>>(
      h, d, slot_token, slots, buffers.x.as<float>());
  AWQ_CUDA_LAUNCH_CHECK();
  float* gate = buffers.gate.as<float>();
  float* up = buffers.up.as<float>();
  ExpertLinear(moe.gate, tiles, max_tiles, tensor_cores, n == 1, buffers.x.as<float>(), gate, stream);
  ExpertLinear(moe.up, tiles, max_tiles, tensor_cores, n == 1, buffers.x.as<float>(), up, stream);
  GatedActivation(act, gate, up, static_cast<size_t>(slots) * f, gate, stream);
  ExpertLinear(moe.down, tiles, max_tiles, tensor_cores, n == 1, gate, buffers.out.as<float>(), stream);
  MoeCombineKernel<<<ElementwiseBlocks(static_cast<size_t>(n) * d), kElementwiseThreads, 0, stream>>>(
      buffers.out.as<float>(), d, slot_of, weights, n, k, y, accumulate ? 1 : 0);
  AWQ_CUDA_LAUNCH_CHECK();
}

}  // namespace cu
}  // namespace awqcore
