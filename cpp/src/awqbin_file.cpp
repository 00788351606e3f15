// AwqbinFile: maps a .awqbin file and validates all of it (docs/format.md).
//
// Validation order follows what each step may trust:
//   1. the real file size (fstat) is the only thing known to be true;
//   2. magic, version and the preamble CRC make the preamble's fields usable;
//   3. every section offset/size is checked against the real size, with
//      arithmetic that cannot wrap (a - b only after b <= a, a * b only after
//      a <= max / b), so no later read can leave the mapping;
//   4. metadata and directory are CRC-checked, then parsed with a cursor that
//      refuses to read past its section, whatever counts and lengths claim.
// Every failure is a FormatError naming the field, so a user can tell a
// truncated download from a writer bug. Text read from the file is checked to
// be UTF-8 before it is used, and messages quote it through EscapeForMessage
// (text_checks.h), so every message is printable UTF-8.

#include "awqbin_file.h"

#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <limits>
#include <set>
#include <sstream>
#include <string>
#include <utility>

#include "awqcore/awqcore.h"
#include "cpu_memory.h"
#include "text_checks.h"

#ifdef _WIN32
#include <malloc.h>
#else
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#endif

namespace awqcore {
namespace {

constexpr char kMagic[8] = {'A', 'W', 'Q', 'C', 'O', 'R', 'E', '\0'};
constexpr uint32_t kVersion = 1;
constexpr uint64_t kPreambleSize = 128;
constexpr uint64_t kPreambleCrcEnd = 80;  // the preamble CRC covers [0, 80)
constexpr uint64_t kReservedBegin = 84;   // reserved zero bytes [84, 128)
constexpr uint64_t kAlignment = 64;       // data_offset and tensor offsets
constexpr uint64_t kMaxNameLength = 255;
constexpr uint64_t kMaxDims = 4;
constexpr uint64_t kU64Max = std::numeric_limits<uint64_t>::max();

std::string Hex32(uint32_t value) {
  char text[11];
  std::snprintf(text, sizeof(text), "0x%08x", value);
  return text;
}

// Little-endian loads composed from bytes: correct on any host and free of
// alignment requirements (the metadata has none).
uint64_t LoadLE(const uint8_t* bytes, int width) {
  uint64_t value = 0;
  for (int i = width - 1; i >= 0; --i) value = (value << 8) | bytes[i];
  return value;
}

// Reads one section (metadata or directory) front to back. Every Take checks
// the remaining length first, so a lying count or length becomes a
// FormatError instead of an out-of-bounds read. `context` names the entry
// being read ("entry 3 ('model.norm.weight')") for the messages.
class SectionReader {
 public:
  SectionReader(const uint8_t* begin, uint64_t size, const char* section, const char* size_field)
      : begin_(begin), size_(size), section_(section), size_field_(size_field) {}

  void set_context(std::string context) { context_ = std::move(context); }
  uint64_t remaining() const { return size_ - pos_; }

  const uint8_t* Take(uint64_t n, const char* field) {
    if (n > remaining()) {
      FailFormat(section_, ": ", context_, ": field ", field, " (", n, " bytes at byte ", pos_,
           ") runs past the end of the section (", size_field_, "=", size_, ")");
    }
    const uint8_t* at = begin_ + pos_;
    pos_ += n;
    return at;
  }
  uint64_t U8(const char* field) { return LoadLE(Take(1, field), 1); }
  uint64_t U16(const char* field) { return LoadLE(Take(2, field), 2); }
  uint64_t U32(const char* field) { return LoadLE(Take(4, field), 4); }
  uint64_t U64(const char* field) { return LoadLE(Take(8, field), 8); }

  // u16 length (1..255) then that many UTF-8 bytes: metadata keys, tensor names.
  std::string Name(const char* field) {
    uint64_t length = U16(field);
    if (length < 1 || length > kMaxNameLength) {
      FailFormat(section_, ": ", context_, ": ", field, " length ", length, " is outside 1..",
           kMaxNameLength);
    }
    const uint8_t* bytes = Take(length, field);
    std::string name(reinterpret_cast<const char*>(bytes), length);
    RequireUtf8(name, field);
    return name;
  }

  void RequireUtf8(const std::string& text, const char* field) const {
    if (!IsValidUtf8(text)) {
      FailFormat(section_, ": ", context_, ": ", field, " '", EscapeForMessage(text),
                 "' is not valid UTF-8");
    }
  }

 private:
  const uint8_t* begin_;
  uint64_t size_;
  uint64_t pos_ = 0;
  const char* section_;
  const char* size_field_;
  std::string context_ = "header";
};

struct Preamble {
  uint32_t version;
  uint32_t preamble_size;
  uint64_t meta_offset, meta_size;
  uint64_t dir_offset, dir_size;
  uint64_t data_offset, data_size;
  uint64_t file_size;
  uint32_t meta_crc32, dir_crc32, preamble_crc32;
};

// Checks the preamble against the real file size; afterwards
// [meta_offset, meta_offset + meta_size), [dir_offset, dir_offset + dir_size)
// and [data_offset, data_offset + data_size) all lie inside [0, real_size).
Preamble ReadPreamble(const uint8_t* base, uint64_t real_size) {
  // Magic first (when there are 8 bytes) so that a wrong file type is named as
  // such rather than as a truncated .awqbin.
  if (real_size >= sizeof(kMagic) && std::memcmp(base, kMagic, sizeof(kMagic)) != 0) {
    FailFormat("bad magic (not an .awqbin file)");
  }
  if (real_size < kPreambleSize) {
    FailFormat("truncated file: ", real_size, " bytes is smaller than the ", kPreambleSize,
         "-byte preamble");
  }
  Preamble p;
  p.version = static_cast<uint32_t>(LoadLE(base + 8, 4));
  p.preamble_size = static_cast<uint32_t>(LoadLE(base + 12, 4));
  p.meta_offset = LoadLE(base + 16, 8);
  p.meta_size = LoadLE(base + 24, 8);
  p.dir_offset = LoadLE(base + 32, 8);
  p.dir_size = LoadLE(base + 40, 8);
  p.data_offset = LoadLE(base + 48, 8);
  p.data_size = LoadLE(base + 56, 8);
  p.file_size = LoadLE(base + 64, 8);
  p.meta_crc32 = static_cast<uint32_t>(LoadLE(base + 72, 4));
  p.dir_crc32 = static_cast<uint32_t>(LoadLE(base + 76, 4));
  p.preamble_crc32 = static_cast<uint32_t>(LoadLE(base + 80, 4));

  if (p.version != kVersion) {
    FailFormat("unsupported version ", p.version, " (this runtime reads version ", kVersion, ")");
  }
  uint32_t preamble_crc = Crc32(base, kPreambleCrcEnd);
  if (preamble_crc != p.preamble_crc32) {
    FailFormat("preamble CRC-32 mismatch: preamble_crc32=", Hex32(p.preamble_crc32),
         " but bytes [0, 80) have ", Hex32(preamble_crc), " (corrupt header)");
  }
  if (p.preamble_size != kPreambleSize) {
    FailFormat("preamble_size=", p.preamble_size, " (expected ", kPreambleSize, ")");
  }
  for (uint64_t i = kReservedBegin; i < kPreambleSize; ++i) {
    if (base[i] != 0) FailFormat("reserved preamble byte ", i, " is ", unsigned{base[i]}, ", not 0");
  }
  // With the preamble intact, a size mismatch means the file was cut short
  // (or appended to): report that before any offset, as the format promises.
  if (p.file_size != real_size) {
    if (p.file_size > real_size) {
      FailFormat("truncated file: header says file_size=", p.file_size, " but file has ", real_size,
           " bytes");
    }
    FailFormat("file_size=", p.file_size, " but file has ", real_size, " bytes (trailing data)");
  }
  if (p.meta_offset != kPreambleSize) {
    FailFormat("meta_offset=", p.meta_offset, " (expected ", kPreambleSize, ")");
  }
  if (p.meta_size > real_size - p.meta_offset) {
    FailFormat("meta_size=", p.meta_size, " at meta_offset=", p.meta_offset,
         " runs past the end of the file (", real_size, " bytes)");
  }
  if (p.dir_offset != p.meta_offset + p.meta_size) {
    FailFormat("dir_offset=", p.dir_offset,
         " but meta_offset + meta_size = ", p.meta_offset + p.meta_size);
  }
  if (p.dir_size > real_size - p.dir_offset) {
    FailFormat("dir_size=", p.dir_size, " at dir_offset=", p.dir_offset,
         " runs past the end of the file (", real_size, " bytes)");
  }
  if (p.data_offset % kAlignment != 0) {
    FailFormat("data_offset=", p.data_offset, " is not a multiple of ", kAlignment);
  }
  if (p.data_offset < p.dir_offset + p.dir_size || p.data_offset > real_size) {
    FailFormat("data_offset=", p.data_offset, " is outside [dir_offset + dir_size, file_size] = [",
         p.dir_offset + p.dir_size, ", ", real_size, "]");
  }
  if (p.data_size != real_size - p.data_offset) {
    FailFormat("data_size=", p.data_size, " but file_size - data_offset = ", real_size - p.data_offset);
  }
  for (uint64_t i = p.dir_offset + p.dir_size; i < p.data_offset; ++i) {
    if (base[i] != 0) FailFormat("padding byte ", i, " before data_offset is not 0");
  }
  return p;
}

std::map<std::string, MetaValue> ParseMetadata(const uint8_t* begin, uint64_t size) {
  SectionReader reader(begin, size, "metadata", "meta_size");
  std::map<std::string, MetaValue> entries;
  uint64_t count = reader.U32("count");
  for (uint64_t i = 0; i < count; ++i) {
    reader.set_context("entry " + std::to_string(i));
    std::string key = reader.Name("key");
    reader.set_context("entry " + std::to_string(i) + " ('" + EscapeForMessage(key) + "')");
    MetaValue value;
    uint64_t type = reader.U8("type");
    switch (type) {
      case static_cast<uint8_t>(MetaValue::Type::kInt):
        value.type = MetaValue::Type::kInt;
        value.i = static_cast<int64_t>(reader.U64("i64 value"));
        break;
      case static_cast<uint8_t>(MetaValue::Type::kFloat): {
        value.type = MetaValue::Type::kFloat;
        uint64_t bits = reader.U64("f64 value");
        std::memcpy(&value.f, &bits, sizeof(bits));
        break;
      }
      case static_cast<uint8_t>(MetaValue::Type::kString): {
        value.type = MetaValue::Type::kString;
        uint64_t length = reader.U64("string length");
        const uint8_t* bytes = reader.Take(length, "string bytes");
        value.s.assign(reinterpret_cast<const char*>(bytes), length);
        reader.RequireUtf8(value.s, "string value");
        break;
      }
      case static_cast<uint8_t>(MetaValue::Type::kIntArray): {
        value.type = MetaValue::Type::kIntArray;
        uint64_t n = reader.U64("array length");
        // Check n * 8 against what is left before multiplying or allocating:
        // a corrupt n of 2^61 must not wrap to 0 or request 16 EiB.
        if (n > reader.remaining() / 8) {
          FailFormat("metadata: entry ", i, " ('", EscapeForMessage(key), "'): array length ", n,
               " runs past the end of the section (meta_size=", size, ")");
        }
        const uint8_t* items = reader.Take(n * 8, "array items");
        value.ints.resize(n);
        for (uint64_t j = 0; j < n; ++j) {
          value.ints[j] = static_cast<int64_t>(LoadLE(items + 8 * j, 8));
        }
        break;
      }
      default:
        FailFormat("metadata: key '", EscapeForMessage(key), "' has unknown type ", type,
                   " (expected 1..4)");
    }
    if (!entries.emplace(key, std::move(value)).second) {
      FailFormat("metadata: duplicate key '", EscapeForMessage(key), "'");
    }
  }
  if (reader.remaining() != 0) {
    FailFormat("metadata: ", reader.remaining(), " bytes left after the last of ", count,
         " entries (meta_size=", size, ")");
  }
  return entries;
}

std::string ShapeString(DType dtype, const std::vector<uint64_t>& dims) {
  std::ostringstream text;
  text << DTypeName(dtype) << " [";
  for (size_t d = 0; d < dims.size(); ++d) text << (d ? ", " : "") << dims[d];
  text << "]";
  return text.str();
}

// Parses the directory; `data` is the start of the data section (64-byte
// aligned in the mapping) and `data_size` its length.
std::vector<TensorView> ParseDirectory(const uint8_t* begin, uint64_t size, const uint8_t* data,
                                       uint64_t data_size) {
  SectionReader reader(begin, size, "tensor directory", "dir_size");
  std::vector<TensorView> tensors;
  std::set<std::string> names;
  uint64_t previous_end = 0;  // tensors are sorted: each starts at or after this
  std::string previous_name;
  uint64_t count = reader.U32("count");
  for (uint64_t i = 0; i < count; ++i) {
    reader.set_context("entry " + std::to_string(i));
    TensorView t;
    t.name = reader.Name("name");
    // Names are UTF-8 (checked by Name), but may hold control bytes.
    const std::string quoted = EscapeForMessage(t.name);
    reader.set_context("entry " + std::to_string(i) + " ('" + quoted + "')");
    if (!names.insert(t.name).second) {
      FailFormat("tensor directory: duplicate tensor name '", quoted, "'");
    }
    uint64_t dtype = reader.U8("dtype");
    if (dtype > static_cast<uint8_t>(DType::kI8)) {
      FailFormat("tensor '", quoted, "': unknown dtype ", dtype, " (expected 0..4)");
    }
    t.dtype = static_cast<DType>(dtype);
    uint64_t ndim = reader.U8("ndim");
    if (ndim < 1 || ndim > kMaxDims) {
      FailFormat("tensor '", quoted, "': ndim ", ndim, " is outside 1..", kMaxDims);
    }
    uint64_t expected_nbytes = DTypeSize(t.dtype);
    bool overflow = false;  // once set, expected_nbytes is meaningless
    for (uint64_t d = 0; d < ndim; ++d) {
      uint64_t dim = reader.U64("dims");
      t.dims.push_back(dim);
      overflow |= dim != 0 && expected_nbytes > kU64Max / dim;
      expected_nbytes *= dim;
    }
    uint64_t offset = reader.U64("offset");
    t.nbytes = reader.U64("nbytes");
    t.crc32 = static_cast<uint32_t>(reader.U32("crc32"));
    if (overflow || t.nbytes != expected_nbytes) {
      FailFormat("tensor '", quoted, "': nbytes=", t.nbytes, " does not match ",
           ShapeString(t.dtype, t.dims), overflow ? " (size overflows)" : "");
    }
    if (offset % kAlignment != 0) {
      FailFormat("tensor '", quoted, "': offset ", offset, " is not a multiple of ", kAlignment);
    }
    if (offset < previous_end) {
      FailFormat("tensor '", quoted, "': offset ", offset, " overlaps or precedes the previous tensor '",
           EscapeForMessage(previous_name), "' (which ends at ", previous_end,
           "); tensors must be sorted and disjoint");
    }
    if (t.nbytes > data_size || offset > data_size - t.nbytes) {
      FailFormat("tensor '", quoted, "': offset ", offset, " + nbytes ", t.nbytes,
           " runs past the end of the data section (data_size=", data_size, ")");
    }
    t.data = data + offset;
    if (reinterpret_cast<uintptr_t>(t.data) % kAlignment != 0) {
      FailFormat("tensor '", quoted, "': data is not ", kAlignment, "-byte aligned in memory");
    }
    previous_end = offset + t.nbytes;
    previous_name = t.name;
    tensors.push_back(std::move(t));
  }
  if (reader.remaining() != 0) {
    FailFormat("tensor directory: ", reader.remaining(), " bytes left after the last of ", count,
         " entries (dir_size=", size, ")");
  }
  return tensors;
}

std::string IoError(const std::string& what, const std::string& path) {
  return "awqbin: cannot " + what + " '" + EscapeForMessage(path, 4096) + "': " + std::strerror(errno);
}

}  // namespace

size_t DTypeSize(DType dtype) {
  switch (dtype) {
    case DType::kF32: return 4;
    case DType::kF16: return 2;
    case DType::kU8: return 1;
    case DType::kI32: return 4;
    case DType::kI8: return 1;
  }
  return 0;
}

const char* DTypeName(DType dtype) {
  switch (dtype) {
    case DType::kF32: return "f32";
    case DType::kF16: return "f16";
    case DType::kU8: return "u8";
    case DType::kI32: return "i32";
    case DType::kI8: return "i8";
  }
  return "unknown";
}

std::unique_ptr<AwqbinFile> AwqbinFile::Open(const std::string& path, bool verify_checksums) {
  // The object owns the mapping from the moment it exists, so a FormatError
  // thrown by any check below unmaps it through the destructor.
  std::unique_ptr<AwqbinFile> file(new AwqbinFile());
  file->path_ = path;
#ifdef _WIN32
  // No mmap: read the whole file into a 64-byte-aligned buffer we own.
  FILE* stream = std::fopen(path.c_str(), "rb");
  if (!stream) throw Error(IoError("open", path));
  const long long end = _fseeki64(stream, 0, SEEK_END) == 0 ? _ftelli64(stream) : -1;
  if (end < 0) {
    std::fclose(stream);
    throw Error(IoError("seek in", path));
  }
  uint64_t size = static_cast<uint64_t>(end);
  std::rewind(stream);
  uint8_t* buffer = static_cast<uint8_t*>(_aligned_malloc(size ? size : 1, kAlignment));
  if (!buffer) {
    std::fclose(stream);
    throw Error("awqbin: cannot allocate " + std::to_string(size) + " bytes for '" + path + "'");
  }
  file->base_ = buffer;
  file->size_ = size;
  size_t got = std::fread(buffer, 1, size, stream);
  std::fclose(stream);
  if (got != size) throw Error(IoError("read", path));
#else
  // O_NONBLOCK: opening a FIFO for reading otherwise blocks until a writer
  // appears; with it the open returns and the regular-file check below names
  // what the path is. It changes nothing for a regular file.
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) throw Error(IoError("open", path));
  struct stat info;
  if (::fstat(fd, &info) != 0) {
    std::string message = IoError("stat", path);
    ::close(fd);
    throw Error(message);
  }
  if (!S_ISREG(info.st_mode)) {
    ::close(fd);
    const char* kind = S_ISDIR(info.st_mode)    ? "a directory"
                       : S_ISFIFO(info.st_mode) ? "a FIFO"
                       : S_ISCHR(info.st_mode)  ? "a character device"
                       : S_ISBLK(info.st_mode)  ? "a block device"
                       : S_ISSOCK(info.st_mode) ? "a socket"
                                                : "not a file";
    throw Error("awqbin: '" + EscapeForMessage(path, 4096) + "' is not a regular file (" + kind + ")");
  }
  uint64_t size = static_cast<uint64_t>(info.st_size);
  if (size > std::numeric_limits<size_t>::max()) {
    ::close(fd);
    throw Error("awqbin: '" + EscapeForMessage(path, 4096) + "' is too large to map on this system");
  }
  // mmap rejects length 0; an empty file is reported as truncated below.
  if (size > 0) {
    void* mapping = ::mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
    if (mapping == MAP_FAILED) {
      std::string message = IoError("mmap", path);
      ::close(fd);
      throw Error(message);
    }
    file->base_ = static_cast<const uint8_t*>(mapping);
    if (const uint8_t* copy = CopyToHugePages(file->base_, size)) {
      ::munmap(mapping, size);
      file->base_ = copy;
    }
  }
  file->size_ = size;
  ::close(fd);  // the mapping stays valid without the descriptor
#endif

  Preamble p = ReadPreamble(file->base_, size);
  file->version_ = p.version;
  file->data_size_ = p.data_size;

  const uint8_t* meta = file->base_ + p.meta_offset;
  uint32_t meta_crc = Crc32(meta, p.meta_size);
  if (meta_crc != p.meta_crc32) {
    FailFormat("metadata CRC-32 mismatch: meta_crc32=", Hex32(p.meta_crc32), " but the ", p.meta_size,
         " metadata bytes have ", Hex32(meta_crc));
  }
  const uint8_t* dir = file->base_ + p.dir_offset;
  uint32_t dir_crc = Crc32(dir, p.dir_size);
  if (dir_crc != p.dir_crc32) {
    FailFormat("tensor directory CRC-32 mismatch: dir_crc32=", Hex32(p.dir_crc32), " but the ",
         p.dir_size, " directory bytes have ", Hex32(dir_crc));
  }
  file->meta_ = ParseMetadata(meta, p.meta_size);
  file->tensors_ = ParseDirectory(dir, p.dir_size, file->base_ + p.data_offset, p.data_size);
  for (size_t i = 0; i < file->tensors_.size(); ++i) file->index_[file->tensors_[i].name] = i;

  if (verify_checksums) {
    for (const TensorView& t : file->tensors_) {
      uint32_t crc = Crc32(t.data, t.nbytes);
      if (crc != t.crc32) {
        FailFormat("tensor '", EscapeForMessage(t.name), "': data CRC-32 mismatch (directory says ",
                   Hex32(t.crc32), ", data has ", Hex32(crc), "): the file is corrupt");
      }
    }
  }
  // Always, unlike the CRCs: a NaN written by a faulty exporter has a valid
  // CRC, and would otherwise surface only as NaN logits.
  for (const TensorView& t : file->tensors_) {
    const int64_t index = FirstNonFinite(t);
    if (index >= 0) {
      FailFormat("tensor '", EscapeForMessage(t.name), "': element ", index, " of ",
                 ShapeString(t.dtype, t.dims), " is NaN or infinite");
    }
  }
  return file;
}

AwqbinFile::~AwqbinFile() {
#ifdef _WIN32
  _aligned_free(const_cast<uint8_t*>(base_));
#else
  if (base_ != nullptr) ::munmap(const_cast<uint8_t*>(base_), size_);
#endif
}

namespace {

const MetaValue* FindMeta(const std::map<std::string, MetaValue>& meta, const std::string& key) {
  auto it = meta.find(key);
  return it == meta.end() ? nullptr : &it->second;
}

const char* MetaTypeName(MetaValue::Type type) {
  switch (type) {
    case MetaValue::Type::kInt: return "i64";
    case MetaValue::Type::kFloat: return "f64";
    case MetaValue::Type::kString: return "string";
    case MetaValue::Type::kIntArray: return "i64 array";
  }
  return "unknown";
}

// The entry for `key` when it has type `type`; nullptr when absent. A present
// entry of another type is a FormatError for the Get* accessors as well: a
// writer that stored the field wrongly should be told, not silently ignored.
const MetaValue* TypedMeta(const std::map<std::string, MetaValue>& meta, const std::string& key,
                           MetaValue::Type type) {
  const MetaValue* value = FindMeta(meta, key);
  if (value != nullptr && value->type != type) {
    FailFormat("metadata key '", key, "' has type ", MetaTypeName(value->type), ", expected ",
         MetaTypeName(type));
  }
  return value;
}

[[noreturn]] void FailMissingKey(const std::string& key) {
  FailFormat("metadata key '", key, "' is missing");
}

}  // namespace

int64_t AwqbinFile::RequireInt(const std::string& key) const {
  const MetaValue* value = TypedMeta(meta_, key, MetaValue::Type::kInt);
  if (value == nullptr) FailMissingKey(key);
  return value->i;
}

double AwqbinFile::RequireFloat(const std::string& key) const {
  const MetaValue* value = FindMeta(meta_, key);
  if (value == nullptr) FailMissingKey(key);
  if (value->type == MetaValue::Type::kInt) return static_cast<double>(value->i);
  return TypedMeta(meta_, key, MetaValue::Type::kFloat)->f;
}

const std::string& AwqbinFile::RequireString(const std::string& key) const {
  const MetaValue* value = TypedMeta(meta_, key, MetaValue::Type::kString);
  if (value == nullptr) FailMissingKey(key);
  return value->s;
}

std::optional<int64_t> AwqbinFile::GetInt(const std::string& key) const {
  const MetaValue* value = TypedMeta(meta_, key, MetaValue::Type::kInt);
  if (value == nullptr) return std::nullopt;
  return value->i;
}

std::optional<std::string> AwqbinFile::GetString(const std::string& key) const {
  const MetaValue* value = TypedMeta(meta_, key, MetaValue::Type::kString);
  if (value == nullptr) return std::nullopt;
  return value->s;
}

std::optional<std::vector<int64_t>> AwqbinFile::GetIntArray(const std::string& key) const {
  const MetaValue* value = TypedMeta(meta_, key, MetaValue::Type::kIntArray);
  if (value == nullptr) return std::nullopt;
  return value->ints;
}

const TensorView* AwqbinFile::Find(const std::string& name) const {
  auto it = index_.find(name);
  return it == index_.end() ? nullptr : &tensors_[it->second];
}

const TensorView& AwqbinFile::Require(const std::string& name, DType dtype,
                                      const std::vector<uint64_t>& dims) const {
  const TensorView* tensor = Find(name);
  if (tensor == nullptr) FailFormat("missing tensor '", name, "'");
  if (tensor->dtype != dtype || tensor->dims != dims) {
    FailFormat("tensor '", name, "': expected ", ShapeString(dtype, dims), ", found ",
         ShapeString(tensor->dtype, tensor->dims));
  }
  return *tensor;
}

}  // namespace awqcore
