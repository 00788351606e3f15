// The CUDA backend as the CPU-side code sees it: declarations only, so this
// header compiles in builds without nvcc. The definitions live in cuda/*.cu
// (builds with AWQCORE_WITH_CUDA); cuda_unavailable.cpp defines the test hooks
// in builds without it, so the C++ tests link either way and skip at run time.
//
// Thread safety: a CudaForward is owned by one Session and used by one thread
// at a time; it owns its device memory and stream.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "awqcore/awqcore.h"
#include "model_weights.h"
#include "ops/attention.h"

namespace awqcore {

struct TokenPick;  // sampler.h

// The forward pass on one GPU (cuda/forward.cu): the same contract as
// Transformer (transformer.h), several sequences with their own KV caches
// included; logits copied back to the host in f32.
class CudaForward {
 public:
  virtual ~CudaForward() = default;
  // Appends ids[0 .. n) to sequence seq and writes logits [n, vocab]
  // (all_logits) or the last token's [vocab]. The caller has validated seq,
  // ids and the length.
  virtual void Forward(int seq, const int* ids, int n, bool all_logits, float* logits) = 0;
  // The same, returning the token Sampler::Pick (sampler.h) takes from the
  // last token's logits for `pick`, computed on the device: only the id
  // crosses to the host, not vocab * 4 bytes of logits.
  virtual int ForwardPick(int seq, const int* ids, int n, const TokenPick& pick) = 0;
  // Appends ids[i] to sequence seqs[i] for i < n in one pass over the
  // weights (Transformer::DecodeStep's contract); logits: [n, vocab].
  virtual void DecodeStep(const int* seqs, const int* ids, int n, float* logits) = 0;
  // The same, tokens[i] = Sampler::Pick of row i for picks[i], on the device.
  virtual void DecodeStepPick(const int* seqs, const int* ids, int n, const TokenPick* picks,
                              int* tokens) = 0;
  virtual void Reset() = 0;         // empties every sequence
  virtual void Reset(int seq) = 0;
  virtual int position(int seq) const = 0;
  virtual int max_seq_len() const = 0;
  // Device memory allocated at construction (weights + KV caches + scratch).
  virtual uint64_t device_bytes() const = 0;
};

// Uploads the weights once, allocates the caches of max_sequences sequences
// of max_seq_len tokens and the scratch once. Throws Error "no CUDA device"
// when none is present, and Error naming the sizes when they do not fit in
// free device memory (checked before allocating).
std::unique_ptr<CudaForward> CreateCudaForward(const ModelConfig& config, const ModelWeights& weights,
                                               int max_seq_len, int max_sequences);

// Random weights of `config`'s shapes filled on the device (no file, no host
// copy): the speed benchmark's 7B-shape model. int4 codes uniform in 0..15,
// scales ~1/(8 sqrt(in)) so activations stay O(1) through the layers.
std::unique_ptr<CudaForward> CreateRandomCudaForward(const ModelConfig& config, int group_size,
                                                     int max_seq_len, int max_sequences, uint64_t seed);

// Test hooks: each runs one kernel on host data (upload, launch, download) so
// cpp/tests/test_cuda_kernels.cpp can compare it with the CPU reference. They
// throw Error when built without CUDA or when there is no device.
namespace cuda_test {
// y[t, :] = (residual ? residual[t, :] : 0) + W x[t, :] (+ bias); x: [n, in], y: [n, out].
void Int4Linear(const awqcore::Int4Linear& w, const float* x, int n, const float* residual,
                float* y);
// y[t, r] = sum_c W[r, c] x[t, c]; W: [rows, d] f16 bits.
void F16Linear(const uint16_t* w, int rows, int d, const float* x, int n, float* y);
// out[t, :] = table[ids[t], :] in f32.
void Embedding(const uint16_t* table, int rows, int d, const int* ids, int n, float* out);
void RmsNorm(const float* x, const float* weight, int d, float eps, int n, float* y);
void SwiGlu(const float* gate, const float* up, int n, float* out);
// out[r] = the device's Sampler::Pick (sampler.h) of logits [n, vocab] row r
// for picks[r], r < n.
void PickTokens(const float* logits, int vocab, int n, const TokenPick* picks, int* out);
// q: [n, H*hd] rotated in place; k, v: [n, KV*hd] new rows, rotated (k) and
// written at positions start .. start+n-1 of an f16 cache that already holds
// cache_k/cache_v (f32, [start, KV*hd], rounded to f16 on upload); out: the
// attention output [n, H*hd]. k_out: the rotated k rows as stored (f16 -> f32).
// The tokens belong to sequence `sequence` of a cache holding sequence + 2
// sequences; the others' rows are NaN, so reading them shows in `out`.
// prefill_kernel: attention by AttentionPrefill (tensor cores, one sequence)
// instead of Attention.
void RopeAttention(const AttentionShape& shape, float theta, int start, int n,
                   const float* cache_k, const float* cache_v, float* q, const float* k,
                   const float* v, float* k_out, float* out, int sequence, bool prefill_kernel);
}  // namespace cuda_test

// Benchmark hooks (tools/gpu_bench.cpp; defined only in CUDA builds).
namespace cuda_bench {
// Median microseconds of a device-to-device copy of `bytes`, and of an int4
// linear y[batch, out] = W[out, in] x at the given group size (random data,
// several weight copies rotated so L2 (50 MB) holds none of them); batch >=
// 16 runs the tensor-core GEMM.
double CopyMicros(uint64_t bytes);
double Int4GemvMicros(int out, int in, int group_size, int batch);
}  // namespace cuda_bench

}  // namespace awqcore
