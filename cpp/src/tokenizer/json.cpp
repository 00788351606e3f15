// Strict JSON syntax check and lazy reads (see json.h).
#include "tokenizer/json.h"

#include <cmath>
#include <cstdlib>

#include "awqcore/awqcore.h"
#include "tokenizer/unicode.h"

namespace awqcore::json {
namespace {

bool IsSpace(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; }

// A backslash escape as a message shows it: printable ASCII as itself, any
// other byte as its hex value, so that the message stays valid UTF-8.
std::string EscapeForMessage(char c) {
  const unsigned char byte = static_cast<unsigned char>(c);
  if (byte >= 0x20 && byte < 0x7f) return std::string("\\") + c;
  static const char kHex[] = "0123456789abcdef";
  return std::string("\\ followed by byte 0x") + kHex[byte >> 4] + kHex[byte & 15];
}

// A cursor over well-formed or not-yet-checked text; Skip* return the offset
// just past the value, throwing FormatError with the byte offset if malformed.
class Scanner {
 public:
  Scanner(std::string_view text, const std::string& name) : text_(text), name_(name) {}

  [[noreturn]] void Fail(size_t pos, const std::string& what) const {
    throw FormatError(name_ + ": invalid JSON at byte " + std::to_string(pos) + ": " + what);
  }

  size_t SkipSpace(size_t pos) const {
    while (pos < text_.size() && IsSpace(text_[pos])) ++pos;
    return pos;
  }

  size_t SkipValue(size_t pos, int depth) const {
    if (depth > kMaxDepth) Fail(pos, "nested deeper than " + std::to_string(kMaxDepth));
    if (pos >= text_.size()) Fail(pos, "unexpected end, expected a value");
    switch (text_[pos]) {
      case '{': return SkipContainer(pos, depth, '}', true);
      case '[': return SkipContainer(pos, depth, ']', false);
      case '"': return SkipString(pos);
      case 't': return SkipLiteral(pos, "true");
      case 'f': return SkipLiteral(pos, "false");
      case 'n': return SkipLiteral(pos, "null");
      default: return SkipNumber(pos);
    }
  }

  size_t SkipString(size_t pos) const {
    ++pos;  // the opening quote
    while (true) {
      if (pos >= text_.size()) Fail(pos, "unterminated string");
      const unsigned char c = static_cast<unsigned char>(text_[pos]);
      if (c == '"') return pos + 1;
      if (c < 0x20) Fail(pos, "control character in a string");
      if (c == '\\') {
        if (pos + 1 >= text_.size()) Fail(pos, "unterminated escape");
        const char e = text_[pos + 1];
        if (e == 'u') {
          for (size_t i = 2; i < 6; ++i) {
            if (pos + i >= text_.size() || !std::isxdigit(static_cast<unsigned char>(text_[pos + i]))) {
              Fail(pos, "\\u needs four hex digits");
            }
          }
          pos += 6;
        } else if (std::string_view("\"\\/bfnrt").find(e) != std::string_view::npos) {
          pos += 2;
        } else {
          Fail(pos, "unknown escape " + EscapeForMessage(e));
        }
      } else if (c < 0x80) {
        ++pos;
      } else {
        size_t length;
        if (unicode::DecodeOne(text_, pos, &length) == unicode::kReplacement &&
            text_.substr(pos, length) != "\xEF\xBF\xBD") {
          Fail(pos, "invalid UTF-8 in a string");
        }
        pos += length;
      }
    }
  }

 private:
  size_t SkipContainer(size_t pos, int depth, char close, bool object) const {
    pos = SkipSpace(pos + 1);
    if (pos < text_.size() && text_[pos] == close) return pos + 1;
    while (true) {
      if (object) {
        if (pos >= text_.size() || text_[pos] != '"') Fail(pos, "expected a member name");
        pos = SkipSpace(SkipString(pos));
        if (pos >= text_.size() || text_[pos] != ':') Fail(pos, "expected ':'");
        pos = SkipSpace(pos + 1);
      }
      pos = SkipSpace(SkipValue(pos, depth + 1));
      if (pos >= text_.size()) Fail(pos, std::string("unexpected end, expected ',' or '") + close + "'");
      if (text_[pos] == close) return pos + 1;
      if (text_[pos] != ',') Fail(pos, std::string("expected ',' or '") + close + "'");
      pos = SkipSpace(pos + 1);
    }
  }

  size_t SkipLiteral(size_t pos, std::string_view word) const {
    if (text_.substr(pos, word.size()) != word) Fail(pos, "unknown literal");
    return pos + word.size();
  }

  size_t SkipNumber(size_t pos) const {
    const size_t start = pos;
    const auto digits = [&] {
      const size_t from = pos;
      while (pos < text_.size() && text_[pos] >= '0' && text_[pos] <= '9') ++pos;
      return pos - from;
    };
    if (pos < text_.size() && text_[pos] == '-') ++pos;
    if (pos < text_.size() && text_[pos] == '0') {
      ++pos;
    } else if (digits() == 0) {
      Fail(start, "expected a value");
    }
    if (pos < text_.size() && text_[pos] == '.') {
      ++pos;
      if (digits() == 0) Fail(pos, "expected digits after '.'");
    }
    if (pos < text_.size() && (text_[pos] == 'e' || text_[pos] == 'E')) {
      ++pos;
      if (pos < text_.size() && (text_[pos] == '+' || text_[pos] == '-')) ++pos;
      if (digits() == 0) Fail(pos, "expected exponent digits");
    }
    return pos;
  }

  std::string_view text_;
  const std::string& name_;
};

// The end of the value at text[pos] in a checked document: only brackets and
// string ends matter, so this is much cheaper than the checking scan.
size_t SkipChecked(std::string_view text, size_t pos) {
  int depth = 0;
  do {
    const char c = text[pos++];
    if (c == '"') {
      while (text[pos] != '"') pos += text[pos] == '\\' ? 2 : 1;
      ++pos;
    } else if (c == '[' || c == '{') {
      ++depth;
    } else if (c == ']' || c == '}') {
      --depth;
    } else if (depth == 0) {  // a number or literal: up to the next delimiter
      while (pos < text.size() && text[pos] != ',' && text[pos] != ']' && text[pos] != '}' &&
             !IsSpace(text[pos])) {
        ++pos;
      }
    }
  } while (depth > 0);
  return pos;
}

size_t SkipSpace(std::string_view text, size_t pos) {
  while (pos < text.size() && IsSpace(text[pos])) ++pos;
  return pos;
}

uint32_t Hex4(std::string_view text, size_t pos) {
  return static_cast<uint32_t>(std::strtoul(std::string(text.substr(pos, 4)).c_str(), nullptr, 16));
}

// The decoded contents of the checked string literal at text[0].
std::string DecodeString(std::string_view text, const JsonView& where) {
  std::string out;
  out.reserve(text.size());
  for (size_t pos = 1; text[pos] != '"';) {
    const char c = text[pos];
    if (c != '\\') {
      out.push_back(c);
      ++pos;
      continue;
    }
    const char e = text[pos + 1];
    pos += 2;
    switch (e) {
      case 'b': out.push_back('\b'); break;
      case 'f': out.push_back('\f'); break;
      case 'n': out.push_back('\n'); break;
      case 'r': out.push_back('\r'); break;
      case 't': out.push_back('\t'); break;
      case 'u': {
        uint32_t cp = Hex4(text, pos);
        pos += 4;
        if (cp >= 0xD800 && cp < 0xDC00) {  // a high surrogate needs its low half
          if (text.substr(pos, 2) != "\\u") where.Fail("unpaired surrogate \\u escape");
          const uint32_t low = Hex4(text, pos + 2);
          if (low < 0xDC00 || low > 0xDFFF) where.Fail("unpaired surrogate \\u escape");
          cp = 0x10000 + ((cp - 0xD800) << 10) + (low - 0xDC00);
          pos += 6;
        } else if (cp >= 0xDC00 && cp <= 0xDFFF) {
          where.Fail("unpaired surrogate \\u escape");
        }
        unicode::AppendUtf8(out, cp);
        break;
      }
      default: out.push_back(e); break;  // " \ /
    }
  }
  return out;
}

const char* TypeName(JsonView::Type type) {
  switch (type) {
    case JsonView::Type::kNull: return "null";
    case JsonView::Type::kBool: return "a boolean";
    case JsonView::Type::kNumber: return "a number";
    case JsonView::Type::kString: return "a string";
    case JsonView::Type::kArray: return "an array";
    case JsonView::Type::kObject: return "an object";
  }
  return "?";
}

}  // namespace

JsonView Parse(std::string_view text, const std::string& name) {
  const Scanner scanner(text, name);
  const size_t start = scanner.SkipSpace(0);
  const size_t end = scanner.SkipValue(start, 0);
  const size_t rest = scanner.SkipSpace(end);  // the first byte after the document's value
  if (rest != text.size()) scanner.Fail(rest, "text after the document");
  return JsonView(text.substr(start, end - start), name);
}

JsonView::Type JsonView::type() const {
  switch (text_[0]) {
    case '{': return Type::kObject;
    case '[': return Type::kArray;
    case '"': return Type::kString;
    case 't':
    case 'f': return Type::kBool;
    case 'n': return Type::kNull;
    default: return Type::kNumber;
  }
}

void JsonView::Fail(const std::string& what) const { throw FormatError(path() + ": " + what); }

std::string JsonView::AsString() const {
  if (type() != Type::kString) Fail(std::string("expected a string, got ") + TypeName(type()));
  return DecodeString(text_, *this);
}

bool JsonView::AsBool() const {
  if (type() != Type::kBool) Fail(std::string("expected a boolean, got ") + TypeName(type()));
  return text_[0] == 't';
}

double JsonView::AsNumber() const {
  if (type() != Type::kNumber) Fail(std::string("expected a number, got ") + TypeName(type()));
  return std::strtod(std::string(text_).c_str(), nullptr);
}

long long JsonView::AsInt() const {
  const double value = AsNumber();
  if (value != std::floor(value) || std::fabs(value) > 9.0e15) Fail("expected a whole number");
  return static_cast<long long>(value);
}

void JsonView::ForEachMember(
    const std::function<void(const std::string&, const JsonView&)>& visit) const {
  if (type() != Type::kObject) Fail(std::string("expected an object, got ") + TypeName(type()));
  const auto base = std::make_shared<const std::string>(path());
  size_t pos = SkipSpace(text_, 1);
  while (text_[pos] != '}') {
    const size_t key_end = SkipChecked(text_, pos);
    const std::string key = DecodeString(text_.substr(pos, key_end - pos), *this);
    const size_t value_start = SkipSpace(text_, SkipSpace(text_, key_end) + 1);
    const size_t value_end = SkipChecked(text_, value_start);
    visit(key, JsonView(text_.substr(value_start, value_end - value_start), base, "." + key));
    pos = SkipSpace(text_, value_end);
    if (text_[pos] == ',') pos = SkipSpace(text_, pos + 1);
  }
}

void JsonView::ForEachElement(const std::function<void(size_t, const JsonView&)>& visit) const {
  if (type() != Type::kArray) Fail(std::string("expected an array, got ") + TypeName(type()));
  const auto base = std::make_shared<const std::string>(path());
  size_t pos = SkipSpace(text_, 1);
  for (size_t index = 0; text_[pos] != ']'; ++index) {
    const size_t end = SkipChecked(text_, pos);
    visit(index, JsonView(text_.substr(pos, end - pos), base, "[" + std::to_string(index) + "]"));
    pos = SkipSpace(text_, end);
    if (text_[pos] == ',') pos = SkipSpace(text_, pos + 1);
  }
}

std::pair<std::string, std::string> JsonView::AsStringPair() const {
  if (type() != Type::kArray) Fail(std::string("expected an array, got ") + TypeName(type()));
  std::string parts[2];
  size_t pos = SkipSpace(text_, 1);
  for (std::string& part : parts) {
    if (text_[pos] != '"') Fail("expected a pair of strings");
    const size_t end = SkipChecked(text_, pos);
    part = DecodeString(text_.substr(pos, end - pos), *this);
    pos = SkipSpace(text_, end);
    if (text_[pos] == ',') pos = SkipSpace(text_, pos + 1);
  }
  if (text_[pos] != ']') Fail("expected a pair of strings");
  return {std::move(parts[0]), std::move(parts[1])};
}

size_t JsonView::ArraySize() const {
  size_t count = 0;
  ForEachElement([&](size_t, const JsonView&) { ++count; });
  return count;
}

std::optional<JsonView> JsonView::Find(std::string_view key, bool skip_null) const {
  for (const auto& [name, value] : Members()) {
    if (name == key) {
      if (skip_null && value.is_null()) return std::nullopt;
      return value;
    }
  }
  return std::nullopt;
}

std::vector<std::pair<std::string, JsonView>> JsonView::Members() const {
  std::vector<std::pair<std::string, JsonView>> members;
  ForEachMember([&](const std::string& key, const JsonView& value) { members.emplace_back(key, value); });
  return members;
}

JsonView JsonView::Get(std::string_view key) const {
  std::optional<JsonView> found = Find(key);
  if (!found) Fail("missing \"" + std::string(key) + "\"");
  return *found;
}

}  // namespace awqcore::json
