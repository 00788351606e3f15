// Chat prompts without a template engine: a model's chat template reduced, at
// quantize time, to fixed strings around each turn (the file's chat.* keys,
// docs/format.md "Chat format"). Included by awqcore.h.
//
// Thread safety: a ChatFormat is immutable; share it freely.
#pragma once

#include <map>
#include <string>
#include <vector>

namespace awqcore {

class Model;

struct ChatMessage {
  std::string role;  // "system", "user" or "assistant"
  std::string content;
};

class ChatFormat {
 public:
  // From the model file's chat.* keys. Throws FormatError when the file has
  // none (no chat template, or one the quantizer could not reduce: Python's
  // jinja2 path still renders it) or a key is malformed, naming it.
  static ChatFormat FromModel(const Model& model);
  // From the keys themselves (key -> value, as the file stores them); what
  // FromModel reads. Throws FormatError naming a missing or malformed key.
  static ChatFormat FromMetadata(const std::map<std::string, std::string>& keys);

  // The conversation as prompt text, equal to what the model's Jinja template
  // renders for it (transformers' apply_chat_template). Special tokens (BOS
  // included, when the template writes it) appear as their text: encode the
  // result with Tokenizer::Encode(text, /*add_special=*/false,
  // /*parse_special=*/true). Throws InvalidArgument naming the message for a
  // role other than system/user/assistant, or a conversation the template
  // rejects (a system message where the model takes none, roles that must
  // alternate but do not).
  std::string Apply(const std::vector<ChatMessage>& messages,
                    bool add_generation_prompt = true) const;

 private:
  struct Turn {
    std::string prefix, suffix;
    bool trim = false;
  };
  enum class SystemPlacement { kTurn, kFirst, kFold, kNone };

  const Turn& TurnOf(const std::string& role) const;
  Turn& MutableTurnOf(const std::string& role);

  std::string start_;
  Turn system_, user_, assistant_;
  std::string generation_prompt_;
  bool has_default_system_ = false;
  std::string default_system_;
  SystemPlacement system_placement_ = SystemPlacement::kNone;
  bool alternate_ = false;
};

}  // namespace awqcore
