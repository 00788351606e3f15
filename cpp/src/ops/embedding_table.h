// Ops on the [rows, d] token tables (model_weights.h EmbeddingTable, f16 or
// int8 with one f16 scale per 32 columns): the token embedding (a row gather)
// and the output projection (lm_head, a GEMV/GEMM producing logits).
//
// The lm_head is the largest single read of a decode step for small models
// (SmolLM2-135M: 49152 x 576 x 2 B = 57 MB in f16, half of all bytes per
// token; 28.3 + 1.8 MB in int8), so its kernels are plain streaming GEMVs:
// 8 weights converted to f32 per instruction group and 4 rows sharing each
// load of x (linear_kernels.h).
#pragma once

#include <cstdint>
#include <memory>

#include "cpu_features.h"
#include "model_weights.h"
#include "thread_pool.h"

namespace awqcore {

// out[t, :] = W[ids[t], :] in f32 (exact for both forms);
// out: [num_tokens, table.d]. ids must be valid row indices (the caller
// validates them).
void EmbeddingGather(const EmbeddingTable& table, const int* ids, int num_tokens, float* out);

// y[t, r] = sum_c W[r, c] x[t, c];  x: [num_tokens, table.d],
// y: [num_tokens, table.rows]. Rows are split across the pool; for several
// tokens a block of rows is converted to f32 once per call and reused for
// every token. A token's logits do not depend on how many tokens share the
// call, nor on the thread count.
// int8_activations with an int8 table: x is rounded to int8 per 32 columns
// (q8_activations.h) and multiplied in integers (W8A8, TableRowsQ8*; a
// batch of decode tokens shares each pass over the table on AVX-512 VNNI,
// with each token's logits bit-identical to its own). Why: the f32 kernel spends ~12 ALU uops per 32 weights
// and row on widening and scaling and streams 6-8 GB/s on two cores, the
// integer one (with a prefetch of the next rows) 13-14.5 GB/s, about what
// this machine reads (microbenchmark, 151936 x 1536 and 49152 x 576 from
// DRAM); the f32 lm_head takes ~25% of a SmolLM2 decode step. The
// caller chooses per forward chunk (Transformer: exactly when the chunk's
// int4 linears take int8 activations), not by num_tokens, so last-only
// logits still equal the last row of all logits. Ignored for f16 tables.
void TableLinearForward(const EmbeddingTable& table, const float* x, int num_tokens, float* y,
                        ThreadPool& pool, Isa isa = DetectedIsa(),
                        bool int8_activations = false);

// Scalar oracle of TableLinearForward (double accumulator).
void TableLinearReference(const EmbeddingTable& table, const float* x, int num_tokens, float* y);

// W[r, c] of an int8 table in either layout (q8 or q8_tiles): its code and
// its block's scale.
int TableCode(const EmbeddingTable& table, int r, int c);
uint16_t TableScale(const EmbeddingTable& table, int r, int block);

// The int8 row-layout table `table` regrouped into q8_tiles
// (model_weights.h) in a new buffer (`storage`, huge pages); the returned
// table reads only the tiles (q8 and q8_scales unset), sealed read-only. Its logits are the
// row layout's up to float summation order; its gather is bit-identical.
// release_rows: the row layout's pages are released (cpu_memory.h:
// ReleasePages) as its rows are regrouped, for a caller that never reads
// them again.
EmbeddingTable TileTable(const EmbeddingTable& table, std::shared_ptr<const uint8_t>& storage,
                         bool release_rows = false);

// At the AVX-512 VNNI level (DetectedIsa), an int8 lm_head moves into the
// tile layout (and the embedding with it when tied: one table serves the
// gather too), and the row layout's pages are released, so the table's
// memory is not doubled. Why: a lane-per-row kernel reads the tiles in order,
// each 16 x 32 block costing 8 vpdpbusd per token and a convert and an FMA,
// where row-layout kernels reduce every (row, token) horizontally. Other
// levels keep the row layout (their kernels read it); the CUDA backend
// uploads either through EmbeddingGather. The file is unchanged. Skipped,
// keeping the rows (read by the AVX2 row kernels at this level too), when
// AWQCORE_MAP_WEIGHTS=1 keeps the weights in the shared file mapping
// (cpu_memory.h: KeepWeightsMapped) and when the tiles' memory cannot be
// allocated. The tiles are read-only once filled.
void AddTableTiles(ModelWeights& weights);

}  // namespace awqcore
