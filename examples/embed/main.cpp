// Embedding awqcore in a C++ program, text in and text out: load a model,
// format the prompt with the model's chat template (--chat) or take it as is,
// generate greedily and print the text as it is produced.
//   embed_generate MODEL.awqbin [-n N] [-t THREADS] [--chat] PROMPT
#include <awqcore/awqcore.h>

#include <cstdio>
#include <cstdlib>
#include <string>

int main(int argc, char** argv) {
  int max_new_tokens = 32, threads = 0;
  bool chat = false;
  std::string prompt;
  for (int i = 2; i < argc; ++i) {
    const std::string arg = argv[i];
    if ((arg == "-n" || arg == "-t") && i + 1 < argc) {
      (arg == "-n" ? max_new_tokens : threads) = std::atoi(argv[++i]);
    } else if (arg == "--chat") {
      chat = true;
    } else {
      prompt = arg;
    }
  }
  if (argc < 3 || prompt.empty()) {
    std::fprintf(stderr, "usage: %s MODEL.awqbin [-n N] [-t THREADS] [--chat] PROMPT\n", argv[0]);
    return 2;
  }
  try {
    auto model = awqcore::Model::Load(argv[1]);
    auto tokenizer = awqcore::Tokenizer::FromModel(*model);
    // A chat prompt holds its special tokens as text; a plain one gets the
    // tokenizer's own (BOS where the model wants one).
    const std::vector<int> ids =
        chat ? tokenizer->Encode(awqcore::ChatFormat::FromModel(*model).Apply({{"user", prompt}}))
             : tokenizer->Encode(prompt, /*add_special=*/true);
    awqcore::Session session(model, static_cast<int>(ids.size()) + max_new_tokens, threads);
    awqcore::GenerateOptions options;
    options.max_new_tokens = max_new_tokens;
    awqcore::StreamDecoder text(tokenizer);
    const std::vector<int> tokens = session.Generate(ids, options, [&](int id) {
      std::fputs(text.Push(id).c_str(), stdout);
      std::fflush(stdout);
      return true;
    });
    std::printf("%s\n", text.Flush().c_str());
    const awqcore::Session::Timing t = session.last_timing();
    std::fprintf(stderr, "%s: %zu prompt tokens, %zu new in %.3f s (%.1f tok/s decode)\n",
                 model->config().architecture.c_str(), ids.size(), tokens.size(),
                 t.prefill_seconds + t.decode_seconds,
                 tokens.size() > 1 ? (tokens.size() - 1) / t.decode_seconds : 0.0);
  } catch (const awqcore::Error& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  return 0;
}
