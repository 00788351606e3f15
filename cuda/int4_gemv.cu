// int4 grouped linear y = W x on the GPU, for decode (1 token) and, tiled by
// 8 tokens, for up to kTensorCoreMinTokens - 1 tokens (more go to
// int4_gemm.cu).
//
// Memory arithmetic (the kernel is bandwidth-bound at batch 1): a 4096x4096
// layer at g128 holds 8 MiB of nibbles + 4096*32*3 B = 384 KiB of scales and
// zeros; x is 16 KiB and y 16 KiB. At ~3.0 TB/s of achievable HBM3 bandwidth
// that is ~2.9 us, so every byte of W is read once, 16 bytes per load,
// coalesced: lane l of a warp reads bytes [16 l, 16 l + 16) of a row's
// 512-byte slice, i.e. columns [32 l, 32 l + 32), which lie in one group
// because in % 32 == 0 and g in {32, 64, 128}. The file's layout already
// gives each lane 32 consecutive-k nibbles per uint4, so no repacking.
//
// x is staged per block in shared memory with an XOR swizzle (float4 i of
// 32-column chunk j lives at slot 8 j + (i ^ (j & 7))), so the 8 lanes of a
// quarter-warp read 8 different bank quads and a warp-wide float4 read costs
// the minimum 4 wavefronts. Read straight from global memory instead, lane
// l's 8 float4 loads of x[32 l .. 32 l + 32) would touch 32 different
// 128-byte lines per warp-wide load (32 L1 wavefronts for 512 B instead of
// 4): 256 L1 cycles per 2 KiB of weights, ~4.6 us per SM for a 4096x4096
// layer before any DRAM time. A block of 8 warps covers 8 R rows, so one
// staging of x (B * 4 bytes per column) serves 8 R * 0.5 bytes per column of
// weights: x / W traffic = B / R. Weights for a whole step (D chunks of 1024
// columns, R rows: R D 16-byte loads per lane) are issued before the x
// staging and its barriers, so the L2 round trip of x hides under the DRAM
// round trip of W. Bytes in flight at B = 1 (R = 1, D = 2, 4 blocks = 32
// warps per SM): out * 512 * D = 4 MiB for 4096x4096, above the ~3 MB
// (3 TB/s * ~1 us) that Little's law asks for.
//
// At batch 1 the kernel is bound by instruction issue rather than memory:
// per 32 weights a warp issues ~7 instructions (per lane: PRMT + FADD + FFMA
// per weight, plus x loads, staging, addressing), ~3.5 us of issue per
// scheduler at 1.96 GHz for the 4096x4096 layer against 2.9 us of DRAM time
// (the README gives the measured bandwidth). Fewer instructions per weight
// would need f16x2 dequantization (two weights per LOP3 / HSUB2) with HFMA2
// or mma.sync, both of which take x in f16.
//
// Dequantization: w = (q - z) * s, q - z formed exactly in f32 with the
// magic-number trick: the bits 0x4B000000 | q are the float 2^23 + q, so one
// PRMT (byte q into 0x4B0000qq) plus one FADD of -(2^23 + z) gives q - z with
// no int->float convert. A word's 8 nibbles take AND + SHF + AND + 8 PRMT
// (1.4 ops per weight instead of SHF + LOP3 = 2). The 32 products of a chunk
// share one scale, applied once per chunk: acc += s * sum_c (q_c - z) x_c, so
// an element costs 1.4 + FADD + B FFMA, each q - z computed once and reused
// for all B tokens of the tile.
#include "common.cuh"

namespace awqcore {
namespace cu {
namespace {

constexpr int kWarps = 8;         // warps per block, each taking R rows
constexpr int kThreads = kWarps * 32;
constexpr int kMaxTile = 8;       // tokens per launch: weights read once per tile
constexpr int kChunkCols = 1024;  // one warp-wide 16-byte load per row: 32 lanes x 32 columns

// B tokens, R rows per warp, D chunks of 1024 columns per step. x: [B, in],
// y: [B, out]. Rows past `out` in the last block are clamped to the last row
// (computed, never stored), so every lane takes part in the shuffles; chunks
// past `in` load zero weights against zero x.
template <int B, int R, int D>
__global__ void __launch_bounds__(kThreads, R == 1 ? 4 : (B <= 5 ? 2 : 1))
    Int4GemvKernel(DeviceInt4 w, const float* __restrict__ x, float* __restrict__ y,
                   int accumulate) {
  constexpr int kStepCols = D * kChunkCols;
  __shared__ float4 xs[B][kStepCols / 4];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int row0 = (blockIdx.x * kWarps + warp) * R;
  const size_t row_bytes = w.in / 2;
  const int groups = w.in / w.group_size;

  int rows[R];
#pragma unroll
  for (int r = 0; r < R; ++r) rows[r] = min(row0 + r, w.out - 1);

  float acc[B][R];
#pragma unroll
  for (int b = 0; b < B; ++b)
#pragma unroll
    for (int r = 0; r < R; ++r) acc[b][r] = 0.f;

  for (int c0 = 0; c0 < w.in; c0 += kStepCols) {
    // 1. This step's weights, scales, zeros: R * D independent 16-byte loads.
    uint4 q[R][D];
    float scale[R][D], zoff[R][D];
#pragma unroll
    for (int d = 0; d < D; ++d) {
      const int c = c0 + d * kChunkCols + lane * 32;
#pragma unroll
      for (int r = 0; r < R; ++r) {
        if (c < w.in) {
          const size_t gi = static_cast<size_t>(rows[r]) * groups + c / w.group_size;
          q[r][d] = __ldg(reinterpret_cast<const uint4*>(w.qweight + rows[r] * row_bytes + c / 2));
          scale[r][d] = __half2float(__ldg(w.scales + gi));
          zoff[r][d] = 8388608.f + static_cast<float>(__ldg(w.zeros + gi));  // 2^23 + z
        } else {
          q[r][d] = make_uint4(0, 0, 0, 0);
          scale[r][d] = 0.f;
          zoff[r][d] = 8388608.f;
        }
      }
    }
    // 2. Stage x[:, c0 .. c0 + kStepCols) (coalesced float4, zero past in).
    __syncthreads();  // the previous step's reads of xs are done
    for (int i = threadIdx.x; i < B * kStepCols / 4; i += kThreads) {
      const int b = i / (kStepCols / 4), f = i % (kStepCols / 4), c = c0 + 4 * f;
      xs[b][Swz(f)] = c < w.in ? __ldg(reinterpret_cast<const float4*>(x + static_cast<size_t>(b) * w.in + c))
                               : make_float4(0.f, 0.f, 0.f, 0.f);
    }
    __syncthreads();
    // 3. Dequantize each weight once, use it for all B tokens.
#pragma unroll
    for (int d = 0; d < D; ++d) {
      const int j = d * 32 + lane;  // chunk of 32 columns within the step
      float part[B][R];
#pragma unroll
      for (int b = 0; b < B; ++b)
#pragma unroll
        for (int r = 0; r < R; ++r) part[b][r] = 0.f;
#pragma unroll
      for (int k = 0; k < 4; ++k) {  // word k: columns 8k .. 8k + 7
        float qz[R][8];
#pragma unroll
        for (int r = 0; r < R; ++r) {
          const uint32_t word = k == 0 ? q[r][d].x : k == 1 ? q[r][d].y : k == 2 ? q[r][d].z : q[r][d].w;
          Dequant8(word, zoff[r][d], qz[r]);
        }
#pragma unroll
        for (int b = 0; b < B; ++b) {
          const float4 x0 = xs[b][8 * j + ((2 * k) ^ (lane & 7))];
          const float4 x1 = xs[b][8 * j + ((2 * k + 1) ^ (lane & 7))];
          const float xv[8] = {x0.x, x0.y, x0.z, x0.w, x1.x, x1.y, x1.z, x1.w};
#pragma unroll
          for (int r = 0; r < R; ++r)
#pragma unroll
            for (int e = 0; e < 8; ++e) part[b][r] = fmaf(qz[r][e], xv[e], part[b][r]);
        }
      }
#pragma unroll
      for (int b = 0; b < B; ++b)
#pragma unroll
        for (int r = 0; r < R; ++r) acc[b][r] = fmaf(part[b][r], scale[r][d], acc[b][r]);
    }
  }
#pragma unroll
  for (int b = 0; b < B; ++b) {
#pragma unroll
    for (int r = 0; r < R; ++r) {
      const float sum = WarpSum(acc[b][r]);
      const int row = row0 + r;
      if (lane == 0 && row < w.out) {
        float* dst = y + static_cast<size_t>(b) * w.out + row;
        *dst = (accumulate ? *dst : 0.f) + sum + (w.bias ? w.bias[row] : 0.f);
      }
    }
  }
}

// No split-K: a block's rows span all of `in`, and a warp walks it in steps
// of D * 1024 columns. Splitting `in` across blocks pays where a layer has
// too few rows to fill the GPU and many steps per row; in Llama/Qwen shapes
// the few-row layers are the k/v projections, whose `in` is d: Qwen2.5-1.5B's
// 256 x 1536 and SmolLM2's 192 x 576 are one step per warp already (latency
// of one load round trip, which splitting cannot shorten), and every
// Llama-2-7B layer has >= 4096 rows, >= 128 blocks of 32 rows for 132 SMs.
// A split would also have to keep each token's summation order independent
// of the batch (GenerateBatch's bitwise guarantee), i.e. split boundaries on
// 2048 columns, which these shapes do not have.
//
// Tile shapes: R rows per warp and D chunks per step, staged x = B * D * 4 KiB
// (<= 32 KiB of static shared memory). Chosen by measurement (CUDA events,
// us for 4096x4096 / 11008x4096 / 4096x11008): B = 1: R = 1, D = 2
// (8.8 / 18.3 / 19.3; R = 2, D = 4 gave 10.2 / 22.2 / 21.3); B = 2: R = 1,
// D = 1; B = 3..4: R = 2 (13.7 / 34.6 / 32.6 at B = 4; R = 4: 15.2 / 31.7 /
// 36.7); B >= 5: R = 4 (21.2 / 57.0 / 50.1 at B = 8; R = 2: 26.6 / 71.8 /
// 67.3), where x / W traffic (B / R) would otherwise exceed 2.
template <int B>
void LaunchTile(const DeviceInt4& w, const float* x, float* y, bool accumulate,
                cudaStream_t stream) {
  constexpr int R = B <= 2 ? 1 : B <= 4 ? 2 : 4;
  constexpr int D = B == 1 ? 2 : 1;
  const int rows_per_block = kWarps * R;
  const int blocks = (w.out + rows_per_block - 1) / rows_per_block;
  Int4GemvKernel<B, R, D><<<blocks, kThreads, 0, stream>>>(w, x, y, accumulate ? 1 : 0);
  AWQ_CUDA_LAUNCH_CHECK();
}

}  // namespace

void Int4LinearForward(const DeviceInt4& w, const float* x, int n, float* y, bool accumulate,
                       cudaStream_t stream) {
  if (n >= kTensorCoreMinTokens) {
    Int4Gemm(w, x, n, y, accumulate, stream);
    return;
  }
  for (int t = 0; t < n; t += kMaxTile) {
    const int tile = n - t < kMaxTile ? n - t : kMaxTile;
    const float* xt = x + static_cast<size_t>(t) * w.in;
    float* yt = y + static_cast<size_t>(t) * w.out;
    switch (tile) {
      case 1: LaunchTile<1>(w, xt, yt, accumulate, stream); break;
      case 2: LaunchTile<2>(w, xt, yt, accumulate, stream); break;
      case 3: LaunchTile<3>(w, xt, yt, accumulate, stream); break;
      case 4: LaunchTile<4>(w, xt, yt, accumulate, stream); break;
      case 5: LaunchTile<5>(w, xt, yt, accumulate, stream); break;
      case 6: LaunchTile<6>(w, xt, yt, accumulate, stream); break;
      case 7: LaunchTile<7>(w, xt, yt, accumulate, stream); break;
      default: LaunchTile<8>(w, xt, yt, accumulate, stream); break;
    }
  }
}

}  // namespace cu
}  // namespace awqcore
