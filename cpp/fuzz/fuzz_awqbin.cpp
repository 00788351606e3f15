// libFuzzer target: any byte string, loaded as a .awqbin file, either loads or
// throws awqcore::Error (FormatError for bad contents) with a UTF-8 message;
// a loaded model runs one forward step. Crashes, hangs, leaks and undefined
// behaviour are found by the sanitizers the target is built with.
//
// CRCs would stop nearly every mutation at the preamble check, so before
// loading the target recomputes the preamble, metadata and directory CRCs
// wherever the (mutated) preamble's sections lie inside the input, and loads
// with tensor CRCs off: the mutations reach the parsers and the loader. The
// CRC checks themselves are tested in cpp/tests/test_awqbin_file.cpp.
//
// Seeds: cpp/fuzz/corpus (valid tiny models, see README.md there).
#include <sys/mman.h>
#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "awqbin_file.h"
#include "awqcore/awqcore.h"
#include "text_checks.h"

namespace {

uint64_t Load64(const std::vector<uint8_t>& bytes, size_t at) {
  uint64_t value = 0;
  for (int i = 7; i >= 0; --i) value = (value << 8) | bytes[at + i];
  return value;
}

void Store32(std::vector<uint8_t>& bytes, size_t at, uint32_t value) {
  for (int i = 0; i < 4; ++i) bytes[at + i] = static_cast<uint8_t>(value >> (8 * i));
}

// Writes the CRC of [offset, offset + size) at `crc_at` when that range is
// inside the input (docs/format.md: meta CRC at 72, directory CRC at 76).
void Reseal(std::vector<uint8_t>& bytes, size_t offset_at, size_t size_at, size_t crc_at) {
  const uint64_t offset = Load64(bytes, offset_at), size = Load64(bytes, size_at);
  if (offset <= bytes.size() && size <= bytes.size() - offset) {
    Store32(bytes, crc_at, awqcore::Crc32(bytes.data() + offset, size));
  }
}

// The input as a file: one memfd for the process, rewritten per input.
std::string WriteInput(const std::vector<uint8_t>& bytes) {
  static const int fd = ::memfd_create("fuzz_awqbin", 0);
  static const std::string path = "/proc/self/fd/" + std::to_string(fd);
  if (fd < 0 || ::ftruncate(fd, 0) != 0 ||
      ::pwrite(fd, bytes.data(), bytes.size(), 0) != static_cast<ssize_t>(bytes.size())) {
    std::abort();  // the harness itself failed, not the reader
  }
  return path;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::vector<uint8_t> bytes(data, data + size);
  if (bytes.size() >= 128) {
    Reseal(bytes, 16, 24, 72);
    Reseal(bytes, 32, 40, 76);
    Store32(bytes, 80, awqcore::Crc32(bytes.data(), 80));
  }
  try {
    auto model = awqcore::Model::Load(WriteInput(bytes), awqcore::LoadOptions{false});
    awqcore::Session session(model, 4, 1);
    session.Forward({0, model->config().vocab_size - 1});
  } catch (const awqcore::Error& e) {
    // Every message must be able to become a Python str.
    if (!awqcore::IsValidUtf8(e.what())) std::abort();
  }
  return 0;
}
