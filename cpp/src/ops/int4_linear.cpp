#include "ops/int4_linear.h"

#include <algorithm>
#include <cstddef>
#include <cstring>
#include <memory>

#include "half.h"
#include "ops/activation.h"
#include "ops/int4_tiles.h"
#include "ops/linear_kernels.h"
#include "ops/vec.h"

namespace awqcore {
namespace {

// The scalar kernel tiles kRowBlock x kTileColumns weights (linear_kernels.h).

// Dequantizes W[row, column0 .. column0 + width) into out[width]; column0 and
// width are multiples of the group size.
//
// W = (q - z) * s is computed as q * s + (-z * s). Each term is exact in f32
// (an integer of <= 4 bits times an f16 with 11 significant bits), and so is
// their sum, (q - z) * s, which has at most 15 significant bits: dequantization
// adds no rounding error. The form is branch- and lookup-free so the loop
// vectorizes.
void DequantizeRowSpan(const Int4Linear& layer, int row, int column0, int width, float* out) {
  const size_t groups_per_row = layer.in / layer.group_size;
  for (int c = 0; c < width; c += layer.group_size) {
    const size_t index = static_cast<size_t>(row) * groups_per_row + (column0 + c) / layer.group_size;
    const float scale = F16ToF32(layer.scales[index]);
    const float offset = -static_cast<float>(layer.zeros[index]) * scale;
    const int first_byte = (column0 + c) / 2;  // byte i: columns 2i, 2i + 1
    float* group_out = out + c;                // [g]
    for (int i = 0; i < layer.group_size / 2; ++i) {
      const uint8_t byte = Int4CodeByte(layer, row, first_byte + i);
      group_out[2 * i] = static_cast<float>(byte & 15) * scale + offset;
      group_out[2 * i + 1] = static_cast<float>(byte >> 4) * scale + offset;
    }
  }
}

// At most kRowBlock rows.
void Int4RowBlockScalar(const Int4Linear& layer, int row0, int rows, const float* x, int ldx,
                        int num_tokens, float* y, int ldy) {
  for (int t = 0; t < num_tokens; ++t) {
    for (int r = 0; r < rows; ++r) {
      y[static_cast<size_t>(t) * ldy + r] = layer.bias ? layer.bias[row0 + r] : 0.f;
    }
  }
  // Whole groups per tile: 256 columns for g = 32, 64, 128.
  const int tile_columns = kTileColumns / layer.group_size * layer.group_size;
  float tile[kRowBlock][kTileColumns];  // dequantized W[row0 + r, column0 + i]
  for (int column0 = 0; column0 < layer.in; column0 += tile_columns) {
    const int width = std::min(tile_columns, layer.in - column0);
    for (int r = 0; r < rows; ++r) DequantizeRowSpan(layer, row0 + r, column0, width, tile[r]);
    for (int t = 0; t < num_tokens; ++t) {
      const float* x_tile = x + static_cast<size_t>(t) * ldx + column0;
      float* y_row = y + static_cast<size_t>(t) * ldy;
      for (int r = 0; r < rows; ++r) y_row[r] += DotF32(tile[r], x_tile, width);
    }
  }
}

// The input of a call: f32 rows, or (decode) their int8 rounding.
struct Int4Input {
  const float* x;          // [num_tokens, in]
  int num_tokens;
  const Q8Activations* q8; // the rounding of x, or nullptr: the f32 path
};

// Rows [row0, row0 + rows) of every token of `input`.
void InputRows(const Int4Linear& layer, int row0, int rows, const Int4Input& input, float* y,
               int ldy, Isa isa) {
  if (input.q8) {
    Int4RowsQ8(layer, row0, rows, *input.q8, y, ldy, isa);
  } else {
    Int4Rows(layer, row0, rows, input.x, layer.in, input.num_tokens, y, ldy, isa);
  }
}

// Rounds x to int8 once per op, before the row split, when the call takes the
// W4A8 path. The buffer is per calling thread (each Session decodes on its
// own thread), so sessions never share it, and it only grows: after the
// first token (and the longest prompt), decode does not allocate.
Int4Input PrepareInput(const float* x, int num_tokens, int in, int group_size, bool int8) {
  if (!int8 || !UsesQ8Activations(in)) return {x, num_tokens, nullptr};
  thread_local Q8Buffer buffer;
  return {x, num_tokens, &buffer.Quantize(x, in, num_tokens, in, group_size)};
}

// Rows per unit of the pool's split. The AVX-512 VNNI W4A8 kernels compute
// whole 16-row tiles (a call's rows outside them are computed and not
// stored), so a thread boundary inside a tile would compute it twice: at 2
// threads a decode step's 8 chunks of q/k/v (240 four-row blocks) would add
// ~8 tiles to its 60. The other kernels block rows by kRowBlock.
int SplitRows(const Int4Input& input, Isa isa) {
  return input.q8 && isa >= Isa::kAvx512Vnni ? kTileScaleRows : kRowBlock;
}

int NumUnits(int rows, int unit) { return (rows + unit - 1) / unit; }

}  // namespace

void Int4RowsScalar(const Int4Linear& layer, int row0, int rows, const float* x, int ldx,
                    int num_tokens, float* y, int ldy) {
  for (int r = 0; r < rows; r += kRowBlock) {
    Int4RowBlockScalar(layer, row0 + r, std::min(kRowBlock, rows - r), x, ldx, num_tokens, y + r,
                       ldy);
  }
}

// Per row and group: s * (sum over the group's 32-column blocks of d_b times
// the integer dot of codes and int8 activations) - s z (group sum of a).
void Int4RowsQ8Scalar(const Int4Linear& layer, int row0, int rows, const Q8Activations& x,
                      float* y, int ldy) {
  const int groups = layer.in / layer.group_size;
  const int blocks_per_group = layer.group_size / kQ8Block;
  for (int t = 0; t < x.num_tokens; ++t) {
    const int8_t* q = x.q + static_cast<size_t>(t) * layer.in;
    const float* d = x.block_scales + static_cast<size_t>(t) * (layer.in / kQ8Block);
    const float* group_sums = x.group_sums + static_cast<size_t>(t) * groups;
    for (int r = row0; r < row0 + rows; ++r) {
      float sum = layer.bias ? layer.bias[r] : 0.f;
      for (int g = 0; g < groups; ++g) {
        float group = 0.f;
        for (int b = g * blocks_per_group; b < (g + 1) * blocks_per_group; ++b) {
          int dot = 0;
          for (int c = b * kQ8Block; c < (b + 1) * kQ8Block; ++c) {
            const uint8_t byte = Int4CodeByte(layer, r, c / 2);
            const int code = c % 2 == 0 ? byte & 15 : byte >> 4;
            dot += code * q[Q8Position(c)];
          }
          group += d[b] * static_cast<float>(dot);
        }
        const size_t index = static_cast<size_t>(r) * groups + g;
        const float s = F16ToF32(layer.scales[index]);
        sum += s * group - s * static_cast<float>(layer.zeros[index]) * group_sums[g];
      }
      y[static_cast<size_t>(t) * ldy + (r - row0)] = sum;
    }
  }
}

namespace {

// Runs kernel(view, row0', rows', y') for rows [row0, row0 + rows) of a layer
// whose kernel reads only the row layout: the layer itself, or, for a
// tile-layout layer, 16 rows at a time from row0 regrouped back into rows (a
// thread-local buffer) as a layer of their own. Chunks of a multiple of the
// row kernels' 4-row blocks from row0 keep their blocking, and so their bits.
template <typename RowKernel>
void WithRowLayout(const Int4Linear& layer, int row0, int rows, float* y, RowKernel kernel) {
  if (layer.layout == Int4Layout::kRows) {
    kernel(layer, row0, rows, y);
    return;
  }
  thread_local std::vector<uint8_t> codes;  // [<= 16][in / 2]
  const size_t row_bytes = layer.in / 2, groups = layer.in / layer.group_size;
  codes.resize(kInt4TileRows * row_bytes);
  for (int r = row0; r < row0 + rows;) {
    const int end = std::min(row0 + rows, r + kInt4TileRows);
    Int4TileRowsToRows(layer, r, end - r, codes.data());
    Int4Linear view = layer;
    view.out = end - r;
    view.qweight = codes.data();
    view.scales = layer.scales + r * groups;
    view.zeros = layer.zeros + r * groups;
    view.bias = layer.bias ? layer.bias + r : nullptr;
    view.tile_scales = nullptr;
    view.layout = Int4Layout::kRows;
    kernel(view, 0, end - r, y + (r - row0));
    r = end;
  }
}

}  // namespace

void Int4Rows(const Int4Linear& layer, int row0, int rows, const float* x, int ldx, int num_tokens,
              float* y, int ldy, Isa isa) {
  if (isa >= Isa::kAvx2) {
    WithRowLayout(layer, row0, rows, y, [&](const Int4Linear& l, int r0, int n, float* yr) {
      Int4RowsAvx2(l, r0, n, x, ldx, num_tokens, yr, ldy);
    });
  } else {
    Int4RowsScalar(layer, row0, rows, x, ldx, num_tokens, y, ldy);
  }
}

// Where the AVX-512 W4A8 body beats the AVX2 one: decode is memory-bound, so
// the wider body pays only where the AVX2 one spends more than the memory
// stream allows: g = 32 (one weight scale per half span; 1.0-1.16x), rows under
// 1024 columns (SmolLM2's 576: 1.06-1.38x), and rows whose next block is
// prefetched into L2 (kL1PrefetchBlockBytes; Qwen2.5-1.5B's and Llama-2-7B's
// down projections: 1.01-1.13x). In between (1536 and 4096 columns, g >= 64)
// the AVX2 body streams about as fast (0.88-1.07x, median 0.97x). GB per
// CPU-second of tools/isa_bench.cpp on Zen 4, three runs of 7-9 interleaved
// repetitions on a loaded machine (noise ~5%).
static bool Avx512Pays(const Int4Linear& layer) {
  return layer.group_size == kQ8Block || layer.in < 1024 || 2 * layer.in > kL1PrefetchBlockBytes;
}

void Int4RowsQ8(const Int4Linear& layer, int row0, int rows, const Q8Activations& x, float* y,
                int ldy, Isa isa) {
  if (isa >= Isa::kAvx512Vnni) {
    // Prefill: the GEMM (16 rows x 8 tokens per register block). Decode (up
    // to 8 tokens, one sequence or a batch): the same lanes and arithmetic
    // with the codes unpacked in registers, 1.0-1.6x the GEMVs' GB per
    // CPU-second at 1 token and 2.0-2.4x at 8 (Zen 4, interleaved). Both
    // give a token the same bits whatever else shares its call.
    if (x.num_tokens > kQ8MaxTokens) {
      Int4GemmQ8Avx512Vnni(layer, row0, rows, x, y, ldy);
    } else {
      Int4DecodeQ8Avx512Vnni(layer, row0, rows, x, y, ldy);
    }
  } else if (isa >= Isa::kAvx2) {
    // Prefill: the GEMM (8 rows x 2 tokens per register block). Calls of
    // decode size stay on the GEMV, so a batch of up to 8 decodes bit for bit
    // as its sequences alone.
    const auto kernel = x.num_tokens > kQ8MaxTokens                  ? Int4GemmQ8Avx2
                        : isa >= Isa::kAvx512 && Avx512Pays(layer) ? Int4RowsQ8Avx512
                                                                     : Int4RowsQ8Avx2;
    WithRowLayout(layer, row0, rows, y, [&](const Int4Linear& l, int r0, int n, float* yr) {
      kernel(l, r0, n, x, yr, ldy);
    });
  } else {
    Int4RowsQ8Scalar(layer, row0, rows, x, y, ldy);
  }
}

void Int4LinearForward(const Int4Linear& layer, const float* x, int num_tokens, float* y,
                       ThreadPool& pool, Isa isa, bool int8_decode) {
  const Int4Linear* layers[] = {&layer};
  float* ys[] = {y};
  Int4LinearsForward(layers, ys, 1, x, num_tokens, pool, isa, int8_decode);
}

void Int4LinearsForward(const Int4Linear* const* layers, float* const* ys, int count,
                        const float* x, int num_tokens, ThreadPool& pool, Isa isa,
                        bool int8_decode) {
  // The q8 rounding depends on the group size (its group sums): one per call.
  const Int4Input input = PrepareInput(x, num_tokens, layers[0]->in, layers[0]->group_size, int8_decode);
  // Units of `unit` rows are numbered across the layers in order; a thread's
  // contiguous range of units may span two of them (e.g. the end of k and
  // start of v).
  const int unit = SplitRows(input, isa);
  int total_units = 0;
  for (int i = 0; i < count; ++i) total_units += NumUnits(layers[i]->out, unit);
  pool.ParallelFor(total_units, [&](int64_t begin, int64_t end) {
    int first_unit = 0;  // of layers[i]
    for (int i = 0; i < count && begin < end; ++i) {
      const Int4Linear& layer = *layers[i];
      const int units = NumUnits(layer.out, unit);
      const int64_t lo = std::max<int64_t>(begin, first_unit);
      const int64_t hi = std::min<int64_t>(end, first_unit + units);
      if (lo < hi) {
        const int row0 = static_cast<int>(lo - first_unit) * unit;
        const int row1 = std::min(layer.out, static_cast<int>(hi - first_unit) * unit);
        InputRows(layer, row0, row1 - row0, input, ys[i] + row0, layer.out, isa);
      }
      first_unit += units;
    }
  });
}

void Int4GatedMlpForward(const Int4Linear& gate, const Int4Linear& up, Activation activation,
                         const float* x, int num_tokens, float* out, ThreadPool& pool, Isa isa,
                         bool int8_decode) {
  const int ffn = gate.out;
  // A thread's rows go in slices of kSliceRows x kTokenSlice: gate rows
  // straight to `out`, up rows to a stack buffer (16 KiB), then
  // out = act(gate) * up. Slices of 32 rows keep the per-call setup of the
  // AVX2 kernel (group sums of x: `in` adds) at ~3% of its 32 * in weights;
  // kTokenSlice is the prefill chunk (Transformer::kChunkTokens), so the
  // int8 GEMM unpacks each weight tile once per chunk.
  constexpr int kSliceRows = 32;
  constexpr int kTokenSlice = 128;
  const Int4Input input = PrepareInput(x, num_tokens, gate.in, gate.group_size, int8_decode);
  const int unit = SplitRows(input, isa);  // divides kSliceRows
  pool.ParallelFor(NumUnits(ffn, unit), [&](int64_t begin, int64_t end) {
    float up_rows[kTokenSlice * kSliceRows];  // [tokens, kSliceRows]
    const int row_end = std::min(ffn, static_cast<int>(end) * unit);
    for (int row0 = static_cast<int>(begin) * unit; row0 < row_end; row0 += kSliceRows) {
      const int rows = std::min(kSliceRows, row_end - row0);
      for (int t0 = 0; t0 < num_tokens; t0 += kTokenSlice) {
        const int tokens = std::min(kTokenSlice, num_tokens - t0);
        const Q8Activations q8_slice = input.q8 ? input.q8->Tokens(t0, tokens) : Q8Activations{};
        const Int4Input slice{x + static_cast<size_t>(t0) * gate.in, tokens, input.q8 ? &q8_slice : nullptr};
        float* out_slice = out + static_cast<size_t>(t0) * ffn + row0;
        InputRows(gate, row0, rows, slice, out_slice, ffn, isa);
        InputRows(up, row0, rows, slice, up_rows, kSliceRows, isa);
        for (int t = 0; t < tokens; ++t) {
          float* o = out_slice + static_cast<size_t>(t) * ffn;
          GatedActivation(activation, o, up_rows + t * kSliceRows, rows, o, isa);
        }
      }
    }
  });
}

std::vector<uint8_t> Int4TileScales(const Int4Linear& layer) {
  const int groups = layer.in / layer.group_size;
  const int tiles = (layer.out + kTileScaleRows - 1) / kTileScaleRows;
  std::vector<uint8_t> out(static_cast<size_t>(tiles) * groups * kTileScaleBytes);
  for (int tile = 0; tile < tiles; ++tile) {
    for (int g = 0; g < groups; ++g) {
      uint8_t* entry = out.data() + (static_cast<size_t>(tile) * groups + g) * kTileScaleBytes;
      for (int lane = 0; lane < kTileScaleRows; ++lane) {
        const int row = std::min(tile * kTileScaleRows + lane, layer.out - 1);
        const size_t index = static_cast<size_t>(row) * groups + g;
        std::memcpy(entry + 2 * lane, &layer.scales[index], 2);
        entry[2 * kTileScaleRows + lane] = layer.zeros[index];
      }
    }
  }
  return out;
}

void AddTileScales(ModelWeights& weights) {
  // Only the AVX-512 VNNI decode kernel reads the copy: other levels (a CPU
  // without VNNI, or AWQCORE_ISA forcing a lower one) skip its memory.
  if (DetectedIsa() != Isa::kAvx512Vnni) return;
  auto add = [&](Int4Linear& layer) {
    if (layer.out == 0 || !UsesQ8Activations(layer.in)) return;
    auto table = std::make_shared<const std::vector<uint8_t>>(Int4TileScales(layer));
    layer.tile_scales = table->data();
    weights.tile_scale_storage.push_back(std::move(table));
  };
  add(weights.lm_head_int4);
  for (LayerWeights& l : weights.layers) {
    for (Int4Linear* layer : {&l.q, &l.k, &l.v, &l.o, &l.gate, &l.up, &l.down}) add(*layer);
    for (std::vector<Int4Linear>* experts : {&l.moe.gate, &l.moe.up, &l.moe.down}) {
      for (Int4Linear& expert : *experts) add(expert);
    }
  }
}

void Int4LinearReference(const Int4Linear& layer, const float* x, int num_tokens, float* y) {
  const int groups_per_row = layer.in / layer.group_size;
  for (int t = 0; t < num_tokens; ++t) {
    for (int r = 0; r < layer.out; ++r) {
      double sum = layer.bias ? layer.bias[r] : 0.0;
      for (int c = 0; c < layer.in; ++c) {
        const uint8_t byte = Int4CodeByte(layer, r, c / 2);
        const int q = (c % 2 == 0) ? (byte & 15) : (byte >> 4);
        const size_t group_index = static_cast<size_t>(r) * groups_per_row + c / layer.group_size;
        const int z = layer.zeros[group_index];
        const float s = F16ToF32(layer.scales[group_index]);
        const double w = static_cast<double>(q - z) * s;
        sum += w * x[static_cast<size_t>(t) * layer.in + c];
      }
      y[static_cast<size_t>(t) * layer.out + r] = static_cast<float>(sum);
    }
  }
}

}  // namespace awqcore
