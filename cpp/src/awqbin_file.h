// Reading and validating a .awqbin file (docs/format.md).
//
// AwqbinFile maps the file read-only and checks the preamble, metadata and
// tensor directory completely in Open(): every offset and size is compared with
// the real file size before any byte it points at is read, so a truncated or
// corrupt file raises FormatError (naming the field) and never reads out of
// bounds. Every key, tensor name and string value is checked to be UTF-8, and
// every f16/f32 tensor to hold only finite values. Tensor data CRCs are
// checked when `verify_checksums` is set.
//
// Thread safety: immutable after Open(); safe to share between threads.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "awqcore/awqcore.h"

namespace awqcore {

enum class DType : uint8_t { kF32 = 0, kF16 = 1, kU8 = 2, kI32 = 3, kI8 = 4 };
size_t DTypeSize(DType dtype);
const char* DTypeName(DType dtype);

struct TensorView {
  std::string name;
  DType dtype;
  std::vector<uint64_t> dims;  // row-major, outermost first
  const uint8_t* data;         // inside the mapping, 64-byte aligned
  uint64_t nbytes;
  uint32_t crc32;
};

struct MetaValue {
  enum class Type : uint8_t { kInt = 1, kFloat = 2, kString = 3, kIntArray = 4 };
  Type type;
  int64_t i = 0;
  double f = 0.0;
  std::string s;
  std::vector<int64_t> ints;
};

class AwqbinFile {
 public:
  // Throws Error when the file cannot be opened/mapped, FormatError when its
  // contents are invalid.
  static std::unique_ptr<AwqbinFile> Open(const std::string& path, bool verify_checksums);
  ~AwqbinFile();
  AwqbinFile(const AwqbinFile&) = delete;
  AwqbinFile& operator=(const AwqbinFile&) = delete;

  const std::string& path() const { return path_; }
  uint32_t version() const { return version_; }
  uint64_t file_size() const { return size_; }
  uint64_t data_size() const { return data_size_; }

  const std::map<std::string, MetaValue>& metadata() const { return meta_; }
  // Typed metadata access; Require* throw FormatError naming the key when it is
  // missing or has another type.
  int64_t RequireInt(const std::string& key) const;
  double RequireFloat(const std::string& key) const;  // accepts an i64 too
  const std::string& RequireString(const std::string& key) const;
  std::optional<int64_t> GetInt(const std::string& key) const;
  std::optional<std::string> GetString(const std::string& key) const;
  std::optional<std::vector<int64_t>> GetIntArray(const std::string& key) const;

  const std::vector<TensorView>& tensors() const { return tensors_; }
  const TensorView* Find(const std::string& name) const;  // nullptr if absent
  // The named tensor, checked to have this dtype and these dims; throws
  // FormatError "tensor 'x': expected f16 [576, 49152], found ..." otherwise.
  const TensorView& Require(const std::string& name, DType dtype,
                            const std::vector<uint64_t>& dims) const;

 private:
  AwqbinFile() = default;
  std::string path_;
  const uint8_t* base_ = nullptr;  // the mapping
  uint64_t size_ = 0;
  uint32_t version_ = 0;
  uint64_t data_size_ = 0;
  std::map<std::string, MetaValue> meta_;
  std::vector<TensorView> tensors_;
  std::map<std::string, size_t> index_;
};

// Throws FormatError("awqbin: " + args...): every file error carries the prefix,
// so a message says which layer of the stack rejected the input.
template <typename... Args>
[[noreturn]] void FailFormat(const Args&... args) {
  std::ostringstream message;
  message << "awqbin: ";
  (message << ... << args);
  throw FormatError(message.str());
}

// zlib's CRC-32 (reflected 0xEDB88320), continuing from `crc` (0 to start).
uint32_t Crc32(const uint8_t* data, size_t n, uint32_t crc = 0);

// The index of the first NaN or infinite element of an f16 or f32 tensor, or
// -1 when all are finite (and for the other dtypes).
int64_t FirstNonFinite(const TensorView& tensor);
// The same for n floats in memory (the Session's per-step logits check).
int64_t FirstNonFiniteF32(const float* x, uint64_t n);

}  // namespace awqcore
