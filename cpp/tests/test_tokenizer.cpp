// The tokenizer's building blocks without Python: Unicode tables and NFC,
// lossy UTF-8, the split-pattern matchers, the JSON reader's errors, and a
// tiny byte-level BPE document end to end. Expected values come from Python's
// unicodedata and `regex` module (written out below), and from applying the
// document's merges by hand. Parity with `tokenizers` on real vocabularies is
// tests/test_tokenizer_cpp.py's job.
#include <string>
#include <vector>

#include "awqcore/awqcore.h"
#include "test_harness.h"
#include "tokenizer/split_patterns.h"
#include "tokenizer/unicode.h"

using awqcore::tokenizer_detail::SplitPattern;
using awqcore::tokenizer_detail::SplitWithPattern;

namespace {

std::vector<std::string> Split(SplitPattern pattern, const std::string& text) {
  std::vector<std::string> pieces;
  SplitWithPattern(pattern, text, &pieces);
  return pieces;
}

// A byte-level BPE over GPT-2's alphabet (bytes 0x21..0x7E stand for themselves,
// the space is U+0120 "Ġ"): the letters a, b, c, the space, and merges
// (a b) rank 0, (Ġ a) rank 1, (ab c) rank 2, (Ġa b) rank 3.
const char* kTinyByteLevel = R"({
  "version": "1.0",
  "added_tokens": [{"id": 9, "content": "<|end|>", "special": true, "normalized": false,
                    "lstrip": false, "rstrip": false, "single_word": false}],
  "normalizer": null,
  "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "use_regex": true},
  "post_processor": {"type": "TemplateProcessing",
                     "single": [{"Sequence": {"id": "A", "type_id": 0}},
                                {"SpecialToken": {"id": "<|end|>", "type_id": 0}}],
                     "special_tokens": {"<|end|>": {"id": "<|end|>", "ids": [9], "tokens": ["<|end|>"]}}},
  "decoder": {"type": "ByteLevel"},
  "model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "c": 2, "\u0120": 3, "ab": 4, "\u0120a": 5,
                                     "abc": 6, "\u0120ab": 7},
            "merges": ["a b", ["\u0120", "a"], "ab c", "\u0120a b"]}
})";

}  // namespace

TEST(unicode_classes_and_nfc_match_unicodedata) {
  using namespace awqcore::unicode;
  CHECK(IsLetter('a') && IsLetter(0x4E2D) && IsLetter(0x0627) && !IsLetter('1') && !IsLetter(0x1F600));
  CHECK(IsNumber('7') && IsNumber(0x0663) && IsNumber(0x2167) && IsNumber(0xBD) && !IsNumber('x'));
  CHECK(IsWhitespace(' ') && IsWhitespace(0x85) && IsWhitespace(0x3000) && !IsWhitespace(0x1C) &&
        !IsWhitespace(0x200B));
  CHECK(Nfc("e\xCC\x81") == "\xC3\xA9");                                // e + U+0301 -> é
  CHECK(Nfc("\xE2\x84\xAB") == "\xC3\x85");                             // U+212B -> U+00C5
  CHECK(Nfc("\xE1\x84\x80\xE1\x85\xA1\xE1\x86\xA8") == "\xEA\xB0\x81");  // jamo -> U+AC01
  CHECK(Nfc("\xEA\xB0\x80\xE1\x86\xA8") == "\xEA\xB0\x81");             // LV + T -> LVT
  CHECK(Nfc("q\xCC\x87\xCC\xA3") == "q\xCC\xA3\xCC\x87");               // reordered by class
  CHECK(Nfc("\xCD\x84") == "\xCC\x88\xCC\x81");                         // U+0344 excluded
}

TEST(invalid_utf8_becomes_one_replacement_per_maximal_subpart) {
  using awqcore::unicode::ToValidUtf8;
  const std::string r = "\xEF\xBF\xBD";
  CHECK(ToValidUtf8("ok") == "ok");
  CHECK(ToValidUtf8("\xE4\xB8x") == r + "x");              // a truncated 3-byte sequence: one
  CHECK(ToValidUtf8("\xC0\xAF") == r + r);                 // overlong: each byte
  CHECK(ToValidUtf8("\xED\xA0\x80") == r + r + r);         // a surrogate: each byte
  CHECK(ToValidUtf8("\xF0\x9F\x98") == r);                 // a truncated 4-byte sequence: one
  CHECK(ToValidUtf8(r + "\xFF") == r + r);                 // a literal U+FFFD stays
}

TEST(split_patterns_match_the_regexes) {
  const std::string text = "Hello  world's 12345!!\n\n  x";
  CHECK((Split(SplitPattern::kGpt2, text) ==
         std::vector<std::string>{"Hello", " ", " world", "'s", " 12345", "!!", "\n\n ", " x"}));
  CHECK((Split(SplitPattern::kLlama3, text) ==
         std::vector<std::string>{"Hello", " ", " world", "'s", " ", "123", "45", "!!\n\n", " ", " x"}));
  CHECK((Split(SplitPattern::kQwen2, text) == std::vector<std::string>{
             "Hello", " ", " world", "'s", " ", "1", "2", "3", "4", "5", "!!\n\n", " ", " x"}));
  const std::string other = "I'LL (ok)\tgo\r\n\r\n end  ";
  CHECK((Split(SplitPattern::kGpt2, other) == std::vector<std::string>{
             "I", "'", "LL", " (", "ok", ")", "\t", "go", "\r\n\r\n", " end", "  "}));
  CHECK((Split(SplitPattern::kLlama3, other) == std::vector<std::string>{
             "I", "'LL", " (", "ok", ")", "\tgo", "\r\n\r\n", " end", "  "}));
}

TEST(json_errors_name_the_place) {
  using awqcore::FormatError;
  using awqcore::Tokenizer;
  CHECK_THROWS(Tokenizer::FromJson("{\"model\": \"\xFF\"}"), FormatError, "invalid UTF-8");
  CHECK_THROWS(Tokenizer::FromJson("{\"model\": [1,]}"), FormatError, "byte 13");
  CHECK_THROWS(Tokenizer::FromJson(std::string(100000, '[')), FormatError, "nested deeper");
  CHECK_THROWS(Tokenizer::FromJson("{\"model\": {\"type\": \"Unigram\"}}"), FormatError,
               "tokenizer.json.model: unsupported model type \"Unigram\"");
  CHECK_THROWS(Tokenizer::FromJson("{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, "
                                   "\"merges\": [\"a\"]}}"),
               FormatError, "tokenizer.json.model.merges[0]: expected two tokens");
  CHECK_THROWS(Tokenizer::FromJson("{\"model\": {\"type\": \"BPE\", \"vocab\": {\"\\ud800\": 0}}}"),
               FormatError, "unpaired surrogate");
  // The message of a bad escape stays UTF-8 whatever byte follows the
  // backslash (the Python bindings could not raise it otherwise).
  CHECK_THROWS(Tokenizer::FromJson("{\"model\": \"\\q\"}"), FormatError, "unknown escape \\q");
  CHECK_THROWS(Tokenizer::FromJson("{\"model\": \"\\\x9F\"}"), FormatError,
               "unknown escape \\ followed by byte 0x9f");
}

TEST(tiny_byte_level_document_end_to_end) {
  const auto t = awqcore::Tokenizer::FromJson(kTinyByteLevel);
  CHECK(t->vocab_size() == 10);
  // "abc": a b c -> ab c (rank 0) -> abc (rank 2). " ab": Ġ a b -> ab first
  // (rank 0 beats Ġa's rank 1), then Ġ ab has no merge.
  CHECK((t->Encode("abc") == std::vector<int>{6}));
  CHECK((t->Encode(" ab") == std::vector<int>{3, 4}));
  CHECK((t->Encode(" a") == std::vector<int>{5}));
  CHECK((t->Encode("abc<|end|>a", true) == std::vector<int>{6, 9, 0, 9}));
  CHECK((t->Encode("<|end|>", false, false).size() == 0));  // no tokens for < | e n d | >
  CHECK(t->Decode({6, 9, 3, 4}) == "abc<|end|> ab");
  CHECK(t->Decode({6, 9, 3, 4}, true) == "abc ab");
  CHECK(t->Decode({6, -1, 100, 0}) == "abca");  // ids without an entry are skipped
  CHECK(t->TokenText(5) == "\xC4\xA0" "a" && t->TokenId("<|end|>") == 9 && !t->TokenId("zz"));
  awqcore::StreamDecoder stream(t, false);
  CHECK(stream.Push(6) == "abc" && stream.Push(9) == "<|end|>" && stream.Push(5) == " a");
  CHECK(stream.Flush().empty());
}

AWQCORE_TEST_MAIN()
