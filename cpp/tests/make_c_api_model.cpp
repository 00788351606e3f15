// Writes the model test_c_api.c loads: the tiny Llama of awqbin_test_writer.h
// with sane weights, a byte-level BPE tokenizer over lowercase letters (with
// two special tokens) and a ChatML chat format with a default system prompt.
//   make_c_api_model OUT.awqbin
#include <cstdio>
#include <fstream>
#include <string>

#include "awqbin_test_writer.h"

namespace {

// ids 0..2 special; 3..28 'a'..'z'; 29 'Ġ' (space); 30 'Ċ' (newline); 31.. merges.
std::string TokenizerJson() {
  std::string vocab = R"("<unk>":0,"<|im_start|>":1,"<|im_end|>":2)";
  for (char c = 'a'; c <= 'z'; ++c) vocab += ",\"" + std::string(1, c) + "\":" + std::to_string(3 + c - 'a');
  vocab += R"(,"\u0120":29,"\u010a":30,"he":31,"ll":32,"hell":33,"\u0120w":34,"or":35)";
  auto added = [](int id, const char* text) {
    return "{\"id\":" + std::to_string(id) + ",\"content\":\"" + text +
           "\",\"single_word\":false,\"lstrip\":false,\"rstrip\":false,\"normalized\":false,"
           "\"special\":true}";
  };
  const std::string byte_level =
      R"({"type":"ByteLevel","add_prefix_space":false,"trim_offsets":true,"use_regex":true})";
  return R"({"version":"1.0","truncation":null,"padding":null,"added_tokens":[)" +
         added(0, "<unk>") + "," + added(1, "<|im_start|>") + "," + added(2, "<|im_end|>") +
         R"(],"normalizer":null,"pre_tokenizer":)" + byte_level +
         R"(,"post_processor":null,"decoder":)" + byte_level +
         R"(,"model":{"type":"BPE","dropout":null,"unk_token":"<unk>","continuing_subword_prefix":null,)"
         R"("end_of_word_suffix":null,"fuse_unk":false,"byte_fallback":false,"ignore_merges":false,)"
         R"("vocab":{)" + vocab + R"(},"merges":["h e","l l","he ll","\u0120 w","o r"]}})";
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s OUT.awqbin\n", argv[0]);
    return 2;
  }
  FileSpec spec = TinySaneSpec("llama");
  SetMeta(spec, "tokenizer.json", Str(TokenizerJson()));
  SetMeta(spec, "tokenizer.eos_token_ids", Ints({2}));
  // What python/awqcore/chat_format.py derives from SmolLM2's template, with a
  // shorter default system prompt.
  const std::pair<const char*, const char*> chat[] = {
      {"chat.format", "turns"}, {"chat.start", ""},
      {"chat.generation_prompt", "<|im_start|>assistant\n"}, {"chat.system", "turn"},
      {"chat.order", "any"}, {"chat.trim", ""},
      {"chat.system.prefix", "<|im_start|>system\n"}, {"chat.system.suffix", "<|im_end|>\n"},
      {"chat.user.prefix", "<|im_start|>user\n"}, {"chat.user.suffix", "<|im_end|>\n"},
      {"chat.assistant.prefix", "<|im_start|>assistant\n"}, {"chat.assistant.suffix", "<|im_end|>\n"},
      {"chat.default_system", "be brief"}};
  for (const auto& [key, value] : chat) spec.meta.emplace_back(key, Str(value));
  const Bytes bytes = Build(spec);
  std::ofstream out(argv[1], std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
  if (!out) {
    std::fprintf(stderr, "cannot write %s\n", argv[1]);
    return 1;
  }
  return 0;
}
