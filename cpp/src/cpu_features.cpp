#include "cpu_features.h"

#include <cstdlib>
#include <cstring>

namespace awqcore {
namespace {

bool CpuHasAvx2FmaF16c() {
#if defined(AWQCORE_HAVE_AVX2_KERNELS) && (defined(__GNUC__) || defined(__clang__))
  // __builtin_cpu_supports reads CPUID once (libgcc's __cpu_model); it also
  // accounts for the OS enabling the YMM state (XGETBV), so AVX2 is usable.
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
         __builtin_cpu_supports("f16c");
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
