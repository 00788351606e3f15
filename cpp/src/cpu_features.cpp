#include "cpu_features.h"

#include <cstdlib>
#include <cstring>
#include <string>

#include "awqcore/awqcore.h"

#if defined(AWQCORE_HAVE_AVX2_KERNELS) && (defined(__GNUC__) || defined(__clang__))
#include <cpuid.h>
#define AWQCORE_X86_CPUID 1
#endif

namespace awqcore {
namespace {

constexpr Isa kLevels[] = {Isa::kScalar, Isa::kAvx2, Isa::kAvx512, Isa::kAvx512Vnni};

// Whether the build compiled the level's kernel files (CMakeLists.txt
// defines these when the compiler takes the flags).
bool Built(Isa isa) {
  switch (isa) {
    case Isa::kScalar: return true;
#ifdef AWQCORE_HAVE_AVX2_KERNELS
    case Isa::kAvx2: return true;
#endif
#ifdef AWQCORE_HAVE_AVX512_KERNELS
    case Isa::kAvx512: return true;
#endif
#ifdef AWQCORE_HAVE_AVX512VNNI_KERNELS
    case Isa::kAvx512Vnni: return true;
#endif
    default: return false;
  }
}

// Whether the CPU (and OS) run the level's instructions.
// __builtin_cpu_supports reads CPUID once (libgcc's __cpu_model) and accounts
// for the OS enabling the YMM / ZMM and mask register state (XGETBV), so a
// level it reports is usable. Clang's builtin does not know "f16c": that bit
// (CPUID leaf 1, ECX bit 29) is read directly, for both compilers.
bool CpuRuns(Isa isa) {
#ifdef AWQCORE_X86_CPUID
  unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
  const bool f16c = __get_cpuid(1, &eax, &ebx, &ecx, &edx) != 0 && (ecx & bit_F16C) != 0;
  const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && f16c;
  const bool avx512 = avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
  switch (isa) {
    case Isa::kScalar: return true;
    case Isa::kAvx2: return avx2;
    case Isa::kAvx512: return avx512;
    case Isa::kAvx512Vnni: return avx512 && __builtin_cpu_supports("avx512vnni");
  }
  return false;
#else
  return isa == Isa::kScalar;
#endif
}

std::string Available() {
  std::string names;
  for (Isa isa : SupportedIsas()) names += std::string(names.empty() ? "" : " ") + IsaName(isa);
  return names;
}

Isa Detect() {
  const std::vector<Isa> supported = SupportedIsas();
  const char* forced = std::getenv("AWQCORE_ISA");
  if (forced == nullptr || *forced == '\0') return supported.back();
  for (Isa isa : kLevels) {
    if (std::strcmp(forced, IsaName(isa)) != 0) continue;
    if (!IsaSupported(isa)) {
      throw Error(std::string("AWQCORE_ISA=") + forced + ": " +
                  (CpuRuns(isa) ? "this build has no kernels for that level (its compiler lacks the flags)"
                                : "this CPU lacks the instructions of that level") +
                  "; available here: " + Available());
    }
    return isa;
  }
  throw Error(std::string("AWQCORE_ISA=") + forced +
              " is no instruction set level: use one of scalar, avx2, avx512, avx512vnni (available "
              "here: " + Available() + ")");
}

}  // namespace

Isa DetectedIsa() {
  // Initialised once; a throw leaves it uninitialised, so every call reports it.
  static const Isa isa = Detect();
  return isa;
}

bool IsaSupported(Isa isa) { return Built(isa) && CpuRuns(isa); }

std::vector<Isa> AllIsas() { return {std::begin(kLevels), std::end(kLevels)}; }

std::vector<Isa> SupportedIsas() {
  std::vector<Isa> supported;
  for (Isa isa : kLevels) {
    if (IsaSupported(isa)) supported.push_back(isa);
  }
  return supported;
}

const char* IsaName(Isa isa) {
  switch (isa) {
    case Isa::kScalar: return "scalar";
    case Isa::kAvx2: return "avx2";
    case Isa::kAvx512: return "avx512";
    case Isa::kAvx512Vnni: return "avx512vnni";
  }
  return "unknown";
}

std::string CpuKernelsInfo() {
  return std::string(IsaName(DetectedIsa())) + " (available: " + Available() + ")";
}

}  // namespace awqcore
