// The device arena of the forward pass's weights (cuda/forward.cu): every
// tensor of a model in one cudaMalloc, each at a kAlign boundary.
//
// Thread safety: used by one thread (the forward pass's constructor).
#pragma once

#include <vector>

#include "common.cuh"

namespace awqcore {
namespace cu {

constexpr size_t kAlign = 256;  // arena alignment: 16-byte loads, full sectors

inline size_t AlignUp(size_t v) { return (v + kAlign - 1) / kAlign * kAlign; }

// Places tensors in one device arena. Pass 1 (Reserve) only counts bytes;
// pass 2 returns device pointers and uploads the data, or where there is no
// host data (the random model) has `fill` write it.
class WeightArena {
 public:
  explicit WeightArena(DeviceFill* fill) : fill_(fill) {}
  void Allocate() { buffer_ = DeviceBuffer(size_); size_ = 0; placing_ = true; }
  size_t size() const { return size_; }
  bool placing() const { return placing_; }  // pass 2: pointers are real, data is read

  // Host data, or fill's random bytes & mask when src is null.
  void* Bytes(const void* src, size_t bytes, uint8_t mask) {
    return Place<uint8_t>(src, bytes, [&](DeviceFill& fill, uint8_t* p) { fill.Bytes(p, bytes, mask); });
  }
  // Host f16 bits, or fill's uniform [lo, hi) when src is null.
  __half* Half(const uint16_t* src, size_t count, float lo, float hi) {
    return Place<__half>(src, count * 2, [&](DeviceFill& fill, __half* p) { fill.Halves(p, count, lo, hi); });
  }
  // Host floats, or `value` everywhere when src is null.
  float* Float(const float* src, size_t count, float value) {
    return Place<float>(src, count * 4, [&](DeviceFill& fill, float* p) { fill.Floats(p, count, value); });
  }
  // Host floats, or fill's uniform [lo, hi) when src is null (routers).
  float* UniformFloat(const float* src, size_t count, float lo, float hi) {
    return Place<float>(src, count * 4,
                        [&](DeviceFill& fill, float* p) { fill.UniformFloats(p, count, lo, hi); });
  }
  // Stacked experts: srcs.size() host slices of `each` bytes back to back in
  // one allocation, or (srcs empty) `count` slices of fill's random bytes & mask.
  void* ByteSlices(const std::vector<const uint8_t*>& srcs, size_t count, size_t each, uint8_t mask) {
    void* p = Next(count * each);
    if (!p) return nullptr;
    if (srcs.empty()) {
      Fill().Bytes(static_cast<uint8_t*>(p), count * each, mask);
    } else {
      CopySlices(p, srcs, each);
    }
    return p;
  }
  // The same for f16 slices of `each` halves, or fill's uniform [lo, hi).
  __half* HalfSlices(const std::vector<const uint16_t*>& srcs, size_t count, size_t each, float lo, float hi) {
    void* p = Next(count * each * 2);
    if (!p) return nullptr;
    if (srcs.empty()) {
      Fill().Halves(static_cast<__half*>(p), count * each, lo, hi);
    } else {
      CopySlices(p, srcs, each * 2);
    }
    return static_cast<__half*>(p);
  }

 private:
  void* Next(size_t bytes) {
    const size_t offset = size_;
    size_ += AlignUp(bytes);
    return placing_ ? buffer_.as<uint8_t>() + offset : nullptr;
  }
  // Reserves `bytes`; in pass 2 copies them from src, or has fill_with
  // write them where src is null.
  template <typename T, typename FillWith>
  T* Place(const void* src, size_t bytes, FillWith fill_with) {
    void* p = Next(bytes);
    if (!p) return nullptr;
    if (src) {
      AWQ_CUDA_CHECK(cudaMemcpy(p, src, bytes, cudaMemcpyHostToDevice));
    } else {
      fill_with(Fill(), static_cast<T*>(p));
    }
    return static_cast<T*>(p);
  }
  template <typename T>
  static void CopySlices(void* p, const std::vector<const T*>& srcs, size_t each_bytes) {
    for (size_t i = 0; i < srcs.size(); ++i) {
      AWQ_CUDA_CHECK(cudaMemcpy(static_cast<uint8_t*>(p) + i * each_bytes, srcs[i], each_bytes,
                                cudaMemcpyHostToDevice));
    }
  }
  DeviceFill& Fill() {
    if (!fill_) throw Error("internal: a weight tensor of the model is missing");
    return *fill_;
  }
  DeviceBuffer buffer_;
  size_t size_ = 0;
  bool placing_ = false;
  DeviceFill* fill_;  // nullptr: every tensor comes from the host
};

}  // namespace cu
}  // namespace awqcore
