#include "text_checks.h"

#include <cstdint>
#include <cstdio>
#include <string>

namespace awqcore {
namespace {

// The length (1..4) of the well-formed UTF-8 sequence that starts text[at],
// or 0 when none does. The second byte's range excludes overlong forms
// (E0 80..9F, F0 80..8F), surrogates (ED A0..BF) and code points above
// U+10FFFF (F4 90..BF), as RFC 3629's table does.
size_t Utf8SequenceLength(std::string_view text, size_t at) {
  const auto byte = [&](size_t i) { return static_cast<uint8_t>(text[i]); };
  const uint8_t lead = byte(at);
  if (lead < 0x80) return 1;
  size_t length;
  uint8_t low = 0x80, high = 0xBF;  // allowed range of the second byte
  if (lead >= 0xC2 && lead <= 0xDF) {
    length = 2;
  } else if (lead >= 0xE0 && lead <= 0xEF) {
    length = 3;
    if (lead == 0xE0) low = 0xA0;
    if (lead == 0xED) high = 0x9F;
  } else if (lead >= 0xF0 && lead <= 0xF4) {
    length = 4;
    if (lead == 0xF0) low = 0x90;
    if (lead == 0xF4) high = 0x8F;
  } else {
    return 0;  // a continuation byte, C0/C1 (always overlong) or F5..FF
  }
  if (text.size() - at < length) return 0;
  if (byte(at + 1) < low || byte(at + 1) > high) return 0;
  for (size_t i = 2; i < length; ++i) {
    if (byte(at + i) < 0x80 || byte(at + i) > 0xBF) return 0;
  }
  return length;
}

}  // namespace

bool IsValidUtf8(std::string_view text) {
  for (size_t at = 0; at < text.size();) {
    const size_t length = Utf8SequenceLength(text, at);
    if (length == 0) return false;
    at += length;
  }
  return true;
}

std::string EscapeForMessage(std::string_view text, size_t max_bytes) {
  std::string out;
  const size_t shown = text.size() < max_bytes ? text.size() : max_bytes;
  for (size_t at = 0; at < shown;) {
    const uint8_t byte = static_cast<uint8_t>(text[at]);
    const size_t length = Utf8SequenceLength(text, at);
    if (length > 1 && at + length <= shown) {
      out.append(text.substr(at, length));
      at += length;
      continue;
    }
    if (length == 1 && byte >= 0x20 && byte != 0x7f && byte != '\\') {
      out.push_back(static_cast<char>(byte));
    } else {
      char hex[5];
      std::snprintf(hex, sizeof(hex), "\\x%02x", byte);
      out += hex;
    }
    ++at;
  }
  if (shown < text.size()) out += "...";
  return out;
}

}  // namespace awqcore
