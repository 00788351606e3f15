/* The C API: one chat answer, streamed. embed_chat_c MODEL.awqbin QUESTION [N] */
#include <awqcore/awqcore_c.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int print_piece(int32_t token, const char* text, size_t len, void* user_data) {
  (void)token, (void)user_data;
  fwrite(text, 1, len, stdout);
  fflush(stdout);
  return 0; /* nonzero would stop */
}

int main(int argc, char** argv) {
  awq_model* model = NULL;
  awq_session* session = NULL;
  awq_chat_message message = {"user", NULL};
  awq_generate_options options;
  char prompt[8192];
  int32_t ids[4096];
  size_t len = 0, n = 0;
  if (argc < 3) {
    fprintf(stderr, "usage: %s MODEL.awqbin QUESTION [N]\n", argv[0]);
    return 2;
  }
  message.content = argv[2];
  awq_generate_options_init(&options);
  options.max_new_tokens = argc > 3 ? atoi(argv[3]) : 64;
  if (awq_model_load(argv[1], &model) != AWQ_OK ||
      awq_chat_format(model, &message, 1, 1, prompt, sizeof prompt, &len) != AWQ_OK ||
      awq_tokenize(model, prompt, len, 0, ids, 4096, &n) != AWQ_OK ||
      awq_session_create(model, (int)n + options.max_new_tokens, 0, &session) != AWQ_OK ||
      awq_generate(session, ids, n, &options, print_piece, NULL, NULL) != AWQ_OK) {
    fprintf(stderr, "error: %s\n", awq_last_error());
    awq_session_free(session);
    awq_model_free(model);
    return 1;
  }
  printf("\n");
  awq_session_free(session);
  awq_model_free(model);
  return 0;
}
