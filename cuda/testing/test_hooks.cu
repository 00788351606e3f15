// cuda_test:: (cuda_testing.h): each kernel family run on host data, for
// cpp/tests/test_cuda_*.cpp. Synchronous; allocates per call.
#include <algorithm>
#include <vector>

#include "common.cuh"
#include "cuda_testing.h"
#include "sampler.h"

namespace awqcore {
namespace cuda_test {
namespace {

using cu::DeviceBuffer;

template <typename T>
DeviceBuffer Up(const T* src, size_t count) {
  DeviceBuffer b(count * sizeof(T));
  if (src) b.Upload(src, count * sizeof(T));
  return b;
}
// Fills with NaN bits first, so an element the kernel fails to write shows up.
DeviceBuffer Poisoned(size_t floats) {
  DeviceBuffer b(floats * sizeof(float));
  AWQ_CUDA_CHECK(cudaMemset(b.as<void>(), 0xFF, floats * sizeof(float)));
  return b;
}
void Down(float* dst, const DeviceBuffer& b, size_t floats) {
  AWQ_CUDA_CHECK(cudaDeviceSynchronize());
  AWQ_CUDA_CHECK(cudaMemcpy(dst, b.as<void>(), floats * sizeof(float), cudaMemcpyDeviceToHost));
}

}  // namespace

void Int4LinearForward(const awqcore::Int4Linear& w, const float* x, int n, const float* residual, float* y) {
  cu::RequireDevice();
  const size_t groups = static_cast<size_t>(w.out) * (w.in / w.group_size);
  DeviceBuffer q = Up(w.qweight, static_cast<size_t>(w.out) * w.in / 2);
  DeviceBuffer s = Up(w.scales, groups), z = Up(w.zeros, groups);
  DeviceBuffer b = w.bias ? Up(w.bias, w.out) : DeviceBuffer();
  DeviceBuffer dx = Up(x, static_cast<size_t>(n) * w.in);
  DeviceBuffer dy = residual ? Up(residual, static_cast<size_t>(n) * w.out) : Poisoned(static_cast<size_t>(n) * w.out);
  cu::DeviceInt4 dw{w.out, w.in, w.group_size, q.as<uint8_t>(), s.as<__half>(), z.as<uint8_t>(), b.as<float>()};
  cu::Int4LinearForward(dw, dx.as<float>(), n, dy.as<float>(), residual != nullptr, 0);
  Down(y, dy, static_cast<size_t>(n) * w.out);
}

void F16Linear(const uint16_t* w, int rows, int d, const float* x, int n, float* y) {
  cu::RequireDevice();
  DeviceBuffer dw = Up(w, static_cast<size_t>(rows) * d), dx = Up(x, static_cast<size_t>(n) * d);
  DeviceBuffer dy = Poisoned(static_cast<size_t>(n) * rows);
  cu::F16Linear(dw.as<__half>(), rows, d, dx.as<float>(), n, dy.as<float>(), 0);
  Down(y, dy, static_cast<size_t>(n) * rows);
}

void Embedding(const uint16_t* table, int rows, int d, const int* ids, int n, float scale, float* out) {
  cu::RequireDevice();
  DeviceBuffer dt = Up(table, static_cast<size_t>(rows) * d), di = Up(ids, n);
  DeviceBuffer dout = Poisoned(static_cast<size_t>(n) * d);
  cu::Embedding(dt.as<__half>(), d, di.as<int>(), n, scale, dout.as<float>(), 0);
  Down(out, dout, static_cast<size_t>(n) * d);
}

void RmsNorm(const float* x, const float* weight, int d, float eps, int n, const float* residual,
             float* y) {
  cu::RequireDevice();
  const size_t count = static_cast<size_t>(n) * d;
  DeviceBuffer dx = Up(x, count), dw = Up(weight, d);
  DeviceBuffer dy = residual ? Up(residual, count) : Poisoned(count);
  if (residual) {
    cu::AddRmsNorm(dx.as<float>(), dw.as<float>(), d, eps, n, dy.as<float>(), 0);
  } else {
    cu::RmsNorm(dx.as<float>(), dw.as<float>(), d, eps, n, dy.as<float>(), 0);
  }
  Down(y, dy, count);
}

void GatedActivation(Activation act, const float* gate, const float* up, int n, float* out) {
  cu::RequireDevice();
  DeviceBuffer dg = Up(gate, n), du = Up(up, n), dout = Poisoned(n);
  cu::GatedActivation(act, dg.as<float>(), du.as<float>(), n, dout.as<float>(), 0);
  Down(out, dout, n);
}

void SoftCap(const float* x, int n, float cap, float* out) {
  cu::RequireDevice();
  DeviceBuffer dx = Up(x, n);
  cu::SoftCap(dx.as<float>(), n, cap, 0);
  Down(out, dx, n);
}

void PickTokens(const float* logits, int vocab, int n, const TokenPick* picks, int* out) {
  cu::RequireDevice();
  if (n == 0) return;
  DeviceBuffer dl = Up(logits, static_cast<size_t>(n) * vocab), dp = Up(picks, n);
  DeviceBuffer dout(static_cast<size_t>(n) * sizeof(int));
  AWQ_CUDA_CHECK(cudaMemset(dout.as<void>(), 0xFF, dout.bytes()));  // -1: an unwritten row shows up
  cu::PickTokens(dl.as<float>(), vocab, n, dp.as<TokenPick>(), dout.as<int>(), 0);
  AWQ_CUDA_CHECK(cudaDeviceSynchronize());
  AWQ_CUDA_CHECK(cudaMemcpy(out, dout.as<void>(), dout.bytes(), cudaMemcpyDeviceToHost));
}

void RopeAttention(const AttentionShape& shape, const RopeTable& rope, int start, int n,
                   const float* cache_k, const float* cache_v, float* q, const float* k, const float* v,
                   float* k_out, float* out, int sequence, bool prefill_kernel) {
  cu::RequireDevice();
  const int hd = shape.head_dim, half = hd / 2, total = start + n;
  const size_t q_width = static_cast<size_t>(shape.num_heads) * hd;
  const size_t kv_width = static_cast<size_t>(shape.num_kv_heads) * hd;
  const size_t rope_positions = rope.cos_table().size() / half;
  if (rope_positions < static_cast<size_t>(total)) throw Error("RopeAttention: the rotary table is too short");
  const cu::AttentionParams params{shape, total};
  // Caches of sequence + 2 sequences [sequences, total, KV*hd]; every row
  // outside this sequence's is NaN, so reading another sequence's rows shows.
  const int sequences = sequence + 2;
  const size_t cache_rows = static_cast<size_t>(sequences) * total;
  std::vector<__half> cache(cache_rows * kv_width * 2, __float2half(NAN));
  const size_t first = static_cast<size_t>(sequence) * total * kv_width;
  for (size_t i = 0; i < static_cast<size_t>(total) * kv_width; ++i) {
    const bool old = i < static_cast<size_t>(start) * kv_width;
    cache[first + i] = __float2half_rn(old ? cache_k[i] : 0.f);
    cache[cache_rows * kv_width + first + i] = __float2half_rn(old ? cache_v[i] : 0.f);
  }
  std::vector<int> positions(n), sequence_ids(n, sequence);
  for (int t = 0; t < n; ++t) positions[t] = start + t;
  DeviceBuffer dcache = Up(cache.data(), cache.size());
  const DeviceBuffer drope = cu::UploadRopeTable(rope);  // as forward.cu uploads its tables
  DeviceBuffer dq = Up(q, n * q_width), dk = Up(k, n * kv_width), dv = Up(v, n * kv_width);
  DeviceBuffer dpos = Up(positions.data(), n), dseq = Up(sequence_ids.data(), n), dout = Poisoned(n * q_width);
  DeviceBuffer scratch(prefill_kernel ? 0 : cu::AttentionScratchFloats(params, n) * sizeof(float));
  const cu::TokenPlaces places{dpos.as<int>(), dseq.as<int>()};
  __half* kc = dcache.as<__half>();
  __half* vc = kc + cache_rows * kv_width;
  cu::RopeWriteCache(params, drope.as<float>(), drope.as<float>() + rope_positions * half, places, n,
                     dq.as<float>(), dk.as<float>(), dv.as<float>(), kc, vc, 0);
  if (prefill_kernel) {
    cu::AttentionPrefill(params, places, n, dq.as<float>(), kc, vc, dout.as<float>(), 0);
  } else {
    cu::Attention(params, places, n, dq.as<float>(), kc, vc, scratch.as<float>(), dout.as<float>(), 0);
  }
  Down(q, dq, n * q_width);
  Down(out, dout, n * q_width);
  std::vector<__half> rows(n * kv_width);
  AWQ_CUDA_CHECK(cudaMemcpy(rows.data(), kc + first + start * kv_width, rows.size() * 2, cudaMemcpyDeviceToHost));
  for (size_t i = 0; i < rows.size(); ++i) k_out[i] = __half2float(rows[i]);
}

namespace {
// Expert 0's DeviceInt4 of the E linears `views` stacked into one upload
// each of codes, scales and zeros (expert-major, as the file and forward.cu).
cu::DeviceInt4 UploadStacked(const std::vector<Int4Linear>& views, std::vector<DeviceBuffer>& keep) {
  const Int4Linear& first = views[0];
  const size_t code_bytes = static_cast<size_t>(first.out) * first.in / 2;
  const size_t groups = static_cast<size_t>(first.out) * (first.in / first.group_size);
  std::vector<uint8_t> codes, zeros;
  std::vector<uint16_t> scales;
  for (const Int4Linear& v : views) {
    codes.insert(codes.end(), v.qweight, v.qweight + code_bytes);
    scales.insert(scales.end(), v.scales, v.scales + groups);
    zeros.insert(zeros.end(), v.zeros, v.zeros + groups);
  }
  keep.push_back(Up(codes.data(), codes.size()));
  keep.push_back(Up(scales.data(), scales.size()));
  keep.push_back(Up(zeros.data(), zeros.size()));
  const size_t n = keep.size();
  return cu::DeviceInt4{first.out, first.in, first.group_size, keep[n - 3].as<uint8_t>(), keep[n - 2].as<__half>(),
                        keep[n - 1].as<uint8_t>(), nullptr};
}
}  // namespace

void MoeForward(const awqcore::MoeWeights& moe, int k, bool normalize, Activation act, const float* x, int n,
                const float* residual, float* y, int* experts, float* weights) {
  cu::RequireDevice();
  const int num_experts = static_cast<int>(moe.gate.size());
  const int d = moe.down[0].out, f = moe.gate[0].out;
  std::vector<DeviceBuffer> keep;
  cu::DeviceMoe dm;
  dm.num_experts = num_experts;
  dm.k = k;
  dm.normalize = normalize;
  DeviceBuffer router = Up(moe.router, static_cast<size_t>(num_experts) * d);
  dm.router = router.as<float>();
  dm.gate = UploadStacked(moe.gate, keep);
  dm.up = UploadStacked(moe.up, keep);
  dm.down = UploadStacked(moe.down, keep);
  const size_t count = static_cast<size_t>(n) * d;
  DeviceBuffer dx = Up(x, count);
  DeviceBuffer dy = residual ? Up(residual, count) : Poisoned(count);
  // Buffers for 37 tokens more than the call, every byte 0xFF (NaN floats,
  // -1 ints, tiles of expert -1), then a call of those n + 37 tokens (x's
  // rows cycled backwards, so its routing differs) on them first: the call
  // under test finds another call's tiles, slots and activations, past its
  // own ends too, and must neither read what it did not write nor depend on
  // exact-size buffers. The larger call takes the tensor-core grouping
  // whenever n + 37 >= kTensorCoreMinTokens, so a GEMV call finds GEMM tiles.
  constexpr int kExtraTokens = 37;
  const int larger = n + kExtraTokens;
  cu::MoeBuffers buffers(larger, k, num_experts, d, f);
  const auto poison = [](DeviceBuffer& b) { AWQ_CUDA_CHECK(cudaMemset(b.as<void>(), 0xFF, b.bytes())); };
  for (DeviceBuffer* b : {&buffers.logits, &buffers.experts, &buffers.weights, &buffers.slot_of, &buffers.slot_token,
                          &buffers.tiles, &buffers.x, &buffers.gate, &buffers.up, &buffers.out}) {
    poison(*b);
  }
  std::vector<float> other(static_cast<size_t>(larger) * d);
  for (int t = 0; t < larger; ++t) {
    std::copy_n(x + static_cast<size_t>(n - 1 - t % n) * d, d, other.begin() + static_cast<size_t>(t) * d);
  }
  DeviceBuffer dother = Up(other.data(), other.size()), dother_y = Poisoned(other.size());
  cu::MoeForward(dm, act, dother.as<float>(), larger, buffers, dother_y.as<float>(), false, 0);
  // Unwritten routing shows: expert -1, weight NaN.
  poison(buffers.experts);
  poison(buffers.weights);
  cu::MoeForward(dm, act, dx.as<float>(), n, buffers, dy.as<float>(), residual != nullptr, 0);
  Down(y, dy, count);
  Down(weights, buffers.weights, static_cast<size_t>(n) * k);
  AWQ_CUDA_CHECK(cudaMemcpy(experts, buffers.experts.as<void>(), static_cast<size_t>(n) * k * sizeof(int),
                            cudaMemcpyDeviceToHost));
}

}  // namespace cuda_test
}  // namespace awqcore
