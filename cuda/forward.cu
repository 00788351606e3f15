// The forward pass on one GPU (cpp/src/cuda_backend.h), the device twin of
// Transformer (cpp/src/transformer.h): the same decoder-layer description
// (docs/format.md), the same step order:
//
//   x = embed[ids] * embedding_scale
//   per layer: h = rmsnorm(x) * input_norm; q, k, v = linears(h)
//              qk_norm: per-head rmsnorm of q and k
//              rotary (the layer's table), cache write, attention (the
//              layer's window, scores * attention_scale), a = o_proj(...)
//              pre:      x += a;                     h = rmsnorm(x) * post_norm
//              sandwich: x += rmsnorm(a) * post_norm; h = rmsnorm(x) * pre_ffn_norm
//              m = down(act(gate(h)) * up(h)), or in a mixture-of-experts
//                  layer the weighted sum of the router's k experts' (moe.cu)
//              pre: x += m;  sandwich: x += rmsnorm(m) * post_ffn_norm
//   logits = lm_head(rmsnorm(x) * final_norm), soft-capped when configured
//   (before the device sampling too).
//
// The rotary tables are RopeTable's (ops/rope.h), built on the host by the
// CPU's code and uploaded: one for rope_theta with the rope scaling, and one
// for rope_local_theta when the sliding layers have their own base.
//
// Memory, allocated once in the constructor: one arena for the weights (the
// file's encodings, uploaded once; ~0.56 B per parameter at g128), the f16 KV
// caches of max_sequences sequences (2 * layers * max_sequences * max_seq_len
// * KV * hd * 2 B: Llama-2-7B at 2048 tokens is 1 GiB per sequence) and f32
// scratch for kChunk tokens. Pinned host buffers stage each token's id,
// position and sequence, and take back logits or picked tokens, so a decode
// step (one token of each of n sequences) is captured once per n as a CUDA
// graph and replayed: ~10 launches per layer would otherwise cost ~3 us each
// on the host, ~1 ms per token on a 32-layer model.
//
// Several sequences share every weight read: a decode step of n sequences
// runs each linear once over n tokens (the GEMV's tiles of up to 8 tokens
// dequantize each weight once for all of them, int4_gemv.cu), and only
// attention reads per-sequence data, each token its own cache rows.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "common.cuh"
#include "cuda_backend.h"
#include "weight_arena.cuh"
#include "half.h"
#include "ops/embedding_table.h"
#include "ops/int4_tiles.h"
#include "ops/rope.h"
#include "sampler.h"

namespace awqcore {
namespace {

using cu::DeviceBuffer;
using cu::DeviceInt4;

// Tokens per pass through the layers: bounds the scratch, and is the M of
// the prefill GEMMs (int4_gemm.cu): 256 tokens give a 4096-row layer
// 32 x 4 = 128 blocks of 64 x 128, one wave on an H100's 132 SMs (64 gave 32).
constexpr int kChunk = 256;
// Prefill chunks of at least one 64-row query tile go through the
// tensor-core attention (attention_prefill.cu) when the head dim has one;
// shorter ones, and decode steps, through the split kernel (attention.cu),
// which wastes no rows. The cut-over is the tile size, not yet measured.
constexpr int kPrefillAttentionMinTokens = 64;
using cu::kAlign;
std::string MiB(uint64_t bytes) { return std::to_string((bytes + (1u << 20) - 1) >> 20) + " MiB"; }


// The staging buffers' layout, in ints, for C = chunk tokens: what a pass
// reads (ids, and each token's place) and what it returns (picked tokens).
struct StagingLayout {
  explicit StagingLayout(int c) : chunk(c) {}
  int ids() const { return 0; }             // [C] token ids
  int positions() const { return chunk; }   // [C] position of token t in its sequence
  int sequences() const { return 2 * chunk; }  // [C] its sequence
  int inputs() const { return 3 * chunk; }  // ints copied to the device per pass
  int tokens() const { return 3 * chunk; }  // [C] the token picked from each logits row
  int total() const { return 4 * chunk; }
  int chunk;
};

// Norm weights as LayerWeights (model_weights.h) names them; those the
// description does not use stay null.
struct DeviceLayer {
  const float* input_norm = nullptr;     // [d]
  DeviceInt4 q, k, v, o;
  const float* q_norm = nullptr;         // [hd]  qk_norm
  const float* k_norm = nullptr;         // [hd]  qk_norm
  const float* post_norm = nullptr;      // [d]
  const float* pre_ffn_norm = nullptr;   // [d]   sandwich
  const float* post_ffn_norm = nullptr;  // [d]   sandwich
  DeviceInt4 gate, up, down;             // a dense MLP layer's
  bool moe = false;                      // the MLP is a mixture of experts: `experts`
  cu::DeviceMoe experts;
  bool sliding = false;                  // config.layer_sliding[layer]
};

// Layer `layer` of a model of `config` holds experts (docs/format.md: absent
// model.moe_layers means every layer when num_experts > 0).
bool IsMoeLayer(const ModelConfig& config, int layer) {
  return config.num_experts > 0 && (config.moe_layers.empty() || config.moe_layers[layer] != 0);
}

class CudaTransformer final : public ForwardPass {
 public:
  // weights == nullptr: weights of the config's shapes at group_size written
  // by `fill`.
  CudaTransformer(const ModelConfig& config, const ModelWeights* weights, int group_size,
                  cu::DeviceFill* fill, int max_seq_len, int max_sequences)
      : config_(config),
        max_seq_len_(max_seq_len),
        chunk_(std::min(kChunk, std::max(max_seq_len, max_sequences))),
        staging_(chunk_),
        positions_(max_sequences, 0),
        graph_exec_(2 * max_sequences, nullptr),
        arena_(fill) {
    if (max_sequences > kChunk) {
      throw Error("the CUDA backend decodes at most " + std::to_string(kChunk) +
                  " sequences together (got max_batch " + std::to_string(max_sequences) + ")");
    }
    cu::RequireDevice();
    const int d = config.hidden_size, hd = config.head_dim;
    if (d % 8 != 0 || hd % 8 != 0 || hd > cu::kMaxHeadDim) {
      throw Error("the CUDA backend needs hidden_size and head_dim divisible by 8 and head_dim <= " +
                  std::to_string(cu::kMaxHeadDim) + " (got " + std::to_string(d) + ", " + std::to_string(hd) + ")");
    }
    if (config.num_experts > 0) CheckExperts(config);
    // As the CPU's Transformer builds them (transformer.cpp).
    full_attention_ = {{config.num_heads, config.num_kv_heads, hd, config.attention_scale, 0}, max_seq_len};
    sliding_attention_ = full_attention_;
    sliding_attention_.shape.window = config.sliding_window;
    const bool local_rope = config.rope_local_theta > 0;
    PlaceWeights(weights, group_size);  // pass 1: sizes only
    const size_t weight_bytes = arena_.size();
    const int q_width = config.num_heads * hd, kv_width = config.num_kv_heads * hd;
    const size_t cache_bytes = 2ull * config.num_layers * max_sequences * max_seq_len * kv_width * sizeof(__half);
    const size_t rope_floats = (local_rope ? 2 : 1) * static_cast<size_t>(max_seq_len) * hd;  // cos + sin
    // A model whose every layer holds experts needs no dense MLP buffers.
    bool any_dense = false;
    for (int i = 0; i < config.num_layers; ++i) any_dense = any_dense || !IsMoeLayer(config, i);
    const int dense_ffn = any_dense ? config.intermediate_size : 0;
    const size_t moe_bytes =
        config.num_experts > 0 ? cu::MoeBuffers::Bytes(chunk_, config.num_experts_per_tok, config.num_experts, d,
                                                       config.moe_intermediate_size)
                               : 0;
    const size_t scratch_floats =
        static_cast<size_t>(chunk_) * (2 * d + 2 * q_width + 2 * kv_width + 2 * dense_ffn + config.vocab_size) +
        cu::AttentionScratchFloats(full_attention_, chunk_) + rope_floats + moe_bytes / 4;
    const uint64_t total = weight_bytes + cache_bytes + scratch_floats * 4 + 4 * kAlign;
    size_t free_bytes = 0, total_bytes = 0;
    AWQ_CUDA_CHECK(cudaMemGetInfo(&free_bytes, &total_bytes));
    if (total > free_bytes) {
      throw Error("the CUDA model needs " + MiB(total) + " (weights " + MiB(weight_bytes) +
                  ", KV cache " + MiB(cache_bytes) + " for max_seq_len " + std::to_string(max_seq_len) +
                  " x max_batch " + std::to_string(max_sequences) + ", scratch " + MiB(scratch_floats * 4) +
                  ") but the device has " + MiB(free_bytes) + " free of " + MiB(total_bytes) +
                  "; lower max_seq_len or max_batch");
    }
    arena_.Allocate();
    PlaceWeights(weights, group_size);  // pass 2: upload or fill
    k_cache_ = DeviceBuffer(cache_bytes / 2);
    v_cache_ = DeviceBuffer(cache_bytes / 2);
    auto floats = [&](size_t n) { return DeviceBuffer(n * sizeof(float)); };
    x_ = floats(static_cast<size_t>(chunk_) * d);                // [C, d]   residual stream
    h_ = floats(static_cast<size_t>(chunk_) * d);                // [C, d]   normalized, or a sandwich's o/down output
    q_ = floats(static_cast<size_t>(chunk_) * q_width);          // [C, H*hd]
    attn_ = floats(static_cast<size_t>(chunk_) * q_width);       // [C, H*hd]
    k_ = floats(static_cast<size_t>(chunk_) * kv_width);         // [C, KV*hd] before rope
    v_ = floats(static_cast<size_t>(chunk_) * kv_width);         // [C, KV*hd]
    gate_ = floats(static_cast<size_t>(chunk_) * dense_ffn);  // [C, ffn]
    up_ = floats(static_cast<size_t>(chunk_) * dense_ffn);    // [C, ffn]
    if (config.num_experts > 0) {
      moe_ = cu::MoeBuffers(chunk_, config.num_experts_per_tok, config.num_experts, d, config.moe_intermediate_size);
    }
    logits_ = floats(static_cast<size_t>(chunk_) * config.vocab_size);       // [C, vocab]
    att_scratch_ = floats(cu::AttentionScratchFloats(full_attention_, chunk_));  // [C, H, splits, hd+2]
    rope_ = cu::UploadRopeTable(RopeTable(hd, config.rope_theta, max_seq_len, config.rope_scaling));
    if (local_rope) local_rope_ = cu::UploadRopeTable(RopeTable(hd, config.rope_local_theta, max_seq_len));
    staged_ = DeviceBuffer(staging_.total() * sizeof(int));
    AWQ_CUDA_CHECK(cudaMallocHost(&host_staged_, staging_.total() * sizeof(int)));
    picks_ = DeviceBuffer(chunk_ * sizeof(TokenPick));
    AWQ_CUDA_CHECK(cudaMallocHost(&host_picks_, chunk_ * sizeof(TokenPick)));
    AWQ_CUDA_CHECK(cudaMallocHost(&host_logits_, static_cast<size_t>(chunk_) * config.vocab_size * 4));
    AWQ_CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
    AWQ_CUDA_CHECK(cudaDeviceSynchronize());  // fills / uploads done
    device_bytes_ = weight_bytes + cache_bytes + scratch_floats * 4;
  }

  ~CudaTransformer() override {
    for (cudaGraphExec_t exec : graph_exec_) {
      if (exec) cudaGraphExecDestroy(exec);
    }
    if (stream_) cudaStreamDestroy(stream_);
    if (host_staged_) cudaFreeHost(host_staged_);
    if (host_picks_) cudaFreeHost(host_picks_);
    if (host_logits_) cudaFreeHost(host_logits_);
  }

  void Forward(int seq, const int* ids, int n, Logits which, float* logits) override {
    Run(seq, ids, n, which == Logits::kAll ? Output::kAllLogits : Output::kLastLogits, logits);
  }

  bool picks_on_device() const override { return true; }

  int ForwardPick(int seq, const int* ids, int n, const TokenPick& pick) override {
    host_picks_[0] = pick;
    Run(seq, ids, n, Output::kLastPick, nullptr);
    return host_staged_[staging_.tokens()];
  }

  void DecodeStep(const int* seqs, const int* ids, int n, float* logits) override {
    Step(seqs, ids, n, /*pick=*/false);
    std::memcpy(logits, host_logits_, static_cast<size_t>(n) * config_.vocab_size * sizeof(float));
  }

  void DecodeStepPick(const int* seqs, const int* ids, int n, const TokenPick* picks, int* tokens) override {
    std::copy(picks, picks + n, host_picks_);
    Step(seqs, ids, n, /*pick=*/true);
    std::memcpy(tokens, host_staged_ + staging_.tokens(), n * sizeof(int));
  }

  void Reset() override { std::fill(positions_.begin(), positions_.end(), 0); }
  void Truncate(int seq, int length) override { positions_[seq] = length; }
  int position(int seq) const override { return positions_[seq]; }
  int max_seq_len() const override { return max_seq_len_; }
  uint64_t device_bytes() const override { return device_bytes_; }

 private:
  // A linear's codes in the row layout the CUDA kernels read: the CPU loader
  // may have regrouped them into its tile layout (ops/int4_tiles.h), then a
  // copy in `rows` (only in the arena's second pass, which reads the bytes).
  const uint8_t* RowCodes(const Int4Linear& w, std::vector<uint8_t>& rows) const {
    if (w.layout == Int4Layout::kRows || !arena_.placing()) return w.qweight;
    rows = Int4RowCodes(w);
    return rows.data();
  }

  DeviceInt4 PlaceInt4(const Int4Linear* w, int out, int in, int group_size) {
    DeviceInt4 dw;
    dw.out = out;
    dw.in = in;
    dw.group_size = w ? w->group_size : group_size;
    if (in % 32 != 0 || in % dw.group_size != 0) {
      throw Error("the CUDA int4 kernel needs in % 32 == 0 (got in " + std::to_string(in) +
                  ", group size " + std::to_string(dw.group_size) + ")");
    }
    const size_t groups = static_cast<size_t>(out) * (in / dw.group_size);
    // Random: codes 0..15 with zero point 8 give (q - z) of std ~4.6; the
    // scale makes each output ~unit variance for unit-variance inputs.
    const float s = 1.f / (4.6f * std::sqrt(static_cast<float>(in)));
    std::vector<uint8_t> rows;
    dw.qweight = static_cast<const uint8_t*>(arena_.Bytes(w ? RowCodes(*w, rows) : nullptr, static_cast<size_t>(out) * in / 2, 0xFF));
    dw.scales = arena_.Half(w ? w->scales : nullptr, groups, s, s);
    dw.zeros = static_cast<const uint8_t*>(arena_.Bytes(w ? w->zeros : nullptr, groups, 0x0F));
    if (w && w->bias) dw.bias = arena_.Float(w->bias, out, 0.f);
    return dw;
  }

  // Stacked experts [E, out, in] as one DeviceInt4 of expert 0 (ExpertSlice
  // gives the others): each expert's slice uploaded to its place, or all
  // filled as PlaceInt4 fills one linear.
  DeviceInt4 PlaceExperts(const std::vector<Int4Linear>* views, int out, int in, int group_size) {
    const int experts = config_.num_experts;
    if (views && static_cast<int>(views->size()) != experts) {
      throw Error("internal: " + std::to_string(views->size()) + " expert linears for num_experts " +
                  std::to_string(experts));
    }
    DeviceInt4 dw;
    dw.out = out;
    dw.in = in;
    dw.group_size = views ? (*views)[0].group_size : group_size;
    if (in % 32 != 0 || in % dw.group_size != 0) {
      throw Error("the CUDA int4 kernel needs in % 32 == 0 (got expert in " + std::to_string(in) +
                  ", group size " + std::to_string(dw.group_size) + ")");
    }
    const size_t code_bytes = static_cast<size_t>(out) * in / 2, groups = static_cast<size_t>(out) * (in / dw.group_size);
    std::vector<const uint8_t*> codes, zeros;
    std::vector<const uint16_t*> scales;
    std::vector<std::vector<uint8_t>> rows(experts);  // regrouped copies
    for (int e = 0; views && e < experts; ++e) {
      codes.push_back(RowCodes((*views)[e], rows[e]));
      scales.push_back((*views)[e].scales);
      zeros.push_back((*views)[e].zeros);
    }
    const float s = 1.f / (4.6f * std::sqrt(static_cast<float>(in)));  // as PlaceInt4's random scales
    dw.qweight = static_cast<const uint8_t*>(arena_.ByteSlices(codes, experts, code_bytes, 0xFF));
    dw.scales = arena_.HalfSlices(scales, experts, groups, s, s);
    dw.zeros = static_cast<const uint8_t*>(arena_.ByteSlices(zeros, experts, groups, 0x0F));
    return dw;
  }

  // A mixture-of-experts layer's router and stacked experts (moe == nullptr:
  // filled; the router uniform in +-2 sqrt(3 / d), logits of std ~2 for
  // unit-RMS inputs, so the random model's tokens spread over the experts).
  cu::DeviceMoe PlaceMoe(const MoeWeights* moe, int group_size) {
    const ModelConfig& c = config_;
    const int d = c.hidden_size, f = c.moe_intermediate_size;
    cu::DeviceMoe m;
    m.num_experts = c.num_experts;
    m.k = c.num_experts_per_tok;
    m.normalize = c.norm_topk_prob;
    const float bound = 2.f * std::sqrt(3.f / d);
    m.router = arena_.UniformFloat(moe ? moe->router : nullptr, static_cast<size_t>(c.num_experts) * d, -bound, bound);
    m.gate = PlaceExperts(moe ? &moe->gate : nullptr, f, d, group_size);
    m.up = PlaceExperts(moe ? &moe->up : nullptr, f, d, group_size);
    m.down = PlaceExperts(moe ? &moe->down : nullptr, d, f, group_size);
    return m;
  }

  // What the device MoE block takes: the router's shared memory holds E
  // probabilities, and the block adds its output to the residual stream
  // (pre norms: the only placement mixtral and qwen3_moe have).
  static void CheckExperts(const ModelConfig& c) {
    if (c.num_experts > cu::kMaxExperts || c.num_experts_per_tok < 1 || c.num_experts_per_tok > c.num_experts) {
      throw Error("the CUDA backend runs 1 <= k <= E <= " + std::to_string(cu::kMaxExperts) + " experts (got E " +
                  std::to_string(c.num_experts) + ", k " + std::to_string(c.num_experts_per_tok) + ")");
    }
    if (c.norm_placement != NormPlacement::kPre) {
      throw Error("the CUDA backend runs mixture-of-experts layers with pre norms only (architecture " +
                  c.architecture + ")");
    }
  }

  // The table's f16 bits for upload. An int8 table (docs/format.md) is
  // dequantized here on the host and uploaded as f16, which keeps the GPU
  // kernels and decode speed unchanged at the cost of vocab * d * 2 bytes of
  // device memory instead of vocab * d * 17/16 (SmolLM2: 57 MB vs 30 MB).
  // q * s has up to 7 + 11 = 18 significant bits, so rounding it to f16 (11)
  // moves a weight by up to 2^-11 of itself: the GPU's lm_head differs from
  // the CPU's by that much. Pass 1 only sizes the arena and reads no data, so
  // the conversion runs in pass 2 alone; `storage` holds the result until the
  // upload, which copies synchronously.
  const uint16_t* TableHalves(const EmbeddingTable& table, std::vector<uint16_t>& storage) const {
    if (table.f16 != nullptr || !arena_.placing()) return table.f16;
    // The gather reads both int8 layouts (rows, or the CPU's VNNI tiles:
    // model_weights.h) and gives q * s exactly.
    storage.resize(static_cast<size_t>(table.rows) * table.d);
    std::vector<float> row(table.d);
    for (int r = 0; r < table.rows; ++r) {
      EmbeddingGather(table, &r, 1, row.data());
      for (int c = 0; c < table.d; ++c) storage[static_cast<size_t>(r) * table.d + c] = F32ToF16(row[c]);
    }
    return storage.data();
  }

  void PlaceWeights(const ModelWeights* w, int group_size) {
    const ModelConfig& c = config_;
    const int d = c.hidden_size, hd = c.head_dim;
    const int q_width = c.num_heads * hd, kv_width = c.num_kv_heads * hd;
    const bool sandwich = c.norm_placement == NormPlacement::kSandwich;
    const size_t table = static_cast<size_t>(c.vocab_size) * d;
    std::vector<uint16_t> staging;  // [vocab, d] f16 bits of an int8 table (pass 2 only)
    embed_ = arena_.Half(w ? TableHalves(w->embed, staging) : nullptr, table, -1.f, 1.f);
    lm_head_ = (w && w->lm_head.data() == w->embed.data())
                   ? embed_
                   : arena_.Half(w ? TableHalves(w->lm_head, staging) : nullptr, table, -0.05f, 0.05f);
    final_norm_ = arena_.Float(w ? w->final_norm : nullptr, d, 1.f);
    layers_.assign(c.num_layers, DeviceLayer{});
    for (int i = 0; i < c.num_layers; ++i) {
      const LayerWeights* lw = w ? &w->layers[i] : nullptr;
      DeviceLayer& l = layers_[i];
      l.input_norm = arena_.Float(lw ? lw->input_norm : nullptr, d, 1.f);
      l.q = PlaceInt4(lw ? &lw->q : nullptr, q_width, d, group_size);
      l.k = PlaceInt4(lw ? &lw->k : nullptr, kv_width, d, group_size);
      l.v = PlaceInt4(lw ? &lw->v : nullptr, kv_width, d, group_size);
      l.o = PlaceInt4(lw ? &lw->o : nullptr, d, q_width, group_size);
      if (c.qk_norm) {
        l.q_norm = arena_.Float(lw ? lw->q_norm : nullptr, hd, 1.f);
        l.k_norm = arena_.Float(lw ? lw->k_norm : nullptr, hd, 1.f);
      }
      l.post_norm = arena_.Float(lw ? lw->post_norm : nullptr, d, 1.f);
      if (sandwich) {
        l.pre_ffn_norm = arena_.Float(lw ? lw->pre_ffn_norm : nullptr, d, 1.f);
        l.post_ffn_norm = arena_.Float(lw ? lw->post_ffn_norm : nullptr, d, 1.f);
      }
      l.sliding = !c.layer_sliding.empty() && c.layer_sliding[i] != 0;
      l.moe = lw ? lw->moe.router != nullptr : IsMoeLayer(c, i);
      if (l.moe) {
        l.experts = PlaceMoe(lw ? &lw->moe : nullptr, group_size);
      } else {
        l.gate = PlaceInt4(lw ? &lw->gate : nullptr, c.intermediate_size, d, group_size);
        l.up = PlaceInt4(lw ? &lw->up : nullptr, c.intermediate_size, d, group_size);
        l.down = PlaceInt4(lw ? &lw->down : nullptr, d, c.intermediate_size, group_size);
      }
    }
  }

  enum class Output { kAllLogits, kLastLogits, kLastPick };

  // Token t of the next pass: `id` at `position` of sequence `seq`.
  void Stage(int t, int id, int seq, int position) {
    host_staged_[staging_.ids() + t] = id;
    host_staged_[staging_.positions() + t] = position;
    host_staged_[staging_.sequences() + t] = seq;
  }

  // Sequence `seq`, chunk by chunk: stage, enqueue, wait, copy out what
  // `output` asks for.
  void Run(int seq, const int* ids, int n, Output output, float* logits) {
    const size_t vocab = config_.vocab_size;
    for (int done = 0; done < n;) {
      const int chunk = std::min(chunk_, n - done);
      const bool last = done + chunk == n;
      const int rows = output == Output::kAllLogits ? chunk : (last ? 1 : 0);
      const bool pick = last && output == Output::kLastPick;
      for (int t = 0; t < chunk; ++t) Stage(t, ids[done + t], seq, positions_[seq] + t);
      if (chunk == 1 && rows == 1) {
        DecodeGraph(1, pick);
      } else {
        Enqueue(chunk, rows, pick, /*one_sequence=*/true);
      }
      AWQ_CUDA_CHECK(cudaStreamSynchronize(stream_));
      if (rows > 0 && output != Output::kLastPick) {
        const size_t offset = output == Output::kAllLogits ? done * vocab : 0;
        std::memcpy(logits + offset, host_logits_, rows * vocab * sizeof(float));
      }
      positions_[seq] += chunk;
      done += chunk;
    }
  }

  // One token of each of seqs[0 .. n): logits of every row to host_logits_,
  // or (pick) the tokens picked for host_picks_ to the staged tokens.
  // Synchronous.
  void Step(const int* seqs, const int* ids, int n, bool pick) {
    for (int i = 0; i < n; ++i) Stage(i, ids[i], seqs[i], positions_[seqs[i]]);
    DecodeGraph(n, pick);
    AWQ_CUDA_CHECK(cudaStreamSynchronize(stream_));
    for (int i = 0; i < n; ++i) ++positions_[seqs[i]];
  }

  // Uploads the staged ids and places, runs `n` tokens through every layer,
  // and copies the logits of the last `rows` tokens to host_logits_, or
  // (pick) only the tokens PickTokens takes from them for host_picks_[0 ..
  // rows) to the staged tokens. one_sequence: the tokens are consecutive
  // positions of one sequence (a prefill chunk). Asynchronous.
  void Enqueue(int n, int rows, bool pick, bool one_sequence) {
    const ModelConfig& c = config_;
    const int d = c.hidden_size;
    const float eps = c.rms_norm_eps;
    int* staged = staged_.as<int>();
    const int* ids = staged + staging_.ids();
    const cu::TokenPlaces places{staged + staging_.positions(), staged + staging_.sequences()};
    // A layer's caches: [max_sequences, max_seq_len, KV*hd].
    const size_t kv_layer = positions_.size() * max_seq_len_ * c.num_kv_heads * c.head_dim;
    AWQ_CUDA_CHECK(cudaMemcpyAsync(staged, host_staged_, staging_.inputs() * sizeof(int), cudaMemcpyHostToDevice,
                                   stream_));
    const bool prefill_attention =
        one_sequence && n >= kPrefillAttentionMinTokens && cu::AttentionPrefillSupports(full_attention_.shape);
    const bool sandwich = c.norm_placement == NormPlacement::kSandwich;
    const int hd = c.head_dim;
    float* x = x_.as<float>();
    float* h = h_.as<float>();
    float* q = q_.as<float>();
    float* k = k_.as<float>();
    float* attn = attn_.as<float>();
    float* gate = gate_.as<float>();
    cu::Embedding(embed_, d, ids, n, c.embedding_scale, x, stream_);
    for (int i = 0; i < c.num_layers; ++i) {
      const DeviceLayer& l = layers_[i];
      __half* kc = k_cache_.as<__half>() + i * kv_layer;
      __half* vc = v_cache_.as<__half>() + i * kv_layer;
      const cu::AttentionParams& attention = l.sliding ? sliding_attention_ : full_attention_;
      const DeviceBuffer& rope = l.sliding && local_rope_.bytes() > 0 ? local_rope_ : rope_;
      cu::RmsNorm(x, l.input_norm, d, eps, n, h, stream_);
      cu::Int4LinearForward(l.q, h, n, q, false, stream_);
      cu::Int4LinearForward(l.k, h, n, k, false, stream_);
      cu::Int4LinearForward(l.v, h, n, v_.as<float>(), false, stream_);
      if (c.qk_norm) {  // rows of hd: n * H of q, n * KV of k
        cu::RmsNorm(q, l.q_norm, hd, eps, n * c.num_heads, q, stream_);
        cu::RmsNorm(k, l.k_norm, hd, eps, n * c.num_kv_heads, k, stream_);
      }
      cu::RopeWriteCache(attention, rope.as<float>(), rope.as<float>() + static_cast<size_t>(max_seq_len_) * (hd / 2),
                         places, n, q, k, v_.as<float>(), kc, vc, stream_);
      if (prefill_attention) {
        cu::AttentionPrefill(attention, places, n, q, kc, vc, attn, stream_);
      } else {
        cu::Attention(attention, places, n, q, kc, vc, att_scratch_.as<float>(), attn, stream_);
      }
      if (sandwich) {
        cu::Int4LinearForward(l.o, attn, n, h, false, stream_);
        cu::AddRmsNorm(h, l.post_norm, d, eps, n, x, stream_);  // x += norm(o_proj(attn))
        cu::RmsNorm(x, l.pre_ffn_norm, d, eps, n, h, stream_);
      } else {
        cu::Int4LinearForward(l.o, attn, n, x, true, stream_);  // x += o_proj(attn)
        cu::RmsNorm(x, l.post_norm, d, eps, n, h, stream_);
      }
      if (l.moe) {  // pre norms (CheckExperts): x += moe(h)
        cu::MoeForward(l.experts, c.activation, h, n, moe_, x, /*accumulate=*/true, stream_);
        continue;
      }
      cu::Int4LinearForward(l.gate, h, n, gate, false, stream_);
      cu::Int4LinearForward(l.up, h, n, up_.as<float>(), false, stream_);
      cu::GatedActivation(c.activation, gate, up_.as<float>(), static_cast<size_t>(n) * c.intermediate_size, gate,
                          stream_);
      if (sandwich) {
        cu::Int4LinearForward(l.down, gate, n, h, false, stream_);
        cu::AddRmsNorm(h, l.post_ffn_norm, d, eps, n, x, stream_);  // x += norm(down_proj(...))
      } else {
        cu::Int4LinearForward(l.down, gate, n, x, true, stream_);  // x += down_proj(...)
      }
    }
    if (rows == 0) return;
    const float* last = x + static_cast<size_t>(n - rows) * d;
    cu::RmsNorm(last, final_norm_, d, eps, rows, h, stream_);
    cu::F16Linear(lm_head_, c.vocab_size, d, h, rows, logits_.as<float>(), stream_);
    if (c.final_logit_softcap > 0) {
      cu::SoftCap(logits_.as<float>(), static_cast<size_t>(rows) * c.vocab_size, c.final_logit_softcap, stream_);
    }
    if (pick) {
      int* tokens = staged + staging_.tokens();
      TokenPick* picks = picks_.as<TokenPick>();
      AWQ_CUDA_CHECK(cudaMemcpyAsync(picks, host_picks_, rows * sizeof(TokenPick), cudaMemcpyHostToDevice, stream_));
      cu::PickTokens(logits_.as<float>(), c.vocab_size, rows, picks, tokens, stream_);
      AWQ_CUDA_CHECK(cudaMemcpyAsync(host_staged_ + staging_.tokens(), tokens, rows * sizeof(int),
                                     cudaMemcpyDeviceToHost, stream_));
      return;
    }
    AWQ_CUDA_CHECK(cudaMemcpyAsync(host_logits_, logits_.as<float>(), static_cast<size_t>(rows) * c.vocab_size * 4,
                                   cudaMemcpyDeviceToHost, stream_));
  }

  // n staged tokens (one per sequence, or one of one sequence), the logits
  // of each (or their picked tokens): captured on first use for each (n,
  // pick), replayed after. The graph reads ids, places and picks from the
  // pinned staging buffers at replay time.
  void DecodeGraph(int n, bool pick) {
    cudaGraphExec_t& exec = graph_exec_[2 * (n - 1) + (pick ? 1 : 0)];
    if (!exec) {
      cudaGraph_t graph = nullptr;
      AWQ_CUDA_CHECK(cudaStreamBeginCapture(stream_, cudaStreamCaptureModeThreadLocal));
      try {
        Enqueue(n, n, pick, /*one_sequence=*/n == 1);
      } catch (...) {
        cudaStreamEndCapture(stream_, &graph);
        if (graph) cudaGraphDestroy(graph);
        throw;
      }
      AWQ_CUDA_CHECK(cudaStreamEndCapture(stream_, &graph));
      const cudaError_t status = cudaGraphInstantiate(&exec, graph, 0);
      cudaGraphDestroy(graph);
      AWQ_CUDA_CHECK(status);
    }
    AWQ_CUDA_CHECK(cudaGraphLaunch(exec, stream_));
  }

  const ModelConfig config_;
  const int max_seq_len_;
  const int chunk_;  // min(kChunk, max(max_seq_len, max_sequences))
  const StagingLayout staging_;
  std::vector<int> positions_;  // [max_sequences] tokens in each sequence's cache
  std::vector<cudaGraphExec_t> graph_exec_;  // [max_sequences, 2]: (n - 1, pick)
  cu::AttentionParams full_attention_;     // every key up to the token's own
  cu::AttentionParams sliding_attention_;  // window config.sliding_window (layer_sliding layers)
  uint64_t device_bytes_ = 0;

  cu::WeightArena arena_;  // every weight
  const __half* embed_ = nullptr;    // [vocab, d]
  const __half* lm_head_ = nullptr;  // [vocab, d] (== embed_ when tied)
  const float* final_norm_ = nullptr;
  std::vector<DeviceLayer> layers_;

  DeviceBuffer k_cache_, v_cache_;  // [layers, max_sequences, max_seq_len, KV*hd] f16
  DeviceBuffer x_, h_, q_, attn_, k_, v_, gate_, up_, logits_, att_scratch_;
  cu::MoeBuffers moe_;       // the MoE layers' scratch for chunk_ tokens (models with experts)
  DeviceBuffer rope_;        // [2, max_seq_len, hd/2]: cos then sin (rope_theta, scaled)
  DeviceBuffer local_rope_;  // the same for rope_local_theta (sliding layers), or empty
  DeviceBuffer staged_;            // [staging_.total()] ints
  int* host_staged_ = nullptr;     // pinned, the same layout
  DeviceBuffer picks_;             // [C] TokenPick of each logits row
  TokenPick* host_picks_ = nullptr;  // pinned [C]
  float* host_logits_ = nullptr;   // pinned [C, vocab]
  cudaStream_t stream_ = nullptr;
};

}  // namespace

std::unique_ptr<ForwardPass> CreateCudaForward(const ModelConfig& config, const ModelWeights& weights,
                                               int max_seq_len, int max_sequences) {
  return std::make_unique<CudaTransformer>(config, &weights, config.group_size, nullptr, max_seq_len,
                                           max_sequences);
}

namespace cu {
std::unique_ptr<ForwardPass> CreateFilledCudaForward(const ModelConfig& config, int group_size,
                                                     DeviceFill& fill, int max_seq_len,
                                                     int max_sequences) {
  return std::make_unique<CudaTransformer>(config, nullptr, group_size, &fill, max_seq_len, max_sequences);
}
}  // namespace cu

}  // namespace awqcore
