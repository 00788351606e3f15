// CreateRandomCudaForward (cuda_testing.h): the forward pass with weights
// filled on the device by splitmix64 per element, for the speed benchmark.
#include "common.cuh"
#include "cuda_testing.h"

namespace awqcore {
namespace {

__device__ uint64_t Mix(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}
__global__ void FillBytes(uint8_t* p, size_t n, uint8_t mask, uint64_t seed) {
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
    p[i] = static_cast<uint8_t>(Mix(seed ^ i)) & mask;
}
// Uniform in [lo, hi) as f16 (24 random bits), the constant lo when hi == lo.
__global__ void FillHalf(__half* p, size_t n, float lo, float hi, uint64_t seed) {
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
    p[i] = __float2half_rn(lo + (hi - lo) * (Mix(seed ^ i) >> 40) * (1.0f / 16777216.f));
}
__global__ void FillUniform(float* p, size_t n, float lo, float hi, uint64_t seed) {
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
    p[i] = lo + (hi - lo) * (Mix(seed ^ i) >> 40) * (1.0f / 16777216.f);
}
__global__ void FillFloat(float* p, size_t n, float value) {
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
    p[i] = value;
}

// Each tensor gets its own stream of the generator (seed advanced per call).
class RandomFill final : public cu::DeviceFill {
 public:
  explicit RandomFill(uint64_t seed) : seed_(seed) {}
  void Bytes(uint8_t* p, size_t n, uint8_t mask) override {
    FillBytes<<<1024, 256>>>(p, n, mask, seed_ += 0x1234567);
    AWQ_CUDA_LAUNCH_CHECK();
  }
  void Halves(__half* p, size_t n, float lo, float hi) override {
    FillHalf<<<1024, 256>>>(p, n, lo, hi, seed_ += 0x7654321);
    AWQ_CUDA_LAUNCH_CHECK();
  }
  void Floats(float* p, size_t n, float value) override {
    FillFloat<<<256, 256>>>(p, n, value);
    AWQ_CUDA_LAUNCH_CHECK();
  }
  void UniformFloats(float* p, size_t n, float lo, float hi) override {
    FillUniform<<<1024, 256>>>(p, n, lo, hi, seed_ += 0x2468ACE);
    AWQ_CUDA_LAUNCH_CHECK();
  }

 private:
  uint64_t seed_;
};

}  // namespace

std::unique_ptr<ForwardPass> CreateRandomCudaForward(const ModelConfig& config, int group_size,
                                                     int max_seq_len, int max_sequences, uint64_t seed) {
  cu::RequireDevice();
  RandomFill fill(seed);  // used by the constructor only: it synchronizes before returning
  return cu::CreateFilledCudaForward(config, group_size, fill, max_seq_len, max_sequences);
}

}  // namespace awqcore
