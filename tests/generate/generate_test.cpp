// Tests of samout/model/generate.h: the sampler's filters against their definitions, seeded draws,
// the carried state (stepwise logits == whole-sequence logits), and streaming decode. The CUDA
// session (CUDA graph, GPU against CPU) is tested in generate_cuda_test.cpp (ctest label gpu).
#include "samout/model/generate.h"

#include <ATen/CPUGeneratorImpl.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <set>
#include <string>
#include <vector>

#include "samout/common/error.h"
#include "samout/data/tokenizer.h"
#include "session_fixture.h"

namespace samout::model {
namespace {

const float kInf = std::numeric_limits<float>::infinity();

torch::Tensor random_logits(int64_t B, int64_t V, uint64_t seed) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  return torch::randn({B, V}, gen, torch::kFloat32) * 3;
}

// ---- Sampler ------------------------------------------------------------------------------------

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

// ---- Session ------------------------------------------------------------------------------------

TEST(Session, StepwiseLogitsEqualWholeSequence) {
  auto model = tiny_model(1);
  auto tokens = torch::randint(0, 97, {2, 24}, torch::kLong);
  torch::Tensor full;
  {
    torch::NoGradGuard ng;
    full = model->forward(tokens);  // (B, T, V), no state
  }
  Session s(model);
  const int64_t P = 6;
  expect_close(s.prefill(tokens.narrow(1, 0, P)), full.select(1, P - 1), "prefill");
  EXPECT_EQ(s.position(), P);
  for (int64_t t = P; t < 24; ++t)
    expect_close(s.step(tokens.select(1, t)), full.select(1, t), "step " + std::to_string(t));
  EXPECT_EQ(s.position(), 24);
  // A new prefill drops the old state.
  expect_close(s.prefill(tokens.narrow(1, 0, 3)), full.select(1, 2), "second prefill");
}

TEST(Session, PromptsOfDifferentLengthsBatchedByTheirStates) {
  auto model = tiny_model(2);
  auto a = torch::randint(0, 97, {1, 9}, torch::kLong),
       b = torch::randint(0, 97, {1, 4}, torch::kLong);
  auto next = torch::randint(0, 97, {2, 5}, torch::kLong);
  torch::Tensor fa, fb;
  {
    torch::NoGradGuard ng;
    fa = model->forward(torch::cat({a, next.narrow(0, 0, 1)}, 1));
    fb = model->forward(torch::cat({b, next.narrow(0, 1, 1)}, 1));
  }
  Session s(model);
  s.prefill(a);
  auto sa = s.state();
  s.prefill(b);
  auto sb = s.state();
  ModelState stacked;
  for (size_t l = 0; l < sa.size(); ++l) stacked.push_back(torch::cat({sa[l], sb[l]}, 0));
  s.set_state(stacked);
  for (int64_t t = 0; t < 5; ++t) {
    auto logits = s.step(next.select(1, t));  // (2, V)
    expect_close(logits[0], fa[0][9 + t], "row 0 step " + std::to_string(t));
    expect_close(logits[1], fb[0][4 + t], "row 1 step " + std::to_string(t));
  }
}

// On the CPU a step (T = 1, B <= ops::kGemvMaxRows) runs the hand-written decode step (gemv
// products, the gate and LayerNorm as loops) instead of the modules. Odd sizes: d = 36 leaves a
// K % 8 tail, 3d = 108 and V = 1001 leave tails of the kernel's 4-row blocks, and V * d is big
// enough for the head's product to be split across threads. B = 9 takes the modules' path.
TEST(Session, CpuStepEqualsWholeSequenceAtOddSizes) {
  auto model = tiny_model(7, /*vocab_size=*/1001, /*hidden=*/36, /*layers=*/2,
                          /*odd_layer_norm=*/true);
  const auto& cfg = model->config();
  for (int64_t B : {1, 3, 9}) {
    auto tokens = torch::randint(0, cfg.vocab_size, {B, 12}, torch::kLong);
    torch::Tensor full;
    {
      torch::NoGradGuard ng;
      full = model->forward(tokens);
    }
    auto close = [&](const torch::Tensor& got, const torch::Tensor& want, const std::string& what) {
      const double err = (got - want).abs().max().item<double>();
      const double scale = std::max(1.0, want.abs().max().item<double>());
      EXPECT_LE(err, 1e-4 * scale) << "B=" << B << " " << what << ": max abs error " << err;
    };
    Session s(model);
    // A one-token prefill starts from no state at all (the step's path too).
    close(s.prefill(tokens.narrow(1, 0, 1)), full.select(1, 0), "prefill of 1");
    for (int64_t t = 1; t < 12; ++t)
      close(s.step(tokens.select(1, t)), full.select(1, t), "step " + std::to_string(t));
    // The carried state is the running max of c, as the modules compute it.
    ModelState whole;
    {
      torch::NoGradGuard ng;
      model->forward(tokens, &whole);
    }
    for (size_t l = 0; l < whole.size(); ++l)
      close(s.state()[l], whole[l], "state of layer " + std::to_string(l));
    // A step leaves the states a caller took before it as they were.
    const auto before = s.state()[0].clone();
    const auto held = s.state()[0];
    s.step(tokens.select(1, 0));
    EXPECT_TRUE(torch::equal(held, before)) << "B=" << B;
  }
}

TEST(Session, CpuStepRejectsOutOfRangeToken) {
  Session s(tiny_model(5));
  s.prefill(torch::tensor({{1, 2}}, torch::kLong));
  EXPECT_THROW(s.step(torch::tensor({97}, torch::kLong)), c10::Error);
  EXPECT_THROW(s.step(torch::tensor({-1}, torch::kLong)), c10::Error);
}

TEST(Session, RejectsOutOfRangePrompt) {
  Session s(tiny_model(3));
  EXPECT_THROW(s.prefill(torch::tensor({{1, 97}}, torch::kLong)), UsageError);
  EXPECT_THROW(s.prefill(torch::tensor({{-1, 2}}, torch::kLong)), UsageError);
  EXPECT_THROW(s.prefill(torch::zeros({1, 0}, torch::kLong)), UsageError);
}

// ---- TextStreamer -------------------------------------------------------------------------------

TEST(TextStreamer, StreamedTextEqualsDecodedContinuation) {
  const auto tok = data::Tokenizer::from_file(SAMOUT_SAMPLE_TOKENIZER);
  const std::string prompt = "The story begins";
  std::string cont;
  for (int i = 0; i < 12; ++i)
    cont += " and then, naïve café 世界 🙂🚀 line " + std::to_string(i) + "\n  indented";
  std::vector<int> p, c;
  tok.encode(prompt, &p);
  tok.encode(cont, &c);
  std::vector<int> all = p;
  all.insert(all.end(), c.begin(), c.end());
  const std::string want = tok.decode(all).substr(tok.decode(p).size());
  for (int64_t window : {1, 2, 5, 32, 100000}) {
    TextStreamer s([&](const std::vector<int>& ids) { return tok.decode(ids); }, p.back(), window);
    std::string got;
    for (int id : c) got += s.push(id);
    got += s.finish();
    EXPECT_EQ(got, want) << "window " << window;
  }
}

TEST(TextStreamer, HoldsBackAnIncompleteCharacter) {
  // A fake decoder: ids are bytes; an incomplete UTF-8 sequence at the end decodes as U+FFFD.
  auto decode = [](const std::vector<int>& ids) {
    std::string s;
    for (int id : ids) s.push_back(static_cast<char>(id));
    if (!s.empty() && (static_cast<unsigned char>(s.back()) & 0xC0) == 0xC0) {
      s.pop_back();
      s += "\xEF\xBF\xBD";
    }
    return s;
  };
  TextStreamer s(decode, 'a', 8);
  EXPECT_EQ(s.push('b'), "b");
  EXPECT_EQ(s.push(0xC3), "");  // first byte of "é"
  EXPECT_EQ(s.push(0xA9), "\xC3\xA9");
  EXPECT_EQ(s.finish(), "");
}

}  // namespace
}  // namespace samout::model
