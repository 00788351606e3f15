// libFuzzer target: the tokenizer.json reader and the tokenizer it builds.
// The input is a tokenizers JSON document, optionally followed by a NUL byte
// and a text. The document either loads or throws awqcore::Error with a
// UTF-8 message; a loaded tokenizer encodes the text (or a fixed one) and
// decodes ids, with or without special tokens, and must keep its contract:
// every id it encodes is in [0, vocab_size), and Decode and StreamDecoder
// return valid UTF-8 for any ids, in range or not. Crashes, hangs, leaks and
// undefined behaviour are found by the sanitizers the target is built with.
//
// Seeds: cpp/fuzz/tokenizer_corpus (small byte-level BPE and SentencePiece-
// style documents written with `tokenizers`, see README.md there).
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <string_view>
#include <vector>

#include "awqcore/awqcore.h"
#include "text_checks.h"

namespace {

// Invariant failures abort, which libFuzzer reports as a crash with the input;
// `detail` is printed with bytes outside printable ASCII escaped.
void Require(bool condition, const char* what, std::string_view detail = {}) {
  if (condition) return;
  std::fprintf(stderr, "fuzz_tokenizer: %s: ", what);
  for (unsigned char c : detail) {
    if (c >= 0x20 && c < 0x7f) {
      std::fputc(c, stderr);
    } else {
      std::fprintf(stderr, "\\x%02x", c);
    }
  }
  std::fputc('\n', stderr);
  std::abort();
}

void CheckEncoding(const awqcore::Tokenizer& tokenizer, const std::vector<int>& ids) {
  for (int id : ids) Require(id >= 0 && id < tokenizer.vocab_size(), "encoded id out of range");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view input(reinterpret_cast<const char*>(data), size);
  const size_t split = input.find('\0');
  const std::string_view document = input.substr(0, split);
  const std::string_view text = split == std::string_view::npos
                                    ? std::string_view("Hello, world! 123 caf\xc3\xa9 <s>\n\tx")
                                    : input.substr(split + 1);
  std::shared_ptr<const awqcore::Tokenizer> tokenizer;
  try {
    tokenizer = awqcore::Tokenizer::FromJson(document);
  } catch (const awqcore::Error& e) {
    Require(awqcore::IsValidUtf8(e.what()), "error message is not UTF-8", e.what());
    return 0;
  }
  const std::vector<int> with_special = tokenizer->Encode(text, true, true);
  const std::vector<int> plain = tokenizer->Encode(text, false, false);
  CheckEncoding(*tokenizer, with_special);
  CheckEncoding(*tokenizer, plain);
  Require(awqcore::IsValidUtf8(tokenizer->Decode(with_special)), "Decode is not UTF-8");
  Require(awqcore::IsValidUtf8(tokenizer->Decode(plain, true)), "Decode is not UTF-8");

  // Arbitrary ids from the text's bytes, out-of-range ones included.
  std::vector<int> ids;
  for (size_t i = 0; i + 2 <= text.size() && ids.size() < 256; i += 2) {
    ids.push_back(static_cast<int16_t>(static_cast<uint8_t>(text[i]) |
                                       static_cast<uint8_t>(text[i + 1]) << 8));
  }
  Require(awqcore::IsValidUtf8(tokenizer->Decode(ids)), "Decode of arbitrary ids is not UTF-8");
  awqcore::StreamDecoder stream(tokenizer);
  std::string streamed;
  for (int id : ids) streamed += stream.Push(id);
  streamed += stream.Flush();
  Require(awqcore::IsValidUtf8(streamed), "StreamDecoder output is not UTF-8");
  return 0;
}
