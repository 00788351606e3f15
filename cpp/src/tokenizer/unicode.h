// Unicode helpers of the tokenizer: lossy UTF-8 decoding, the \p{L} / \p{N} /
// \s classes of the split regexes, and NFC, all from the tables that
// tools/gen_unicode_tables.py generates into unicode_tables.cpp.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace awqcore::unicode {

struct UnicodeRange {  // code points first..last (inclusive) share `value`
  uint32_t first, last, value;
};
struct UnicodeTriple {
  uint32_t a, b, c;
};

extern const char kUnicodeVersion[];
extern const UnicodeRange kCategoryRanges[];  // value: kLetter | kNumber | kWhitespace
extern const size_t kCategoryRangesSize;
extern const UnicodeRange kCombiningClassRanges[];  // value: canonical combining class
extern const size_t kCombiningClassRangesSize;
extern const UnicodeTriple kDecompositions[];  // (code point, first, second or 0)
extern const size_t kDecompositionsSize;
extern const UnicodeTriple kCompositions[];  // (first, second, primary composite)
extern const size_t kCompositionsSize;

constexpr uint32_t kLetter = 1;      // general category L*
constexpr uint32_t kNumber = 2;      // general category N*
constexpr uint32_t kWhitespace = 4;  // the White_Space property (regex \s)
constexpr char32_t kReplacement = 0xFFFD;

uint32_t Flags(char32_t cp);
inline bool IsLetter(char32_t cp) { return Flags(cp) & kLetter; }
inline bool IsNumber(char32_t cp) { return Flags(cp) & kNumber; }
inline bool IsWhitespace(char32_t cp) { return Flags(cp) & kWhitespace; }

// The code point at text[pos] and its length in bytes; an invalid sequence
// reads as U+FFFD with the length of its maximal subpart (at least 1), the
// rule of Python's errors="replace" and Rust's from_utf8_lossy.
char32_t DecodeOne(std::string_view text, size_t pos, size_t* length);
// `text` with every invalid UTF-8 sequence replaced by U+FFFD (EF BF BD).
std::string ToValidUtf8(std::string_view text);
bool IsValidUtf8(std::string_view text);
void AppendUtf8(std::string& out, char32_t cp);
// Code points of valid UTF-8 `text`, with each one's byte offset; offsets has
// one more entry, text.size().
void DecodeValid(std::string_view text, std::vector<char32_t>* cps, std::vector<uint32_t>* offsets);

// Canonical composition (Unicode normalization form C) of valid UTF-8 text.
std::string Nfc(std::string_view text);

}  // namespace awqcore::unicode
