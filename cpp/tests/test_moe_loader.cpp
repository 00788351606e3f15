// Mixture-of-experts files as the loader reads them (docs/format.md): the
// mixtral and qwen3_moe keys and stacked expert tensors load into the config
// and per-expert views the forward pass expects; every inconsistency (router
// rows or expert count against model.num_experts, k outside 1..E, experts in
// a dense layer or a dense MLP in an MoE layer, a missing expert tensor, MoE
// keys on a dense architecture) is a FormatError naming the key or tensor;
// active_bytes_per_token counts what a decode token reads; sessions run the
// files, and the CUDA device refuses them by name.
#include <functional>
#include <string>
#include <vector>

#include "awqbin_test_writer.h"
#include "model_impl.h"
#include "test_harness.h"

namespace {

void RemoveMeta(FileSpec& spec, const std::string& key) {
  for (auto it = spec.meta.begin(); it != spec.meta.end(); ++it) {
    if (it->first == key) {
      spec.meta.erase(it);
      return;
    }
  }
  throw std::logic_error("test bug: no key " + key);
}

void RemoveTensor(FileSpec& spec, const std::string& name) {
  spec.tensors.erase(spec.tensors.begin() + TensorIndex(spec, name));
}

// Replaces tensor `name` with one of `dims` (pattern bytes).
void Reshape(FileSpec& spec, const std::string& name, std::vector<uint64_t> dims) {
  const DType dtype = spec.tensors[TensorIndex(spec, name)].dtype;
  RemoveTensor(spec, name);
  AddTensor(spec, name, dtype, std::move(dims));
}

}  // namespace

TEST(moe_families_load_their_experts) {
  {
    const auto model = Load(Build(TinyMoeModel("mixtral")));
    const awqcore::ModelConfig& c = model->config();
    CHECK(c.num_experts == 4 && c.num_experts_per_tok == 2 && c.moe_intermediate_size == 64);
    CHECK(c.norm_topk_prob && (c.moe_layers == std::vector<uint8_t>{1, 1}));
    CHECK(c.sliding_window == 8 && !c.qk_norm);
    for (const awqcore::LayerWeights& layer : model->impl().weights.layers) {
      const awqcore::MoeWeights& moe = layer.moe;
      CHECK(moe.router != nullptr && moe.gate.size() == 4 && moe.up.size() == 4 && moe.down.size() == 4);
      CHECK(layer.gate.qweight == nullptr);
      // Expert e's slice starts e experts' bytes into the stacked tensor.
      CHECK(moe.gate[3].qweight - moe.gate[0].qweight == 3 * 64 * 64 / 2);
      CHECK(moe.down[2].scales - moe.down[0].scales == 2 * 64 * (64 / 32));
      CHECK(moe.up[1].zeros - moe.up[0].zeros == 64 * (64 / 32));
      CHECK(moe.down[1].out == 64 && moe.down[1].in == 64 && moe.gate[1].out == 64);
    }
  }
  {
    const auto model = Load(Build(TinyMoeModel("qwen3_moe")));
    const awqcore::ModelConfig& c = model->config();
    CHECK(c.qk_norm && !c.norm_topk_prob && (c.moe_layers == std::vector<uint8_t>{0, 1}));
    const auto& layers = model->impl().weights.layers;
    CHECK(layers[0].moe.router == nullptr && layers[0].gate.out == kFfn);
    CHECK(layers[1].moe.router != nullptr && layers[1].gate.qweight == nullptr);
  }
  {  // mixtral without norm_topk_prob or moe_layers: renormalized, every layer MoE
    FileSpec spec = TinyMoeModel("mixtral");
    RemoveMeta(spec, "model.norm_topk_prob");
    RemoveMeta(spec, "model.moe_layers");
    const auto model = Load(Build(spec));
    CHECK(model->config().norm_topk_prob && (model->config().moe_layers == std::vector<uint8_t>{1, 1}));
  }
  {  // a dense family may say it has no experts
    FileSpec spec = TinyModel("llama");
    spec.meta.emplace_back("model.num_experts", Int(0));
    CHECK(Load(Build(spec))->config().num_experts == 0);
  }
}

TEST(moe_errors_are_named) {
  struct Case {
    std::string what;
    std::string arch;
    std::function<void(FileSpec&)> edit;
    std::string message;
  };
  const std::string l1 = "model.layers.1.mlp.";
  const std::vector<Case> cases = {
      {"router rows", "mixtral", [&](FileSpec& s) { Reshape(s, l1 + "gate.weight", {3, kD}); },
       "tensor 'model.layers.1.mlp.gate.weight' (the router) has 3 rows, model.num_experts=4"},
      {"expert count", "qwen3_moe",
       [&](FileSpec& s) { Reshape(s, l1 + "experts.up_proj.scales", {5, kExpertFfn, kD / kGroup}); },
       "tensor 'model.layers.1.mlp.experts.up_proj.scales' holds 5 experts (its leading dimension), "
       "model.num_experts=4"},
      {"expert shape", "mixtral",
       [&](FileSpec& s) { Reshape(s, l1 + "experts.down_proj.qweight", {kExperts, kD, kExpertFfn}); },
       "tensor 'model.layers.1.mlp.experts.down_proj.qweight': expected"},
      {"k > E", "mixtral", [](FileSpec& s) { SetMeta(s, "model.num_experts_per_tok", Int(5)); },
       "model.num_experts_per_tok=5 must be in 1..model.num_experts=4"},
      {"k < 1", "qwen3_moe", [](FileSpec& s) { SetMeta(s, "model.num_experts_per_tok", Int(0)); },
       "model.num_experts_per_tok=0 must be in 1..model.num_experts=4"},
      {"no experts", "mixtral", [](FileSpec& s) { SetMeta(s, "model.num_experts", Int(0)); },
       "model.num_experts=0 must be in 1..2147483647"},
      {"num_experts missing", "qwen3_moe", [](FileSpec& s) { RemoveMeta(s, "model.num_experts"); },
       "model.num_experts"},
      {"missing expert tensor", "mixtral",
       [&](FileSpec& s) { RemoveTensor(s, l1 + "experts.down_proj.zeros"); },
       "missing tensor 'model.layers.1.mlp.experts.down_proj.zeros' required by architecture mixtral"},
      {"missing router", "qwen3_moe", [&](FileSpec& s) { RemoveTensor(s, l1 + "gate.weight"); },
       "missing tensor 'model.layers.1.mlp.gate.weight'"},
      {"experts in a dense layer", "qwen3_moe",
       [](FileSpec& s) { AddTensor(s, "model.layers.0.mlp.gate.weight", DType::kF32, {kExperts, kD}); },
       "tensor 'model.layers.0.mlp.gate.weight' holds experts but layer 0 is a dense MLP layer "
       "(model.moe_layers[0]=0)"},
      {"dense MLP in an MoE layer", "qwen3_moe",
       [&](FileSpec& s) { AddLinear(s, l1 + "up_proj", kFfn, kD, false); },
       "tensor 'model.layers.1.mlp.up_proj.qweight' is a dense MLP in a mixture-of-experts layer "
       "(model.moe_layers[1]=1)"},
      {"moe_layers length", "qwen3_moe", [](FileSpec& s) { SetMeta(s, "model.moe_layers", Ints({1})); },
       "model.moe_layers has 1 entries, model.num_layers=2"},
      {"moe_layers value", "qwen3_moe", [](FileSpec& s) { SetMeta(s, "model.moe_layers", Ints({2, 1})); },
       "model.moe_layers[0]=2 (expected 0 dense or 1 MoE)"},
      {"mixtral dense layer", "mixtral", [](FileSpec& s) { SetMeta(s, "model.moe_layers", Ints({0, 1})); },
       "model.moe_layers[0]=0 contradicts architecture mixtral (every layer is MoE)"},
      {"mixtral without renormalization", "mixtral",
       [](FileSpec& s) { SetMeta(s, "model.norm_topk_prob", Int(0)); },
       "model.norm_topk_prob=0 contradicts architecture mixtral (expected 1)"},
      {"qwen3_moe needs norm_topk_prob", "qwen3_moe",
       [](FileSpec& s) { RemoveMeta(s, "model.norm_topk_prob"); }, "model.norm_topk_prob"},
      {"expert width and group", "mixtral",
       [](FileSpec& s) { SetMeta(s, "model.moe_intermediate_size", Int(48)); },
       "quant.group_size=32 does not divide model.moe_intermediate_size=48"},
      {"qwen3_moe without q/k norm", "qwen3_moe", [](FileSpec& s) { SetMeta(s, "model.qk_norm", Int(0)); },
       "model.qk_norm=0 contradicts architecture qwen3_moe (expected 1)"},
  };
  for (const Case& c : cases) {
    FileSpec spec = TinyMoeModel(c.arch);
    c.edit(spec);
    std::printf("  %s\n", c.what.c_str());
    CHECK_THROWS(Load(Build(spec)), FormatError, c.message);
  }
  // MoE keys or tensors on a dense architecture.
  FileSpec llama = TinyModel("llama");
  llama.meta.emplace_back("model.num_experts_per_tok", Int(2));
  CHECK_THROWS(Load(Build(llama)), FormatError,
               "model.num_experts_per_tok is set but architecture llama has no experts");
  llama = TinyModel("llama");
  llama.meta.emplace_back("model.num_experts", Int(4));
  CHECK_THROWS(Load(Build(llama)), FormatError, "model.num_experts is set but architecture llama has no experts");
  llama = TinyModel("llama");
  AddTensor(llama, "model.layers.0.mlp.gate.weight", DType::kF32, {kExperts, kD});
  CHECK_THROWS(Load(Build(llama)), FormatError,
               "tensor 'model.layers.0.mlp.gate.weight' is in the file but the model does not read it");
}

TEST(active_bytes_count_k_experts_and_one_embedding_row) {
  // From the file's tensors: every tensor once, except the stacked experts
  // (k of E read per token) and the embedding table (one row; the lm_head is
  // read whole, the same table again when tied).
  for (const char* arch : {"mixtral", "qwen3_moe", "llama", "qwen2"}) {
    const std::string name = arch;
    const FileSpec spec = name == "mixtral" || name == "qwen3_moe" ? TinyMoeModel(name) : TinyModel(name);
    const auto model = Load(Build(spec));
    const bool tied = model->config().tie_word_embeddings;
    uint64_t want = 0;
    for (const TensorEntry& t : spec.tensors) {
      const uint64_t bytes = t.bytes.size();
      if (t.name.find(".experts.") != std::string::npos) {
        want += bytes / kExperts * kExpertsPerToken;
      } else if (t.name.rfind("model.embed_tokens.", 0) == 0) {
        want += bytes / kVocab + (tied ? bytes : 0);
      } else {
        want += bytes;
      }
    }
    std::printf("  %s: %llu active bytes per token of %llu in the file\n", arch,
                static_cast<unsigned long long>(model->active_bytes_per_token()),
                static_cast<unsigned long long>(model->weight_bytes()));
    CHECK(model->active_bytes_per_token() == want);
  }
}

TEST(sessions_run_moe_files) {
  for (const char* arch : {"mixtral", "qwen3_moe"}) {
    const auto model = Load(Build(TinySaneSpec(TinyMoeModel(arch))));
    awqcore::Session session(model, 32, 2, awqcore::Device::kCpu, 3);
    const std::vector<float> logits = session.Forward({1, 5, 7, 9, 11, 13});
    CHECK(logits.size() == 6 * kVocab);
    awqcore::GenerateOptions options;
    options.max_new_tokens = 5;
    options.stop_ids = std::vector<int>{};
    const std::vector<std::vector<int>> batch = session.GenerateBatch({{1, 2, 3}, {4, 5}, {6}}, options);
    for (size_t i = 0; i < batch.size(); ++i) {
      CHECK(batch[i].size() == 5);
      CHECK(batch[i] == session.Generate(i == 0 ? std::vector<int>{1, 2, 3}
                                                : i == 1 ? std::vector<int>{4, 5} : std::vector<int>{6},
                                         options));
    }
    // The CUDA backend runs MoE files too (tests/test_cuda.py on a GPU);
    // without one, asking for it is refused by name.
    if (!awqcore::BuiltWithCuda()) {
      CHECK_THROWS(awqcore::Session(model, 32, 1, awqcore::Device::kCuda), awqcore::Error,
                   "awqcore was built without CUDA");
    } else if (awqcore::CudaDeviceInfo().rfind("no CUDA device", 0) == 0) {
      CHECK_THROWS(awqcore::Session(model, 32, 1, awqcore::Device::kCuda), awqcore::Error, "no CUDA device");
    }
  }
}

AWQCORE_TEST_MAIN()
