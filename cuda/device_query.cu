// CUDA device discovery. Compiled only when CMake finds nvcc (AWQCORE_CUDA);
// the runtime is linked against the static CUDA runtime, so a machine without
// a driver or a GPU reaches the "no CUDA device" branch instead of failing to load.
#include <cuda_runtime.h>

#include <string>

#include "awqcore/awqcore.h"
#include "common.cuh"

namespace awqcore {

bool BuiltWithCuda() { return true; }

std::string CudaDeviceInfo() {
  int count = 0;
  cudaError_t status = cudaGetDeviceCount(&count);
  if (status != cudaSuccess || count == 0) {
    // cudaErrorNoDevice / cudaErrorInsufficientDriver on a CPU-only machine.
    cudaGetLastError();  // clear the sticky error so later queries start clean
    return std::string("no CUDA device (") + cudaGetErrorString(status) + ")";
  }
  cudaDeviceProp prop;
  if (cudaGetDeviceProperties(&prop, 0) != cudaSuccess) {
    cudaGetLastError();
    return "no CUDA device (properties unavailable)";
  }
  return std::string(prop.name) + " (sm_" + std::to_string(prop.major) +
         std::to_string(prop.minor) + ", " +
         std::to_string(prop.totalGlobalMem >> 20) + " MiB, " + std::to_string(count) +
         " device" + (count > 1 ? "s" : "") + ")";
}

namespace cu {

void RequireDevice() {
  int count = 0;
  const cudaError_t status = cudaGetDeviceCount(&count);
  if (status != cudaSuccess || count == 0) {
    cudaGetLastError();
    throw Error(std::string("no CUDA device (") + cudaGetErrorString(status) + ")");
  }
  AWQ_CUDA_CHECK(cudaSetDevice(0));
}

}  // namespace cu
}  // namespace awqcore
