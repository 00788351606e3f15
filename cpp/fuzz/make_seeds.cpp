// Writes the fuzz seed corpus (cpp/fuzz/corpus): the smallest valid models of
// each kind the loader distinguishes, so the fuzzer starts from files that
// load and its mutations stay cheap. Made with the tests' independent writer
// (cpp/tests/awqbin_test_writer.h). Usage: make_seeds DIR
#include <cstdio>
#include <fstream>
#include <string>

#include "awqbin_test_writer.h"

namespace {

// d=32, one layer, heads 2/1 of 16, ffn 32, vocab 8, group 32.
FileSpec SmallModel(const std::string& arch, bool int8_tables, bool tied) {
  constexpr uint64_t d = 32, ffn = 32, vocab = 8, heads = 2, kv_heads = 1, head_dim = 16;
  const bool bias = arch == "qwen2";
  FileSpec spec = TinyModel(arch);  // the metadata, then the small sizes below
  spec.tensors.clear();
  SetMeta(spec, "model.vocab_size", Int(vocab));
  SetMeta(spec, "model.hidden_size", Int(d));
  SetMeta(spec, "model.intermediate_size", Int(ffn));
  SetMeta(spec, "model.num_layers", Int(1));
  SetMeta(spec, "model.num_heads", Int(heads));
  SetMeta(spec, "model.num_kv_heads", Int(kv_heads));
  SetMeta(spec, "model.head_dim", Int(head_dim));
  SetMeta(spec, "model.tie_word_embeddings", Int(tied));
  SetMeta(spec, "tokenizer.bos_token_id", Int(1));
  SetMeta(spec, "tokenizer.eos_token_ids", Ints({2}));
  const auto table = [&](const std::string& prefix) {
    if (!int8_tables) {
      AddTensor(spec, prefix + ".weight", DType::kF16, {vocab, d});
      return;
    }
    AddTensor(spec, prefix + ".weight_q8", DType::kI8, {vocab, d});
    AddTensor(spec, prefix + ".weight_q8_scales", DType::kF16, {vocab, d / 32});
  };
  table("model.embed_tokens");
  const std::string p = "model.layers.0.";
  AddTensor(spec, p + "input_layernorm.weight", DType::kF32, {d});
  AddLinear(spec, p + "self_attn.q_proj", heads * head_dim, d, bias);
  AddLinear(spec, p + "self_attn.k_proj", kv_heads * head_dim, d, bias);
  AddLinear(spec, p + "self_attn.v_proj", kv_heads * head_dim, d, bias);
  AddLinear(spec, p + "self_attn.o_proj", d, heads * head_dim, false);
  AddTensor(spec, p + "post_attention_layernorm.weight", DType::kF32, {d});
  AddLinear(spec, p + "mlp.gate_proj", ffn, d, false);
  AddLinear(spec, p + "mlp.up_proj", ffn, d, false);
  AddLinear(spec, p + "mlp.down_proj", d, ffn, false);
  AddTensor(spec, "model.norm.weight", DType::kF32, {d});
  if (!tied) table("lm_head");
  return spec;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: make_seeds DIR\n");
    return 2;
  }
  const struct {
    const char* name;
    FileSpec spec;
  } seeds[] = {
      {"llama-f16.awqbin", SmallModel("llama", false, false)},
      {"llama-int8.awqbin", SmallModel("llama", true, false)},
      {"qwen2-tied.awqbin", SmallModel("qwen2", false, true)},
  };
  for (const auto& seed : seeds) {
    const Bytes bytes = Build(seed.spec);
    const std::string path = std::string(argv[1]) + "/" + seed.name;
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    out.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
    if (!out) {
      std::fprintf(stderr, "cannot write %s\n", path.c_str());
      return 1;
    }
    std::printf("%s: %zu bytes\n", path.c_str(), bytes.size());
  }
  return 0;
}
