// The CUDA backend as the CPU-side code sees it: declarations only, so this
// header compiles in builds without nvcc. The definition lives in
// cuda/forward.cu (builds with AWQCORE_WITH_CUDA); cuda_unavailable.cpp
// defines it in builds without, where it throws.
#pragma once

#include <memory>

#include "awqcore/awqcore.h"
#include "forward_pass.h"
#include "model_weights.h"

namespace awqcore {

// The forward pass on one GPU (cuda/forward.cu), the same step order as the
// CPU's Transformer (transformer.h): logits copied back to the host in f32,
// or (picks_on_device()) only the picked tokens. Uploads the weights once,
// allocates the caches of max_sequences sequences of max_seq_len tokens and
// the scratch once. Throws Error "awqcore was built without CUDA", "no CUDA
// device", or naming the sizes when they do not fit in free device memory
// (checked before allocating). Mixture-of-experts layers run on the device
// (cuda/moe.cu: router, top-k and grouped expert GEMV/GEMM).
//
// Thread safety: owned by one Session and used by one thread at a time; it
// owns its device memory and stream.
std::unique_ptr<ForwardPass> CreateCudaForward(const ModelConfig& config, const ModelWeights& weights,
                                               int max_seq_len, int max_sequences);

}  // namespace awqcore
