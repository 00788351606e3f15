/* The C API (awqcore/awqcore_c.h) called from C: compiled as C, linked against
 * the shared libawqcore_c. Errors first (NULL pointers, handles that are not
 * live, a path that does not exist: status codes and a message, no crash; run
 * under ASan/UBSan by tools/sanitizers.sh), then tokenize/detokenize, chat
 * formatting and generation on the tiny model make_c_api_model writes.
 *   test_c_api MODEL.awqbin */
#include <awqcore/awqcore_c.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int g_failures = 0;

#define CHECK(cond)                                                              \
  do {                                                                           \
    if (!(cond)) {                                                               \
      fprintf(stderr, "%s:%d: CHECK failed: %s (last error: %s)\n", __FILE__,     \
              __LINE__, #cond, awq_last_error());                                \
      ++g_failures;                                                              \
    }                                                                            \
  } while (0)

/* status == expected and a message was left. */
#define CHECK_STATUS(call, expected)                                             \
  do {                                                                           \
    int status_ = (call);                                                        \
    if (status_ != (expected) || (status_ != AWQ_OK && awq_last_error()[0] == 0)) { \
      fprintf(stderr, "%s:%d: %s returned %s, expected %s (last error: %s)\n",   \
              __FILE__, __LINE__, #call, awq_status_name(status_),               \
              awq_status_name(expected), awq_last_error());                      \
      ++g_failures;                                                              \
    }                                                                            \
  } while (0)

static void test_errors(void) {
  awq_model* model = (awq_model*)1; /* must be reset to NULL on failure */
  awq_session* session = NULL;
  int32_t ids[4];
  char text[16];
  size_t n = 0;
  int not_a_handle = 0;

  CHECK(strlen(awq_version()) > 0);
  CHECK_STATUS(awq_model_load(NULL, &model), AWQ_ERR_INVALID_ARGUMENT);
  CHECK(model == NULL);
  CHECK_STATUS(awq_model_load("/nonexistent/model.awqbin", NULL), AWQ_ERR_INVALID_ARGUMENT);
  model = (awq_model*)1;
  CHECK(awq_model_load("/nonexistent/model.awqbin", &model) != AWQ_OK);
  CHECK(model == NULL);
  CHECK(strstr(awq_last_error(), "/nonexistent/model.awqbin") != NULL);

  CHECK_STATUS(awq_tokenize(NULL, "a", 1, 0, ids, 4, &n), AWQ_ERR_INVALID_ARGUMENT);
  CHECK_STATUS(awq_tokenize((const awq_model*)&not_a_handle, "a", 1, 0, ids, 4, &n),
               AWQ_ERR_INVALID_ARGUMENT);
  CHECK_STATUS(awq_detokenize(NULL, ids, 1, 0, text, sizeof text, &n), AWQ_ERR_INVALID_ARGUMENT);
  CHECK_STATUS(awq_chat_format(NULL, NULL, 0, 1, text, sizeof text, &n), AWQ_ERR_INVALID_ARGUMENT);
  CHECK_STATUS(awq_session_create(NULL, 64, 1, &session), AWQ_ERR_INVALID_ARGUMENT);
  CHECK(session == NULL);
  CHECK_STATUS(awq_session_create((const awq_model*)&not_a_handle, 64, 1, &session),
               AWQ_ERR_INVALID_ARGUMENT);
  CHECK_STATUS(awq_generate(NULL, ids, 1, NULL, NULL, NULL, &n), AWQ_ERR_INVALID_ARGUMENT);
  CHECK_STATUS(awq_generate((awq_session*)&not_a_handle, ids, 1, NULL, NULL, NULL, &n),
               AWQ_ERR_INVALID_ARGUMENT);
  CHECK_STATUS(awq_session_last_stats(NULL, NULL, NULL, NULL), AWQ_ERR_INVALID_ARGUMENT);
  CHECK_STATUS(awq_model_vocab_size(NULL, NULL), AWQ_ERR_INVALID_ARGUMENT);
  awq_model_free(NULL);
  awq_session_free(NULL);
  awq_model_free((awq_model*)&not_a_handle); /* not live: ignored */
  awq_session_free((awq_session*)&not_a_handle);
  awq_generate_options_init(NULL);
  CHECK(strcmp(awq_status_name(AWQ_ERR_FORMAT), "AWQ_ERR_FORMAT") == 0);
}

typedef struct {
  int calls;
  int stop_after; /* 0: never stop */
  int32_t tokens[64];
  char text[1024];
  size_t text_len;
} Collected;

static int collect(int32_t token, const char* text, size_t text_len, void* user_data) {
  Collected* c = (Collected*)user_data;
  if (token >= 0) { /* -1: the text of a character cut off by the end */
    if (c->calls < 64) c->tokens[c->calls] = token;
    ++c->calls;
  }
  if (c->text_len + text_len < sizeof c->text) {
    memcpy(c->text + c->text_len, text, text_len);
    c->text_len += text_len;
    c->text[c->text_len] = '\0';
  }
  return c->stop_after > 0 && c->calls >= c->stop_after;
}

static void test_model(const char* path) {
  awq_model* model = NULL;
  awq_session* session = NULL;
  int32_t ids[64];
  char text[256];
  size_t n = 0, needed = 0, generated = 0;
  int32_t vocab = 0;
  const char* hello = "hello world";
  const char* reason = NULL;
  double prefill = -1, decode = -1;
  awq_generate_options options;
  Collected first, second, stopped;
  awq_chat_message chat[2];
  const char* expected_chat =
      "<|im_start|>system\nbe brief<|im_end|>\n<|im_start|>user\nhello<|im_end|>\n"
      "<|im_start|>assistant\n";

  CHECK_STATUS(awq_model_load(path, &model), AWQ_OK);
  if (model == NULL) return;
  CHECK_STATUS(awq_model_vocab_size(model, &vocab), AWQ_OK);
  CHECK(vocab == 50);

  /* Tokenize: the size query first, then the ids; "hello" is the merges' "hell" + "o". */
  CHECK_STATUS(awq_tokenize(model, hello, strlen(hello), 0, NULL, 0, &needed),
               AWQ_ERR_BUFFER_TOO_SMALL);
  CHECK(needed == 6); /* "hello" "Ġworld" -> hell o | Ġw or l d */
  CHECK_STATUS(awq_tokenize(model, hello, strlen(hello), 0, ids, 64, &n), AWQ_OK);
  CHECK(n == needed);
  CHECK(n == 6 && ids[0] == 33 && ids[1] == 17 && ids[2] == 34 && ids[3] == 35 && ids[4] == 14 &&
        ids[5] == 6);
  CHECK_STATUS(awq_detokenize(model, ids, n, 0, text, 4, &needed), AWQ_ERR_BUFFER_TOO_SMALL);
  CHECK(needed == strlen(hello));
  CHECK_STATUS(awq_detokenize(model, ids, n, 0, text, sizeof text, &needed), AWQ_OK);
  CHECK(strcmp(text, hello) == 0);
  CHECK_STATUS(awq_tokenize(model, NULL, 0, 0, ids, 64, &n), AWQ_OK); /* empty text */
  CHECK(n == 0);
  CHECK_STATUS(awq_tokenize(model, NULL, 3, 0, ids, 64, &n), AWQ_ERR_INVALID_ARGUMENT);

  /* Chat: the default system prompt appears when the conversation has none. */
  chat[0].role = "user";
  chat[0].content = "hello";
  CHECK_STATUS(awq_chat_format(model, chat, 1, 1, text, sizeof text, &n), AWQ_OK);
  CHECK(strcmp(text, expected_chat) == 0);
  CHECK(n == strlen(expected_chat));
  chat[1].role = "tool";
  chat[1].content = "x";
  CHECK_STATUS(awq_chat_format(model, chat, 2, 1, text, sizeof text, &n), AWQ_ERR_INVALID_ARGUMENT);
  chat[1].role = NULL;
  CHECK_STATUS(awq_chat_format(model, chat, 2, 1, text, sizeof text, &n), AWQ_ERR_INVALID_ARGUMENT);
  CHECK_STATUS(awq_chat_format(model, chat, 1, 1, text, 8, &n), AWQ_ERR_BUFFER_TOO_SMALL);
  CHECK_STATUS(awq_tokenize(model, expected_chat, strlen(expected_chat), 0, ids, 64, &n), AWQ_OK);
  CHECK(n > 0 && ids[0] == 1); /* "<|im_start|>" is its special id */

  /* Generation: greedy is reproducible, the callback's text is the detokenized ids. */
  CHECK_STATUS(awq_session_create(model, 0, 1, &session), AWQ_ERR_INVALID_ARGUMENT);
  CHECK_STATUS(awq_session_create(model, 64, 1, &session), AWQ_OK);
  awq_model_free(model); /* the session keeps what it needs */
  CHECK_STATUS(awq_tokenize(model, hello, 5, 0, ids, 64, &n), AWQ_ERR_INVALID_ARGUMENT);
  if (session == NULL) return;
  awq_generate_options_init(&options);
  options.max_new_tokens = 12;
  options.ignore_eos = 1;
  memset(&first, 0, sizeof first);
  memset(&second, 0, sizeof second);
  CHECK_STATUS(awq_generate(session, ids, 2, &options, collect, &first, &generated), AWQ_OK);
  CHECK(generated == 12 && first.calls == 12);
  CHECK_STATUS(awq_generate(session, ids, 2, &options, collect, &second, &generated), AWQ_OK);
  CHECK(memcmp(first.tokens, second.tokens, 12 * sizeof(int32_t)) == 0);
  CHECK_STATUS(awq_session_last_stats(session, &reason, &prefill, &decode), AWQ_OK);
  CHECK(reason != NULL && strcmp(reason, "max_new_tokens") == 0);
  CHECK(prefill >= 0 && decode >= 0);

  memset(&stopped, 0, sizeof stopped);
  stopped.stop_after = 3;
  CHECK_STATUS(awq_generate(session, ids, 2, &options, collect, &stopped, &generated), AWQ_OK);
  CHECK(generated == 3 && stopped.calls == 3);
  CHECK(memcmp(first.tokens, stopped.tokens, 3 * sizeof(int32_t)) == 0);
  CHECK_STATUS(awq_session_last_stats(session, &reason, NULL, NULL), AWQ_OK);
  CHECK(strcmp(reason, "callback") == 0);

  /* Bad prompts: an id out of range, an empty prompt. */
  ids[0] = 5000;
  CHECK_STATUS(awq_generate(session, ids, 1, &options, NULL, NULL, &generated),
               AWQ_ERR_INVALID_ARGUMENT);
  CHECK_STATUS(awq_generate(session, ids, 0, &options, NULL, NULL, &generated),
               AWQ_ERR_INVALID_ARGUMENT);
  CHECK_STATUS(awq_generate(session, NULL, 1, &options, NULL, NULL, &generated),
               AWQ_ERR_INVALID_ARGUMENT);
  awq_session_free(session);
  CHECK_STATUS(awq_generate(session, ids, 1, &options, NULL, NULL, &generated),
               AWQ_ERR_INVALID_ARGUMENT);
}

int main(int argc, char** argv) {
  if (argc != 2) {
    fprintf(stderr, "usage: %s MODEL.awqbin\n", argv[0]);
    return 2;
  }
  test_errors();
  test_model(argv[1]);
  if (g_failures) {
    fprintf(stderr, "%d check(s) failed\n", g_failures);
    return 1;
  }
  printf("C API: all checks passed\n");
  return 0;
}
