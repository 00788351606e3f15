// awqcore::Tokenizer: encode (added tokens, normalizers, pre-tokenizers, BPE,
// template) and decode (the decoder chain), and StreamDecoder.
#include "awqcore/tokenizer.h"

#include <algorithm>

#include "awqcore/awqcore.h"
#include "tokenizer/pipeline.h"
#include "tokenizer/unicode.h"

namespace awqcore {
namespace tokenizer_detail {

void TokenTrie::Add(std::string_view text, int token_index) {
  int node = 0;
  for (char c : text) {
    const uint8_t byte = static_cast<uint8_t>(c);
    int child = Child(node, byte);
    if (child < 0) {
      child = static_cast<int>(nodes_.size());
      nodes_.emplace_back();
      auto& children = nodes_[node].children;
      children.insert(std::lower_bound(children.begin(), children.end(), std::make_pair(byte, 0)),
                      {byte, child});
    }
    node = child;
  }
  // A content listed twice keeps its first token, the one matching finds first.
  if (nodes_[node].token < 0) nodes_[node].token = token_index;
  starts_[static_cast<uint8_t>(text[0])] = true;
}

int TokenTrie::Child(int node, uint8_t byte) const {
  const auto& children = nodes_[node].children;
  const auto it = std::lower_bound(children.begin(), children.end(), std::make_pair(byte, 0));
  return it != children.end() && it->first == byte ? it->second : -1;
}

int TokenTrie::LongestAt(std::string_view text, size_t pos, size_t* length) const {
  if (!starts_[static_cast<uint8_t>(text[pos])]) return -1;
  int best = -1, node = 0;
  for (size_t i = pos; i < text.size(); ++i) {
    node = Child(node, static_cast<uint8_t>(text[i]));
    if (node < 0) break;
    if (nodes_[node].token >= 0) {
      best = nodes_[node].token;
      *length = i + 1 - pos;
    }
  }
  return best;
}

namespace {

// pattern is non-empty: the loader rejects empty Replace patterns and
// Metaspace replacements.
void ReplaceAll(std::string& text, const std::string& pattern, const std::string& content) {
  if (pattern.empty() || text.find(pattern) == std::string::npos) return;
  std::string out;
  size_t pos = 0;
  for (size_t hit; (hit = text.find(pattern, pos)) != std::string::npos; pos = hit + pattern.size()) {
    out.append(text, pos, hit - pos).append(content);
  }
  out.append(text, pos, std::string::npos);
  text.swap(out);
}

std::string Normalize(const Pipeline& p, std::string_view segment) {
  std::string text(segment);
  for (const Normalizer& n : p.normalizers) {
    switch (n.kind) {
      case Normalizer::Kind::kNfc: text = unicode::Nfc(text); break;
      case Normalizer::Kind::kReplace: ReplaceAll(text, n.pattern, n.content); break;
      case Normalizer::Kind::kPrepend:
        if (!text.empty()) text.insert(0, n.content);
        break;
    }
  }
  return text;
}

// Digits: runs of \p{N} (or each one alone) split from the rest.
void SplitDigits(std::string_view text, bool individual, std::vector<std::string>* out) {
  size_t start = 0;
  bool start_is_digit = false;
  for (size_t pos = 0, length; pos < text.size(); pos += length) {
    const bool digit = unicode::IsNumber(unicode::DecodeOne(text, pos, &length));
    if (pos > start && (digit != start_is_digit || (digit && individual))) {
      out->emplace_back(text.substr(start, pos - start));
      start = pos;
    }
    if (pos == start) start_is_digit = digit;
  }
  if (start < text.size()) out->emplace_back(text.substr(start));
}

// Metaspace: spaces become the stand-in, which may be prepended, and with
// split each piece runs from one stand-in to the next.
void Metaspace(const PreTokenizer& pt, std::string text, bool first, std::vector<std::string>* out) {
  ReplaceAll(text, " ", pt.replacement);
  const bool prepend = pt.prepend == PreTokenizer::Prepend::kAlways ||
                       (pt.prepend == PreTokenizer::Prepend::kFirst && first);
  if (prepend && text.compare(0, pt.replacement.size(), pt.replacement) != 0) {
    text.insert(0, pt.replacement);
  }
  if (!pt.split) {
    out->push_back(std::move(text));
    return;
  }
  size_t start = 0;
  for (size_t hit = text.find(pt.replacement, 1); hit != std::string::npos;
       hit = text.find(pt.replacement, hit + pt.replacement.size())) {
    if (hit > start) out->emplace_back(text, start, hit - start);
    start = hit;
  }
  if (start < text.size()) out->emplace_back(text, start, std::string::npos);
}

void PreTokenize(const Pipeline& p, std::string text, bool at_text_start, std::vector<std::string>* words) {
  std::vector<std::string> pieces, next;
  pieces.push_back(std::move(text));
  for (const PreTokenizer& pt : p.pre_tokenizers) {
    next.clear();
    for (size_t i = 0; i < pieces.size(); ++i) {
      std::string& piece = pieces[i];
      if (piece.empty()) continue;
      switch (pt.kind) {
        case PreTokenizer::Kind::kSplit: SplitWithPattern(pt.pattern, piece, &next); break;
        case PreTokenizer::Kind::kDigits: SplitDigits(piece, pt.individual_digits, &next); break;
        case PreTokenizer::Kind::kMetaspace:
          Metaspace(pt, std::move(piece), at_text_start && i == 0, &next);
          break;
        case PreTokenizer::Kind::kByteLevel:
          if (pt.add_prefix_space && piece[0] != ' ') piece.insert(0, " ");
          if (pt.use_regex) {
            SplitWithPattern(SplitPattern::kGpt2, piece, &next);
          } else {
            next.push_back(std::move(piece));
          }
          break;
      }
    }
    pieces.swap(next);
  }
  for (std::string& piece : pieces) {
    if (!piece.empty()) words->push_back(std::move(piece));
  }
}

void EncodeWord(const Pipeline& p, const std::string& word, std::vector<int>* ids) {
  if (!p.byte_level) {
    p.model.TokenizeWord(word, ids);
    return;
  }
  std::vector<int> symbols;
  symbols.reserve(word.size());
  bool all_known = true;
  for (char c : word) {
    const int id = p.byte_symbol_ids[static_cast<uint8_t>(c)];
    all_known &= id >= 0;
    symbols.push_back(id);
  }
  if (all_known && !(p.model.ignore_merges && symbols.size() > 1)) {
    p.model.MergeSymbols(&symbols);
    ids->insert(ids->end(), symbols.begin(), symbols.end());
    return;
  }
  std::string mapped;  // the word in the byte-level alphabet, for the general path
  for (char c : word) mapped += ByteSymbol(static_cast<uint8_t>(c));
  p.model.TokenizeWord(mapped, ids);
}

void EncodeNormalizedPart(const Pipeline& p, std::string text, bool at_text_start, std::vector<int>* ids) {
  std::vector<std::string> words;
  PreTokenize(p, std::move(text), at_text_start, &words);
  for (const std::string& word : words) EncodeWord(p, word, ids);
}

bool WhitespaceBefore(std::string_view text, size_t pos, size_t* start) {
  size_t s = pos;
  while (s > 0 && (static_cast<uint8_t>(text[s - 1]) & 0xC0) == 0x80) --s;
  if (s == 0) return false;
  --s;
  while (s > 0 && (static_cast<uint8_t>(text[s]) & 0xC0) == 0x80) --s;
  size_t length;
  if (!unicode::IsWhitespace(unicode::DecodeOne(text, s, &length))) return false;
  *start = s;
  return true;
}

// Cuts the added tokens of `trie` out of `text`: calls on_text for the text
// between them (with its offset) and on_token for each token's id. A special
// token is left as text when !parse_special.
template <typename OnText, typename OnToken>
void SplitAddedTokens(const Pipeline& p, const TokenTrie& trie, std::string_view text,
                      bool parse_special, OnText on_text, OnToken on_token) {
  size_t text_start = 0;
  for (size_t pos = 0; pos < text.size();) {
    size_t length = 0;
    const int index = trie.empty() ? -1 : trie.LongestAt(text, pos, &length);
    if (index < 0) {
      ++pos;
      continue;
    }
    const AddedToken& token = p.added_tokens[index];
    if (token.special && !parse_special) {
      pos += length;
      continue;
    }
    size_t start = pos, end = pos + length;
    for (size_t before; token.lstrip && start > text_start && WhitespaceBefore(text, start, &before);) {
      start = std::max(before, text_start);
    }
    for (size_t len; token.rstrip && end < text.size() &&
                     unicode::IsWhitespace(unicode::DecodeOne(text, end, &len));) {
      end += len;
    }
    if (start > text_start) on_text(text.substr(text_start, start - text_start), text_start);
    on_token(token.id);
    pos = text_start = end;
  }
  if (text_start < text.size()) on_text(text.substr(text_start), text_start);
}

std::vector<int> EncodeText(const Pipeline& p, std::string_view text, bool parse_special) {
  std::vector<int> ids;
  const auto push_token = [&](int id) { ids.push_back(id); };
  SplitAddedTokens(p, p.raw_added, text, parse_special, [&](std::string_view segment, size_t offset) {
    std::string normalized = Normalize(p, segment);
    if (p.normalized_added.empty()) {
      EncodeNormalizedPart(p, std::move(normalized), offset == 0, &ids);
      return;
    }
    SplitAddedTokens(p, p.normalized_added, normalized, parse_special,
                     [&](std::string_view part, size_t part_offset) {
                       EncodeNormalizedPart(p, std::string(part), offset == 0 && part_offset == 0, &ids);
                     }, push_token);
  }, push_token);
  return ids;
}

// <0xNN> -> NN, else -1.
int ByteToken(const std::string& token) {
  if (token.size() != 6 || token.compare(0, 3, "<0x") != 0 || token[5] != '>') return -1;
  int value = 0;
  for (int i = 3; i < 5; ++i) {
    const char c = token[i];
    const int digit = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10
                    : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
    if (digit < 0) return -1;
    value = value * 16 + digit;
  }
  return value;
}

void FlushBytes(std::string& bytes, std::vector<std::string>* out) {
  if (bytes.empty()) return;
  if (unicode::IsValidUtf8(bytes)) {
    out->push_back(bytes);
  } else {
    for (size_t i = 0; i < bytes.size(); ++i) out->emplace_back("\xEF\xBF\xBD");  // one U+FFFD per byte
  }
  bytes.clear();
}

// Strip: cut up to `count` copies of `content` (one character) from one end.
std::string StripEnds(const std::string& token, const std::string& content, int start, int stop) {
  size_t begin = 0, end = token.size();
  for (int i = 0; i < start && token.compare(begin, content.size(), content) == 0 && begin < end; ++i) {
    begin += content.size();
  }
  for (int i = 0; i < stop && end >= begin + content.size() &&
                  token.compare(end - content.size(), content.size(), content) == 0; ++i) {
    end -= content.size();
  }
  return token.substr(begin, end - begin);
}

void RunDecoder(const Decoder& d, std::vector<std::string>* tokens) {
  std::vector<std::string> out;
  switch (d.kind) {
    case Decoder::Kind::kReplace:
      for (std::string& t : *tokens) ReplaceAll(t, d.pattern, d.content);
      return;
    case Decoder::Kind::kStrip:
      for (std::string& t : *tokens) t = StripEnds(t, d.content, d.start, d.stop);
      return;
    case Decoder::Kind::kFuse: {
      std::string all;
      for (const std::string& t : *tokens) all += t;
      tokens->assign(1, all);
      return;
    }
    case Decoder::Kind::kByteFallback: {
      std::string bytes;
      for (std::string& t : *tokens) {
        const int byte = ByteToken(t);
        if (byte >= 0) {
          bytes.push_back(static_cast<char>(byte));
          continue;
        }
        FlushBytes(bytes, &out);
        out.push_back(std::move(t));
      }
      FlushBytes(bytes, &out);
      tokens->swap(out);
      return;
    }
    case Decoder::Kind::kMetaspace:
      for (size_t i = 0; i < tokens->size(); ++i) {
        std::string& t = (*tokens)[i];
        // The first token's stand-ins were prepended spaces, not text.
        ReplaceAll(t, d.content, i == 0 && d.prepend ? "" : " ");
      }
      return;
    case Decoder::Kind::kByteLevel: {
      std::string bytes;
      for (const std::string& t : *tokens) {
        for (size_t pos = 0, length; pos < t.size(); pos += length) {
          const int byte = ByteOfSymbol(unicode::DecodeOne(t, pos, &length));
          if (byte >= 0) {
            bytes.push_back(static_cast<char>(byte));
          } else {
            bytes.append(t, pos, length);  // not in the alphabet: kept as it is
          }
        }
      }
      tokens->assign(1, unicode::ToValidUtf8(bytes));
      return;
    }
  }
}

}  // namespace
}  // namespace tokenizer_detail

using tokenizer_detail::Pipeline;

Tokenizer::Tokenizer(std::unique_ptr<Pipeline> pipeline) : pipeline_(std::move(pipeline)) {}
Tokenizer::~Tokenizer() = default;

std::shared_ptr<const Tokenizer> Tokenizer::FromJson(std::string_view tokenizer_json) {
  return std::make_shared<const Tokenizer>(tokenizer_detail::LoadPipeline(tokenizer_json));
}

std::shared_ptr<const Tokenizer> Tokenizer::FromModel(const Model& model) {
  const std::optional<std::string> text = model.metadata_string("tokenizer.json");
  if (!text || text->empty()) {  // docs/format.md: an empty entry means none
    throw FormatError("model file has no tokenizer.json metadata: it cannot tokenize text");
  }
  return FromJson(*text);
}

std::vector<int> Tokenizer::Encode(std::string_view text, bool add_special, bool parse_special) const {
  const std::string valid = unicode::ToValidUtf8(text);
  std::vector<int> ids = tokenizer_detail::EncodeText(*pipeline_, valid, parse_special);
  if (!add_special || pipeline_->template_single.empty()) return ids;
  std::vector<int> out;
  out.reserve(ids.size() + pipeline_->template_single.size());
  for (int item : pipeline_->template_single) {
    if (item == Pipeline::kSequenceA) {
      out.insert(out.end(), ids.begin(), ids.end());
    } else {
      out.push_back(item);
    }
  }
  return out;
}

std::string Tokenizer::Decode(const std::vector<int>& ids, bool skip_special) const {
  const Pipeline& p = *pipeline_;
  std::vector<std::string> tokens;
  tokens.reserve(ids.size());
  for (int id : ids) {
    if (id < 0 || id >= p.vocab_size) continue;
    const int added = p.added_index_by_id[id];
    if (added >= 0) {
      if (!(skip_special && p.added_tokens[added].special)) tokens.push_back(p.added_tokens[added].content);
    } else if (static_cast<size_t>(id) < p.model.id_to_token.size() && !p.model.id_to_token[id].empty()) {
      tokens.push_back(p.model.id_to_token[id]);
    }
  }
  std::string text;
  if (!p.has_decoder) {  // `tokenizers` joins tokens with spaces without a decoder
    for (size_t i = 0; i < tokens.size(); ++i) text += (i ? " " : "") + tokens[i];
    return text;
  }
  for (const tokenizer_detail::Decoder& d : p.decoders) tokenizer_detail::RunDecoder(d, &tokens);
  for (const std::string& t : tokens) text += t;
  return text;
}

int Tokenizer::vocab_size() const { return pipeline_->vocab_size; }

std::string Tokenizer::TokenText(int id) const {
  const Pipeline& p = *pipeline_;
  if (id < 0 || id >= p.vocab_size) return "";
  if (p.added_index_by_id[id] >= 0) return p.added_tokens[p.added_index_by_id[id]].content;
  return static_cast<size_t>(id) < p.model.id_to_token.size() ? p.model.id_to_token[id] : "";
}

std::optional<int> Tokenizer::TokenId(std::string_view piece) const {
  for (const tokenizer_detail::AddedToken& t : pipeline_->added_tokens) {
    if (t.content == piece) return t.id;
  }
  const int id = pipeline_->model.vocab.Find(piece);
  return id >= 0 ? std::optional<int>(id) : std::nullopt;
}

bool Tokenizer::IsSpecial(int id) const {
  const Pipeline& p = *pipeline_;
  return id >= 0 && id < p.vocab_size && p.added_index_by_id[id] >= 0 &&
         p.added_tokens[p.added_index_by_id[id]].special;
}

StreamDecoder::StreamDecoder(std::shared_ptr<const Tokenizer> tokenizer, bool skip_special)
    : tokenizer_(std::move(tokenizer)), skip_special_(skip_special) {
  if (!tokenizer_) throw InvalidArgument("StreamDecoder needs a tokenizer");
}

// The ids since the last emitted text are decoded with the ones before them
// (so decoders that treat the first token differently, e.g. Strip, see the
// same context as in a full decode); the text past theirs is new once it no
// longer ends in U+FFFD, i.e. no UTF-8 sequence is left open. When the longer
// decode does not extend the shorter one (ByteFallback turns a whole byte-token
// run into U+FFFDs once any of it is invalid), the new ids are decoded alone.
std::string StreamDecoder::NewText() const {
  const std::vector<int> emitted(ids_.begin(), ids_.begin() + read_offset_);
  const std::string prefix = tokenizer_->Decode(emitted, skip_special_);
  std::string text = tokenizer_->Decode(ids_, skip_special_);
  if (text.compare(0, prefix.size(), prefix) == 0) return text.substr(prefix.size());
  return tokenizer_->Decode(std::vector<int>(ids_.begin() + read_offset_, ids_.end()), skip_special_);
}

std::string StreamDecoder::Push(int id) {
  ids_.push_back(id);
  std::string text = NewText();
  if (text.empty() || (text.size() >= 3 && text.compare(text.size() - 3, 3, "\xEF\xBF\xBD") == 0)) {
    return "";
  }
  ids_.erase(ids_.begin(), ids_.begin() + read_offset_);
  read_offset_ = ids_.size();
  return text;
}

std::string StreamDecoder::Flush() {
  std::string text = NewText();
  ids_.clear();
  read_offset_ = 0;
  return text;
}

}  // namespace awqcore
