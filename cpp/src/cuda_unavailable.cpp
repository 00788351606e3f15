// The CUDA backend (cuda_backend.h) in builds without nvcc: it throws, naming
// the reason. In CUDA builds cuda/forward.cu defines it and this file is empty.
#include "cuda_backend.h"

namespace awqcore {
#ifndef AWQCORE_WITH_CUDA
std::unique_ptr<ForwardPass> CreateCudaForward(const ModelConfig&, const ModelWeights&, int, int) {
  throw Error("awqcore was built without CUDA");
}
#endif
}  // namespace awqcore
