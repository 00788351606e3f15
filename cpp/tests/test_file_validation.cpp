// Tests of what the reader and loader reject beyond the file's structure
// (test_awqbin_file.cpp): text that is not UTF-8, quoted safely in messages;
// paths that are not regular files; a tokenizer that is not JSON; tensors the
// model would not read; values whose meaning bounds them; head counts that
// contradict the model; NaN and infinity in the weights. Also the text checks
// (text_checks.h) on their own, against hand-computed cases.

#include <sys/stat.h>

#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "awqbin_file.h"
#include "awqbin_test_writer.h"
#include "awqcore/awqcore.h"
#include "test_harness.h"
#include "text_checks.h"
#include "tokenizer/json.h"

using awqcore::EscapeForMessage;
using awqcore::IsValidUtf8;

namespace {

// The FormatError message of loading `spec`, or "" if it loaded. Every
// message must be UTF-8 (it becomes a Python str).
std::string LoadError(const FileSpec& spec) {
  try {
    Load(Build(spec));
    return "";
  } catch (const FormatError& e) {
    if (!IsValidUtf8(e.what())) return std::string("message is not UTF-8: ") + e.what();
    return e.what();
  }
}

#define CHECK_LOAD_FAILS(spec, substr)                                                       \
  do {                                                                                      \
    const std::string message_ = LoadError(spec);                                           \
    if (message_.empty() || message_.find(substr) == std::string::npos)                     \
      awqtest::Fail(__FILE__, __LINE__,                                                     \
                    "expected a FormatError with '" + std::string(substr) + "', got '" +     \
                        (message_.empty() ? std::string("loaded") : message_) + "'");       \
  } while (0)

void RenameTensor(FileSpec& spec, const std::string& from, const std::string& to) {
  spec.tensors[TensorIndex(spec, from)].name = to;
}

void RenameKey(FileSpec& spec, const std::string& from, const std::string& to) {
  for (auto& entry : spec.meta) {
    if (entry.first == from) entry.first = to;
  }
}

// Element `index` of an f16/f32 tensor set to the given bit pattern (the
// writer computes the CRC from the bytes, so the CRC stays right).
void SetElementBits(FileSpec& spec, const std::string& name, size_t index, uint32_t bits) {
  TensorEntry& t = spec.tensors[TensorIndex(spec, name)];
  const size_t width = awqcore::DTypeSize(t.dtype);
  std::memcpy(t.bytes.data() + index * width, &bits, width);
}

}  // namespace

// ---- the text checks ----

TEST(utf8_validation_follows_rfc3629) {
  CHECK(IsValidUtf8(""));
  CHECK(IsValidUtf8("llama"));
  CHECK(IsValidUtf8("\xc3\xa9"));              // U+00E9
  CHECK(IsValidUtf8("\xe2\x82\xac"));          // U+20AC
  CHECK(IsValidUtf8("\xf0\x9f\x98\x80"));      // U+1F600
  CHECK(IsValidUtf8("\xf4\x8f\xbf\xbf"));      // U+10FFFF, the last code point
  CHECK(IsValidUtf8(std::string("a\0b", 3)));  // NUL is a code point
  CHECK(!IsValidUtf8("\xff\xfellama"));
  CHECK(!IsValidUtf8("\x80"));              // a lone continuation byte
  CHECK(!IsValidUtf8("\xc3"));              // truncated sequence
  CHECK(!IsValidUtf8("\xc0\xaf"));          // overlong '/'
  CHECK(!IsValidUtf8("\xe0\x80\xaf"));      // overlong '/'
  CHECK(!IsValidUtf8("\xed\xa0\x80"));      // U+D800, a surrogate
  CHECK(!IsValidUtf8("\xf4\x90\x80\x80"));  // U+110000
  CHECK(!IsValidUtf8("\xe2\x28\xa1"));      // bad second byte
}

TEST(escaping_keeps_utf8_and_names_other_bytes) {
  CHECK(EscapeForMessage("model.norm.weight") == "model.norm.weight");
  CHECK(EscapeForMessage("caf\xc3\xa9") == "caf\xc3\xa9");
  CHECK(EscapeForMessage("\xff\xfellama") == "\\xff\\xfellama");
  CHECK(EscapeForMessage(std::string("a\0\n\x7f\\", 5)) == "a\\x00\\x0a\\x7f\\x5c");
  CHECK(EscapeForMessage("\xe2\x82") == "\\xe2\\x82");  // a truncated sequence
  CHECK(EscapeForMessage(std::string(100, 'a'), 80) == std::string(80, 'a') + "...");
  // A sequence cut by the limit is escaped, never split into invalid UTF-8.
  CHECK(EscapeForMessage("ab\xe2\x82\xac", 3) == "ab\\xe2...");
}

// The loader checks tokenizer.json with the tokenizer's reader (tokenizer/json.h).
TEST(json_reader_accepts_json_and_names_the_first_error_byte) {
  for (const char* good : {"{}", "[]", "0", "-0.5e+10", "\"\"", " {\"a\": [1, 2.5, true, false, null]} ",
                           "{\"k\":\"\\u00e9\\n\\\"\"}", "[[[]]]", "{\"a\":{\"b\":{}}}",
                           "\"caf\xc3\xa9\""}) {
    try {
      awqcore::json::Parse(good, "doc");
    } catch (const awqcore::FormatError& e) {
      CHECK(false);
      std::printf("  rejected %s: %s\n", good, e.what());
    }
  }
  struct Case {
    const char* text;
    int byte;  // where the document stops being valid JSON
  };
  for (const Case& c : {Case{"", 0}, Case{"{", 1}, Case{"{\"a\" 1}", 5}, Case{"{\"a\":1,}", 7},
                        Case{"[1,]", 3}, Case{"[1 2]", 3}, Case{"{\"a\":1", 6}, Case{"\"abc", 4},
                        Case{"\"a\nb\"", 2}, Case{"01", 1}, Case{"1.", 2}, Case{"1e", 2},
                        Case{"tru", 0}, Case{"{} {}", 3}, Case{"'a'", 0}}) {
    const std::string expected = "doc: invalid JSON at byte " + std::to_string(c.byte) + ": ";
    std::string got = "(accepted)";
    try {
      awqcore::json::Parse(c.text, "doc");
    } catch (const awqcore::FormatError& e) {
      got = e.what();
    }
    CHECK(got.rfind(expected, 0) == 0);
    if (got.rfind(expected, 0) != 0) {
      std::printf("  %s: expected '%s...', got '%s'\n", c.text, expected.c_str(), got.c_str());
    }
  }
  const int depth = awqcore::json::kMaxDepth;
  try {
    awqcore::json::Parse(std::string(depth, '[') + std::string(depth, ']'), "doc");
  } catch (const awqcore::FormatError& e) {
    CHECK(false);
    std::printf("  %d levels rejected: %s\n", depth, e.what());
  }
  CHECK_THROWS(awqcore::json::Parse(std::string(depth + 10, '[') + std::string(depth + 10, ']'), "doc"),
               awqcore::FormatError, "nested deeper than");
}

// ---- text in the file ----

TEST(text_that_is_not_utf8_is_a_format_error_with_an_escaped_quote) {
  FileSpec spec = TinyModel("llama");
  SetMeta(spec, "general.architecture", Str("\xff\xfellama"));
  CHECK_LOAD_FAILS(spec, "metadata: entry 0 ('general.architecture'): string value '\\xff\\xfellama' is not valid UTF-8");
  spec = TinyModel("llama");
  SetMeta(spec, "general.name", Str("tiny\xc0"));
  CHECK_LOAD_FAILS(spec, "('general.name'): string value 'tiny\\xc0' is not valid UTF-8");
  spec = TinyModel("llama");
  RenameKey(spec, "general.source", "general.\xe9source");
  CHECK_LOAD_FAILS(spec, "metadata: entry 2: key 'general.\\xe9source' is not valid UTF-8");
  spec = TinyModel("llama");
  RenameTensor(spec, "model.norm.weight", "model.norm.\xffweight");
  CHECK_LOAD_FAILS(spec, "name 'model.norm.\\xffweight' is not valid UTF-8");
  // Valid UTF-8 with control bytes is quoted escaped.
  spec = TinyModel("llama");
  SetMeta(spec, "general.architecture", Str("llama\n\x1b[31m"));
  CHECK_LOAD_FAILS(spec, "unknown architecture 'llama\\x0a\\x1b[31m'");
  spec = TinyModel("llama");
  AddTensor(spec, "model.norm\x01", DType::kF32, {kD});
  CHECK_LOAD_FAILS(spec, "tensor 'model.norm\\x01' is in the file but the model does not read it");
  // UTF-8 beyond ASCII is text, and is kept.
  spec = TinyModel("llama");
  SetMeta(spec, "general.name", Str("tiny-\xc3\xa9"));
  CHECK(Load(Build(spec))->config().name == "tiny-\xc3\xa9");
}

TEST(messages_name_the_file) {
  const Bytes bytes = Build(TinyModel("llama"));
  const std::string path = WriteFile(Bytes(bytes.begin(), bytes.begin() + 100), "short.awqbin");
  CHECK_THROWS(Model::Load(path), FormatError, "awqbin: '" + path + "': truncated file");
}

TEST(a_fifo_is_rejected_without_blocking) {
  const std::string path = TempDir() + "/model.fifo";
  CHECK(::mkfifo(path.c_str(), 0600) == 0);
  // Without O_NONBLOCK open() waits for a writer that never comes: the test
  // hangs (ctest's timeout fails it).
  CHECK_THROWS(Model::Load(path), Error, "is not a regular file (a FIFO)");
  CHECK_THROWS(Model::Load(TempDir()), Error, "is not a regular file (a directory)");
  CHECK_THROWS(Model::Load("/dev/null"), Error, "is not a regular file (a character device)");
}

// ---- the tokenizer ----

TEST(tokenizer_json_must_parse) {
  FileSpec spec = TinyModel("llama");
  SetMeta(spec, "tokenizer.json", Str(R"({"version":"1.0","model":{"type":"BPE",)"));
  CHECK_LOAD_FAILS(spec, "metadata key 'tokenizer.json': invalid JSON at byte 39: expected a member name");
  spec = TinyModel("llama");
  SetMeta(spec, "tokenizer.json", Str(""));  // no tokenizer
  CHECK(LoadError(spec).empty());
}

// ---- tensors the model does not read ----

TEST(tensors_the_model_would_not_read_are_rejected_by_name) {
  FileSpec spec = TinyModel("llama");
  SetMeta(spec, "model.num_layers", Int(1));
  CHECK_LOAD_FAILS(spec, "tensor 'model.layers.1.input_layernorm.weight' is in the file but the model "
                         "does not read it (not used by architecture llama with model.num_layers=1");
  spec = TinyModel("llama");
  AddTensor(spec, "model.extra.weight", DType::kF32, {kD});
  CHECK_LOAD_FAILS(spec, "tensor 'model.extra.weight' is in the file but the model does not read it "
                         "(not used by architecture llama)");
  spec = TinyModel("llama");
  SetMeta(spec, "model.tie_word_embeddings", Int(1));
  CHECK_LOAD_FAILS(spec, "tensor 'lm_head.weight' is in the file but the model does not read it "
                         "(model.tie_word_embeddings=1: the logits use model.embed_tokens)");
  spec = TinyModel("llama");
  AddTensor(spec, "model.layers.0.self_attn.q_proj.bias", DType::kF32, {kHeads * kHeadDim});
  CHECK_LOAD_FAILS(spec, "tensor 'model.layers.0.self_attn.q_proj.bias' is in the file but the model "
                         "does not read it (not used by architecture llama with model.num_layers=2, "
                         "model.attention_bias=0)");
}

// ---- values that contradict the model ----

TEST(head_counts_that_trade_against_head_dim_are_rejected) {
  // H=32, KV=16, hd=2 keeps every q/k/v/o shape of H=4, KV=2, hd=16 (d=64).
  FileSpec spec = TinyModel("llama");
  SetMeta(spec, "model.num_heads", Int(32));
  SetMeta(spec, "model.num_kv_heads", Int(16));
  SetMeta(spec, "model.head_dim", Int(2));
  CHECK_LOAD_FAILS(spec, "model.head_dim=2 is below 8 (model.num_heads=32, model.num_kv_heads=16, "
                         "model.hidden_size=64)");
  // H=8, KV=4, hd=8: the narrowest heads accepted, same shapes, loads.
  SetMeta(spec, "model.num_heads", Int(8));
  SetMeta(spec, "model.num_kv_heads", Int(4));
  SetMeta(spec, "model.head_dim", Int(8));
  CHECK(LoadError(spec).empty());
}

TEST(zero_points_outside_four_bits_are_rejected) {
  FileSpec spec = TinyModel("llama");
  spec.tensors[TensorIndex(spec, "model.layers.1.mlp.down_proj.zeros")].bytes[77] = 16;
  CHECK_LOAD_FAILS(spec, "tensor 'model.layers.1.mlp.down_proj.zeros': element 77 is 16, outside the "
                         "4-bit range 0..15");
}

// ---- non-finite weights ----

TEST(nan_and_infinity_in_weights_are_rejected_by_tensor) {
  struct Case {
    const char* arch;
    const char* tensor;
    size_t element;
    uint32_t bits;
    const char* message;
  };
  const uint32_t f16_nan = 0x7e00, f16_inf = 0xfc00, f32_nan = 0x7fc00000, f32_inf = 0x7f800000;
  for (const Case& c : {
           Case{"llama", "model.layers.1.self_attn.k_proj.scales", 5, f16_nan,
                "tensor 'model.layers.1.self_attn.k_proj.scales': element 5 of f16 [32, 2] is NaN or infinite"},
           Case{"llama", "model.norm.weight", 63, f32_inf,
                "tensor 'model.norm.weight': element 63 of f32 [64] is NaN or infinite"},
           Case{"llama", "model.embed_tokens.weight", 3199, f16_inf,
                "tensor 'model.embed_tokens.weight': element 3199 of f16 [50, 64]"},
           Case{"llama", "lm_head.weight", 0, f16_nan, "tensor 'lm_head.weight': element 0 of"},
           Case{"qwen2", "model.layers.0.self_attn.v_proj.bias", 31, f32_nan,
                "tensor 'model.layers.0.self_attn.v_proj.bias': element 31 of f32 [32]"},
       }) {
    FileSpec spec = TinyModel(c.arch);
    SetElementBits(spec, c.tensor, c.element, c.bits);
    CHECK_LOAD_FAILS(spec, c.message);
  }
  // Element 4096 is past the first block of the pass; the int8 tables' f16
  // scales are checked too.
  FileSpec spec = TinyModel("llama", /*int8_tables=*/true);
  SetElementBits(spec, "model.embed_tokens.weight_q8_scales", 99, f16_nan);
  CHECK_LOAD_FAILS(spec, "tensor 'model.embed_tokens.weight_q8_scales': element 99 of f16 [50, 2]");
  spec = TinyModel("llama");
  SetElementBits(spec, "lm_head.weight", 3000, 0x7c01);  // a signalling NaN
  CHECK_LOAD_FAILS(spec, "element 3000 of f16 [50, 64] is NaN");
  // The largest finite values and the smallest subnormals load.
  spec = TinyModel("llama");
  SetElementBits(spec, "lm_head.weight", 7, 0x7bff);
  SetElementBits(spec, "lm_head.weight", 8, 0x0001);
  SetElementBits(spec, "model.norm.weight", 1, 0x7f7fffff);
  SetElementBits(spec, "model.norm.weight", 2, 0x80000001);
  CHECK(LoadError(spec).empty());
}

TEST(non_finite_check_scans_every_element_of_long_tensors) {
  // FirstNonFinite on hand-made tensors of 1.0 with one infinity, at each
  // position around the 4096-element blocks of the pass.
  for (size_t n : {1, 4095, 4096, 4097, 12289}) {
    for (size_t at : {size_t{0}, n / 2, n - 1}) {
      std::vector<uint16_t> f16(n, 0x3c00);
      std::vector<uint32_t> f32(n, 0x3f800000);
      const awqcore::TensorView f16_view{"a", DType::kF16, {n}, reinterpret_cast<const uint8_t*>(f16.data()), n * 2, 0};
      const awqcore::TensorView f32_view{"b", DType::kF32, {n}, reinterpret_cast<const uint8_t*>(f32.data()), n * 4, 0};
      CHECK(awqcore::FirstNonFinite(f16_view) == -1 && awqcore::FirstNonFinite(f32_view) == -1);
      f16[at] = 0x7c00;      // +inf
      f32[at] = 0xff800000;  // -inf
      CHECK(awqcore::FirstNonFinite(f16_view) == static_cast<int64_t>(at));
      CHECK(awqcore::FirstNonFinite(f32_view) == static_cast<int64_t>(at));
    }
  }
}

AWQCORE_TEST_MAIN()
