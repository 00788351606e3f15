// The CUDA test hooks (cuda_testing.h) in builds without nvcc: each throws, so
// the C++ tests link in every build and report "skipped" at run time.
#include "cuda_testing.h"

namespace awqcore {
namespace cuda_test {
namespace {
[[noreturn]] void Unavailable() { throw Error("awqcore was built without CUDA"); }
}  // namespace

void Int4LinearForward(const awqcore::Int4Linear&, const float*, int, const float*, float*) { Unavailable(); }
void F16Linear(const uint16_t*, int, int, const float*, int, float*) { Unavailable(); }
void Embedding(const uint16_t*, int, int, const int*, int, float, float*) { Unavailable(); }
void RmsNorm(const float*, const float*, int, float, int, const float*, float*) { Unavailable(); }
void GatedActivation(Activation, const float*, const float*, int, float*) { Unavailable(); }
void SoftCap(const float*, int, float, float*) { Unavailable(); }
void PickTokens(const float*, int, int, const TokenPick*, int*) { Unavailable(); }
void RopeAttention(const AttentionShape&, const RopeTable&, int, int, const float*,
                   const float*, float*, const float*, const float*, float*, float*, int, bool) {
  Unavailable();
}
void MoeForward(const awqcore::MoeWeights&, int, bool, Activation, const float*, int, const float*, float*, int*,
                float*) {
  Unavailable();
}
}  // namespace cuda_test
}  // namespace awqcore
