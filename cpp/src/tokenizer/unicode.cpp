// Lossy UTF-8 decoding, Unicode class lookup and NFC (UAX #15) over the
// generated tables.
#include "tokenizer/unicode.h"

#include <algorithm>
#include <array>

namespace awqcore::unicode {
namespace {

// Binary search of sorted ranges: the value of the range holding cp, else 0.
uint32_t RangeValue(const UnicodeRange* ranges, size_t size, char32_t cp) {
  const UnicodeRange* end = ranges + size;
  const UnicodeRange* it = std::upper_bound(
      ranges, end, cp, [](char32_t c, const UnicodeRange& r) { return c < r.first; });
  if (it == ranges) return 0;
  --it;
  return cp <= it->last ? it->value : 0;
}

// The Basic Multilingual Plane's flags, expanded once (64 KiB) so the split
// matchers' per-character lookups of common text cost one load.
const std::array<uint8_t, 0x10000>& BmpFlags() {
  static const std::array<uint8_t, 0x10000> table = [] {
    std::array<uint8_t, 0x10000> t{};
    for (size_t i = 0; i < kCategoryRangesSize; ++i) {
      const UnicodeRange& r = kCategoryRanges[i];
      for (uint32_t cp = r.first; cp <= r.last && cp < 0x10000; ++cp) t[cp] = r.value;
    }
    return t;
  }();
  return table;
}

uint32_t CombiningClass(char32_t cp) {
  if (cp < 0x300) return 0;  // no combining marks below U+0300
  return RangeValue(kCombiningClassRanges, kCombiningClassRangesSize, cp);
}

// Hangul syllables decompose and compose algorithmically (Unicode 3.12).
constexpr char32_t kSBase = 0xAC00, kLBase = 0x1100, kVBase = 0x1161, kTBase = 0x11A7;
constexpr uint32_t kLCount = 19, kVCount = 21, kTCount = 28, kNCount = kVCount * kTCount,
                   kSCount = kLCount * kNCount;

void Decompose(char32_t cp, std::u32string& out) {
  if (cp >= kSBase && cp < kSBase + kSCount) {
    const uint32_t s = cp - kSBase;
    out.push_back(kLBase + s / kNCount);
    out.push_back(kVBase + (s % kNCount) / kTCount);
    if (s % kTCount != 0) out.push_back(kTBase + s % kTCount);
    return;
  }
  const UnicodeTriple* end = kDecompositions + kDecompositionsSize;
  const UnicodeTriple* it = std::lower_bound(
      kDecompositions, end, cp, [](const UnicodeTriple& t, char32_t c) { return t.a < c; });
  if (it == end || it->a != cp) {
    out.push_back(cp);
    return;
  }
  Decompose(it->b, out);  // full decomposition: the parts may decompose further
  if (it->c != 0) Decompose(it->c, out);
}

// The primary composite of (first, second), or 0.
char32_t Compose(char32_t first, char32_t second) {
  if (first >= kLBase && first < kLBase + kLCount && second >= kVBase && second < kVBase + kVCount) {
    return kSBase + ((first - kLBase) * kVCount + (second - kVBase)) * kTCount;
  }
  if (first >= kSBase && first < kSBase + kSCount && (first - kSBase) % kTCount == 0 &&
      second > kTBase && second < kTBase + kTCount) {
    return first + (second - kTBase);
  }
  const UnicodeTriple* end = kCompositions + kCompositionsSize;
  const UnicodeTriple* it = std::lower_bound(
      kCompositions, end, std::make_pair(first, second),
      [](const UnicodeTriple& t, const std::pair<char32_t, char32_t>& key) {
        return t.a < key.first || (t.a == key.first && t.b < key.second);
      });
  return it != end && it->a == first && it->b == second ? it->c : 0;
}

}  // namespace

uint32_t Flags(char32_t cp) {
  if (cp < 0x10000) return BmpFlags()[cp];
  return RangeValue(kCategoryRanges, kCategoryRangesSize, cp);
}

char32_t DecodeOne(std::string_view text, size_t pos, size_t* length) {
  const auto byte = [&](size_t i) -> uint32_t {
    return i < text.size() ? static_cast<uint8_t>(text[i]) : 0x100;  // 0x100: past the end
  };
  const uint32_t b0 = byte(pos);
  if (b0 < 0x80) {
    *length = 1;
    return b0;
  }
  // The sequence length and the allowed range of the second byte (Unicode
  // Table 3-7: no overlong forms, no surrogates, nothing above U+10FFFF).
  size_t need;
  uint32_t lo = 0x80, hi = 0xBF, cp;
  if (b0 >= 0xC2 && b0 <= 0xDF) {
    need = 2, cp = b0 & 0x1F;
  } else if (b0 >= 0xE0 && b0 <= 0xEF) {
    need = 3, cp = b0 & 0x0F;
    if (b0 == 0xE0) lo = 0xA0;
    if (b0 == 0xED) hi = 0x9F;
  } else if (b0 >= 0xF0 && b0 <= 0xF4) {
    need = 4, cp = b0 & 0x07;
    if (b0 == 0xF0) lo = 0x90;
    if (b0 == 0xF4) hi = 0x8F;
  } else {
    *length = 1;
    return kReplacement;
  }
  for (size_t i = 1; i < need; ++i) {
    const uint32_t b = byte(pos + i);
    if (b < lo || b > hi) {
      *length = i;  // the maximal subpart: the bytes that could still have begun a character
      return kReplacement;
    }
    cp = (cp << 6) | (b & 0x3F);
    lo = 0x80, hi = 0xBF;
  }
  *length = need;
  return cp;
}

std::string ToValidUtf8(std::string_view text) {
  if (IsValidUtf8(text)) return std::string(text);
  std::string out;
  out.reserve(text.size() + 8);
  for (size_t pos = 0, length; pos < text.size(); pos += length) {
    const char32_t cp = DecodeOne(text, pos, &length);
    if (cp == kReplacement) {
      AppendUtf8(out, cp);
    } else {
      out.append(text.substr(pos, length));
    }
  }
  return out;
}

bool IsValidUtf8(std::string_view text) {
  for (size_t pos = 0, length; pos < text.size(); pos += length) {
    if (static_cast<uint8_t>(text[pos]) < 0x80) {
      length = 1;
      continue;
    }
    // A literal U+FFFD in the text is valid: only a replacement of fewer or
    // other bytes than EF BF BD marks an error.
    if (DecodeOne(text, pos, &length) == kReplacement && text.substr(pos, length) != "\xEF\xBF\xBD") {
      return false;
    }
  }
  return true;
}

void AppendUtf8(std::string& out, char32_t cp) {
  if (cp < 0x80) {
    out.push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out.push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out.push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out.push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

void DecodeValid(std::string_view text, std::vector<char32_t>* cps, std::vector<uint32_t>* offsets) {
  cps->clear();
  offsets->clear();
  for (size_t pos = 0, length; pos < text.size(); pos += length) {
    cps->push_back(DecodeOne(text, pos, &length));
    offsets->push_back(static_cast<uint32_t>(pos));
  }
  offsets->push_back(static_cast<uint32_t>(text.size()));
}

std::string Nfc(std::string_view text) {
  // Text below U+0300 has no combining marks and no decompositions that do
  // not recompose to themselves: NFC leaves it unchanged.
  bool simple = true;
  for (size_t pos = 0, length = 1; pos < text.size() && simple; pos += length) {
    length = 1;
    if (static_cast<uint8_t>(text[pos]) >= 0x80) simple = DecodeOne(text, pos, &length) < 0x300;
  }
  if (simple) return std::string(text);

  std::u32string chars;  // full canonical decomposition
  for (size_t pos = 0, length; pos < text.size(); pos += length) {
    Decompose(DecodeOne(text, pos, &length), chars);
  }
  // Canonical ordering: each run of non-starters sorted stably by class.
  for (size_t i = 0; i < chars.size();) {
    if (CombiningClass(chars[i]) == 0) {
      ++i;
      continue;
    }
    size_t j = i;
    while (j < chars.size() && CombiningClass(chars[j]) != 0) ++j;
    std::stable_sort(chars.begin() + i, chars.begin() + j, [](char32_t a, char32_t b) {
      return CombiningClass(a) < CombiningClass(b);
    });
    i = j;
  }
  // Canonical composition: a character joins the last starter unless a
  // character between them has class 0 or a class >= its own (it is blocked).
  std::u32string out;
  ptrdiff_t starter = -1;
  uint32_t last_class = 0;
  for (char32_t c : chars) {
    const uint32_t cc = CombiningClass(c);
    if (starter >= 0) {
      const bool adjacent = static_cast<ptrdiff_t>(out.size()) - 1 == starter;
      if (adjacent || (last_class != 0 && last_class < cc)) {
        if (const char32_t composite = Compose(out[starter], c)) {
          out[starter] = composite;
          continue;
        }
      }
    }
    if (cc == 0) starter = static_cast<ptrdiff_t>(out.size());
    out.push_back(c);
    last_class = cc;
  }
  std::string result;
  result.reserve(text.size());
  for (char32_t c : out) AppendUtf8(result, c);
  return result;
}

}  // namespace awqcore::unicode
