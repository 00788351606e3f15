// Engine (awqcore/engine.h): continuous batching on one thread over a
// SequenceRunner's slots. Shared state (the queue, the cancel requests, the
// counters) sits behind one mutex that is never held while the forward pass,
// a callback or a comparison of prompts runs; the slots (their cached
// prompts included) and the runner belong to the engine thread.
#include <algorithm>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_set>

#include "awqcore/awqcore.h"
#include "sequence_runner.h"

namespace awqcore {
namespace {

struct Request {
  Engine::RequestId id = 0;
  std::vector<int> prompt;
  GenerateOptions options;
  std::vector<int> stop_ids;  // options.stop_ids or the model's eos ids
  int budget = 0;             // most new tokens: max_new_tokens clipped by the context
  TokenCallback on_token;
  FinishCallback on_finish;
  StartCallback on_start;
};

// A sequence slot of the runner and the request it serves.
struct Slot {
  std::unique_ptr<Request> request;  // null: free
  int prefilled = 0;                 // prompt tokens in the cache
  bool decoding = false;             // the prompt is in; in every decode step until it ends
  bool cancel = false;               // Cancel or Shutdown asked it to end
  std::vector<int> generated;        // [<= budget]
};

void CheckEngineOptions(const EngineOptions& options) {
  if (options.max_queue < 0) {
    throw InvalidArgument("max_queue must be >= 0 (got " + std::to_string(options.max_queue) + ")");
  }
  if (options.prefill_chunk < 1) {
    throw InvalidArgument("prefill_chunk must be >= 1 (got " +
                          std::to_string(options.prefill_chunk) + ")");
  }
  if (options.prefill_budget < 1) {
    throw InvalidArgument("prefill_budget must be >= 1 (got " +
                          std::to_string(options.prefill_budget) + ")");
  }
}

// The prompt tokens to prefill next: at most `budget` of `remaining`, except
// that a chunk never leaves 1..kInt8DecodeMaxTokens tokens behind (it takes
// them too). A last chunk that short would run the decode kernels, whose sums
// can round differently from the prompt GEMM's, and Session::Generate
// prefills the prompt in one call (whose pieces Transformer keeps prompt-
// sized the same way): so results stay equal to Generate's for any budget.
int ChunkTokens(int remaining, int budget) {
  return remaining - budget <= kInt8DecodeMaxTokens ? remaining : budget;
}

// How many first tokens of `prompt` a slot whose cache holds the prompt rows
// of `cached` keeps (prefix reuse, engine.h): their common start, leaving
// more than kInt8DecodeMaxTokens tokens to prefill, so the rest is a
// prompt-sized call as in Generate (ChunkTokens).
int ReusableTokens(const std::vector<int>& cached, const std::vector<int>& prompt) {
  const int limit = std::min(static_cast<int>(prompt.size()) - kInt8DecodeMaxTokens - 1,
                             static_cast<int>(cached.size()));
  int n = 0;
  while (n < limit && cached[n] == prompt[n]) ++n;
  return n;
}

}  // namespace

struct Engine::Impl {
  Impl(std::shared_ptr<const Model> model, const EngineOptions& options)
      : runner((CheckEngineOptions(options), std::move(model)), options.max_seq_len,
               options.num_threads, options.device, options.max_batch, options.activations),
        max_seq_len(options.max_seq_len),
        max_batch(options.max_batch),
        max_queue(options.max_queue),
        prefill_chunk(options.prefill_chunk),
        prefill_budget(std::min(options.prefill_budget, options.prefill_chunk)),
        prefix_reuse(options.prefix_reuse),
        slots(options.max_batch),
        cached_prompts(options.max_batch),
        last_admission(options.max_batch, 0) {
    free_slots.reserve(max_batch);
    admitted.reserve(max_batch);
    live.reserve(max_batch);
    step_ids.resize(max_batch);
    step_tokens.resize(max_batch);
  }

  void Run();
  // Under the lock: moves cancelled waiting requests to `dropped`, marks
  // cancelled slots, takes as many waiting requests as there are free
  // slots; then, unlocked, admits each into its BestFreeSlot. Returns false
  // when the thread should exit (stopping and nothing left).
  bool Schedule(std::vector<std::unique_ptr<Request>>& dropped);
  // The free slot (in free_slots) whose cache holds the longest start of
  // `prompt`, and how many tokens of it that slot keeps (ReusableTokens; 0
  // without prefix_reuse); on a tie the least recently admitted to, so that
  // a request with nothing to reuse evicts the oldest cached prompt.
  std::pair<std::vector<int>::iterator, int> BestFreeSlot(const std::vector<int>& prompt);
  // Starts `request` in slot `s`, keeping the first `reused` rows of its cache.
  void Admit(int s, int reused, std::unique_ptr<Request> request);
  int OldestToPrefill() const;  // its slot, or -1
  // Prefills the next chunk (at most `budget` tokens, ChunkTokens) of the
  // oldest admitted request whose prompt is not yet in its cache.
  void PrefillChunk(int budget);
  // Whether some sequence is decoding past its first token: a client
  // mid-stream waits on every iteration.
  bool Streaming() const;

  // Whether this iteration skips its decode step: nothing streams yet, and
  // the oldest prompt still to prefill ends within one prefill_chunk.
  bool HoldDecodeStep() const;
  void DecodeStep();
  // Hands `token` to the request in `slot` and ends it if it is done.
  void Emit(int slot, int token);
  // Ends `request` (which no longer sits in the queue): the counters, then
  // on_finish. in_slot: it held a slot, which is free afterwards.
  void Finish(Request& request, bool in_slot, StopReason reason, const std::string& error);
  void FinishSlot(int slot, StopReason reason, const std::string& error);
  int OccupiedSlots() const;

  SequenceRunner runner;  // engine thread only (after construction)
  const int max_seq_len, max_batch, max_queue, prefill_chunk, prefill_budget;
  const bool prefix_reuse;

  // Shared with the callers' threads; guarded by `mutex`.
  mutable std::mutex mutex;
  std::condition_variable wake;  // work arrived: a request, a cancel, Shutdown
  std::deque<std::unique_ptr<Request>> waiting;
  std::unordered_set<RequestId> pending;           // accepted and not ended (Cancel's answer)
  std::unordered_set<RequestId> cancel_requested;  // subset of pending
  bool stopping = false;
  RequestId next_id = 1;
  Stats counters;  // waiting and running included

  // Engine thread only.
  std::vector<Slot> slots;  // [max_batch]
  // [max_batch] the prompt tokens whose rows slot s's cache holds from
  // prefill, kept after its request ends (prefix reuse)
  std::vector<std::vector<int>> cached_prompts;
  // [max_batch] 1 + the admission count when slot s was last admitted to, 0:
  // never (the oldest request prefills first; the least recent slot is evicted)
  std::vector<uint64_t> last_admission;
  std::vector<int> free_slots;  // [<= max_batch] Schedule's scratch
  std::vector<std::unique_ptr<Request>> admitted;  // [<= max_batch] Schedule's scratch
  uint64_t admissions = 0;
  int held_steps = 0;  // decode steps skipped in a row by HoldDecodeStep
  std::vector<int> live;         // [<= max_batch] slots in the current decode step
  std::vector<int> step_ids;     // [max_batch] their last tokens
  std::vector<int> step_tokens;  // [max_batch] the tokens the step picked

  std::mutex join_mutex;  // one Shutdown joins; the others wait for it
  std::thread thread;
  std::thread::id thread_id;  // set once at construction: read without the lock
};

int Engine::Impl::OccupiedSlots() const {
  return static_cast<int>(std::count_if(slots.begin(), slots.end(),
                                        [](const Slot& s) { return s.request != nullptr; }));
}

bool Engine::Impl::Schedule(std::vector<std::unique_ptr<Request>>& dropped) {
  std::unique_lock<std::mutex> lock(mutex);
  // Idle: sleep until a request, a cancel or Shutdown arrives (a cancel
  // always names a waiting or running request, so it is covered).
  wake.wait(lock, [&] { return stopping || !waiting.empty() || OccupiedSlots() > 0; });
  for (auto it = waiting.begin(); it != waiting.end();) {
    if (stopping || cancel_requested.count((*it)->id)) {
      dropped.push_back(std::move(*it));
      it = waiting.erase(it);
    } else {
      ++it;
    }
  }
  for (Slot& slot : slots) {
    if (slot.request && (stopping || cancel_requested.count(slot.request->id))) slot.cancel = true;
  }
  // Only the queue needs the lock: the requests that get a slot leave it
  // here, first come first served, and which slot each gets (comparing its
  // prompt with every free slot's cached one) is decided after unlocking,
  // since the slots are the engine thread's alone; Submit and Cancel never
  // wait for those comparisons.
  admitted.clear();
  free_slots.clear();
  for (int s = 0; s < max_batch; ++s) {
    if (!slots[s].request) free_slots.push_back(s);
  }
  while (admitted.size() < free_slots.size() && !waiting.empty()) {
    admitted.push_back(std::move(waiting.front()));
    waiting.pop_front();
    ++counters.running;
  }
  counters.waiting = static_cast<int>(waiting.size());
  const bool keep_running = !(stopping && dropped.empty() && OccupiedSlots() == 0 && admitted.empty());
  lock.unlock();
  for (std::unique_ptr<Request>& request : admitted) {
    const auto [best, reused] = BestFreeSlot(request->prompt);
    const int s = *best;
    free_slots.erase(best);
    Admit(s, reused, std::move(request));
  }
  return keep_running;
}

std::pair<std::vector<int>::iterator, int> Engine::Impl::BestFreeSlot(
    const std::vector<int>& prompt) {
  auto best = free_slots.begin();
  if (!prefix_reuse) return {best, 0};
  int best_tokens = -1;
  for (auto it = free_slots.begin(); it != free_slots.end(); ++it) {
    const int tokens = ReusableTokens(cached_prompts[*it], prompt);
    if (tokens > best_tokens ||
        (tokens == best_tokens && last_admission[*it] < last_admission[*best])) {
      best = it;
      best_tokens = tokens;
    }
  }
  return {best, best_tokens};
}

void Engine::Impl::Admit(int s, int reused, std::unique_ptr<Request> request) {
  Slot& slot = slots[s];
  slot = Slot{};
  last_admission[s] = ++admissions;
  slot.request = std::move(request);
  const Request& r = *slot.request;
  if (r.budget == 0) return FinishSlot(s, StopReason::kMaxNewTokens, "");
  slot.generated.reserve(r.budget);
  Sampler& sampler = runner.sampler(s);
  sampler.Start(r.options.sampling);
  for (int token : r.prompt) sampler.Observe(token);
  runner.forward().Truncate(s, reused);
  cached_prompts[s].resize(reused);
  slot.prefilled = reused;
  if (reused > 0) {
    std::lock_guard<std::mutex> lock(mutex);
    counters.reused_prompt_tokens += reused;
  }
  if (!r.on_start) return;
  std::string error;
  try {
    r.on_start(reused);
  } catch (const std::exception& e) {
    error = std::string("on_start threw: ") + e.what();
  } catch (...) {
    error = "on_start threw a non-standard exception";
  }
  if (!error.empty()) FinishSlot(s, StopReason::kCancelled, error);
}

void Engine::Impl::Finish(Request& request, bool in_slot, StopReason reason,
                          const std::string& error) {
  {
    std::lock_guard<std::mutex> lock(mutex);
    pending.erase(request.id);
    cancel_requested.erase(request.id);
    if (in_slot) --counters.running;
    ++counters.finished;
  }
  if (!request.on_finish) return;
  try {
    request.on_finish(reason, error);
  } catch (...) {
    // Documented: an exception from on_finish is dropped (the request has ended).
  }
}

void Engine::Impl::FinishSlot(int s, StopReason reason, const std::string& error) {
  std::unique_ptr<Request> request = std::move(slots[s].request);
  slots[s] = Slot{};  // free before on_finish runs
  Finish(*request, true, reason, error);
}

void Engine::Impl::Emit(int s, int token) {
  Slot& slot = slots[s];
  Request& request = *slot.request;
  slot.generated.push_back(token);
  runner.sampler(s).Observe(token);
  {
    std::lock_guard<std::mutex> lock(mutex);
    ++counters.generated_tokens;
  }
  if (request.on_token) {
    bool more = false;
    std::string error;
    try {
      more = request.on_token(token);
    } catch (const std::exception& e) {
      error = std::string("on_token threw: ") + e.what();
    } catch (...) {
      error = "on_token threw a non-standard exception";
    }
    if (!more) return FinishSlot(s, StopReason::kCancelled, error);
  }
  if (IsStop(request.stop_ids, token)) return FinishSlot(s, StopReason::kStopToken, "");
  if (static_cast<int>(slot.generated.size()) == request.budget) {
    return FinishSlot(s, ReasonAfter(slot.generated, request.stop_ids, request.options), "");
  }
  slot.decoding = true;
}

int Engine::Impl::OldestToPrefill() const {
  int s = -1;
  for (int i = 0; i < max_batch; ++i) {
    const Slot& slot = slots[i];
    if (slot.request && !slot.decoding && (s < 0 || last_admission[i] < last_admission[s])) s = i;
  }
  return s;
}

bool Engine::Impl::Streaming() const {
  return std::any_of(slots.begin(), slots.end(), [](const Slot& s) {
    return s.request && s.decoding && s.generated.size() > 1;
  });
}

bool Engine::Impl::HoldDecodeStep() const {
  if (Streaming()) return false;
  const int s = OldestToPrefill();
  if (s < 0) return false;
  const int remaining = static_cast<int>(slots[s].request->prompt.size()) - slots[s].prefilled;
  return ChunkTokens(remaining, prefill_chunk) == remaining;
}

void Engine::Impl::PrefillChunk(int budget) {
  const int s = OldestToPrefill();
  if (s < 0) return;
  Slot& slot = slots[s];
  const std::vector<int>& prompt = slot.request->prompt;
  const int n = ChunkTokens(static_cast<int>(prompt.size()) - slot.prefilled, budget);
  const int* ids = prompt.data() + slot.prefilled;
  const bool last = slot.prefilled + n == static_cast<int>(prompt.size());
  double seconds = 0;
  int token = SequenceRunner::kNonFinite;
  std::string error;
  try {
    if (last) {
      token = runner.ForwardAndPick(s, ids, n, runner.PicksOnDevice(slot.request->options.sampling),
                                    seconds);
    } else {
      runner.Append(s, ids, n, seconds);
    }
  } catch (const std::exception& e) {
    error = e.what();
  }
  {
    std::lock_guard<std::mutex> lock(mutex);
    counters.prefill_seconds += seconds;
    if (error.empty()) {
      counters.prompt_tokens += n;
      ++counters.prefill_chunks;
    }
  }
  if (!error.empty()) return FinishSlot(s, StopReason::kCancelled, error);
  // Only prompt-sized calls write rows a later prompt may keep (a call of at
  // most kInt8DecodeMaxTokens runs the decode kernels); once one is left
  // out, the rows after it no longer follow the recorded ones.
  if (n > kInt8DecodeMaxTokens && cached_prompts[s].size() == static_cast<size_t>(slot.prefilled)) {
    cached_prompts[s].insert(cached_prompts[s].end(), ids, ids + n);
  }
  slot.prefilled += n;
  if (!last) return;
  if (token == SequenceRunner::kNonFinite) {
    return FinishSlot(s, StopReason::kCancelled,
                      runner.NonFiniteLogitsError(0, "request " +
                                                         std::to_string(slot.request->id) + "'s"));
  }
  Emit(s, token);
}

void Engine::Impl::DecodeStep() {
  live.clear();
  bool device_pick = true;
  for (int s = 0; s < max_batch; ++s) {
    if (!slots[s].request || !slots[s].decoding) continue;
    step_ids[live.size()] = slots[s].generated.back();
    live.push_back(s);
    device_pick = device_pick && runner.PicksOnDevice(slots[s].request->options.sampling);
  }
  if (live.empty()) return;
  const int n = static_cast<int>(live.size());
  double seconds = 0;
  std::string error;
  try {
    runner.DecodeStepAndPick(live.data(), step_ids.data(), n, device_pick, step_tokens.data(),
                             seconds);
  } catch (const std::exception& e) {
    error = e.what();
  }
  {
    std::lock_guard<std::mutex> lock(mutex);
    counters.decode_seconds += seconds;
    ++counters.decode_steps;
  }
  for (int k = 0; k < n; ++k) {
    const int s = live[k];
    if (!error.empty()) {
      FinishSlot(s, StopReason::kCancelled, error);
    } else if (step_tokens[k] == SequenceRunner::kNonFinite) {
      FinishSlot(s, StopReason::kCancelled,
                 runner.NonFiniteLogitsError(
                     k, "request " + std::to_string(slots[s].request->id) + "'s"));
    } else {
      Emit(s, step_tokens[k]);
    }
  }
}

void Engine::Impl::Run() {
  std::vector<std::unique_ptr<Request>> dropped;
  for (;;) {
    dropped.clear();
    const bool keep_running = Schedule(dropped);
    for (std::unique_ptr<Request>& request : dropped) {
      Finish(*request, false, StopReason::kCancelled, "");
    }
    for (int s = 0; s < max_batch; ++s) {
      if (slots[s].request && slots[s].cancel) FinishSlot(s, StopReason::kCancelled, "");
    }
    if (!keep_running) return;
    // While clients stream, a prefill is a stall in each of their streams:
    // it gets the budget. Before any streams (a burst of arrivals), the
    // prompts go in back to back and the first decode step waits for them
    // all, as long as each takes one chunk: that stalls only first tokens,
    // once, instead of every early stream once per later prompt. At most
    // max_batch steps in a row wait, so arrivals that end at their first
    // token (and free their slot for the next) cannot hold the others'
    // second tokens for ever.
    PrefillChunk(Streaming() ? prefill_budget : prefill_chunk);
    if (HoldDecodeStep() && held_steps < max_batch) {
      ++held_steps;
    } else {
      held_steps = 0;
      DecodeStep();
    }
  }
}

Engine::Engine(std::shared_ptr<const Model> model, const EngineOptions& options)
    : impl_(std::make_unique<Impl>(std::move(model), options)) {
  {
    std::lock_guard<std::mutex> lock(impl_->mutex);
    impl_->counters.max_batch = options.max_batch;
    impl_->counters.max_queue = options.max_queue;
  }
  impl_->thread = std::thread([this] { impl_->Run(); });
  impl_->thread_id = impl_->thread.get_id();
}

Engine::~Engine() { Shutdown(); }

Engine::RequestId Engine::Submit(std::vector<int> prompt, const GenerateOptions& options,
                                 TokenCallback on_token, FinishCallback on_finish,
                                 StartCallback on_start) {
  Impl& e = *impl_;
  CheckMaxNewTokens(options.max_new_tokens);
  Sampler::Validate(options.sampling);
  e.runner.ValidateIds(prompt, 0, "prompt");
  if (static_cast<int>(prompt.size()) > e.max_seq_len - 1) {
    throw InvalidArgument("prompt of " + std::to_string(prompt.size()) +
                          " tokens leaves no room for a new token in max_seq_len " +
                          std::to_string(e.max_seq_len) + " (at most " +
                          std::to_string(e.max_seq_len - 1) + " prompt tokens)");
  }
  auto request = std::make_unique<Request>();
  request->stop_ids = StopIds(options, e.runner.config());
  request->budget = std::min(options.max_new_tokens,
                             e.max_seq_len - static_cast<int>(prompt.size()));
  request->prompt = std::move(prompt);
  request->options = options;
  request->on_token = std::move(on_token);
  request->on_finish = std::move(on_finish);
  request->on_start = std::move(on_start);
  std::lock_guard<std::mutex> lock(e.mutex);
  if (e.stopping) throw Error("the engine is shut down: it accepts no more requests");
  // A request waits in `waiting` until the engine thread's next iteration
  // even when a slot is free, so the free slots count as places too: only
  // max_queue requests beyond them make the queue full.
  const int free_slots = e.max_batch - e.counters.running;
  if (static_cast<int>(e.waiting.size()) >= e.max_queue + free_slots) {
    throw QueueFull("the request queue is full (" + std::to_string(e.max_queue) +
                    " requests waiting for one of " + std::to_string(e.max_batch) +
                    " sequence slots); retry later");
  }
  const RequestId id = e.next_id++;
  request->id = id;
  e.pending.insert(id);
  e.waiting.push_back(std::move(request));
  e.counters.waiting = static_cast<int>(e.waiting.size());
  ++e.counters.submitted;
  e.wake.notify_one();
  return id;
}

bool Engine::Cancel(RequestId id) {
  Impl& e = *impl_;
  std::lock_guard<std::mutex> lock(e.mutex);
  if (!e.pending.count(id) || !e.cancel_requested.insert(id).second) return false;
  e.wake.notify_one();
  return true;
}

Engine::Stats Engine::stats() const {
  std::lock_guard<std::mutex> lock(impl_->mutex);
  return impl_->counters;
}

void Engine::Shutdown() {
  Impl& e = *impl_;
  if (std::this_thread::get_id() == e.thread_id) {
    throw Error("Engine::Shutdown called from an engine callback: the engine thread cannot "
                "join itself; call Cancel there, or Shutdown from another thread");
  }
  {
    std::lock_guard<std::mutex> lock(e.mutex);
    e.stopping = true;
    e.wake.notify_one();
  }
  std::lock_guard<std::mutex> join_lock(e.join_mutex);
  if (e.thread.joinable()) e.thread.join();
}

const Model& Engine::model() const { return impl_->runner.model(); }
int Engine::max_seq_len() const { return impl_->max_seq_len; }
int Engine::max_batch() const { return impl_->max_batch; }
int Engine::num_threads() const { return impl_->runner.num_threads(); }

}  // namespace awqcore
