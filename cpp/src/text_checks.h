// Checks of the text a .awqbin file carries (keys, tensor names, string
// values) and the escaping of file bytes quoted in error
// messages.
//
// An error message crosses into Python as a str, which must be UTF-8: a
// message quoting raw file bytes (a name that is not UTF-8, a control byte)
// would surface as UnicodeDecodeError instead of the FormatError it is. So
// every quote of file text goes through EscapeForMessage, and every string the
// reader hands on is checked to be UTF-8 first.
//
// Thread safety: pure functions.
#pragma once

#include <string>
#include <string_view>

namespace awqcore {

// True when `text` is well-formed UTF-8 (RFC 3629: no overlong forms, no
// surrogates U+D800..U+DFFF, nothing above U+10FFFF).
bool IsValidUtf8(std::string_view text);

// `text` with every byte outside printable ASCII that is not part of a
// well-formed UTF-8 sequence, every control byte (< 0x20, 0x7f) and the
// backslash written as \xNN, so the result is printable UTF-8 that names the
// exact bytes. At most `max_bytes` input bytes are shown, then "...".
std::string EscapeForMessage(std::string_view text, size_t max_bytes = 80);

}  // namespace awqcore
