// Hand-written matchers of the split regexes (see split_patterns.h).
#include "tokenizer/split_patterns.h"

#include "tokenizer/unicode.h"

namespace awqcore::tokenizer_detail {
namespace {

constexpr std::string_view kGpt2Regex =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";
constexpr std::string_view kLlama3Regex =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
constexpr std::string_view kQwen2Regex =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

// The text as code points with their classes, and the matchers over it.
class Matcher {
 public:
  Matcher(SplitPattern pattern, std::string_view text) : pattern_(pattern), text_(text) {
    unicode::DecodeValid(text, &cps_, &offsets_);
    flags_.reserve(cps_.size());
    for (char32_t c : cps_) flags_.push_back(unicode::Flags(c));
  }

  void Split(std::vector<std::string>* pieces) const {
    const size_t n = cps_.size();
    for (size_t pos = 0; pos < n;) {
      const size_t end = MatchAt(pos);
      pieces->emplace_back(text_.substr(offsets_[pos], offsets_[end] - offsets_[pos]));
      pos = end;
    }
  }

 private:
  bool Letter(size_t i) const { return i < cps_.size() && (flags_[i] & unicode::kLetter); }
  bool Number(size_t i) const { return i < cps_.size() && (flags_[i] & unicode::kNumber); }
  bool Space(size_t i) const { return i < cps_.size() && (flags_[i] & unicode::kWhitespace); }
  // [^\s\p{L}\p{N}]
  bool Other(size_t i) const { return i < cps_.size() && flags_[i] == 0; }
  bool Newline(size_t i) const { return i < cps_.size() && (cps_[i] == '\r' || cps_[i] == '\n'); }
  bool Is(size_t i, char32_t c) const { return i < cps_.size() && cps_[i] == c; }

  // (?i) for the contraction letters: ASCII case folding, plus U+017F (long s),
  // which case-folds to 's' and so matches under Unicode case-insensitivity.
  bool Letter(size_t i, char lower, bool ignore_case) const {
    if (i >= cps_.size()) return false;
    const char32_t c = cps_[i];
    if (c == static_cast<char32_t>(lower)) return true;
    if (!ignore_case) return false;
    return c == static_cast<char32_t>(lower - 'a' + 'A') || (lower == 's' && c == 0x17F);
  }

  // 's|'t|'re|'ve|'m|'ll|'d: the end of the contraction at pos, or 0.
  size_t Contraction(size_t pos, bool ignore_case) const {
    if (!Is(pos, '\'')) return 0;
    for (std::string_view suffix : {"s", "t", "re", "ve", "m", "ll", "d"}) {
      size_t i = pos + 1;
      bool ok = true;
      for (char c : suffix) ok = ok && Letter(i++, c, ignore_case);
      if (ok) return i;
    }
    return 0;
  }

  size_t RunOf(size_t pos, bool (Matcher::*in_class)(size_t) const) const {
    while ((this->*in_class)(pos)) ++pos;
    return pos;
  }

  size_t MatchAt(size_t pos) const {
    const bool gpt2 = pattern_ == SplitPattern::kGpt2;
    if (const size_t end = Contraction(pos, !gpt2)) return end;
    if (gpt2) {
      // ` ?\p{L}+`, ` ?\p{N}+`, ` ?[^\s\p{L}\p{N}]+`
      const size_t body = Is(pos, ' ') ? pos + 1 : pos;
      if (Letter(body)) return RunOf(body, &Matcher::Letter);
      if (Number(body)) return RunOf(body, &Matcher::Number);
      if (Other(body)) return RunOf(body, &Matcher::Other);
    } else {
      // `[^\r\n\p{L}\p{N}]?\p{L}+`: the optional character may be a space,
      // a tab or punctuation, anything but a newline, letter or digit.
      if (Letter(pos)) return RunOf(pos, &Matcher::Letter);
      if (!Newline(pos) && !Number(pos) && pos < cps_.size() && Letter(pos + 1)) {
        return RunOf(pos + 1, &Matcher::Letter);
      }
      // `\p{N}{1,3}` or `\p{N}`
      if (Number(pos)) {
        const size_t limit = pattern_ == SplitPattern::kLlama3 ? 3 : 1;
        size_t end = pos;
        while (end - pos < limit && Number(end)) ++end;
        return end;
      }
      // ` ?[^\s\p{L}\p{N}]+[\r\n]*`
      const size_t body = Is(pos, ' ') ? pos + 1 : pos;
      if (Other(body)) return RunOf(RunOf(body, &Matcher::Other), &Matcher::Newline);
    }
    const size_t space_end = RunOf(pos, &Matcher::Space);
    if (!gpt2 && space_end > pos) {
      // `\s*[\r\n]+`: \s* backs off to the last newline of the whitespace run,
      // then [\r\n]+ takes it (the character after it is no newline).
      for (size_t i = space_end; i > pos; --i) {
        if (Newline(i - 1)) return i;
      }
    }
    if (space_end > pos) {
      // `\s+(?!\S)`: the whole run at the end of the text, else the run less
      // its last character (which then starts the next piece), else `\s+`.
      if (space_end == cps_.size() || space_end - pos == 1) return space_end;
      return space_end - 1;
    }
    return pos + 1;  // unreachable: every character is \s, \p{L}, \p{N} or neither
  }

  SplitPattern pattern_;
  std::string_view text_;
  std::vector<char32_t> cps_;
  std::vector<uint32_t> offsets_;  // byte offset of each code point, plus the end
  std::vector<uint8_t> flags_;
};

}  // namespace

std::optional<SplitPattern> RecognizeSplitRegex(std::string_view regex) {
  if (regex == kGpt2Regex) return SplitPattern::kGpt2;
  if (regex == kLlama3Regex) return SplitPattern::kLlama3;
  if (regex == kQwen2Regex) return SplitPattern::kQwen2;
  return std::nullopt;
}

void SplitWithPattern(SplitPattern pattern, std::string_view text, std::vector<std::string>* pieces) {
  Matcher(pattern, text).Split(pieces);
}

}  // namespace awqcore::tokenizer_detail
