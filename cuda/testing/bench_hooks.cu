// cuda_bench:: (cuda_testing.h): kernel timings for tools/gpu_bench.cpp.
// Timed with CUDA events over many launches after a warm-up; the median of
// several repetitions is returned. Inputs rotate over enough copies that the
// 50 MB L2 cannot serve them, so the numbers are HBM numbers.
#include <algorithm>
#include <vector>

#include "common.cuh"
#include "cuda_testing.h"

namespace awqcore {
namespace cuda_bench {
namespace {

using cu::DeviceBuffer;

// Median over 7 repetitions of (time of `iters` calls of fn(i)) / iters, in us.
template <typename Fn>
double MedianMicros(Fn fn, int iters) {
  for (int i = 0; i < 3; ++i) fn(i);  // warm-up
  cudaEvent_t start, stop;
  AWQ_CUDA_CHECK(cudaEventCreate(&start));
  AWQ_CUDA_CHECK(cudaEventCreate(&stop));
  std::vector<double> times;
  for (int rep = 0; rep < 7; ++rep) {
    AWQ_CUDA_CHECK(cudaEventRecord(start));
    for (int i = 0; i < iters; ++i) fn(i);
    AWQ_CUDA_CHECK(cudaEventRecord(stop));
    AWQ_CUDA_CHECK(cudaEventSynchronize(stop));
    float ms = 0.f;
    AWQ_CUDA_CHECK(cudaEventElapsedTime(&ms, start, stop));
    times.push_back(1000.0 * ms / iters);
  }
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  std::sort(times.begin(), times.end());
  return times[times.size() / 2];
}

__global__ void FillPattern(uint32_t* p, size_t n, uint32_t seed) {
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
    p[i] = static_cast<uint32_t>(i * 2654435761u) ^ seed;
}
DeviceBuffer RandomBuffer(size_t bytes, uint32_t seed) {
  DeviceBuffer b((bytes + 3) / 4 * 4);
  FillPattern<<<1024, 256>>>(b.as<uint32_t>(), b.bytes() / 4, seed);
  AWQ_CUDA_LAUNCH_CHECK();
  return b;
}

}  // namespace

double CopyMicros(uint64_t bytes) {
  cu::RequireDevice();
  DeviceBuffer a = RandomBuffer(bytes, 1), b(bytes);
  return MedianMicros([&](int) { AWQ_CUDA_CHECK(cudaMemcpyAsync(b.as<void>(), a.as<void>(), bytes, cudaMemcpyDeviceToDevice)); }, 20);
}

double Int4GemvMicros(int out, int in, int group_size, int batch) {
  cu::RequireDevice();
  const size_t groups = static_cast<size_t>(out) * (in / group_size);
  const size_t weight_bytes = static_cast<size_t>(out) * in / 2 + groups * 3;
  const int copies = static_cast<int>(std::max<size_t>(2, (200u << 20) / weight_bytes + 1));  // > 4x L2
  std::vector<DeviceBuffer> q, s, z;
  std::vector<cu::DeviceInt4> w;
  for (int i = 0; i < copies; ++i) {
    q.push_back(RandomBuffer(static_cast<size_t>(out) * in / 2, 3 * i));
    // Scales: f16 bits from the pattern, masked to a sane exponent range below.
    s.push_back(RandomBuffer(groups * 2, 3 * i + 1));
    z.push_back(RandomBuffer(groups, 3 * i + 2));
    AWQ_CUDA_CHECK(cudaMemset(s.back().as<void>(), 0x1C, groups * 2));  // f16 0x1C1C ~ 0.004
    w.push_back({out, in, group_size, q.back().as<uint8_t>(), s.back().as<__half>(), z.back().as<uint8_t>(), nullptr});
  }
  DeviceBuffer x = RandomBuffer(static_cast<size_t>(batch) * in * 4, 7), y(static_cast<size_t>(batch) * out * 4);
  AWQ_CUDA_CHECK(cudaMemset(x.as<void>(), 0x3C, static_cast<size_t>(batch) * in * 4));  // finite floats
  return MedianMicros([&](int i) { cu::Int4LinearForward(w[i % copies], x.as<float>(), batch, y.as<float>(), false, 0); }, 50);
}

}  // namespace cuda_bench
}  // namespace awqcore
