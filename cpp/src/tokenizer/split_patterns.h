// The pre-tokenizer split regexes of the supported byte-level BPE families as
// hand-written matchers over code points, so no regex engine with Unicode
// classes is needed:
//   GPT-2 (ByteLevel use_regex; SmolLM2):
//     's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
//   Llama 3 (Qwen2 is the same with \p{N} instead of \p{N}{1,3}):
//     (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}
//     | ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+
// Each is matched as the regex engine does: the first alternative that matches
// at a position wins, each quantifier greedy with backtracking worked out by hand.
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace awqcore::tokenizer_detail {

enum class SplitPattern { kGpt2, kLlama3, kQwen2 };

// The pattern whose regex text is `regex` exactly, if it is one of the above.
std::optional<SplitPattern> RecognizeSplitRegex(std::string_view regex);

// Appends the pieces of valid UTF-8 `text` (every match, in order; together
// they cover the text, as a Split with behavior Isolated yields them).
void SplitWithPattern(SplitPattern pattern, std::string_view text, std::vector<std::string>* pieces);

}  // namespace awqcore::tokenizer_detail
