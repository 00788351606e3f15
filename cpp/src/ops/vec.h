// Small vector primitives for the scalar references and for the op bodies that
// have no hand-written SIMD kernel. Plain loops written so that -O3 can keep
// several independent accumulators in flight. The AVX2 kernels do not call
// these: they live in the ops' *_avx2.cpp files (helpers in simd_avx2.h), and
// each op chooses between its scalar and AVX2 body at run time.
#pragma once

namespace awqcore {

// sum_i a[i] * b[i]. The compiler may not reassociate float adds by itself,
// so one accumulator would make every add wait for the previous one (4 cycles
// of latency per 4-wide vector add). Sixteen partial sums become four
// independent vector accumulators, which keeps the adder busy; the result
// differs from a left-to-right sum only in the order of the n additions.
inline float DotF32(const float* a, const float* b, int n) {
  constexpr int kLanes = 16;
  float partial[kLanes] = {};
  int i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    for (int lane = 0; lane < kLanes; ++lane) partial[lane] += a[i + lane] * b[i + lane];
  }
  for (; i < n; ++i) partial[0] += a[i] * b[i];
  // Pairwise: (0+8) (1+9) ... then halves again.
  for (int width = kLanes / 2; width > 0; width /= 2) {
    for (int lane = 0; lane < width; ++lane) partial[lane] += partial[lane + width];
  }
  return partial[0];
}

// y[i] += a * x[i]
inline void AxpyF32(float a, const float* x, float* y, int n) {
  for (int i = 0; i < n; ++i) y[i] += a * x[i];
}

// y[i] += x[i]
inline void AddF32(const float* x, float* y, int n) {
  for (int i = 0; i < n; ++i) y[i] += x[i];
}

}  // namespace awqcore
