// The attention kernels (ops/attention.h) of every instruction set this CPU
// runs against the per-token reference: one sequence's tokens (prefill and
// decode) over f32 and f16 caches, and tokens of several sequences with
// their own caches and positions (batched decode). Tolerance: in the test.
// Also the rotary embedding (ops/rope.h) and its fusion with the KV-cache
// write (RopeAndStoreKv) and that write's prefetch, which feed attention.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "attention_tokens.h"
#include "cpu_features.h"
#include "isas_to_test.h"
#include "ops/attention.h"
#include "ops/rope.h"
#include "random_weights.h"
#include "test_harness.h"
#include "thread_pool.h"

using namespace awqcore;

using awqtest::AsCache;
using awqtest::AttentionReferencePerToken;
using awqtest::AttentionTokens;
using awqtest::ForEachCacheType;
using awqtest::IsasToTest;
using awqtest::kUnitRoundoff;
using awqtest::RandomFloats;
using awqtest::RelativeError;

TEST(attention_kernels_match_reference) {
  // Softmax weights are in [0, 1] and sum to 1, so an output is a convex
  // combination of V rows (|v| <= 1 here): its error is ~gamma(hd) |q||k|
  // (scores, amplified by at most 2x through exp/normalization) plus the
  // rounding of the weighted sums, which add in blocks of kBlockKeys and then
  // across splits (random-walk ~sqrt(keys) u). Errors are taken in units of
  // max|v| = 1, not of |out|: a mean of 2,000 random values is ~0.02, so a
  // relative error would grow with the context for no fault of the kernel.
  // 1e-5 leaves 50x margin to one wrong key, head or mask at 2,100 keys
  // (an error of ~|v| / keys = 5e-4).
  std::mt19937 rng(14);
  ThreadPool pool(2);
  for (Isa isa : IsasToTest()) {
    for (bool f16_cache : {false, true}) {
      double worst = 0.0;
      std::string worst_case;
      // H / KV = 3: several tokens per item; hd 72, 80: a 64-column register
      // pass plus 8-column ones; 16, 48: 8-column passes only. {18, 1}: a
      // group wider than kMaxRows, so an item takes part of its heads; {12, 4}:
      // a decode item of 4 kv heads (kv_offset per row). Windows 7, 40, 512:
      // rows of one block reading different keys (Gemma 3's sliding layers,
      // hd 256).
      for (const AttentionShape shape :
           {AttentionShape{6, 2, 8}, AttentionShape{6, 2, 64}, AttentionShape{6, 2, 72},
            AttentionShape{6, 2, 128}, AttentionShape{18, 1, 72}, AttentionShape{12, 4, 48},
            AttentionShape{4, 2, 16, 0.f, 7}, AttentionShape{3, 1, 80, 0.f, 40},
            AttentionShape{4, 1, 256, 0.f, 512}, AttentionShape{2, 1, 272}}) {
        const size_t kv_width = static_cast<size_t>(shape.num_kv_heads) * shape.head_dim;
        auto check = [&](const auto& tokens) {
          const std::vector<float> q =
              RandomFloats(static_cast<size_t>(tokens.size()) * shape.num_heads * shape.head_dim, rng);
          std::vector<float> ref(q.size()), out(q.size()), scratch(tokens.ScratchSize(shape));
          AttentionReferencePerToken(shape, q.data(), tokens, ref.data());
          AttentionForward(shape, q.data(), tokens.k.data(), tokens.v.data(), tokens.positions.data(),
                           tokens.size(), scratch.data(), out.data(), pool, isa);
          for (size_t i = 0; i < ref.size(); ++i) {
            const double error = std::fabs(static_cast<double>(out[i]) - ref[i]);
            if (!(error <= worst)) {  // NaN counts as worst
              worst = error;
              worst_case = awqtest::Case("H=", shape.num_heads, " KV=", shape.num_kv_heads, " hd=",
                                         shape.head_dim, " window=", shape.window, " tokens=",
                                         tokens.size(), " last position=", tokens.positions.back(),
                                         " element=", i);
            }
          }
        };
        // One sequence at consecutive positions (prefill chunks, decode).
        // 126 + 8 tokens straddle the first split boundary (128 keys), so some
        // rows of an item read no key of its split; 300 gives 3 splits, 2100
        // the longest (16 splits of 160 keys, AttentionSplitKeys).
        for (int start : {0, 5, 126, 300, 2100}) {
          for (int tokens : {1, 3, 8, 17}) {
            if (start == 2100 && tokens > 3) continue;
            const int keys = start + tokens;
            const std::vector<float> k = RandomFloats(keys * kv_width, rng);
            const std::vector<float> v = RandomFloats(k.size(), rng);
            if (f16_cache) {
              const std::vector<uint16_t> k16 = AsCache<uint16_t>(k), v16 = AsCache<uint16_t>(v);
              check(AttentionTokens<uint16_t>().Add(k16.data(), v16.data(), start, tokens));
            } else {
              check(AttentionTokens<float>().Add(k.data(), v.data(), start, tokens));
            }
          }
        }
        // A batched decode step: one token of each of 4 sequences with their own
        // caches and positions, plus a 2-token chunk of a fifth.
        const std::vector<int> positions = {300, 0, 5, 37, 11};
        std::vector<std::vector<float>> ks, vs;
        std::vector<std::vector<uint16_t>> ks16, vs16;
        AttentionTokens<float> batch;
        AttentionTokens<uint16_t> batch16;
        for (size_t s = 0; s < positions.size(); ++s) {
          ks.push_back(RandomFloats((positions[s] + 2) * kv_width, rng));
          vs.push_back(RandomFloats(ks.back().size(), rng));
          ks16.push_back(AsCache<uint16_t>(ks.back()));
          vs16.push_back(AsCache<uint16_t>(vs.back()));
          const int count = s + 1 == positions.size() ? 2 : 1;
          batch.Add(ks.back().data(), vs.back().data(), positions[s], count);
          batch16.Add(ks16.back().data(), vs16.back().data(), positions[s], count);
        }
        if (f16_cache) {
          check(batch16);
        } else {
          check(batch);
        }
      }
      std::printf("  %s attention, %s cache: max error %.3g (units of max|v|)\n", IsaName(isa),
                  f16_cache ? "f16" : "f32", worst);
      CHECK_LE(worst, 1e-5, awqtest::Case(IsaName(isa), f16_cache ? " f16 " : " f32 ", worst_case));
    }
  }
}

TEST(attention_item_rows_sharing_keys_match_each_row_alone_bit_for_bit) {
  // An item's rows that read the same keys of one kv head (a GQA group's
  // heads for one token) share each converted K and V vector; per row the
  // arithmetic must stay that of the row alone, so a row's state after a call
  // with its group equals, bit for bit, its state after a call of its own.
  // Group sizes 1..7 (runs of 3, 2 and 1), head dims with and without a
  // 32-column tail, key counts with and without a 4-key tail, windows that
  // start mid-block, and a second kv head in the same item.
  std::mt19937 rng(22);
  int cases = 0;
  for (Isa isa : IsasToTest()) {
    if (isa < Isa::kAvx2) continue;  // AttendRowsAvx2's contract: hd % 8 == 0 on an AVX2 CPU
    for (bool f16_cache : {false, true}) {
      for (int hd : {8, 40, 64, 72}) {
        for (int group : {1, 2, 3, 4, 5, 7}) {
          for (int keys : {1, 3, 33, 70}) {
            const int kv_heads = 2, kv_stride = kv_heads * hd, first_key = keys > 33 ? 5 : 0;
            const std::vector<float> k = RandomFloats(static_cast<size_t>(keys) * kv_stride, rng);
            const std::vector<float> v = RandomFloats(k.size(), rng);
            const std::vector<float> q = RandomFloats(static_cast<size_t>(2 * group) * hd, rng);
            const std::vector<uint16_t> k16 = AsCache<uint16_t>(k), v16 = AsCache<uint16_t>(v);
            // Rows 0 .. group-1 read kv head 0, rows group .. 2 group-1 kv head 1.
            const int rows_total = std::min(2 * group, kMaxRows);
            std::vector<float> together(static_cast<size_t>(rows_total) * (hd + 2));
            std::vector<float> alone(together.size());
            auto fresh_rows = [&](std::vector<float>& states, int first, int count) {
              AttentionRows rows;
              rows.scale = 0.125f;
              rows.kv_span = kv_stride;
              for (int r = first; r < first + count; ++r) {
                float* state = states.data() + static_cast<size_t>(r) * (hd + 2);
                state[0] = -INFINITY;
                std::fill(state + 1, state + hd + 2, 0.f);
                rows.query[rows.count] = q.data() + static_cast<size_t>(r) * hd;
                rows.kv_offset[rows.count] = r < group ? 0 : hd;
                rows.first_key[rows.count] = first_key;
                rows.num_keys[rows.count] = keys;
                rows.state[rows.count++] = state;
              }
              return rows;
            };
            auto attend = [&](const AttentionRows& rows) {
              if (f16_cache) {
                AttendRowsAvx2(rows, k16.data(), v16.data(), kv_stride, hd, 0, keys);
              } else {
                AttendRowsAvx2(rows, k.data(), v.data(), kv_stride, hd, 0, keys);
              }
            };
            attend(fresh_rows(together, 0, rows_total));
            for (int r = 0; r < rows_total; ++r) attend(fresh_rows(alone, r, 1));
            for (size_t i = 0; i < together.size(); ++i) {
              uint32_t a, b;
              std::memcpy(&a, &together[i], 4);
              std::memcpy(&b, &alone[i], 4);
              CHECK_LE(a == b ? 0 : 1, 0,
                       awqtest::Case(IsaName(isa), f16_cache ? " f16" : " f32", " hd=", hd, " group=", group,
                                     " keys=", keys, " row=", i / (hd + 2), " element=", i % (hd + 2),
                                     " together=", together[i], " alone=", alone[i]));
            }
            ++cases;
          }
        }
      }
    }
  }
  std::printf("  %d cases: grouped rows equal their rows alone\n", cases);
}

TEST(f16_cache_store_matches_scalar_rounding_bit_for_bit) {
  // The KV cache's f16 rounding at each level against F32ToF16 (half.h, the
  // scalar reference, whose rounding test_ops checks): ties at both
  // parities, the overflow boundary 65520, subnormals, signed zeros,
  // infinities, NaN payloads, and random bits, at lengths that leave every
  // tail size.
  std::mt19937 rng(21);
  std::vector<uint32_t> bits = {0x00000000u, 0x80000000u, 0x7f800000u, 0xff800000u, 0x7fc00000u,
                                0xffc01234u, 0x7f800001u, 0x7fbfffffu, 0x477fe000u, 0x477ff000u,
                                0x477fefffu, 0x38800000u, 0x387fffffu, 0x33000000u, 0x33000001u,
                                0x3f801000u, 0x3f803000u, 0x3f800fffu, 0x00000001u, 0x80400000u};
  std::uniform_int_distribution<uint32_t> any;
  constexpr int kLongest = 4095, kLargestOffset = 3;
  while (bits.size() < kLongest + kLargestOffset) bits.push_back(any(rng));
  std::vector<float> values(bits.size());
  for (size_t i = 0; i < bits.size(); ++i) values[i] = BitsToFloat(bits[i]);
  for (Isa isa : IsasToTest()) {
    for (int n : {0, 1, 7, 8, 9, 63, 64, 65, kLongest}) {
      for (int offset : {0, kLargestOffset}) {
        std::vector<uint16_t> got(n + 1, 0xabcdu);
        StoreKv(values.data() + offset, n, got.data(), isa);
        for (int i = 0; i < n; ++i) {
          const uint16_t want = F32ToF16(values[offset + i]);
          CHECK_LE(got[i] == want ? 0 : 1, 0,
                   awqtest::Case(IsaName(isa), " n=", n, " offset=", offset, " i=", i, " bits=",
                                 bits[offset + i], " got=", got[i], " want=", want));
        }
        CHECK(got[n] == 0xabcdu);  // nothing written past n
      }
    }
  }
}

TEST(rope_matches_direct_formula) {
  std::mt19937 rng(6);
  double worst = 0.0;
  // Consecutive positions (a prefill chunk, near the table's end too) and
  // scattered ones (a batched decode step: one token per sequence, repeats
  // allowed), against the formula evaluated one token at a time.
  const std::vector<std::vector<int>> position_sets = {
      {0, 1, 2, 3, 4}, {1, 2, 3, 4, 5}, {1090, 1091, 1092, 1093, 1094}, {1093, 0, 17, 17, 2}};
  for (int head_dim : {8, 64}) {
    for (float theta : {10000.f, 1000000.f}) {
      const RopeTable table(head_dim, theta, 1100);
      for (const std::vector<int>& positions : position_sets) {
        const int tokens = static_cast<int>(positions.size()), heads = 3;
        const size_t token_width = static_cast<size_t>(heads) * head_dim;
        const std::vector<float> x = RandomFloats(tokens * token_width, rng);
        std::vector<float> y = x, ref = x;
        table.Apply(y.data(), tokens, heads, positions.data());
        for (int t = 0; t < tokens; ++t) {
          RopeReference(ref.data() + t * token_width, 1, heads, head_dim, theta, positions[t]);
        }
        // cos and sin are rounded to f32 (u each), then a*cos - b*sin costs
        // two products and a sum: <= 4u (|a| + |b|) per element.
        for (int t = 0; t < tokens; ++t) {
          for (int h = 0; h < heads; ++h) {
            const size_t base = (static_cast<size_t>(t) * heads + h) * head_dim;
            for (int i = 0; i < head_dim; ++i) {
              const int pair = i < head_dim / 2 ? i + head_dim / 2 : i - head_dim / 2;
              const double bound = 4 * kUnitRoundoff * (std::fabs(x[base + i]) + std::fabs(x[base + pair]));
              CHECK_LE(std::fabs(static_cast<double>(y[base + i]) - ref[base + i]), bound,
                       awqtest::Case("head_dim=", head_dim, " theta=", theta, " position=",
                                     positions[t], " head=", h, " column=", i));
            }
          }
        }
        worst = std::max(worst, RelativeError(y, ref));
      }
    }
  }
  // The reference's own multi-token form agrees with its per-token use.
  std::vector<float> many = RandomFloats(5 * 3 * 8, rng), one_by_one = many;
  RopeReference(many.data(), 5, 3, 8, 10000.f, 40);
  for (int t = 0; t < 5; ++t) RopeReference(one_by_one.data() + t * 3 * 8, 1, 3, 8, 10000.f, 40 + t);
  CHECK(many == one_by_one);
  std::printf("  rope: max relative error %.3g\n", worst);
}

TEST(rope_position_zero_is_identity_and_dot_depends_on_offset_only) {
  const int hd = 16;
  const RopeTable table(hd, 10000.f, 64);
  std::mt19937 rng(7);
  const std::vector<float> q = RandomFloats(hd, rng), k = RandomFloats(hd, rng);
  std::vector<float> q0 = q;
  const int zero = 0, one = 1;
  table.Apply(q0.data(), 1, 1, &zero);
  CHECK(q0 == q);
  // Rotary's defining property: <R(m) q, R(n) k> depends only on m - n.
  auto rotated_dot = [&](int m, int n) {
    std::vector<float> qm = q, kn = k;
    table.Apply(qm.data(), 1, 1, &m);
    table.Apply(kn.data(), 1, 1, &n);
    double dot = 0.0;
    for (int i = 0; i < hd; ++i) dot += static_cast<double>(qm[i]) * kn[i];
    return dot;
  };
  CHECK_NEAR(rotated_dot(7, 3), rotated_dot(40, 36), 1e-5);
  CHECK_NEAR(rotated_dot(3, 3), rotated_dot(50, 50), 1e-5);
  // The rotate-half pairing: position 1, theta^0 = 1 rad for pair (0, hd/2).
  std::vector<float> e0(hd, 0.f);
  e0[0] = 1.f;
  table.Apply(e0.data(), 1, 1, &one);
  CHECK_NEAR(e0[0], std::cos(1.0), 1e-7);
  CHECK_NEAR(e0[hd / 2], std::sin(1.0), 1e-7);
  CHECK(e0[1] == 0.f);
}

TEST(prefetch_rope_and_store_kv_changes_nothing) {
  // The prefetch before the q/k/v projection is a hint only: caches and
  // rope tables keep every bit, for rows at the first and last position of
  // each cache and an odd kv width (a row that ends mid-cache-line).
  const AttentionShape shape{6, 3, 10};
  const int kv_width = 30, capacity = 9;
  const RopeTable rope(shape.head_dim, 10000.f, capacity);
  const std::vector<float> cos_before = rope.cos_table(), sin_before = rope.sin_table();
  std::mt19937 rng(12);
  ForEachCacheType([&](auto cache_type) {
    using CacheT = decltype(cache_type);
    const std::vector<CacheT> k0 = AsCache<CacheT>(RandomFloats(2 * capacity * kv_width, rng));
    const std::vector<CacheT> v0 = AsCache<CacheT>(RandomFloats(k0.size(), rng));
    std::vector<CacheT> k = k0, v = v0;
    std::vector<CacheT*> k_caches = {k.data(), k.data() + capacity * kv_width, k.data()};
    std::vector<CacheT*> v_caches = {v.data(), v.data() + capacity * kv_width, v.data()};
    const std::vector<int> positions = {0, capacity - 1, capacity - 1};
    PrefetchRopeAndStoreKv(shape, rope, positions.data(), 3, k_caches.data(), v_caches.data());
    CHECK(std::memcmp(k.data(), k0.data(), k.size() * sizeof(CacheT)) == 0);
    CHECK(std::memcmp(v.data(), v0.data(), v.size() * sizeof(CacheT)) == 0);
  });
  CHECK(rope.cos_table() == cos_before);
  CHECK(rope.sin_table() == sin_before);
}

TEST(rope_and_store_kv_rotates_and_writes_each_tokens_row) {
  // Two sequences' caches; tokens 0-1 are a chunk of sequence 0 at positions
  // 3, 4, token 2 is sequence 1 at position 6. The fused pass must equal
  // RopeTable::Apply on q and k followed by StoreKv into those rows, and
  // leave every other cache row as it was (NaN here).
  std::mt19937 rng(10);
  const AttentionShape shape{4, 2, 8};
  const int kv_width = 16, q_width = 32, capacity = 8;
  const RopeTable rope(shape.head_dim, 10000.f, capacity);
  const std::vector<int> positions = {3, 4, 6};
  const int seq_of[] = {0, 0, 1};
  ForEachCacheType([&](auto cache_type) {
    using CacheT = decltype(cache_type);
    const std::vector<float> nan_rows(static_cast<size_t>(capacity) * kv_width, NAN);
    std::vector<std::vector<CacheT>> k_store(2, AsCache<CacheT>(nan_rows)), v_store = k_store;
    std::vector<CacheT*> k_caches, v_caches;
    for (int t = 0; t < 3; ++t) {
      k_caches.push_back(k_store[seq_of[t]].data());
      v_caches.push_back(v_store[seq_of[t]].data());
    }
    const std::vector<float> q0 = RandomFloats(3 * q_width, rng), k0 = RandomFloats(3 * kv_width, rng),
                             v = RandomFloats(3 * kv_width, rng);
    std::vector<float> q = q0, k = k0, q_ref = q0, k_ref = k0;
    RopeAndStoreKv(shape, rope, positions.data(), 3, q.data(), k.data(), v.data(), k_caches.data(),
                   v_caches.data());
    rope.Apply(q_ref.data(), 3, shape.num_heads, positions.data());
    rope.Apply(k_ref.data(), 3, shape.num_kv_heads, positions.data());
    CHECK(q == q_ref);
    CHECK(k == k_ref);
    for (int s = 0; s < 2; ++s) {
      for (int row = 0; row < capacity; ++row) {
        int token = -1;
        for (int t = 0; t < 3; ++t) token = (seq_of[t] == s && positions[t] == row) ? t : token;
        for (int i = 0; i < kv_width; ++i) {
          const float stored_k = KvToF32(k_store[s][row * kv_width + i]);
          const float stored_v = KvToF32(v_store[s][row * kv_width + i]);
          if (token < 0) {
            CHECK(std::isnan(stored_k) && std::isnan(stored_v));
          } else {
            CHECK(stored_k == KvToF32(AsCache<CacheT>({k_ref[token * kv_width + i]})[0]));
            CHECK(stored_v == KvToF32(AsCache<CacheT>({v[token * kv_width + i]})[0]));
          }
        }
      }
    }
  });
}

AWQCORE_TEST_MAIN()
