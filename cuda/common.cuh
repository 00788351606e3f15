// Shared helpers of the CUDA backend: error checking, device buffers, the
// device helpers of the tensor-core kernels, and the launchers of every
// kernel family (one .cu file each), so forward.cu and the test hooks call
// the same code.
//
// Activations are f32 on the device (as on the CPU, so GPU and CPU logits
// differ only by summation order and the f16 KV cache); weights stay in the
// file's int4/f16 encodings. Positions are read from device memory
// (TokenPlaces) so that one captured decode graph serves every step.
#pragma once

#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <memory>
#include <string>

#include "awqcore/awqcore.h"
#include "forward_pass.h"
#include "ops/attention.h"

namespace awqcore {

struct TokenPick;  // sampler.h

namespace cu {

[[noreturn]] inline void ThrowCuda(cudaError_t status, const char* what, const char* file,
                                   int line) {
  throw Error(std::string("CUDA error in ") + what + " (" + file + ":" + std::to_string(line) +
              "): " + cudaGetErrorString(status));
}

#define AWQ_CUDA_CHECK(expr)                                                 \
  do {                                                                       \
    cudaError_t status_ = (expr);                                            \
    if (status_ != cudaSuccess) ::awqcore::cu::ThrowCuda(status_, #expr, __FILE__, __LINE__); \
  } while (0)
// After a launch: configuration errors show up here, faults at the next sync.
#define AWQ_CUDA_LAUNCH_CHECK() AWQ_CUDA_CHECK(cudaGetLastError())

// Throws Error("no CUDA device ...") unless a device is usable; selects device 0.
void RequireDevice();

// Owning device allocation (cudaMalloc), freed on destruction. Move-only.
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  explicit DeviceBuffer(size_t bytes) : bytes_(bytes) {
    if (bytes > 0) AWQ_CUDA_CHECK(cudaMalloc(&ptr_, bytes));
  }
  ~DeviceBuffer() {
    if (ptr_) cudaFree(ptr_);
  }
  DeviceBuffer(DeviceBuffer&& o) noexcept : ptr_(o.ptr_), bytes_(o.bytes_) {
    o.ptr_ = nullptr;
    o.bytes_ = 0;
  }
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept {
    std::swap(ptr_, o.ptr_);
    std::swap(bytes_, o.bytes_);
    return *this;
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;

  template <typename T>
  T* as() const { return static_cast<T*>(ptr_); }
  size_t bytes() const { return bytes_; }
  // Synchronous host -> device copy of `bytes` from `src` (bytes <= bytes()).
  void Upload(const void* src, size_t bytes) {
    AWQ_CUDA_CHECK(cudaMemcpy(ptr_, src, bytes, cudaMemcpyHostToDevice));
  }

 private:
  void* ptr_ = nullptr;
  size_t bytes_ = 0;
};

// ---- warp reductions (all 32 lanes take part and get the result) ----
template <typename T>
__device__ __forceinline__ T WarpSum(T v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}
__device__ __forceinline__ float WarpMax(float v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, offset));
  return v;
}

// ---- shared by the tensor-core kernels (int4_gemm.cu, attention_prefill.cu), sm_80+ ----
__device__ __forceinline__ uint32_t SharedAddress(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// 16-byte global -> shared copy, asynchronous; src_bytes = 0 writes zeros and
// reads nothing. The "memory" clobbers keep the compiler from moving shared
// accesses across the copy and the wait (the __syncthreads after the wait
// publishes the data to the other threads).
__device__ __forceinline__ void CopyAsync16(void* dst, const void* src, int src_bytes) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(SharedAddress(dst)), "l"(src),
               "r"(src_bytes)
               : "memory");
}
__device__ __forceinline__ void CommitCopies() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
// Waits until at most kPending committed groups of this thread are in flight.
template <int kPending>
__device__ __forceinline__ void WaitCopies() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(kPending) : "memory");
}

__device__ __forceinline__ uint32_t HalfBits(__half2 h) { return *reinterpret_cast<uint32_t*>(&h); }

// c += a b for one 16 x 8 x 16 tile: mma.sync.m16n8k16, f16 inputs, f32
// accumulators. Fragments (PTX ISA, g = lane / 4, t = lane % 4):
//   a: {A[g][2t..2t+1], A[g+8][2t..2t+1], A[g][2t+8..2t+9], A[g+8][2t+8..2t+9]}
//   b: {B[2t..2t+1][g], B[2t+8..2t+9][g]}
//   c: {C[g][2t..2t+1], C[g+8][2t..2t+1]}
__device__ __forceinline__ void Mma16816(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
      "{%8, %9}, {%0, %1, %2, %3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// An int4 linear on the device, in the file's layout (docs/format.md):
// qweight [out, in/2] bytes, scales [out, in/g] f16, zeros [out, in/g] u8.
// in % 32 == 0 (g in {32, 64, 128}), so each 16-byte load of a row covers 32
// columns of exactly one group.
struct DeviceInt4 {
  int out = 0, in = 0, group_size = 0;
  const uint8_t* qweight = nullptr;
  const __half* scales = nullptr;
  const uint8_t* zeros = nullptr;
  const float* bias = nullptr;  // [out] or nullptr
};

// Expert e's [out, in] slice of stacked experts [E, out, in] (docs/format.md:
// expert-major, each expert laid out as one 4-bit linear): `w` describes
// expert 0 (out, in of one expert) at the start of the stacked tensors.
__host__ __device__ inline DeviceInt4 ExpertSlice(DeviceInt4 w, int e) {
  const size_t groups = static_cast<size_t>(w.out) * (w.in / w.group_size);
  w.qweight += static_cast<size_t>(e) * w.out * (w.in / 2);
  w.scales += static_cast<size_t>(e) * groups;
  w.zeros += static_cast<size_t>(e) * groups;
  return w;
}

// q - z for the 8 nibbles of `word` (columns 8k .. 8k + 7 of a lane's chunk
// of 32 for word k), exact in f32: the bits 0x4B0000qq are the float 2^23 + q,
// so one PRMT and one FADD of zoff = 2^23 + z give q - z (int4_gemv.cu). lo
// holds the even columns' nibbles in bytes 0..3, hi the odd.
__device__ __forceinline__ void Dequant8(uint32_t word, float zoff, float (&qz)[8]) {
  const uint32_t lo = word & 0x0F0F0F0Fu, hi = (word >> 4) & 0x0F0F0F0Fu;
#pragma unroll
  for (int k = 0; k < 4; ++k) {
    // Result bytes: [src byte k, 0, 0, 0x4B] = float 2^23 + nibble.
    qz[2 * k] = __uint_as_float(__byte_perm(lo, 0x4B000000u, 0x7540 | k)) - zoff;
    qz[2 * k + 1] = __uint_as_float(__byte_perm(hi, 0x4B000000u, 0x7540 | k)) - zoff;
  }
}

// Swizzled float4 slot of float4 f (4 columns) of an x row staged in shared
// memory: chunk j = f / 8 (32 columns) keeps its 8 slots, permuted by j & 7,
// so the 8 lanes of a quarter-warp that read float4 i of chunks j .. j + 7
// hit 8 different bank quads (int4_gemv.cu).
__device__ __forceinline__ int Swz(int f) { return (f & ~7) | ((f & 7) ^ ((f >> 3) & 7)); }

// ---- int4_gemv.cu ----
// y[t, :] = (accumulate ? y[t, :] : 0) + W x[t, :] + bias, t < n; x: [n, in], y: [n, out].
// n < kTensorCoreMinTokens: tiles of up to 8 tokens share each weight load
// (CUDA cores, f32); from kTensorCoreMinTokens tokens on: Int4Gemm (tensor
// cores, f16 inputs).
constexpr int kTensorCoreMinTokens = 16;
void Int4LinearForward(const DeviceInt4& w, const float* x, int n, float* y, bool accumulate,
                       cudaStream_t stream);

// ---- int4_gemm.cu ----
// The same product on tensor cores, x and W rounded to f16 (accumulation in
// f32): for prefill. x and y 16-byte aligned.
void Int4Gemm(const DeviceInt4& w, const float* x, int n, float* y, bool accumulate, cudaStream_t stream);

// Tokens per block of the GEMM (its M tile): a grouped call's tiles hold at
// most this many tokens of one expert.
constexpr int kGemmTileTokens = 64;

// ---- moe.cu ----
// One tile of a grouped expert product: slots [first, first + count) of the
// slot-ordered activations, all routed to `expert`; expert < 0 marks a tile
// past the last used one (its block exits).
struct MoeTile {
  int expert, first, count;
};
// Tokens per tile of the CUDA-core expert GEMV (decode and batched decode):
// each tile reads its expert's rows once for up to this many tokens.
constexpr int kMoeGemvTileTokens = 8;
// The most experts MoeForward takes: a token's probabilities live in the
// top-k kernel's shared memory (4 B each, 16 KiB) and the grouping's slot
// and tile starts in the plan kernel's (8 B each, 32 KiB), both within the
// 48 KiB a block gets without opting in.
constexpr int kMaxExperts = 4096;

// Tiles a grouping of `slots` routed (token, rank) pairs over num_experts
// experts can need at tile_tokens per tile: sum over experts of
// ceil(count_e / tile_tokens) < slots / tile_tokens + (experts with a token).
int MoeMaxTiles(int slots, int num_experts, int tile_tokens);

// A mixture-of-experts layer on the device (docs/format.md): the router and
// the stacked experts, each DeviceInt4 expert 0's view of [E, out, in]
// (ExpertSlice gives expert e's). Activation and sizes as the CPU's
// ModelConfig: k experts per token, their weights renormalized when
// `normalize` (norm_topk_prob).
struct DeviceMoe {
  int num_experts = 0, k = 0;
  bool normalize = false;
  const float* router = nullptr;  // [E, d] f32
  DeviceInt4 gate, up;            // [E, f, d]
  DeviceInt4 down;                // [E, d, f]
};

// MoeForward's device scratch for calls of up to max_tokens tokens (T =
// max_tokens * k slots) of one layer shape, allocated once. Sized for both
// groupings (GEMV tiles of 8, GEMM tiles of 64). Move-only, owns its memory.
class MoeBuffers {
 public:
  MoeBuffers() = default;
  MoeBuffers(int max_tokens, int k, int num_experts, int d, int f)
      : max_tokens(max_tokens),
        k(k),
        num_experts(num_experts),
        d(d),
        f(f),
        logits(Floats(static_cast<size_t>(max_tokens) * num_experts)),
        experts(Ints(max_tokens * k)),
        weights(Floats(static_cast<size_t>(max_tokens) * k)),
        slot_of(Ints(max_tokens * k)),
        slot_token(Ints(max_tokens * k)),
        tiles(MaxTiles(max_tokens, k, num_experts) * sizeof(MoeTile)),
        x(Floats(static_cast<size_t>(max_tokens) * k * d)),
        gate(Floats(static_cast<size_t>(max_tokens) * k * f)),
        up(Floats(static_cast<size_t>(max_tokens) * k * f)),
        out(Floats(static_cast<size_t>(max_tokens) * k * d)) {}
  // Device bytes of the buffers of these sizes (the forward pass's memory check).
  static size_t Bytes(int max_tokens, int k, int num_experts, int d, int f) {
    const size_t slots = static_cast<size_t>(max_tokens) * k;
    return 4 * static_cast<size_t>(max_tokens) * num_experts +
           4 * slots * (4 + 2 * static_cast<size_t>(d) + 2 * static_cast<size_t>(f)) +
           MaxTiles(max_tokens, k, num_experts) * sizeof(MoeTile);
  }

  // The sizes the buffers were made for: MoeForward refuses calls beyond them.
  int max_tokens = 0, k = 0, num_experts = 0, d = 0, f = 0;
  DeviceBuffer logits;      // [max_tokens, E] f32: router logits
  DeviceBuffer experts;     // [T] int: expert of (token t, rank r) at t * k + r
  DeviceBuffer weights;     // [T] f32: its router weight
  DeviceBuffer slot_of;     // [T] int: slot of (t, r) in expert order
  DeviceBuffer slot_token;  // [T] int: token whose activations slot s holds
  DeviceBuffer tiles;       // [MaxTiles] MoeTile
  DeviceBuffer x;           // [T, d] f32: each slot's input, grouped by expert
  DeviceBuffer gate, up;    // [T, f] f32: gate (then act(gate) * up) and up of each slot
  DeviceBuffer out;         // [T, d] f32: down of each slot

 private:
  static DeviceBuffer Ints(int count) { return DeviceBuffer(static_cast<size_t>(count) * sizeof(int)); }
  static DeviceBuffer Floats(size_t count) { return DeviceBuffer(count * sizeof(float)); }
  static size_t MaxTiles(int max_tokens, int k, int num_experts) {
    // GEMV groupings serve calls below kTensorCoreMinTokens tokens, GEMM ones the rest.
    const int gemv_tokens = max_tokens < kTensorCoreMinTokens - 1 ? max_tokens : kTensorCoreMinTokens - 1;
    const int gemv = MoeMaxTiles(gemv_tokens * k, num_experts, kMoeGemvTileTokens);
    const int gemm = MoeMaxTiles(max_tokens * k, num_experts, kGemmTileTokens);
    return static_cast<size_t>(gemv > gemm ? gemv : gemm);
  }
};

// The MoE block on n tokens (the CPU's MoeRouterForward + MoeExpertsForward):
// h [n, d] the post-attention norm's output; y [n, d] = (accumulate ? y : 0) +
// sum over ranks r, in rank order, of w[t, r] down_e(act(gate_e h) * up_e h).
// Each chosen expert's weights are read once per call (per tile of up to 8
// tokens, or 64 from kTensorCoreMinTokens tokens on, where the expert
// linears run on tensor cores with Int4Gemm's roundings). A token's result
// does not depend on the other tokens of the call below kTensorCoreMinTokens
// tokens, bit for bit. y must not alias h. Throws Error unless 1 <= k <= E <=
// kMaxExperts and the buffers were made for this shape and at least n tokens.
void MoeForward(const DeviceMoe& moe, Activation act, const float* h, int n, const MoeBuffers& buffers,
                float* y, bool accumulate, cudaStream_t stream);

// ---- int4_gemm.cu (grouped) ----
// y[s, :] = W_e x[s, :] for the slots s of every tile: x [slots, in], y
// [slots, out] in slot order, `stacked` expert 0's view of [E, out, in]
// experts, tiles [max_tiles] with count <= kGemmTileTokens. Tensor cores, the
// roundings of Int4Gemm.
void Int4GroupedGemm(const DeviceInt4& stacked, const MoeTile* tiles, int max_tiles, const float* x,
                     float* y, cudaStream_t stream);

// ---- f16_ops.cu ----
// y[t, r] = sum_c W[r, c] x[t, c]; W: [rows, d] f16, d % 8 == 0.
void F16Linear(const __half* w, int rows, int d, const float* x, int n, float* y,
               cudaStream_t stream);
// out[t, :] = table[ids[t], :] * scale in f32; ids on the device.
void Embedding(const __half* table, int d, const int* ids, int n, float scale, float* out,
               cudaStream_t stream);

// ---- norm.cu ----
// y = x / sqrt(mean(x^2) + eps) * weight per row of d, n rows; y may equal x.
// The per-head q/k norms are n * heads rows of d = hd.
void RmsNorm(const float* x, const float* weight, int d, float eps, int n, float* y,
             cudaStream_t stream);
// y += x / sqrt(mean(x^2) + eps) * weight per row: a sandwich norm's output
// added to the residual stream y (y != x).
void AddRmsNorm(const float* x, const float* weight, int d, float eps, int n, float* y,
                cudaStream_t stream);
// out = act(gate) * up over `count` elements, act = silu or GELU's tanh
// approximation (ops/activation.h); out may equal gate.
void GatedActivation(Activation act, const float* gate, const float* up, size_t count, float* out,
                     cudaStream_t stream);
// x = cap * tanh(x / cap) over `count` elements (the final logit soft-cap).
void SoftCap(float* x, size_t count, float cap, cudaStream_t stream);

// ---- sampling.cu ----
// out[r] = Sampler::Pick(logits[r, :], picks[r]) (sampler.h) for r < n;
// logits [n, vocab], picks [n], out [n], all on the device; vocab >= 1. The
// same token as the host up to f32 expf rounding at a CDF step (see the file).
void PickTokens(const float* logits, int vocab, int n, const TokenPick* picks, int* out,
                cudaStream_t stream);

// ---- attention.cu ----
// The widest head the split kernel takes: its hd / 8 column chunks of a row
// are read by one thread each of a 256-thread block.
constexpr int kMaxHeadDim = 2048;
// One layer's attention: its description as the CPU has it (ops/attention.h:
// heads, scores' scale, sliding window) and the cache rows per sequence.
struct AttentionParams {
  AttentionShape shape;  // hd % 8 == 0
  int max_seq_len = 0;   // cache rows per sequence
};
// Where the tokens of a pass go, device arrays [n]: token t is at
// position[t] of sequence sequence[t], whose cache rows are
// [sequence * max_seq_len, (sequence + 1) * max_seq_len) of a layer's cache
// [sequences * max_seq_len, KV*hd].
struct TokenPlaces {
  const int* position = nullptr;
  const int* sequence = nullptr;
};
// Number of sequence splits of the decode/prefill attention kernel and the
// partial-result scratch it needs: [n, H, splits, hd + 2] floats.
int AttentionSplits(int max_seq_len);
size_t AttentionScratchFloats(const AttentionParams& params, int n);
// The device copy of a rotary table (ops/rope.h): [2, positions, hd/2], cos
// then sin, the host's values bit for bit.
DeviceBuffer UploadRopeTable(const RopeTable& table);
// Rotates q [n, H*hd] in place, rotates k and writes k, v [n, KV*hd] as f16
// into token t's cache row (its sequence's, at its position).
// rope_cos/sin: [max_seq_len, hd/2] (RopeTable's, ops/rope.h).
void RopeWriteCache(const AttentionParams& params, const float* rope_cos, const float* rope_sin,
                    TokenPlaces places, int n, float* q, const float* k, const float* v,
                    __half* k_cache, __half* v_cache, cudaStream_t stream);
// out [n, H*hd] = causal GQA attention of token t's q over its sequence's
// cache rows (0 or the window's first) .. position[t], written by
// RopeWriteCache before. Any head_dim % 8 == 0 up to 2048.
void Attention(const AttentionParams& params, TokenPlaces places, int n, const float* q,
               const __half* k_cache, const __half* v_cache, float* scratch, float* out,
               cudaStream_t stream);

// ---- attention_prefill.cu ----
// The same attention for a prefill chunk on tensor cores, when all n tokens
// belong to ONE sequence at consecutive positions: token t at position
// places.position[0] + t of sequence places.sequence[0] (both read on the
// device; start + n <= max_seq_len). q rounded to f16, P to f16, f32
// accumulation: within ~1e-3 max|v| of Attention. No scratch.
bool AttentionPrefillSupports(const AttentionShape& shape);  // hd 64 or 128
// Throws Error when !AttentionPrefillSupports(params.shape).
void AttentionPrefill(const AttentionParams& params, TokenPlaces places, int n, const float* q,
                      const __half* k_cache, const __half* v_cache, float* out, cudaStream_t stream);

// ---- forward.cu ----
// Fills weights on the device where no host data exists: the benchmark's
// random model (cuda/testing/random_model.cu, a test-only target).
class DeviceFill {
 public:
  virtual ~DeviceFill() = default;
  // p[0 .. n) = random bytes & mask (int4 codes, zero points).
  virtual void Bytes(uint8_t* p, size_t n, uint8_t mask) = 0;
  // p[0 .. n) = uniform in [lo, hi) as f16; the constant lo when hi == lo.
  virtual void Halves(__half* p, size_t n, float lo, float hi) = 0;
  // p[0 .. n) = value (norm weights).
  virtual void Floats(float* p, size_t n, float value) = 0;
  // p[0 .. n) = uniform in [lo, hi) (routers).
  virtual void UniformFloats(float* p, size_t n, float lo, float hi) = 0;
};
// The forward pass of cuda_backend.h with every weight of `config`'s shapes
// (int4 layers at group_size) filled by `fill` instead of uploaded.
std::unique_ptr<ForwardPass> CreateFilledCudaForward(const ModelConfig& config, int group_size,
                                                     DeviceFill& fill, int max_seq_len,
                                                     int max_sequences);

}  // namespace cu
}  // namespace awqcore
