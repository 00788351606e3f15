// What the CUDA kernel tests (test_cuda_*.cpp, one per op family) share:
// the elementwise check against a CPU reference with a tolerance per
// element, and a main() that skips without CUDA.
//
// Tolerances: a sum of n f32 products in any order is within
// gamma(n) * sum|a_i b_i| of the exact sum (awqtest::Gamma, Higham 3.1); the
// references accumulate in double. A wrong nibble, group, head or position
// gives errors the size of the values, far above these bounds.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "awqcore/awqcore.h"
#include "test_harness.h"

namespace awqtest {

constexpr double kU = kUnitRoundoff;  // 2^-24, in the tolerance formulas

// Checks |got - want| <= tol[i] elementwise; prints the worst relative error.
inline void CheckClose(const char* what, const std::vector<float>& got, const std::vector<float>& want,
                       const std::vector<double>& tol) {
  double worst = 0.0, max_ref = 0.0;
  int bad = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    const double diff = std::fabs(static_cast<double>(got[i]) - want[i]);
    if (!(diff <= tol[i])) ++bad;  // NaN (an unwritten output) fails too
    worst = std::max(worst, diff);
    max_ref = std::max(max_ref, std::fabs(static_cast<double>(want[i])));
  }
  std::printf("  %s: max|diff|/max|ref| = %.3g, %d of %zu over tolerance\n", what,
              worst / (max_ref > 0 ? max_ref : 1), bad, want.size());
  CHECK(bad == 0);
}

}  // namespace awqtest

// Without CUDA (build or device) a CUDA test binary prints "skipped: ..." and
// exits with kSkipReturnCode, which ctest reports as skipped.
#define AWQCORE_CUDA_TEST_MAIN()                                                            \
  int main() {                                                                             \
    const std::string info = awqcore::CudaDeviceInfo();                                    \
    if (!awqcore::BuiltWithCuda() || info.rfind("no CUDA device", 0) == 0) {               \
      std::printf("skipped: %s\n", awqcore::BuiltWithCuda() ? "no CUDA device" : "built without CUDA"); \
      return awqtest::kSkipReturnCode;                                                     \
    }                                                                                      \
    std::printf("device: %s\n", info.c_str());                                             \
    return awqtest::RunAll();                                                              \
  }
