// awqcore::Tokenizer: text <-> token ids in C++, from the `tokenizers` JSON
// document that every .awqbin carries in its `tokenizer.json` metadata entry.
//
// Supported (anything else is a FormatError naming it, at construction):
// - model: BPE (merges by rank; byte_fallback; unk_token/fuse_unk; ignore_merges);
// - normalizers: NFC, Replace (string pattern), Prepend, Sequence;
// - pre-tokenizers: ByteLevel (GPT-2 split when use_regex), Split with the
//   GPT-2, Qwen2 or Llama 3 regex (behavior Isolated), Digits, Metaspace, Sequence;
// - post-processors: TemplateProcessing (single), ByteLevel, Sequence;
// - decoders: ByteLevel, Replace, ByteFallback, Fuse, Strip, Metaspace, Sequence;
// - added tokens (special or not) with lstrip/rstrip, matched leftmost-longest
//   in the raw text (normalized: false) or in the normalized text (normalized: true).
// The split regexes are hand-written matchers over code points; \p{L}, \p{N}
// and \s come from tables generated from Unicode data (tools/gen_unicode_tables.py).
//
// Invalid UTF-8: Encode takes the text as bytes and replaces each invalid
// sequence by U+FFFD first (as Python's str.decode(errors="replace") and
// Rust's from_utf8_lossy do), then tokenizes that text. Decode returns valid
// UTF-8 always: token bytes that do not form UTF-8 become U+FFFD as the
// decoder pipeline of `tokenizers` makes them (ByteLevel: one per maximal
// invalid subpart; ByteFallback: one per byte of an invalid byte-token run).
// Ids without a vocabulary entry (negative, or >= vocab_size) are skipped by
// Decode, as `tokenizers` skips them.
//
// Thread safety: a Tokenizer is immutable after construction and safe to share
// between threads. A StreamDecoder is one stream's state: not thread-safe.
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace awqcore {

class Model;

namespace tokenizer_detail {
struct Pipeline;  // the parsed JSON document (cpp/src/tokenizer/)
}

class Tokenizer {
 public:
  // From the model file's `tokenizer.json` metadata. FormatError when the file
  // has none, or its document is malformed or uses an unsupported component.
  static std::shared_ptr<const Tokenizer> FromModel(const Model& model);
  // From a `tokenizers` JSON document (the text of a tokenizer.json file).
  static std::shared_ptr<const Tokenizer> FromJson(std::string_view tokenizer_json);

  // add_special: the BOS/EOS of the post-processor's template, as
  // `tokenizers` encode(add_special_tokens=True) adds them.
  // parse_special: special-token text in `text` becomes its id; when false it is
  // tokenized as ordinary text (`tokenizers` encode_special_tokens=True).
  // Added tokens that are not special are always recognized, as in `tokenizers`.
  std::vector<int> Encode(std::string_view text, bool add_special = false,
                          bool parse_special = true) const;
  // skip_special: tokens marked special are left out.
  std::string Decode(const std::vector<int>& ids, bool skip_special = false) const;

  int vocab_size() const;                            // 1 + the largest id
  std::string TokenText(int id) const;               // the vocabulary entry; "" if none
  std::optional<int> TokenId(std::string_view piece) const;
  bool IsSpecial(int id) const;                      // an added token marked special

  ~Tokenizer();
  explicit Tokenizer(std::unique_ptr<tokenizer_detail::Pipeline> pipeline);

 private:
  std::unique_ptr<tokenizer_detail::Pipeline> pipeline_;
};

// Incremental decode of a token stream, for printing text as it is generated.
// Push returns the text that became complete (valid UTF-8, possibly ""); text
// that may still change (an incomplete UTF-8 sequence at the end) is held back.
// Flush returns what is held back (invalid trailing bytes as U+FFFD) and starts
// a new stream. The concatenation of everything returned equals
// Decode(all ids, skip_special), with one exception: where an incomplete
// character's byte-fallback tokens (<0xNN>) run straight into more byte tokens,
// the stream has already emitted the complete text before them and gives the
// dangling bytes as U+FFFD on their own, whereas Decode turns every byte of such
// a run into U+FFFD (as `tokenizers`' ByteFallback decoder does).
// Not thread-safe: one per stream.
class StreamDecoder {
 public:
  explicit StreamDecoder(std::shared_ptr<const Tokenizer> tokenizer, bool skip_special = true);
  std::string Push(int id);
  std::string Flush();

 private:
  std::string NewText() const;  // the text of ids_[read_offset_, end)
  std::shared_ptr<const Tokenizer> tokenizer_;
  bool skip_special_;
  std::vector<int> ids_;    // the ids since the last emitted text's start
  size_t read_offset_ = 0;  // ids_[0, read_offset_) decode to text already returned
};

}  // namespace awqcore
