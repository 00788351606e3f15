// int4 grouped linear for prefill on tensor cores: y[m, :] = W x[m, :] for
// m < M tokens, with mma.sync.m16n8k16 (f16 inputs, f32 accumulate) and a
// 3-stage cp.async pipeline. Int4Linear (int4_gemv.cu) sends M >= 16 here.
//
// Why tensor cores: the GEMV kernel re-reads W for every 8-token tile and
// multiplies on the CUDA cores (H100 SXM: 67 TFLOP/s f32 peak, and ~7
// instructions per weight per token); mma.sync runs on the tensor cores
// (989 TFLOP/s dense f16 peak), 4096 multiply-adds per warp instruction. A
// Llama-2-7B prefill of 2048 tokens is 2 * 2048 * 6.5e9 = 27 TFLOP.
//
// Tiles: a block computes 64 tokens x 128 outputs with 4 warps (2 x 2, each
// 32 x 64: 2 x 8 mma tiles, 64 f32 accumulators per thread) and walks K in
// steps of 32. Each stage holds x[64, 32] in f32 (10 KiB, rows padded to 40
// floats) and the 128 rows' 32 nibbles (2 KiB), both copied by cp.async
// (16 bytes per copy; rows past M or N are zero-filled), so the copy of step
// k + 2 runs under the math of step k. in % 32 == 0 and g >= 32, so a step
// lies in one group: one scale and zero per row per step.
//
// Fragments (PTX ISA, mma.m16n8k16, g = lane / 4, t = lane % 4):
//   A (x, row-major 16 x 16): {x[g][2t..2t+1], x[g+8][2t..], x[g][2t+8..], x[g+8][2t+8..]}
//   B (W^T, 16 x 8): {W[g][2t..2t+1], W[g][2t+8..2t+9]}: byte t and byte
//     t + 4 of the row's 8-byte slice (low nibble = even column);
//   C: {y[g][2t..2t+1], y[g+8][2t..2t+1]}.
// x is rounded to f16 when the A fragment is built (__floats2half2_rn; |x|
// must stay below 65504, as in f16 AWQ runtimes); a weight is (q - z) * s
// in f16: q - z exactly (0x6400 | q is the f16 1024 + q, minus 1024 + z),
// then one rounding by the product with s. Both round by <= 2^-11 relative,
// so an output is within ~2^-10 sum|w x| of the f32 result (the kernel test
// uses that bound).
//
// Bank conflicts: a 64-bit shared load is served per half-warp (g < 4, 4 t);
// with a 40-float row the half-warp's words are 8 g + 2t (+1) mod 32: all
// distinct. A warp's uint4 reads of W rows touch 8 consecutive 16-byte rows
// (4 lanes each, broadcast): one wavefront.
//
// Not measured: written without a GPU at hand (see the issue's note); the
// kernel test (cpp/tests/test_cuda_kernels.cpp) and tools/gpu_check.sh run it.
#include "common.cuh"

namespace awqcore {
namespace cu {
namespace {

constexpr int kBM = kGemmTileTokens;  // tokens per block: 64
constexpr int kBN = 128;          // output rows per block
constexpr int kBK = 32;           // columns per pipeline step
constexpr int kStages = 3;
constexpr int kThreads = 128;     // 4 warps: 2 along M x 2 along N
constexpr int kXRow = kBK + 8;    // staged x row in floats: 160 B, 16-byte aligned

struct Stage {
  float x[kBM][kXRow];  // [64, 40] f32: columns k0 .. k0 + 31 of 64 tokens
  uint4 w[kBN];         // [128] 32 nibbles of each output row
};

// The two weights of `byte` (low nibble: the even column) as f16 (q - z) * s.
__device__ __forceinline__ uint32_t DequantPair(uint32_t byte, __half2 zero_offset, __half2 scale) {
  const uint32_t bits = (byte & 0x0Fu) | ((byte & 0xF0u) << 12) | 0x64006400u;  // 1024 + q, twice
  const __half2 q_minus_z = __hsub2(*reinterpret_cast<const __half2*>(&bits), zero_offset);
  return HalfBits(__hmul2(q_minus_z, scale));
}

// Copies step kt's x and W tiles into `stage`: x 64 x 8 float4 (4 per
// thread), W 128 rows x 16 bytes (1 per thread).
__device__ __forceinline__ void LoadStage(Stage& stage, const DeviceInt4& w, const float* x, int m_total,
                                          int m0, int n0, int kt) {
  const int k0 = kt * kBK;
  for (int i = threadIdx.x; i < kBM * (kBK / 4); i += kThreads) {
    const int r = i / (kBK / 4), f = i % (kBK / 4), m = m0 + r;
    const float* src = x + static_cast<size_t>(min(m, m_total - 1)) * w.in + k0 + 4 * f;
    CopyAsync16(&stage.x[r][4 * f], src, m < m_total ? 16 : 0);
  }
  for (int r = threadIdx.x; r < kBN; r += kThreads) {
    const int n = n0 + r;
    const uint8_t* src = w.qweight + static_cast<size_t>(min(n, w.out - 1)) * (w.in / 2) + k0 / 2;
    CopyAsync16(&stage.w[r], src, n < w.out ? 16 : 0);
  }
}

// tiles == nullptr: block row blockIdx.y takes tokens [64 y, 64 y + 64) of
// m_total. Grouped (Int4GroupedGemm): it takes tile blockIdx.y, whose slots
// [first, first + count) are its rows 0 .. count - 1 and whose expert's slice
// of the stacked W it multiplies; m_total is unused.
__global__ void __launch_bounds__(kThreads)
    Int4GemmKernel(DeviceInt4 w, const float* __restrict__ x, int m_total, float* __restrict__ y,
                   int accumulate, const MoeTile* __restrict__ tiles) {
  __shared__ Stage stages[kStages];  // 36 KiB
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int g = lane >> 2, t = lane & 3;
  const int warp_m = (warp & 1) * 32, warp_n = (warp >> 1) * 64;
  const int n0 = blockIdx.x * kBN;
  int m0 = blockIdx.y * kBM;
  if (tiles != nullptr) {
    const MoeTile tile = tiles[blockIdx.y];
    if (tile.expert < 0) return;  // the whole block: no barrier is left waiting
    w = ExpertSlice(w, tile.expert);
    x += static_cast<size_t>(tile.first) * w.in;
    y += static_cast<size_t>(tile.first) * w.out;
    m_total = tile.count;
    m0 = 0;
  }
  const int k_steps = w.in / kBK;
  const int groups = w.in / w.group_size;

  float acc[2][8][4];  // [m tile][n tile][fragment]
#pragma unroll
  for (int mi = 0; mi < 2; ++mi)
#pragma unroll
    for (int ni = 0; ni < 8; ++ni)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[mi][ni][e] = 0.f;

#pragma unroll
  for (int s = 0; s < kStages - 1; ++s) {
    if (s < k_steps) LoadStage(stages[s], w, x, m_total, m0, n0, s);
    CommitCopies();  // one group per step, empty past the end, so the wait count holds
  }
  for (int kt = 0; kt < k_steps; ++kt) {
    WaitCopies<kStages - 2>();  // step kt's group is complete
    __syncthreads();            // ... for every thread, and step kt - 1's reads are done
    const int next = kt + kStages - 1;
    if (next < k_steps) LoadStage(stages[next % kStages], w, x, m_total, m0, n0, next);
    CommitCopies();
    const Stage& stage = stages[kt % kStages];
    const int group = kt * kBK / w.group_size;

    // B fragments of the warp's 8 n tiles for both 16-column halves.
    uint32_t b[8][2][2];
#pragma unroll
    for (int ni = 0; ni < 8; ++ni) {
      const int r = warp_n + ni * 8 + g;
      const size_t gi = static_cast<size_t>(min(n0 + r, w.out - 1)) * groups + group;
      const __half s = w.scales[gi];
      const __half z = __ushort_as_half(static_cast<unsigned short>(0x6400 + w.zeros[gi]));  // 1024 + z
      const __half2 scale = __halves2half2(s, s), zero_offset = __halves2half2(z, z);
      const uint4 q = stage.w[r];
      const uint32_t words[4] = {q.x, q.y, q.z, q.w};
#pragma unroll
      for (int half = 0; half < 2; ++half) {
        b[ni][half][0] = DequantPair((words[2 * half] >> (8 * t)) & 0xFFu, zero_offset, scale);
        b[ni][half][1] = DequantPair((words[2 * half + 1] >> (8 * t)) & 0xFFu, zero_offset, scale);
      }
    }
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      uint32_t a[2][4];
#pragma unroll
      for (int mi = 0; mi < 2; ++mi) {
        const int r = warp_m + mi * 16 + g, c = half * 16 + 2 * t;
        const float2 x00 = *reinterpret_cast<const float2*>(&stage.x[r][c]);
        const float2 x10 = *reinterpret_cast<const float2*>(&stage.x[r + 8][c]);
        const float2 x01 = *reinterpret_cast<const float2*>(&stage.x[r][c + 8]);
        const float2 x11 = *reinterpret_cast<const float2*>(&stage.x[r + 8][c + 8]);
        a[mi][0] = HalfBits(__floats2half2_rn(x00.x, x00.y));
        a[mi][1] = HalfBits(__floats2half2_rn(x10.x, x10.y));
        a[mi][2] = HalfBits(__floats2half2_rn(x01.x, x01.y));
        a[mi][3] = HalfBits(__floats2half2_rn(x11.x, x11.y));
      }
#pragma unroll
      for (int mi = 0; mi < 2; ++mi)
#pragma unroll
        for (int ni = 0; ni < 8; ++ni) Mma16816(acc[mi][ni], a[mi], b[ni][half][0], b[ni][half][1]);
    }
  }

#pragma unroll
  for (int mi = 0; mi < 2; ++mi)
#pragma unroll
    for (int ni = 0; ni < 8; ++ni)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int m = m0 + warp_m + mi * 16 + g + (e >= 2 ? 8 : 0);
        const int n = n0 + warp_n + ni * 8 + 2 * t + (e & 1);
        if (m < m_total && n < w.out) {
          float* dst = y + static_cast<size_t>(m) * w.out + n;
          *dst = (accumulate ? *dst : 0.f) + acc[mi][ni][e] + (w.bias ? w.bias[n] : 0.f);
        }
      }
}

}  // namespace

void Int4Gemm(const DeviceInt4& w, const float* x, int n, float* y, bool accumulate, cudaStream_t stream) {
  const dim3 grid((w.out + kBN - 1) / kBN, (n + kBM - 1) / kBM);
  Int4GemmKernel<<<grid, kThreads, 0, stream>>>(w, x, n, y, accumulate ? 1 : 0, nullptr);
  AWQ_CUDA_LAUNCH_CHECK();
}

void Int4GroupedGemm(const DeviceInt4& stacked, const MoeTile* tiles, int max_tiles, const float* x,
                     float* y, cudaStream_t stream) {
  if (max_tiles == 0) return;
  const dim3 grid((stacked.out + kBN - 1) / kBN, max_tiles);
  Int4GemmKernel<<<grid, kThreads, 0, stream>>>(stacked, x, 0, y, 0, tiles);
  AWQ_CUDA_LAUNCH_CHECK();
}

}  // namespace cu
}  // namespace awqcore
