// The CUDA test hooks (cuda_backend.h) in builds without nvcc: each throws, so
// the C++ tests link in every build and report "skipped" at run time. In CUDA
// builds cuda/test_hooks.cu defines them and this file is empty.
#include "cuda_backend.h"

namespace awqcore {
#ifndef AWQCORE_WITH_CUDA
namespace cuda_test {
namespace {
[[noreturn]] void Unavailable() { throw Error("awqcore was built without CUDA"); }
}  // namespace

void Int4Linear(const awqcore::Int4Linear&, const float*, int, const float*, float*) { Unavailable(); }
void F16Linear(const uint16_t*, int, int, const float*, int, float*) { Unavailable(); }
void Embedding(const uint16_t*, int, int, const int*, int, float*) { Unavailable(); }
void RmsNorm(const float*, const float*, int, float, int, float*) { Unavailable(); }
void SwiGlu(const float*, const float*, int, float*) { Unavailable(); }
void PickTokens(const float*, int, int, const TokenPick*, int*) { Unavailable(); }
void RopeAttention(const AttentionShape&, float, int, int, const float*, const float*, float*,
                   const float*, const float*, float*, float*, int, bool) {
  Unavailable();
}
}  // namespace cuda_test
#endif
}  // namespace awqcore
