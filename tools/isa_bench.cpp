// Micro-benchmark of the decode GEMVs at every instruction set level this
// CPU runs (cpu_features.h), in one process so the levels share the
// machine's state: the W4A8 int4 linear (Int4LinearForward, one token by default: the
// activation rounding, the row split over the pool and the kernels) and the
// W8A8 int8 lm_head (TableLinearForward; the AVX-512 VNNI level on the tile
// layout its loader makes, the others on rows), at Qwen2.5-1.5B's and
// SmolLM2's shapes. Dev tool, not part of the library.
//
//   build/.../isa_bench [--threads 2] [--reps 9] [--megabytes 256] [--gemm-tokens 128] [--only qwen] [--tokens 1]
//
// --tokens N (up to kQ8MaxTokens) times the GEMVs on a batched decode step of
// N tokens; GB/s then count the weight bytes once per pass, as a batch reads them.
// Where the CPU has AVX-512 VNNI, the int4 shapes also run that level on the
// tile layout its loader makes (row "vnni tiles"; ops/int4_tiles.h), in the
// decode rows and the prefill GEMM alike.
//
// Each shape is allocated as copies totalling --megabytes (8x this machine's
// 32 MB L3), and one timed pass runs the GEMV once over every copy, so the
// weights stream from DRAM as in decode. Repetitions interleave the levels
// (level order rotates each repetition) and each level reports the median
// pass in GB/s of weight bytes read, next to the read bandwidth of the same
// threads measured in the same run (median of the probes taken between
// repetitions). On a shared machine wall time mostly measures the scheduler,
// so each level also runs its own row kernel alone over every row on the
// calling thread and reports GB per CPU-second of that thread (memory stalls
// included, time descheduled not): the kernel's cost per byte streamed from
// DRAM. Compare levels within one run.
//
// Then the prefill GEMM (the W4A8 row kernels with --gemm-tokens tokens, a
// prefill chunk: Transformer::kChunkTokens) at every level through the
// dispatcher Int4RowsQ8 (the AVX-512 VNNI level takes the GEMM, the others
// their GEMVs), on one copy of each shape (compute-bound: the weights come
// from L2/L3 as in prefill), rows in slices of 32 as Int4GatedMlpForward
// hands them out: GMAC per CPU-second of the calling thread, medians of the
// interleaved repetitions.
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "bench_harness.h"
#include "cpu_features.h"
#include "model_weights.h"
#include "ops/embedding_table.h"
#include "ops/int4_linear.h"
#include "ops/int4_tiles.h"
#include "ops/linear_kernels.h"
#include "ops/q8_activations.h"
#include "thread_pool.h"

using namespace awqcore;
using namespace awqcore::bench;

namespace {

// Bytes/s of the pool's threads reading disjoint slices of `buffer` (a sum
// of 64-bit words, which the compiler vectorises far past memory speed).
double ReadBandwidth(const std::vector<uint64_t>& buffer, ThreadPool& pool) {
  std::vector<uint64_t> sums(64, 0);
  const int64_t chunks = pool.num_threads();
  const int64_t per_chunk = static_cast<int64_t>(buffer.size()) / chunks;
  const double start = Seconds();
  pool.ParallelFor(chunks, [&](int64_t begin, int64_t end) {
    for (int64_t c = begin; c < end; ++c) {
      uint64_t sum = 0;
      const uint64_t* p = buffer.data() + c * per_chunk;
      for (int64_t i = 0; i < per_chunk; ++i) sum += p[i];
      sums[c * 8] = sum;  // one cache line per chunk
    }
  });
  const double seconds = Seconds() - start;
  if (sums[0] == 12345) std::printf(" ");  // keeps the sums live
  return static_cast<double>(per_chunk * chunks * sizeof(uint64_t)) / seconds;
}

// Bytes per CPU-second of the calling thread summing `buffer`: the ceiling
// of the kernels' "GB per CPU-second".
double ReadBandwidthPerCpuSecond(const std::vector<uint64_t>& buffer) {
  const double start = ThreadCpuSeconds();
  uint64_t sum = 0;
  for (uint64_t v : buffer) sum += v;
  const double seconds = ThreadCpuSeconds() - start;
  if (sum == 12345) std::printf(" ");  // keeps the sum live
  return static_cast<double>(buffer.size() * sizeof(uint64_t)) / seconds;
}

template <typename T>
const T* Aligned64(const T* p) {
  return reinterpret_cast<const T*>((reinterpret_cast<uintptr_t>(p) + 63) & ~uintptr_t{63});
}

// `copies` int4 matrices [out, in] with random codes, scales and zeros, in
// the row layout (`layers`) and, with_tiles, also in the tile layout the
// loader makes at the AVX-512 VNNI level (`tiled`: ops/int4_tiles.h).
struct Int4Copies {
  Int4Copies(int out, int in, int group_size, int copies, bool with_tiles, std::mt19937& rng) {
    const size_t codes = static_cast<size_t>(out) * in / 2, groups = static_cast<size_t>(out) * (in / group_size);
    qweight.resize(codes * copies + 64);
    scales.resize(groups * copies);
    zeros.resize(groups * copies);
    for (size_t i = 0; i < qweight.size(); i += 4) {
      const uint32_t v = rng();
      std::memcpy(&qweight[i], &v, std::min<size_t>(4, qweight.size() - i));
    }
    for (uint16_t& s : scales) s = 0x2000 + (rng() & 0x3ff);  // f16 ~ 0.008 .. 0.016
    for (uint8_t& z : zeros) z = rng() & 15;
    // 64-byte aligned, as .awqbin tensors are (docs/format.md).
    const uint8_t* base = Aligned64(qweight.data());
    for (int k = 0; k < copies; ++k) {
      layers.push_back(Int4Linear{out, in, group_size, base + k * codes, scales.data() + k * groups,
                                  zeros.data() + k * groups, nullptr});
      // The loader's transposed copy of the scales (ops/int4_linear.h), which
      // the VNNI decode kernel reads in their place.
      tile_scales.push_back(Int4TileScales(layers.back()));
      layers.back().tile_scales = tile_scales.back().data();
    }
    if (with_tiles) {
      tiled_qweight = qweight;
      for (int k = 0; k < copies; ++k) {
        tiled.push_back(layers[k]);
        tiled.back().qweight = Aligned64(tiled_qweight.data()) + k * codes;
        RegroupInt4Tiles(tiled.back(), const_cast<uint8_t*>(tiled.back().qweight));
        tiled.back().layout = Int4Layout::kTiles;
      }
    }
    bytes = (codes + groups * 3) * copies;
  }
  std::vector<uint8_t> qweight, tiled_qweight, zeros;
  std::vector<uint16_t> scales;
  std::vector<std::vector<uint8_t>> tile_scales;  // [copies]
  std::vector<Int4Linear> layers, tiled;
  size_t bytes = 0;
};

// `copies` int8 tables [rows, d] with one f16 scale per 32 columns, in the
// row layout (`tables`) and the AVX-512 VNNI level's tile layout (`tiled`,
// as the loader makes it where that level is detected: AddTableTiles).
struct TableCopies {
  TableCopies(int rows, int d, int copies, bool with_tiles, std::mt19937& rng) {
    const size_t codes = static_cast<size_t>(rows) * d, blocks = codes / EmbeddingTable::kBlock;
    q8.resize(codes * copies + 64);
    scales.resize(blocks * copies);
    for (int8_t& q : q8) q = static_cast<int8_t>(rng());
    for (uint16_t& s : scales) s = 0x2000 + (rng() & 0x3ff);
    for (int k = 0; k < copies; ++k) {
      EmbeddingTable table;
      table.rows = rows;
      table.d = d;
      table.q8 = Aligned64(q8.data()) + k * codes;  // as .awqbin tensors are
      table.q8_scales = scales.data() + k * blocks;
      tables.push_back(table);
      if (with_tiles) {
        tile_storage.emplace_back();
        tiled.push_back(TileTable(table, tile_storage.back()));
      }
    }
    bytes = (codes + blocks * 2) * copies;
  }
  // The table copy k that `isa`'s kernels read.
  const EmbeddingTable& For(Isa isa, int k) const { return isa == Isa::kAvx512Vnni ? tiled[k] : tables[k]; }
  std::vector<int8_t> q8;
  std::vector<uint16_t> scales;
  std::vector<EmbeddingTable> tables, tiled;
  std::vector<std::shared_ptr<const uint8_t>> tile_storage;
  size_t bytes = 0;
};

// Each level's own W4A8 kernel (the op's dispatcher, Int4RowsQ8, routes a
// level to the one below for the shapes where that is faster: these runs
// are how that choice is made).
using Int4Q8Kernel = void (*)(const Int4Linear&, int, int, const Q8Activations&, float*, int);
Int4Q8Kernel Int4Q8KernelOf(Isa isa) {
  switch (isa) {
    case Isa::kAvx2: return Int4RowsQ8Avx2;
    case Isa::kAvx512: return Int4RowsQ8Avx512;
    case Isa::kAvx512Vnni: return Int4DecodeQ8Avx512Vnni;
    default: return Int4RowsQ8Scalar;
  }
}

struct Shape {
  const char* name;
  int out, in, group_size;  // group_size 0: an int8 table (lm_head)
};

// The prefill GEMM section (header): each int4 shape's row kernels with
// `tokens` tokens at every level, interleaved.
template <size_t kShapes>
void GemmBench(const Shape (&shapes)[kShapes], const std::vector<Isa>& levels, const std::string& only,
               int tokens, int reps, std::mt19937& rng) {
  constexpr int kSliceRows = 32;
  std::printf("prefill GEMM, %d tokens, 1 thread, rows in slices of %d (GMAC per CPU-second):\n", tokens,
              kSliceRows);
  for (const Shape& shape : shapes) {
    if (shape.group_size == 0 || std::string(shape.name).find(only) == std::string::npos) continue;
    const bool with_tiles = std::find(levels.begin(), levels.end(), Isa::kAvx512Vnni) != levels.end();
    const Int4Copies w(shape.out, shape.in, shape.group_size, 1, with_tiles, rng);
    std::vector<float> x(static_cast<size_t>(tokens) * shape.in), y(static_cast<size_t>(tokens) * shape.out);
    for (float& v : x) v = std::uniform_real_distribution<float>(-1.f, 1.f)(rng);
    Q8Buffer q8;
    const Q8Activations& a = q8.Quantize(x.data(), shape.in, tokens, shape.in, shape.group_size);
    // Every level on the rows, then the AVX-512 VNNI level on the tile layout.
    const size_t variants = levels.size() + (with_tiles ? 1 : 0);
    auto run = [&](size_t i) {
      const Int4Linear& layer = i < levels.size() ? w.layers[0] : w.tiled[0];
      const Isa isa = i < levels.size() ? levels[i] : Isa::kAvx512Vnni;
      for (int r = 0; r < shape.out; r += kSliceRows) {
        Int4RowsQ8(layer, r, std::min(kSliceRows, shape.out - r), a, y.data() + r, shape.out, isa);
      }
    };
    std::vector<std::vector<double>> seconds(variants);
    for (size_t i = 0; i < variants; ++i) run(i);  // warm-up: the weights into the caches
    Interleaved(variants, reps, [&](size_t i) {
      const double start = ThreadCpuSeconds();
      run(i);
      seconds[i].push_back(ThreadCpuSeconds() - start);
    });
    const double macs = static_cast<double>(shape.out) * shape.in * tokens;
    std::printf("  %s:", shape.name);
    for (size_t i = 0; i < variants; ++i) {
      std::printf("  %s %.1f", i < levels.size() ? IsaName(levels[i]) : "vnni tiles", macs / Median(seconds[i]) / 1e9);
    }
    std::printf("\n");
  }
}

}  // namespace

int main(int argc, char** argv) {
  const CommandLine args(argc, argv, {"--threads N", "--reps N", "--megabytes N", "--gemm-tokens N",
                                      "--only NAME_PART", "--tokens N"});
  const int threads = args.Int("--threads", 2), reps = args.Int("--reps", 9);
  const int megabytes = args.Int("--megabytes", 256), gemm_tokens = args.Int("--gemm-tokens", 128);
  const int tokens = args.Int("--tokens", 1);
  const std::string only = args.Text("--only", "");  // run the shapes whose name contains it
  if (threads < 1 || reps < 1 || megabytes < 1 || gemm_tokens < 1) {
    args.Fail("--threads, --reps, --megabytes and --gemm-tokens must be positive");
  }
  if (tokens < 1 || tokens > kQ8MaxTokens) {
    args.Fail("--tokens must be 1.." + std::to_string(kQ8MaxTokens) + " (a decode step)");
  }
  const std::vector<Isa> levels = SimdLevels();
  std::printf("; %d threads, %d token(s), %d interleaved repetitions, medians, %d MB of weights per shape\n",
              threads, tokens, reps, megabytes);
  ThreadPool pool(threads);
  std::vector<uint64_t> probe(static_cast<size_t>(512) << 17, 1);  // 512 MB
  std::vector<double> bandwidths, bandwidths_per_cpu_second;
  const Shape shapes[] = {
      {"qwen2.5-1.5b gate/up 8960x1536 g128", 8960, 1536, 128},
      {"qwen2.5-1.5b down 1536x8960 g128", 1536, 8960, 128},
      {"qwen2.5-1.5b q/o 1536x1536 g128", 1536, 1536, 128},
      {"llama2-7b gate/up 11008x4096 g128", 11008, 4096, 128},
      {"llama2-7b down 4096x11008 g128", 4096, 11008, 128},
      {"smollm2 gate/up 1536x576 g64", 1536, 576, 64},
      {"smollm2 down 576x1536 g64", 576, 1536, 64},
      {"smollm2 down 576x1536 g32", 576, 1536, 32},
      {"qwen2.5-1.5b lm_head int8 151936x1536", 151936, 1536, 0},
      {"smollm2 lm_head int8 49152x576", 49152, 576, 0},
      {"llama2-7b lm_head int8 32000x4096", 32000, 4096, 0},
  };
  std::mt19937 rng(1);
  for (const Shape& shape : shapes) {
    if (std::string(shape.name).find(only) == std::string::npos) continue;
    const size_t matrix_bytes = static_cast<size_t>(shape.out) * shape.in / (shape.group_size ? 2 : 1);
    const int copies = static_cast<int>(std::max<size_t>(1, (static_cast<size_t>(megabytes) << 20) / matrix_bytes));
    std::vector<float> x(static_cast<size_t>(tokens) * shape.in), y(static_cast<size_t>(tokens) * shape.out);
    for (float& v : x) v = std::uniform_real_distribution<float>(-1.f, 1.f)(rng);
    // The variants: every level on the row layout, and (int4 shapes, where
    // the CPU has it) the AVX-512 VNNI level on the loader's tile layout.
    struct Variant {
      std::string name;
      Isa isa;
      bool tiles;
    };
    std::vector<Variant> variants;
    for (Isa isa : levels) variants.push_back({IsaName(isa), isa, false});
    const bool with_tiles = std::find(levels.begin(), levels.end(), Isa::kAvx512Vnni) != levels.end();
    if (shape.group_size > 0 && with_tiles) variants.push_back({"vnni tiles", Isa::kAvx512Vnni, true});
    // [variant]: the op's wall seconds (the pool's threads), the kernel's
    // CPU seconds (the calling thread alone).
    std::vector<std::vector<double>> op_seconds(variants.size()), kernel_seconds(variants.size());
    size_t bytes = 0;
    // op(variant, k) runs the op on copy k; kernel(variant, k) the row kernel over all its rows.
    auto run_all = [&](auto&& op, auto&& kernel, int count) {
      for (size_t i = 0; i < variants.size(); ++i) op(variants[i], 0);  // warm-up (allocations)
      Interleaved(variants.size(), reps, [&](size_t i) {
        const double start = Seconds();
        for (int k = 0; k < count; ++k) op(variants[i], k);
        op_seconds[i].push_back(Seconds() - start);
        const double cpu_start = ThreadCpuSeconds();
        for (int k = 0; k < count; ++k) kernel(variants[i], k);
        kernel_seconds[i].push_back(ThreadCpuSeconds() - cpu_start);
      }, [&] {
        bandwidths.push_back(ReadBandwidth(probe, pool));
        bandwidths_per_cpu_second.push_back(ReadBandwidthPerCpuSecond(probe));
      });
    };
    Q8Buffer q8;
    if (shape.group_size > 0) {
      const Int4Copies w(shape.out, shape.in, shape.group_size, copies, with_tiles, rng);
      bytes = w.bytes;
      const Q8Activations& a = q8.Quantize(x.data(), shape.in, tokens, shape.in, shape.group_size);
      auto layer = [&](const Variant& v, int k) -> const Int4Linear& { return v.tiles ? w.tiled[k] : w.layers[k]; };
      run_all([&](const Variant& v, int k) { Int4LinearForward(layer(v, k), x.data(), tokens, y.data(), pool, v.isa); },
              [&](const Variant& v, int k) { Int4Q8KernelOf(v.isa)(layer(v, k), 0, shape.out, a, y.data(), shape.out); },
              copies);
    } else {
      const TableCopies w(shape.out, shape.in, copies, with_tiles, rng);
      bytes = w.bytes;
      const Q8Activations& a = q8.Quantize(x.data(), shape.in, tokens, shape.in, kQ8Block, Q8Layout::kNatural);
      run_all([&](const Variant& v, int k) {
                TableLinearForward(w.For(v.isa, k), x.data(), tokens, y.data(), pool, v.isa, true);
              },
              [&](const Variant& v, int k) { TableRowsQ8(w.For(v.isa, k), 0, shape.out, a, y.data(), shape.out, v.isa); },
              copies);
    }
    std::printf("%s (%.0f MB)\n", shape.name, bytes / 1e6);
    for (size_t i = 0; i < variants.size(); ++i) {
      std::printf("  %-11s op, %d threads: %6.2f GB/s   kernel, 1 thread: %6.2f GB per CPU-second\n",
                  variants[i].name.c_str(), threads, bytes / Median(op_seconds[i]) / 1e9,
                  bytes / Median(kernel_seconds[i]) / 1e9);
    }
  }
  std::printf("read bandwidth (median of %zu probes between repetitions): %d threads %.1f GB/s, "
              "1 thread %.1f GB per CPU-second\n", bandwidths.size(), threads, Median(bandwidths) / 1e9,
              Median(bandwidths_per_cpu_second) / 1e9);
  GemmBench(shapes, levels, only, gemm_tokens, reps, rng);
  return 0;
}
