// The BPE model of a `tokenizers` document: vocabulary, ranked merges and the
// per-word merge loop (lowest rank first, leftmost on ties, as `tokenizers`
// pops its merge queue), with byte fallback and the unknown token.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace awqcore::tokenizer_detail {

// Open-addressing map from token text to id; the texts live in the model's
// id -> text table, so lookups take a string_view without copying.
class VocabIndex {
 public:
  void Build(const std::vector<std::string>* texts);  // texts[id]; "" = no entry
  int Find(std::string_view text) const;               // -1 if absent

 private:
  struct Slot {
    uint32_t tag;     // the text's hash: most probes that miss end here
    int32_t id = -1;  // -1: empty
  };
  const std::vector<std::string>* texts_ = nullptr;
  std::vector<Slot> slots_;  // size a power of two >= 2 * entries
};

// Open-addressing map from an id pair (left << 32 | right) to its merge.
class MergeTable {
 public:
  struct Merge {
    int32_t rank = -1;   // -1: no merge
    int32_t result = -1;  // the merged token's id
  };
  void Reserve(size_t count);
  // A pair listed twice keeps its later merge, as `tokenizers` does; false then.
  bool Insert(int left, int right, Merge merge);
  Merge Find(int left, int right) const;

 private:
  struct Slot {
    uint64_t key;  // kEmpty when unused
    Merge merge;
  };
  static constexpr uint64_t kEmpty = ~0ULL;
  std::vector<Slot> slots_;  // key and value together: one cache miss per probe
  size_t mask_ = 0;
};

struct BpeModel {
  std::vector<std::string> id_to_token;  // "" where an id has no entry
  VocabIndex vocab;
  MergeTable merges;
  int unk_id = -1;
  bool fuse_unk = false;
  bool byte_fallback = false;
  bool ignore_merges = false;  // a word that is itself a token is not split
  int byte_token_ids[256];     // byte_fallback: the id of <0xNN>, or -1

  // Appends the ids of one pre-tokenized word (valid UTF-8, in the model's
  // alphabet, i.e. already byte-mapped for byte-level vocabularies).
  void TokenizeWord(std::string_view word, std::vector<int>* out) const;
  // The merge loop over initial symbol ids, in place.
  void MergeSymbols(std::vector<int>* symbols) const;
};

}  // namespace awqcore::tokenizer_detail
