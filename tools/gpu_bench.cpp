// GPU benchmark (CMake target gpu_bench in CUDA builds with tests; run by
// tools/gpu_check.sh):
// int4 GEMV bandwidth vs a measured device copy, the prefill GEMM's TFLOP/s
// (tools/gpu_torch_peer.py prints torch.matmul's f16 TFLOP/s to compare),
// and end-to-end speed of a Llama-2-7B-shape model with random int4 weights
// filled on the device.
//
// Roofline of a decode step: every weight byte once (int4 layers + lm_head)
// plus the KV cache read at the context length, over the copy bandwidth.
//
// GEMV times are CUDA-event times over 50 back-to-back launches, so they
// include the ~1-2 us the GPU spends between two dependent small kernels.
// For kernel-only time run one shape under Nsight Compute:
//   ncu -k regex:Int4Gemv -s 3 -c 1 --clock-control none \
//       --metrics gpu__time_duration.sum,dram__bytes_read.sum gpu_bench gemv OUT IN BATCH
// ("gemv OUT IN BATCH" times just that GEMV and prints one table row;
// "decode" runs 256 greedy decode steps and nothing else, for nsys; "moe"
// runs only the mixture-of-experts decode table, MoeBench).
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "cuda_testing.h"
#include "sampler.h"

using namespace awqcore;

namespace {
// Bytes a GEMV must move: nibbles, f16 scale + u8 zero per group, x and y in f32.
double GemvBytes(int out, int in, int batch) {
  return out * (in / 2.0) + out * (in / 128.0) * 3 + 4.0 * batch * (out + in);
}
}  // namespace

// The Llama-2-7B shape: 4096 hidden, 32 layers, 11008 FFN, 32 heads, vocab 32000.
ModelConfig Llama7BShape() {
  ModelConfig c;
  c.architecture = "llama"; c.vocab_size = 32000; c.hidden_size = 4096; c.intermediate_size = 11008;
  c.num_layers = 32; c.num_heads = 32; c.num_kv_heads = 32; c.head_dim = 128;
  c.max_position_embeddings = 4096; c.rms_norm_eps = 1e-5f;
  return c;
}

// Greedy decode steps only (after a 64-token prompt), for a profiler's
// per-kernel table of a decode step: gpu_check.sh runs it under nsys.
int DecodeOnly() {
  auto model = CreateRandomCudaForward(Llama7BShape(), 128, 512, 1, 1);
  std::vector<int> prompt(64);
  for (int i = 0; i < 64; ++i) prompt[i] = (i * 7919) % 32000;
  const TokenPick greedy;
  int token = model->ForwardPick(0, prompt.data(), 64, greedy);
  for (int i = 0; i < 256; ++i) token = model->ForwardPick(0, &token, 1, greedy);
  std::printf("256 decode steps done (last token %d)\n", token);
  return 0;
}

// Bytes of an int4 [out, in] linear at g128: nibbles, f16 scale + u8 zero per group.
double Int4Bytes(double out, double in) { return out * in / 2 + out * (in / 128) * 3; }

// Mixtral-8x7B's shape (8 experts, top-2, 4096 hidden, experts 14336 wide,
// 32 layers, GQA 32/8) and Qwen3-30B-A3B's (128 experts, top-8, 2048 hidden,
// experts 768 wide, 48 layers, GQA 32/4, head_dim 128, q/k norms), random
// int4 weights and routers filled on the device.
ModelConfig MixtralShape() {
  ModelConfig c = Llama7BShape();
  c.architecture = "mixtral"; c.intermediate_size = 14336; c.num_kv_heads = 8;
  c.num_experts = 8; c.num_experts_per_tok = 2; c.moe_intermediate_size = 14336; c.norm_topk_prob = true;
  return c;
}
ModelConfig Qwen3MoeShape() {
  ModelConfig c = Llama7BShape();
  c.architecture = "qwen3_moe"; c.vocab_size = 151936; c.hidden_size = 2048; c.intermediate_size = 6144;
  c.num_layers = 48; c.num_heads = 32; c.num_kv_heads = 4; c.head_dim = 128; c.qk_norm = true;
  c.num_experts = 128; c.num_experts_per_tok = 8; c.moe_intermediate_size = 768; c.norm_topk_prob = true;
  return c;
}

// Decode of a mixture-of-experts model: tok/s at batch 1 and 8 after a
// 64-token prompt, against the roofline of the bytes a step reads: the
// attention linears, the routers, the lm_head and the KV cache, plus the
// experts the step's tokens chose. At batch 1 that is k experts per layer;
// at batch 8, with the random routers spreading tokens evenly, an expert is
// read when any of the 8 x k choices hits it: E (1 - (1 - k/E)^8) experts
// per layer on average. "all experts" is the same model read densely (every
// expert every step): what a runtime without routing would stream.
void MoeBench(const char* name, const ModelConfig& c, double copy_gbs) {
  const int context = 64, steps = 48, batch = 8;
  auto model = CreateRandomCudaForward(c, 128, context + 2 * (steps + 1), batch, 1);
  const double d = c.hidden_size, q_width = c.num_heads * c.head_dim, kv_width = c.num_kv_heads * c.head_dim;
  const double attention = 2 * Int4Bytes(q_width, d) + 2 * Int4Bytes(kv_width, d);
  const double expert = 2 * Int4Bytes(c.moe_intermediate_size, d) + Int4Bytes(d, c.moe_intermediate_size);
  const double fixed = c.num_layers * (attention + c.num_experts * d * 4) + c.vocab_size * d * 2;
  const double kv = 2.0 * c.num_layers * (context + steps) * kv_width * 2;
  const double E = c.num_experts, k = c.num_experts_per_tok;
  const double touched8 = E * (1 - std::pow(1 - k / E, batch));
  std::printf("\n%s: %.1f GB of weights on the device, %.2f GB active per batch-1 token\n", name,
              (fixed + c.num_layers * E * expert) / 1e9, (fixed + c.num_layers * k * expert) / 1e9);
  std::printf("| batch | tok/s | GB/s on active bytes | %% of copy | roofline tok/s | all experts roofline tok/s |\n"
              "|---|---|---|---|---|---|\n");
  std::vector<int> prompt(context);
  for (int i = 0; i < context; ++i) prompt[i] = (i * 7919) % c.vocab_size;
  const TokenPick greedy;
  auto now = [] { return std::chrono::steady_clock::now(); };
  auto secs = [](auto a, auto b) { return std::chrono::duration<double>(b - a).count(); };
  // Batch 1: the token picked on the device and fed back (graph captured by the first step).
  int token = model->ForwardPick(0, prompt.data(), context, greedy);
  token = model->ForwardPick(0, &token, 1, greedy);
  auto t0 = now();
  for (int i = 0; i < steps; ++i) token = model->ForwardPick(0, &token, 1, greedy);
  const double b1 = steps / secs(t0, now());
  const double bytes1 = fixed + kv + c.num_layers * k * expert;
  const double all1 = fixed + kv + c.num_layers * E * expert;
  std::printf("| 1 | %.1f | %.0f | %.0f%% | %.1f | %.1f |\n", b1, b1 * bytes1 / 1e9, 100 * b1 * bytes1 / 1e9 / copy_gbs,
              copy_gbs * 1e9 / bytes1, copy_gbs * 1e9 / all1);
  // Batch 8: 8 prompts (distinct, so tokens route differently), one token of each per step.
  std::vector<int> seqs(batch), ids(batch), tokens(batch);
  const std::vector<TokenPick> picks(batch);
  for (int s = 0; s < batch; ++s) {
    seqs[s] = s;
    model->Truncate(s, 0);
    for (int i = 0; i < context; ++i) prompt[i] = (i * 7919 + s * 104729) % c.vocab_size;
    ids[s] = model->ForwardPick(s, prompt.data(), context, greedy);
  }
  model->DecodeStepPick(seqs.data(), ids.data(), batch, picks.data(), tokens.data());  // graph capture
  t0 = now();
  for (int i = 0; i < steps; ++i) {
    ids.swap(tokens);
    model->DecodeStepPick(seqs.data(), ids.data(), batch, picks.data(), tokens.data());
  }
  const double b8 = batch * steps / secs(t0, now());
  const double bytes8 = fixed + batch * kv + c.num_layers * touched8 * expert;
  const double all8 = fixed + batch * kv + c.num_layers * E * expert;
  std::printf("| %d | %.1f | %.0f | %.0f%% | %.1f | %.1f |\n", batch, b8, b8 / batch * bytes8 / 1e9,
              100 * b8 / batch * bytes8 / 1e9 / copy_gbs, batch * copy_gbs * 1e9 / bytes8, batch * copy_gbs * 1e9 / all8);
}

int main(int argc, char** argv) {
  if (argc == 2 && std::string(argv[1]) == "decode") return DecodeOnly();
  if (argc == 2 && std::string(argv[1]) == "moe") {
    std::printf("device: %s\n", CudaDeviceInfo().c_str());
    const uint64_t copy_bytes = 1ull << 30;
    const double copy_gbs = 2.0 * copy_bytes / cuda_bench::CopyMicros(copy_bytes) / 1e3;
    std::printf("copy bandwidth (1 GiB D2D, read+write): %.0f GB/s\n", copy_gbs);
    MoeBench("Mixtral-8x7B shape", MixtralShape(), copy_gbs);
    MoeBench("Qwen3-30B-A3B shape", Qwen3MoeShape(), copy_gbs);
    return 0;
  }
  if (argc == 5 && std::string(argv[1]) == "gemv") {
    const int out = std::atoi(argv[2]), in = std::atoi(argv[3]), batch = std::atoi(argv[4]);
    const double us = cuda_bench::Int4GemvMicros(out, in, 128, batch);
    std::printf("| %d x %d | %d | %.1f | %.0f |\n", out, in, batch, us, GemvBytes(out, in, batch) / us / 1e3);
    return 0;
  }
  std::printf("device: %s\n", CudaDeviceInfo().c_str());
  const uint64_t copy_bytes = 1ull << 30;
  const double copy_gbs = 2.0 * copy_bytes / cuda_bench::CopyMicros(copy_bytes) / 1e3;  // read + write
  std::printf("copy bandwidth (1 GiB D2D, read+write): %.0f GB/s\n\n", copy_gbs);

  std::printf("| GEMV out x in g128 | batch | us | GB/s | %% of copy |\n|---|---|---|---|---|\n");
  const int shapes[][2] = {{4096, 4096}, {11008, 4096}, {4096, 11008}};
  for (const auto& s : shapes) {
    for (int batch : {1, 2, 4, 8}) {
      const double us = cuda_bench::Int4GemvMicros(s[0], s[1], 128, batch);
      const double gbs = GemvBytes(s[0], s[1], batch) / us / 1e3;
      std::printf("| %d x %d | %d | %.1f | %.0f | %.0f%% |\n", s[0], s[1], batch, us, gbs, 100 * gbs / copy_gbs);
    }
  }

  // Prefill GEMM (tensor cores, int4_gemm.cu) at M tokens: 2 M out in FLOP.
  std::printf("\n| GEMM M x out x in g128 | us | TFLOP/s |\n|---|---|---|\n");
  for (const auto& s : shapes) {
    for (int m : {16, 256, 2048, 8192}) {
      const double us = cuda_bench::Int4GemvMicros(s[0], s[1], 128, m);
      std::printf("| %d x %d x %d | %.1f | %.1f |\n", m, s[0], s[1], us, 2.0 * m * s[0] * s[1] / us / 1e6);
    }
  }

  const int max_seq = 2048 + 128, batch = 8;  // room for the prompt + 2 x (1 + 48) decode steps
  auto model = CreateRandomCudaForward(Llama7BShape(), 128, max_seq, batch, 1);
  std::printf("\n7B-shape model on the device: %.0f MiB (weights + f16 KV caches for %d x %d tokens + scratch)\n",
              model->device_bytes() / 1048576.0, batch, max_seq);
  const double layer_bytes = 4.0 * (4096.0 * 4096 / 2 + 4096 * 32 * 3) + 3.0 * (11008.0 * 4096 / 2 + 11008 * 32 * 3);
  const double weight_bytes = 32 * layer_bytes + 32000.0 * 4096 * 2;
  std::vector<float> logits(32000 * 64);
  auto now = [] { return std::chrono::steady_clock::now(); };
  auto secs = [](auto a, auto b) { return std::chrono::duration<double>(b - a).count(); };
  std::printf("| phase | context | tok/s | roofline tok/s | %% of roofline |\n|---|---|---|---|---|\n");
  for (int context : {64, 2048}) {
    model->Reset();
    std::vector<int> prompt(context);
    for (int i = 0; i < context; ++i) prompt[i] = (i * 7919) % 32000;
    const auto t0 = now();
    model->Forward(0, prompt.data(), context, ForwardPass::Logits::kLastOnly, logits.data());
    const double prefill = secs(t0, now());
    if (context == 2048) std::printf("| prefill | %d | %.0f | | |\n", context, context / prefill);
    const int steps = 48;
    // Decode as Session runs it: the token picked on the device and fed
    // back (the first call captures the CUDA graph, outside the timing);
    // greedy, then sampled (temperature, top-k 40, top-p 0.95: PickTokens'
    // radix selects over the 32000 logits instead of one argmax).
    const double kv_bytes = 2.0 * 32 * (context + steps) * 4096 * 2;
    const double roof = copy_gbs * 1e9 / (weight_bytes + kv_bytes);
    const TokenPick greedy, sampled{0.8f, 40, 0.95f, 0.5};
    for (const TokenPick* pick : {&greedy, &sampled}) {
      int token = model->ForwardPick(0, prompt.data(), 1, *pick);
      const auto t1 = now();
      for (int i = 0; i < steps; ++i) token = model->ForwardPick(0, &token, 1, *pick);
      const double per_token = secs(t1, now()) / steps;
      std::printf("| decode b1 %s | %d | %.1f | %.1f | %.0f%% |\n", pick == &greedy ? "greedy" : "top-k/top-p",
                  context, 1 / per_token, roof, 100 / per_token / roof);
    }

    // Batch 8: the same prompt prefilled into 8 sequences (greedy decoding
    // then keeps them identical, which costs the same as distinct ones), then
    // steps of one token each; tok/s summed over the batch. Roofline: weights
    // once per step plus 8 caches.
    std::vector<int> seqs(batch), ids(batch), tokens(batch);
    const std::vector<TokenPick> picks(batch);  // greedy
    for (int s = 0; s < batch; ++s) {
      seqs[s] = s;
      model->Truncate(s, 0);
      ids[s] = model->ForwardPick(s, prompt.data(), context, greedy);
    }
    model->DecodeStepPick(seqs.data(), ids.data(), batch, picks.data(), tokens.data());  // graph capture
    const auto t2 = now();
    for (int i = 0; i < steps; ++i) {
      ids.swap(tokens);
      model->DecodeStepPick(seqs.data(), ids.data(), batch, picks.data(), tokens.data());
    }
    const double per_step = secs(t2, now()) / steps;
    const double roof8 = batch * copy_gbs * 1e9 / (weight_bytes + batch * kv_bytes);
    std::printf("| decode b%d | %d | %.1f | %.1f | %.0f%% |\n", batch, context, batch / per_step, roof8,
                100 * batch / per_step / roof8);
  }
  return 0;
}
