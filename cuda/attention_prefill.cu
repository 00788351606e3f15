// Causal GQA attention of a prefill chunk on tensor cores (FlashAttention-2's
// recurrence): n tokens of ONE sequence at consecutive positions start ..
// start + n - 1, each attending to its sequence's cache rows 0 .. its own, or
// on a sliding layer (window W > 0) rows max(0, p - W + 1) .. p of the token
// at p. Scores are (q . k) * shape.ScoreScale().
//
// Why: Attention (attention.cu) runs a block per (split, head, token), so each
// query token re-reads all its keys: a 2048-token prefill on Llama-2-7B
// (H = KV = 32, hd = 128, 32 layers) moves sum_t (t + 1) rows x 512 B (K and
// V) x 32 heads x 32 layers = 1.1 TB through L2, on the CUDA cores. Here a
// block takes 64 queries of one head, so each K/V row it loads serves 64
// queries: 32 KiB of K and V per 64-key tile against 4 x 64 x 64 x 128 =
// 2.1 MFLOP of mma, 64 FLOP per byte; the same prefill moves 17.7 GB
// (sum over the 32 query tiles of (i + 1) x 32 KiB, x 32 heads x 32 layers)
// through L2 for its 1.1 TFLOP of QK^T and PV (2 x 2 x 2048^2 / 2 x 128 x
// 32 heads x 32 layers; the diagonal tiles' masked halves add 3%).
//
// Block = 64 query tokens x one head, 4 warps of 16 query rows. GQA: the heads
// of a kv group are adjacent in blockIdx.x, so their blocks run together and
// share the K/V rows through L2; sharing them inside a block would need G x
// 64 query rows (each 16-row warp already holds 64 f32 accumulators and 32
// registers of Q at hd = 128) or G x 16-token blocks (4 warps divide among G
// heads only for G in {1, 2, 4}, not Qwen's 6 or the tests' 3). Query tiles
// run latest-first (blockIdx.y reversed): the longest causal ranges start
// first, the short ones fill in at the end.
//
// Per key tile of 64 (K and V double-buffered in shared memory, cp.async):
//   S = Q K^T    mma m16n8k16: A = Q (registers, f16), B = K rows (ldmatrix)
//   mask         causal, only on the tiles that cross the warp's diagonal;
//                the window, only on tiles that reach below the window of
//                the warp's last row (tiles below its first row's window
//                are skipped, as those past its last row)
//   softmax      running max m and sum l per row in f32; p = 2^(s c - m c),
//                c = log2(e) scale, rescaling O and l by 2^((m - m') c)
//   O += P V     A = P (the S accumulators as f16: C's row/column pairs are
//                A's), B = V rows (ldmatrix.trans)
// and out = O / l in f32. Tiles past the block's last query are never loaded
// and a warp skips the tiles past its own last query; keys past the block's
// range (and rows past max_seq_len) are zero-filled by cp.async, never read,
// so a masked key multiplies a finite 0, never another sequence's NaN.
//
// A row whose keys in the tiles so far are all masked (its window starts in
// a later tile, or a padding row at positions >= start + n) still has m =
// -inf: the exponents then use 0 in place of m c (p = 2^-inf = 0, alpha =
// 1 on O = l = 0), so no -inf - -inf = NaN arises. Every row < n sees its
// own key, so it ends with l >= 1.
//
// Precision: q is rounded to f16 (|q| < 65504, as x in Int4Gemm), the scale c
// applied in f32 after the mma; p is rounded to f16 for PV (2^-11 relative,
// or 2^-25 absolute below 2^-14), l sums the f32 p. With q as f16 and the f16
// cache, the output is within ~2^-11 max|v| of the exact softmax (weights
// w_i (1 + rho_i), |rho_i| <= 2^-11: sum |w_i rho_i v_i| <= 2^-11 max|v|),
// plus f32 sums (tensor-core adds truncate: <= 2u each) and ex2.approx;
// rounding q costs a further 2 x 2^-11 sum_d |q_d k_d| scale of max|v|
// at most (the test gives its reference the f16 q, as it gives it the f16
// cache; its tolerance is derived there).
//
// Shared memory (rows padded by 8 halves, 16 bytes): K, V [2 stages][64][hd +
// 8] f16 = 69632 B at hd = 128, 36864 B at hd = 64. ldmatrix reads 8 rows of
// 16 bytes per phase; a row is hd + 8 halves = 68 (hd 128) or 36 (hd 64)
// words, 4 r mod 32 for rows r = 0..7: the 8 rows cover the 32 banks once.
// cp.async writes 8 consecutive 16-byte pieces of a row per phase: distinct.
//
// Registers (ptxas, sm_90 / sm_80, no spills): 236 / 226 at hd = 128, so 2
// blocks per SM (136 KiB of shared memory), 137 at hd = 64 (3 blocks).
// Capping hd = 128 at 168 for 3 blocks spills 80 bytes. The grid is H x
// ceil(n / 64) blocks: a 256-token chunk of a 32-head model is 128 blocks,
// about one per H100 SM; longer chunks (or a split of the keys) fill more.
//
// Not measured: written without a GPU at hand; the kernel test
// (cpp/tests/test_cuda_attention.cpp) runs it where there is one.
#include <cmath>
#include <string>

#include "common.cuh"

namespace awqcore {
namespace cu {
namespace {

constexpr int kTileQ = 64;   // query tokens per block
constexpr int kTileK = 64;   // keys per pipeline step
constexpr int kWarps = kTileQ / 16;
constexpr int kThreads = 32 * kWarps;
constexpr int kPad = 8;      // halves per shared row beyond hd: 16 bytes, see the top comment

template <int kHd>
constexpr int kRow = kHd + kPad;  // shared row in halves
template <int kHd>
constexpr size_t kSmemBytes = 2 * 2 * kTileK * kRow<kHd> * sizeof(__half);  // K, V x 2 stages

constexpr float kLog2e = 1.4426950408889634f;  // scores in log2 units, so softmax uses ex2

// 2^x, ex2.approx (2 ulp, PTX ISA): 2^-inf = +0; results below 2^-126 flush
// to 0, far under the f32 resolution of l >= 1.
__device__ __forceinline__ float Exp2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}

// Four 8 x 8 f16 matrices; lanes 8i .. 8i + 7 give the row addresses of
// matrix i, and lane (g, t) receives row g, columns 2t, 2t + 1 of each (with
// .trans: column g, rows 2t, 2t + 1). volatile and a "memory" clobber: the
// data comes from cp.async and __syncthreads, which the compiler cannot see
// through, so the loads must stay after them.
__device__ __forceinline__ void LoadMatrixX4(uint32_t (&r)[4], uint32_t address) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(address)
               : "memory");
}
__device__ __forceinline__ void LoadMatrixX4Trans(uint32_t (&r)[4], uint32_t address) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(address)
               : "memory");
}

// Copies keys key0 .. key0 + 63 of K and V (this head's hd columns) into one
// stage; keys >= key_end are zero-filled from a clamped (valid) address.
// 64 rows x hd / 8 pieces of 16 bytes each for K and V: 8 + 8 per thread at
// hd = 128, consecutive threads on consecutive pieces of a row (coalesced).
template <int kHd>
__device__ __forceinline__ void LoadKvTile(__half* k_stage, __half* v_stage, const __half* k_head,
                                           const __half* v_head, int kv_width, int key0, int key_end) {
  constexpr int kPieces = kHd / 8;  // per row
#pragma unroll
  for (int i = 0; i < kTileK * kPieces / kThreads; ++i) {
    const int piece = threadIdx.x + i * kThreads;
    const int r = piece / kPieces, c = 8 * (piece % kPieces), key = key0 + r;
    const size_t src = static_cast<size_t>(min(key, key_end - 1)) * kv_width + c;
    const int bytes = key < key_end ? 16 : 0;
    CopyAsync16(k_stage + r * kRow<kHd> + c, k_head + src, bytes);
    CopyAsync16(v_stage + r * kRow<kHd> + c, v_head + src, bytes);
  }
}

template <int kHd>
__global__ void __launch_bounds__(kThreads)
    AttentionPrefillKernel(AttentionParams params, float score_scale, TokenPlaces places, int n,
                           const float* __restrict__ q,
                           const __half* __restrict__ k_cache, const __half* __restrict__ v_cache,
                           float* __restrict__ out) {
  constexpr int kR = kRow<kHd>;
  constexpr int kSteps = kHd / 16;  // 16-column steps of hd (S's k; O's 8-column tiles in pairs)
  extern __shared__ uint4 smem[];   // uint4: 16-byte aligned for cp.async and ldmatrix
  __half* k_tiles = reinterpret_cast<__half*>(smem);  // [2][64][kR]
  __half* v_tiles = k_tiles + 2 * kTileK * kR;        // [2][64][kR]

  const int h = blockIdx.x;
  const int q0 = (gridDim.y - 1 - blockIdx.y) * kTileQ;  // latest tiles first
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int g = lane >> 2, t = lane & 3;  // fragment row / column pair
  const int start = places.position[0];
  const AttentionShape& shape = params.shape;
  const int kv_width = shape.num_kv_heads * kHd;
  const int kv_head = h / (shape.num_heads / shape.num_kv_heads);
  const size_t first_row = static_cast<size_t>(places.sequence[0]) * params.max_seq_len;
  const float scale = score_scale * kLog2e;  // c
  const int window = shape.window;
  const __half* k_head = k_cache + first_row * kv_width + kv_head * kHd;
  const __half* v_head = v_cache + first_row * kv_width + kv_head * kHd;

  // The block's queries are q0 .. q_end - 1; the last reads keys up to start
  // + q_end - 1 (never past the sequence's rows, whatever start is), the
  // first from its window's first key: tiles first_tile .. num_tiles - 1.
  const int q_end = min(q0 + kTileQ, n);
  const int key_end = min(start + q_end, params.max_seq_len);
  const int num_tiles = (key_end + kTileK - 1) / kTileK;
  const int first_tile = window > 0 ? max(0, start + q0 - window + 1) / kTileK : 0;
  // This warp's rows: tokens q0 + 16 warp + {g, g + 8}, positions from warp_pos.
  const int row0 = q0 + 16 * warp + g, row1 = row0 + 8;
  const int warp_pos = start + q0 + 16 * warp;
  const bool warp_has_rows = q0 + 16 * warp < n;  // else all its rows are padding
  const int warp_last = start + min(q0 + 16 * warp + 16, n) - 1;  // position of its last row < n
  // Keys below warp_below are outside every one of its rows' windows; keys
  // below warp_mask_below are outside some row's (row 15's window starts
  // 15 keys after row 0's).
  const int warp_below = window > 0 ? warp_pos - window + 1 : 0;
  const int warp_mask_below = window > 0 ? warp_pos + 15 - window + 1 : 0;

  LoadKvTile<kHd>(k_tiles, v_tiles, k_head, v_head, kv_width, first_tile * kTileK, key_end);
  CommitCopies();

  // Q as A fragments, f16: qa[s] covers columns 16 s .. 16 s + 15; rows past n are 0.
  uint32_t qa[kSteps][4];
  {
    const size_t width = static_cast<size_t>(shape.num_heads) * kHd;
    const float* q_row0 = q + min(row0, n - 1) * width + h * kHd + 2 * t;
    const float* q_row1 = q + min(row1, n - 1) * width + h * kHd + 2 * t;
    const float2 zero = make_float2(0.f, 0.f);
#pragma unroll
    for (int s = 0; s < kSteps; ++s) {
      const float2 x00 = row0 < n ? *reinterpret_cast<const float2*>(q_row0 + 16 * s) : zero;
      const float2 x10 = row1 < n ? *reinterpret_cast<const float2*>(q_row1 + 16 * s) : zero;
      const float2 x01 = row0 < n ? *reinterpret_cast<const float2*>(q_row0 + 16 * s + 8) : zero;
      const float2 x11 = row1 < n ? *reinterpret_cast<const float2*>(q_row1 + 16 * s + 8) : zero;
      qa[s][0] = HalfBits(__floats2half2_rn(x00.x, x00.y));
      qa[s][1] = HalfBits(__floats2half2_rn(x10.x, x10.y));
      qa[s][2] = HalfBits(__floats2half2_rn(x01.x, x01.y));
      qa[s][3] = HalfBits(__floats2half2_rn(x11.x, x11.y));
    }
  }

  float o[2 * kSteps][4];  // O [16 rows][hd] as 8-column C fragments, unnormalised
#pragma unroll
  for (int d = 0; d < 2 * kSteps; ++d)
#pragma unroll
    for (int e = 0; e < 4; ++e) o[d][e] = 0.f;
  float m[2] = {-INFINITY, -INFINITY};  // running max of the raw scores of rows g, g + 8
  float l[2] = {0.f, 0.f};              // this thread's columns' share of the row sums

  // ldmatrix row addresses of this lane (bytes, stage 0, tile origin):
  // K: matrices (keys 0-7, cols 0-7), (0-7, 8-15), (8-15, 0-7), (8-15, 8-15)
  //    -> b0, b1 of keys 0-7, then of keys 8-15 (B[k][n] = K[key n][col k]);
  // V: (keys 0-7, cols 0-7), (8-15, 0-7), (0-7, 8-15), (8-15, 8-15), .trans
  //    -> b0, b1 of columns 0-7, then of 8-15 (B[k][n] = V[key k][col n]).
  const uint32_t k_lane = SharedAddress(k_tiles + ((lane & 7) + ((lane >> 4) << 3)) * kR + ((lane >> 3) & 1) * 8);
  const uint32_t v_lane = SharedAddress(v_tiles + ((lane & 7) + ((lane >> 3) & 1) * 8) * kR + (lane >> 4) * 8);
  constexpr uint32_t kStageBytes = kTileK * kR * sizeof(__half);

  for (int tile = first_tile; tile < num_tiles; ++tile) {
    WaitCopies<0>();  // this thread's copies of `tile`
    __syncthreads();  // everyone's; and every warp is done reading tile - 1's stage
    const int step = tile - first_tile;  // the stage of `tile` is step & 1
    if (tile + 1 < num_tiles) {
      const int next = (step + 1) & 1;
      LoadKvTile<kHd>(k_tiles + next * kTileK * kR, v_tiles + next * kTileK * kR, k_head, v_head,
                      kv_width, (tile + 1) * kTileK, key_end);
    }
    CommitCopies();
    const int key0 = tile * kTileK;
    // Nothing to write, all above its diagonal, or all below its windows.
    if (!warp_has_rows || key0 > warp_last || key0 + kTileK <= warp_below) continue;
    const uint32_t stage = (step & 1) * kStageBytes;

    // S [16 rows][64 keys] as 8 C fragments of 8 keys.
    float s[8][4];
#pragma unroll
    for (int j = 0; j < 8; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) s[j][e] = 0.f;
#pragma unroll
    for (int ks = 0; ks < kSteps; ++ks)
#pragma unroll
      for (int kp = 0; kp < 4; ++kp) {  // keys 16 kp .. 16 kp + 15
        uint32_t b[4];
        LoadMatrixX4(b, k_lane + stage + (16 * kp * kR + 16 * ks) * sizeof(__half));
        Mma16816(s[2 * kp], qa[ks], b[0], b[1]);
        Mma16816(s[2 * kp + 1], qa[ks], b[2], b[3]);
      }

    // Mask where the tile reaches past the warp's first position, or below
    // the window of its last row.
    if (key0 + kTileK - 1 > warp_pos || key0 < warp_mask_below) {
#pragma unroll
      for (int j = 0; j < 8; ++j)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int key = key0 + 8 * j + 2 * t + (e & 1);
          const int pos = warp_pos + g + (e >> 1) * 8;
          if (key > pos || (window > 0 && key <= pos - window)) s[j][e] = -INFINITY;
        }
    }

    // Online softmax. A row's 64 scores are spread over the 4 lanes of a quad
    // (t = 0..3, 16 each): the max is reduced over the quad, l only at the end.
    float tile_max[2] = {-INFINITY, -INFINITY};
#pragma unroll
    for (int j = 0; j < 8; ++j) {
      tile_max[0] = fmaxf(tile_max[0], fmaxf(s[j][0], s[j][1]));
      tile_max[1] = fmaxf(tile_max[1], fmaxf(s[j][2], s[j][3]));
    }
    float alpha[2], m_scaled[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      tile_max[r] = fmaxf(tile_max[r], __shfl_xor_sync(0xffffffffu, tile_max[r], 1));
      tile_max[r] = fmaxf(tile_max[r], __shfl_xor_sync(0xffffffffu, tile_max[r], 2));
      const float m_new = fmaxf(m[r], tile_max[r]);  // -inf while every key so far is masked
      // 0 on a row's first visible tile (m = -inf); 1 while none is visible.
      alpha[r] = m_new == -INFINITY ? 1.f : Exp2((m[r] - m_new) * scale);
      m[r] = m_new;
      m_scaled[r] = m_new == -INFINITY ? 0.f : m_new * scale;
      l[r] *= alpha[r];
    }
#pragma unroll
    for (int d = 0; d < 2 * kSteps; ++d) {
      o[d][0] *= alpha[0];
      o[d][1] *= alpha[0];
      o[d][2] *= alpha[1];
      o[d][3] *= alpha[1];
    }
    // P as A fragments of the 4 16-key steps of PV: C tile 2 ks gives a0 (row
    // g) and a1 (row g + 8) of keys 16 ks + 2t.., tile 2 ks + 1 gives a2, a3.
    uint32_t pa[4][4];
#pragma unroll
    for (int j = 0; j < 8; ++j) {
      const float p0 = Exp2(fmaf(s[j][0], scale, -m_scaled[0]));
      const float p1 = Exp2(fmaf(s[j][1], scale, -m_scaled[0]));
      const float p2 = Exp2(fmaf(s[j][2], scale, -m_scaled[1]));
      const float p3 = Exp2(fmaf(s[j][3], scale, -m_scaled[1]));
      l[0] += p0 + p1;
      l[1] += p2 + p3;
      pa[j >> 1][(j & 1) * 2] = HalfBits(__floats2half2_rn(p0, p1));
      pa[j >> 1][(j & 1) * 2 + 1] = HalfBits(__floats2half2_rn(p2, p3));
    }

    // O += P V.
#pragma unroll
    for (int ks = 0; ks < 4; ++ks)
#pragma unroll
      for (int dp = 0; dp < kSteps; ++dp) {  // columns 16 dp .. 16 dp + 15
        uint32_t b[4];
        LoadMatrixX4Trans(b, v_lane + stage + (16 * ks * kR + 16 * dp) * sizeof(__half));
        Mma16816(o[2 * dp], pa[ks], b[0], b[1]);
        Mma16816(o[2 * dp + 1], pa[ks], b[2], b[3]);
      }
  }

  // out = O / l; l >= 1 for a valid row (its maximum's own term is 2^0).
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    l[r] += __shfl_xor_sync(0xffffffffu, l[r], 1);
    l[r] += __shfl_xor_sync(0xffffffffu, l[r], 2);
  }
  const size_t width = static_cast<size_t>(shape.num_heads) * kHd;
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int row = r == 0 ? row0 : row1;
    if (row >= n) continue;
    const float inv_l = 1.f / l[r];
    float* dst = out + row * width + h * kHd + 2 * t;
#pragma unroll
    for (int d = 0; d < 2 * kSteps; ++d)
      *reinterpret_cast<float2*>(dst + 8 * d) = make_float2(o[d][2 * r] * inv_l, o[d][2 * r + 1] * inv_l);
  }
}

template <int kHd>
void Launch(const AttentionParams& params, TokenPlaces places, int n, const float* q, const __half* k_cache,
            const __half* v_cache, float* out, cudaStream_t stream) {
  // Above 48 KiB of dynamic shared memory needs the opt-in, once per kernel
  // (a host-side attribute, outside any stream or captured graph).
  static const cudaError_t opt_in = cudaFuncSetAttribute(
      AttentionPrefillKernel<kHd>, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(kSmemBytes<kHd>));
  AWQ_CUDA_CHECK(opt_in);
  const dim3 grid(params.shape.num_heads, (n + kTileQ - 1) / kTileQ);
  AttentionPrefillKernel<kHd><<<grid, kThreads, kSmemBytes<kHd>, stream>>>(params, params.shape.ScoreScale(), places, n, q, k_cache, v_cache,
                                                                            out);
  AWQ_CUDA_LAUNCH_CHECK();
}

}  // namespace

bool AttentionPrefillSupports(const AttentionShape& shape) {
  return (shape.head_dim == 64 || shape.head_dim == 128) && shape.num_kv_heads > 0 &&
         shape.num_heads % shape.num_kv_heads == 0;
}

void AttentionPrefill(const AttentionParams& params, TokenPlaces places, int n, const float* q,
                      const __half* k_cache, const __half* v_cache, float* out, cudaStream_t stream) {
  const AttentionShape& shape = params.shape;
  if (!AttentionPrefillSupports(shape)) {
    throw Error("AttentionPrefill: head_dim " + std::to_string(shape.head_dim) + " with " +
                std::to_string(shape.num_heads) + " heads and " + std::to_string(shape.num_kv_heads) +
                " kv heads is not supported (head_dim 64 or 128, kv heads dividing heads)");
  }
  if (n == 0) return;
  if (shape.head_dim == 64) {
    Launch<64>(params, places, n, q, k_cache, v_cache, out, stream);
  } else {
    Launch<128>(params, places, n, q, k_cache, v_cache, out, stream);
  }
}

}  // namespace cu
}  // namespace awqcore
