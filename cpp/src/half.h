// IEEE 754 binary16 <-> binary32 conversion by bit manipulation, so the
// runtime needs no F16C instructions and no compiler half type.
//
// binary16: 1 sign bit, 5 exponent bits (bias 15), 10 mantissa bits.
// binary32: 1 sign bit, 8 exponent bits (bias 127), 23 mantissa bits.
// Every binary16 value is exactly representable in binary32, so F16ToF32 is
// exact; F32ToF16 rounds to nearest, ties to even (the IEEE default, and what
// numpy/torch do when they write the f16 tensors of a .awqbin file).
#pragma once

#include <cstdint>
#include <cstring>

namespace awqcore {

inline uint32_t FloatBits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof(u));
  return u;
}

inline float BitsToFloat(uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof(f));
  return f;
}

inline float F16ToF32(uint16_t h) {
  // Shifting exponent and mantissa up by 13 aligns them with the f32 fields;
  // read as an f32 that is the value scaled by 2^-112 (exponent bias 127 vs
  // 15), so multiplying by 2^112 restores it. This is exact for normals and
  // for subnormals alike (a subnormal half becomes a subnormal f32, which the
  // product normalizes), and branch-free so loops over it vectorize.
  const uint32_t exp_mant = static_cast<uint32_t>(h & 0x7fffu) << 13;
  uint32_t bits = FloatBits(BitsToFloat(exp_mant) * 0x1.0p112f);
  // Inf/NaN (exponent all ones): set the f32 exponent to all ones, keeping
  // the mantissa (payload).
  bits |= exp_mant >= (0x7c00u << 13) ? 0x7f800000u : 0u;
  return BitsToFloat(bits | (static_cast<uint32_t>(h & 0x8000u) << 16));
}

inline uint16_t F32ToF16(float f) {
  const uint32_t bits = FloatBits(f);
  const uint16_t sign = static_cast<uint16_t>((bits >> 16) & 0x8000u);
  const uint32_t abs_bits = bits & 0x7fffffffu;
  if (abs_bits > 0x7f800000u) {
    // NaN: quiet it (bit 9) and keep the top of the payload.
    return static_cast<uint16_t>(sign | 0x7e00u | ((abs_bits >> 13) & 0x3ffu));
  }
  if (abs_bits >= 0x477ff000u) {
    // >= 65520 = 65504 + half an ulp (2^5 / 2): rounds to Inf (65504, the
    // largest finite half, has an odd mantissa, so the tie goes up too).
    return static_cast<uint16_t>(sign | 0x7c00u);
  }
  if (abs_bits < (113u << 23)) {
    // Below 2^-14, the smallest normal half: the result is subnormal or zero,
    // an integer multiple of 2^-24. Adding 0.5 (exponent 126) puts the unit in
    // the last place at 2^-24 (0.5 has ulp 2^-24), so the FPU's own
    // round-to-nearest-even rounds to the half grid; the low bits of the sum
    // are then the half's mantissa.
    const float sum = BitsToFloat(abs_bits) + 0.5f;
    return static_cast<uint16_t>(sign | (FloatBits(sum) - FloatBits(0.5f)));
  }
  // Normal: drop 13 mantissa bits with round-to-nearest-even. Adding 0xfff plus
  // the lowest kept bit rounds up exactly when the dropped part is > half, or
  // == half with an odd kept mantissa; a carry into the exponent is correct
  // (it rounds to the next binade).
  const uint32_t kept_lsb = (abs_bits >> 13) & 1u;
  const uint32_t rebiased = abs_bits - ((127u - 15u) << 23);
  return static_cast<uint16_t>(sign | ((rebiased + 0xfffu + kept_lsb) >> 13));
}

}  // namespace awqcore
