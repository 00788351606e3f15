// The transformer forward pass (cpp/src/transformer.h) on tiny random models
// built in memory, one per family's decoder-layer description (Llama, Qwen2,
// Mistral's sliding window, Qwen3's q/k norm with head_dim * H != d and yarn
// rotary, Gemma 3's sandwich norms, GeGLU, embedding scale, local/global
// layers and soft-cap, Llama 3's rope scaling): against a naive composition
// of the reference ops, prefill against token-by-token decode (KV-cache
// consistency and chunking; f32, and int8 decode against chunked prefill),
// batched decode steps of several sequences against each sequence alone, and
// thread-count independence.
#include <algorithm>
#include <cmath>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "half.h"
#include "model_weights.h"
#include "ops/activation.h"
#include "ops/attention.h"
#include "ops/embedding_table.h"
#include "ops/int4_linear.h"
#include "ops/rmsnorm.h"
#include "ops/rope.h"
#include "random_weights.h"
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

enum class Family { kLlama, kQwen2, kMistral, kQwen3, kGemma3, kLlama3Rope };
const Family kAllFamilies[] = {Family::kLlama, Family::kQwen2, Family::kMistral,
                               Family::kQwen3, Family::kGemma3, Family::kLlama3Rope};

// The tiny model's description per family. Windows of 5-6 keys and rope
// scaling contexts of 16 positions make the 9- to 70-token prompts below
// reach past both.
ModelConfig TinyConfig(Family family) {
  ModelConfig config = awqtest::TinyBaseConfig();
  config.intermediate_size = 96;
  config.num_layers = 2;
  switch (family) {
    case Family::kLlama:
      config.architecture = "llama";
      break;
    case Family::kQwen2:
      config.architecture = "qwen2";
      config.attention_bias = true;
      break;
    case Family::kMistral:
      config.architecture = "mistral";
      config.sliding_window = 5;
      config.layer_sliding = {1, 1};
      break;
    case Family::kQwen3:  // q width H * hd = 128 != d; yarn as Qwen3's long-context configs
      config.architecture = "qwen3";
      config.head_dim = 32;
      config.qk_norm = true;
      config.rope_scaling.type = RopeScaling::Type::kYarn;
      config.rope_scaling.factor = 4.0;
      config.rope_scaling.original_max_position_embeddings = 16;
      config.rope_scaling.attention_factor = 0.1 * std::log(4.0) + 1.0;
      break;
    case Family::kGemma3:  // layer 0 sliding with the local base, layer 1 global and scaled
      config.architecture = "gemma3";
      config.num_kv_heads = 1;
      config.head_dim = 32;
      config.norm_placement = NormPlacement::kSandwich;
      config.activation = Activation::kGeluTanh;
      config.qk_norm = true;
      config.attention_scale = 1.0f / std::sqrt(24.0f);  // query_pre_attn_scalar 24
      config.embedding_scale = 8.0f;                     // sqrt(d)
      config.final_logit_softcap = 2.0f;                 // below the raw logits' range: it acts
      config.sliding_window = 6;
      config.layer_sliding = {1, 0};
      config.rope_theta = 1000000.0f;
      config.rope_local_theta = 10000.0f;
      config.rope_scaling.type = RopeScaling::Type::kLinear;
      config.rope_scaling.factor = 8.0;
      break;
    case Family::kLlama3Rope:
      config.architecture = "llama";
      config.rope_theta = 500000.0f;
      config.rope_scaling.type = RopeScaling::Type::kLlama3;
      config.rope_scaling.factor = 8.0;
      config.rope_scaling.original_max_position_embeddings = 16;
      config.rope_scaling.low_freq_factor = 1.0;
      config.rope_scaling.high_freq_factor = 4.0;
      break;
  }
  return config;
}

std::string FamilyName(Family family) {
  return family == Family::kLlama3Rope ? "llama (llama3 rope)" : TinyConfig(family).architecture;
}


}  // namespace

TEST(forward_matches_naive_reference) {
  // 9 tokens: a prefill call (the lm_head multiplies f32 activations, the
  // int4 linears int8 ones in the int8 mode, as the reference does).
  for (bool int8_tables : {false, true}) {
    for (Family family : kAllFamilies) {
      for (bool int8_decode : {true, false}) {
        const TinyModel model(TinyConfig(family), int8_tables);
        ThreadPool pool(2);
        Transformer transformer(model.config, model.weights, 32, pool, 1, int8_decode);
        const std::vector<int> ids = RandomIds(9, model.config.vocab_size, 1);
        std::vector<float> logits(ids.size() * model.config.vocab_size);
        transformer.Forward(ids.data(), static_cast<int>(ids.size()), Transformer::Logits::kAll, logits.data());
        CHECK(transformer.position() == 9);
        const double error = RelativeError(logits, NaiveForward(model, ids, int8_decode));
        std::printf("  %s, %s tables, %s mode: forward vs naive reference, relative error %.3g\n",
                    FamilyName(family).c_str(), int8_tables ? "int8" : "f16",
                    int8_decode ? "int8" : "f32", error);
        CHECK(error <= kLogitTolerance);
        if (int8_decode) {  // the int8 rounding is visible: the f32 reference is farther
          CHECK(RelativeError(logits, NaiveForward(model, ids, false)) > 2 * error);
        }
      }
    }
  }
}

TEST(int4_lm_head_matches_naive_reference) {
  // Prefill (12 tokens: f32 in both modes) against the reference tightly, then
  // decode steps: exact in the f32 mode; in the int8 mode the lm_head rounds
  // the activations as the other linears do (W4A8), which moves the logits by
  // ~1e-2 of their scale (int8_decode_equals_chunked_prefill_... below), far
  // below what the f16-table logits of a wrong lm_head would differ by (O(1)).
  for (Family family : {Family::kLlama, Family::kQwen2, Family::kGemma3}) {
    for (bool int8_decode : {false, true}) {
      const TinyModel model(TinyConfig(family), /*int8_tables=*/family == Family::kQwen2,
                            /*int4_lm_head=*/true);
      const int vocab = model.config.vocab_size, n = 12;
      ThreadPool pool(2);
      Transformer prefill(model.config, model.weights, n, pool, 1, int8_decode);
      Transformer decode(model.config, model.weights, n, pool, 1, int8_decode);
      const std::vector<int> ids = RandomIds(n, vocab, 11);
      std::vector<float> prefill_logits(static_cast<size_t>(n) * vocab), decode_logits(prefill_logits.size());
      prefill.Forward(ids.data(), n, Transformer::Logits::kAll, prefill_logits.data());
      for (int t = 0; t < n; ++t) {
        decode.Forward(&ids[t], 1, Transformer::Logits::kAll, decode_logits.data() + static_cast<size_t>(t) * vocab);
      }
      const std::vector<float> expected = NaiveForward(model, ids, int8_decode);
      const double prefill_error = RelativeError(prefill_logits, expected);
      const double decode_error = RelativeError(decode_logits, expected);
      std::printf("  %s, int4 lm_head, %s decode: prefill vs naive %.3g, decode vs naive %.3g\n",
                  FamilyName(family).c_str(), int8_decode ? "int8" : "f32", prefill_error, decode_error);
      CHECK(prefill_error <= kLogitTolerance);
      CHECK(decode_error <= (int8_decode ? (family == Family::kGemma3 ? 0.15 : 5e-2) : kLogitTolerance));
    }
  }
}

TEST(prefill_equals_decode_steps) {
  for (Family family : kAllFamilies) {
    // Int8 tables for some families, f16 for the others.
    const bool int8_tables = family == Family::kQwen2 || family == Family::kGemma3;
    const TinyModel model(TinyConfig(family), int8_tables);
    const int vocab = model.config.vocab_size;
    ThreadPool pool(2);
    // More than one prefill chunk (kChunkTokens + 6 tokens). f32
    // activations in decode too, so both compute the same products.
    const int n = Transformer::kChunkTokens + 6;
    Transformer prefill(model.config, model.weights, n + 10, pool, 1, /*int8_decode=*/false);
    Transformer decode(model.config, model.weights, n + 10, pool, 1, /*int8_decode=*/false);
    const std::vector<int> ids = RandomIds(n, vocab, 2);
    const double error = RelativeError(ForwardInChunks(prefill, ids, n, vocab), ForwardInChunks(decode, ids, 1, vocab));
    CHECK(prefill.position() == n && decode.position() == n);
    std::printf("  %s: prefill vs decode, relative error %.3g\n", FamilyName(family).c_str(), error);
    CHECK(error <= kLogitTolerance);

    // Continuing after a prefill: 3 more tokens in one call vs decode.
    const std::vector<int> more = RandomIds(3, vocab, 3);
    CHECK(RelativeError(ForwardInChunks(prefill, more, 3, vocab), ForwardInChunks(decode, more, 1, vocab)) <=
          kLogitTolerance);
  }
}

TEST(int8_decode_equals_chunked_prefill_and_stays_near_f32) {
  // With int8 decode, a call of <= 8 tokens rounds each token's activations
  // on their own, so prefill in chunks of 8 multiplies exactly what token-by-
  // token decode does: the two agree to f32 rounding (attention order only),
  // which checks the W4A8 path's cache and positions as tightly as the f32
  // test above. Against all-f32 logits they differ by the int8 rounding of
  // the activations (<= 1/254 of each 32-block's max per activation); through
  // these random 2-layer models that measures ~1e-2 of the logits' scale, and
  // 5e-2 still sits far below a wrong position or cache slot (O(1)). The
  // Gemma-shaped model measures ~4e-2 before its soft-cap: q/k norms make
  // |q|, |k| ~ sqrt(hd), so scores reach ~6 and the same relative rounding
  // of q and k moves the softmax more; the cap at 2 then shrinks max|logit|
  // ~2.5x while |tanh'| <= 1 keeps the absolute error, 1e-1 measured: 0.15.
  for (Family family : kAllFamilies) {
    const TinyModel model(TinyConfig(family), family == Family::kQwen2 || family == Family::kGemma3);
    const auto [chunk_error, int8_error] = Int8DecodeErrors(model);
    std::printf("  %s: int8 decode vs chunked prefill %.3g, vs f32 decode %.3g\n",
                FamilyName(family).c_str(), chunk_error, int8_error);
    CHECK(chunk_error <= kLogitTolerance);
    CHECK(int8_error <= (family == Family::kGemma3 ? 0.15 : 5e-2));
  }
}

TEST(sliding_window_bounds_what_a_position_sees) {
  // With window W on every layer, position p reads keys p - W + 1 .. p, which
  // read their own windows one layer down: after L layers p depends on tokens
  // p - L (W - 1) .. p only. Two prompts that differ in token 0 alone give
  // bit-identical logits from position L (W - 1) + 1 on (each row's arithmetic
  // is the same), and differ before; without the window they differ
  // everywhere. A check independent of the reference's window.
  for (Family family : {Family::kMistral, Family::kLlama}) {
    const TinyModel model(TinyConfig(family));
    const int vocab = model.config.vocab_size, n = 24;
    const int reach = model.config.num_layers * (model.config.sliding_window - 1);  // 8 (Mistral)
    ThreadPool pool(2);
    std::vector<int> a = RandomIds(n, vocab, 30), b = a;
    b[0] = (a[0] + 1) % vocab;
    std::vector<float> logits_a(static_cast<size_t>(n) * vocab), logits_b(logits_a.size());
    for (bool int8_decode : {false, true}) {
      Transformer ta(model.config, model.weights, n, pool, 1, int8_decode);
      Transformer tb(model.config, model.weights, n, pool, 1, int8_decode);
      ta.Forward(a.data(), n, Transformer::Logits::kAll, logits_a.data());
      tb.Forward(b.data(), n, Transformer::Logits::kAll, logits_b.data());
      int first_equal = n;
      for (int t = n - 1; t >= 0; --t) {
        if (!std::equal(logits_a.begin() + t * vocab, logits_a.begin() + (t + 1) * vocab,
                        logits_b.begin() + t * vocab)) {
          break;
        }
        first_equal = t;
      }
      std::printf("  %s, %s: logits equal from position %d on\n", FamilyName(family).c_str(),
                  int8_decode ? "int8 decode" : "f32", first_equal);
      CHECK(first_equal == (family == Family::kMistral ? reach + 1 : n));
    }
  }
}

TEST(last_only_logits_and_reset) {
  // 5 tokens: a chunk the int8-decode mode runs W4A8 (and an int8 lm_head
  // W8A8); 12: one it runs in f32, although the last-only lm_head call has
  // a single token (the lm_head follows its chunk, transformer.cpp).
  for (bool int8_tables : {false, true}) {
    for (int n : {5, 12}) {
      const TinyModel model(TinyConfig(Family::kQwen2), int8_tables);
      const int vocab = model.config.vocab_size;
      ThreadPool pool(1);
      Transformer transformer(model.config, model.weights, 16, pool);
      const std::vector<int> ids = RandomIds(n, vocab, 4);
      std::vector<float> all(static_cast<size_t>(n) * vocab), last(vocab);
      transformer.Forward(ids.data(), n, Transformer::Logits::kAll, all.data());
      transformer.Reset();
      CHECK(transformer.position() == 0);
      transformer.Forward(ids.data(), n, Transformer::Logits::kLastOnly, last.data());
      CHECK(std::equal(last.begin(), last.end(), all.begin() + static_cast<size_t>(n - 1) * vocab));
    }
  }
}

TEST(logits_do_not_depend_on_thread_count) {
  for (Family family : {Family::kLlama, Family::kGemma3}) {
    const TinyModel model(TinyConfig(family));
    const int vocab = model.config.vocab_size;
    const std::vector<int> ids = RandomIds(6, vocab, 5);
    std::vector<std::vector<float>> results;
    for (int threads : {1, 2, 3}) {
      ThreadPool pool(threads);
      Transformer transformer(model.config, model.weights, 8, pool);
      std::vector<float> logits(7 * vocab);
      transformer.Forward(ids.data(), 6, Transformer::Logits::kAll, logits.data());
      transformer.Forward(&ids[0], 1, Transformer::Logits::kAll, logits.data() + 6 * vocab);
      results.push_back(logits);
    }
    // Rows are split across threads but each row's arithmetic is the same.
    CHECK(results[0] == results[1]);
    CHECK(results[0] == results[2]);
  }
}

TEST(batched_decode_steps_equal_each_sequence_alone) {
  for (Family family : {Family::kLlama, Family::kQwen2, Family::kMistral, Family::kGemma3}) {
    const TinyModel model(TinyConfig(family));
    const int vocab = model.config.vocab_size;
    ThreadPool pool(2);
    // Prompts of 1 token, a few, and more than one prefill chunk.
    const std::vector<int> lengths = {5, Transformer::kChunkTokens + 6, 1, 12};
    const int num_seqs = static_cast<int>(lengths.size()), max_seq_len = Transformer::kChunkTokens + 32;
    Transformer batched(model.config, model.weights, max_seq_len, pool, num_seqs);
    std::vector<std::unique_ptr<Transformer>> alone;
    for (int s = 0; s < num_seqs; ++s) {
      alone.push_back(std::make_unique<Transformer>(model.config, model.weights, max_seq_len, pool));
      const std::vector<int> ids = RandomIds(lengths[s], vocab, 10 + s);
      std::vector<float> got(vocab), want(vocab);
      batched.Forward(s, ids.data(), lengths[s], Transformer::Logits::kLastOnly, got.data());
      alone[s]->Forward(ids.data(), lengths[s], Transformer::Logits::kLastOnly, want.data());
      CHECK(got == want);  // the same prefill path, in another cache slot
    }
    // Steps over changing subsets of the sequences, in any order. Up to 8
    // tokens the linears run their per-token W4A8 path (each token's
    // activations rounded on their own), computing a row exactly as alone.
    // But the MLP width here (96) is no multiple of the 64-column span, so
    // down_proj takes the f32 path: its per-token GEMV up to 3 tokens
    // (bitwise equal), the tiled GEMM from 4 (another summation order); those
    // steps come last and are held to the f32 tolerance.
    const std::vector<std::vector<int>> steps = {{2, 0, 1}, {1, 3}, {3}, {0, 2, 1}, {3, 2},
                                                 {0, 1, 2, 3}, {3, 1, 0, 2}, {1, 2}};
    uint32_t seed = 100;
    bool exact = true;
    double worst = 0.0;
    for (const std::vector<int>& seqs : steps) {
      const int n = static_cast<int>(seqs.size());
      exact = exact && n < 4;
      const std::vector<int> ids = RandomIds(n, vocab, seed++);
      std::vector<float> got(static_cast<size_t>(n) * vocab), want(got.size());
      batched.DecodeStep(seqs.data(), ids.data(), n, got.data());
      for (int k = 0; k < n; ++k) {
        alone[seqs[k]]->Forward(&ids[k], 1, Transformer::Logits::kAll, want.data() + static_cast<size_t>(k) * vocab);
      }
      if (exact) CHECK(got == want);
      worst = std::max(worst, RelativeError(got, want));
    }
    for (int s = 0; s < num_seqs; ++s) CHECK(batched.position(s) == alone[s]->position());
    std::printf("  %s: batched decode vs each sequence alone, relative error %.3g\n",
                FamilyName(family).c_str(), worst);
    CHECK(worst <= kLogitTolerance);
  }
}

TEST(decode_step_wider_than_a_chunk_and_reset_of_one_sequence) {
  // kChunkTokens + 6 sequences: one decode step runs as chunks of
  // kChunkTokens + 6 tokens. f32 activations throughout (int8 decode would
  // round the chunk of 6 and the `alone` steps, not the full chunk), so each
  // token's products are those of `alone` up to f32 summation order.
  const TinyModel model(TinyConfig(Family::kLlama));
  const int vocab = model.config.vocab_size, num_seqs = Transformer::kChunkTokens + 6;
  ThreadPool pool(2);
  Transformer batched(model.config, model.weights, 2, pool, num_seqs, /*int8_decode=*/false);
  Transformer alone(model.config, model.weights, 2, pool, 1, /*int8_decode=*/false);
  const std::vector<int> first = RandomIds(num_seqs, vocab, 20), second = RandomIds(num_seqs, vocab, 21);
  std::vector<int> seqs(num_seqs);
  std::vector<float> last(vocab);
  for (int s = 0; s < num_seqs; ++s) {
    seqs[s] = num_seqs - 1 - s;  // reversed: row k belongs to sequence seqs[k]
    batched.Forward(s, &first[s], 1, Transformer::Logits::kLastOnly, last.data());
  }
  std::vector<float> got(static_cast<size_t>(num_seqs) * vocab), want(got.size()), pair(2 * vocab);
  batched.DecodeStep(seqs.data(), second.data(), num_seqs, got.data());
  for (int k = 0; k < num_seqs; ++k) {
    const int s = seqs[k];
    const int ids[] = {first[s], second[k]};
    alone.Reset();
    alone.Forward(ids, 2, Transformer::Logits::kAll, pair.data());
    std::copy(pair.begin() + vocab, pair.end(), want.begin() + static_cast<size_t>(k) * vocab);
  }
  CHECK(RelativeError(got, want) <= kLogitTolerance);
  // Truncating one sequence leaves the others' positions alone.
  batched.Truncate(5, 0);
  batched.Truncate(6, 1);
  CHECK(batched.position(5) == 0 && batched.position(4) == 2 && batched.position(6) == 1);
  // ... and keeps the rows before the cut: sequence 6's second token again
  // gives the logits of a fresh sequence fed the same two tokens one by one
  // (the same single-token path, so bit for bit).
  const int k6 = num_seqs - 1 - 6;  // seqs[k6] == 6
  std::vector<float> again(vocab), fresh(vocab);
  batched.Forward(6, &second[k6], 1, Transformer::Logits::kLastOnly, again.data());
  alone.Reset();
  alone.Forward(&first[6], 1, Transformer::Logits::kLastOnly, fresh.data());
  alone.Forward(&second[k6], 1, Transformer::Logits::kLastOnly, fresh.data());
  std::printf("  after Truncate(6, 1): relative error %.3g to a fresh sequence\n", RelativeError(again, fresh));
  CHECK(again == fresh);
  batched.Reset();
  CHECK(batched.position(4) == 0 && batched.max_sequences() == num_seqs);
}

AWQCORE_TEST_MAIN()
