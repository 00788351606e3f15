#include "cpu_memory.h"

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <initializer_list>
#include <memory>
#include <new>
#include <sstream>

#include "ops/attention.h"
#include "ops/moe_experts.h"
#include "transformer.h"

namespace awqcore {
namespace {

// The product of `factors`, or Error naming them when it exceeds 2^64 - 1.
uint64_t CheckedProduct(std::initializer_list<uint64_t> factors, const char* what) {
  uint64_t product = 1;
  for (uint64_t f : factors) {
    if (__builtin_mul_overflow(product, f, &product)) {
      std::string list;
      for (uint64_t g : factors) list += (list.empty() ? "" : " x ") + std::to_string(g);
      throw Error(std::string("the ") + what + " size " + list + " overflows 64 bits");
    }
  }
  return product;
}

uint64_t CheckedSum(uint64_t a, uint64_t b, const char* what) {
  uint64_t sum = 0;
  if (__builtin_add_overflow(a, b, &sum)) {
    throw Error(std::string("the ") + what + " size overflows 64 bits");
  }
  return sum;
}

std::string MiB(uint64_t bytes) { return std::to_string((bytes + (1u << 20) - 1) >> 20) + " MiB"; }

}  // namespace

CpuSessionBytes CpuSessionMemory(const ModelConfig& c, int max_seq_len, int max_batch,
                                 bool f16_cache) {
  CpuSessionBytes bytes;
  const uint64_t kv_width = static_cast<uint64_t>(c.num_kv_heads) * c.head_dim;
  bytes.kv_cache = CheckedProduct({2, static_cast<uint64_t>(max_batch),
                                   static_cast<uint64_t>(c.num_layers),
                                   static_cast<uint64_t>(max_seq_len), kv_width,
                                   f16_cache ? 2u : 4u},
                                  "KV cache");
  // The Transformer's buffers, C = chunk rows (transformer.h).
  const uint64_t chunk = std::min<uint64_t>(
      Transformer::kChunkTokens, static_cast<uint64_t>(max_batch) * max_seq_len);
  const uint64_t q_width = static_cast<uint64_t>(c.num_heads) * c.head_dim;
  const uint64_t row_floats = 3 * static_cast<uint64_t>(c.hidden_size) + 2 * q_width +
                              2 * kv_width + static_cast<uint64_t>(c.intermediate_size);
  const uint64_t positions = std::max<uint64_t>(max_seq_len, max_batch);
  uint64_t floats = CheckedProduct({chunk, row_floats}, "scratch");
  const AttentionShape shape{c.num_heads, c.num_kv_heads, c.head_dim};
  floats = CheckedSum(floats, AttentionScratchFloats(shape, static_cast<int>(chunk), max_seq_len),
                      "scratch");
  // Rotary cos and sin tables [max_seq_len, hd / 2] each, twice with a
  // local base for the sliding layers (rope_local_theta).
  const uint64_t rope_tables = c.rope_local_theta > 0.0f ? 2 : 1;
  floats = CheckedSum(floats, CheckedProduct({rope_tables, static_cast<uint64_t>(max_seq_len),
                                              static_cast<uint64_t>(c.head_dim)}, "rotary table"),
                      "scratch");
  // Token bookkeeping (2 ints per position) and the Session's logits [max_batch, vocab].
  floats = CheckedSum(floats, CheckedProduct({2, positions}, "scratch"), "scratch");
  floats = CheckedSum(floats, CheckedProduct({static_cast<uint64_t>(max_batch),
                                              static_cast<uint64_t>(c.vocab_size)}, "logits"),
                      "scratch");
  if (c.num_experts > 0) {
    // The router's [C, E] probabilities and [C, k] choices, and the experts'
    // buffers (ops/moe_experts.h); E and k are validated against the file's
    // tensors, so these sizes are those of real models.
    floats = CheckedSum(floats, chunk * (c.num_experts + 2 * static_cast<uint64_t>(c.num_experts_per_tok)), "scratch");
    floats = CheckedSum(floats, MoeScratch::Bytes(static_cast<int>(chunk), c.num_experts_per_tok,
                                                  c.num_experts, c.hidden_size,
                                                  c.moe_intermediate_size) / 4 + 1,
                        "scratch");
  }
  bytes.scratch = CheckedProduct({floats, 4}, "scratch");
  return bytes;
}

MachineMemory QueryMachineMemory() {
  MachineMemory m;
  const long pages = sysconf(_SC_PHYS_PAGES);
  const long page_size = sysconf(_SC_PAGE_SIZE);
  if (pages > 0 && page_size > 0) {
    m.total = static_cast<uint64_t>(pages) * static_cast<uint64_t>(page_size);
    m.available = m.total;
    m.source = "physical memory";
  }
  std::ifstream meminfo("/proc/meminfo");
  std::string line;
  while (std::getline(meminfo, line)) {
    std::istringstream fields(line);
    std::string key;
    uint64_t kib = 0;
    if (fields >> key >> kib && key == "MemAvailable:") {
      m.available = kib * 1024;
      m.source = "MemAvailable";
      break;
    }
  }
  return m;
}

void CheckCpuSessionFits(const ModelConfig& config, int max_seq_len, int max_batch,
                         bool f16_cache, const MachineMemory& machine) {
  const CpuSessionBytes need = CpuSessionMemory(config, max_seq_len, max_batch, f16_cache);
  const uint64_t total = CheckedSum(need.kv_cache, need.scratch, "session");
  if (machine.available == 0 || total <= machine.available) return;
  throw Error("the CPU session needs " + MiB(total) + " (KV cache " + MiB(need.kv_cache) +
              " for max_seq_len " + std::to_string(max_seq_len) + " x max_batch " +
              std::to_string(max_batch) + " in " + (f16_cache ? "f16" : "f32") + ", scratch " +
              MiB(need.scratch) + ") but the machine has " + MiB(machine.available) + " (" +
              machine.source + (machine.total ? " of " + MiB(machine.total) + " physical" : "") +
              "); lower max_seq_len or max_batch");
}

bool KeepWeightsMapped() {
  const char* keep_mapping = std::getenv("AWQCORE_MAP_WEIGHTS");
  return keep_mapping != nullptr && std::strcmp(keep_mapping, "1") == 0;
}

// Copies a file mapping's bytes into anonymous memory that the kernel backs
// with transparent huge pages where it can, and returns the copy (nullptr:
// keep the mapping). A decode step streams every weight, and through the
// file mapping's 4 KB pages each page costs a TLB miss: Qwen2.5-Coder-1.5B
// decodes at about two thirds of the bandwidth it reaches from 2 MB pages
// (README, "Speed: CPU"). Skipped when AWQCORE_MAP_WEIGHTS=1 (processes then
// share the page cache's one copy), for files under one huge page, and when
// the machine's available memory cannot hold the copy with a quarter to spare.
const uint8_t* CopyToHugePages(const uint8_t* mapping, uint64_t size) {
  constexpr uint64_t kHugePage = 2ull << 20;
  constexpr uint64_t kChunk = 64ull << 20;
  if (KeepWeightsMapped() || size < kHugePage) return nullptr;
  const MachineMemory memory = QueryMachineMemory();
  if (memory.available != 0 && size + size / 4 > memory.available) return nullptr;
  void* copy = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (copy == MAP_FAILED) return nullptr;
#ifdef MADV_HUGEPAGE
  ::madvise(copy, size, MADV_HUGEPAGE);
#endif
  for (uint64_t at = 0; at < size; at += kChunk) {
    const uint64_t n = std::min(kChunk, size - at);
    std::memcpy(static_cast<uint8_t*>(copy) + at, mapping + at, n);
    // Copied source pages leave this process's resident set (they stay in
    // the page cache), so the peak is not twice the file.
    ::madvise(const_cast<uint8_t*>(mapping) + at, n, MADV_DONTNEED);
  }
  SealReadOnly(static_cast<const uint8_t*>(copy), size);
  return static_cast<const uint8_t*>(copy);
}

std::shared_ptr<uint8_t> HugePageBuffer(uint64_t size) {
  void* buffer = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (buffer == MAP_FAILED) throw std::bad_alloc();
#ifdef MADV_HUGEPAGE
  ::madvise(buffer, size, MADV_HUGEPAGE);
#endif
  return std::shared_ptr<uint8_t>(static_cast<uint8_t*>(buffer), [size](uint8_t* p) { ::munmap(p, size); });
}

void SealReadOnly(const uint8_t* p, uint64_t size) {
  ::mprotect(const_cast<uint8_t*>(p), size, PROT_READ);
}

bool SetPagesWritable(const void* p, uint64_t size, bool writable) {
  const uint64_t page = static_cast<uint64_t>(sysconf(_SC_PAGE_SIZE));
  const uint64_t begin = reinterpret_cast<uint64_t>(p) / page * page;
  const uint64_t end = (reinterpret_cast<uint64_t>(p) + size + page - 1) / page * page;
  return ::mprotect(reinterpret_cast<void*>(begin), end - begin, writable ? PROT_READ | PROT_WRITE : PROT_READ) == 0;
}

void ReleasePages(const void* p, uint64_t size) {
  const uint64_t page = static_cast<uint64_t>(sysconf(_SC_PAGE_SIZE));
  const uint64_t begin = (reinterpret_cast<uint64_t>(p) + page - 1) / page * page;
  const uint64_t end = (reinterpret_cast<uint64_t>(p) + size) / page * page;
  if (end > begin) ::madvise(reinterpret_cast<void*>(begin), end - begin, MADV_DONTNEED);
}

}  // namespace awqcore
