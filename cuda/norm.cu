// RMSNorm and the SwiGLU activation. Both are a few KB per token against MB of
// weights per layer, so they are written for clarity: one block per row for
// the norm (a block-wide sum of squares), a grid-stride loop for SwiGLU.
#include "common.cuh"

namespace awqcore {
namespace cu {
namespace {

constexpr int kNormThreads = 256;

// y[row] = x[row] * rsqrt(mean(x[row]^2) + eps) * weight; one block per row.
__global__ void __launch_bounds__(kNormThreads)
    RmsNormKernel(const float* __restrict__ x, const float* __restrict__ weight, int d, float eps,
                  float* y) {
  const float* xr = x + static_cast<size_t>(blockIdx.x) * d;
  float* yr = y + static_cast<size_t>(blockIdx.x) * d;
  float sum = 0.f;
  for (int c = threadIdx.x; c < d; c += kNormThreads) sum = fmaf(xr[c], xr[c], sum);
  __shared__ float warp_sums[kNormThreads / 32];
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, o);
  if ((threadIdx.x & 31) == 0) warp_sums[threadIdx.x >> 5] = sum;
  __syncthreads();
  float total = 0.f;
#pragma unroll
  for (int i = 0; i < kNormThreads / 32; ++i) total += warp_sums[i];
  const float inv = rsqrtf(total / d + eps);
  for (int c = threadIdx.x; c < d; c += kNormThreads) yr[c] = xr[c] * inv * weight[c];
}

__global__ void SwiGluKernel(const float* gate, const float* __restrict__ up, size_t count,
                             float* out) {
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < count;
       i += static_cast<size_t>(gridDim.x) * blockDim.x) {
    const float g = gate[i];
    out[i] = g / (1.f + expf(-g)) * up[i];
  }
}

}  // namespace

void RmsNorm(const float* x, const float* weight, int d, float eps, int n, float* y,
             cudaStream_t stream) {
  if (n == 0) return;
  RmsNormKernel<<<n, kNormThreads, 0, stream>>>(x, weight, d, eps, y);
  AWQ_CUDA_LAUNCH_CHECK();
}

void SwiGlu(const float* gate, const float* up, size_t count, float* out, cudaStream_t stream) {
  if (count == 0) return;
  const size_t blocks = (count + 255) / 256;
  SwiGluKernel<<<static_cast<unsigned>(blocks < 4096 ? blocks : 4096), 256, 0, stream>>>(
      gate, up, count, out);
  AWQ_CUDA_LAUNCH_CHECK();
}

}  // namespace cu
}  // namespace awqcore
