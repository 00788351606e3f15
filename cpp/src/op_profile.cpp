#include "op_profile.h"

#include <atomic>
#include <cstdlib>
#include <cstring>

namespace awqcore {
namespace {

constexpr int kOps = static_cast<int>(Op::kCount);

std::atomic<int64_t> g_nanos[kOps];
std::atomic<int64_t> g_decode_calls{0};
std::atomic<int64_t> g_decode_tokens{0};

std::atomic<bool>& Enabled() {
  static std::atomic<bool> enabled{[] {
    const char* value = std::getenv("AWQCORE_PROFILE");
    return value != nullptr && std::strcmp(value, "1") == 0;
  }()};
  return enabled;
}

}  // namespace

const char* OpName(Op op) {
  switch (op) {
    case Op::kEmbedding: return "embedding";
    case Op::kNorms: return "norms";
    case Op::kQkv: return "q/k/v";
    case Op::kRopeCacheWrite: return "rope+cache write";
    case Op::kAttention: return "attention";
    case Op::kO: return "o";
    case Op::kGateUpAct: return "gate/up+act";
    case Op::kDown: return "down";
    case Op::kMoe: return "router+experts";
    case Op::kLmHead: return "lm_head";
    case Op::kSampling: return "sampling";
    case Op::kOther: return "other";
    case Op::kCount: break;
  }
  return "?";
}

bool OpProfilingEnabled() { return Enabled().load(std::memory_order_relaxed); }
void SetOpProfiling(bool enabled) { Enabled().store(enabled, std::memory_order_relaxed); }

OpProfile OpProfileTotals() {
  OpProfile totals;
  for (int i = 0; i < kOps; ++i) totals.nanos[i] = g_nanos[i].load(std::memory_order_relaxed);
  totals.decode_calls = g_decode_calls.load(std::memory_order_relaxed);
  totals.decode_tokens = g_decode_tokens.load(std::memory_order_relaxed);
  return totals;
}

void ResetOpProfile() {
  for (std::atomic<int64_t>& n : g_nanos) n.store(0, std::memory_order_relaxed);
  g_decode_calls.store(0, std::memory_order_relaxed);
  g_decode_tokens.store(0, std::memory_order_relaxed);
}

void AddOpNanos(Op op, int64_t nanos) {
  g_nanos[static_cast<int>(op)].fetch_add(nanos, std::memory_order_relaxed);
}

void AddDecodeCall(int tokens) {
  g_decode_calls.fetch_add(1, std::memory_order_relaxed);
  g_decode_tokens.fetch_add(tokens, std::memory_order_relaxed);
}

}  // namespace awqcore
