// RMSNorm, the gated MLP's activation and the logit soft-cap. Each is a few
// KB per token against MB of weights per layer, so they are written for
// clarity: one block per row for the norm (a block-wide sum of squares),
// grid-stride loops for the elementwise ops.
#include "common.cuh"

namespace awqcore {
namespace cu {
namespace {

constexpr int kNormThreads = 256;
constexpr int kElementwiseThreads = 256;
constexpr unsigned kMaxElementwiseBlocks = 4096;

// y[row] (= or +=) x[row] * rsqrt(mean(x[row]^2) + eps) * weight; one block per row.
template <bool kAdd>
__global__ void __launch_bounds__(kNormThreads)
    RmsNormKernel(const float* __restrict__ x, const float* __restrict__ weight, int d, float eps,
                  float* y) {
  const float* xr = x + static_cast<size_t>(blockIdx.x) * d;
  float* yr = y + static_cast<size_t>(blockIdx.x) * d;
  float sum = 0.f;
  for (int c = threadIdx.x; c < d; c += kNormThreads) sum = fmaf(xr[c], xr[c], sum);
  __shared__ float warp_sums[kNormThreads / 32];
  sum = WarpSum(sum);
  if ((threadIdx.x & 31) == 0) warp_sums[threadIdx.x >> 5] = sum;
  __syncthreads();
  float total = 0.f;
#pragma unroll
  for (int i = 0; i < kNormThreads / 32; ++i) total += warp_sums[i];
  const float inv = rsqrtf(total / d + eps);
  for (int c = threadIdx.x; c < d; c += kNormThreads) {
    const float v = xr[c] * inv * weight[c];
    yr[c] = kAdd ? yr[c] + v : v;
  }
}

__device__ __forceinline__ float Silu(float g) { return g / (1.f + expf(-g)); }
// GELU's tanh approximation: 0.5 g (1 + tanh(sqrt(2 / pi) (g + 0.044715 g^3))).
__device__ __forceinline__ float GeluTanh(float g) {
  constexpr float kSqrt2OverPi = 0.7978845608028654f;
  return 0.5f * g * (1.f + tanhf(kSqrt2OverPi * fmaf(0.044715f * g, g * g, g)));
}

template <Activation kAct>
__global__ void GatedActivationKernel(const float* gate, const float* __restrict__ up, size_t count,
                                      float* out) {
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < count;
       i += static_cast<size_t>(gridDim.x) * blockDim.x) {
    const float g = gate[i];
    out[i] = (kAct == Activation::kSilu ? Silu(g) : GeluTanh(g)) * up[i];
  }
}

__global__ void SoftCapKernel(float* x, size_t count, float cap) {
  const float inv_cap = 1.f / cap;
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < count;
       i += static_cast<size_t>(gridDim.x) * blockDim.x)
    x[i] = cap * tanhf(x[i] * inv_cap);
}

unsigned ElementwiseBlocks(size_t count) {
  const size_t blocks = (count + kElementwiseThreads - 1) / kElementwiseThreads;
  return static_cast<unsigned>(blocks < kMaxElementwiseBlocks ? blocks : kMaxElementwiseBlocks);
}

}  // namespace

void RmsNorm(const float* x, const float* weight, int d, float eps, int n, float* y,
             cudaStream_t stream) {
  if (n == 0) return;
  RmsNormKernel<false><<<n, kNormThreads, 0, stream>>>(x, weight, d, eps, y);
  AWQ_CUDA_LAUNCH_CHECK();
}

void AddRmsNorm(const float* x, const float* weight, int d, float eps, int n, float* y,
                cudaStream_t stream) {
  if (n == 0) return;
  RmsNormKernel<true><<<n, kNormThreads, 0, stream>>>(x, weight, d, eps, y);
  AWQ_CUDA_LAUNCH_CHECK();
}

void GatedActivation(Activation act, const float* gate, const float* up, size_t count, float* out,
                     cudaStream_t stream) {
  if (count == 0) return;
  if (act == Activation::kSilu) {
    GatedActivationKernel<Activation::kSilu>
        <<<ElementwiseBlocks(count), kElementwiseThreads, 0, stream>>>(gate, up, count, out);
  } else {
    GatedActivationKernel<Activation::kGeluTanh>
        <<<ElementwiseBlocks(count), kElementwiseThreads, 0, stream>>>(gate, up, count, out);
  }
  AWQ_CUDA_LAUNCH_CHECK();
}

void SoftCap(float* x, size_t count, float cap, cudaStream_t stream) {
  if (count == 0) return;
  SoftCapKernel<<<ElementwiseBlocks(count), kElementwiseThreads, 0, stream>>>(x, count, cap);
  AWQ_CUDA_LAUNCH_CHECK();
}

}  // namespace cu
}  // namespace awqcore
