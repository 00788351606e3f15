// Per-op wall time of the CPU forward pass's decode calls, for
// `awqcore bench --profile` ("where does a decode step's time go").
//
// Off by default; AWQCORE_PROFILE=1 in the environment turns it on at the
// first use, SetOpProfiling switches it at run time. The Transformer times the
// calls that append one token per sequence (decode steps: DecodeStep, and
// Forward of a single token) with an OpLap: each Lap(op) charges the time
// since the previous lap to `op`, so consecutive laps cover the call without
// gaps. When off, a lap is one predictable branch (no clock read): ~25 per
// layer against the microseconds each op takes.
//
// Thread safety: the totals are atomics (relaxed adds), safe from any thread;
// sessions running at once add into the same totals.
#pragma once

#include <chrono>
#include <cstdint>

namespace awqcore {

enum class Op {
  kEmbedding,       // gather (+ embedding scale)
  kNorms,           // every RMSNorm: input, post-attention, q/k, sandwich, final
  kQkv,             // the fused q/k/v projections (+ biases)
  kRopeCacheWrite,  // rotary of q and k, k/v rows written to the cache
  kAttention,       // scores, softmax, weighted values over the cache
  kO,               // o_proj
  kGateUpAct,       // gate and up projections with act(gate) * up
  kDown,            // down_proj
  kMoe,             // an MoE block: router and the chosen experts' gate/up/down
  kLmHead,          // the logits (+ soft-cap)
  kSampling,        // finiteness check and the sampler's pick (session.cpp)
  kOther,           // residual adds and the rest of the step
  kCount
};

const char* OpName(Op op);

bool OpProfilingEnabled();
void SetOpProfiling(bool enabled);

struct OpProfile {
  int64_t nanos[static_cast<int>(Op::kCount)] = {};
  int64_t decode_calls = 0;   // timed calls (decode steps)
  int64_t decode_tokens = 0;  // tokens in them (batch B: B per step)
};
OpProfile OpProfileTotals();
void ResetOpProfile();

void AddOpNanos(Op op, int64_t nanos);
void AddDecodeCall(int tokens);

// Charges the wall time between consecutive laps to the op named at each lap,
// from Start on; Start(false) makes every lap a no-op until the next Start.
class OpLap {
 public:
  void Start(bool enabled) {
    enabled_ = enabled;
    if (enabled_) last_ = std::chrono::steady_clock::now();
  }
  void Lap(Op op) {
    if (!enabled_) return;
    const auto now = std::chrono::steady_clock::now();
    AddOpNanos(op, std::chrono::duration_cast<std::chrono::nanoseconds>(now - last_).count());
    last_ = now;
  }

 private:
  bool enabled_ = false;
  std::chrono::steady_clock::time_point last_;
};

}  // namespace awqcore
