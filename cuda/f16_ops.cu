// Ops on f16 [rows, d] matrices: the embedding gather and lm_head.
//
// lm_head is the largest single read of a decode step on small models
// (SmolLM2: 49152 x 576 x 2 B = 57 MB, more than all its int4 layers) and
// 262 MB on Llama-2-7B, so it gets the same treatment as the int4 GEMV: a
// warp per kRows rows, 16-byte coalesced loads (8 halves per lane), f32
// accumulation, warp-shuffle reduction. d % 8 == 0 keeps rows 16-byte aligned.
#include "common.cuh"

namespace awqcore {
namespace cu {
namespace {

constexpr int kWarps = 4;
constexpr int kRows = 2;     // rows per warp: each x load serves 2 rows
constexpr int kMaxTile = 4;  // tokens per launch

template <int B>
__global__ void __launch_bounds__(kWarps * 32)
    F16GemvKernel(const __half* __restrict__ w, int rows, int d, const float* __restrict__ x,
                  float* __restrict__ y) {
  const int lane = threadIdx.x & 31;
  const int row0 = (blockIdx.x * kWarps + (threadIdx.x >> 5)) * kRows;
  if (row0 >= rows) return;
  int row[kRows];
#pragma unroll
  for (int r = 0; r < kRows; ++r) row[r] = min(row0 + r, rows - 1);
  float acc[B][kRows] = {};
  for (int c = lane * 8; c < d; c += 32 * 8) {
    float wf[kRows][8];
#pragma unroll
    for (int r = 0; r < kRows; ++r) {
      const uint4 raw = __ldg(reinterpret_cast<const uint4*>(w + static_cast<size_t>(row[r]) * d + c));
      const __half2* h = reinterpret_cast<const __half2*>(&raw);
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const float2 f = __half22float2(h[i]);
        wf[r][2 * i] = f.x;
        wf[r][2 * i + 1] = f.y;
      }
    }
#pragma unroll
    for (int b = 0; b < B; ++b) {
      const float4* xv = reinterpret_cast<const float4*>(x + static_cast<size_t>(b) * d + c);
      const float4 x0 = __ldg(xv), x1 = __ldg(xv + 1);
      const float xs[8] = {x0.x, x0.y, x0.z, x0.w, x1.x, x1.y, x1.z, x1.w};
#pragma unroll
      for (int r = 0; r < kRows; ++r)
#pragma unroll
        for (int i = 0; i < 8; ++i) acc[b][r] = fmaf(wf[r][i], xs[i], acc[b][r]);
    }
  }
#pragma unroll
  for (int b = 0; b < B; ++b) {
#pragma unroll
    for (int r = 0; r < kRows; ++r) {
      const float v = WarpSum(acc[b][r]);
      if (lane == 0 && row0 + r < rows) y[static_cast<size_t>(b) * rows + row0 + r] = v;
    }
  }
}

// One block per token; out row = table row in f32, times scale (in f32, as
// the CPU's gather: ops/embedding_table.h).
__global__ void EmbeddingKernel(const __half* __restrict__ table, int d, const int* __restrict__ ids,
                                float scale, float* __restrict__ out) {
  const size_t src = static_cast<size_t>(ids[blockIdx.x]) * d;
  float* dst = out + static_cast<size_t>(blockIdx.x) * d;
  for (int c = threadIdx.x; c < d; c += blockDim.x) dst[c] = __half2float(table[src + c]) * scale;
}

template <int B>
void LaunchTile(const __half* w, int rows, int d, const float* x, float* y, cudaStream_t stream) {
  const int per_block = kWarps * kRows;
  F16GemvKernel<B><<<(rows + per_block - 1) / per_block, kWarps * 32, 0, stream>>>(w, rows, d, x, y);
  AWQ_CUDA_LAUNCH_CHECK();
}

}  // namespace

void F16Linear(const __half* w, int rows, int d, const float* x, int n, float* y,
               cudaStream_t stream) {
  for (int t = 0; t < n; t += kMaxTile) {
    const int tile = n - t < kMaxTile ? n - t : kMaxTile;
    const float* xt = x + static_cast<size_t>(t) * d;
    float* yt = y + static_cast<size_t>(t) * rows;
    switch (tile) {
      case 1: LaunchTile<1>(w, rows, d, xt, yt, stream); break;
      case 2: LaunchTile<2>(w, rows, d, xt, yt, stream); break;
      case 3: LaunchTile<3>(w, rows, d, xt, yt, stream); break;
      default: LaunchTile<4>(w, rows, d, xt, yt, stream); break;
    }
  }
}

void Embedding(const __half* table, int d, const int* ids, int n, float scale, float* out,
               cudaStream_t stream) {
  if (n == 0) return;
  EmbeddingKernel<<<n, 256, 0, stream>>>(table, d, ids, scale, out);
  AWQ_CUDA_LAUNCH_CHECK();
}

}  // namespace cu
}  // namespace awqcore
