// The parsed tokenizer.json pipeline that awqcore::Tokenizer runs: the
// normalizers, pre-tokenizers, BPE model, added tokens, post-processor template
// and decoders of a `tokenizers` document, in the order `tokenizers` applies them.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "tokenizer/bpe.h"
#include "tokenizer/split_patterns.h"

namespace awqcore::tokenizer_detail {

struct Normalizer {
  enum class Kind { kNfc, kReplace, kPrepend };
  Kind kind;
  std::string pattern;  // kReplace: the literal string replaced
  std::string content;  // kReplace: its replacement; kPrepend: the prefix
};

struct PreTokenizer {
  enum class Kind { kByteLevel, kSplit, kDigits, kMetaspace };
  enum class Prepend { kAlways, kFirst, kNever };
  Kind kind;
  bool add_prefix_space = false;   // kByteLevel
  bool use_regex = false;          // kByteLevel: split with the GPT-2 pattern first
  SplitPattern pattern = SplitPattern::kGpt2;  // kSplit (behavior Isolated, not inverted)
  bool individual_digits = false;  // kDigits
  std::string replacement;         // kMetaspace: the space's stand-in
  Prepend prepend = Prepend::kAlways;  // kMetaspace
  bool split = false;              // kMetaspace: split before each stand-in
};

struct Decoder {
  enum class Kind { kByteLevel, kReplace, kByteFallback, kFuse, kStrip, kMetaspace };
  Kind kind;
  std::string pattern, content;  // kReplace; kStrip and kMetaspace use content
  int start = 0, stop = 0;       // kStrip: characters cut from each end
  bool prepend = true;           // kMetaspace: a stand-in was prepended (scheme not "never")
};

struct AddedToken {
  int id;
  std::string content;
  bool special, normalized, lstrip, rstrip;
};

// Leftmost-longest matching of the added tokens' texts (a byte trie).
class TokenTrie {
 public:
  void Add(std::string_view text, int token_index);
  bool empty() const { return nodes_.size() <= 1; }
  // The longest token starting at text[pos]: its index (or -1) and byte length.
  int LongestAt(std::string_view text, size_t pos, size_t* length) const;

 private:
  struct Node {
    int token = -1;
    std::vector<std::pair<uint8_t, int>> children;  // sorted by byte
  };
  int Child(int node, uint8_t byte) const;
  std::vector<Node> nodes_ = std::vector<Node>(1);
  bool starts_[256] = {};  // bytes that begin some token: skips most positions at once
};

struct Pipeline {
  BpeModel model;
  std::vector<Normalizer> normalizers;
  std::vector<PreTokenizer> pre_tokenizers;
  bool byte_level = false;  // a ByteLevel pre-tokenizer maps bytes to its alphabet
  int byte_symbol_ids[256];  // byte_level: the id of each byte's stand-in, or -1
  bool has_decoder = false;
  std::vector<Decoder> decoders;
  std::vector<int> template_single;  // post-processor ids, kSequenceA where the text goes
  static constexpr int kSequenceA = -1;
  std::vector<AddedToken> added_tokens;
  std::vector<int> added_index_by_id;  // id -> index in added_tokens, or -1
  TokenTrie raw_added;                 // normalized: false tokens, matched in the input
  TokenTrie normalized_added;          // normalized: true tokens, matched after normalizing
  int vocab_size = 0;
};

}  // namespace awqcore::tokenizer_detail

namespace awqcore::tokenizer_detail {

// GPT-2's byte-level alphabet: the UTF-8 text of the printable stand-in of
// each byte (printable Latin-1 bytes stand for themselves, the other 68 take
// U+0100.. in byte order), and the inverse (-1 for other code points).
const std::string& ByteSymbol(uint8_t byte);
int ByteOfSymbol(char32_t symbol);

// The pipeline of a tokenizer.json document; FormatError naming the first
// malformed or unsupported part.
std::unique_ptr<Pipeline> LoadPipeline(std::string_view json);

}  // namespace awqcore::tokenizer_detail
