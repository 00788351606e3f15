// tokenizer.json -> Pipeline: reads every part the supported models use and
// rejects anything else by name (see tokenizer.h for the supported list).
#include <algorithm>
#include <array>
#include <cstdio>
#include <memory>
#include <string>
#include <tuple>

#include "awqcore/awqcore.h"
#include "tokenizer/json.h"
#include "tokenizer/pipeline.h"
#include "tokenizer/unicode.h"

namespace awqcore::tokenizer_detail {
namespace {

using json::JsonView;

// The largest id accepted: ids index dense tables, so a stray huge id must not
// allocate gigabytes.
constexpr long long kMaxTokenId = (1 << 24) - 1;

std::string TypeOf(const JsonView& component) { return component.Get("type").AsString(); }

[[noreturn]] void Unsupported(const JsonView& component, const std::string& what) {
  component.Fail("unsupported " + what + " \"" + TypeOf(component) + "\"");
}

bool BoolOr(const JsonView& object, std::string_view key, bool fallback) {
  const std::optional<JsonView> v = object.Find(key);
  return v ? v->AsBool() : fallback;
}

// A `pattern` member: {"String": s} gives s; {"Regex": r} only where allowed.
std::string StringPattern(const JsonView& component) {
  const JsonView pattern = component.Get("pattern");
  if (const std::optional<JsonView> s = pattern.Find("String")) return s->AsString();
  pattern.Fail("only {\"String\": ...} patterns are supported here");
}

// A member that must hold exactly one character: Metaspace's replacement and
// Strip's content are searched for and stripped one occurrence at a time, so
// an empty string would never advance.
std::string OneCharacter(const JsonView& component, std::string_view key, const char* type) {
  const JsonView member = component.Get(key);
  std::string value = member.AsString();
  size_t length = 0;
  if (!value.empty()) unicode::DecodeOne(value, 0, &length);
  if (value.empty() || length != value.size()) {
    member.Fail(std::string(type) + " " + std::string(key) + " must be one character");
  }
  return value;
}

void LoadNormalizer(const JsonView& n, std::vector<Normalizer>* out) {
  const std::string type = TypeOf(n);
  if (type == "Sequence") {
    n.Get("normalizers").ForEachElement([&](size_t, const JsonView& e) { LoadNormalizer(e, out); });
  } else if (type == "NFC") {
    out->push_back({Normalizer::Kind::kNfc, "", ""});
  } else if (type == "Replace") {
    std::string pattern = StringPattern(n);
    if (pattern.empty()) n.Fail("Replace with an empty pattern");
    out->push_back({Normalizer::Kind::kReplace, std::move(pattern), n.Get("content").AsString()});
  } else if (type == "Prepend") {
    out->push_back({Normalizer::Kind::kPrepend, "", n.Get("prepend").AsString()});
  } else {
    Unsupported(n, "normalizer");
  }
}

PreTokenizer::Prepend MetaspacePrepend(const JsonView& m) {
  if (const std::optional<JsonView> scheme = m.Find("prepend_scheme")) {
    const std::string s = scheme->AsString();
    if (s == "always") return PreTokenizer::Prepend::kAlways;
    if (s == "first") return PreTokenizer::Prepend::kFirst;
    if (s == "never") return PreTokenizer::Prepend::kNever;
    scheme->Fail("unknown prepend_scheme \"" + s + "\"");
  }
  return BoolOr(m, "add_prefix_space", true) ? PreTokenizer::Prepend::kAlways
                                             : PreTokenizer::Prepend::kNever;
}

void LoadPreTokenizer(const JsonView& p, std::vector<PreTokenizer>* out) {
  const std::string type = TypeOf(p);
  PreTokenizer pt;
  if (type == "Sequence") {
    p.Get("pretokenizers").ForEachElement([&](size_t, const JsonView& e) { LoadPreTokenizer(e, out); });
    return;
  } else if (type == "ByteLevel") {
    pt.kind = PreTokenizer::Kind::kByteLevel;
    pt.add_prefix_space = BoolOr(p, "add_prefix_space", true);
    pt.use_regex = BoolOr(p, "use_regex", true);
  } else if (type == "Split") {
    pt.kind = PreTokenizer::Kind::kSplit;
    const JsonView pattern = p.Get("pattern");
    const std::optional<JsonView> regex = pattern.Find("Regex");
    if (!regex) pattern.Fail("only the GPT-2, Qwen2 and Llama 3 regexes are supported as Split patterns");
    const std::optional<SplitPattern> known = RecognizeSplitRegex(regex->AsString());
    if (!known) regex->Fail("unsupported Split regex (supported: the GPT-2, Qwen2 and Llama 3 patterns)");
    pt.pattern = *known;
    const std::string behavior = p.Get("behavior").AsString();
    if (behavior != "Isolated") p.Fail("unsupported Split behavior \"" + behavior + "\" (supported: Isolated)");
    if (BoolOr(p, "invert", false)) p.Fail("unsupported Split with invert: true");
  } else if (type == "Digits") {
    pt.kind = PreTokenizer::Kind::kDigits;
    pt.individual_digits = BoolOr(p, "individual_digits", false);
  } else if (type == "Metaspace") {
    pt.kind = PreTokenizer::Kind::kMetaspace;
    pt.replacement = OneCharacter(p, "replacement", "Metaspace");
    pt.prepend = MetaspacePrepend(p);
    pt.split = BoolOr(p, "split", true);
  } else {
    Unsupported(p, "pre-tokenizer");
  }
  out->push_back(std::move(pt));
}

void LoadDecoder(const JsonView& d, std::vector<Decoder>* out) {
  const std::string type = TypeOf(d);
  Decoder dec;
  if (type == "Sequence") {
    d.Get("decoders").ForEachElement([&](size_t, const JsonView& e) { LoadDecoder(e, out); });
    return;
  } else if (type == "ByteLevel") {
    dec.kind = Decoder::Kind::kByteLevel;
  } else if (type == "Replace") {
    dec.kind = Decoder::Kind::kReplace;
    dec.pattern = StringPattern(d);
    if (dec.pattern.empty()) d.Fail("Replace with an empty pattern");
    dec.content = d.Get("content").AsString();
  } else if (type == "ByteFallback") {
    dec.kind = Decoder::Kind::kByteFallback;
  } else if (type == "Fuse") {
    dec.kind = Decoder::Kind::kFuse;
  } else if (type == "Strip") {
    dec.kind = Decoder::Kind::kStrip;
    dec.content = OneCharacter(d, "content", "Strip");
    dec.start = static_cast<int>(std::clamp<long long>(d.Get("start").AsInt(), 0, 1 << 20));
    dec.stop = static_cast<int>(std::clamp<long long>(d.Get("stop").AsInt(), 0, 1 << 20));
  } else if (type == "Metaspace") {
    dec.kind = Decoder::Kind::kMetaspace;
    dec.content = OneCharacter(d, "replacement", "Metaspace");
    dec.prepend = MetaspacePrepend(d) != PreTokenizer::Prepend::kNever;
  } else {
    Unsupported(d, "decoder");
  }
  out->push_back(std::move(dec));
}

void LoadPostProcessor(const JsonView& p, Pipeline* pipeline, bool* have_template) {
  const std::string type = TypeOf(p);
  if (type == "Sequence") {
    p.Get("processors").ForEachElement([&](size_t, const JsonView& e) {
      LoadPostProcessor(e, pipeline, have_template);
    });
  } else if (type == "ByteLevel") {
    // Adjusts offsets only; the ids are unchanged.
  } else if (type == "TemplateProcessing") {
    if (*have_template) p.Fail("more than one TemplateProcessing");
    *have_template = true;
    const JsonView specials = p.Get("special_tokens");
    p.Get("single").ForEachElement([&](size_t, const JsonView& item) {
      if (const std::optional<JsonView> s = item.Find("Sequence")) {
        if (s->Get("id").AsString() != "A") s->Fail("a single-sequence template can only hold $A");
        pipeline->template_single.push_back(Pipeline::kSequenceA);
      } else if (const std::optional<JsonView> t = item.Find("SpecialToken")) {
        const std::string name = t->Get("id").AsString();
        const std::optional<JsonView> entry = specials.Find(name);
        if (!entry) t->Fail("special token \"" + name + "\" is not in special_tokens");
        entry->Get("ids").ForEachElement([&](size_t, const JsonView& id) {
          const long long value = id.AsInt();
          if (value < 0 || value > kMaxTokenId) id.Fail("token id out of range");
          pipeline->template_single.push_back(static_cast<int>(value));
        });
      } else {
        item.Fail("expected a Sequence or SpecialToken item");
      }
    });
  } else {
    Unsupported(p, "post-processor");
  }
}

// An object's members read once: the model object is the whole vocabulary,
// too large to rescan for every key.
class Object {
 public:
  explicit Object(const JsonView& view) : view_(view), members_(view.Members()) {}
  std::optional<JsonView> Find(std::string_view key) const {
    for (const auto& [name, value] : members_) {
      if (name == key) return value.is_null() ? std::nullopt : std::optional<JsonView>(value);
    }
    return std::nullopt;
  }
  JsonView Get(std::string_view key) const {
    const std::optional<JsonView> value = Find(key);
    if (!value) view_.Fail("missing \"" + std::string(key) + "\"");
    return *value;
  }
  bool BoolOr(std::string_view key, bool fallback) const {
    const std::optional<JsonView> value = Find(key);
    return value ? value->AsBool() : fallback;
  }
  const JsonView& view() const { return view_; }

 private:
  JsonView view_;
  std::vector<std::pair<std::string, JsonView>> members_;
};

void LoadModel(const JsonView& model_view, BpeModel* model) {
  const Object m(model_view);
  const std::string type = m.Get("type").AsString();
  if (type != "BPE") m.view().Fail("unsupported model type \"" + type + "\" (supported: BPE)");
  if (const std::optional<JsonView> dropout = m.Find("dropout"); dropout && dropout->AsNumber() != 0) {
    dropout->Fail("BPE dropout is not supported");
  }
  for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"}) {
    if (const std::optional<JsonView> v = m.Find(key); v && !v->AsString().empty()) {
      v->Fail("not supported (byte-level and SentencePiece-style BPE have none)");
    }
  }
  model->fuse_unk = m.BoolOr("fuse_unk", false);
  model->byte_fallback = m.BoolOr("byte_fallback", false);
  model->ignore_merges = m.BoolOr("ignore_merges", false);

  m.Get("vocab").ForEachMember([&](const std::string& text, const JsonView& id_view) {
    const long long id = id_view.AsInt();
    if (id < 0 || id > kMaxTokenId) id_view.Fail("token id out of range");
    if (text.empty()) id_view.Fail("empty token text");
    if (static_cast<size_t>(id) >= model->id_to_token.size()) model->id_to_token.resize(id + 1);
    if (!model->id_to_token[id].empty()) {
      id_view.Fail("id " + std::to_string(id) + " is also \"" + model->id_to_token[id] + "\"");
    }
    model->id_to_token[id] = text;
  });
  model->vocab.Build(&model->id_to_token);
  for (int b = 0; b < 256; ++b) {
    char name[8];
    std::snprintf(name, sizeof(name), "<0x%02X>", b);
    model->byte_token_ids[b] = model->vocab.Find(name);
  }
  if (const std::optional<JsonView> unk = m.Find("unk_token")) {
    model->unk_id = model->vocab.Find(unk->AsString());
    if (model->unk_id < 0) unk->Fail("unk_token is not in the vocabulary");
  }

  const JsonView merges = m.Get("merges");
  model->merges.Reserve(merges.ArraySize());
  merges.ForEachElement([&](size_t rank, const JsonView& merge) {
    std::string left, right;
    if (merge.type() == JsonView::Type::kString) {  // "left right"
      const std::string text = merge.AsString();
      const size_t space = text.find(' ');
      if (space == std::string::npos || text.find(' ', space + 1) != std::string::npos) {
        merge.Fail("expected two tokens separated by one space");
      }
      left = text.substr(0, space);
      right = text.substr(space + 1);
    } else {  // ["left", "right"]
      std::tie(left, right) = merge.AsStringPair();
    }
    const int left_id = model->vocab.Find(left), right_id = model->vocab.Find(right);
    const int result = model->vocab.Find(left + right);
    if (left_id < 0 || right_id < 0 || result < 0) {
      merge.Fail("merge \"" + left + "\" + \"" + right + "\" uses a token outside the vocabulary");
    }
    model->merges.Insert(left_id, right_id, {static_cast<int32_t>(rank), result});
  });
}

void LoadAddedTokens(const JsonView& list, Pipeline* p) {
  list.ForEachElement([&](size_t, const JsonView& t) {
    AddedToken token;
    const long long id = t.Get("id").AsInt();
    if (id < 0 || id > kMaxTokenId) t.Fail("token id out of range");
    token.id = static_cast<int>(id);
    token.content = t.Get("content").AsString();
    if (token.content.empty()) t.Fail("empty added token");
    token.special = BoolOr(t, "special", false);
    token.normalized = BoolOr(t, "normalized", !token.special);
    token.lstrip = BoolOr(t, "lstrip", false);
    token.rstrip = BoolOr(t, "rstrip", false);
    if (BoolOr(t, "single_word", false)) t.Fail("added tokens with single_word: true are not supported");
    const int index = static_cast<int>(p->added_tokens.size());
    (token.normalized ? p->normalized_added : p->raw_added).Add(token.content, index);
    p->added_tokens.push_back(std::move(token));
  });
}

}  // namespace

const std::string& ByteSymbol(uint8_t byte) {
  static const std::array<std::string, 256> symbols = [] {
    std::array<std::string, 256> s;
    char32_t extra = 256;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE;
      unicode::AppendUtf8(s[b], printable ? static_cast<char32_t>(b) : extra++);
    }
    return s;
  }();
  return symbols[byte];
}

int ByteOfSymbol(char32_t symbol) {
  static const std::array<int16_t, 324> bytes = [] {  // the stand-ins are all below U+0144
    std::array<int16_t, 324> t;
    t.fill(-1);
    for (int b = 0; b < 256; ++b) {
      size_t length;
      t[unicode::DecodeOne(ByteSymbol(static_cast<uint8_t>(b)), 0, &length)] = static_cast<int16_t>(b);
    }
    return t;
  }();
  return symbol < bytes.size() ? bytes[symbol] : -1;
}

std::unique_ptr<Pipeline> LoadPipeline(std::string_view text) {
  const JsonView root = json::Parse(text, "tokenizer.json");
  auto p = std::make_unique<Pipeline>();
  std::optional<JsonView> model, added, normalizer, pre_tokenizer, post_processor, decoder;
  for (const auto& [key, value] : root.Members()) {
    if (value.is_null()) continue;
    if (key == "model") model = value;
    if (key == "added_tokens") added = value;
    if (key == "normalizer") normalizer = value;
    if (key == "pre_tokenizer") pre_tokenizer = value;
    if (key == "post_processor") post_processor = value;
    if (key == "decoder") decoder = value;
    if (key == "truncation" || key == "padding") value.Fail("not supported (set it to null)");
  }
  if (!model) root.Fail("missing \"model\"");
  LoadModel(*model, &p->model);
  if (added) LoadAddedTokens(*added, p.get());
  if (normalizer) LoadNormalizer(*normalizer, &p->normalizers);
  if (pre_tokenizer) LoadPreTokenizer(*pre_tokenizer, &p->pre_tokenizers);
  for (size_t i = 0; i < p->pre_tokenizers.size(); ++i) {
    if (p->pre_tokenizers[i].kind != PreTokenizer::Kind::kByteLevel) continue;
    // Splits after the byte mapping would see the stand-in alphabet, not text.
    if (i + 1 != p->pre_tokenizers.size()) pre_tokenizer->Fail("ByteLevel must be the last pre-tokenizer");
    p->byte_level = true;
  }
  for (int b = 0; b < 256; ++b) p->byte_symbol_ids[b] = p->model.vocab.Find(ByteSymbol(static_cast<uint8_t>(b)));
  if (post_processor) {
    bool have_template = false;
    LoadPostProcessor(*post_processor, p.get(), &have_template);
  }
  p->has_decoder = decoder.has_value();
  if (decoder) LoadDecoder(*decoder, &p->decoders);

  p->vocab_size = static_cast<int>(p->model.id_to_token.size());
  for (const AddedToken& t : p->added_tokens) p->vocab_size = std::max(p->vocab_size, t.id + 1);
  p->added_index_by_id.assign(p->vocab_size, -1);
  for (size_t i = 0; i < p->added_tokens.size(); ++i) {
    p->added_index_by_id[p->added_tokens[i].id] = static_cast<int>(i);
  }
  return p;
}

}  // namespace awqcore::tokenizer_detail
