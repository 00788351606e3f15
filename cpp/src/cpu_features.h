// Runtime choice of the kernel family (instruction set) for the linear ops.
//
// The library is compiled for baseline x86-64 (or any other target); only the
// *_avx2.cpp files are compiled with -mavx2 -mfma -mf16c, and their functions
// are called only when the running CPU has all three. Everything else, and any
// CPU without them, uses the portable scalar kernels, which stay the reference
// the tests compare with.
//
// Thread safety: DetectedIsa() is safe to call from any thread (a function-
// local static, initialised once).
#pragma once

namespace awqcore {

enum class Isa {
  kScalar,  // portable C++ (auto-vectorised by the compiler for the baseline target)
  kAvx2,    // x86-64 AVX2 + FMA + F16C
};

// The best kernel family this CPU runs. AWQCORE_ISA=scalar in the environment
// forces the portable path (for comparisons and benchmarks of the fallback).
Isa DetectedIsa();

const char* IsaName(Isa isa);

}  // namespace awqcore
