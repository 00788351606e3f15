// The forward pass of mixture-of-experts models (transformer.cpp's MoE branch,
// ops/moe_router.h, ops/moe_experts.h) on tiny random Mixtral- and
// Qwen3-MoE-shaped models: against the forward pass written out with the
// reference ops, token by token through each chosen expert
// (tiny_transformer.h), prefill against token-by-token decode, int8 decode
// against prefill in chunks of 8, batched decode steps of several sequences
// against each alone, and thread-count independence.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "test_harness.h"
#include "thread_pool.h"
#include "tiny_transformer.h"
#include "transformer.h"

using namespace awqcore;
using awqtest::ForwardInChunks;
using awqtest::Int8DecodeErrors;
using awqtest::kLogitTolerance;
using awqtest::NaiveForward;
using awqtest::RandomIds;
using awqtest::RelativeError;
using awqtest::TinyModel;

namespace {

// Mixtral: Mistral's attention with a window of 5 on every layer, 4 experts,
// top-2, renormalized. Qwen3-MoE: q/k norms, head_dim 32 (H * hd != d), 8
// experts, top-3 without renormalization, layer 0 a dense MLP
// (mlp_only_layers). Widths are multiples of 64 so every linear takes the
// W4A8 path in int8 decode.
ModelConfig MoeConfig(bool mixtral) {
  ModelConfig c = awqtest::TinyBaseConfig();
  c.intermediate_size = 128;
  c.moe_intermediate_size = 64;
  if (mixtral) {
    c.architecture = "mixtral";
    c.num_layers = 2;
    c.sliding_window = 5;
    c.layer_sliding = {1, 1};
    c.num_experts = 4;
    c.num_experts_per_tok = 2;
    c.norm_topk_prob = true;
    c.moe_layers = {1, 1};
  } else {
    c.architecture = "qwen3_moe";
    c.num_layers = 3;
    c.head_dim = 32;
    c.qk_norm = true;
    c.num_experts = 8;
    c.num_experts_per_tok = 3;
    c.norm_topk_prob = false;
    c.moe_layers = {0, 1, 1};
  }
  c.attention_scale = 1.0f / std::sqrt(static_cast<float>(c.head_dim));
  return c;
}

const bool kFamilies[] = {true, false};  // mixtral, qwen3_moe

}  // namespace

TEST(moe_forward_matches_naive_reference) {
  // 11 tokens: f32 linears in both modes (int8 activations are for calls of
  // <= 8), so the modes differ only in the KV cache's type, which the
  // reference rounds alike.
  for (bool mixtral : kFamilies) {
    for (bool int8_decode : {true, false}) {
      const TinyModel model(MoeConfig(mixtral));
      ThreadPool pool(2);
      Transformer transformer(model.config, model.weights, 32, pool, 1, int8_decode);
      const std::vector<int> ids = RandomIds(11, model.config.vocab_size, 1);
      std::vector<float> logits(ids.size() * model.config.vocab_size);
      transformer.Forward(ids.data(), static_cast<int>(ids.size()), Transformer::Logits::kAll, logits.data());
      const double error = RelativeError(logits, NaiveForward(model, ids, int8_decode));
      std::printf("  %s, %s KV cache: forward vs naive reference, relative error %.3g\n",
                  model.config.architecture.c_str(), int8_decode ? "f16" : "f32", error);
      CHECK(error <= kLogitTolerance);
    }
  }
}

TEST(moe_routing_spreads_over_the_experts) {
  // A check on the test models themselves: with every token sent to the
  // same experts, a wrong expert view or slot could pass the comparison
  // above unseen. Count the distinct top-k sets the reference router picks
  // over a prompt at the last MoE layer's input (the embedding rows suffice
  // for a spread check: it is a fixed linear map of varied inputs).
  for (bool mixtral : kFamilies) {
    const TinyModel model(MoeConfig(mixtral));
    const ModelConfig& c = model.config;
    const MoeWeights& moe = model.weights.layers.back().moe;
    const std::vector<int> ids = RandomIds(20, c.vocab_size, 9);
    std::vector<float> x(static_cast<size_t>(ids.size()) * c.hidden_size);
    EmbeddingGather(model.weights.embed, ids.data(), static_cast<int>(ids.size()), x.data());
    std::vector<int> experts(ids.size() * c.num_experts_per_tok);
    std::vector<float> weights(experts.size());
    MoeRouterReference(moe.router, c.num_experts, c.hidden_size, x.data(), static_cast<int>(ids.size()),
                       c.num_experts_per_tok, c.norm_topk_prob, experts.data(), weights.data());
    std::vector<int> uses(c.num_experts, 0);
    for (int e : experts) ++uses[e];
    const int used = static_cast<int>(std::count_if(uses.begin(), uses.end(), [](int u) { return u > 0; }));
    std::printf("  %s: %d of %d experts chosen over 20 tokens\n", c.architecture.c_str(), used, c.num_experts);
    CHECK(used == c.num_experts);
  }
}

TEST(moe_prefill_equals_decode_steps) {
  for (bool mixtral : kFamilies) {
    const TinyModel model(MoeConfig(mixtral));
    const int vocab = model.config.vocab_size;
    ThreadPool pool(2);
    // Two prefill chunks (kChunkTokens + 6 tokens); f32 activations in
    // decode too.
    const int n = Transformer::kChunkTokens + 6;
    Transformer prefill(model.config, model.weights, n + 10, pool, 1, /*int8_decode=*/false);
    Transformer decode(model.config, model.weights, n + 10, pool, 1, /*int8_decode=*/false);
    const std::vector<int> ids = RandomIds(n, vocab, 2);
    const double error = RelativeError(ForwardInChunks(prefill, ids, n, vocab), ForwardInChunks(decode, ids, 1, vocab));
    std::printf("  %s: prefill vs decode, relative error %.3g\n", model.config.architecture.c_str(), error);
    CHECK(error <= kLogitTolerance);
  }
}

TEST(moe_int8_decode_equals_chunked_prefill) {
  // Calls of <= 8 tokens round each token's activations on their own (the
  // experts' too), so chunks of 8 multiply what token-by-token decode does:
  // equal up to attention's summation order. Against f32 decode: the int8
  // rounding, ~1e-2 of the logits' scale through these models (as the dense
  // families, test_forward.cpp); 5e-2 is far below a wrong expert (O(1)).
  for (bool mixtral : kFamilies) {
    const TinyModel model(MoeConfig(mixtral));
    const auto [chunk_error, int8_error] = Int8DecodeErrors(model);
    std::printf("  %s: int8 decode vs chunked prefill %.3g, vs f32 decode %.3g\n",
                model.config.architecture.c_str(), chunk_error, int8_error);
    CHECK(chunk_error <= kLogitTolerance);
    CHECK(int8_error <= 5e-2);
  }
}

TEST(moe_batched_decode_steps_equal_each_sequence_alone) {
  for (bool mixtral : kFamilies) {
    const TinyModel model(MoeConfig(mixtral));
    const int vocab = model.config.vocab_size;
    ThreadPool pool(2);
    const std::vector<int> lengths = {5, 70, 1, 12, 3};
    const int num_seqs = static_cast<int>(lengths.size());
    Transformer batched(model.config, model.weights, 96, pool, num_seqs);
    std::vector<std::unique_ptr<Transformer>> alone;
    for (int s = 0; s < num_seqs; ++s) {
      alone.push_back(std::make_unique<Transformer>(model.config, model.weights, 96, pool));
      const std::vector<int> ids = RandomIds(lengths[s], vocab, 10 + s);
      std::vector<float> got(vocab), want(vocab);
      batched.Forward(s, ids.data(), lengths[s], Transformer::Logits::kLastOnly, got.data());
      alone[s]->Forward(ids.data(), lengths[s], Transformer::Logits::kLastOnly, want.data());
      CHECK(got == want);
    }
    // Every width is a multiple of 64, so every linear of a step of <= 8
    // tokens runs W4A8 with each token rounded alone, and the experts'
    // grouping never changes a token's arithmetic: bit-identical.
    const std::vector<std::vector<int>> steps = {{2, 0, 1}, {1, 3, 4}, {3}, {0, 2, 1, 4},
                                                 {4, 3, 2, 1, 0}, {1, 2}};
    uint32_t seed = 100;
    for (const std::vector<int>& seqs : steps) {
      const int n = static_cast<int>(seqs.size());
      const std::vector<int> ids = RandomIds(n, vocab, seed++);
      std::vector<float> got(static_cast<size_t>(n) * vocab), want(got.size());
      batched.DecodeStep(seqs.data(), ids.data(), n, got.data());
      for (int k = 0; k < n; ++k) {
        alone[seqs[k]]->Forward(&ids[k], 1, Transformer::Logits::kAll, want.data() + static_cast<size_t>(k) * vocab);
      }
      CHECK(got == want);
    }
    for (int s = 0; s < num_seqs; ++s) CHECK(batched.position(s) == alone[s]->position());
  }
}

TEST(moe_logits_do_not_depend_on_thread_count) {
  for (bool mixtral : kFamilies) {
    const TinyModel model(MoeConfig(mixtral));
    const int vocab = model.config.vocab_size;
    const std::vector<int> ids = RandomIds(12, vocab, 5);
    std::vector<std::vector<float>> results;
    for (int threads : {1, 2, 3}) {
      ThreadPool pool(threads);
      Transformer transformer(model.config, model.weights, 16, pool);
      std::vector<float> logits(14 * vocab);
      transformer.Forward(ids.data(), 12, Transformer::Logits::kAll, logits.data());        // prefill
      transformer.Forward(&ids[0], 1, Transformer::Logits::kAll, logits.data() + 12 * vocab);  // decode
      transformer.Forward(&ids[1], 1, Transformer::Logits::kAll, logits.data() + 13 * vocab);
      results.push_back(logits);
    }
    CHECK(results[0] == results[1]);
    CHECK(results[0] == results[2]);
  }
}

AWQCORE_TEST_MAIN()
