// awqcore: a standalone runtime for 4-bit AWQ-quantized decoder-only LLMs.
//
// This is the one public header. It loads a `.awqbin` file (docs/format.md),
// runs the transformer forward pass with a KV cache, and samples tokens.
// No Python and no torch are involved: embed it with
//   find_package(awqcore) ... target_link_libraries(app PRIVATE awqcore::awqcore)
//
// Thread safety:
//   - Model is immutable once loaded; one Model may be shared by any number of
//     threads and Sessions (hold it through std::shared_ptr).
//   - Session is NOT thread-safe: it owns the KV caches and scratch buffers and
//     must be used by one thread at a time (GenerateBatch included: a batch is
//     one call, not one thread per prompt). Internally a Session uses its own
//     worker threads for the matrix products.
//   - Engine (awqcore/engine.h) is thread-safe: it runs its own thread and
//     takes requests from any thread.
//
// Errors: every failure throws a subclass of awqcore::Error whose message names
// the problem (the field of a corrupt file, the bad argument and its value, the
// sizes of a KV cache that does not fit in memory).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

namespace awqcore {

// Base of every exception the runtime throws.
class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};
// The file is missing, truncated, corrupt, or inconsistent with itself.
class FormatError : public Error {
 public:
  using Error::Error;
};
// A caller passed a bad value: token id out of range, empty prompt, prompt
// longer than the context, bad sampling values, bad thread count, ...
class InvalidArgument : public Error {
 public:
  using Error::Error;
};

// How a family's decoder layer differs from Llama's: read from the file's
// metadata (docs/format.md, "The decoder-layer description"); one forward
// pass reads it on every device.
enum class NormPlacement { kPre, kSandwich };  // sandwich: Gemma 3's four norms
enum class Activation { kSilu, kGeluTanh };     // the gated MLP's gate

// The rotary frequencies' transform, as transformers' ROPE_INIT_FUNCTIONS.
struct RopeScaling {
  enum class Type { kNone, kLinear, kLlama3, kYarn };
  Type type = Type::kNone;
  double factor = 1.0;                       // linear, llama3, yarn
  int original_max_position_embeddings = 0;  // llama3, yarn
  double low_freq_factor = 1.0;              // llama3
  double high_freq_factor = 4.0;             // llama3
  double beta_fast = 32.0;                   // yarn
  double beta_slow = 1.0;                    // yarn
  bool truncate = true;                      // yarn
  double attention_factor = 1.0;             // multiplies cos and sin (yarn)
};

// Hyperparameters read from the file's metadata (docs/format.md).
struct ModelConfig {
  std::string architecture;  // "llama", "mistral", "qwen2", "qwen3", "gemma3", "mixtral" or "qwen3_moe"
  std::string name;
  int vocab_size = 0;
  int hidden_size = 0;        // d
  int intermediate_size = 0;  // MLP width
  int num_layers = 0;
  int num_heads = 0;     // query heads H
  int num_kv_heads = 0;  // key/value heads KV; H % KV == 0
  int head_dim = 0;      // hd
  int max_position_embeddings = 0;
  float rope_theta = 10000.0f;
  float rms_norm_eps = 1e-5f;
  bool tie_word_embeddings = false;
  bool attention_bias = false;  // Qwen2: q/k/v carry biases
  // The decoder-layer description (defaults: Llama).
  NormPlacement norm_placement = NormPlacement::kPre;
  Activation activation = Activation::kSilu;
  bool qk_norm = false;                // per-head RMSNorm of q and k before rotary
  float attention_scale = 0.0f;        // scores multiplier; the reader sets 1/sqrt(hd) by default
  float embedding_scale = 1.0f;        // x = embed[ids] * embedding_scale
  float final_logit_softcap = 0.0f;    // 0: off; c: logits = c * tanh(logits / c)
  int sliding_window = 0;              // 0: none; W: keys p-W+1 .. p on sliding layers
  std::vector<uint8_t> layer_sliding;  // [num_layers] 1: sliding layer (empty: none)
  RopeScaling rope_scaling;            // applies to full-attention layers (all, without local theta)
  float rope_local_theta = 0.0f;       // > 0: sliding layers' base, unscaled (Gemma 3)
  // Mixture of experts (mixtral, qwen3_moe; docs/format.md): an MoE layer's
  // MLP is a router [E, d] choosing k of E gated experts of width
  // moe_intermediate_size per token. num_experts 0: every layer is dense.
  int num_experts = 0;               // E
  int num_experts_per_tok = 0;       // k, 1 <= k <= E
  int moe_intermediate_size = 0;     // expert MLP width f
  bool norm_topk_prob = false;       // the k chosen probabilities divided by their sum
  std::vector<uint8_t> moe_layers;   // [num_layers] 1: MoE, 0: dense MLP (empty: all MoE when E > 0)
  std::string quant_method;     // "rtn", "awq", "gptq" or "awq-gptq"
  int bits = 4;
  int group_size = 0;
  int bos_token_id = -1;             // -1: none
  std::vector<int> eos_token_ids;    // default stop ids
};

struct LoadOptions {
  // Check the CRC-32 of every tensor at load (about 0.1 s per 100 MB).
  bool verify_checksums = true;
};

class Model {
 public:
  // Maps the file and validates every field before returning. On Linux a
  // file over 2 MB is then copied into anonymous memory backed by
  // transparent huge pages (decode streams every weight, and the file
  // mapping's 4 KB pages cost TLB misses); AWQCORE_MAP_WEIGHTS=1 keeps the
  // mapping, which processes share through the page cache. The copy is also
  // skipped when the available memory cannot hold it. On a CPU with AVX-512
  // VNNI an int8 lm_head (and the embedding when tied) is then regrouped into
  // a tile layout in private memory, its rows' pages released (the file is
  // unchanged; logits equal the row layout's up to float summation order);
  // AWQCORE_MAP_WEIGHTS=1 keeps the rows, and so does a failed allocation.
  // Throws FormatError (naming the bad field) or Error (I/O).
  static std::shared_ptr<const Model> Load(const std::string& path,
                                           const LoadOptions& options = {});
  ~Model();
  Model(const Model&) = delete;
  Model& operator=(const Model&) = delete;

  const ModelConfig& config() const;
  // A string entry of the file's metadata, e.g. "tokenizer.json" or
  // "tokenizer.chat_template"; std::nullopt when absent.
  std::optional<std::string> metadata_string(const std::string& key) const;
  // Bytes of tensor data in the file (what a forward pass streams).
  uint64_t weight_bytes() const;
  // Bytes of weights one decode token reads: every layer's attention and
  // norms, a mixture-of-experts layer's router and k of its E experts (a dense
  // layer's whole MLP), one row of the embedding table, the final norm and the
  // lm_head. What "active" GB/s divides by; weight_bytes() less the idle
  // experts and all embedding rows but one.
  uint64_t active_bytes_per_token() const;

  struct Impl;
  const Impl& impl() const { return *impl_; }

 private:
  explicit Model(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

struct SamplingOptions {
  float temperature = 0.0f;         // 0: greedy (argmax)
  int top_k = 0;                    // 0: off
  float top_p = 1.0f;               // 1: off; in (0, 1]
  float repetition_penalty = 1.0f;  // 1: off; > 0 (CTRL-style, over the sequence)
  std::optional<uint64_t> seed;     // nullopt: a random seed
};

struct GenerateOptions {
  int max_new_tokens = 128;
  SamplingOptions sampling;
  // nullopt: stop at the model's eos_token_ids; an empty vector: never stop
  // early (exactly max_new_tokens are produced, as benchmarks need).
  std::optional<std::vector<int>> stop_ids;
};

// Called with each new token; return false to stop generation. It must not
// call the Session that is generating (Error: the Session is busy).
using TokenCallback = std::function<bool(int token)>;

// Why the generation of one sequence ended.
enum class StopReason {
  kStopToken,     // it produced a stop id, the result's last token
  kMaxNewTokens,  // it produced options.max_new_tokens tokens
  kContextFull,   // prompt + result reached max_seq_len first: fewer tokens
                  // than max_new_tokens (none for a prompt of max_seq_len)
  kCallback,      // on_token returned false
  kCancelled,     // an Engine request: Engine::Cancel, its on_token returned
                  // false, Engine::Shutdown, or it failed (engine.h)
};
// "stop_token", "max_new_tokens", "context_full", "callback", "cancelled".
const char* StopReasonName(StopReason reason);

// Where a Session computes. kCuda runs the whole forward pass on GPU 0 (the
// weights are uploaded once, the KV caches are f16 on the device) and picks
// each token there too, as the host sampler would for the same seeded draw,
// so only token ids cross; with a repetition penalty the logits are copied
// back and sampled on the host.
enum class Device { kCpu, kCuda };

// The activations the CPU's int4 linears multiply (the CUDA device ignores
// this).
//   kInt8Decode: rounded to int8 per 32 columns (W4A8, as llama.cpp does) in
//     every call: decode steps, batched decode and prefill. Decode kernels
//     1.6-1.8x faster than f32; prefill runs an int8 GEMM (vpdpbusd on
//     AVX-512 VNNI, vpmaddubsw on AVX2), 3-4x the f32 GEMM's rate. A token's
//     int4 linears give the same result, bit for bit, in a batch of up to 8
//     or alone, and in any call of more than 8 tokens whatever its length;
//     with AVX-512 VNNI decode and prompt share one arithmetic too; below
//     VNNI the prompt GEMM (calls of more than 8 tokens) sums in another
//     order than the decode kernels, which can move int8 roundings: a
//     prompt's next-token distributions then differ from decode's by about
//     as much as either differs from f32, KL ~2e-3 nats on SmolLM2. An int8 lm_head (`--embeddings int8`) multiplies W8A8 too in
//     calls of at most kInt8DecodeMaxTokens tokens, ~2x faster. The
//     next-token distribution moves by a mean KL of ~3e-3 nats on SmolLM2
//     (README). The KV cache is f16 (as llama.cpp's default): half the
//     memory, and half the cache bytes each decode step reads at long
//     context.
//   kFloat32: exact f32 (the W4A16 arithmetic of AWQ's definition), the KV
//     cache included.
enum class CpuActivations { kInt8Decode, kFloat32 };
// The most tokens a call computes its logits W8A8 (int8 lm_head) with under
// kInt8Decode: a perplexity run that feeds this many tokens per call scores
// every position with decode-step arithmetic.
constexpr int kInt8DecodeMaxTokens = 8;

class Session {
 public:
  // max_seq_len: KV-cache capacity in tokens of one sequence (1 ..
  // max_position_embeddings is not enforced; memory is 2·layers·KV·hd·2 bytes
  // per token (f16), 4 bytes on the CPU with CpuActivations::kFloat32).
  // num_threads: 0 means all hardware threads.
  // max_batch: sequences GenerateBatch decodes together; one KV cache of
  // max_seq_len tokens each, all allocated here (on the device with kCuda,
  // at most 256 there).
  // Throws Error naming the sizes, before allocating, when the KV caches and
  // scratch do not fit: on the CPU in the memory the machine has available
  // (/proc/meminfo MemAvailable, else its physical memory), with kCuda in the
  // device's free memory. device kCuda also throws Error "awqcore was built
  // without CUDA" or "no CUDA device".
  Session(std::shared_ptr<const Model> model, int max_seq_len,
          int num_threads = 0, Device device = Device::kCpu, int max_batch = 1,
          CpuActivations activations = CpuActivations::kInt8Decode);
  ~Session();
  Session(const Session&) = delete;
  Session& operator=(const Session&) = delete;

  // Appends `ids` to the sequence held in the cache and returns the logits of
  // every appended position, row-major [ids.size(), vocab], as computed
  // (non-finite values included: the caller sees them).
  std::vector<float> Forward(const std::vector<int>& ids);

  // Resets the session, prefills `prompt`, then samples up to
  // options.max_new_tokens tokens. Returns the new tokens only. A stop token
  // ends generation and is included in the result; last_stop_reasons() says
  // why it ended (a result shorter than max_new_tokens without a stop token
  // is kContextFull or kCallback).
  // Throws Error when logits to sample from are not finite (NaN or inf:
  // overflowed or corrupt weights), naming the prompt, instead of sampling
  // garbage; the check reads the logits once more per token (vocab floats:
  // 25-29 us for 49152 on a 2-core machine at load 23, where a SmolLM2 decode
  // step took 360 ms, so well under 0.1%). On the GPU with
  // on-device picking (no repetition penalty) the logits never reach the host
  // and are not checked. Throws Error when called from inside on_token of a
  // call on the same Session (as do Forward, GenerateBatch and Reset).
  std::vector<int> Generate(const std::vector<int>& prompt,
                            const GenerateOptions& options,
                            const TokenCallback& on_token = nullptr);

  // Generates after each prompt as Generate would for it alone (same
  // options, same max_seq_len rule: prompt + new tokens <= max_seq_len) and
  // returns the new tokens of each prompt, in prompt order. Up to max_batch()
  // prompts are live at once: each is prefilled on its own, then every decode
  // step appends one token to each live sequence with one pass over the
  // weights. A sequence that stops (stop id, max_new_tokens, full cache)
  // leaves the step and the next waiting prompt takes its cache. Resets the
  // session; afterwards position() is meaningless until Reset or Generate.
  //
  // Greedy results equal one-by-one Generate: each token of a decode step is
  // computed exactly as alone, bit for bit, with kInt8Decode up to 8 live
  // sequences (from 9, an int8 lm_head multiplies f32 activations, which
  // moves the logits by the int8 rounding, ~1e-2 relative, and on AVX-512
  // VNNI CPUs the int4 linears run the GEMM, ~1e-6 relative), and with
  // kFloat32 up to 3 (from 4 the tiled f32 GEMM sums in another order: ~1e-6
  // relative), so a token could differ only where two logits are that close. On the GPU the same holds
  // up to 15 live sequences (the GEMV computes each token of its tiles as
  // alone); from 16 the steps run the tensor-core GEMM (f16 products).
  // Sampling: prompt i draws from its own generator seeded with
  // options.sampling.seed + i (mod 2^64), so with a seed, prompt i's tokens do
  // not depend on the other prompts or on max_batch (up to the rounding
  // above), and a batch of one prompt equals Generate with the same seed.
  // Throws InvalidArgument naming the prompt index for an empty list, an empty
  // prompt, a token out of range or a prompt longer than max_seq_len, before
  // any state changes; Error for non-finite logits, as Generate.
  // last_stop_reasons()[i] says why prompt i's generation ended.
  std::vector<std::vector<int>> GenerateBatch(const std::vector<std::vector<int>>& prompts,
                                              const GenerateOptions& options);

  // Wall seconds the last Generate or GenerateBatch spent in forward passes:
  // of prompts (prefill) and of decode steps; sampling, callbacks and
  // validation excluded. What benchmarks divide token counts by.
  struct Timing {
    double prefill_seconds = 0.0;
    double decode_seconds = 0.0;
  };
  Timing last_timing() const;

  // Why each sequence of the last Generate (one entry) or GenerateBatch (one
  // per prompt, in order) ended; empty after a call that threw.
  const std::vector<StopReason>& last_stop_reasons() const;

  void Reset();                 // empties the KV cache(s)
  int position() const;         // tokens in the cache of Forward/Generate's sequence
  int max_seq_len() const;
  int max_batch() const;
  int num_threads() const;
  Device device() const;
  // Device memory allocated at construction with kCuda (weights, KV caches,
  // scratch: all a session ever uses there); 0 on the CPU.
  uint64_t device_memory_bytes() const;
  const Model& model() const;

  struct Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

// CUDA support: whether this build has it, and what device is present.
bool BuiltWithCuda();
// "no CUDA device" (or "built without CUDA"), else e.g. "NVIDIA H100 (sm_90)".
std::string CudaDeviceInfo();

// The CPU kernels' instruction set level in use and the levels this build
// and CPU offer, e.g. "avx512vnni (available: scalar avx2 avx512 avx512vnni)".
// The environment variable AWQCORE_ISA=scalar|avx2|avx512|avx512vnni picks a
// level (for comparisons); one the CPU or build lacks, or an unknown name,
// makes this and every CPU model load throw Error naming it.
std::string CpuKernelsInfo();

const char* Version();

}  // namespace awqcore

// Text in and out: awqcore::Tokenizer and StreamDecoder.
#include "awqcore/tokenizer.h"

// Chat prompts from the file's chat.* keys (awqcore::ChatFormat).
#include "awqcore/chat_format.h"

// Continuous batching of concurrent requests: awqcore::Engine.
#include "awqcore/engine.h"
