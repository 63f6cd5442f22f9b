// Tests of samout/model/sampler.h: the filters against their definitions, greedy decoding, seeded
// draws and their distribution, and the config's checks.
#include "samout/model/sampler.h"

#include <ATen/CPUGeneratorImpl.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <set>
#include <vector>

#include "samout/common/error.h"

namespace samout::model {
namespace {

torch::Tensor random_logits(int64_t B, int64_t V, uint64_t seed) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  return torch::randn({B, V}, gen, torch::kFloat32) * 3;
}

TEST(Sampler, TopK1IsArgmax) {
  auto logits = random_logits(4, 50, 1);
  auto filtered = logits.clone();
  apply_top_k(filtered, 1);
  EXPECT_TRUE(torch::equal(torch::isfinite(filtered).sum(-1), torch::ones({4}, torch::kLong)));
  EXPECT_TRUE(torch::equal(filtered.argmax(-1), logits.argmax(-1)));
  SamplingConfig cfg;
  cfg.top_k = 1;
  cfg.temperature = 5.0;  // a flat distribution: only the filter can make it deterministic
  for (uint64_t seed = 0; seed < 10; ++seed) {
    Sampler s(cfg, seed);
    EXPECT_TRUE(torch::equal(s.sample(logits, {}), logits.argmax(-1))) << "seed " << seed;
  }
}

TEST(Sampler, TopKKeepsKLargest) {
  auto logits = random_logits(3, 40, 2);
  auto filtered = logits.clone();
  apply_top_k(filtered, 7);
  auto top = std::get<1>(logits.topk(7, -1));
  for (int64_t b = 0; b < 3; ++b) {
    std::set<int64_t> want;
    for (int64_t j = 0; j < 7; ++j) want.insert(top[b][j].item<int64_t>());
    for (int64_t v = 0; v < 40; ++v) {
      const bool kept = std::isfinite(filtered[b][v].item<float>());
      EXPECT_EQ(kept, want.count(v) == 1) << "row " << b << " token " << v;
      if (kept) {
        EXPECT_EQ(filtered[b][v].item<float>(), logits[b][v].item<float>());
      }
    }
  }
}

TEST(Sampler, TopPKeepsSmallestSetWithMassAtLeastP) {
  const int64_t V = 60;
  auto logits = random_logits(5, V, 3);
  for (double p : {0.05, 0.3, 0.5, 0.9, 0.99}) {
    auto filtered = logits.clone();
    apply_top_p(filtered, p);
    auto probs = torch::softmax(logits.to(torch::kDouble), -1);
    for (int64_t b = 0; b < 5; ++b) {
      std::vector<double> pr(V);
      for (int64_t v = 0; v < V; ++v) pr[v] = probs[b][v].item<double>();
      std::vector<int64_t> order(V);
      std::iota(order.begin(), order.end(), 0);
      std::sort(order.begin(), order.end(), [&](int64_t x, int64_t y) { return pr[x] > pr[y]; });
      // The definition: the shortest prefix of the most likely tokens whose mass reaches p.
      std::set<int64_t> want;
      double mass = 0;
      for (int64_t v : order) {
        want.insert(v);
        mass += pr[v];
        if (mass >= p) break;
      }
      std::set<int64_t> got;
      for (int64_t v = 0; v < V; ++v)
        if (std::isfinite(filtered[b][v].item<float>())) got.insert(v);
      EXPECT_EQ(got, want) << "p " << p << " row " << b;
    }
  }
}

TEST(Sampler, TopPKeepsMostLikelyTokenAlways) {
  auto logits = torch::tensor({{0.f, 0.f, 0.f, 0.f}});
  apply_top_p(logits, 1e-9);
  EXPECT_EQ(torch::isfinite(logits).sum().item<int64_t>(), 1);
}

TEST(Sampler, RepetitionPenaltyDividesPositiveMultipliesNegative) {
  auto logits = torch::tensor({{2.f, -2.f, 1.f, -1.f, 0.f}});
  auto seen = torch::tensor({{true, true, false, false, true}});
  apply_repetition_penalty(logits, seen, 2.0);
  auto want = torch::tensor({{1.f, -4.f, 1.f, -1.f, 0.f}});
  EXPECT_TRUE(torch::equal(logits, want)) << logits;
  // A penalty makes greedy decoding leave a repeated favourite.
  SamplingConfig cfg;
  cfg.temperature = 0;
  cfg.repetition_penalty = 3.0;
  Sampler s(cfg, 0);
  auto l2 = torch::tensor({{3.f, 2.f, -1.f}});
  EXPECT_EQ(s.sample(l2, torch::tensor({{true, false, false}})).item<int64_t>(), 1);
  EXPECT_EQ(s.sample(l2, torch::tensor({{false, false, false}})).item<int64_t>(), 0);
}

TEST(Sampler, SameSeedSameOutputOtherSeedOther) {
  auto logits = random_logits(2, 100, 4) / 3;  // fairly flat
  SamplingConfig cfg;
  cfg.top_p = 0.95;
  cfg.top_k = 80;
  cfg.temperature = 1.3;
  auto draw = [&](uint64_t seed) {
    Sampler s(cfg, seed);
    std::vector<torch::Tensor> out;
    for (int i = 0; i < 30; ++i) out.push_back(s.sample(logits, {}));
    return torch::stack(out);
  };
  auto a = draw(11), b = draw(11), c = draw(12);
  EXPECT_TRUE(torch::equal(a, b));
  EXPECT_FALSE(torch::equal(a, c));
  EXPECT_GT(std::get<0>(at::_unique(a)).numel(), 5);  // really sampling, not a constant
}

TEST(Sampler, TemperatureZeroIsGreedy) {
  auto logits = random_logits(6, 70, 5);
  SamplingConfig cfg;
  cfg.temperature = 0;
  cfg.top_k = 10;  // ignored by greedy, which is the argmax of the (penalised) logits
  for (uint64_t seed : {0, 1, 2}) {
    Sampler s(cfg, seed);
    EXPECT_TRUE(torch::equal(s.sample(logits, {}), logits.argmax(-1)));
  }
}

TEST(Sampler, DrawsFollowTheDistribution) {
  // Two tokens with probabilities 0.2 and 0.8: 4000 draws land within 4 sigma of 800.
  auto logits = torch::tensor({{std::log(0.2f), std::log(0.8f)}});
  Sampler s(SamplingConfig{}, 9);
  int64_t zeros = 0;
  for (int i = 0; i < 4000; ++i) zeros += s.sample(logits, {}).item<int64_t>() == 0;
  EXPECT_NEAR(zeros, 800, 4 * std::sqrt(4000 * 0.2 * 0.8));
}

TEST(Sampler, RejectsBadConfig) {
  auto bad = [](auto edit) {
    SamplingConfig c;
    edit(c);
    return c;
  };
  EXPECT_THROW(bad([](SamplingConfig& c) { c.temperature = -1; }).validate(), UsageError);
  EXPECT_THROW(bad([](SamplingConfig& c) { c.temperature = NAN; }).validate(), UsageError);
  EXPECT_THROW(bad([](SamplingConfig& c) { c.top_p = 0; }).validate(), UsageError);
  EXPECT_THROW(bad([](SamplingConfig& c) { c.top_p = 1.5; }).validate(), UsageError);
  EXPECT_THROW(bad([](SamplingConfig& c) { c.top_k = -2; }).validate(), UsageError);
  EXPECT_THROW(bad([](SamplingConfig& c) { c.repetition_penalty = 0; }).validate(), UsageError);
  EXPECT_NO_THROW(SamplingConfig{}.validate());
}

}  // namespace
}  // namespace samout::model
