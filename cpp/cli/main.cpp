// awqcore-cli: the native command line program. Runs a .awqbin model from
// text with no Python: the options of `awqcore run` (python/awqcore/cli.py).
//
//   awqcore-cli -m MODEL.awqbin -p "text" [-n N]     complete the text, streaming
//   awqcore-cli -m MODEL.awqbin -p "question" --chat  one chat turn
//   awqcore-cli -m MODEL.awqbin --chat                interactive multi-turn chat
//   awqcore-cli -m MODEL.awqbin --tokenize -f FILE    the ids of FILE's text
//
// Generated text goes to stdout as it is produced; speed and the stop reason
// go to stderr. Usage errors exit 2, runtime errors 1.
#include <awqcore/awqcore.h>
#include <awqcore/tokenizer.h>

#include <signal.h>

#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <fstream>
#include <iostream>
#include <iterator>
#include <new>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

namespace {

constexpr int kExitUsage = 2;

const char kUsage[] =
    "usage: awqcore-cli -m MODEL.awqbin [-p PROMPT | -f FILE] [options]\n"
    "  -m, --model FILE          the .awqbin model\n"
    "  -p, --prompt TEXT         the prompt (with --chat: the user's message)\n"
    "  -f, --file FILE           read the prompt (or --tokenize's text) from FILE\n"
    "  -n, --n-predict N         max new tokens (default 64)\n"
    "      --chat                format the prompt with the model's chat template; without\n"
    "                            -p/-f an interactive multi-turn chat (Ctrl-C stops an\n"
    "                            answer; /reset forgets the conversation; Ctrl-D quits)\n"
    "      --system TEXT         the chat's system message\n"
    "      --temperature T       0 = greedy (default)\n"
    "      --top-k K             0 = off (default)\n"
    "      --top-p P             1 = off (default)\n"
    "      --repetition-penalty R  1 = off (default)\n"
    "      --seed S              sampling seed (default: random)\n"
    "      --threads N           worker threads (default: all cores)\n"
    "      --max-seq-len N       KV-cache capacity in tokens (default 2048)\n"
    "      --device cpu|cuda     where the forward pass runs (default cpu)\n"
    "      --tokenize            print the ids of the text (no special tokens added), one line\n"
    "      --version             print the version and exit\n";

struct Options {
  std::string model;
  std::optional<std::string> prompt;
  std::optional<std::string> file;
  std::optional<std::string> system;
  int n_predict = 64;
  bool chat = false;
  bool tokenize = false;
  awqcore::SamplingOptions sampling;
  int threads = 0;
  int max_seq_len = 2048;
  awqcore::Device device = awqcore::Device::kCpu;
};

class UsageError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

long long ParseInteger(const std::string& flag, const std::string& text, long long low) {
  char* end = nullptr;
  errno = 0;
  const long long value = std::strtoll(text.c_str(), &end, 10);
  if (text.empty() || *end != '\0' || errno == ERANGE || value < low || value > 1'000'000'000) {
    throw UsageError(flag + ": expected an integer >= " + std::to_string(low) + " (got '" + text + "')");
  }
  return value;
}

float ParseFloat(const std::string& flag, const std::string& text) {
  char* end = nullptr;
  const float value = std::strtof(text.c_str(), &end);
  if (text.empty() || *end != '\0') throw UsageError(flag + ": expected a number (got '" + text + "')");
  return value;
}

Options ParseArguments(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) throw UsageError(arg + " needs a value");
      return argv[++i];
    };
    if (arg == "-m" || arg == "--model") o.model = value();
    else if (arg == "-p" || arg == "--prompt") o.prompt = value();
    else if (arg == "-f" || arg == "--file") o.file = value();
    else if (arg == "--system") o.system = value();
    else if (arg == "-n" || arg == "--n-predict") o.n_predict = static_cast<int>(ParseInteger(arg, value(), 0));
    else if (arg == "--chat") o.chat = true;
    else if (arg == "--tokenize") o.tokenize = true;
    else if (arg == "--temperature") o.sampling.temperature = ParseFloat(arg, value());
    else if (arg == "--top-k") o.sampling.top_k = static_cast<int>(ParseInteger(arg, value(), 0));
    else if (arg == "--top-p") o.sampling.top_p = ParseFloat(arg, value());
    else if (arg == "--repetition-penalty") o.sampling.repetition_penalty = ParseFloat(arg, value());
    else if (arg == "--seed") o.sampling.seed = static_cast<uint64_t>(ParseInteger(arg, value(), 0));
    else if (arg == "--threads") o.threads = static_cast<int>(ParseInteger(arg, value(), 1));
    else if (arg == "--max-seq-len") o.max_seq_len = static_cast<int>(ParseInteger(arg, value(), 1));
    else if (arg == "--device") {
      const std::string device = value();
      if (device != "cpu" && device != "cuda") throw UsageError("--device: expected cpu or cuda (got '" + device + "')");
      o.device = device == "cuda" ? awqcore::Device::kCuda : awqcore::Device::kCpu;
    } else {
      throw UsageError("unknown argument '" + arg + "'");
    }
  }
  if (o.model.empty()) throw UsageError("-m MODEL.awqbin is required");
  if (o.prompt && o.file) throw UsageError("give -p or -f, not both");
  if (o.tokenize && !o.prompt && !o.file) throw UsageError("--tokenize needs -f FILE or -p TEXT");
  if (!o.chat && !o.tokenize && !o.prompt && !o.file) {
    throw UsageError("give a prompt (-p TEXT or -f FILE), or --chat for an interactive chat");
  }
  if (o.system && !o.chat) throw UsageError("--system needs --chat");
  return o;
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw awqcore::Error("cannot read '" + path + "'");
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

// Ctrl-C during an answer stops that answer (the token callback sees the
// flag); at the interactive prompt it ends the program (the read fails).
std::atomic<bool> g_interrupted{false};
extern "C" void OnInterrupt(int) { g_interrupted.store(true); }

void InstallInterruptHandler() {
  struct sigaction action = {};
  action.sa_handler = OnInterrupt;
  sigemptyset(&action.sa_mask);
  action.sa_flags = 0;  // no SA_RESTART: a blocked read returns, so Ctrl-C at the prompt quits
  sigaction(SIGINT, &action, nullptr);
}

class Runner {
 public:
  explicit Runner(const Options& options)
      : options_(options),
        model_(awqcore::Model::Load(options.model)),
        tokenizer_(awqcore::Tokenizer::FromModel(*model_)) {}

  int Tokenize() {
    const std::string text = options_.file ? ReadFile(*options_.file) : *options_.prompt;
    const std::vector<int> ids = tokenizer_->Encode(text, /*add_special=*/false);
    std::string line;
    for (size_t i = 0; i < ids.size(); ++i) line += (i ? " " : "") + std::to_string(ids[i]);
    std::printf("%s\n", line.c_str());
    return 0;
  }

  int Complete() {
    const std::string text = options_.file ? ReadFile(*options_.file) : *options_.prompt;
    std::vector<int> ids;
    if (options_.chat) {
      std::vector<awqcore::ChatMessage> conversation;
      if (options_.system) conversation.push_back({"system", *options_.system});
      conversation.push_back({"user", text});
      ids = ChatIds(conversation);
    } else {
      ids = tokenizer_->Encode(text, /*add_special=*/true);  // as `awqcore run` encodes
    }
    Answer(ids);
    return 0;
  }

  int Chat() {
    Format();  // fails here, before the first question, when the file has no chat format
    std::vector<awqcore::ChatMessage> history;
    if (options_.system) history.push_back({"system", *options_.system});
    InstallInterruptHandler();
    std::fprintf(stderr, "chat with %s: Ctrl-C stops an answer, /reset forgets, Ctrl-D quits\n",
                 model_->config().name.c_str());
    for (;;) {
      std::fprintf(stderr, "> ");
      std::string line;
      g_interrupted.store(false);
      if (!std::getline(std::cin, line)) break;
      if (line == "/reset") {
        history.resize(options_.system ? 1 : 0);
        continue;
      }
      if (line.empty()) continue;
      history.push_back({"user", line});
      try {
        const std::string answer = Answer(ChatIds(history));
        history.push_back({"assistant", answer});
      } catch (const awqcore::Error& e) {
        // The conversation may have outgrown the cache: say so, keep the program.
        std::fprintf(stderr, "awqcore-cli: error: %s (/reset starts over)\n", e.what());
        history.pop_back();
      }
    }
    std::fprintf(stderr, "\n");
    return 0;
  }

 private:
  const awqcore::ChatFormat& Format() {
    if (!chat_format_) chat_format_ = awqcore::ChatFormat::FromModel(*model_);
    return *chat_format_;
  }

  std::vector<int> ChatIds(const std::vector<awqcore::ChatMessage>& conversation) {
    const std::string text = Format().Apply(conversation);
    // The format wrote the special tokens (BOS included) as text.
    return tokenizer_->Encode(text, /*add_special=*/false, /*parse_special=*/true);
  }

  awqcore::Session& SessionFor() {
    if (!session_) {
      session_ = std::make_unique<awqcore::Session>(model_, options_.max_seq_len, options_.threads,
                                                    options_.device);
    }
    return *session_;
  }

  // Streams the answer to `ids` to stdout; returns its text.
  std::string Answer(const std::vector<int>& ids) {
    if (ids.empty()) throw awqcore::InvalidArgument("the prompt encodes to no tokens");
    awqcore::Session& session = SessionFor();
    awqcore::GenerateOptions g;
    g.max_new_tokens = options_.n_predict;
    g.sampling = options_.sampling;
    awqcore::StreamDecoder decoder(tokenizer_);
    std::string answer;
    const std::vector<int> tokens = session.Generate(ids, g, [&](int token) {
      const std::string piece = decoder.Push(token);
      std::fwrite(piece.data(), 1, piece.size(), stdout);
      std::fflush(stdout);
      answer += piece;
      return !g_interrupted.load();
    });
    const std::string rest = decoder.Flush();
    answer += rest;
    std::fwrite(rest.data(), 1, rest.size(), stdout);
    std::fputc('\n', stdout);
    std::fflush(stdout);
    const awqcore::Session::Timing t = session.last_timing();
    const size_t decoded = tokens.empty() ? 0 : tokens.size() - 1;
    char decode_rate[64] = "n/a";
    if (decoded > 0 && t.decode_seconds > 0) {
      std::snprintf(decode_rate, sizeof decode_rate, "%.1f tok/s", decoded / t.decode_seconds);
    }
    std::fprintf(stderr, "prefill: %zu tokens in %.3f s (%.1f tok/s); decode: %zu tokens, %s\n",
                 ids.size(), t.prefill_seconds, ids.size() / t.prefill_seconds, decoded, decode_rate);
    const awqcore::StopReason reason = session.last_stop_reasons().at(0);
    std::string why = awqcore::StopReasonName(reason);
    if (reason == awqcore::StopReason::kContextFull) {
      why += " (prompt + output reached --max-seq-len " + std::to_string(options_.max_seq_len) + ")";
    } else if (reason == awqcore::StopReason::kCallback) {
      why = "interrupted (Ctrl-C)";
    }
    std::fprintf(stderr, "stopped: %s\n", why.c_str());
    return answer;
  }

  const Options& options_;
  std::shared_ptr<const awqcore::Model> model_;
  std::shared_ptr<const awqcore::Tokenizer> tokenizer_;
  std::optional<awqcore::ChatFormat> chat_format_;
  std::unique_ptr<awqcore::Session> session_;
};

}  // namespace

int main(int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "-h" || arg == "--help") {
      std::fputs(kUsage, stdout);
      return 0;
    }
    if (arg == "--version") {
      std::printf("awqcore-cli %s\n", awqcore::Version());
      return 0;
    }
  }
  Options options;
  try {
    options = ParseArguments(argc, argv);
  } catch (const UsageError& e) {
    std::fprintf(stderr, "%sawqcore-cli: error: %s\n", kUsage, e.what());
    return kExitUsage;
  }
  try {
    Runner runner(options);
    if (options.tokenize) return runner.Tokenize();
    if (options.chat && !options.prompt && !options.file) return runner.Chat();
    return runner.Complete();
  } catch (const awqcore::Error& e) {
    std::fprintf(stderr, "awqcore-cli: error: %s\n", e.what());
    return 1;
  } catch (const std::bad_alloc&) {
    std::fprintf(stderr, "awqcore-cli: error: out of memory\n");
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "awqcore-cli: error: %s\n", e.what());
    return 1;
  }
}
