// BPE merge loop and its hash tables (see bpe.h).
#include "tokenizer/bpe.h"

#include <algorithm>
#include <functional>
#include <queue>
#include <tuple>

#include "tokenizer/unicode.h"

namespace awqcore::tokenizer_detail {
namespace {

size_t TableSize(size_t entries) {
  size_t size = 16;
  while (size < 2 * entries) size *= 2;
  return size;
}

uint64_t Mix(uint64_t x) {  // splitmix64's finalizer: spreads pair keys over the table
  x ^= x >> 30;
  x *= 0xBF58476D1CE4E5B9ULL;
  x ^= x >> 27;
  x *= 0x94D049BB133111EBULL;
  return x ^ (x >> 31);
}

}  // namespace

void VocabIndex::Build(const std::vector<std::string>* texts) {
  texts_ = texts;
  size_t entries = 0;
  for (const std::string& t : *texts) entries += !t.empty();
  slots_.assign(TableSize(entries), Slot{});
  const size_t mask = slots_.size() - 1;
  for (size_t id = 0; id < texts->size(); ++id) {
    const std::string& text = (*texts)[id];
    if (text.empty()) continue;
    const size_t hash = std::hash<std::string_view>()(text);
    size_t slot = hash & mask;
    while (slots_[slot].id >= 0) slot = (slot + 1) & mask;
    slots_[slot] = {static_cast<uint32_t>(hash >> 32), static_cast<int32_t>(id)};
  }
}

int VocabIndex::Find(std::string_view text) const {
  if (slots_.empty() || text.empty()) return -1;
  const size_t mask = slots_.size() - 1;
  const size_t hash = std::hash<std::string_view>()(text);
  const uint32_t tag = static_cast<uint32_t>(hash >> 32);
  for (size_t slot = hash & mask;; slot = (slot + 1) & mask) {
    const Slot& s = slots_[slot];
    if (s.id < 0) return -1;
    if (s.tag == tag && (*texts_)[s.id] == text) return s.id;
  }
}

void MergeTable::Reserve(size_t count) {
  slots_.assign(TableSize(count), Slot{kEmpty, Merge{}});
  mask_ = slots_.size() - 1;
}

bool MergeTable::Insert(int left, int right, Merge merge) {
  const uint64_t key = static_cast<uint64_t>(static_cast<uint32_t>(left)) << 32 |
                       static_cast<uint32_t>(right);
  for (size_t slot = Mix(key) & mask_;; slot = (slot + 1) & mask_) {
    Slot& s = slots_[slot];
    if (s.key == key || s.key == kEmpty) {
      const bool inserted = s.key == kEmpty;
      s = {key, merge};
      return inserted;
    }
  }
}

MergeTable::Merge MergeTable::Find(int left, int right) const {
  if (slots_.empty()) return {};
  const uint64_t key = static_cast<uint64_t>(static_cast<uint32_t>(left)) << 32 |
                       static_cast<uint32_t>(right);
  for (size_t slot = Mix(key) & mask_;; slot = (slot + 1) & mask_) {
    const Slot& s = slots_[slot];
    if (s.key == key) return s.merge;
    if (s.key == kEmpty) return {};
  }
}

void BpeModel::TokenizeWord(std::string_view word, std::vector<int>* out) const {
  if (word.empty()) return;
  if (ignore_merges) {
    const int whole = vocab.Find(word);
    if (whole >= 0) {
      out->push_back(whole);
      return;
    }
  }
  std::vector<int> symbols;
  symbols.reserve(word.size());
  bool last_was_unk = false;
  for (size_t pos = 0, length; pos < word.size(); pos += length) {
    unicode::DecodeOne(word, pos, &length);
    const std::string_view ch = word.substr(pos, length);
    const int id = vocab.Find(ch);
    if (id >= 0) {
      symbols.push_back(id);
      last_was_unk = false;
      continue;
    }
    if (byte_fallback) {
      bool all_bytes = true;
      for (char b : ch) all_bytes &= byte_token_ids[static_cast<uint8_t>(b)] >= 0;
      if (all_bytes) {
        for (char b : ch) symbols.push_back(byte_token_ids[static_cast<uint8_t>(b)]);
        last_was_unk = false;
        continue;
      }
    }
    if (unk_id >= 0) {
      // fuse_unk: a run of unknown characters becomes one unknown token.
      if (!(fuse_unk && last_was_unk)) symbols.push_back(unk_id);
      last_was_unk = true;
    }
    // Without an unknown token the character is dropped, as `tokenizers` drops it.
  }
  MergeSymbols(&symbols);
  out->insert(out->end(), symbols.begin(), symbols.end());
}

void BpeModel::MergeSymbols(std::vector<int>* symbols_in) const {
  std::vector<int>& symbols = *symbols_in;
  const int n = static_cast<int>(symbols.size());
  if (n < 2) return;
  // A doubly linked list over the symbols (merged-away ones unlinked) and a
  // queue of candidate merges ordered by (rank, position of the left symbol):
  // a candidate is stale when its left symbol was merged away or no longer
  // forms the same pair with its right neighbour.
  std::vector<int> prev(n), next(n);
  for (int i = 0; i < n; ++i) {
    prev[i] = i - 1;
    next[i] = i + 1 < n ? i + 1 : -1;
  }
  using Candidate = std::tuple<int32_t, int, int32_t>;  // rank, left position, result id
  std::priority_queue<Candidate, std::vector<Candidate>, std::greater<Candidate>> queue;
  const auto consider = [&](int left) {
    if (left < 0 || next[left] < 0) return;
    const MergeTable::Merge m = merges.Find(symbols[left], symbols[next[left]]);
    if (m.rank >= 0) queue.emplace(m.rank, left, m.result);
  };
  for (int i = 0; i + 1 < n; ++i) consider(i);
  std::vector<bool> removed(n, false);
  while (!queue.empty()) {
    const auto [rank, left, result] = queue.top();
    queue.pop();
    if (removed[left] || next[left] < 0) continue;
    const int right = next[left];
    const MergeTable::Merge m = merges.Find(symbols[left], symbols[right]);
    if (m.rank != rank || m.result != result) continue;
    symbols[left] = result;
    removed[right] = true;
    next[left] = next[right];
    if (next[right] >= 0) prev[next[right]] = left;
    consider(prev[left]);
    consider(left);
  }
  int out = 0;
  for (int i = 0; i >= 0 && i < n; i = next[i]) symbols[out++] = symbols[i];
  symbols.resize(out);
}

}  // namespace awqcore::tokenizer_detail
