// Tests of the int4 lm_head form (docs/format.md): an untied file may store
// the lm_head as a 4-bit linear (lm_head.qweight / .scales / .zeros), which
// the loader resolves into ModelWeights::lm_head_int4 (model_loader.cpp).
// The forward pass with it is checked against the naive reference in
// test_forward.cpp; here: what loads, and every malformed variant rejected by
// name. Files come from awqbin_test_writer.h (written from docs/format.md).

#include <cstdio>
#include <functional>
#include <string>
#include <vector>

#include "awqcore/awqcore.h"
#include "model_impl.h"
#include "ops/int4_tiles.h"
#include "awqbin_test_writer.h"
#include "test_harness.h"

namespace {

// The llama tiny file with its lm_head replaced by a 4-bit linear [vocab, d];
// the embedding table stays f16 or int8.
FileSpec Int4LmHeadModel(bool int8_embedding = false) {
  FileSpec spec = TinyModel("llama", int8_embedding);
  auto& t = spec.tensors;
  for (const char* name : {"lm_head.weight", "lm_head.weight_q8", "lm_head.weight_q8_scales"}) {
    for (size_t i = 0; i < t.size(); ++i) {
      if (t[i].name == name) t.erase(t.begin() + static_cast<long>(i));
    }
  }
  AddLinear(spec, "lm_head", kVocab, kD, false);
  return spec;
}

TensorEntry& Tensor(FileSpec& spec, const std::string& name) {
  return spec.tensors[TensorIndex(spec, name)];
}

void Erase(FileSpec& spec, const std::string& name) {
  spec.tensors.erase(spec.tensors.begin() + static_cast<long>(TensorIndex(spec, name)));
}

}  // namespace

TEST(int4_lm_head_loads_with_either_embedding_form) {
  for (bool int8_embedding : {false, true}) {
    FileSpec spec = Int4LmHeadModel(int8_embedding);
    auto model = Load(Build(spec));
    const awqcore::ModelWeights& w = model->impl().weights;
    const awqcore::Int4Linear& head = w.lm_head_int4;
    CHECK(head.out == static_cast<int>(kVocab) && head.in == static_cast<int>(kD));
    CHECK(head.group_size == static_cast<int>(kGroup) && head.bias == nullptr);
    const Bytes& qweight = Tensor(spec, "lm_head.qweight").bytes;
    const std::vector<uint8_t> rows = awqcore::Int4RowCodes(head);  // the loader may regroup them into tiles
    CHECK(std::equal(qweight.begin(), qweight.end(), rows.begin()) && rows.size() == qweight.size());
    CHECK(w.lm_head.rows == 0 && w.lm_head.data() == nullptr);
    CHECK((w.embed.q8 != nullptr) == int8_embedding && w.embed.rows == static_cast<int>(kVocab));
  }
}

TEST(bad_int4_lm_heads_are_named) {
  struct Case {
    std::string what;
    std::function<void(FileSpec&)> edit;
    std::string message;
  };
  const std::vector<Case> cases = {
      {"scales missing", [](FileSpec& s) { Erase(s, "lm_head.scales"); },
       "missing tensor 'lm_head.scales' required by architecture llama"},
      {"codes missing", [](FileSpec& s) { Erase(s, "lm_head.qweight"); },
       "missing tensor 'lm_head.qweight' required by architecture llama"},
      {"zeros missing", [](FileSpec& s) { Erase(s, "lm_head.zeros"); },
       "missing tensor 'lm_head.zeros' required by architecture llama"},
      {"codes transposed",  // same bytes, so only the loader can object
       [](FileSpec& s) { Tensor(s, "lm_head.qweight").dims = {kD / 2, kVocab}; },
       "tensor 'lm_head.qweight': expected u8 [50, 32], found u8 [32, 50]"},
      {"scales stored as f32",
       [](FileSpec& s) {
         TensorEntry& e = Tensor(s, "lm_head.scales");
         e.dtype = DType::kF32;
         e.dims = {kVocab, kD / kGroup / 2};
       },
       "tensor 'lm_head.scales': expected f16 [50, 2], found f32 [50, 1]"},
      {"a zero point beyond 4 bits",
       [](FileSpec& s) { Tensor(s, "lm_head.zeros").bytes[13] = 16; },
       "tensor 'lm_head.zeros': element 13 is 16, outside the 4-bit range 0..15"},
      {"a bias the format does not have",
       [](FileSpec& s) { AddTensor(s, "lm_head.bias", DType::kF32, {kVocab}); },
       "tensor 'lm_head.bias' is in the file but the model does not read it"},
      {"an f16 table as well",
       [](FileSpec& s) { AddTensor(s, "lm_head.weight", DType::kF16, {kVocab, kD}); },
       "tensors 'lm_head.qweight' and 'lm_head.weight': the file holds two forms of the lm_head"},
      {"an int8 table as well",
       [](FileSpec& s) { AddTensor(s, "lm_head.weight_q8", DType::kI8, {kVocab, kD}); },
       "tensors 'lm_head.qweight' and 'lm_head.weight_q8': the file holds two forms of the lm_head"},
      {"a tied file",
       [](FileSpec& s) { SetMeta(s, "model.tie_word_embeddings", Int(1)); },
       "tensor 'lm_head.qweight': model.tie_word_embeddings=1, but an int4 lm_head is stored only "
       "in untied files"},
  };
  for (const Case& c : cases) {
    FileSpec spec = Int4LmHeadModel();
    c.edit(spec);
    std::printf("  %s\n", c.what.c_str());
    CHECK_THROWS(Load(Build(spec)), FormatError, c.message);
  }
}

AWQCORE_TEST_MAIN()
