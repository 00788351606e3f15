// awqcore::Engine: continuous batching for many concurrent requests on one
// model (a server's core). awqcore/awqcore.h includes it.
//
// One engine thread owns a forward pass with max_batch sequence slots (one KV
// cache of max_seq_len tokens each, allocated at construction). Each
// iteration it
//   1. finishes cancelled requests and admits waiting ones into free slots,
//      first come first served, each into the free slot whose cache holds
//      the longest start of its prompt (prefix reuse, below);
//   2. prefills at most prefill_chunk prompt tokens of the oldest admitted
//      request whose prompt is not yet in its cache (a long prompt takes
//      several iterations, so it never stalls the others' streams for
//      longer than one chunk); its last chunk picks its first token. While
//      some sequence is past its first token (a client is mid-stream), the
//      chunk is at most prefill_budget tokens instead (vLLM's chunked
//      prefill with a token budget): each prefill delays every running
//      stream's next token, so a smaller chunk bounds that stall, while a
//      prompt that nobody waits for still goes in whole. (A sequence at its
//      first token gets its second in the same iteration's decode step,
//      unless a burst, step 3, holds that step: "past its first token" is
//      "decoding" but in a burst.) A chunk never leaves 1..8 tokens for
//      later (it takes them too);
//   3. runs one decode step that appends a token to every sequence whose
//      prompt is in its cache, with one pass over the weights; except while
//      no sequence is past its first token and the next prompt to prefill
//      fits in one prefill_chunk: then the prompts of a burst of arrivals
//      go in back to back first, and the step runs once they are all in.
// A finished or cancelled sequence frees its slot at once. With nothing to
// do the thread sleeps on a condition variable.
//
// Prefix reuse: a slot's cache keeps the rows its last request's prompt
// prefill wrote after the request ends. A new request whose prompt starts
// with those tokens (a shared system prompt, the earlier turns of a chat)
// keeps them and prefills only the rest, leaving at least 9 tokens to
// prefill (the rule below that keeps results equal to Generate's), so
// prompts of 9 tokens or fewer never reuse. Rows written by a decode step
// or by a prefill call of 8 tokens or fewer (a short prompt, small chunks)
// are not reused: below AVX-512 VNNI the decode kernels sum in another
// order than the prompt GEMM. On a tie the least recently used slot is
// taken, so a prompt with nothing to reuse evicts the oldest cached one.
//
// Results: greedy, a request gets exactly Session::Generate's tokens as long
// as no decode step holds more than 8 sequences (kInt8Decode; 3 with
// kFloat32): those steps compute each token as a lone decode step does, bit
// for bit (Session::GenerateBatch's rule). A prompt prefilled in chunks gets
// them too when every chunk is more than 8 tokens (chunk sizes of 9 or more;
// no chunk leaves a shorter rest): the int4 linears compute each token of
// such a call the same whatever the call's length, and attention reads the
// same cached keys; test_engine checks it with both activations. (Longer
// calls run in pieces of at most 128 tokens, none left with 8 or fewer.) A
// chunk of at most 8 tokens of a longer prompt runs the decode kernels,
// which below AVX-512 VNNI sum the int8 products in another order than the
// prompt GEMM
// (awqcore.h, kInt8Decode): a greedy token can then differ only where
// two logits are within that rounding. Sampling: each request draws from
// its own generator seeded with its options.sampling.seed (as Generate), so
// its tokens do not depend on the other requests.
//
// Thread safety: Submit, Cancel, stats, Shutdown and the accessors may be
// called from any number of threads at once. The callbacks run on the engine
// thread, one at a time, with no Engine lock held: they must be quick (the
// whole batch waits for them), must not throw (an exception from on_start or
// on_token ends that request with the exception's message as its error; one
// from on_finish is dropped), and may call Submit, Cancel and stats, but not
// Shutdown or the destructor (Error: the engine thread cannot join itself).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "awqcore/awqcore.h"  // Model, GenerateOptions, StopReason, Error (it includes this file last)

namespace awqcore {

// Submit when max_queue requests are already waiting for a slot.
class QueueFull : public Error {
 public:
  using Error::Error;
};

struct EngineOptions {
  int max_batch = 8;        // sequences decoding together (one KV cache each, allocated at construction)
  int max_seq_len = 4096;   // tokens per sequence (prompt + generated)
  int max_queue = 64;       // requests waiting for a free slot; one more -> QueueFull
  int prefill_chunk = 256;  // prompt tokens prefilled per engine iteration between decode steps
  // The same while some sequence streams (step 2 above); >= prefill_chunk:
  // no budget. Chosen with tools/load_bench.py (README, Serving).
  int prefill_budget = 32;
  bool prefix_reuse = true;  // keep a free slot's cached prompt start (above)
  int num_threads = 0;      // 0: all hardware threads
  Device device = Device::kCpu;
  CpuActivations activations = CpuActivations::kInt8Decode;
};

// Called once per accepted request, after its last on_token: why it ended,
// and an empty error on success. A request that failed (non-finite logits, a
// forward pass that threw, an on_token that threw) ends with kCancelled and
// the error's message.
using FinishCallback = std::function<void(StopReason reason, const std::string& error)>;

// Called once when a request gets its sequence slot, before any of its
// prompt is prefilled: how many of its first prompt tokens that slot's cache
// already holds (prefix reuse; 0 without it), which the request does not
// prefill (OpenAI's usage.prompt_tokens_details.cached_tokens). A request
// that ends before that (cancelled while waiting, max_new_tokens 0) never
// calls it.
using StartCallback = std::function<void(int cached_prompt_tokens)>;

class Engine {
 public:
  using RequestId = uint64_t;

  // Validates the options (InvalidArgument naming the bad one; Error naming
  // the sizes when the caches do not fit, as Session), allocates the caches
  // and starts the engine thread.
  Engine(std::shared_ptr<const Model> model, const EngineOptions& options);
  ~Engine();  // Shutdown()
  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;

  // Queues a request and returns its id (ids count up from 1). Validates
  // before queuing: InvalidArgument for an empty prompt, a token id out of
  // range, a prompt longer than max_seq_len - 1 (no room for a new token),
  // max_new_tokens < 0 or bad sampling values (Sampler's rules); QueueFull
  // when max_queue requests wait; Error after Shutdown. on_token(token)
  // receives each new token (returning false cancels the request); stop ids
  // end it after that token (options.stop_ids, nullopt: the model's eos ids);
  // it gets at most min(max_new_tokens, max_seq_len - prompt length) tokens.
  // Any callback may be empty.
  RequestId Submit(std::vector<int> prompt, const GenerateOptions& options,
                   TokenCallback on_token, FinishCallback on_finish,
                   StartCallback on_start = nullptr);

  // Ends a waiting or running request with kCancelled before its next decode
  // step. false: the id is unknown, already finished or already cancelled.
  bool Cancel(RequestId id);

  struct Stats {
    int waiting = 0;  // queued, not yet in a slot
    int running = 0;  // in a slot (prefilling or decoding)
    int max_batch = 0, max_queue = 0;
    uint64_t submitted = 0, finished = 0;  // accepted requests; those whose on_finish ran
    uint64_t prompt_tokens = 0;            // prefilled
    uint64_t prefill_chunks = 0;           // the forward calls that prefilled them
    uint64_t reused_prompt_tokens = 0;     // found in a slot's cache instead (prefix reuse)
    uint64_t generated_tokens = 0;         // handed to on_token
    uint64_t decode_steps = 0;
    double prefill_seconds = 0, decode_seconds = 0;  // forward-pass wall time, as Session::Timing
  };
  Stats stats() const;

  // Stops accepting requests, finishes every waiting and running one with
  // kCancelled, and joins the engine thread. Idempotent; Error when called
  // from a callback (the engine thread).
  void Shutdown();

  const Model& model() const;
  int max_seq_len() const;
  int max_batch() const;
  int num_threads() const;  // the CPU matrix products' threads (1 on the GPU)

  struct Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

}  // namespace awqcore
