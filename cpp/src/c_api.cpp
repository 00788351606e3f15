// The C API (awqcore/awqcore_c.h) over the C++ one. Every entry point catches
// every exception and turns it into a status code and the thread's last-error
// message; handles are checked against the set of live ones before use.

#include "awqcore/awqcore_c.h"

#include <cstring>
#include <exception>
#include <memory>
#include <mutex>
#include <new>
#include <optional>
#include <string>
#include <unordered_set>
#include <vector>

#include "awqcore/awqcore.h"
#include "awqcore/tokenizer.h"

struct awq_model {
  std::shared_ptr<const awqcore::Model> model;
  std::shared_ptr<const awqcore::Tokenizer> tokenizer;  // null: see tokenizer_error
  std::string tokenizer_error;
  std::optional<awqcore::ChatFormat> chat;  // nullopt: see chat_error
  std::string chat_error;
};

struct awq_session {
  std::shared_ptr<const awqcore::Model> model;
  std::shared_ptr<const awqcore::Tokenizer> tokenizer;  // may be null
  std::unique_ptr<awqcore::Session> session;
  const char* stop_reason = "";
};

namespace {

thread_local std::string g_last_error;

// The live handles: a freed or made-up pointer is refused without being
// dereferenced. Lookups are a hash probe under a mutex, per call (not per token).
std::mutex g_handles_mutex;
std::unordered_set<const void*> g_models, g_sessions;

int Fail(int status, const std::string& message) {
  g_last_error = message;
  return status;
}

class StatusError : public std::exception {
 public:
  StatusError(int status, std::string message) : status_(status), message_(std::move(message)) {}
  int status() const { return status_; }
  const char* what() const noexcept override { return message_.c_str(); }

 private:
  int status_;
  std::string message_;
};

[[noreturn]] void Throw(int status, const std::string& message) { throw StatusError(status, message); }

void NeedPointer(const void* p, const char* name) {
  if (p == nullptr) Throw(AWQ_ERR_INVALID_ARGUMENT, std::string(name) + " is NULL");
}

bool Live(const std::unordered_set<const void*>& set, const void* p) {
  std::lock_guard<std::mutex> lock(g_handles_mutex);
  return set.count(p) != 0;
}

const awq_model& CheckModel(const awq_model* model) {
  NeedPointer(model, "model");
  if (!Live(g_models, model)) Throw(AWQ_ERR_INVALID_ARGUMENT, "model is not a live awq_model handle");
  return *model;
}

awq_session& CheckSession(awq_session* session) {
  NeedPointer(session, "session");
  if (!Live(g_sessions, session)) {
    Throw(AWQ_ERR_INVALID_ARGUMENT, "session is not a live awq_session handle");
  }
  return *session;
}

const awqcore::Tokenizer& TokenizerOf(const awq_model& model) {
  if (!model.tokenizer) Throw(AWQ_ERR_FORMAT, "the model has no usable tokenizer: " + model.tokenizer_error);
  return *model.tokenizer;
}

// Runs `body`, mapping every exception to a status and the last-error message.
template <class Body>
int Guard(Body&& body) {
  try {
    body();
    return AWQ_OK;
  } catch (const StatusError& e) {
    return Fail(e.status(), e.what());
  } catch (const awqcore::FormatError& e) {
    return Fail(AWQ_ERR_FORMAT, e.what());
  } catch (const awqcore::InvalidArgument& e) {
    return Fail(AWQ_ERR_INVALID_ARGUMENT, e.what());
  } catch (const awqcore::Error& e) {
    return Fail(AWQ_ERR_RUNTIME, e.what());
  } catch (const std::bad_alloc&) {
    return Fail(AWQ_ERR_OUT_OF_MEMORY, "out of memory");
  } catch (const std::exception& e) {
    return Fail(AWQ_ERR_INTERNAL, std::string("internal error: ") + e.what());
  } catch (...) {
    return Fail(AWQ_ERR_INTERNAL, "internal error: unknown exception");
  }
}

// Copies `text` and its terminator to out (capacity bytes) when it fits.
void PutText(const std::string& text, char* out, size_t capacity, size_t* out_length) {
  NeedPointer(out_length, "out_length");
  *out_length = text.size();
  if (capacity < text.size() + 1) {
    Throw(AWQ_ERR_BUFFER_TOO_SMALL, "the text needs " + std::to_string(text.size() + 1) +
                                        " bytes (terminator included); capacity is " +
                                        std::to_string(capacity));
  }
  NeedPointer(out, "out_text");
  std::memcpy(out, text.data(), text.size());
  out[text.size()] = '\0';
}

}  // namespace

extern "C" {

const char* awq_version(void) { return awqcore::Version(); }

const char* awq_last_error(void) { return g_last_error.c_str(); }

const char* awq_status_name(int status) {
  switch (status) {
    case AWQ_OK: return "AWQ_OK";
    case AWQ_ERR_INVALID_ARGUMENT: return "AWQ_ERR_INVALID_ARGUMENT";
    case AWQ_ERR_FORMAT: return "AWQ_ERR_FORMAT";
    case AWQ_ERR_RUNTIME: return "AWQ_ERR_RUNTIME";
    case AWQ_ERR_BUFFER_TOO_SMALL: return "AWQ_ERR_BUFFER_TOO_SMALL";
    case AWQ_ERR_OUT_OF_MEMORY: return "AWQ_ERR_OUT_OF_MEMORY";
    case AWQ_ERR_INTERNAL: return "AWQ_ERR_INTERNAL";
    default: return "unknown status";
  }
}

int awq_model_load(const char* path, awq_model** out_model) {
  return Guard([&] {
    NeedPointer(out_model, "out_model");
    *out_model = nullptr;
    NeedPointer(path, "path");
    auto handle = std::make_unique<awq_model>();
    handle->model = awqcore::Model::Load(path);
    try {
      handle->tokenizer = awqcore::Tokenizer::FromModel(*handle->model);
    } catch (const awqcore::Error& e) {
      handle->tokenizer_error = e.what();
    }
    try {
      handle->chat = awqcore::ChatFormat::FromModel(*handle->model);
    } catch (const awqcore::Error& e) {
      handle->chat_error = e.what();
    }
    std::lock_guard<std::mutex> lock(g_handles_mutex);
    g_models.insert(handle.get());
    *out_model = handle.release();
  });
}

void awq_model_free(awq_model* model) {
  if (model == nullptr) return;
  {
    std::lock_guard<std::mutex> lock(g_handles_mutex);
    if (g_models.erase(model) == 0) return;  // not a live handle: nothing to free
  }
  delete model;
}

int awq_model_vocab_size(const awq_model* model, int32_t* out_vocab_size) {
  return Guard([&] {
    const awq_model& m = CheckModel(model);
    NeedPointer(out_vocab_size, "out_vocab_size");
    *out_vocab_size = m.model->config().vocab_size;
  });
}

int awq_tokenize(const awq_model* model, const char* text, size_t text_len, int add_special,
                 int32_t* out_tokens, size_t capacity, size_t* out_count) {
  return Guard([&] {
    const awq_model& m = CheckModel(model);
    if (text_len > 0) NeedPointer(text, "text");
    NeedPointer(out_count, "out_count");
    const std::vector<int> ids = TokenizerOf(m).Encode(
        std::string_view(text_len > 0 ? text : "", text_len), add_special != 0);
    *out_count = ids.size();
    if (capacity < ids.size()) {
      Throw(AWQ_ERR_BUFFER_TOO_SMALL, "the text is " + std::to_string(ids.size()) +
                                          " tokens; capacity is " + std::to_string(capacity));
    }
    if (!ids.empty()) NeedPointer(out_tokens, "out_tokens");
    for (size_t i = 0; i < ids.size(); ++i) out_tokens[i] = ids[i];
  });
}

int awq_detokenize(const awq_model* model, const int32_t* tokens, size_t count, int skip_special,
                   char* out_text, size_t capacity, size_t* out_length) {
  return Guard([&] {
    const awq_model& m = CheckModel(model);
    if (count > 0) NeedPointer(tokens, "tokens");
    const std::vector<int> ids(tokens, tokens + count);
    PutText(TokenizerOf(m).Decode(ids, skip_special != 0), out_text, capacity, out_length);
  });
}

int awq_chat_format(const awq_model* model, const awq_chat_message* messages, size_t count,
                    int add_generation_prompt, char* out_text, size_t capacity,
                    size_t* out_length) {
  return Guard([&] {
    const awq_model& m = CheckModel(model);
    if (count > 0) NeedPointer(messages, "messages");
    if (!m.chat) Throw(AWQ_ERR_FORMAT, m.chat_error);
    std::vector<awqcore::ChatMessage> conversation;
    for (size_t i = 0; i < count; ++i) {
      if (messages[i].role == nullptr || messages[i].content == nullptr) {
        Throw(AWQ_ERR_INVALID_ARGUMENT, "messages[" + std::to_string(i) + "] has a NULL " +
                                            (messages[i].role == nullptr ? "role" : "content"));
      }
      conversation.push_back({messages[i].role, messages[i].content});
    }
    PutText(m.chat->Apply(conversation, add_generation_prompt != 0), out_text, capacity,
            out_length);
  });
}

int awq_session_create(const awq_model* model, int max_seq_len, int threads,
                       awq_session** out_session) {
  return Guard([&] {
    NeedPointer(out_session, "out_session");
    *out_session = nullptr;
    const awq_model& m = CheckModel(model);
    auto handle = std::make_unique<awq_session>();
    handle->model = m.model;
    handle->tokenizer = m.tokenizer;
    handle->session = std::make_unique<awqcore::Session>(m.model, max_seq_len, threads);
    std::lock_guard<std::mutex> lock(g_handles_mutex);
    g_sessions.insert(handle.get());
    *out_session = handle.release();
  });
}

void awq_session_free(awq_session* session) {
  if (session == nullptr) return;
  {
    std::lock_guard<std::mutex> lock(g_handles_mutex);
    if (g_sessions.erase(session) == 0) return;
  }
  delete session;
}

void awq_generate_options_init(awq_generate_options* options) {
  if (options == nullptr) return;
  *options = awq_generate_options{};
  options->max_new_tokens = 128;
  options->temperature = 0.0f;
  options->top_k = 0;
  options->top_p = 1.0f;
  options->repetition_penalty = 1.0f;
}

int awq_generate(awq_session* session, const int32_t* prompt, size_t prompt_count,
                 const awq_generate_options* options, awq_token_callback callback,
                 void* user_data, size_t* out_generated) {
  return Guard([&] {
    awq_session& s = CheckSession(session);
    if (out_generated != nullptr) *out_generated = 0;
    if (prompt_count > 0) NeedPointer(prompt, "prompt");
    awq_generate_options o;
    awq_generate_options_init(&o);
    if (options != nullptr) o = *options;
    awqcore::GenerateOptions g;
    g.max_new_tokens = o.max_new_tokens;
    g.sampling.temperature = o.temperature;
    g.sampling.top_k = o.top_k;
    g.sampling.top_p = o.top_p;
    g.sampling.repetition_penalty = o.repetition_penalty;
    if (o.has_seed) g.sampling.seed = o.seed;
    if (o.ignore_eos) g.stop_ids = std::vector<int>{};
    std::optional<awqcore::StreamDecoder> decoder;
    if (s.tokenizer && callback != nullptr) decoder.emplace(s.tokenizer);
    s.stop_reason = "";
    const std::vector<int> ids(prompt, prompt + prompt_count);
    const std::vector<int> result = s.session->Generate(ids, g, [&](int token) {
      const std::string piece = decoder ? decoder->Push(token) : std::string();
      return callback == nullptr || callback(token, piece.data(), piece.size(), user_data) == 0;
    });
    if (decoder) {
      // The held-back bytes of a character cut off by the end: the text then
      // equals awq_detokenize of all the tokens.
      const std::string rest = decoder->Flush();
      if (!rest.empty()) callback(-1, rest.data(), rest.size(), user_data);
    }
    s.stop_reason = awqcore::StopReasonName(s.session->last_stop_reasons().at(0));
    if (out_generated != nullptr) *out_generated = result.size();
  });
}

int awq_session_last_stats(const awq_session* session, const char** out_stop_reason,
                           double* out_prefill_seconds, double* out_decode_seconds) {
  return Guard([&] {
    const awq_session& s = CheckSession(const_cast<awq_session*>(session));
    const awqcore::Session::Timing timing = s.session->last_timing();
    if (out_stop_reason != nullptr) *out_stop_reason = s.stop_reason;
    if (out_prefill_seconds != nullptr) *out_prefill_seconds = timing.prefill_seconds;
    if (out_decode_seconds != nullptr) *out_decode_seconds = timing.decode_seconds;
  });
}

}  // extern "C"
