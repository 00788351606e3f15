#include "cpu_features.h"

#include <cstdlib>
#include <cstring>

#if defined(AWQCORE_HAVE_AVX2_KERNELS) && (defined(__GNUC__) || defined(__clang__))
#include <cpuid.h>
#endif

namespace awqcore {
namespace {

bool CpuHasAvx2FmaF16c() {
#if defined(AWQCORE_HAVE_AVX2_KERNELS) && (defined(__GNUC__) || defined(__clang__))
  // __builtin_cpu_supports reads CPUID once (libgcc's __cpu_model); it also
  // accounts for the OS enabling the YMM state (XGETBV), so AVX2 is usable.
  // Clang's builtin does not know "f16c": that bit (CPUID leaf 1, ECX bit 29)
  // is read directly, for both compilers.
  unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
  const bool f16c = __get_cpuid(1, &eax, &ebx, &ecx, &edx) != 0 && (ecx & bit_F16C) != 0;
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && f16c;
#else
  return false;
#endif
}

Isa Detect() {
  const char* forced = std::getenv("AWQCORE_ISA");
  if (forced != nullptr && std::strcmp(forced, "scalar") == 0) return Isa::kScalar;
  return CpuHasAvx2FmaF16c() ? Isa::kAvx2 : Isa::kScalar;
}

}  // namespace

Isa DetectedIsa() {
  static const Isa isa = Detect();
  return isa;
}

const char* IsaName(Isa isa) { return isa == Isa::kAvx2 ? "avx2" : "scalar"; }

}  // namespace awqcore
