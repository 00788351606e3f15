// Greedy sampling on the device: the argmax of the last logits, so a greedy
// decode step sends 4 bytes to the host instead of the vocab * 4 bytes of
// logits (Qwen2.5: 608 KB, ~25 us over PCIe 4 at ~25 GB/s, against a 1.5B
// model's ~0.3 ms step on an H100). Top-k / top-p / temperature and the
// repetition penalty stay on the host (sampler.h): the logits cross then.
//
// Same result as Argmax (sampler.h): the largest non-NaN logit, lowest id on
// ties; all NaN gives the last id. That is a total order on (value, id) pairs
// (numbers above NaN; numbers by value, then lower id; NaNs by higher id), so
// any reduction tree gives the scalar loop's answer.
#include "common.cuh"

namespace awqcore {
namespace cu {
namespace {

constexpr int kArgmaxThreads = 1024;

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
    const Candidate other{__shfl_xor_sync(0xffffffffu, best.value, offset),
                          __shfl_xor_sync(0xffffffffu, best.id, offset)};
    best = Better(best, other);
  }
  return best;
}

__global__ void __launch_bounds__(kArgmaxThreads) ArgmaxKernel(const float* __restrict__ logits, int n, int* out) {
  __shared__ Candidate warp_best[kArgmaxThreads / 32];
  Candidate best{logits[min(static_cast<int>(threadIdx.x), n - 1)], min(static_cast<int>(threadIdx.x), n - 1)};
  for (int i = threadIdx.x + kArgmaxThreads; i < n; i += kArgmaxThreads) best = Better(best, {logits[i], i});
  best = WarpBest(best);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) warp_best[warp] = best;
  __syncthreads();
  if (warp == 0) {
    best = WarpBest(warp_best[lane]);  // kArgmaxThreads / 32 == 32 warps: one per lane
    if (lane == 0) *out = best.id;
  }
}

}  // namespace

void Argmax(const float* logits, int n, int* out, cudaStream_t stream) {
  ArgmaxKernel<<<1, kArgmaxThreads, 0, stream>>>(logits, n, out);
  AWQ_CUDA_LAUNCH_CHECK();
}

}  // namespace cu
}  // namespace awqcore
