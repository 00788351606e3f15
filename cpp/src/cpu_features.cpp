#include "cpu_features.h"

#include <cstdlib>
#include <cstring>

#if defined(AWQCORE_HAVE_AVX2_KERNELS) && (defined(__GNUC__) || defined(__clang__))
#include <cpuid.h>
#endif

#include "ops/linear_kernels.h"

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

#ifndef AWQCORE_HAVE_AVX2_KERNELS
// Built without the AVX2 files (not x86-64, or not GCC/Clang): DetectedIsa()
// never returns kAvx2, so these exist only to link and are never reached; a
// caller forcing Isa::kAvx2 gets the scalar result. (Attention needs no stub:
// ops/attention.cpp calls its AVX2 heads only when they are built.)
void Int4RowsAvx2(const Int4Linear& layer, int row0, int rows, const float* x, int ldx,
                  int num_tokens, float* y, int ldy) {
  Int4RowsScalar(layer, row0, rows, x, ldx, num_tokens, y, ldy);
}
void Int4RowsQ8Avx2(const Int4Linear& layer, int row0, int rows, const Q8Activations& x,
                    float* y, int ldy) {
  Int4RowsQ8Scalar(layer, row0, rows, x, y, ldy);
}
void TableRowsAvx2(const EmbeddingTable& table, int row0, int rows, const float* x, int ldx,
                   int num_tokens, float* y, int ldy) {
  TableRowsScalar(table, row0, rows, x, ldx, num_tokens, y, ldy);
}
void TableRowsQ8Avx2(const EmbeddingTable& table, int row0, int rows, const Q8Activations& x,
                     float* y, int ldy) {
  TableRowsQ8Scalar(table, row0, rows, x, y, ldy);
}
void QuantizeRowAvx2(const float* x, int in, Q8Layout layout, int8_t* q, float* block_scales,
                     int* block_sums) {
  QuantizeRowScalar(x, in, layout, q, block_scales, block_sums);
}
#endif

const char* IsaName(Isa isa) { return isa == Isa::kAvx2 ? "avx2" : "scalar"; }

}  // namespace awqcore
