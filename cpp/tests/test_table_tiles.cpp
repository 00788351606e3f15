// The int8 table in the AVX-512 VNNI tile layout (model_weights.h: q8_tiles;
// ops/embedding_table.h: TileTable): its gather, its W8A8 and f32 row kernels
// at every level that reads it (the scalar kernels, the reference level, and
// the VNNI kernels where this CPU has them) against the scalar reference on
// the row layout, over rows that are not multiples of the 16-row tile, widths
// of odd numbers of 32-column blocks, 1..8 tokens (and more, which take
// several passes), row ranges that start and end inside a tile (as a thread
// of the pool may get them), activations one element past an aligned
// allocation, and strided outputs. Each token's outputs must equal, bit for
// bit, those of the same kernel called with that token alone (batched decode
// equals decode one by one), and the op's split across threads must not
// change a bit. Also the loader's side: int8 tables of .awqbin files load
// with the file's codes and scales in whichever layout the CPU gets, and
// when AddTableTiles tiles, seals or keeps the rows, and the weights' copy
// out of the file mapping (CopyToHugePages), sealed the same way.
//
// Tolerances (a-priori, as in test_simd_kernels.cpp): W8A8, the integer dot
// of each 32-column block is exact; the float work is one rounded product
// s_b d_b and one FMA per block, so |kernel - exact| <= gamma(d / 32 + 2)
// sum |w a| (a: the rounded activations). f32: exact weights q s (7 + 11
// bits), d products summed in two chains and then added, within gamma(d + 1)
// sum |w x|. A wrong row, column, token, scale or offset gives errors of the
// outputs' size, ~1e5 times these.
#include <sys/mman.h>
#include <sys/resource.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "awqbin_test_writer.h"
#include "awqcore/awqcore.h"
#include "cpu_features.h"
#include "cpu_memory.h"
#include "half.h"
#include "model_impl.h"
#include "model_weights.h"
#include "ops/embedding_table.h"
#include "ops/linear_kernels.h"
#include "ops/q8_activations.h"
#include "random_weights.h"
#include "test_harness.h"
#include "thread_pool.h"

using namespace awqcore;

namespace {

constexpr size_t kMisaligned = 1;  // elements before each array of the row table
constexpr int kTokenCounts[] = {1, 2, 3, 4, 5, 6, 7, 8, 11};

// The levels whose kernels read tiles (embedding_table.cpp: TableRows*).
std::vector<Isa> TileLevels() {
  std::vector<Isa> levels = {Isa::kScalar};
  if (IsaSupported(Isa::kAvx512Vnni)) {
    levels.push_back(Isa::kAvx512Vnni);
  } else {
    std::printf("  avx512vnni: not supported by this CPU or build, skipped\n");
  }
  return levels;
}

// A copy of x (natural layout) whose arrays start one element past an
// aligned allocation.
struct MisalignedQ8 {
  explicit MisalignedQ8(const Q8Activations& x)
      : q(1 + static_cast<size_t>(x.num_tokens) * x.in),
        block_scales(1 + static_cast<size_t>(x.num_tokens) * (x.in / kQ8Block)),
        view(x) {
    std::copy_n(x.q, q.size() - 1, q.begin() + 1);
    std::copy_n(x.block_scales, block_scales.size() - 1, block_scales.begin() + 1);
    view.q = q.data() + 1;
    view.block_scales = block_scales.data() + 1;
    view.group_sums = nullptr;  // the table kernels read none
  }
  Q8Activations Token(int t) const {
    Q8Activations one = view;
    one.num_tokens = 1;
    one.q += static_cast<size_t>(t) * view.in;
    one.block_scales += static_cast<size_t>(t) * (view.in / kQ8Block);
    return one;
  }
  std::vector<int8_t> q;
  std::vector<float> block_scales;
  Q8Activations view;
};

// The row ranges a test runs: all rows, one starting inside the first tile,
// one starting and ending inside tiles.
std::vector<std::pair<int, int>> RowRanges(int rows) {
  std::vector<std::pair<int, int>> ranges = {{0, rows}};
  if (rows > 5) ranges.push_back({5, rows - 5});
  if (rows > 21) ranges.push_back({3, rows - 7});
  return ranges;
}

struct Tally {
  int checked = 0, bad = 0, untouched_changed = 0, unequal_alone = 0;
  double worst = 0.0;
  void Print(const char* what, Isa isa) const {
    std::printf("  %s %s: %d outputs, %d outside the bound, %d outside the rows written, "
                "%d unequal to the token alone, max relative error %.3g\n",
                IsaName(isa), what, checked, bad, untouched_changed, unequal_alone, worst);
  }
  void Require() const {
    CHECK(checked > 0);
    CHECK(bad == 0);
    CHECK(untouched_changed == 0);
    CHECK(unequal_alone == 0);
  }
};

// Checks y (rows [row0, row_end) of `tokens` tokens at stride ldy, sentinel
// -7 elsewhere) against ref [tokens, rows] within bound(t, r), and each token
// against `alone` [tokens, ldy].
template <typename Bound>
void Compare(const std::vector<float>& y, const std::vector<float>& alone, const std::vector<float>& ref,
             int tokens, int rows, int row0, int row_end, int ldy, Bound&& bound, const std::string& name,
             Tally& tally) {
  std::vector<float> got, want;
  for (int t = 0; t < tokens; ++t) {
    for (int r = 0; r < ldy; ++r) {
      const float v = y[static_cast<size_t>(t) * ldy + r];
      if (r < row0 || r >= row_end) {
        tally.untouched_changed += v != -7.f;
        continue;
      }
      const double diff = std::fabs(static_cast<double>(v) - ref[static_cast<size_t>(t) * rows + r]);
      if (!(diff <= bound(t, r)) && ++tally.bad <= 3) {
        CHECK_LE(diff, bound(t, r), awqtest::Case(name, " t=", t, " r=", r));
      }
      tally.unequal_alone += v != alone[static_cast<size_t>(t) * ldy + r];
      got.push_back(v);
      want.push_back(ref[static_cast<size_t>(t) * rows + r]);
      ++tally.checked;
    }
  }
  tally.worst = std::max(tally.worst, awqtest::RelativeError(got, want));
}

// Whether the mapping of this process that holds `p` is read-only
// (/proc/self/maps: "start-end perms ...").
bool ReadOnlyMapping(const void* p) {
  std::ifstream maps("/proc/self/maps");
  const uintptr_t at = reinterpret_cast<uintptr_t>(p);
  uintptr_t start, end;
  char dash;
  std::string perms, rest;
  while (maps >> std::hex >> start >> dash >> end >> perms && std::getline(maps, rest)) {
    if (at >= start && at < end) return perms.compare(0, 3, "r--") == 0;
  }
  return false;
}

// The process's virtual memory size in bytes (/proc/self/status: VmSize).
uint64_t VirtualBytes() {
  std::ifstream status("/proc/self/status");
  std::string key;
  uint64_t kb = 0;
  while (status >> key) {
    if (key == "VmSize:" && status >> kb) return kb << 10;
  }
  return 0;
}

// A tied int8 table of `rows` rows x `d` in anonymous memory (the loader may
// release its pages), the same table as `embed` and `lm_head`.
struct TiedWeights {
  TiedWeights(int rows, int d) {
    const size_t codes = static_cast<size_t>(rows) * d;
    memory = HugePageBuffer(codes + codes / EmbeddingTable::kBlock * 2);
    std::mt19937 rng(36);
    for (size_t i = 0; i < codes; ++i) memory.get()[i] = static_cast<uint8_t>(rng());
    uint16_t* scales = reinterpret_cast<uint16_t*>(memory.get() + codes);
    for (size_t i = 0; i < codes / EmbeddingTable::kBlock; ++i) scales[i] = F32ToF16(0.01f);
    weights.embed.rows = rows;
    weights.embed.d = d;
    weights.embed.q8 = reinterpret_cast<const int8_t*>(memory.get());
    weights.embed.q8_scales = scales;
    weights.lm_head = weights.embed;
  }
  std::shared_ptr<uint8_t> memory;
  ModelWeights weights;
};

// Whether an int8 table holds the file's codes [rows, d] and scales
// [rows, d/32] in whichever layout the loader gave it (rows; or tiles where
// the CPU runs the AVX-512 VNNI level: ops/embedding_table.h AddTableTiles).
bool TableHolds(const awqcore::EmbeddingTable& table, const Bytes& codes, const Bytes& scales) {
  if (table.f16 != nullptr) return false;
  const int blocks = table.d / awqcore::EmbeddingTable::kBlock;
  for (int r = 0; r < table.rows; ++r) {
    for (int c = 0; c < table.d; ++c) {
      if (awqcore::TableCode(table, r, c) != static_cast<int8_t>(codes[static_cast<size_t>(r) * table.d + c])) return false;
    }
    for (int b = 0; b < blocks; ++b) {
      uint16_t want;
      std::memcpy(&want, scales.data() + 2 * (static_cast<size_t>(r) * blocks + b), 2);
      if (awqcore::TableScale(table, r, b) != want) return false;
    }
  }
  return true;
}

}  // namespace

TEST(int8_tables_load_in_every_combination) {
  // llama: untied, both tables int8, then each table int8 with the other f16.
  FileSpec spec = TinyModel("llama", true);
  auto model = Load(Build(spec));
  const awqcore::ModelWeights* w = &model->impl().weights;
  const auto& t = spec.tensors;
  CHECK(w->embed.f16 == nullptr && w->lm_head.f16 == nullptr);
  CHECK(SameBytes(w->embed.q8, t[TensorIndex(spec, "model.embed_tokens.weight_q8")].bytes, 3200));
  CHECK(SameBytes(w->embed.q8_scales, t[TensorIndex(spec, "model.embed_tokens.weight_q8_scales")].bytes, 200));
  CHECK(TableHolds(w->lm_head, t[TensorIndex(spec, "lm_head.weight_q8")].bytes,
                   t[TensorIndex(spec, "lm_head.weight_q8_scales")].bytes));
  // The int8 lm_head is tiled exactly at the AVX-512 VNNI level; the
  // untied embedding keeps the file's rows.
  CHECK((w->lm_head.q8_tiles != nullptr) == (awqcore::DetectedIsa() == awqcore::Isa::kAvx512Vnni));
  CHECK(w->lm_head.rows == 50 && w->lm_head.d == 64 && w->lm_head.data() != w->embed.data());

  FileSpec mixed = TinyModel("llama");
  mixed.tensors.erase(mixed.tensors.begin() + TensorIndex(mixed, "lm_head.weight"));
  AddTable(mixed, "lm_head", true);
  model = Load(Build(mixed));
  w = &model->impl().weights;
  CHECK(w->embed.f16 != nullptr && w->embed.q8 == nullptr);
  CHECK(TableHolds(w->lm_head, mixed.tensors[TensorIndex(mixed, "lm_head.weight_q8")].bytes,
                   mixed.tensors[TensorIndex(mixed, "lm_head.weight_q8_scales")].bytes));

  mixed = TinyModel("llama", true);
  mixed.tensors.erase(mixed.tensors.begin() + TensorIndex(mixed, "lm_head.weight_q8_scales"));
  mixed.tensors.erase(mixed.tensors.begin() + TensorIndex(mixed, "lm_head.weight_q8"));
  AddTable(mixed, "lm_head", false);
  model = Load(Build(mixed));
  w = &model->impl().weights;
  CHECK(w->embed.q8 != nullptr && w->lm_head.f16 != nullptr);

  // qwen2: tied, one int8 table serves both (in either layout).
  const FileSpec tied = TinyModel("qwen2", true);
  model = Load(Build(tied));
  w = &model->impl().weights;
  CHECK(TableHolds(w->embed, tied.tensors[TensorIndex(tied, "model.embed_tokens.weight_q8")].bytes,
                   tied.tensors[TensorIndex(tied, "model.embed_tokens.weight_q8_scales")].bytes));
  CHECK(w->lm_head.q8 == w->embed.q8 && w->lm_head.q8_tiles == w->embed.q8_tiles);
  CHECK(w->lm_head.q8_scales == w->embed.q8_scales && w->lm_head.q8_tile_scales == w->embed.q8_tile_scales);
  CHECK(w->lm_head.data() == w->embed.data());
}

TEST(table_tiles_at_load_are_sealed_and_skipped_for_shared_mappings_and_no_memory) {
  // The loader's step (AddTableTiles): at the AVX-512 VNNI level a tied int8
  // table becomes read-only tiles; AWQCORE_MAP_WEIGHTS=1 (weights shared
  // through the page cache) and a failed allocation of the tiles (the
  // address space capped just above its use) keep the rows, which the AVX2
  // row kernels read at this level too (test_simd_kernels.cpp table_*).
  if (DetectedIsa() != Isa::kAvx512Vnni) {
    std::printf("  avx512vnni: not the detected level, the loader keeps the rows, skipped\n");
    return;
  }
  TiedWeights tiled(40, 4096);
  AddTableTiles(tiled.weights);
  CHECK(tiled.weights.lm_head.q8_tiles != nullptr && tiled.weights.embed.q8_tiles == tiled.weights.lm_head.q8_tiles);
  CHECK(ReadOnlyMapping(tiled.weights.lm_head.q8_tiles));

  TiedWeights shared(40, 4096);
  setenv("AWQCORE_MAP_WEIGHTS", "1", 1);
  AddTableTiles(shared.weights);
  unsetenv("AWQCORE_MAP_WEIGHTS");
  CHECK(shared.weights.lm_head.q8_tiles == nullptr && shared.weights.lm_head.q8 == shared.weights.embed.q8);
  CHECK(shared.weights.lm_head.q8 == reinterpret_cast<const int8_t*>(shared.memory.get()));

  TiedWeights no_memory(1000, 4096);  // 4 MB of tiles, 1 MB of address space to spare
  rlimit limit;
  getrlimit(RLIMIT_AS, &limit);
  const rlimit capped = {VirtualBytes() + (1 << 20), limit.rlim_max};
  bool threw = false;
  if (setrlimit(RLIMIT_AS, &capped) == 0) {
    try {
      AddTableTiles(no_memory.weights);
    } catch (...) {
      threw = true;
    }
    setrlimit(RLIMIT_AS, &limit);
  } else {
    std::printf("  setrlimit(RLIMIT_AS) refused: the failed allocation is not tested\n");
  }
  std::printf("  tiles at load: sealed %d, kept rows with AWQCORE_MAP_WEIGHTS=1 %d, "
              "kept rows without memory %d (threw %d)\n",
              ReadOnlyMapping(tiled.weights.lm_head.q8_tiles), shared.weights.lm_head.q8_tiles == nullptr,
              no_memory.weights.lm_head.q8_tiles == nullptr, threw);
  CHECK(!threw);
  CHECK(no_memory.weights.lm_head.q8_tiles == nullptr && no_memory.weights.lm_head.q8 != nullptr);
  CHECK(no_memory.weights.embed.q8 == no_memory.weights.lm_head.q8);
}

TEST(weights_copy_holds_the_mapping_bytes_sealed_or_is_skipped) {
  // CopyToHugePages (the loader's copy of a file over one huge page): the
  // same bytes, read-only as the tiles are (SealReadOnly); nullptr for a
  // mapping under one huge page and with AWQCORE_MAP_WEIGHTS=1. The source
  // is a read-only anonymous mapping standing in for the file's: the copy
  // drops its pages as it goes, so the bytes are checked against their rule.
  const uint64_t size = (4ull << 20) + 4096 + 17;  // 2 huge pages, a page and a tail
  const auto byte = [](uint64_t i) { return static_cast<uint8_t>((i * 2654435761u) >> 13); };
  const auto read_only_source = [&byte](uint64_t n) {
    void* p = mmap(nullptr, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) throw std::runtime_error("mmap of the test's source failed");
    for (uint64_t i = 0; i < n; ++i) static_cast<uint8_t*>(p)[i] = byte(i);
    mprotect(p, n, PROT_READ);
    return static_cast<const uint8_t*>(p);
  };
  const uint8_t* source = read_only_source(size);
  const uint8_t* copy = CopyToHugePages(source, size);
  CHECK(copy != nullptr && copy != source);
  uint64_t wrong = 0;
  for (uint64_t i = 0; copy != nullptr && i < size; ++i) wrong += copy[i] != byte(i);
  const bool sealed = copy != nullptr && ReadOnlyMapping(copy) && ReadOnlyMapping(copy + size - 1);
  std::printf("  weights copy of %llu bytes: %llu bytes differ, sealed %d\n",
              static_cast<unsigned long long>(size), static_cast<unsigned long long>(wrong), sealed);
  CHECK(wrong == 0);
  CHECK(sealed);
  if (copy != nullptr) munmap(const_cast<uint8_t*>(copy), size);

  setenv("AWQCORE_MAP_WEIGHTS", "1", 1);
  CHECK(CopyToHugePages(source, size) == nullptr);
  unsetenv("AWQCORE_MAP_WEIGHTS");
  munmap(const_cast<uint8_t*>(source), size);
  const uint64_t small = (2ull << 20) - 1;
  const uint8_t* small_source = read_only_source(small);
  CHECK(CopyToHugePages(small_source, small) == nullptr);
  munmap(const_cast<uint8_t*>(small_source), small);
}

TEST(tiled_table_gather_equals_row_layout_gather) {
  std::mt19937 rng(31);
  int rows_checked = 0, unequal = 0;
  for (int d : {32, 96, 160, 576}) {
    for (int rows : {1, 15, 17, 50}) {
      const awqtest::RandomTable w(rows, d, /*int8=*/true, rng, kMisaligned);
      std::shared_ptr<const uint8_t> storage;
      const EmbeddingTable tiled = TileTable(w.table, storage);
      CHECK(tiled.q8 == nullptr && tiled.q8_tiles != nullptr && tiled.rows == rows && tiled.d == d);
      std::vector<int> ids(rows);
      for (int r = 0; r < rows; ++r) ids[r] = rows - 1 - r;  // every row, out of order
      std::vector<float> want(static_cast<size_t>(rows) * d), got(want.size(), -7.f);
      EmbeddingGather(w.table, ids.data(), rows, want.data());
      EmbeddingGather(tiled, ids.data(), rows, got.data());
      for (int r = 0; r < rows; ++r) {
        const bool same = std::equal(got.begin() + r * d, got.begin() + (r + 1) * d, want.begin() + r * d);
        if (!same && unequal++ < 3) std::printf("  FAILED case: d=%d rows=%d row %d differs\n", d, rows, ids[r]);
        ++rows_checked;
      }
    }
  }
  std::printf("  tiled gather: %d rows, %d unequal to the row layout's\n", rows_checked, unequal);
  CHECK(unequal == 0);
}

TEST(tiled_table_span_of_partial_blocks_is_an_error) {
  // A tiled table of a width that is not whole 32-column blocks (no loader
  // makes one): the scalar row kernel's span would drop the last 16 columns,
  // so it must throw, naming the span and the width.
  std::vector<uint8_t> codes(static_cast<size_t>(EmbeddingTable::kTileRows) * 48, 128);
  std::vector<uint16_t> scales(EmbeddingTable::kTileRows * 2, F32ToF16(1.f));
  EmbeddingTable tiled;
  tiled.rows = 1;
  tiled.d = 48;
  tiled.q8_tiles = codes.data();
  tiled.q8_tile_scales = scales.data();
  std::vector<float> x(48, 1.f), y(1);
  CHECK_THROWS(TableRowsScalar(tiled, 0, 1, x.data(), 48, 1, y.data(), 1), Error,
               "span of columns [0, 48) is not made of whole 32-column blocks (d = 48)");
}

TEST(tiling_with_release_reads_every_row_before_releasing_it) {
  // The loader's form: the rows' pages are released in chunks of 128 tiles
  // at d = 4096 (8 MB) as they are regrouped. 4088 rows x 4096: two chunks
  // of tiles, the second's last tile short (8 rows), in anonymous memory,
  // where a released page reads as zeros: the tiles must still equal the
  // rows (each read before its release), the rows' pages must be gone, and
  // the bytes just past the table (a guard in the same mapping, where a
  // chunk counted in whole tiles would reach) untouched.
  constexpr int kRowsHere = 4088, kD = 4096, kGuard = 1 << 16;
  const size_t codes = static_cast<size_t>(kRowsHere) * kD, blocks = codes / EmbeddingTable::kBlock;
  const std::shared_ptr<uint8_t> memory = HugePageBuffer(codes + kGuard + blocks * 2 + kGuard);
  int8_t* q8 = reinterpret_cast<int8_t*>(memory.get());
  uint16_t* scales = reinterpret_cast<uint16_t*>(memory.get() + codes + kGuard);
  std::mt19937 rng(34);
  for (size_t i = 0; i < codes + kGuard; ++i) q8[i] = static_cast<int8_t>(rng());
  for (size_t i = 0; i < blocks + kGuard / 2; ++i) scales[i] = F32ToF16(0.002f + (rng() % 1000) * 1e-5f);
  const std::vector<int8_t> q8_copy(q8, q8 + codes + kGuard);
  const std::vector<uint16_t> scales_copy(scales, scales + blocks + kGuard / 2);
  EmbeddingTable rows;
  rows.rows = kRowsHere;
  rows.d = kD;
  rows.q8 = q8_copy.data();
  rows.q8_scales = scales_copy.data();
  EmbeddingTable released = rows;
  released.q8 = q8;
  released.q8_scales = scales;
  std::shared_ptr<const uint8_t> storage;
  const EmbeddingTable tiled = TileTable(released, storage, /*release_rows=*/true);
  int unequal = 0;
  std::vector<float> want(kD), got(kD);
  for (int r = 0; r < kRowsHere; ++r) {
    EmbeddingGather(rows, &r, 1, want.data());
    EmbeddingGather(tiled, &r, 1, got.data());
    if (want != got && unequal++ < 3) std::printf("  FAILED case: row %d differs\n", r);
  }
  size_t nonzero_rows = 0;  // bytes of the table's first rows still resident
  for (size_t i = 0; i < codes / 2; ++i) nonzero_rows += q8[i] != 0;
  const bool guard_intact = std::equal(q8 + codes, q8 + codes + kGuard, q8_copy.begin() + codes) &&
                            std::equal(scales + blocks, scales + blocks + kGuard / 2, scales_copy.begin() + blocks);
  std::printf("  tiling with release: %d of %d rows unequal, %zu nonzero bytes left in the first half of the "
              "released rows, guard %s\n", unequal, kRowsHere, nonzero_rows, guard_intact ? "intact" : "CHANGED");
  CHECK(unequal == 0);
  CHECK(nonzero_rows == 0);
  CHECK(guard_intact);
}

TEST(tiled_table_kernels_match_reference_and_each_token_alone) {
  std::mt19937 rng(32);
  Q8Buffer buffer;
  for (Isa isa : TileLevels()) {
    Tally q8_tally, f32_tally;
    for (int d : {32, 96, 160, 576}) {
      for (int rows : {1, 15, 17, 50}) {
        const awqtest::RandomTable w(rows, d, /*int8=*/true, rng, kMisaligned);
        std::shared_ptr<const uint8_t> storage;
        const EmbeddingTable tiled = TileTable(w.table, storage);
        for (int tokens : kTokenCounts) {
          const awqtest::StridedTokens xs(tokens, d, rng);
          const MisalignedQ8 x(buffer.Quantize(xs.x(), xs.stride, tokens, d, kQ8Block, Q8Layout::kNatural));
          const std::vector<float> a = awqtest::Dequantized(x.view);
          std::vector<float> q8_ref(static_cast<size_t>(tokens) * rows), f32_ref(q8_ref.size());
          TableLinearReference(w.table, a.data(), tokens, q8_ref.data());
          TableLinearReference(w.table, xs.dense.data(), tokens, f32_ref.data());
          for (auto [row0, row_end] : RowRanges(rows)) {
            const int ldy = rows + 2;
            const std::string name = awqtest::Case(IsaName(isa), " d=", d, " rows=", rows, " tokens=", tokens,
                                                   " rows ", row0, "..", row_end);
            // W8A8.
            std::vector<float> y(static_cast<size_t>(tokens) * ldy, -7.f), alone(y);
            TableRowsQ8(tiled, row0, row_end - row0, x.view, y.data() + row0, ldy, isa);
            for (int t = 0; t < tokens; ++t) {
              TableRowsQ8(tiled, row0, row_end - row0, x.Token(t), alone.data() + t * ldy + row0, ldy, isa);
            }
            Compare(y, alone, q8_ref, tokens, rows, row0, row_end, ldy, [&](int t, int r) {
              return awqtest::Gamma(d / kQ8Block + 2) * w.AbsProductSum(r, a.data() + static_cast<size_t>(t) * d);
            }, name + " W8A8", q8_tally);
            // f32 activations.
            std::fill(y.begin(), y.end(), -7.f);
            std::fill(alone.begin(), alone.end(), -7.f);
            TableRows(tiled, row0, row_end - row0, xs.x(), xs.stride, tokens, y.data() + row0, ldy, isa);
            for (int t = 0; t < tokens; ++t) {
              TableRows(tiled, row0, row_end - row0, xs.x() + t * xs.stride, xs.stride, 1,
                        alone.data() + t * ldy + row0, ldy, isa);
            }
            Compare(y, alone, f32_ref, tokens, rows, row0, row_end, ldy, [&](int t, int r) {
              return awqtest::Gamma(d + 1) * w.AbsProductSum(r, xs.x() + static_cast<size_t>(t) * xs.stride);
            }, name + " f32", f32_tally);
          }
        }
      }
    }
    q8_tally.Print("tiled int8 table, int8 activations", isa);
    f32_tally.Print("tiled int8 table, f32 activations", isa);
    q8_tally.Require();
    f32_tally.Require();
  }
}

TEST(tiled_table_op_is_independent_of_the_thread_count) {
  // The pool hands out whole tiles; 1 and 3 threads must give the same bits
  // (a tile split between threads would still be correct per lane, but a
  // split that lost or doubled rows would not).
  std::mt19937 rng(33);
  ThreadPool one(1), three(3);
  int checked = 0, unequal = 0;
  for (int rows : {17, 50, 161}) {
    const int d = 96;
    const awqtest::RandomTable w(rows, d, /*int8=*/true, rng, kMisaligned);
    std::shared_ptr<const uint8_t> storage;
    const EmbeddingTable tiled = TileTable(w.table, storage);
    for (bool int8 : {true, false}) {
      for (int tokens : {1, 8, 11}) {
        const std::vector<float> x = awqtest::RandomFloats(static_cast<size_t>(tokens) * d, rng);
        std::vector<float> y1(static_cast<size_t>(tokens) * rows, -7.f), y3(y1.size(), -9.f);
        TableLinearForward(tiled, x.data(), tokens, y1.data(), one, DetectedIsa(), int8);
        TableLinearForward(tiled, x.data(), tokens, y3.data(), three, DetectedIsa(), int8);
        for (size_t i = 0; i < y1.size(); ++i) unequal += y1[i] != y3[i];
        checked += static_cast<int>(y1.size());
      }
    }
  }
  std::printf("  tiled table op (%s), 1 vs 3 threads: %d outputs, %d unequal\n", IsaName(DetectedIsa()),
              checked, unequal);
  CHECK(unequal == 0);
}

AWQCORE_TEST_MAIN()
