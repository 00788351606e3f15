// nanobind bindings: a thin layer from Python to awqcore::Model/Session and
// awqcore::Engine.
// No model logic lives here. Compute runs with the GIL released; the on_token
// callback re-acquires it for the duration of the Python call only.
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/pair.h>
#include <nanobind/stl/map.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/string_view.h>
#include <nanobind/stl/tuple.h>
#include <nanobind/stl/vector.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include "awqcore/awqcore.h"
#include "op_profile.h"

namespace nb = nanobind;
using namespace nb::literals;

namespace {

// Python classes from awqcore.errors, so the C++ reader and the Python reader
// raise the same exception types. Held for the life of the interpreter.
PyObject* g_format_error = nullptr;
PyObject* g_runtime_error = nullptr;
PyObject* g_queue_full = nullptr;

// The C++ tokenizer (awqcore/tokenizer.h): immutable, so the GIL is released
// while it works.
struct PyTokenizer {
  std::shared_ptr<const awqcore::Tokenizer> tokenizer;

  std::vector<int> encode(std::string_view text, bool add_special, bool parse_special) const {
    nb::gil_scoped_release release;
    return tokenizer->Encode(text, add_special, parse_special);
  }
  std::string decode(const std::vector<int>& ids, bool skip_special) const {
    nb::gil_scoped_release release;
    return tokenizer->Decode(ids, skip_special);
  }
};

// The file's hyperparameters and sizes, the keys Model.config and
// Engine.config share (each adds its own runtime's).
nb::dict ModelConfigDict(const awqcore::Model& model) {
  const awqcore::ModelConfig& c = model.config();
  nb::dict d;
  d["architecture"] = c.architecture;
  d["name"] = c.name;
  d["vocab_size"] = c.vocab_size;
  d["hidden_size"] = c.hidden_size;
  d["intermediate_size"] = c.intermediate_size;
  d["num_layers"] = c.num_layers;
  d["num_heads"] = c.num_heads;
  d["num_kv_heads"] = c.num_kv_heads;
  d["head_dim"] = c.head_dim;
  d["max_position_embeddings"] = c.max_position_embeddings;
  d["rope_theta"] = c.rope_theta;
  d["rms_norm_eps"] = c.rms_norm_eps;
  d["tie_word_embeddings"] = c.tie_word_embeddings;
  d["attention_bias"] = c.attention_bias;
  d["quant_method"] = c.quant_method;
  d["bits"] = c.bits;
  d["group_size"] = c.group_size;
  d["bos_token_id"] = c.bos_token_id;
  d["eos_token_ids"] = c.eos_token_ids;
  d["num_experts"] = c.num_experts;
  d["num_experts_per_tok"] = c.num_experts_per_tok;
  d["moe_intermediate_size"] = c.moe_intermediate_size;
  d["norm_topk_prob"] = c.norm_topk_prob;
  d["moe_layers"] = std::vector<int>(c.moe_layers.begin(), c.moe_layers.end());
  d["weight_bytes"] = model.weight_bytes();
  d["active_bytes_per_token"] = model.active_bytes_per_token();
  return d;
}

// The options of one generation, as both Model and Engine take them (the
// Python wrappers check the types; the runtime checks the ranges).
awqcore::GenerateOptions Options(int max_new_tokens, float temperature, int top_k, float top_p,
                                 float repetition_penalty, std::optional<uint64_t> seed,
                                 std::optional<std::vector<int>> stop) {
  awqcore::GenerateOptions options;
  options.max_new_tokens = max_new_tokens;
  options.sampling.temperature = temperature;
  options.sampling.top_k = top_k;
  options.sampling.top_p = top_p;
  options.sampling.repetition_penalty = repetition_penalty;
  options.sampling.seed = seed;
  options.stop_ids = std::move(stop);
  return options;
}

// One model and the session (KV cache) that runs it. Not thread-safe, like
// awqcore::Session: the Python wrapper serialises calls with a lock.
class PyModel {
 public:
  // device: "cpu" or "cuda", activations: "int8" or "f32" (the Python
  // wrapper validates the spellings).
  PyModel(const std::string& path, int threads, int max_seq_len, bool verify,
          const std::string& device, int max_batch, const std::string& activations) {
    nb::gil_scoped_release release;
    activations_ = activations;
    awqcore::LoadOptions options;
    options.verify_checksums = verify;
    model_ = awqcore::Model::Load(path, options);
    session_ = std::make_unique<awqcore::Session>(
        model_, max_seq_len, threads,
        device == "cuda" ? awqcore::Device::kCuda : awqcore::Device::kCpu, max_batch,
        activations == "f32" ? awqcore::CpuActivations::kFloat32
                             : awqcore::CpuActivations::kInt8Decode);
  }

  nb::dict config() const {
    nb::dict d = ModelConfigDict(*model_);
    d["max_seq_len"] = session_->max_seq_len();
    d["threads"] = session_->num_threads();
    d["max_batch"] = session_->max_batch();
    d["device"] = session_->device() == awqcore::Device::kCuda ? "cuda" : "cpu";
    d["device_memory_bytes"] = session_->device_memory_bytes();
    d["activations"] = activations_;
    return d;
  }

  std::optional<std::string> metadata_string(const std::string& key) const {
    return model_->metadata_string(key);
  }

  PyTokenizer tokenizer() const {
    nb::gil_scoped_release release;
    return PyTokenizer{awqcore::Tokenizer::FromModel(*model_)};
  }

  // Logits of a fresh sequence: float32 [len(ids), vocab], computed in calls
  // of `chunk` tokens (the last may be shorter; the caller checks chunk >= 1).
  nb::ndarray<nb::numpy, float, nb::ndim<2>> forward(const std::vector<int>& ids, int chunk) {
    auto* logits = new std::vector<float>();
    nb::capsule owner(logits, [](void* p) noexcept { delete static_cast<std::vector<float>*>(p); });
    {
      nb::gil_scoped_release release;
      session_->Reset();
      logits->reserve(ids.size() * static_cast<size_t>(model_->config().vocab_size));
      for (size_t start = 0; start < ids.size(); start += chunk) {
        const size_t end = std::min(ids.size(), start + static_cast<size_t>(chunk));
        const std::vector<float> part =
            session_->Forward(std::vector<int>(ids.begin() + start, ids.begin() + end));
        logits->insert(logits->end(), part.begin(), part.end());
      }
    }
    size_t shape[2] = {ids.size(), static_cast<size_t>(model_->config().vocab_size)};
    return nb::ndarray<nb::numpy, float, nb::ndim<2>>(logits->data(), 2, shape, owner);
  }

  std::vector<int> generate(const std::vector<int>& ids, int max_new_tokens, float temperature,
                            int top_k, float top_p, float repetition_penalty,
                            std::optional<uint64_t> seed, std::optional<std::vector<int>> stop,
                            nb::object on_token) {
    const awqcore::GenerateOptions options = Options(
        max_new_tokens, temperature, top_k, top_p, repetition_penalty, seed, std::move(stop));

    // A Python exception inside on_token stops generation; it is re-raised
    // once the C++ call has returned and the GIL is held again.
    std::optional<nb::python_error> callback_error;
    awqcore::TokenCallback callback;
    if (!on_token.is_none()) {
      callback = [&](int token) -> bool {
        nb::gil_scoped_acquire acquire;
        try {
          nb::object result = on_token(token);
          if (result.is_none()) return true;
          int truth = PyObject_IsTrue(result.ptr());
          if (truth < 0) throw nb::python_error();
          return truth == 1;
        } catch (nb::python_error& e) {
          callback_error.emplace(std::move(e));
          return false;
        }
      };
    }
    std::vector<int> tokens;
    {
      nb::gil_scoped_release release;
      tokens = session_->Generate(ids, options, callback);
    }
    if (callback_error) throw *callback_error;
    return tokens;
  }

  std::vector<std::vector<int>> generate_batch(const std::vector<std::vector<int>>& prompts,
                                               int max_new_tokens, float temperature, int top_k,
                                               float top_p, float repetition_penalty,
                                               std::optional<uint64_t> seed,
                                               std::optional<std::vector<int>> stop) {
    const awqcore::GenerateOptions options = Options(
        max_new_tokens, temperature, top_k, top_p, repetition_penalty, seed, std::move(stop));
    nb::gil_scoped_release release;
    return session_->GenerateBatch(prompts, options);
  }

  void reset() { session_->Reset(); }
  int position() const { return session_->position(); }
  std::pair<double, double> last_timing() const {
    const awqcore::Session::Timing t = session_->last_timing();
    return {t.prefill_seconds, t.decode_seconds};
  }
  std::vector<std::string> last_stop_reasons() const {
    std::vector<std::string> names;
    for (awqcore::StopReason r : session_->last_stop_reasons()) {
      names.emplace_back(awqcore::StopReasonName(r));
    }
    return names;
  }

 private:

  std::shared_ptr<const awqcore::Model> model_;
  std::unique_ptr<awqcore::Session> session_;
  std::string activations_;
};

// One engine event: the request got its slot (cached_prompt_tokens >= 0), a
// token (token >= 0) or the end of a request (finish_reason set).
struct EngineEvent {
  uint64_t id = 0;
  int token = -1;              // -1 but on a token event
  std::string finish_reason;   // StopReasonName on the finish event, else empty
  std::string error;           // the failure's message; empty on success
  int cached_prompt_tokens = -1;  // on_start's count on the start event, else -1
};
using PyEvent = std::tuple<uint64_t, std::optional<int>, std::optional<std::string>,
                           std::optional<std::string>, std::optional<int>>;

// The hand-over from the engine thread to the Python dispatcher thread: the
// engine's callbacks push without the GIL, wait_events pops with the GIL
// released while it sleeps. Thread-safe.
class EventQueue {
 public:
  void Push(EngineEvent event) {
    std::lock_guard<std::mutex> lock(mutex_);
    events_.push_back(std::move(event));
    ready_.notify_one();
  }
  // Ends the waits: wait_events returns what is left, then nothing, at once.
  void Close() {
    std::lock_guard<std::mutex> lock(mutex_);
    closed_ = true;
    ready_.notify_all();
  }
  // Every queued event once one is there or the queue closes, else nothing
  // after `timeout` seconds; and whether more may come.
  std::pair<std::vector<EngineEvent>, bool> Wait(double timeout) {
    std::unique_lock<std::mutex> lock(mutex_);
    ready_.wait_for(lock, std::chrono::duration<double>(std::max(0.0, timeout)),
                    [&] { return !events_.empty() || closed_; });
    std::vector<EngineEvent> events(std::make_move_iterator(events_.begin()),
                                    std::make_move_iterator(events_.end()));
    events_.clear();
    return {std::move(events), !closed_};
  }

 private:
  std::mutex mutex_;
  std::condition_variable ready_;
  std::deque<EngineEvent> events_;
  bool closed_ = false;
};

// awqcore::Engine for the Python wrapper (awqcore/engine.py): every callback
// becomes an event in the queue, so the engine thread never takes the GIL.
// Thread-safe, as awqcore::Engine.
class PyEngine {
 public:
  PyEngine(const std::string& path, int threads, int max_seq_len, int max_batch, int max_queue,
           int prefill_chunk, int prefill_budget, bool prefix_reuse, bool verify,
           const std::string& device,
           const std::string& activations)
      : activations_(activations) {
    nb::gil_scoped_release release;
    awqcore::LoadOptions load;
    load.verify_checksums = verify;
    model_ = awqcore::Model::Load(path, load);
    awqcore::EngineOptions options;
    options.max_batch = max_batch;
    options.max_seq_len = max_seq_len;
    options.max_queue = max_queue;
    options.prefill_chunk = prefill_chunk;
    options.prefill_budget = prefill_budget;
    options.prefix_reuse = prefix_reuse;
    options.num_threads = threads;
    options.device = device == "cuda" ? awqcore::Device::kCuda : awqcore::Device::kCpu;
    options.activations = activations == "f32" ? awqcore::CpuActivations::kFloat32
                                                : awqcore::CpuActivations::kInt8Decode;
    engine_ = std::make_unique<awqcore::Engine>(model_, options);
    max_queue_ = max_queue;
    prefill_chunk_ = prefill_chunk;
    prefill_budget_ = std::min(prefill_budget, prefill_chunk);
    prefix_reuse_ = prefix_reuse;
    device_ = device;
  }

  nb::dict config() const {
    nb::dict d = ModelConfigDict(*model_);
    d["max_seq_len"] = engine_->max_seq_len();
    d["threads"] = engine_->num_threads();
    d["max_batch"] = engine_->max_batch();
    d["max_queue"] = max_queue_;
    d["prefill_chunk"] = prefill_chunk_;
    d["prefill_budget"] = prefill_budget_;
    d["prefix_reuse"] = prefix_reuse_;
    d["device"] = device_;
    d["activations"] = activations_;
    return d;
  }

  std::optional<std::string> metadata_string(const std::string& key) const {
    return model_->metadata_string(key);
  }

  uint64_t submit(std::vector<int> ids, int max_new_tokens, float temperature, int top_k,
                  float top_p, float repetition_penalty, std::optional<uint64_t> seed,
                  std::optional<std::vector<int>> stop) {
    const awqcore::GenerateOptions options = Options(
        max_new_tokens, temperature, top_k, top_p, repetition_penalty, seed, std::move(stop));
    // The id is known once Submit returns, but the engine thread may call
    // back before: the callbacks read it from a cell Submit's caller fills
    // under the cell's lock, which the callbacks take too.
    struct IdCell {
      std::mutex mutex;
      uint64_t id = 0;
      uint64_t Get() {
        std::lock_guard<std::mutex> lock(mutex);
        return id;
      }
    };
    auto cell = std::make_shared<IdCell>();
    std::shared_ptr<EventQueue> events = events_;
    nb::gil_scoped_release release;
    std::lock_guard<std::mutex> hold(cell->mutex);
    cell->id = engine_->Submit(
        std::move(ids), options,
        [events, cell](int token) {
          events->Push({cell->Get(), token, "", ""});
          return true;
        },
        [events, cell](awqcore::StopReason reason, const std::string& error) {
          events->Push({cell->Get(), -1, awqcore::StopReasonName(reason), error});
        },
        [events, cell](int cached_prompt_tokens) {
          events->Push({cell->Get(), -1, "", "", cached_prompt_tokens});
        });
    return cell->id;
  }

  bool cancel(uint64_t id) { return engine_->Cancel(id); }

  nb::dict stats() const {
    const awqcore::Engine::Stats s = engine_->stats();
    nb::dict d;
    d["waiting"] = s.waiting;
    d["running"] = s.running;
    d["max_batch"] = s.max_batch;
    d["max_queue"] = s.max_queue;
    d["submitted"] = s.submitted;
    d["finished"] = s.finished;
    d["prompt_tokens"] = s.prompt_tokens;
    d["prefill_chunks"] = s.prefill_chunks;
    d["reused_prompt_tokens"] = s.reused_prompt_tokens;
    d["generated_tokens"] = s.generated_tokens;
    d["decode_steps"] = s.decode_steps;
    d["prefill_seconds"] = s.prefill_seconds;
    d["decode_seconds"] = s.decode_seconds;
    return d;
  }

  // (events, open): events as (id, None, None, None, cached_prompt_tokens)
  // when the request gets its slot, (id, token, None, None, None) per token
  // and (id, None, finish_reason, error or None, None) at its end; open is
  // false once close_events ran and the queue is empty.
  std::pair<std::vector<PyEvent>, bool> wait_events(double timeout) {
    std::pair<std::vector<EngineEvent>, bool> got;
    {
      nb::gil_scoped_release release;
      got = events_->Wait(timeout);
    }
    std::vector<PyEvent> out;
    out.reserve(got.first.size());
    for (EngineEvent& e : got.first) {
      if (e.cached_prompt_tokens >= 0) {
        out.emplace_back(e.id, std::nullopt, std::nullopt, std::nullopt, e.cached_prompt_tokens);
      } else if (e.finish_reason.empty()) {
        out.emplace_back(e.id, e.token, std::nullopt, std::nullopt, std::nullopt);
      } else {
        out.emplace_back(e.id, std::nullopt, std::move(e.finish_reason),
                         e.error.empty() ? std::nullopt : std::optional<std::string>(e.error),
                         std::nullopt);
      }
    }
    return {std::move(out), got.second || !out.empty()};
  }

  // Finishes every request (their events are queued before this returns)
  // and joins the engine thread; then the event queue closes.
  void shutdown() {
    {
      nb::gil_scoped_release release;
      engine_->Shutdown();
    }
    events_->Close();
  }

 private:
  std::shared_ptr<const awqcore::Model> model_;
  std::shared_ptr<EventQueue> events_ = std::make_shared<EventQueue>();
  std::unique_ptr<awqcore::Engine> engine_;
  int max_queue_ = 0, prefill_chunk_ = 0, prefill_budget_ = 0;
  bool prefix_reuse_ = true;
  std::string device_, activations_;
};

}  // namespace

NB_MODULE(_core, m) {
  m.doc() = "awqcore C++ runtime (use the awqcore.Model wrapper)";

  nb::module_ errors = nb::module_::import_("awqcore.errors");
  g_format_error = errors.attr("FormatError").inc_ref().ptr();
  g_runtime_error = errors.attr("Error").inc_ref().ptr();
  g_queue_full = errors.attr("QueueFull").inc_ref().ptr();
  nb::register_exception_translator([](const std::exception_ptr& p, void*) {
    try {
      std::rethrow_exception(p);
    } catch (const awqcore::FormatError& e) {
      PyErr_SetString(g_format_error, e.what());
    } catch (const awqcore::QueueFull& e) {
      PyErr_SetString(g_queue_full, e.what());
    } catch (const awqcore::InvalidArgument& e) {
      PyErr_SetString(PyExc_ValueError, e.what());
    } catch (const awqcore::Error& e) {
      PyErr_SetString(g_runtime_error, e.what());
    }
  });

  m.def("version", &awqcore::Version);
  // The C++ chat formatter over given chat.* keys (role, content) pairs: what
  // the tests compare with jinja2 for each family's template.
  m.def(
      "apply_chat_format",
      [](const std::map<std::string, std::string>& keys,
         const std::vector<std::pair<std::string, std::string>>& messages, bool add_generation_prompt) {
        std::vector<awqcore::ChatMessage> conversation;
        for (const auto& [role, content] : messages) conversation.push_back({role, content});
        return awqcore::ChatFormat::FromMetadata(keys).Apply(conversation, add_generation_prompt);
      },
      "keys"_a, "messages"_a, "add_generation_prompt"_a);
  m.def("built_with_cuda", &awqcore::BuiltWithCuda);
  m.def("cuda_device_info", &awqcore::CudaDeviceInfo);
  m.def("cpu_kernels_info", &awqcore::CpuKernelsInfo);
  m.attr("int8_decode_max_tokens") = awqcore::kInt8DecodeMaxTokens;
  m.attr("default_prefill_budget") = awqcore::EngineOptions{}.prefill_budget;
  // The op profile of CPU decode steps (cpp/src/op_profile.h).
  m.def("set_op_profiling", &awqcore::SetOpProfiling, "enabled"_a);
  m.def("op_profiling_enabled", &awqcore::OpProfilingEnabled);
  m.def("reset_op_profile", &awqcore::ResetOpProfile);
  m.def("op_profile", [] {
    const awqcore::OpProfile totals = awqcore::OpProfileTotals();
    nb::dict seconds;
    for (int i = 0; i < static_cast<int>(awqcore::Op::kCount); ++i) {
      seconds[awqcore::OpName(static_cast<awqcore::Op>(i))] = totals.nanos[i] * 1e-9;
    }
    nb::dict d;
    d["seconds"] = seconds;
    d["decode_calls"] = totals.decode_calls;
    d["decode_tokens"] = totals.decode_tokens;
    return d;
  });

  // encode takes str, encode_bytes bytes that may hold invalid UTF-8.
  nb::class_<PyTokenizer>(m, "Tokenizer")
      .def_static("from_json", [](std::string_view json) {
        nb::gil_scoped_release release;
        return PyTokenizer{awqcore::Tokenizer::FromJson(json)};
      }, "json"_a)
      .def("encode", &PyTokenizer::encode, "text"_a, "add_special"_a = false,
           "parse_special"_a = true)
      .def("encode_bytes", [](const PyTokenizer& t, nb::bytes text, bool add_special,
                              bool parse_special) {
        return t.encode(std::string_view(text.c_str(), text.size()), add_special, parse_special);
      }, "text"_a, "add_special"_a = false, "parse_special"_a = true)
      .def("decode", &PyTokenizer::decode, "ids"_a, "skip_special"_a = false)
      .def("vocab_size", [](const PyTokenizer& t) { return t.tokenizer->vocab_size(); })
      .def("token_text", [](const PyTokenizer& t, int id) { return t.tokenizer->TokenText(id); }, "id"_a)
      .def("token_id", [](const PyTokenizer& t, std::string_view piece) {
        return t.tokenizer->TokenId(piece);
      }, "piece"_a)
      .def("is_special", [](const PyTokenizer& t, int id) { return t.tokenizer->IsSpecial(id); }, "id"_a)
      .def("stream_decoder", [](const PyTokenizer& t, bool skip_special) {
        return awqcore::StreamDecoder(t.tokenizer, skip_special);
      }, "skip_special"_a = true);
  nb::class_<awqcore::StreamDecoder>(m, "StreamDecoder")
      .def("push", &awqcore::StreamDecoder::Push, "id"_a)
      .def("flush", &awqcore::StreamDecoder::Flush);

  nb::class_<PyModel>(m, "Model")
      .def(nb::init<const std::string&, int, int, bool, const std::string&, int,
                    const std::string&>(),
           "path"_a, "threads"_a, "max_seq_len"_a, "verify"_a, "device"_a, "max_batch"_a,
           "activations"_a)
      .def("config", &PyModel::config)
      .def("metadata_string", &PyModel::metadata_string, "key"_a)
      .def("tokenizer", &PyModel::tokenizer)
      .def("forward", &PyModel::forward, "ids"_a, "chunk"_a)
      .def("generate", &PyModel::generate, "ids"_a, "max_new_tokens"_a, "temperature"_a, "top_k"_a,
           "top_p"_a, "repetition_penalty"_a, "seed"_a.none(), "stop"_a.none(),
           "on_token"_a.none())
      .def("generate_batch", &PyModel::generate_batch, "prompts"_a, "max_new_tokens"_a,
           "temperature"_a, "top_k"_a, "top_p"_a, "repetition_penalty"_a, "seed"_a.none(),
           "stop"_a.none())
      .def("reset", &PyModel::reset)
      .def("position", &PyModel::position)
      .def("last_timing", &PyModel::last_timing)
      .def("last_stop_reasons", &PyModel::last_stop_reasons);

  // The continuous-batching engine (awqcore/engine.py wraps it).
  nb::class_<PyEngine>(m, "Engine")
      .def(nb::init<const std::string&, int, int, int, int, int, int, bool, bool,
                    const std::string&, const std::string&>(),
           "path"_a, "threads"_a, "max_seq_len"_a, "max_batch"_a, "max_queue"_a,
           "prefill_chunk"_a, "prefill_budget"_a, "prefix_reuse"_a, "verify"_a,
           "device"_a, "activations"_a)
      .def("config", &PyEngine::config)
      .def("metadata_string", &PyEngine::metadata_string, "key"_a)
      .def("submit", &PyEngine::submit, "ids"_a, "max_new_tokens"_a, "temperature"_a, "top_k"_a,
           "top_p"_a, "repetition_penalty"_a, "seed"_a.none(), "stop"_a.none())
      .def("cancel", &PyEngine::cancel, "request_id"_a)
      .def("stats", &PyEngine::stats)
      .def("wait_events", &PyEngine::wait_events, "timeout"_a)
      .def("shutdown", &PyEngine::shutdown);
}
