// ChatFormat: a chat prompt from the chat.* keys (docs/format.md "Chat
// format"); the rule is python/awqcore/chat_format.py's render_turns.

#include "awqcore/chat_format.h"

#include <cstring>
#include <optional>
#include <sstream>

#include "awqcore/awqcore.h"
#include "text_checks.h"

namespace awqcore {
namespace {

constexpr const char* kRoles[] = {"system", "user", "assistant"};

// The UTF-8 encodings of the code points Python's str.isspace() accepts,
// which jinja2's trim filter (str.strip()) removes: U+0009..000D,
// U+001C..001F, U+0020 (one byte each, tested separately) and these.
constexpr const char* kMultiByteSpaces[] = {
    "\xC2\x85", "\xC2\xA0", "\xE1\x9A\x80", "\xE2\x80\x80", "\xE2\x80\x81", "\xE2\x80\x82",
    "\xE2\x80\x83", "\xE2\x80\x84", "\xE2\x80\x85", "\xE2\x80\x86", "\xE2\x80\x87",
    "\xE2\x80\x88", "\xE2\x80\x89", "\xE2\x80\x8A", "\xE2\x80\xA8", "\xE2\x80\xA9",
    "\xE2\x80\xAF", "\xE2\x81\x9F", "\xE3\x80\x80"};

bool IsAsciiSpace(unsigned char c) { return (c >= 0x09 && c <= 0x0D) || (c >= 0x1C && c <= 0x20); }

// Length of the whitespace code point at text[pos..] (0: none).
size_t SpaceAt(const std::string& text, size_t pos) {
  if (IsAsciiSpace(static_cast<unsigned char>(text[pos]))) return 1;
  for (const char* space : kMultiByteSpaces) {
    if (text.compare(pos, std::strlen(space), space) == 0) return std::strlen(space);
  }
  return 0;
}

// Length of the whitespace code point ending at text[..end) (0: none).
size_t SpaceBefore(const std::string& text, size_t end) {
  if (IsAsciiSpace(static_cast<unsigned char>(text[end - 1]))) return 1;
  for (const char* space : kMultiByteSpaces) {
    const size_t n = std::strlen(space);
    if (end >= n && text.compare(end - n, n, space) == 0) return n;
  }
  return 0;
}

std::string Strip(const std::string& text) {
  size_t begin = 0, end = text.size();
  while (begin < end) {
    const size_t n = SpaceAt(text, begin);
    if (n == 0) break;
    begin += n;
  }
  while (end > begin) {
    const size_t n = SpaceBefore(text, end);
    if (n == 0) break;
    end -= n;
  }
  return text.substr(begin, end - begin);
}

const std::string& Need(const std::map<std::string, std::string>& keys, const std::string& key) {
  auto it = keys.find(key);
  if (it == keys.end()) throw FormatError("chat format: key '" + key + "' is missing");
  return it->second;
}

}  // namespace

ChatFormat ChatFormat::FromModel(const Model& model) {
  const auto format = model.metadata_string("chat.format");
  if (!format) {
    const auto template_text = model.metadata_string("tokenizer.chat_template");
    throw FormatError(template_text && !template_text->empty()
                          ? "chat format: the file has no chat.* keys (its chat template could not "
                            "be reduced to fixed strings per turn when it was quantized; Python "
                            "renders it with jinja2)"
                          : "chat format: the model has no chat template");
  }
  std::map<std::string, std::string> keys;
  for (const char* key : {"chat.format", "chat.start", "chat.generation_prompt", "chat.system",
                          "chat.order", "chat.trim", "chat.default_system"}) {
    if (auto value = model.metadata_string(key)) keys[key] = *value;
  }
  for (const char* role : kRoles) {
    for (const char* part : {"prefix", "suffix"}) {
      const std::string key = std::string("chat.") + role + "." + part;
      if (auto value = model.metadata_string(key)) keys[key] = *value;
    }
  }
  return FromMetadata(keys);
}

ChatFormat ChatFormat::FromMetadata(const std::map<std::string, std::string>& keys) {
  const std::string& format = Need(keys, "chat.format");
  if (format != "turns") {
    throw FormatError("chat format: chat.format is '" + EscapeForMessage(format) +
                      "' (supported: turns)");
  }
  ChatFormat f;
  f.start_ = Need(keys, "chat.start");
  f.generation_prompt_ = Need(keys, "chat.generation_prompt");
  const std::string trimmed = " " + Need(keys, "chat.trim") + " ";
  size_t roles_trimmed = 0;
  for (const char* role : kRoles) {
    Turn& turn = f.MutableTurnOf(role);
    turn.prefix = Need(keys, std::string("chat.") + role + ".prefix");
    turn.suffix = Need(keys, std::string("chat.") + role + ".suffix");
    turn.trim = trimmed.find(std::string(" ") + role + " ") != std::string::npos;
    roles_trimmed += turn.trim;
  }
  // Every word of chat.trim must be a role: a typo would silently not trim.
  std::istringstream words(trimmed);
  size_t word_count = 0;
  for (std::string word; words >> word;) ++word_count;
  if (word_count != roles_trimmed) {
    throw FormatError("chat format: chat.trim is '" + EscapeForMessage(Need(keys, "chat.trim")) +
                      "' (expected space-separated roles: system, user, assistant)");
  }
  const std::string& system = Need(keys, "chat.system");
  if (system == "turn") {
    f.system_placement_ = SystemPlacement::kTurn;
  } else if (system == "first") {
    f.system_placement_ = SystemPlacement::kFirst;
  } else if (system == "fold") {
    f.system_placement_ = SystemPlacement::kFold;
  } else if (system == "none") {
    f.system_placement_ = SystemPlacement::kNone;
  } else {
    throw FormatError("chat format: chat.system is '" + EscapeForMessage(system) +
                      "' (expected turn, first, fold or none)");
  }
  const std::string& order = Need(keys, "chat.order");
  if (order != "alternate" && order != "any") {
    throw FormatError("chat format: chat.order is '" + EscapeForMessage(order) +
                      "' (expected alternate or any)");
  }
  f.alternate_ = order == "alternate";
  auto it = keys.find("chat.default_system");
  if (it != keys.end()) {
    if (f.system_placement_ == SystemPlacement::kNone) {
      throw FormatError("chat format: chat.default_system is set but chat.system is none");
    }
    f.has_default_system_ = true;
    f.default_system_ = it->second;
  }
  return f;
}

const ChatFormat::Turn& ChatFormat::TurnOf(const std::string& role) const {
  return role == "system" ? system_ : role == "user" ? user_ : assistant_;
}

ChatFormat::Turn& ChatFormat::MutableTurnOf(const std::string& role) {
  return role == "system" ? system_ : role == "user" ? user_ : assistant_;
}

std::string ChatFormat::Apply(const std::vector<ChatMessage>& messages,
                              bool add_generation_prompt) const {
  for (size_t i = 0; i < messages.size(); ++i) {
    const std::string& role = messages[i].role;
    if (role != "system" && role != "user" && role != "assistant") {
      throw InvalidArgument("chat: message " + std::to_string(i) + " has role '" +
                            EscapeForMessage(role) + "' (expected system, user or assistant)");
    }
  }
  size_t first = 0;
  const std::string* system = has_default_system_ ? &default_system_ : nullptr;
  if (!messages.empty() && messages[0].role == "system" &&
      system_placement_ != SystemPlacement::kNone) {
    system = &messages[0].content;
    first = 1;
  }
  std::string out = start_;
  std::string fold;  // the system block that opens the first user turn (kFold)
  bool folding = false;
  if (system != nullptr) {
    std::string block = system_.prefix + (system_.trim ? Strip(*system) : *system) + system_.suffix;
    if (system_placement_ == SystemPlacement::kFold) {
      fold = std::move(block);
      folding = true;
    } else {
      out += block;
    }
  }
  int turn = 0;  // user/assistant messages so far
  for (size_t i = first; i < messages.size(); ++i) {
    const ChatMessage& m = messages[i];
    const std::string where = "chat: message " + std::to_string(i) + ": ";
    if (m.role == "system") {
      if (system_placement_ != SystemPlacement::kTurn) {
        throw InvalidArgument(where + "this model's chat format takes a system message " +
                              (system_placement_ == SystemPlacement::kNone ? "never" : "only first"));
      }
    } else if (alternate_ && (m.role == "user") != (turn % 2 == 0)) {
      throw InvalidArgument(where + "this model's chat format needs user and assistant "
                                    "messages to alternate, starting with user");
    }
    const Turn& t = TurnOf(m.role);
    out += t.prefix;
    if (folding) {
      if (m.role != "user") {
        throw InvalidArgument(where + "the system message must be followed by a user message "
                                      "(this model folds it into that turn)");
      }
      out += fold;
      folding = false;
    }
    out += t.trim ? Strip(m.content) : m.content;
    out += t.suffix;
    if (m.role != "system") ++turn;
  }
  if (folding) {
    throw InvalidArgument("chat: the system message must be followed by a user message "
                          "(this model folds it into that turn)");
  }
  if (add_generation_prompt) out += generation_prompt_;
  return out;
}

}  // namespace awqcore
