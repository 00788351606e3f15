// Runtime choice of the kernel family (instruction set) for the CPU ops.
//
// The library is compiled for baseline x86-64 (or any other target); only the
// ops' per-level files are compiled with wider instruction sets
// (CMakeLists.txt): *_avx2.cpp with -mavx2 -mfma -mf16c, *_avx512.cpp adding
// -mavx512f -mavx512bw -mavx512vl -mavx512dq, *_avx512vnni.cpp adding
// -mavx512vnni. Their functions are called only when the running CPU has the
// instructions. Everything else, and any CPU without them, uses the portable
// scalar kernels, which stay the reference the tests compare with.
//
// The levels are ordered: each includes everything below it, so an op with no
// kernel at a level runs its best kernel below (isa >= Isa::kAvx2 selects the
// AVX2 bodies also on AVX-512 CPUs).
//
// Thread safety: every function here is safe to call from any thread
// (function-local statics, initialised once).
#pragma once

#include <vector>

namespace awqcore {

enum class Isa {
  kScalar,      // portable C++ (auto-vectorised by the compiler for the baseline target)
  kAvx2,        // x86-64 AVX2 + FMA + F16C
  kAvx512,      // kAvx2 + AVX-512 F, BW, VL, DQ
  kAvx512Vnni,  // kAvx512 + AVX-512 VNNI (vpdpbusd: u8 x s8 dot products into int32)
};

// The kernel family the ops use: the best level this build and CPU run, or
// the one AWQCORE_ISA names (scalar, avx2, avx512, avx512vnni: for
// comparisons and benchmarks of the lower levels). Throws awqcore::Error
// naming the level and the levels available when AWQCORE_ISA names a level
// this CPU (or build) lacks, or an unknown one: a forced level never runs
// instructions the CPU does not have.
Isa DetectedIsa();

// Whether this build has the level's kernels and this CPU runs them
// (ignores AWQCORE_ISA). kScalar always.
bool IsaSupported(Isa isa);

// Every level, lowest first, and those IsaSupported() (the tests run each).
std::vector<Isa> AllIsas();
std::vector<Isa> SupportedIsas();

// "scalar", "avx2", "avx512", "avx512vnni": the names AWQCORE_ISA takes.
const char* IsaName(Isa isa);

}  // namespace awqcore
