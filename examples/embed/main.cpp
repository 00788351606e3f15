// Embedding awqcore in a C++ program: load a model, generate greedily from
// token ids, print the new ids and the decode speed.
//   embed_generate MODEL.awqbin [-n N] [-t THREADS] ID [ID ...]
// Tokenization is the caller's business (the file's "tokenizer.json" metadata
// holds a Hugging Face tokenizers document for whatever library you use).
#include <awqcore/awqcore.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

int main(int argc, char** argv) {
  if (argc < 3) {
    std::fprintf(stderr, "usage: %s MODEL.awqbin [-n N] [-t THREADS] ID [ID ...]\n", argv[0]);
    return 2;
  }
  int max_new_tokens = 16, threads = 0;
  std::vector<int> prompt;
  for (int i = 2; i < argc; ++i) {
    std::string arg = argv[i];
    if ((arg == "-n" || arg == "-t") && i + 1 < argc) {
      (arg == "-n" ? max_new_tokens : threads) = std::atoi(argv[++i]);
    } else {
      prompt.push_back(std::atoi(arg.c_str()));
    }
  }
  try {
    auto model = awqcore::Model::Load(argv[1]);
    awqcore::Session session(model, /*max_seq_len=*/static_cast<int>(prompt.size()) + max_new_tokens,
                             threads);
    awqcore::GenerateOptions options;
    options.max_new_tokens = max_new_tokens;
    options.stop_ids = std::vector<int>{};  // exactly max_new_tokens tokens
    auto start = std::chrono::steady_clock::now();
    std::vector<int> tokens = session.Generate(prompt, options);
    double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    std::printf("tokens:");
    for (int t : tokens) std::printf(" %d", t);
    std::printf("\n%s: %zu tokens in %.3f s (%.1f tok/s, prefill included)\n",
                model->config().architecture.c_str(), tokens.size(), seconds,
                tokens.size() / seconds);
  } catch (const awqcore::Error& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  return 0;
}
