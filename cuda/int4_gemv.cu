// int4 grouped linear y = W x on the GPU, for decode (1 token) and, tiled by
// 8 tokens, for prefill.
//
// Memory arithmetic (the kernel is bandwidth-bound at batch 1): a 4096x4096
// layer at g128 holds 8 MiB of nibbles + 4096*32*3 B = 384 KiB of scales and
// zeros; x is 16 KiB and y 16 KiB. At ~3.0 TB/s of achievable HBM3 bandwidth
// that is ~2.9 us, so every byte of W must be read once, 16 bytes per load,
// coalesced: lane l of a warp reads bytes [16 l, 16 l + 16) of a row's
// 512-byte slice, i.e. columns [32 l, 32 l + 32), which lie in one group
// because in % 32 == 0 and g in {32, 64, 128}.
//
// Layout: a block of kWarps warps computes kRowsPerWarp output rows, split
// along K: warp w takes the 1024-column chunks w, w + kWarps, ... and the
// warps' sums meet in shared memory. The split keeps each warp's chain of
// dependent DRAM round trips short (4096 columns: one chunk per warp); a
// first version with one warp walking a whole row reached 25% of the copy
// bandwidth, bound by that latency chain, not by bytes. x (f32) is re-read
// from L1; each x load serves kRowsPerWarp rows, so 4 rows keep L1 traffic
// (128 B of x per 64 B of weights) under L1's ~128 B/clk/SM.
//
// Dequantization: w = (q - z) * s. q - z is formed exactly in f32 with the
// magic-number trick: the bits 0x4B000000 | q are the float 2^23 + q, so one
// LOP3 plus one FADD of -(2^23 + z) gives q - z with no int->float convert.
// The 32 products of a chunk share one scale, applied once per chunk:
// acc += s * sum_c (q_c - z) x_c, so an element costs SHF+LOP3, FADD, FFMA.
#include "common.cuh"

namespace awqcore {
namespace cu {
namespace {

constexpr int kWarps = 4;        // warps per block, splitting K
constexpr int kRowsPerWarp = 4;  // output rows per block (x reuse, bytes in flight)
constexpr int kMaxTile = 8;      // tokens per launch: weights read once per tile
constexpr int kColsPerLane = 32; // one 16-byte load of nibbles

__device__ __forceinline__ float WarpSum(float v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

// x: [B, in], y: [B, out]. Rows past `out` in the last block are clamped to
// the last row (computed, never stored), so every lane takes part in the
// shuffles.
template <int B>
__global__ void __launch_bounds__(kWarps * 32)
    Int4GemvKernel(DeviceInt4 w, const float* __restrict__ x, float* __restrict__ y,
                   int accumulate) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int row0 = blockIdx.x * kRowsPerWarp;
  const size_t row_bytes = w.in / 2;
  const int groups = w.in / w.group_size;

  int rows[kRowsPerWarp];
#pragma unroll
  for (int r = 0; r < kRowsPerWarp; ++r) rows[r] = min(row0 + r, w.out - 1);

  float acc[B][kRowsPerWarp];
#pragma unroll
  for (int b = 0; b < B; ++b)
#pragma unroll
    for (int r = 0; r < kRowsPerWarp; ++r) acc[b][r] = 0.f;

  // Software pipeline: the next chunk's weights, scales and zeros are
  // loaded before this chunk's arithmetic, so a warp waits on one DRAM round
  // trip per chunk at most, with 4 rows x 16 B x 32 lanes x 2 = 4 KiB in flight.
  constexpr int kStep = kWarps * 32 * kColsPerLane;
  int c0 = (warp * 32 + lane) * kColsPerLane;
  uint4 next[kRowsPerWarp];
  __half next_scale[kRowsPerWarp];
  uint8_t next_zero[kRowsPerWarp];
  auto load = [&](int c) {
#pragma unroll
    for (int r = 0; r < kRowsPerWarp; ++r) {
      const size_t gi = static_cast<size_t>(rows[r]) * groups + c / w.group_size;
      next[r] = __ldg(reinterpret_cast<const uint4*>(w.qweight + rows[r] * row_bytes + c / 2));
      next_scale[r] = __ldg(w.scales + gi);
      next_zero[r] = __ldg(w.zeros + gi);
    }
  };
  if (c0 < w.in) load(c0);
  for (; c0 < w.in; c0 += kStep) {
    uint4 q[kRowsPerWarp];
    float scale[kRowsPerWarp], zoff[kRowsPerWarp];
#pragma unroll
    for (int r = 0; r < kRowsPerWarp; ++r) {
      q[r] = next[r];
      scale[r] = __half2float(next_scale[r]);
      zoff[r] = 8388608.f + static_cast<float>(next_zero[r]);  // 2^23 + z
    }
    if (c0 + kStep < w.in) load(c0 + kStep);
#pragma unroll
    for (int b = 0; b < B; ++b) {
      const float4* xv = reinterpret_cast<const float4*>(x + static_cast<size_t>(b) * w.in + c0);
      float xs[kColsPerLane];
#pragma unroll
      for (int i = 0; i < kColsPerLane / 4; ++i) {
        const float4 v = __ldg(xv + i);
        xs[4 * i] = v.x; xs[4 * i + 1] = v.y; xs[4 * i + 2] = v.z; xs[4 * i + 3] = v.w;
      }
#pragma unroll
      for (int r = 0; r < kRowsPerWarp; ++r) {
        const uint32_t words[4] = {q[r].x, q[r].y, q[r].z, q[r].w};
        float part = 0.f;
#pragma unroll
        for (int k = 0; k < 4; ++k) {
#pragma unroll
          for (int j = 0; j < 8; ++j) {  // column 8k + j is nibble j of word k
            const float qz = __uint_as_float(0x4B000000u | ((words[k] >> (4 * j)) & 0xFu)) - zoff[r];
            part = fmaf(qz, xs[8 * k + j], part);
          }
        }
        acc[b][r] = fmaf(part, scale[r], acc[b][r]);
      }
    }
  }
  __shared__ float sums[kWarps][B * kRowsPerWarp];
#pragma unroll
  for (int b = 0; b < B; ++b) {
#pragma unroll
    for (int r = 0; r < kRowsPerWarp; ++r) {
      const float sum = WarpSum(acc[b][r]);
      if (lane == 0) sums[warp][b * kRowsPerWarp + r] = sum;
    }
  }
  __syncthreads();
  const int i = threadIdx.x;
  if (i < B * kRowsPerWarp && row0 + i % kRowsPerWarp < w.out) {
    const int b = i / kRowsPerWarp, row = row0 + i % kRowsPerWarp;
    float sum = 0.f;
#pragma unroll
    for (int k = 0; k < kWarps; ++k) sum += sums[k][i];
    float* dst = y + static_cast<size_t>(b) * w.out + row;
    *dst = (accumulate ? *dst : 0.f) + sum + (w.bias ? w.bias[row] : 0.f);
  }
}

template <int B>
void LaunchTile(const DeviceInt4& w, const float* x, float* y, bool accumulate,
                cudaStream_t stream) {
  const int blocks = (w.out + kRowsPerWarp - 1) / kRowsPerWarp;
  Int4GemvKernel<B><<<blocks, kWarps * 32, 0, stream>>>(w, x, y, accumulate ? 1 : 0);
  AWQ_CUDA_LAUNCH_CHECK();
}

}  // namespace

void Int4Linear(const DeviceInt4& w, const float* x, int n, float* y, bool accumulate,
                cudaStream_t stream) {
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
