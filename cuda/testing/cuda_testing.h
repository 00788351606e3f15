// Test and benchmark code of the CUDA backend: the awqcore_cuda_testing
// target, which cpp/tests and tools/gpu_bench link and the installed library
// does not contain. Declarations only, so this header compiles without nvcc;
// in builds without CUDA hooks_unavailable.cpp defines the test hooks (they
// throw), so the C++ tests link in every build and skip at run time.
#pragma once

#include <cstdint>
#include <memory>

#include "awqcore/awqcore.h"
#include "forward_pass.h"
#include "model_weights.h"
#include "ops/attention.h"
#include "ops/rope.h"

namespace awqcore {

struct TokenPick;  // sampler.h

// The forward pass of cuda_backend.h with random weights of `config`'s shapes
// filled on the device (no file, no host copy): the speed benchmark's
// 7B-shape model. int4 codes uniform in 0..15, scales ~1/(4.6 sqrt(in)) so
// activations stay O(1) through the layers, norm weights 1. CUDA builds only.
std::unique_ptr<ForwardPass> CreateRandomCudaForward(const ModelConfig& config, int group_size,
                                                     int max_seq_len, int max_sequences, uint64_t seed);

// Test hooks: each runs one kernel on host data (upload, launch, download) so
// cpp/tests/test_cuda_*.cpp can compare it with the CPU reference.
// Outputs start as NaN on the device, so an element a kernel fails to write
// shows. They throw Error when built without CUDA or when there is no device.
namespace cuda_test {
// y[t, :] = (residual ? residual[t, :] : 0) + W x[t, :] (+ bias); x: [n, in], y: [n, out].
void Int4LinearForward(const awqcore::Int4Linear& w, const float* x, int n, const float* residual,
                       float* y);
// y[t, r] = sum_c W[r, c] x[t, c]; W: [rows, d] f16 bits.
void F16Linear(const uint16_t* w, int rows, int d, const float* x, int n, float* y);
// out[t, :] = table[ids[t], :] * scale in f32.
void Embedding(const uint16_t* table, int rows, int d, const int* ids, int n, float scale, float* out);
// y[t, :] = (residual ? residual[t, :] : 0) + rmsnorm(x[t, :]) * weight over
// n rows of d (the residual form is a sandwich norm's add).
void RmsNorm(const float* x, const float* weight, int d, float eps, int n, const float* residual,
             float* y);
// out = act(gate) * up over n elements.
void GatedActivation(Activation act, const float* gate, const float* up, int n, float* out);
// out = cap * tanh(x / cap) over n elements.
void SoftCap(const float* x, int n, float cap, float* out);
// out[r] = the device's Sampler::Pick (sampler.h) of logits [n, vocab] row r
// for picks[r], r < n.
void PickTokens(const float* logits, int vocab, int n, const TokenPick* picks, int* out);
// q: [n, H*hd] rotated in place by `rope` (uploaded as the forward pass
// uploads its tables); k, v: [n, KV*hd] new rows, rotated (k) and written at
// positions start .. start+n-1 of an f16 cache that already holds
// cache_k/cache_v (f32, [start, KV*hd], rounded to f16 on upload); out: the
// attention output [n, H*hd] with shape's scores scale over each token's
// keys (shape.window > 0: the last `window` positions). k_out: the rotated k rows
// as stored (f16 -> f32). The tokens belong to sequence `sequence` of a
// cache holding sequence + 2 sequences; the others' rows are NaN, so reading
// them shows in `out`. prefill_kernel: attention by AttentionPrefill (tensor
// cores, one sequence) instead of Attention.
void RopeAttention(const AttentionShape& shape, const RopeTable& rope, int start, int n,
                   const float* cache_k, const float* cache_v, float* q, const float* k, const float* v,
                   float* k_out, float* out, int sequence, bool prefill_kernel);
// The mixture-of-experts block (cuda/moe.cu) of `moe` (E = moe.gate.size()
// experts, their stacked tensors uploaded as the forward pass uploads them),
// k per token, weights renormalized when `normalize`, on x [n, d]:
// y[t, :] = (residual ? residual[t, :] : 0) + the block's output; experts,
// weights [n, k]: the device router's choice, in rank order. Runs on buffers
// for n + 37 tokens that another call of n + 37 tokens used first.
void MoeForward(const awqcore::MoeWeights& moe, int k, bool normalize, Activation act, const float* x, int n,
                const float* residual, float* y, int* experts, float* weights);
}  // namespace cuda_test

// Benchmark hooks (tools/gpu_bench.cpp; CUDA builds only).
namespace cuda_bench {
// Median microseconds of a device-to-device copy of `bytes`, and of an int4
// linear y[batch, out] = W[out, in] x at the given group size (random data,
// several weight copies rotated so L2 (50 MB) holds none of them); batch >=
// 16 runs the tensor-core GEMM.
double CopyMicros(uint64_t bytes);
double Int4GemvMicros(int out, int in, int group_size, int batch);
}  // namespace cuda_bench

}  // namespace awqcore
