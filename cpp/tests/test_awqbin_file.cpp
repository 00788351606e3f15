// Tests of the .awqbin reader (awqbin_file.cpp) and model loader
// (model_loader.cpp, model.cpp).
//
// The files are made by awqbin_test_writer.h, written from docs/format.md and
// sharing no code with the reader (it even has its own bitwise CRC-32), so a
// misreading of the spec in one is caught by the other. Invalid files are made
// by editing a valid one while keeping every other field (and CRC) right, so
// each test reaches the check it is aimed at.

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <functional>
#include <fstream>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "awqbin_file.h"
#include "awqcore/awqcore.h"
#include "model_impl.h"
#include "cpu_features.h"
#include "cpu_memory.h"
#include "model_loader.h"
#include "ops/int4_tiles.h"
#include "ops/q8_activations.h"
#include "awqbin_test_writer.h"
#include "test_harness.h"

namespace {

// Loads with verification on; "" if FormatError containing `substr` was
// thrown, otherwise what happened instead. For loops that try many files.
std::string LoadFailure(const std::string& path, const std::string& substr) {
  try {
    Model::Load(path);
    return "loaded";
  } catch (const FormatError& e) {
    return std::string(e.what()).find(substr) == std::string::npos ? e.what() : "";
  } catch (const std::exception& e) {
    return std::string("non-FormatError: ") + e.what();
  }
}

bool Aligned64(const void* p) { return reinterpret_cast<uintptr_t>(p) % 64 == 0; }

}  // namespace

// ---- CRC-32 ----

TEST(crc32_matches_zlib_and_chains) {
  const char* check = "123456789";  // the standard CRC-32 check value
  CHECK(awqcore::Crc32(reinterpret_cast<const uint8_t*>(check), 9) == 0xCBF43926u);
  CHECK(awqcore::Crc32(nullptr, 0) == 0u);
  std::mt19937 rng(7);
  Bytes data(4099);
  for (auto& b : data) b = static_cast<uint8_t>(rng());
  // Every length 0..80 and start 0..7 covers the 8-byte body and byte tail.
  for (size_t start = 0; start < 8; ++start) {
    for (size_t n = 0; n <= 80; ++n) {
      CHECK(awqcore::Crc32(data.data() + start, n) == ReferenceCrc32(data.data() + start, n));
    }
  }
  uint32_t whole = awqcore::Crc32(data.data(), data.size());
  CHECK(whole == ReferenceCrc32(data.data(), data.size()));
  CHECK(awqcore::Crc32(data.data() + 1001, data.size() - 1001, awqcore::Crc32(data.data(), 1001)) ==
        whole);
}

// ---- valid files ----

TEST(valid_llama_file_loads_with_config_and_weight_pointers) {
  FileSpec spec = TinyModel("llama");
  Sections sections = Encode(spec);
  auto model = Load(Assemble(sections));
  const awqcore::ModelConfig& c = model->config();
  CHECK(c.architecture == "llama");
  CHECK(c.name == "tiny-llama");
  CHECK(c.vocab_size == 50 && c.hidden_size == 64 && c.intermediate_size == 128);
  CHECK(c.num_layers == 2 && c.num_heads == 4 && c.num_kv_heads == 2 && c.head_dim == 16);
  CHECK(c.max_position_embeddings == 256);
  CHECK_NEAR(c.rope_theta, 1e6, 1e-3);
  CHECK_NEAR(c.rms_norm_eps, 1e-6, 1e-12);
  CHECK(!c.tie_word_embeddings && !c.attention_bias);
  CHECK(c.quant_method == "awq" && c.bits == 4 && c.group_size == 32);
  CHECK(c.bos_token_id == 1);
  CHECK((c.eos_token_ids == std::vector<int>{2, 3}));
  CHECK(model->metadata_string("tokenizer.json") == std::string(kTokenizerJson));
  CHECK(model->metadata_string("tokenizer.chat_template") == std::string());
  CHECK(!model->metadata_string("model.hidden_size").has_value());  // not a string
  CHECK(!model->metadata_string("no.such.key").has_value());
  CHECK(model->weight_bytes() == sections.data.size());

  const awqcore::ModelWeights& w = model->impl().weights;
  const auto& t = spec.tensors;
  CHECK(SameBytes(w.embed.f16, t[TensorIndex(spec, "model.embed_tokens.weight")].bytes, 64));
  CHECK(SameBytes(w.lm_head.f16, t[TensorIndex(spec, "lm_head.weight")].bytes, 64));
  CHECK(w.embed.q8 == nullptr && w.lm_head.q8 == nullptr);
  CHECK(w.embed.rows == 50 && w.embed.d == 64 && w.lm_head.rows == 50 && w.lm_head.d == 64);
  CHECK(w.lm_head.data() != w.embed.data());
  CHECK(SameBytes(w.final_norm, t[TensorIndex(spec, "model.norm.weight")].bytes, 256));
  CHECK(w.layers.size() == 2);
  const awqcore::LayerWeights& layer1 = w.layers[1];
  // The codes as rows: the loader regroups them in place at the AVX-512
  // VNNI level (ops/int4_tiles.h: layout kTiles).
  CHECK(SameBytes(awqcore::Int4RowCodes(layer1.down).data(),
                  t[TensorIndex(spec, "model.layers.1.mlp.down_proj.qweight")].bytes, 64));
  const bool tiles = awqcore::DetectedIsa() == awqcore::Isa::kAvx512Vnni && !awqcore::KeepWeightsMapped() &&
                     layer1.down.in % awqcore::kQ8Span == 0;
  CHECK(layer1.down.layout == (tiles ? awqcore::Int4Layout::kTiles : awqcore::Int4Layout::kRows));
  CHECK(SameBytes(layer1.k.scales,
                  t[TensorIndex(spec, "model.layers.1.self_attn.k_proj.scales")].bytes, 8));
  CHECK(SameBytes(layer1.up.zeros, t[TensorIndex(spec, "model.layers.1.mlp.up_proj.zeros")].bytes,
                  8));
  CHECK(SameBytes(layer1.post_norm,
                  t[TensorIndex(spec, "model.layers.1.post_attention_layernorm.weight")].bytes,
                  256));
  CHECK(layer1.q.out == 64 && layer1.q.in == 64 && layer1.k.out == 32 && layer1.v.out == 32);
  CHECK(layer1.o.out == 64 && layer1.o.in == 64 && layer1.gate.out == 128);
  CHECK(layer1.down.out == 64 && layer1.down.in == 128 && layer1.down.group_size == 32);
  CHECK(layer1.q.bias == nullptr && layer1.v.bias == nullptr);
  CHECK(Aligned64(w.embed.f16) && Aligned64(layer1.down.scales) && Aligned64(w.final_norm));
}

TEST(valid_qwen2_file_loads_biases_and_ties_lm_head) {
  FileSpec spec = TinyModel("qwen2");
  auto model = Load(Build(spec));
  CHECK(model->config().architecture == "qwen2");
  CHECK(model->config().tie_word_embeddings && model->config().attention_bias);
  const awqcore::ModelWeights& w = model->impl().weights;
  CHECK(w.lm_head.f16 == w.embed.f16 && w.lm_head.f16 != nullptr);
  for (int l = 0; l < 2; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".self_attn.";
    const awqcore::LayerWeights& layer = w.layers[l];
    CHECK(SameBytes(layer.q.bias, spec.tensors[TensorIndex(spec, p + "q_proj.bias")].bytes, 256));
    CHECK(SameBytes(layer.k.bias, spec.tensors[TensorIndex(spec, p + "k_proj.bias")].bytes, 128));
    CHECK(SameBytes(layer.v.bias, spec.tensors[TensorIndex(spec, p + "v_proj.bias")].bytes, 128));
    CHECK(layer.o.bias == nullptr && layer.up.bias == nullptr);
  }
}

TEST(awqbin_file_exposes_metadata_and_tensors) {
  FileSpec spec = TinyModel("llama");
  Bytes bytes = Build(spec);
  auto file = AwqbinFile::Open(WriteFile(bytes), true);
  CHECK(file->version() == 1 && file->file_size() == bytes.size());
  CHECK(file->tensors().size() == spec.tensors.size());
  CHECK(file->tensors()[3].name == spec.tensors[3].name);  // directory order kept
  CHECK(file->RequireString("general.source") == "test_awqbin_file.cpp");
  CHECK(file->RequireFloat("model.hidden_size") == 64.0);  // an i64 is accepted
  CHECK(file->GetInt("model.num_heads") == 4);
  CHECK(!file->GetInt("no.such.key").has_value());
  CHECK((file->GetIntArray("tokenizer.eos_token_ids") == std::vector<int64_t>{2, 3}));
  CHECK(file->Find("model.norm.weight") != nullptr && file->Find("nope") == nullptr);
  CHECK_THROWS(file->RequireInt("general.name"), FormatError,
               "metadata key 'general.name' has type string, expected i64");
  CHECK_THROWS(file->RequireInt("no.such.key"), FormatError,
               "metadata key 'no.such.key' is missing");
  CHECK_THROWS(file->Require("model.norm.weight", DType::kF32, {63}), FormatError,
               "tensor 'model.norm.weight': expected f32 [63], found f32 [64]");
  CHECK_THROWS(file->Require("nope", DType::kF32, {1}), FormatError, "missing tensor 'nope'");
}

// ---- truncation and I/O ----

TEST(truncated_files_are_rejected_at_every_length) {
  Bytes bytes = Build(TinyModel("llama"));
  const std::string path = WriteFile(bytes, "truncated.awqbin");
  // Every 7th length down to 256, then every length below: ~8000 loads, made
  // cheap by shrinking one file in place instead of writing each one.
  int failures = 0;
  for (size_t n = bytes.size() - 1;; n = n > 256 ? n - 7 : n - 1) {
    std::filesystem::resize_file(path, n);
    std::string failure = LoadFailure(path, "truncated file");
    if (!failure.empty() && failures++ == 0) std::printf("  length %zu: %s\n", n, failure.c_str());
    if (n == 0) break;
  }
  CHECK(failures == 0);
  CHECK_THROWS(Load(Bytes{}), FormatError,
               "truncated file: 0 bytes is smaller than the 128-byte preamble");
  bytes.resize(bytes.size() - 1000);
  CHECK_THROWS(Load(bytes), FormatError,
               "truncated file: header says file_size=" + std::to_string(bytes.size() + 1000) +
                   " but file has " + std::to_string(bytes.size()) + " bytes");
}

TEST(appended_bytes_are_rejected) {
  Bytes bytes = Build(TinyModel("llama"));
  bytes.push_back(0);
  CHECK_THROWS(Load(bytes), FormatError, "(trailing data)");
}

TEST(missing_file_and_directory_are_io_errors) {
  for (const std::string& path : {TempDir() + "/does_not_exist.awqbin", TempDir()}) {
    try {
      Model::Load(path);
      CHECK(false);
    } catch (const FormatError&) {
      CHECK(false);  // I/O problems are not format problems
    } catch (const Error& e) {
      CHECK(std::string(e.what()).find(path) != std::string::npos);
    }
  }
  CHECK_THROWS(Model::Load(TempDir() + "/does_not_exist.awqbin"), Error,
               "No such file or directory");
  CHECK_THROWS(Model::Load(TempDir()), Error, "is not a regular file");
}

// ---- the preamble ----

TEST(bad_magic_and_version_are_named) {
  Bytes bytes = Build(TinyModel("llama"));
  bytes[3] = 'X';
  CHECK_THROWS(Load(bytes), FormatError, "awqbin: '" + WriteFile(bytes) + "': bad magic (not an .awqbin file)");
  CHECK_THROWS(Load(Bytes{'{', '"', 'a', '"', ':', ' ', '1', '}', '\n'}), FormatError, "bad magic");
  FileSpec spec = TinyModel("llama");
  spec.version = 2;
  CHECK_THROWS(Load(Build(spec)), FormatError,
               "unsupported version 2 (this runtime reads version 1)");
}

TEST(corrupt_preamble_fails_its_crc) {
  Bytes bytes = Build(TinyModel("llama"));
  bytes[25] ^= 0x01;  // meta_size, CRC not updated
  CHECK_THROWS(Load(bytes), FormatError, "preamble CRC-32 mismatch");
}

TEST(inconsistent_preamble_fields_are_named) {
  const Bytes valid = Build(TinyModel("llama"));
  const uint64_t data_offset = DataOffset(Encode(TinyModel("llama")));
  struct Case {
    size_t at;
    int width;
    uint64_t value;
    std::string message;
  };
  const std::vector<Case> cases = {
      {12, 4, 64, "preamble_size=64 (expected 128)"},
      {16, 8, 0, "meta_offset=0 (expected 128)"},
      {24, 8, ~uint64_t{0}, "meta_size=18446744073709551615 at meta_offset=128 runs past the end"},
      {32, 8, 129, "dir_offset=129 but meta_offset + meta_size = "},
      {40, 8, ~uint64_t{0} - 63, "dir_size=18446744073709551552 at dir_offset="},
      {48, 8, data_offset + 32,
       "data_offset=" + std::to_string(data_offset + 32) + " is not a multiple of 64"},
      {48, 8, 128, "data_offset=128 is outside [dir_offset + dir_size, file_size]"},
      {56, 8, valid.size() - data_offset - 64,
       "data_size=" + std::to_string(valid.size() - data_offset - 64)},
  };
  for (const Case& c : cases) {
    Bytes bytes = valid;
    PatchPreamble(bytes, c.at, c.value, c.width);
    CHECK_THROWS(Load(bytes), FormatError, c.message);
  }
  Bytes bytes = valid;
  bytes[100] = 1;  // reserved; outside the preamble CRC
  CHECK_THROWS(Load(bytes), FormatError, "reserved preamble byte 100 is 1, not 0");
  Sections s = Encode(TinyModel("llama"));
  const uint64_t dir_end = 128 + s.meta.size() + s.dir.size();
  CHECK(dir_end < DataOffset(s));  // the tiny model's layout has padding to corrupt
  bytes = valid;
  bytes[dir_end] = 0xAB;
  CHECK_THROWS(Load(bytes), FormatError,
               "padding byte " + std::to_string(dir_end) + " before data_offset is not 0");
}

// ---- section CRCs and data CRCs ----

TEST(corrupt_metadata_and_directory_bytes_fail_their_crcs) {
  Sections s = Encode(TinyModel("llama"));
  Bytes bytes = Assemble(s);
  bytes[128 + 40] ^= 0x10;
  CHECK_THROWS(Load(bytes), FormatError, "metadata CRC-32 mismatch: meta_crc32=0x");
  bytes = Assemble(s);
  bytes[128 + s.meta.size() + 10] ^= 0x10;
  CHECK_THROWS(Load(bytes), FormatError, "tensor directory CRC-32 mismatch");
}

TEST(corrupt_tensor_data_is_caught_only_with_verification) {
  FileSpec spec = TinyModel("llama");
  Sections s = Encode(spec);
  const size_t index = TensorIndex(spec, "model.layers.1.mlp.down_proj.qweight");
  Bytes bytes = Assemble(s);
  const uint64_t at = DataOffset(s) + s.offsets[index] + 100;
  bytes[at] ^= 0xFF;
  CHECK_THROWS(Load(bytes), FormatError,
               "tensor 'model.layers.1.mlp.down_proj.qweight': data CRC-32 mismatch");
  auto model = Load(bytes, /*verify=*/false);
  CHECK(awqcore::Int4RowCodes(model->impl().weights.layers[1].down)[100] ==
        (spec.tensors[index].bytes[100] ^ 0xFF));
}

// ---- the directory ----

TEST(tensor_layout_errors_are_named) {
  const std::string norm = "model.norm.weight";
  FileSpec spec = TinyModel("llama");
  const uint64_t data_size = Encode(spec).data.size();
  spec.tensors[TensorIndex(spec, norm)].offset_override = RoundUp64(data_size);
  CHECK_THROWS(Load(Build(spec)), FormatError,
               "tensor 'model.norm.weight': offset " + std::to_string(RoundUp64(data_size)) +
                   " + nbytes 256 runs past the end of the data section");
  spec = TinyModel("llama");
  spec.tensors.back().offset_override = ~uint64_t{63};  // offset + nbytes wraps in u64
  CHECK_THROWS(Load(Build(spec)), FormatError, "runs past the end of the data section");

  spec = TinyModel("llama");
  spec.tensors[TensorIndex(spec, norm)].nbytes_override = 260;
  CHECK_THROWS(Load(Build(spec)), FormatError,
               "tensor 'model.norm.weight': nbytes=260 does not match f32 [64]");
  spec = TinyModel("llama");
  spec.tensors[TensorIndex(spec, norm)].dims = {uint64_t{1} << 40, uint64_t{1} << 40};
  CHECK_THROWS(Load(Build(spec)), FormatError, "(size overflows)");

  spec = TinyModel("llama");
  spec.tensors[1].offset_override = 0;  // tensor 0 (the embedding) starts at 0
  CHECK_THROWS(Load(Build(spec)), FormatError,
               "tensor 'model.layers.0.input_layernorm.weight': offset 0 overlaps or precedes "
               "the previous tensor 'model.embed_tokens.weight' (which ends at 6400)");
  spec = TinyModel("llama");
  const uint64_t misaligned = Encode(spec).offsets[1] + 8;
  spec.tensors[1].offset_override = misaligned;
  CHECK_THROWS(Load(Build(spec)), FormatError,
               "tensor 'model.layers.0.input_layernorm.weight': offset " +
                   std::to_string(misaligned) + " is not a multiple of 64");

  spec = TinyModel("llama");
  spec.tensors.push_back(spec.tensors[2]);
  CHECK_THROWS(Load(Build(spec)), FormatError,
               "duplicate tensor name '" + spec.tensors[2].name + "'");
  spec = TinyModel("llama");
  spec.tensors[0].dtype = static_cast<DType>(5);  // the first code after i8
  CHECK_THROWS(Load(Build(spec)), FormatError,
               "tensor 'model.embed_tokens.weight': unknown dtype 5 (expected 0..4)");
  spec = TinyModel("llama");
  spec.tensors[0].dims = {1, 1, 1, 1, 6400 / 2};
  CHECK_THROWS(Load(Build(spec)), FormatError, "ndim 5 is outside 1..4");
  spec = TinyModel("llama");
  spec.tensors[0].name = std::string(256, 'x');
  CHECK_THROWS(Load(Build(spec)), FormatError, "name length 256 is outside 1..255");
}

// Sections cut short while the preamble and CRCs still agree with them: the
// parser itself must stop at the section's end (this is the case run under
// AddressSanitizer/valgrind for out-of-bounds reads).
TEST(sections_shorter_than_their_entries_are_rejected) {
  const Sections s = Encode(TinyModel("llama"));
  int failures = 0;
  for (size_t n = 0; n < s.meta.size(); ++n) {
    Sections cut = s;
    cut.meta.resize(n);
    std::string failure =
        LoadFailure(WriteFile(Assemble(cut)), "runs past the end of the section (meta_size=");
    if (!failure.empty() && failures++ == 0)
      std::printf("  meta cut %zu: %s\n", n, failure.c_str());
  }
  for (size_t n = 0; n < s.dir.size(); ++n) {
    Sections cut = s;
    cut.dir.resize(n);
    std::string failure =
        LoadFailure(WriteFile(Assemble(cut)), "runs past the end of the section (dir_size=");
    if (!failure.empty() && failures++ == 0) std::printf("  dir cut %zu: %s\n", n, failure.c_str());
  }
  CHECK(failures == 0);
  Sections longer = s;
  longer.meta.push_back(0);
  CHECK_THROWS(Load(Assemble(longer)), FormatError,
               "metadata: 1 bytes left after the last of 23 entries");
}

// Every byte of the metadata and directory flipped, CRCs re-signed: whatever
// the parser reads, it must end in success or FormatError, never a crash,
// bad_alloc, or another exception.
TEST(flipped_section_bytes_give_only_format_errors) {
  const Sections s = Encode(TinyModel("qwen2"));
  // Sizes never change, so each variant only rewrites the bytes before the
  // data section of one file.
  const std::string path = WriteFile(Assemble(s), "flipped.awqbin");
  int loaded = 0, rejected = 0, other = 0;
  auto attempt = [&](const Sections& variant) {
    const Bytes bytes = Assemble(variant);
    std::fstream file(path, std::ios::binary | std::ios::in | std::ios::out);
    file.write(reinterpret_cast<const char*>(bytes.data()), DataOffset(variant));
    file.close();
    if (!file) throw std::runtime_error("test bug: cannot rewrite " + path);
    try {
      Model::Load(path, awqcore::LoadOptions{false});
      loaded++;
    } catch (const FormatError&) {
      rejected++;
    } catch (const std::exception& e) {
      if (other++ == 0) std::printf("  unexpected: %s\n", e.what());
    }
  };
  for (uint8_t mask : {uint8_t{0xFF}, uint8_t{0x01}}) {
    for (size_t i = 0; i < s.meta.size(); ++i) {
      Sections variant = s;
      variant.meta[i] ^= mask;
      attempt(variant);
    }
    for (size_t i = 0; i < s.dir.size(); ++i) {
      Sections variant = s;
      variant.dir[i] ^= mask;
      attempt(variant);
    }
  }
  CHECK(other == 0);
  CHECK(rejected > 0);
  CHECK(loaded > 0);  // e.g. a changed byte of general.source's value still loads
}

// ---- the model loader ----

TEST(missing_tensors_are_named_with_the_architecture) {
  FileSpec spec = TinyModel("llama");
  spec.tensors.erase(spec.tensors.begin() + TensorIndex(spec, "model.layers.1.mlp.up_proj.scales"));
  CHECK_THROWS(
      Load(Build(spec)), FormatError,
      "missing tensor 'model.layers.1.mlp.up_proj.scales' required by architecture llama");
  spec = TinyModel("llama");
  spec.tensors.pop_back();  // lm_head.weight: llama here is untied
  CHECK_THROWS(Load(Build(spec)), FormatError,
               "missing tensor 'lm_head.weight' required by architecture llama");
  spec = TinyModel("llama");
  SetMeta(spec, "model.num_layers", Int(1 << 24));  // must fail at layer 2, not allocate 16M layers
  CHECK_THROWS(
      Load(Build(spec)), FormatError,
      "missing tensor 'model.layers.2.input_layernorm.weight' required by architecture llama");
  spec = TinyModel("qwen2");
  spec.tensors.erase(spec.tensors.begin() +
                     TensorIndex(spec, "model.layers.0.self_attn.k_proj.bias"));
  CHECK_THROWS(
      Load(Build(spec)), FormatError,
      "missing tensor 'model.layers.0.self_attn.k_proj.bias' required by architecture qwen2");
}

TEST(wrong_tensor_dtype_or_shape_is_named) {
  FileSpec spec = TinyModel("llama");
  AddTensor(spec, "model.embed_tokens.weight", DType::kF32, {kVocab, kD});
  std::swap(spec.tensors.front(), spec.tensors.back());
  spec.tensors.pop_back();
  CHECK_THROWS(Load(Build(spec)), FormatError,
               "tensor 'model.embed_tokens.weight': expected f16 [50, 64], found f32 [50, 64]");
  spec = TinyModel("llama");
  // [32, 4] holds as many bytes as the expected [64, 2], so only Require can object.
  spec.tensors[TensorIndex(spec, "model.layers.0.self_attn.q_proj.scales")].dims = {32, 4};
  CHECK_THROWS(
      Load(Build(spec)), FormatError,
      "tensor 'model.layers.0.self_attn.q_proj.scales': expected f16 [64, 2], found f16 [32, 4]");
}

TEST(bad_int8_tables_are_named) {
  struct Case {
    std::string what;
    std::function<void(FileSpec&)> edit;
    std::string message;
  };
  auto tensor = [](FileSpec& spec, const std::string& name) -> TensorEntry& {
    return spec.tensors[TensorIndex(spec, name)];
  };
  auto erase = [](FileSpec& spec, const std::string& name) {
    spec.tensors.erase(spec.tensors.begin() + TensorIndex(spec, name));
  };
  const std::vector<Case> cases = {
      {"codes stored as u8",
       [&](FileSpec& s) { tensor(s, "model.embed_tokens.weight_q8").dtype = DType::kU8; },
       "tensor 'model.embed_tokens.weight_q8': expected i8 [50, 64], found u8 [50, 64]"},
      {"codes transposed",  // same bytes, so only the loader can object
       [&](FileSpec& s) { tensor(s, "lm_head.weight_q8").dims = {64, 50}; },
       "tensor 'lm_head.weight_q8': expected i8 [50, 64], found i8 [64, 50]"},
      {"scales stored as f32 (same bytes as f16 [50, 2])",
       [&](FileSpec& s) {
         TensorEntry& e = tensor(s, "lm_head.weight_q8_scales");
         e.dtype = DType::kF32;
         e.dims = {50, 1};
       },
       "tensor 'lm_head.weight_q8_scales': expected f16 [50, 2], found f32 [50, 1]"},
      {"scales per 16 columns",
       [&](FileSpec& s) {
         TensorEntry& e = tensor(s, "model.embed_tokens.weight_q8_scales");
         e.dims = {50, 4};
         e.bytes.resize(50 * 4 * 2);
       },
       "tensor 'model.embed_tokens.weight_q8_scales': expected f16 [50, 2], found f16 [50, 4]"},
      {"scales missing", [&](FileSpec& s) { erase(s, "lm_head.weight_q8_scales"); },
       "missing tensor 'lm_head.weight_q8_scales' required by architecture llama"},
      {"codes missing", [&](FileSpec& s) { erase(s, "model.embed_tokens.weight_q8"); },
       "missing tensor 'model.embed_tokens.weight_q8' required by architecture llama"},
      {"both forms",
       [&](FileSpec& s) { AddTensor(s, "model.embed_tokens.weight", DType::kF16, {kVocab, kD}); },
       "tensors 'model.embed_tokens.weight' and 'model.embed_tokens.weight_q8': the file holds "
       "both forms of one table"},
      {"both forms, f16 + scales only",
       [&](FileSpec& s) {
         erase(s, "lm_head.weight_q8");
         AddTensor(s, "lm_head.weight", DType::kF16, {kVocab, kD});
       },
       "tensors 'lm_head.weight' and 'lm_head.weight_q8': the file holds both forms"},
  };
  for (const Case& c : cases) {
    FileSpec spec = TinyModel("llama", true);
    c.edit(spec);
    std::printf("  %s\n", c.what.c_str());
    CHECK_THROWS(Load(Build(spec)), FormatError, c.message);
  }
  // A width that is not a multiple of 32 cannot pass ReadModelConfig (d is a
  // multiple of the group size, 32, 64 or 128), so the loader's own check is
  // reached with a config edited after it.
  auto file = AwqbinFile::Open(WriteFile(Build(TinyModel("llama", true))), true);
  awqcore::ModelConfig config = awqcore::ReadModelConfig(*file);
  config.hidden_size = 48;
  CHECK_THROWS(awqcore::LoadModelWeights(*file, config), FormatError,
               "tensor 'model.embed_tokens.weight_q8': model.hidden_size=48 is not a multiple of 32");
}

TEST(metadata_errors_are_named) {
  FileSpec spec = TinyModel("llama");
  SetMeta(spec, "general.architecture", Str("gemma2"));
  CHECK_THROWS(Load(Build(spec)), FormatError,
               "unknown architecture 'gemma2' (supported: llama, mistral, qwen2, qwen3, gemma3, mixtral, qwen3_moe)");
  spec = TinyModel("llama");
  spec.meta.emplace_back("model.hidden_size", Int(64));
  CHECK_THROWS(Load(Build(spec)), FormatError, "metadata: duplicate key 'model.hidden_size'");
  spec = TinyModel("llama");
  spec.meta.erase(std::find_if(spec.meta.begin(), spec.meta.end(), [](const auto& entry) {
    return entry.first == "model.num_layers";
  }));
  CHECK_THROWS(Load(Build(spec)), FormatError, "metadata key 'model.num_layers' is missing");
  spec = TinyModel("llama");
  SetMeta(spec, "model.hidden_size", Str("64"));
  CHECK_THROWS(Load(Build(spec)), FormatError,
               "metadata key 'model.hidden_size' has type string, expected i64");
  spec = TinyModel("llama");
  MetaValue bad_type = Int(0);
  bad_type.type = static_cast<MetaValue::Type>(7);
  SetMeta(spec, "general.source", bad_type);
  CHECK_THROWS(Load(Build(spec)), FormatError, "metadata: key 'general.source' has unknown type 7");
}

TEST(bad_hyperparameters_are_named) {
  struct Case {
    std::string key;
    MetaValue value;
    std::string message;
  };
  const std::vector<Case> cases = {
      {"model.hidden_size", Int(0), "model.hidden_size=0 must be in 1..2147483647"},
      {"model.num_layers", Int(int64_t{1} << 31), "model.num_layers=2147483648 must be in 1.."},
      {"model.num_kv_heads", Int(3), "model.num_kv_heads=3 does not divide model.num_heads=4"},
      {"model.head_dim", Int(15), "model.head_dim=15 must be even"},
      {"model.rope_theta", Float(0.0), "model.rope_theta=0 is outside [100, 1e+10] (a rotary base"},
      {"model.rope_theta", Float(1e300), "model.rope_theta=1e+300 is outside [100, 1e+10]"},
      {"model.rope_theta", Float(std::nan("")), "model.rope_theta=nan is outside"},
      {"model.rope_theta", Float(1.401298464324817e-45), "model.rope_theta=1.4013e-45 is outside"},
      {"model.rope_theta", Float(3.4028234663852886e38), "model.rope_theta=3.40282e+38 is outside"},
      {"model.rms_norm_eps", Float(-1e-6), "model.rms_norm_eps=-1e-06 is outside [1e-12, 0.01]"},
      {"model.rms_norm_eps", Float(1e-50), "model.rms_norm_eps=1e-50 is outside"},
      {"model.rms_norm_eps", Float(1.401298464324817e-45), "model.rms_norm_eps=1.4013e-45 is outside"},
      {"model.rms_norm_eps", Float(3.4028234663852886e38), "model.rms_norm_eps=3.40282e+38 is outside"},
      {"model.tie_word_embeddings", Int(2), "model.tie_word_embeddings=2 must be 0 or 1"},
      {"quant.method", Str("squeezellm"), "quant.method='squeezellm' (expected rtn, awq, gptq or awq-gptq)"},
      {"quant.bits", Int(8), "quant.bits=8 is not supported"},
      {"quant.group_size", Int(48), "quant.group_size=48 (expected 32, 64 or 128)"},
      {"quant.group_size", Int(128), "quant.group_size=128 does not divide model.hidden_size=64"},
      {"quant.zero_point", Int(0), "quant.zero_point=0 is not supported"},
      {"tokenizer.bos_token_id", Int(50),
       "tokenizer.bos_token_id: token id 50 is outside the vocabulary [0, 50)"},
      {"tokenizer.eos_token_ids", Ints({2, -5}), "tokenizer.eos_token_ids: token id -5 is outside"},
  };
  for (const Case& c : cases) {
    FileSpec spec = TinyModel("llama");
    SetMeta(spec, c.key, c.value);
    CHECK_THROWS(Load(Build(spec)), FormatError, c.message);
  }
  // An integer rope_theta is read as a float, and bos -1 means "none".
  FileSpec spec = TinyModel("llama");
  SetMeta(spec, "model.rope_theta", Int(10000));
  SetMeta(spec, "tokenizer.bos_token_id", Int(-1));
  auto model = Load(Build(spec));
  CHECK(model->config().rope_theta == 10000.0f && model->config().bos_token_id == -1);
}

AWQCORE_TEST_MAIN()
