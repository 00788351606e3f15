// What a CPU Session allocates at construction, checked against the machine's
// memory before anything is allocated, so an oversized max_seq_len or
// max_batch is an Error naming the sizes instead of std::bad_alloc (or the
// OOM killer, since the caches are zero-filled and so touched at once).
//
// The sizes are those of the Transformer's buffers (transformer.h): the KV
// caches exactly, the scratch as declared there (chunk rows of activations,
// attention's split scratch, the rotary table, the per-token bookkeeping).
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "awqcore/awqcore.h"

namespace awqcore {

struct CpuSessionBytes {
  uint64_t kv_cache = 0;  // 2 (k, v) * max_batch * layers * max_seq_len * KV * hd * element
  uint64_t scratch = 0;   // activations, attention scratch, rotary table, logits
};

// Throws Error when a size does not fit in 64 bits (naming the factors).
CpuSessionBytes CpuSessionMemory(const ModelConfig& config, int max_seq_len, int max_batch,
                                 bool f16_cache);

// The memory the machine can give a new allocation without swapping:
// /proc/meminfo's MemAvailable (Linux), else the physical memory
// (sysconf pages x page size); `source` says which, 0 bytes: unknown.
struct MachineMemory {
  uint64_t available = 0;
  uint64_t total = 0;
  std::string source;
};
MachineMemory QueryMachineMemory();

// Throws Error naming the KV-cache and scratch sizes, max_seq_len, max_batch
// and the machine's memory when the session's buffers exceed `machine`'s
// available memory (unknown memory: no check).
void CheckCpuSessionFits(const ModelConfig& config, int max_seq_len, int max_batch,
                         bool f16_cache, const MachineMemory& machine);

// Whether AWQCORE_MAP_WEIGHTS=1 asks the weights to stay the file mapping,
// which processes share through the page cache: then no load-time step
// copies weights into private memory or writes them (CopyToHugePages here,
// the lm_head's tiles of ops/embedding_table.h: AddTableTiles, the int4
// codes' regrouping of ops/int4_tiles.h: AddInt4Tiles).
bool KeepWeightsMapped();

// Copies a read-only file mapping of `size` bytes into anonymous memory
// backed by transparent huge pages where the kernel offers them, and returns
// the copy (read-only; the caller unmaps the original and, later, the copy
// with munmap), or nullptr to keep the mapping: AWQCORE_MAP_WEIGHTS=1, a
// file under one huge page, too little available memory, or no memory.
const uint8_t* CopyToHugePages(const uint8_t* mapping, uint64_t size);

// `size` bytes of zero-filled writable anonymous memory, backed by
// transparent huge pages where the kernel offers them (the weights' TLB
// misses, as for CopyToHugePages), unmapped when the last owner lets go.
// Throws std::bad_alloc when the system has none to give.
std::shared_ptr<uint8_t> HugePageBuffer(uint64_t size);

// Makes [p, p + size) read-only once it is filled (p page-aligned: the start
// of a HugePageBuffer or of CopyToHugePages' copy): a stray write then faults
// instead of changing weights. If the kernel refuses, the memory stays
// writable: the seal only catches bugs, and nothing depends on it.
void SealReadOnly(const uint8_t* p, uint64_t size);

// Makes the pages that hold [p, p + size) of the loaded weights writable
// (true) or read-only again (false), for a load-time regrouping in place
// (ops/int4_tiles.h). Returns whether the protection changed.
bool SetPagesWritable(const void* p, uint64_t size, bool writable);

// Drops the whole pages inside [p, p + size) from the process's resident set
// (MADV_DONTNEED): weights whose bytes were copied into another layout and
// are never read again. A later read would see the file's bytes again in a
// file mapping and zeros in anonymous memory, so only bytes no pointer of
// the model reaches may be released.
void ReleasePages(const void* p, uint64_t size);

}  // namespace awqcore
