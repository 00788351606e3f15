/* awqcore's C API: load a .awqbin model, turn text into tokens and a chat into
 * a prompt, generate with a per-token callback. For C and for any language with
 * a C FFI (C#, Go, Rust, Python ctypes). Link libawqcore_c (CMake:
 * awqcore::awqcore_c).
 *
 * Errors: every function that can fail returns an awq_status (AWQ_OK = 0);
 * awq_last_error() then describes the failure of the calling thread's last
 * failed call. No C++ exception crosses this boundary. A NULL pointer, or a
 * handle that is not a live one of the right kind (freed, never created, a
 * model passed as a session), is AWQ_ERR_INVALID_ARGUMENT, not a crash. The
 * check is a lookup of the address among live handles: it cannot tell a freed
 * handle from a later one that the allocator placed at the same address, and
 * it does not make freeing a handle while another thread uses it safe.
 *
 * Buffers: outputs go to caller-provided buffers. Each such function takes the
 * buffer's capacity and reports the size it needs through a size_t*; when the
 * capacity is too small it writes nothing and returns AWQ_ERR_BUFFER_TOO_SMALL
 * (call once with capacity 0 to learn the size). Text outputs are UTF-8 and
 * NUL-terminated: they need text length + 1 bytes; the reported length
 * excludes the terminator.
 *
 * Thread safety: a model may be used by any number of threads at once
 * (tokenize, detokenize, chat formatting, sessions on it); a session by one
 * thread at a time. awq_last_error is per thread.
 */
#ifndef AWQCORE_AWQCORE_C_H_
#define AWQCORE_AWQCORE_C_H_

#include <stddef.h>
#include <stdint.h>

#if defined(_WIN32) && defined(AWQCORE_C_BUILDING)
#define AWQ_API __declspec(dllexport)
#elif defined(_WIN32)
#define AWQ_API __declspec(dllimport)
#else
#define AWQ_API __attribute__((visibility("default")))
#endif

#ifdef __cplusplus
extern "C" {
#endif

typedef enum awq_status {
  AWQ_OK = 0,
  AWQ_ERR_INVALID_ARGUMENT = 1, /* NULL pointer, bad handle, bad value, rejected chat */
  AWQ_ERR_FORMAT = 2,           /* the file is missing, corrupt or lacks what was asked */
  AWQ_ERR_RUNTIME = 3,          /* I/O, memory for the KV cache, non-finite logits, ... */
  AWQ_ERR_BUFFER_TOO_SMALL = 4, /* the needed size was reported; nothing was written */
  AWQ_ERR_OUT_OF_MEMORY = 5,
  AWQ_ERR_INTERNAL = 6          /* a failure the library did not expect (a bug) */
} awq_status;

typedef struct awq_model awq_model;     /* a loaded model and its tokenizer: immutable */
typedef struct awq_session awq_session; /* a KV cache + worker threads over one model */

/* The library's version, e.g. "0.1.0" (static storage). */
AWQ_API const char* awq_version(void);
/* The calling thread's last error message ("" before any failure). Valid until
 * the thread's next failing call. */
AWQ_API const char* awq_last_error(void);
/* A name for a status code, e.g. "AWQ_ERR_FORMAT" (static storage). */
AWQ_API const char* awq_status_name(int status);

/* Loads and validates `path` (tensor checksums included). The tokenizer is
 * built too; a file without one still loads (tokenizing then fails). */
AWQ_API int awq_model_load(const char* path, awq_model** out_model);
/* Frees a model; NULL is a no-op. Sessions keep their model alive: a model may
 * be freed before the sessions created from it. */
AWQ_API void awq_model_free(awq_model* model);
AWQ_API int awq_model_vocab_size(const awq_model* model, int32_t* out_vocab_size);

/* text (text_len bytes, need not be NUL-terminated) -> ids. add_special: the
 * tokenizer's BOS/EOS as its post-processor adds them. Special-token text
 * (e.g. "<|im_start|>") becomes its id. Needs *out_count int32 slots. */
AWQ_API int awq_tokenize(const awq_model* model, const char* text, size_t text_len,
                         int add_special, int32_t* out_tokens, size_t capacity,
                         size_t* out_count);
/* ids -> text. skip_special: special tokens are left out. */
AWQ_API int awq_detokenize(const awq_model* model, const int32_t* tokens, size_t count,
                           int skip_special, char* out_text, size_t capacity,
                           size_t* out_length);

typedef struct awq_chat_message {
  const char* role; /* "system", "user" or "assistant" */
  const char* content;
} awq_chat_message;
/* The conversation as prompt text in the model's chat format (its chat
 * template reduced at quantize time), with the assistant's generation prompt
 * when add_generation_prompt is nonzero. Tokenize it with add_special = 0 (the
 * text holds the BOS where the template writes one). AWQ_ERR_FORMAT when the
 * file has no reduced chat format; AWQ_ERR_INVALID_ARGUMENT for a conversation
 * the template rejects. */
AWQ_API int awq_chat_format(const awq_model* model, const awq_chat_message* messages,
                            size_t count, int add_generation_prompt, char* out_text,
                            size_t capacity, size_t* out_length);

/* max_seq_len: KV-cache capacity in tokens; threads: 0 = all cores. CPU only. */
AWQ_API int awq_session_create(const awq_model* model, int max_seq_len, int threads,
                               awq_session** out_session);
AWQ_API void awq_session_free(awq_session* session); /* NULL is a no-op */

typedef struct awq_generate_options {
  int max_new_tokens;       /* default 128 */
  float temperature;        /* 0: greedy (default) */
  int top_k;                /* 0: off (default) */
  float top_p;              /* 1: off (default) */
  float repetition_penalty; /* 1: off (default) */
  uint64_t seed;            /* used when has_seed is nonzero */
  int has_seed;             /* 0: a random seed (default) */
  int ignore_eos;           /* nonzero: never stop at the model's EOS ids */
} awq_generate_options;
/* Fills `options` with the defaults above. */
AWQ_API void awq_generate_options_init(awq_generate_options* options);

/* Called with each new token and the text it completes (UTF-8, possibly
 * empty: a character split over tokens arrives with its last token; special
 * tokens give no text), not NUL-terminated. When generation ends inside a
 * character, one last call with token -1 passes the U+FFFD that detokenizing
 * all the tokens gives for it. Return nonzero to stop. It must not call the
 * same session. */
typedef int (*awq_token_callback)(int32_t token, const char* text, size_t text_len,
                                  void* user_data);

/* Resets the session, prefills `prompt`, then samples up to max_new_tokens
 * tokens (stopping at an EOS id, which is passed to the callback too; options
 * NULL = defaults; callback may be NULL). *out_generated (may be NULL) gets
 * the number of new tokens. */
AWQ_API int awq_generate(awq_session* session, const int32_t* prompt, size_t prompt_count,
                         const awq_generate_options* options, awq_token_callback callback,
                         void* user_data, size_t* out_generated);

/* Why the last awq_generate ended: "stop_token", "max_new_tokens",
 * "context_full", "callback" ("" before any; static storage), and the seconds
 * its forward passes took (prefill: the prompt; decode: the new tokens). */
AWQ_API int awq_session_last_stats(const awq_session* session, const char** out_stop_reason,
                                   double* out_prefill_seconds, double* out_decode_seconds);

#ifdef __cplusplus
}
#endif

#endif /* AWQCORE_AWQCORE_C_H_ */
