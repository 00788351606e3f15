// Micro-benchmark of decode attention over the KV cache at every
// instruction set level this CPU runs (cpu_features.h), in one process:
// one token per step at position P, through every layer of a model's shape,
// each layer reading its own cache as a decode step does. Dev tool, not part
// of the library.
//
//   build/.../attention_bench [--threads 2] [--reps 9] [--positions 512,4096]
//                             [--only smollm2] [--f32] [--no-evict] [--batch 1]
//
// --batch B: a batched decode step of B sequences, one token each at
// position P, each reading its own caches (the engine's decode batch).
//
// Between layers an untimed sweep over a buffer of the layer's weight bytes
// evicts part of the cache as the weights streamed by a decode step do, so
// the K/V rows come from L3/DRAM (--no-evict leaves them in the caches:
// the kernels' arithmetic alone). Repetitions interleave the levels (order
// rotating each repetition); each level reports the median step:
//   op: AttentionForward on a pool of --threads, wall clock, us per step and
//       GB/s of KV bytes read (2 * P * KV * hd elements per layer);
//   1 thread: the same on a one-thread pool, CPU-seconds of the calling
//       thread (memory stalls included, time descheduled not), the number to
//       compare on a shared machine.
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "bench_harness.h"
#include "cpu_features.h"
#include "ops/attention.h"
#include "thread_pool.h"

using namespace awqcore;
using namespace awqcore::bench;

namespace {

struct ModelShape {
  const char* name;
  AttentionShape shape;
  int layers;
  int sliding_every;     // every n-th layer is global, the others slide; 0: none slide
  int layer_weight_kb;   // bytes a layer's linears stream per decode step
};

// The cache of every layer for one sequence of capacity `capacity` positions:
// layer l at [l * capacity * KV * hd], as Transformer lays it out.
template <typename CacheT>
struct Caches {
  Caches(const AttentionShape& shape, int layers, int capacity, std::mt19937& rng)
      : layer_elements(static_cast<size_t>(capacity) * shape.num_kv_heads * shape.head_dim),
        k(layer_elements * layers),
        v(k.size()) {
    std::uniform_real_distribution<float> u(-1.f, 1.f);
    std::vector<float> row(shape.num_kv_heads * shape.head_dim);
    for (size_t i = 0; i < k.size(); i += row.size()) {
      for (float& x : row) x = u(rng);
      StoreKv(row.data(), static_cast<int>(row.size()), k.data() + i);
      for (float& x : row) x = u(rng);
      StoreKv(row.data(), static_cast<int>(row.size()), v.data() + i);
    }
  }
  size_t layer_elements;
  std::vector<CacheT> k, v;
};

template <typename CacheT>
void Run(const ModelShape& model, int position, int batch, int threads, int reps, bool evict,
         const std::vector<Isa>& levels) {
  std::mt19937 rng(7);
  const AttentionShape& full = model.shape;
  AttentionShape sliding = full;
  sliding.window = 512;
  const int q_width = full.num_heads * full.head_dim;
  std::vector<Caches<CacheT>> caches;  // [batch]: each sequence's layers
  for (int s = 0; s < batch; ++s) caches.emplace_back(full, model.layers, position + 1, rng);
  std::vector<float> q(static_cast<size_t>(batch) * q_width), out(q.size());
  for (float& x : q) x = std::uniform_real_distribution<float>(-1.f, 1.f)(rng);
  std::vector<float> scratch(AttentionScratchFloats(full, batch, position + 1));
  const std::vector<int> positions(batch, position);
  std::vector<const CacheT*> k(batch), v(batch);  // the step's tokens' caches of one layer
  std::vector<uint64_t> weights(evict ? static_cast<size_t>(model.layer_weight_kb) * 1024 / 8 : 0, 1);
  ThreadPool pool(threads), one(1);
  uint64_t sink = 0;
  double kv_bytes = 0;
  for (int l = 0; l < model.layers; ++l) {
    const bool slides = model.sliding_every > 0 && (l + 1) % model.sliding_every != 0;
    const int keys = slides ? std::min(position + 1, sliding.window) : position + 1;
    kv_bytes += 2.0 * batch * keys * full.num_kv_heads * full.head_dim * sizeof(CacheT);
  }
  // One decode step: seconds of attention, wall or CPU of this thread.
  auto step = [&](Isa isa, ThreadPool& p, bool cpu) {
    double total = 0;
    for (int l = 0; l < model.layers; ++l) {
      for (uint64_t w : weights) sink += w;  // the layer's weights, untimed
      const bool slides = model.sliding_every > 0 && (l + 1) % model.sliding_every != 0;
      for (int s = 0; s < batch; ++s) {
        k[s] = caches[s].k.data() + l * caches[s].layer_elements;
        v[s] = caches[s].v.data() + l * caches[s].layer_elements;
      }
      const double start = cpu ? ThreadCpuSeconds() : Seconds();
      AttentionForward(slides ? sliding : full, q.data(), k.data(), v.data(), positions.data(), batch,
                       scratch.data(), out.data(), p, isa);
      total += (cpu ? ThreadCpuSeconds() : Seconds()) - start;
    }
    return total;
  };
  std::vector<std::vector<double>> wall(levels.size()), cpu(levels.size());
  for (Isa isa : levels) step(isa, pool, false);  // warm-up
  Interleaved(levels.size(), reps, [&](size_t i) {
    wall[i].push_back(step(levels[i], pool, false));
    cpu[i].push_back(step(levels[i], one, true));
  });
  std::printf("%s, %s cache, batch %d at position %d (%.2f MB of KV per step)%s\n", model.name,
              sizeof(CacheT) == 2 ? "f16" : "f32", batch, position, kv_bytes / 1e6, sink == 1 ? " " : "");
  for (size_t i = 0; i < levels.size(); ++i) {
    const double w = Median(wall[i]), c = Median(cpu[i]);
    std::printf("  %-11s op, %d threads: %8.1f us/step %6.2f GB/s   1 thread: %8.1f us/step %6.2f GB per CPU-second\n",
                IsaName(levels[i]), threads, w * 1e6, kv_bytes / w / 1e9, c * 1e6, kv_bytes / c / 1e9);
  }
}

}  // namespace

int main(int argc, char** argv) {
  const CommandLine args(argc, argv, {"--threads N", "--reps N", "--positions P,P", "--only NAME_PART",
                                      "--f32", "--no-evict", "--batch N"});
  const int threads = args.Int("--threads", 2), reps = args.Int("--reps", 9), batch = args.Int("--batch", 1);
  const std::vector<int> positions = args.Ints("--positions", "512,4096");
  const std::string only = args.Text("--only", "");
  const bool f32 = args.Has("--f32"), evict = !args.Has("--no-evict");
  if (threads < 1 || reps < 1 || batch < 1 || *std::min_element(positions.begin(), positions.end()) < 0) {
    args.Fail("--threads, --reps and --batch must be positive, --positions non-negative");
  }
  const std::vector<Isa> levels = SimdLevels();
  std::printf("; %d interleaved repetitions, medians\n", reps);
  const ModelShape models[] = {
      {"smollm2-135m (9/3 heads, hd 64, 30 layers)", {9, 3, 64}, 30, 0, 2900},
      {"qwen2.5-1.5b (12/2 heads, hd 128, 28 layers)", {12, 2, 128}, 28, 0, 31000},
      {"gemma3-270m (4/1 heads, hd 256, 18 layers, 5 of 6 sliding 512)", {4, 1, 256}, 18, 6, 3500},
  };
  for (const ModelShape& model : models) {
    if (std::string(model.name).find(only) == std::string::npos) continue;
    for (int position : positions) {
      if (f32) {
        Run<float>(model, position, batch, threads, reps, evict, levels);
      } else {
        Run<uint16_t>(model, position, batch, threads, reps, evict, levels);
      }
    }
  }
  return 0;
}
